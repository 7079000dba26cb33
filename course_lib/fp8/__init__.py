"""FP8 training: scaled casts, scaling recipes, an emulated FP8 linear layer, real FP8 matmuls.

One idea per module: :mod:`.casts` (formats, scales, scaled casts, SQNR), :mod:`.scaling`
(scaling recipes), :mod:`.linear` (the emulated FP8 linear layer), :mod:`.real` (torch._scaled_mm,
torchao float8, sourced expectations).

Introduced in chapter 11 (notebooks/11_fp8.ipynb).

The two formats (decoded bit by bit in chapter 01, constants from
:mod:`course_lib.formats`, never retyped here): **E4M3** (``fp8_e4m3fn``, max
448, 3 mantissa bits) for weights and activations, **E5M2** (``fp8_e5m2``, max
57344, 2 mantissa bits) for gradients, whose values span a wider range.

**Scaled cast** (:func:`to_fp8`). FP8's range is too narrow for raw tensors,
so every tensor travels with a float32 *scale*. The convention is the one of
torchao.float8 (``torchao/float8/float8_utils.py``: ``amax_to_scale``,
``tensor_to_scale``; ``float8_training_tensor.py``)::

    scale = fp8_max / max(amax, EPS)          # amax = max |x|, EPS = 1e-12
    data  = cast_fp8(float32(x) * scale)      # saturating round-to-nearest-even
    x    ~= float32(data) / scale             # dequantize

so the largest magnitude lands on the format's largest value. As in torchao
the division is done in float64 and rounded to float32 (torchao does it so
that eager and ``torch.compile`` agree); ``EPS`` keeps an all-zero tensor
finite (its scale is ``448 / 1e-12``); ``power_of_2=True`` rounds the scale
*down* to a power of two (torchao's ``round_scales_to_power_of_2``, on by
default in its row-wise recipe): then ``x * scale`` is exact and only the FP8
rounding is left. The rounding is :func:`course_lib.formats.round_to_format`
(integer operations on the float32 bits); the result is stored in a real
``torch.float8_*`` tensor (the conversion of an already-representable value
is exact). Overflow: ``saturate=True`` (the default, what FP8 training
recipes do -- torchao's ``to_fp8_saturated`` clamps before casting) maps
anything beyond ``+-max`` (``+-inf`` too) to ``+-max``; ``saturate=False`` is
the non-saturating mode of the OCP specification: NaN for E4M3 (it has no
inf) and inf for E5M2. torch's own ``x.to(torch.float8_e4m3fn)`` saturates at
448 with torch 2.13 (measured in chapter 01 by
:func:`course_lib.formats.torch_overflow`; older versions returned NaN), while
``x.to(torch.float8_e5m2)`` gives inf -- so never rely on the cast alone.

**Scaling recipes** (objects with one method, ``scale_for(x, fmt)``):

* :class:`TensorwiseScaling` -- *dynamic per-tensor*: the amax of the tensor
  being cast. torchao's default ``"tensorwise"`` recipe, Transformer Engine's
  ``Float8CurrentScaling``. The fastest recipe (pytorch/ao PR #1793 measured
  it ahead of row-wise on Llama3-8B), but one outlier sets the scale for the
  whole tensor and pushes every small value towards FP8's subnormals.
* :class:`RowwiseScaling` -- *axis-wise*: one scale per row (amax over the
  last dimension, the one a matmul contracts). An outlier coarsens only its
  own row. torchao's ``"rowwise"`` recipe (with power-of-two scales and
  E4M3 for the gradients as well).
* :class:`DelayedScaling` -- *per-tensor from history*: the scale comes from
  the max of the last ``history_len`` amaxes (length 16 in torchao, 1024 in
  Transformer Engine's ``DelayedScaling``), and the current amax is recorded
  *after* the cast. It saves a pass over the data, but a tensor whose
  magnitude jumps above its history saturates. This was the pre-2025
  Transformer Engine / torchao recipe; torchao deprecated it (pytorch/ao
  issue #1680: "dynamic scaling is required for higher accuracy") and
  deleted it in PR #1753 (v0.10), keeping dynamic scaling only. Taught here
  because it shows why.

**Emulated FP8 linear layer** (:class:`FP8Linear`, a custom
``autograd.Function``; the hardware recipe of Micikevicius et al. 2022 and
torchao's ``Float8Linear``). Every matmul ``A @ B`` contracting over ``k``
gets FP8 operands, each scaled along its non-contracted axis:

* forward ``y = x W^T``: ``x`` and ``W`` cast to E4M3 (row-wise: one scale
  per row of ``x`` and per row of ``W``);
* backward ``grad_x = g W`` and ``grad_W = g^T x``: ``g`` (grad_output) cast
  to E5M2 (``backward_format="e5m2"``: the paper's choice for gradients,
  called ``Format.HYBRID`` in Transformer Engine and the default of torchao's
  tensorwise recipe) or E4M3 (``"e4m3"``, "all-E4M3", as torchao's row-wise
  recipe does); with row-wise scaling each operand is
  re-cast along the axis that stays (per column of ``W`` for ``grad_x``,
  per column of ``g`` and ``x`` for ``grad_W``), per-tensor recipes reuse
  the forward's FP8 ``x`` and ``W``.

The products are computed in float32 from the dequantized operands (FP8
storage and rounding, FP32 accumulation: what FP8 tensor cores do). The bias
is added in high precision. Emulation works for any layer size; only real
FP8 kernels need multiples of 16 (:func:`convert_to_fp8`'s
``hardware_shapes_only``).

**Real FP8** (:func:`scaled_mm`): ``torch._scaled_mm`` on GPUs with FP8
tensor cores (CUDA compute capability >= 8.9: Ada, Hopper, Blackwell).
Its scales are the *inverse* of ours (``scale_a = 1 / a_scale``: they
multiply to dequantize), ``b`` must be column-major, ``K`` and ``N``
multiples of 16, and two E5M2 operands are refused (a cuBLASLt limit).
Measured with torch 2.13 (CPU build): ``torch._scaled_mm`` also runs on the
CPU, with none of these restrictions, and gives
``(float32(a) * scale_a) @ (float32(b) * scale_b)`` -- a software reference,
not FP8 hardware; :func:`scaled_mm` refuses it unless ``allow_cpu=True``.
Without ``out_dtype`` it returns FP8 (the input's dtype): always pass one.
torchao 0.18 ``convert_to_float8_training`` also runs on that CPU build
(through the same CPU kernel); see :func:`convert_to_torchao_float8`.

References: OCP 8-bit Floating Point Specification (OFP8), rev. 1.0 (2023);
P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433
(2022); torchao.float8 (github.com/pytorch/ao, ``torchao/float8``),
issues/PRs #1680, #1753, #1793, #2410; NVIDIA Transformer Engine recipes
(``DelayedScaling``, ``Float8CurrentScaling``).

>>> x = torch.tensor([0.001, -0.5, 2.0])
>>> q = to_fp8(x)                       # per-tensor dynamic scale 448 / 2
>>> q.data.dtype, q.scale.item()
(torch.float8_e4m3fn, 224.0)
>>> q.dequantize().tolist()
[0.0009765625, -0.5, 2.0]
"""
from __future__ import annotations

import torch  # noqa: F401  (the doctests above use it)

from .casts import (
    EPS,
    FP8_FORMATS,
    FP8Tensor,
    fp8_format,
    amax_to_scale,
    tensor_to_scale,
    to_fp8,
    dequantize,
    quantize_dequantize,
    sqnr_db,
)
from .scaling import (
    ScalingRecipe,
    TensorwiseScaling,
    RowwiseScaling,
    DelayedScaling,
    SCALING_RECIPES,
    make_recipe,
)
from .linear import (
    FP8Linear,
    convert_to_fp8,
)
from .real import (
    FP8UnavailableError,
    real_fp8_available,
    scaled_mm,
    emulated_scaled_mm,
    torchao_float8_available,
    convert_to_torchao_float8,
    FP8_TRAINING_EXPECTATIONS,
)

__all__ = [
    "EPS", "FP8_FORMATS", "FP8Tensor", "fp8_format", "amax_to_scale", "tensor_to_scale",
    "to_fp8", "dequantize", "quantize_dequantize", "sqnr_db",
    "ScalingRecipe", "TensorwiseScaling", "RowwiseScaling", "DelayedScaling", "SCALING_RECIPES",
    "make_recipe", "FP8Linear", "convert_to_fp8",
    "FP8UnavailableError", "real_fp8_available", "scaled_mm", "emulated_scaled_mm",
    "torchao_float8_available", "convert_to_torchao_float8", "FP8_TRAINING_EXPECTATIONS",
]
