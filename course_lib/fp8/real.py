"""Real FP8: availability, torch._scaled_mm (and its emulation), torchao float8, sourced expectations.

See the package docstring (:mod:`course_lib.fp8`) for the conventions and references.
Introduced in chapter 11 (notebooks/11_fp8.ipynb).
"""
from __future__ import annotations

import sys

from typing import Callable

import torch
from torch import nn

from course_lib.device import default_device
from course_lib.formats import get_format
from course_lib.validate import callable_or_none, instance_of
from .scaling import _check_bool

# --------------------------------------------------------------------------- real FP8
class FP8UnavailableError(RuntimeError):
    """Real FP8 matmuls are not available here (no FP8 GPU, or no ``torch._scaled_mm``)."""


def real_fp8_available(device=None) -> tuple[bool, str]:
    """Whether ``torch._scaled_mm`` runs on FP8 tensor cores here, and why (not).

    True needs a torch with ``torch._scaled_mm`` and a CUDA GPU of compute
    capability >= 8.9 (Ada, Hopper, Blackwell) on the course device
    (:func:`course_lib.device.default_device`, or ``device``). ROCm builds are
    not judged here (MI300 FP8 uses the "fnuz" formats).

    >>> ok, why = real_fp8_available()
    >>> isinstance(ok, bool) and len(why) > 0
    True
    """
    if not hasattr(torch, "_scaled_mm"):
        return False, f"torch {torch.__version__} has no torch._scaled_mm"
    if getattr(torch.version, "hip", None):
        return False, "a ROCm build of torch: this check covers NVIDIA GPUs only"
    dev = torch.device(device if device is not None else default_device())
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False, (f"no CUDA GPU in use (device {dev.type!r}, torch.cuda.is_available() is "
                       f"{torch.cuda.is_available()}): FP8 tensor cores need CUDA compute capability "
                       f">= 8.9. torch._scaled_mm does run on the CPU in torch 2.13, but as a "
                       f"float32 software reference, not FP8 hardware; use the emulation (FP8Linear)")
    major, minor = torch.cuda.get_device_capability(dev)
    name = torch.cuda.get_device_name(dev)
    if (major, minor) < (8, 9):
        return False, (f"{name} has compute capability {major}.{minor}; FP8 tensor cores need >= 8.9 "
                       f"(Ada, Hopper, Blackwell)")
    return True, f"{name}, compute capability {major}.{minor}: torch._scaled_mm uses FP8 tensor cores"


def _check_scaled_mm_args(a, b, scale_a, scale_b) -> None:
    for name, t in (("a", a), ("b", b)):
        instance_of(name, t, torch.Tensor)
        try:
            f = get_format(t.dtype)
        except ValueError:
            f = None
        if f is None or f.bits != 8:
            raise TypeError(f"{name} must be an FP8 tensor (torch.float8_e4m3fn or torch.float8_e5m2), "
                            f"got dtype {t.dtype}; cast with to_fp8(x, fmt).data")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if a.dtype == torch.float8_e5m2 and b.dtype == torch.float8_e5m2:
        raise TypeError("a and b are both float8_e5m2: cuBLASLt has no E5M2 x E5M2 kernel "
                        "(torch: 'Multiplication of two Float8_e5m2 matrices is not supported'); "
                        "make one operand E4M3 (E5M2 is for gradients only)")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"a is {m}x{k} and b is {k2}x{n}: inner dimensions differ")
    if k % 16 or n % 16:
        raise ValueError(f"FP8 matmuls need K and N to be multiples of 16, got a {m}x{k} @ b {k2}x{n} "
                         f"(K={k}, N={n}); pad them (torchao: pad_tensor_for_matmul) or use "
                         f"emulated_scaled_mm / FP8Linear")
    if not (a.stride(1) == 1 and a.stride(0) >= max(k, 1)):
        raise ValueError(f"a must be row-major (contiguous), got strides {a.stride()}; "
                         f"use a.contiguous()")
    if not (b.stride(0) == 1 and b.stride(1) >= max(k, 1)):
        raise ValueError(f"b must be column-major, got strides {b.stride()} for shape {tuple(b.shape)}; "
                         f"store it transposed: b = b.t().contiguous().t()")
    for name, s, rows in (("scale_a", scale_a, (m, 1)), ("scale_b", scale_b, (1, n))):
        instance_of(name, s, torch.Tensor)
        if s.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 tensor, got {s.dtype}")
        if s.numel() != 1 and tuple(s.shape) != rows:
            raise ValueError(f"{name} must have one element (per tensor) or shape {rows} (row-wise), "
                             f"got shape {tuple(s.shape)}")
    if (scale_a.numel() == 1) != (scale_b.numel() == 1):
        raise ValueError("scale_a and scale_b must both be per-tensor or both row-wise")
    devices = {a.device, b.device, scale_a.device, scale_b.device}
    if len(devices) != 1:
        raise ValueError(f"a, b, scale_a and scale_b must be on one device, "
                         f"got {sorted(map(str, devices))}")


def emulated_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor,
                       scale_b: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(float32(a) * scale_a) @ (float32(b) * scale_b)`` in ``out_dtype``: _scaled_mm's maths.

    Same conventions as :func:`scaled_mm` (``scale_a``, ``scale_b`` are the
    *dequantization* factors ``1 / scale``), on any device and any shape.

    >>> from course_lib.fp8 import to_fp8
    >>> a = to_fp8(torch.tensor([[1.0, 2.0]])); b = to_fp8(torch.tensor([[3.0], [4.0]]))
    >>> b.data.float().flatten().tolist()      # 3 * 112 = 336 is a tie: to even, 320
    [320.0, 448.0]
    >>> emulated_scaled_mm(a.data, b.data, 1 / a.scale, 1 / b.scale).item()   # not 11
    10.85714340209961
    """
    return ((a.to(torch.float32) * scale_a) @ (b.to(torch.float32) * scale_b)).to(out_dtype)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype = torch.float32, *, use_fast_accum: bool = False,
              allow_cpu: bool = False) -> torch.Tensor:
    """A real FP8 matmul through ``torch._scaled_mm``, with its rules checked first.

    Computes ``(a * scale_a) @ (b * scale_b)`` in ``out_dtype``.

    Arguments: ``a`` (M x K, FP8, row-major), ``b`` (K x N, FP8,
    **column-major**: ``b = b_rows.t().contiguous().t()``), not both E5M2;
    ``K`` and ``N`` multiples of 16. ``scale_a`` / ``scale_b``: float32
    **inverse** scales -- the factors that dequantize (``1 / a.scale`` for an
    :class:`FP8Tensor` ``a``), one element each (per tensor) or shapes
    ``(M, 1)`` and ``(1, N)`` (row-wise). ``out_dtype`` (default float32;
    ``torch._scaled_mm`` would return FP8 without one), ``use_fast_accum``
    (default False; Hopper's faster, less accurate accumulation),
    ``allow_cpu`` (default False: on a CPU raise; True runs torch's CPU
    reference kernel, which torch 2.13 has). The rules are checked on every
    device, so code that passes here also passes on an FP8 GPU. One rule is
    left to torch, because it depends on the GPU and the torch version:
    row-wise scales on CUDA want a bf16 (newer torch: or fp16) ``out_dtype``
    ("Only bf16 high precision output types are supported for row-wise
    scaling"), float32 only with cuBLAS on compute capability 9.0.

    Raises TypeError / ValueError for bad operands and
    :class:`FP8UnavailableError` where there is no FP8 hardware (the message
    of :func:`real_fp8_available`), or, with ``allow_cpu=True``, where torch
    has no CPU kernel (torch releases before pytorch/pytorch PR #139975).

    >>> a = torch.ones(16, 16).to(torch.float8_e4m3fn); one = torch.tensor(1.0)
    >>> scaled_mm(a, a.t().contiguous().t(), one, one, allow_cpu=True)[0, 0].item()
    16.0
    """
    _check_scaled_mm_args(a, b, scale_a, scale_b)
    instance_of("out_dtype", out_dtype, torch.dtype)
    if a.device.type == "cpu":
        if not allow_cpu:
            raise FP8UnavailableError("scaled_mm on the CPU: " + real_fp8_available("cpu")[1]
                                      + "; pass allow_cpu=True to run torch's CPU reference kernel")
        if not hasattr(torch, "_scaled_mm"):
            raise FP8UnavailableError(real_fp8_available("cpu")[1])
    else:
        ok, why = real_fp8_available(a.device)
        if not ok:
            raise FP8UnavailableError(why)
    try:
        return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype,
                                use_fast_accum=use_fast_accum)
    except NotImplementedError as exc:      # an older torch: no CPU kernel ("Could not run ...")
        if a.device.type != "cpu":
            raise
        raise FP8UnavailableError(f"torch {torch.__version__} has no CPU kernel for torch._scaled_mm "
                                  f"(pytorch/pytorch PR #139975 added one); use emulated_scaled_mm "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


# --------------------------------------------------------------------------- torchao
def torchao_float8_available() -> tuple[bool, str]:
    """Whether ``torchao.float8.convert_to_float8_training`` can be imported, and the version.

    Measured: torchao 0.18.0 with torch 2.13 (CPU build) converts, runs
    forward and backward on the CPU (through ``torch._scaled_mm``'s CPU
    kernel) -- a correctness path, not a speed-up; its speed-ups need an FP8
    GPU (:data:`FP8_TRAINING_EXPECTATIONS`).

    The first call imports torchao through :mod:`course_lib.qat`'s quiet
    import: a CPU build of torchao logs "Failed to load ..._C_mxfp8 /
    _C_cutlass_90a" (its GPU-only kernels) and torch an Enum-registration
    notice -- packaging messages about nothing a learner can change, so
    they are lowered to ERROR for the import only.

    >>> ok, why = torchao_float8_available(); isinstance(ok, bool)
    True
    """
    if "torchao" not in sys.modules:         # first import: the quiet one (a None entry blocks it)
        from course_lib.qat.real_int8 import _import_torchao

        _import_torchao()                    # its verdict is about QAT; float8's is judged below
    try:
        import torchao
        from torchao.float8 import convert_to_float8_training  # noqa: F401
    except Exception as exc:  # ImportError, or a torchao built for another torch
        return False, (f"torchao.float8 is not importable ({type(exc).__name__}: {exc}); "
                       f"install it with: pip install --no-deps torchao")
    return True, f"torchao {getattr(torchao, '__version__', '?')}: torchao.float8 is importable"


def convert_to_torchao_float8(model: nn.Module, *, recipe: str = "tensorwise",
                              module_filter: Callable[[str, nn.Linear], bool] | None = None,
                              hardware_shapes_only: bool = True) -> nn.Module:
    """torchao's FP8 training conversion (``convert_to_float8_training``), guarded.

    Swaps ``nn.Linear`` layers for torchao's ``Float8Linear`` in place with
    ``Float8LinearConfig.from_recipe_name(recipe)`` (``"tensorwise"``,
    ``"rowwise"``, ``"rowwise_with_gw_hp"``). ``hardware_shapes_only``
    (default True, as torchao's README filter) skips layers whose dims are
    not multiples of 16; ``module_filter(name, layer)`` can skip more.
    Raises :class:`FP8UnavailableError` (with the reason of
    :func:`torchao_float8_available`) when torchao is missing. Returns the
    model (torchao returns a new module only for a bare ``nn.Linear``).
    """
    ok, why = torchao_float8_available()
    if not ok:
        raise FP8UnavailableError(why)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    instance_of("model", model, nn.Module)
    callable_or_none("module_filter", module_filter)
    _check_bool("hardware_shapes_only", hardware_shapes_only)
    try:
        config = Float8LinearConfig.from_recipe_name(recipe)
    except (AssertionError, ValueError):
        raise ValueError(f"unknown torchao float8 recipe {recipe!r}; allowed: 'tensorwise', "
                         f"'rowwise', 'rowwise_with_gw_hp'") from None

    def keep(mod: nn.Module, fqn: str) -> bool:
        if hardware_shapes_only and isinstance(mod, nn.Linear) and (
                mod.in_features % 16 or mod.out_features % 16):
            return False
        return module_filter is None or bool(module_filter(fqn, mod))

    return convert_to_float8_training(model, config=config, module_filter_fn=keep)


# --------------------------------------------------------------------------- sourced figures
#: What FP8 training buys on real hardware, from the sources (not measurable on a CPU).
#: Each entry: what was measured, the numbers, and where it was published.
FP8_TRAINING_EXPECTATIONS: dict[str, dict] = {
    "small_linear": {
        "what": "torchao float8 Linear (tensorwise dynamic scaling) forward+backward, speed-up over "
                "bfloat16, microbenchmark on NVIDIA H100",
        "M,K,N": (1024, 2048, 1024),
        "speedup": 0.80,
        "advice": "leave this linear in bfloat16, the shapes are too small to benefit from float8",
        "source": "torchao/float8/README.md, section Performance, Example 1 (small shapes), "
                  "https://github.com/pytorch/ao/blob/0cf1281a38bdd8c84b11549ffc49a63eb3a92d40/"
                  "torchao/float8/README.md (later versions show the table as an image)",
    },
    "large_linear": {
        "what": "same microbenchmark, large shapes",
        "M,K,N": (4096, 8192, 16384),
        "speedup": 1.39,
        "advice": "enable float8 for this linear to get a speedup",
        "source": "torchao/float8/README.md, section Performance, Example 2 (large shapes), "
                  "https://github.com/pytorch/ao/blob/0cf1281a38bdd8c84b11549ffc49a63eb3a92d40/"
                  "torchao/float8/README.md",
    },
    "small_layers_slow_down": {
        "what": "float8 rowwise on Llama3 with tensor parallelism: the small attention.wk / "
                "attention.wv linears got about 40% slower, cancelling the gains of the large "
                "ones; torchao added an automatic filter that skips linears with dims not "
                "divisible by 16 or below per-recipe size thresholds",
        "slowdown": 0.40,
        "source": "pytorch/ao PR #2410 '[float8] add _auto_filter_for_recipe to float8' "
                  "(https://github.com/pytorch/ao/pull/2410), root cause in pytorch/torchtitan#1207",
    },
    "llama3_8b_tokens_per_second": {
        "what": "Llama3-8B pretraining, 8x H100, torchtitan, torch.compile, FSDP2, seq 8192: "
                "median tokens/s (bf16, tensorwise with float8 all-gather, rowwise)",
        "bf16": 6150, "tensorwise": 7689.5, "rowwise": 6768,
        "speedup": {"tensorwise": 1.2503, "rowwise": 1.1005},
        "source": "torchao/float8/README.md, Training benchmarks, NVIDIA H100 (pytorch 2.7.0a0, "
                  "torchao 0.10.0), https://github.com/pytorch/ao/blob/"
                  "9519bebbc397d60274982a74c084f9dff18e61a6/torchao/float8/README.md; first added "
                  "in PR #1793 (https://github.com/pytorch/ao/pull/1793) with 6019 / 7190 / 6649 "
                  "tokens/s: 'tensorwise scaling achieved ~8% higher tokens/second over rowwise "
                  "scaling, and ~19.5% higher than the bf16 baseline'",
    },
    "delayed_scaling_removed": {
        "what": "torchao deprecated delayed and static scaling (warning in v0.9.0, removed in "
                "v0.10.0): 'dynamic scaling is required for higher accuracy', no real-world users",
        "source": "pytorch/ao issue #1680 (https://github.com/pytorch/ao/issues/1680), deletion "
                  "in PR #1753 (https://github.com/pytorch/ao/pull/1753)",
    },
}
