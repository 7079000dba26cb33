"""Matmul throughput by precision and shape: ``matmul_sweep``.

Algorithm of :func:`matmul_throughput`: two random ``n x n`` matrices in
the setting's dtype on the device; time their product in the given memory
layout with
:func:`course_lib.bench.measure` (warm-up excluded, CUDA synchronised,
median of the timed calls; a ``"tf32"`` setting runs under
:func:`course_lib.bench.precision.fp32_matmul_precision` ``("high")``);
throughput = ``2 n^3`` FLOPs / median seconds. :func:`matmul_sweep` does it
for every (setting, size) pair; :func:`matmul_table` adds the speed-up over
fp32 at the same size.

**Settings** (:data:`MATMUL_SETTINGS`): ``fp32`` (float32, full precision),
``tf32`` (float32 tensors, ``set_float32_matmul_precision("high")``),
``bf16`` and ``fp16`` (16-bit tensors). The matmul's output dtype is its
inputs' (fp32 accumulation inside is the library's choice).

**Layouts** (:data:`LAYOUTS`): ``"nn"`` is ``a @ b``; ``"nt"`` is
``a @ b.T`` with ``b`` stored row-major as ``(n, k)`` -- the layout of
``nn.Linear``'s forward, whose weight is stored ``(out, in)``; ``"tn"`` is
``a.T @ b``, the layout of a weight gradient (``grad_out.T @ x``). An
optimised GEMM (cuBLAS, oneDNN, OpenBLAS) handles all three at the same
speed; a generic fallback kernel may not (chapter 09 measures FP16 on a CPU
without native FP16 arithmetic: the ``"nt"`` layout, dot products along
contiguous memory, is several times faster than ``"nn"``).

**Alignment.** Tensor cores (and vectorised CPU kernels) work on tiles: on
NVIDIA GPUs, FP16/BF16 GEMMs want every dimension a multiple of 8 (16 bytes;
A100 and later are most efficient at multiples of 64 bytes) -- NVIDIA's
"Matrix Multiplication Background" user guide. Sweep sizes come in pairs
``n - 1`` and ``n`` to show what a ragged dimension costs on the machine at
hand; :func:`alignment` says which multiples a size is.

On a CPU, FP16 matmuls without native FP16 arithmetic take a slow generic
path (chapter 09 measures it): keep FP16 sizes small there.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch

from .. import validate
from ..hardware import SpecTable
from .flops import matmul_flops
from .precision import fp32_matmul_precision
from .timer import _fmt, measure, resolve_device

__all__ = ["MATMUL_SETTINGS", "LAYOUTS", "MatmulResult", "alignment", "matmul_throughput", "matmul_sweep",
           "matmul_table"]

#: Setting -> (tensor dtype, float32 matmul precision or None).
MATMUL_SETTINGS: dict[str, tuple[torch.dtype, str | None]] = {
    "fp32": (torch.float32, "highest"),
    "tf32": (torch.float32, "high"),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
}


#: Memory layouts of the product: "nn" a @ b, "nt" a @ b.T (nn.Linear), "tn" a.T @ b (weight gradient).
LAYOUTS = ("nn", "nt", "tn")


def alignment(n: int) -> str:
    """The largest of 16, 8, 4, 2 that divides ``n`` (``"x16"``, ...), or ``"odd"``.

    >>> alignment(4096), alignment(4104), alignment(4095)
    ('x16', 'x8', 'odd')
    """
    n = validate.positive_int("n", n)
    for m in (16, 8, 4, 2):
        if n % m == 0:
            return f"x{m}"
    return "odd"


@dataclass(frozen=True)
class MatmulResult:
    """One (setting, layout, size) measurement: ``tflops`` = ``2 n^3 / median_s / 1e12``.

    ``min_s`` is the fastest timed call; :attr:`best_tflops` uses it (a
    peak is the best the machine reaches, so a slow call from another
    process should not lower it).
    """

    setting: str
    size: int
    layout: str
    median_s: float
    iqr_s: float
    tflops: float
    device: str
    threads: int
    n: int
    min_s: float | None = None

    @property
    def alignment(self) -> str:
        return alignment(self.size)

    @property
    def best_tflops(self) -> float:
        """``2 n^3 / min_s / 1e12`` (the median's figure when ``min_s`` is unknown)."""
        if not self.min_s:
            return self.tflops
        return matmul_flops(self.size, self.size, self.size) / self.min_s / 1e12

    def as_dict(self) -> dict:
        return asdict(self) | {"alignment": self.alignment}


def _context(setting: str):
    precision = MATMUL_SETTINGS[setting][1]
    return contextlib.nullcontext() if precision is None else fp32_matmul_precision(precision)


def matmul_throughput(size: int, setting: str = "fp32", layout: str = "nn", *, device=None, warmup: int = 1,
                      repeats: int = 5, min_time_s: float = 0.0, seed: int = 0) -> MatmulResult:
    """Time one ``size x size`` by ``size x size`` matmul in ``setting`` and ``layout`` (module docstring).

    >>> r = matmul_throughput(32, "bf16", "nt", device="cpu", repeats=2)
    >>> r.setting, r.size, r.layout, r.tflops > 0
    ('bf16', 32, 'nt', True)
    """
    size = validate.positive_int("size", size)
    validate.one_of("setting", setting, MATMUL_SETTINGS)
    validate.one_of("layout", layout, LAYOUTS)
    dev = resolve_device(device)
    dtype = MATMUL_SETTINGS[setting][0]
    gen = torch.Generator().manual_seed(validate.non_negative_int("seed", seed))
    a = torch.randn(size, size, generator=gen).to(device=dev, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=dev, dtype=dtype)
    product = {"nn": lambda: a @ b, "nt": lambda: a @ b.T, "tn": lambda: a.T @ b}[layout]
    with _context(setting):
        t = measure(product, warmup=warmup, repeats=repeats, device=dev, min_time_s=min_time_s)
    tflops = matmul_flops(size, size, size) / t.median_s / 1e12
    return MatmulResult(setting, size, layout, t.median_s, t.iqr_s, tflops, t.device, t.threads, t.n, t.min_s)


def matmul_sweep(sizes: Iterable[int], settings: Iterable[str] = ("fp32", "bf16", "fp16"),
                 layouts: Iterable[str] = ("nn",), *, device=None,
                 sizes_for: dict[str, Iterable[int]] | None = None, warmup: int = 1, repeats: int = 5,
                 min_time_s: float = 0.0, on_result: Callable[[MatmulResult], object] | None = None
                 ) -> list[MatmulResult]:
    """:func:`matmul_throughput` for every setting, layout and size.

    Args:
        sizes (iterable of int): matrix sizes.
        settings (iterable of str): keys of :data:`MATMUL_SETTINGS`.
        layouts (iterable of str, default ("nn",)): members of :data:`LAYOUTS`.
        device: default :func:`course_lib.device.default_device`.
        sizes_for (dict | None): per-setting sizes that replace ``sizes``
            (e.g. smaller FP16 sizes on a CPU).
        warmup, repeats, min_time_s: passed to :func:`course_lib.bench.measure`.
        on_result (callable | None): called with each result (a progress bar).

    >>> rows = matmul_sweep([8, 9], ["fp32"], ["nn", "nt"], device="cpu", repeats=1)
    >>> [(r.setting, r.layout, r.size) for r in rows]
    [('fp32', 'nn', 8), ('fp32', 'nn', 9), ('fp32', 'nt', 8), ('fp32', 'nt', 9)]
    """
    sizes = [validate.positive_int("size", s) for s in sizes]
    settings = [validate.one_of("setting", s, MATMUL_SETTINGS) for s in settings]
    layouts = [validate.one_of("layout", x, LAYOUTS) for x in layouts]
    sizes_for = {} if sizes_for is None else dict(sizes_for)
    for key in sizes_for:
        validate.one_of("sizes_for key", key, settings)
    validate.callable_or_none("on_result", on_result)
    results = []
    for setting in settings:
        for layout in layouts:
            for size in sizes_for.get(setting, sizes):
                r = matmul_throughput(size, setting, layout, device=device, warmup=warmup, repeats=repeats,
                                      min_time_s=min_time_s)
                results.append(r)
                if on_result is not None:
                    on_result(r)
    return results


def matmul_table(results: list[MatmulResult]) -> SpecTable:
    """Rows: setting, layout, size, alignment, median time, TFLOP/s, speed-up over fp32.

    The speed-up compares with the fp32 row of the same layout and size.

    >>> rows = [MatmulResult("fp32", 8, "nn", 2e-3, 0.0, 1.0, "cpu", 1, 3),
    ...         MatmulResult("bf16", 8, "nn", 5e-4, 0.0, 4.0, "cpu", 1, 3)]
    >>> print(matmul_table(rows))
    setting  layout  size  alignment  median  IQR   TFLOP/s  vs fp32
    -------  ------  ----  ---------  ------  ----  -------  -------
    fp32     nn      8     x8         2 ms    0 ns  1        1.00x
    bf16     nn      8     x8         500 us  0 ns  4        4.00x
    <BLANKLINE>
    Throughput = 2*n^3 FLOPs / median time. 'vs fp32' = fp32 median / this median (same layout and size).
    """
    fp32 = {(r.layout, r.size): r.median_s for r in results if r.setting == "fp32"}
    rows = []
    for r in results:
        base = fp32.get((r.layout, r.size))
        ratio = "-" if base is None else f"{base / r.median_s:.2f}x"
        rows.append([r.setting, r.layout, str(r.size), r.alignment, _fmt(r.median_s), _fmt(r.iqr_s),
                     f"{r.tflops:.3g}", ratio])
    notes = ["Throughput = 2*n^3 FLOPs / median time. 'vs fp32' = fp32 median / this median (same layout and size)."]
    return SpecTable(["setting", "layout", "size", "alignment", "median", "IQR", "TFLOP/s", "vs fp32"], rows, notes)
