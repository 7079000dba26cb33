"""The peak FLOP/s an MFU divides by: a sourced GPU figure or a measured CPU one.

MFU = achieved FLOP/s / peak FLOP/s (:func:`course_lib.bench.mfu`). The peak
must be the *dense* figure of the precision the matmuls actually run in
(``"fp32"``, ``"tf32"``, ``"fp16"``, ``"bf16"``; for an AMP recipe the autocast
dtype):

* **CUDA**: :func:`course_lib.hardware.lookup_gpu` finds the GPU by the name
  ``torch.cuda.get_device_name`` reports and
  :func:`course_lib.hardware.peak_tflops` gives its datasheet figure; a GPU
  that is not in the table, or a precision it has no tensor-core path for,
  gets no peak (``flops=None`` and the reason) -- never a guess;
* **CPU**: there is no datasheet figure for "what PyTorch's kernels reach on
  this CPU with this many threads", so it is measured: the fastest call of
  the fastest of the three memory layouts of a 512 x 512 matmul in that
  precision (:func:`course_lib.bench.matmul.matmul_throughput`, layouts
  ``nn``, ``nt``, ``tn``; :attr:`~course_lib.bench.matmul.MatmulResult.best_tflops`),
  at the current thread count. The fastest call, not the median: a peak is
  the best the machine reaches, and on a shared machine a median includes
  calls slowed by other processes. All three, because where a dtype
  has no optimised kernel the layouts differ several-fold (FP16 on a CPU
  without FP16 arithmetic), and a training step uses all three (forward
  ``nt``, input gradient ``nn``, weight gradient ``tn``): a peak from one
  layout can be lower than what the step reaches, and MFU then exceeds 100%.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validate
from .matmul import LAYOUTS, matmul_throughput
from .timer import resolve_device

__all__ = ["PRECISION_DTYPES", "Peak", "peak_flops"]

#: Precision key -> the dtype the matmuls use (TF32 takes float32 tensors).
PRECISION_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                    "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s (``None`` when there is no honest figure) and where it comes from."""

    precision: str
    flops: float | None
    source: str

    def __str__(self) -> str:
        value = "n/a" if self.flops is None else f"{self.flops / 1e12:.4g} TFLOP/s"
        return f"{self.precision} peak: {value} ({self.source})"


def peak_flops(precision: str, device=None, *, cpu_size: int = 512, cpu_repeats: int = 5) -> Peak:
    """The dense peak for ``precision`` on ``device`` (see the module docstring).

    Args:
        precision (str): ``"fp32"``, ``"tf32"``, ``"fp16"`` or ``"bf16"``.
        device (str | torch.device | None): default :func:`course_lib.device.default_device`.
        cpu_size (int, default 512), cpu_repeats (int, default 5): the CPU
            measurement's matrix size and timed calls per layout (the fastest counts).

    >>> p = peak_flops("fp32", "cpu", cpu_size=64, cpu_repeats=1)
    >>> p.flops > 0, p.source.startswith("measured")
    (True, True)
    """
    validate.one_of("precision", precision, PRECISION_DTYPES)
    dev = resolve_device(device)
    if dev.type == "cpu":
        runs = [matmul_throughput(cpu_size, precision, layout, device=dev, repeats=cpu_repeats)
                for layout in LAYOUTS]
        best = max(runs, key=lambda r: r.best_tflops)
        return Peak(precision, best.best_tflops * 1e12,
                    f"measured: fastest call, fastest layout ({best.layout}), {cpu_size}x{cpu_size} {precision} "
                    f"matmul on this CPU, {best.threads} thread(s)")
    from ..hardware import lookup_gpu, peak_tflops

    name = torch.cuda.get_device_name(dev)
    spec = lookup_gpu(name)
    if spec is None:
        return Peak(precision, None, f"{name!r} is not in course_lib.hardware.GPUS: no sourced peak")
    try:
        tflops = peak_tflops(spec, precision)
    except LookupError as exc:
        return Peak(precision, None, str(exc))
    return Peak(precision, tflops * 1e12, f"{spec.key} dense {precision}, {spec.source}")
