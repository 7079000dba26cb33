"""How many CPU threads? Measure it: ``thread_scaling``.

Algorithm: remember ``torch.get_num_threads()``; for each count in
``threads`` call ``torch.set_num_threads(n)`` and time ``fn`` with
:func:`course_lib.bench.measure`; restore the original count afterwards,
also when ``fn`` raises.

More threads are not always faster. Splitting a small op across threads
costs a fork/join (waking workers, synchronising them, sharing caches) that
a tiny matmul never earns back; on a 2-core machine shared with other work
the second thread may not even get a core. The course's tiny MLP trains
markedly faster on 1 thread than on 2 on its 2-core build machine (chapter
09 measures it; :func:`course_lib.device.tune_cpu_threads` acts on it).
Large matmuls, in contrast, scale with cores.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .. import validate
from .timer import Timing, measure

__all__ = ["thread_scaling"]


def thread_scaling(fn: Callable[[], object], threads: Iterable[int] = (1, 2), **measure_kwargs) -> list[Timing]:
    """Time ``fn()`` at each torch intra-op thread count in ``threads``.

    Args:
        fn (callable): zero-argument callable.
        threads (iterable of int, default (1, 2)): thread counts, each >= 1.
        **measure_kwargs: passed to :func:`course_lib.bench.measure`
            (``warmup``, ``repeats``, ``device``, ``min_time_s``, ``clock``).

    Returns:
        list[Timing]: one per count, in order; ``Timing.threads`` records it.

    >>> before = torch.get_num_threads()
    >>> ts = thread_scaling(lambda: torch.ones(64).sum(), threads=(1,), warmup=0, repeats=2, device="cpu")
    >>> [t.threads for t in ts], torch.get_num_threads() == before
    ([1], True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    if isinstance(threads, (int, str)) or not isinstance(threads, Iterable):
        raise TypeError(f"threads must be an iterable of positive ints such as (1, 2), got {threads!r}")
    counts = [validate.positive_int("thread count", n) for n in threads]
    if not counts:
        raise ValueError("threads must name at least one thread count")
    original = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(measure(fn, **measure_kwargs))
    finally:
        torch.set_num_threads(original)
    return results
