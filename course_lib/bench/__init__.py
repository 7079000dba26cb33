"""Honest measurement: timers, FLOP counts, peaks, MFU, thread scaling, and the benchmarks.

Measuring (one idea per module):

* :mod:`.timer` -- :func:`measure` (warm-up excluded, CUDA events +
  synchronisation on GPU, ``perf_counter`` on CPU, median and IQR, thread
  count recorded) and :func:`unsynchronized_time` (the classic error, shown);
* :mod:`.wallclock` -- ``measure_wall_clock``: a wall-clock timer that
  synchronises before every clock reading (for any device and clock);
* :mod:`.simulated` -- ``SimulatedDevice``: an asynchronous device on a fake
  clock, to see (and grade) timing mistakes without noise;
* :mod:`.compiled` -- :func:`measure_compiled`: ``torch.compile``'s first
  call (compilation) apart from its steady state;
* :mod:`.threads` -- :func:`thread_scaling`: the same call at several
  ``torch.set_num_threads`` values, restoring the original;
  :mod:`.thread_advice` -- the best thread count for a workload;
* :mod:`.flops` -- :func:`count_flops` / :func:`flops_by_module` /
  :func:`training_step_flops` (``FlopCounterMode``), the 6N(+12LTd) rule
  :func:`transformer_flops_per_token`, :func:`mfu`;
* :mod:`.peak` -- ``peak_flops``: the peak an MFU divides by, sourced (GPU
  table) or measured (CPU);
* :mod:`.precision` -- ``fp32_matmul_precision``: TF32 and the float32 matmul
  precision setting, applied and restored.

Benchmarks (``python -m course_lib bench [NAME]``): :mod:`.matmul` and
:mod:`.step` (matmul throughput by dtype, layout and size; training-step speed
and memory by precision recipe), :mod:`.sweep` (the main sweep: tables, JSON,
plot via :mod:`.plots`), :mod:`.scaler` (our loss scaler vs GradScaler),
:mod:`.grading` (notebooks graded per minute); ``course_lib.bench_formats``
is the rounding benchmark of chapter 01.

Hardware peaks live in :mod:`course_lib.hardware`; memory measurements
(``cuda_peak_memory``, ``saved_activation_bytes``) in :mod:`course_lib.memory`.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).

>>> from course_lib.bench import measure, count_flops
>>> measure(lambda: None, warmup=0, repeats=3, device="cpu").n
3
"""
from .compiled import CompiledTiming, measure_compiled
from .flops import (count_flops, flops_by_module, matmul_flops, mfu, training_step_flops,
                    transformer_flops_per_token)
from .threads import thread_scaling
from .timer import SyncComparison, Timing, measure, unsynchronized_time

__all__ = ["Timing", "measure", "SyncComparison", "unsynchronized_time", "CompiledTiming",
           "measure_compiled", "thread_scaling", "matmul_flops", "count_flops", "flops_by_module",
           "training_step_flops", "transformer_flops_per_token", "mfu"]
