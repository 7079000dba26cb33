"""A wall-clock timer for asynchronous devices: synchronise before every clock reading.

:func:`course_lib.bench.measure` times CUDA with CUDA events. Where no event
timer fits -- another backend (``torch.mps.synchronize``,
``torch.xpu.synchronize``), host work around the kernels that must be
counted, a simulated device -- the portable protocol is:

1. call ``fn()`` ``warmup`` times, untimed;
2. for each timed call: ``synchronize()``, read the clock, ``fn()``,
   ``synchronize()``, read the clock; the difference is one sample. The
   first synchronisation keeps queued warm-up work (or the previous call's)
   out of the sample; the second makes the sample include the work, not
   only its launch;
3. summarise the samples with the median (and IQR): one slow call from
   another process moves the mean, not the median.

:func:`measure_wall_clock` is that protocol (it runs
:func:`course_lib.bench.measure` with a clock that synchronises before each
reading). Synchronising every call adds the synchronisation's own cost to
each sample and stops the host from queueing ahead: for a training step,
which synchronises anyway (``loss.item()``), that is the truth; for a single
fast kernel, CUDA events are more precise.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb); it is the
protocol of exercise 09.time_call.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from .timer import Timing, measure

__all__ = ["measure_wall_clock"]


def measure_wall_clock(fn: Callable[[], object], *, synchronize: Callable[[], object], warmup: int = 3,
                       repeats: int = 10, clock: Callable[[], float] = time.perf_counter,
                       min_time_s: float = 0.0, max_repeats: int = 10_000,
                       label: str = "synchronised wall clock") -> Timing:
    """Time ``fn()`` with ``synchronize()`` before every reading of ``clock()``.

    Args:
        fn (callable): zero-argument callable (launches the work).
        synchronize (callable): waits for the device (``torch.cuda.synchronize``;
            ``lambda: None`` on a CPU).
        warmup, repeats, min_time_s, max_repeats: as in :func:`course_lib.bench.measure`.
        clock (callable, default ``time.perf_counter``): seconds.
        label (str): stored as the Timing's ``device``.

    Returns:
        Timing: median, IQR, min, mean of the samples.

    >>> from course_lib.bench.simulated import SimulatedDevice
    >>> dev = SimulatedDevice(launch_overhead_s=0.0, start_s=0.0)
    >>> k = dev.kernel([9.0, 0.5, 0.25, 4.0])   # a slow first call, then three timed ones
    >>> t = measure_wall_clock(k, synchronize=dev.synchronize, clock=dev.clock, warmup=1, repeats=3)
    >>> t.samples, t.median_s
    ((0.5, 0.25, 4.0), 0.5)
    """
    if not callable(synchronize):
        raise TypeError(f"synchronize must be a zero-argument callable (e.g. torch.cuda.synchronize "
                        f"or lambda: None), got {type(synchronize).__name__}")
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")

    def synchronized_clock() -> float:
        synchronize()
        return clock()

    timing = measure(fn, warmup=warmup, repeats=repeats, device="cpu", clock=synchronized_clock,
                     min_time_s=min_time_s, max_repeats=max_repeats)
    return dataclasses.replace(timing, device=label)
