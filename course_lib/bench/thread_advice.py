"""How many CPU threads should a workload use? Measure it, per workload.

:func:`best_threads` runs :func:`course_lib.bench.thread_scaling` (the same
call at each thread count, the original count restored) and reports the
fastest count and the speed-up of every count over one thread. The answer
depends on the workload: a tiny model's matmuls are too small to split (the
fork/join of the thread pool costs more than the work, and on a shared
machine the second core may be busy), while a large matmul scales with
cores. :func:`thread_counts` picks the counts to try: powers of two up to
the number of cores, and the core count itself.

Measure on the machine as it is when you will train: the answer on a busy
shared machine differs from the answer on an idle one (record the load,
``os.getloadavg()``, next to the numbers).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb);
:func:`course_lib.device.tune_cpu_threads` applies the answer for the course.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from .. import validate
from ..hardware import SpecTable
from .threads import thread_scaling
from .timer import Timing, _fmt

__all__ = ["thread_counts", "ThreadAnswer", "best_threads", "thread_table"]


def thread_counts(max_threads: int | None = None) -> list[int]:
    """``1, 2, 4, ...`` up to ``max_threads`` (default ``os.cpu_count()``), plus ``max_threads`` itself.

    >>> thread_counts(6), thread_counts(1), thread_counts(8)
    ([1, 2, 4, 6], [1], [1, 2, 4, 8])
    """
    top = validate.positive_int("max_threads", max_threads if max_threads is not None else (os.cpu_count() or 1))
    counts, n = [], 1
    while n <= top:
        counts.append(n)
        n *= 2
    if counts[-1] != top:
        counts.append(top)
    return counts


@dataclass(frozen=True)
class ThreadAnswer:
    """The timings of one workload at each thread count, and which count was fastest."""

    workload: str
    timings: tuple[Timing, ...]

    @property
    def best(self) -> Timing:
        return min(self.timings, key=lambda t: t.median_s)

    @property
    def best_threads(self) -> int:
        return self.best.threads

    def speedup_over_one(self, timing: Timing) -> float | None:
        """``median(1 thread) / median(timing)``; None when 1 thread was not measured."""
        one = next((t for t in self.timings if t.threads == 1), None)
        return None if one is None else one.median_s / timing.median_s

    def as_dict(self) -> dict:
        return {"workload": self.workload, "best_threads": self.best_threads,
                "timings": [{"threads": t.threads, "median_s": t.median_s, "iqr_s": t.iqr_s, "n": t.n}
                            for t in self.timings]}


def best_threads(fn: Callable[[], object], workload: str, threads=None, **measure_kwargs) -> ThreadAnswer:
    """Time ``fn`` at each count of ``threads`` (default :func:`thread_counts`) on the CPU.

    ``measure_kwargs`` go to :func:`course_lib.bench.measure` (``warmup``,
    ``repeats``, ``min_time_s``); the device is the CPU.

    >>> import torch
    >>> a = best_threads(lambda: torch.ones(64).sum(), "tiny sum", threads=(1,), warmup=0, repeats=2)
    >>> a.best_threads, a.speedup_over_one(a.best)
    (1, 1.0)
    """
    validate.instance_of("workload", workload, str)
    counts = thread_counts() if threads is None else threads
    measure_kwargs.setdefault("device", "cpu")
    return ThreadAnswer(workload, tuple(thread_scaling(fn, counts, **measure_kwargs)))


def thread_table(answers: list[ThreadAnswer]) -> SpecTable:
    """Rows: workload, threads, median, IQR, speed-up over 1 thread, and which count was best."""
    rows = []
    for a in answers:
        for t in a.timings:
            s = a.speedup_over_one(t)
            rows.append([a.workload, str(t.threads), _fmt(t.median_s), _fmt(t.iqr_s),
                         "-" if s is None else f"{s:.2f}x", "best" if t is a.best else ""])
    notes = ["speed-up = median at 1 thread / median at this count (above 1: more threads help)."]
    return SpecTable(["workload", "threads", "median", "IQR", "vs 1 thread", ""], rows, notes)
