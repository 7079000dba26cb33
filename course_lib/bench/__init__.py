"""Honest measurement: timers, FLOP counts, MFU, thread scaling.

* :mod:`.timer` -- :func:`measure` (warm-up excluded, CUDA events +
  synchronisation on GPU, ``perf_counter`` on CPU, median and IQR, thread
  count recorded) and :func:`unsynchronized_time` (the classic error, shown);
* :mod:`.compiled` -- :func:`measure_compiled`: ``torch.compile``'s first
  call (compilation) apart from its steady state;
* :mod:`.threads` -- :func:`thread_scaling`: the same call at several
  ``torch.set_num_threads`` values, restoring the original;
* :mod:`.flops` -- :func:`count_flops` / :func:`flops_by_module` /
  :func:`training_step_flops` (``FlopCounterMode``), the 6N(+12LTd) rule
  :func:`transformer_flops_per_token`, :func:`mfu` and the measured CPU peak
  :func:`measure_cpu_peak_flops`.

Hardware peaks live in :mod:`course_lib.hardware`; memory measurements
(``cuda_peak_memory``, ``saved_activation_bytes``) in :mod:`course_lib.memory`.
``course_lib.bench_formats`` is a separate benchmark (chapter 01).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).

>>> from course_lib.bench import measure, count_flops
>>> measure(lambda: None, warmup=0, repeats=3, device="cpu").n
3
"""
from .compiled import CompiledTiming, measure_compiled
from .flops import (count_flops, flops_by_module, matmul_flops, measure_cpu_peak_flops, mfu,
                    training_step_flops, transformer_flops_per_token)
from .threads import thread_scaling
from .timer import SyncComparison, Timing, measure, unsynchronized_time

__all__ = ["Timing", "measure", "SyncComparison", "unsynchronized_time", "CompiledTiming",
           "measure_compiled", "thread_scaling", "matmul_flops", "count_flops", "flops_by_module",
           "training_step_flops", "transformer_flops_per_token", "mfu", "measure_cpu_peak_flops"]
