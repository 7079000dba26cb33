"""Timing done right: warm-up, synchronisation, repeats, median and spread.

Algorithm of :func:`measure`:

1. call ``fn()`` ``warmup`` times and discard those calls (the first calls
   pay for lazy initialisation, allocator growth, cuBLAS/oneDNN kernel
   selection, ``torch.compile`` compilation);
2. time each of at least ``repeats`` further calls, and keep calling until
   the timed calls add up to ``min_time_s`` (at most ``max_repeats``):

   * on CUDA, with a pair of ``torch.cuda.Event(enable_timing=True)``
     recorded around the call and ``end.synchronize()`` before reading
     ``start.elapsed_time(end)``: CUDA kernels run asynchronously, so a
     wall clock read right after the call measures only the *launch*
     (see :func:`unsynchronized_time` for that classic error);
   * on CPU, with ``time.perf_counter`` (or the ``clock`` you pass): CPU
     ops are synchronous, the call returns when the work is done;
3. report the median (robust to the occasional slow call from another
   process), the interquartile range ``Q3 - Q1`` as the spread, the
   minimum and the mean, the number of timed calls, the torch thread count
   and the device.

Threads: ``measure`` uses whatever ``torch.get_num_threads()`` is when you
call it and records it in :class:`Timing`. ``torch.utils.benchmark.Timer``
does *not*: its ``num_threads`` argument defaults to 1 (checked in torch
2.13: ``Timer("x@x", globals=...)._task_spec.num_threads == 1`` while
``torch.get_num_threads() == 2``), so it measures a single-threaded run
unless told otherwise; compare like with like. :func:`course_lib.bench.thread_scaling`
runs ``measure`` at several thread counts.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import validate
from ..device import default_device

__all__ = ["Timing", "measure", "SyncComparison", "unsynchronized_time", "resolve_device", "synchronize"]


def resolve_device(device) -> torch.device:
    """``device`` as a ``torch.device`` (``None`` -> :func:`course_lib.device.default_device`).

    Only ``cpu`` and ``cuda`` are timed; ``cuda`` needs an available GPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        device = default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}")
    dev = torch.device(device)
    validate.one_of("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} asked for, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); time on 'cpu' instead")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU, where ops are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Summary of timed calls, in seconds.

    Attributes: ``median_s``, ``iqr_s`` (Q3 - Q1, ``statistics.quantiles``
    with ``method="inclusive"``; 0 for a single call), ``min_s``, ``mean_s``,
    ``n`` (timed calls), ``threads`` (``torch.get_num_threads()`` during the
    measurement), ``device``, ``warmup`` (discarded calls), ``samples`` (every
    timed call, in order).
    """

    median_s: float
    iqr_s: float
    min_s: float
    mean_s: float
    n: int
    threads: int
    device: str
    warmup: int
    samples: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples, *, threads: int, device: str, warmup: int) -> "Timing":
        """Summarise a non-empty sequence of durations (seconds).

        >>> t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0], threads=1, device="cpu", warmup=0)
        >>> t.median_s, t.iqr_s, t.min_s, t.mean_s
        (3.0, 2.0, 1.0, 3.0)
        """
        samples = tuple(float(s) for s in samples)
        if not samples:
            raise ValueError("samples must hold at least one duration")
        if not all(math.isfinite(s) and s >= 0 for s in samples):
            raise ValueError(f"durations must be finite and >= 0, got {samples}")
        if len(samples) > 1:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
            iqr = q3 - q1
        else:
            iqr = 0.0
        return cls(median_s=statistics.median(samples), iqr_s=iqr, min_s=min(samples),
                   mean_s=statistics.fmean(samples), n=len(samples), threads=threads,
                   device=device, warmup=warmup, samples=samples)

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    def __str__(self) -> str:
        return (f"median {_fmt(self.median_s)} (IQR {_fmt(self.iqr_s)}, min {_fmt(self.min_s)}, "
                f"n={self.n}, {self.threads} thread{'s' if self.threads != 1 else ''}, {self.device})")


def _fmt(seconds: float) -> str:
    """Three significant digits in the largest unit that keeps the number >= 1 after rounding."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if float(f"{seconds / scale:.3g}") >= 1.0:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def measure(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10, device=None,
            min_time_s: float = 0.0, max_repeats: int = 10_000,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn()`` honestly (see the module docstring for the algorithm).

    Args:
        fn (callable): zero-argument callable (wrap arguments in a lambda).
        warmup (int, default 3): untimed calls first.
        repeats (int, default 10): at least this many timed calls.
        device (str | torch.device | None, default None): where ``fn`` runs;
            ``None`` means :func:`course_lib.device.default_device`. ``"cuda"``
            times with CUDA events and synchronisation.
        min_time_s (float, default 0.0): keep timing until the timed calls add
            up to this (useful for very fast calls).
        max_repeats (int, default 10000): cap on timed calls.
        clock (callable, default ``time.perf_counter``): the CPU clock (a fake
            one makes tests deterministic; unused on CUDA).

    Returns:
        Timing: median, IQR, min, mean, n, threads, device.

    >>> t = measure(lambda: torch.ones(100).sum(), warmup=1, repeats=5, device="cpu")
    >>> t.n, t.device, t.threads == torch.get_num_threads()
    (5, 'cpu', True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    warmup = validate.non_negative_int("warmup", warmup)
    repeats = validate.positive_int("repeats", repeats)
    max_repeats = validate.positive_int("max_repeats", max_repeats)
    if max_repeats < repeats:
        raise ValueError(f"max_repeats ({max_repeats}) must be >= repeats ({repeats})")
    min_time_s = validate.non_negative_float("min_time_s", min_time_s)
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
    dev = resolve_device(device)

    for _ in range(warmup):
        fn()
    synchronize(dev)
    samples: list[float] = []
    total = 0.0
    while len(samples) < repeats or (total < min_time_s and len(samples) < max_repeats):
        if dev.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds
        else:
            t0 = clock()
            fn()
            dt = clock() - t0
        samples.append(dt)
        total += dt
    return Timing.from_samples(samples, threads=torch.get_num_threads(), device=str(dev), warmup=warmup)


@dataclass(frozen=True)
class SyncComparison:
    """The classic error next to the right answer (see :func:`unsynchronized_time`)."""

    device: str
    applicable: bool
    unsynchronized_s: float | None
    synchronized: Timing
    explanation: str

    def __str__(self) -> str:
        if not self.applicable:
            return f"{self.explanation}\nmeasured: {self.synchronized}"
        ratio = self.synchronized.median_s / max(self.unsynchronized_s, 1e-12)
        return (f"unsynchronised wall clock: {_fmt(self.unsynchronized_s)} (launch time only)\n"
                f"synchronised (CUDA events): {self.synchronized}\n"
                f"the unsynchronised number is {ratio:.3g}x too small. {self.explanation}")


def unsynchronized_time(fn: Callable[[], object], *, device=None, warmup: int = 1,
                        repeats: int = 5) -> SyncComparison:
    """Time ``fn()`` the wrong way (wall clock, no synchronisation) and the right way.

    On CUDA, ``t0 = perf_counter(); fn(); perf_counter() - t0`` returns as
    soon as the kernels are *queued*; the median of ``repeats`` such
    readings is reported next to :func:`measure`'s synchronised timing
    (after each unsynchronised reading the queue is drained so readings do
    not overlap). On CPU the error cannot happen -- CPU ops are synchronous,
    the call returns when the work is done -- so the result says so
    (``applicable=False``) and carries the ordinary measurement.

    >>> r = unsynchronized_time(lambda: torch.ones(10).sum(), device="cpu")
    >>> r.applicable, r.unsynchronized_s is None
    (False, True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    warmup = validate.non_negative_int("warmup", warmup)
    repeats = validate.positive_int("repeats", repeats)
    dev = resolve_device(device)
    synced = measure(fn, warmup=warmup, repeats=repeats, device=dev)
    if dev.type != "cuda":
        return SyncComparison(str(dev), False, None, synced,
                              "Not applicable on CPU: CPU ops run synchronously, so the wall clock "
                              "around the call already measures the work; there is nothing to wait for.")
    readings = []
    for _ in range(repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        fn()
        readings.append(time.perf_counter() - t0)
        synchronize(dev)  # drain the queue before the next reading
    return SyncComparison(str(dev), True, statistics.median(readings), synced,
                          "CUDA calls return once the kernels are queued; time with CUDA events "
                          "and synchronise (torch.cuda.synchronize / Event.synchronize).")
