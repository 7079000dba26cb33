"""FP8 training: scaled casts, scaling recipes, an emulated FP8 linear layer, real FP8 matmuls.

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

import copy
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from course_lib.device import default_device
from course_lib.formats import FloatFormat, get_format, round_to_format
from course_lib.validate import callable_or_none, instance_of, positive_int

__all__ = [
    "EPS", "FP8_FORMATS", "FP8Tensor", "fp8_format", "amax_to_scale", "tensor_to_scale",
    "to_fp8", "dequantize", "quantize_dequantize", "sqnr_db",
    "ScalingRecipe", "TensorwiseScaling", "RowwiseScaling", "DelayedScaling", "SCALING_RECIPES",
    "make_recipe", "FP8Linear", "convert_to_fp8",
    "FP8UnavailableError", "real_fp8_available", "scaled_mm", "emulated_scaled_mm",
    "torchao_float8_available", "convert_to_torchao_float8", "FP8_TRAINING_EXPECTATIONS",
]

#: Smallest amax used to compute a scale, so that an all-zero tensor gets a finite scale.
#: The value of torchao.float8 (``torchao/float8/float8_utils.py``: ``EPS = 1e-12``).
EPS = 1e-12

#: The FP8 formats FP8 training uses, by short name (values: ``course_lib.formats`` names).
FP8_FORMATS = {"e4m3": "fp8_e4m3fn", "e5m2": "fp8_e5m2"}


def fp8_format(fmt) -> FloatFormat:
    """The :class:`~course_lib.formats.FloatFormat` of an 8-bit float format with a torch dtype.

    ``fmt``: ``"e4m3"`` (fp8_e4m3fn), ``"e5m2"``, any name or alias
    :func:`course_lib.formats.get_format` knows (the AMD ``"e4m3fnuz"`` /
    ``"e5m2fnuz"`` too), a ``torch.float8_*`` dtype or a FloatFormat. Anything
    else (fp16, a user format without a torch dtype) raises ValueError.

    >>> fp8_format("e4m3").name, fp8_format(torch.float8_e5m2).max
    ('fp8_e4m3fn', 57344.0)
    """
    f = get_format(fmt)
    if f.bits != 8 or f.torch_dtype is None:
        raise ValueError(f"fmt must be an 8-bit float format with a torch dtype, got {f.name!r}; "
                         f"allowed: 'e4m3', 'e5m2' (also 'e4m3fnuz', 'e5m2fnuz' or a "
                         f"torch.float8_* dtype)")
    return f


# --------------------------------------------------------------------------- scales
def amax_to_scale(amax, fmt="e4m3", power_of_2: bool = False) -> torch.Tensor:
    """The scale that maps ``amax`` onto the format's largest value: ``fmt.max / max(amax, EPS)``.

    Algorithm (torchao.float8 ``amax_to_scale``): in float64, divide the
    format's max by ``amax`` clamped to at least ``EPS`` (1e-12), round to
    float32; with ``power_of_2`` round *down* to a power of two
    (``2**floor(log2(scale))``, torchao's ``round_scales_to_power_of_2``), so
    that multiplying by it is exact and never pushes ``amax`` past the max.

    Arguments: ``amax`` (tensor of any shape, or a float; >= 0), ``fmt``
    (default ``"e4m3"``; see :func:`fp8_format`), ``power_of_2`` (bool,
    default False). Returns a float32 tensor of ``amax``'s shape. An infinite
    amax gives scale 0 and a NaN amax NaN, as in torchao: a non-finite tensor
    cannot be scaled (find where it came from, chapter 05).

    >>> amax_to_scale(torch.tensor([2.0, 0.0, 3.0])).tolist()
    [224.0, 447999985582080.0, 149.3333282470703]
    >>> amax_to_scale(torch.tensor(3.0), power_of_2=True).item()
    128.0
    """
    f = fp8_format(fmt)
    amax = torch.as_tensor(amax).detach()
    if not amax.is_floating_point():
        raise TypeError(f"amax must be a floating-point tensor or a float, got {amax.dtype}")
    scale = (f.max / torch.clamp(amax.to(torch.float64), min=EPS)).to(torch.float32)
    if power_of_2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return scale


def tensor_to_scale(x: torch.Tensor, fmt="e4m3", dim: int | None = None,
                    power_of_2: bool = False) -> torch.Tensor:
    """Dynamic scale of ``x``: per tensor (``dim=None``, a 0-dim tensor) or per slice along ``dim``.

    ``amax = max |x|`` over the whole tensor, or over ``dim`` with
    ``keepdim=True`` (``dim=-1``: one scale per row, shape ``(..., 1)``), then
    :func:`amax_to_scale`. The amax is taken in float32 (torchao does so for
    bf16 inputs, to avoid a bf16 amax's rounding).

    >>> tensor_to_scale(torch.tensor([[1.0, -4.0], [0.5, 0.25]]), dim=-1).tolist()
    [[112.0], [896.0]]
    """
    _check_float_tensor("x", x)
    a = x.detach().float().abs()
    amax = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    return amax_to_scale(amax, fmt, power_of_2)


# --------------------------------------------------------------------------- casts
@dataclass(frozen=True)
class FP8Tensor:
    """An FP8 tensor and its scale: ``data`` (``torch.float8_*``) ~= ``x * scale``.

    Attributes: ``data`` (FP8 tensor), ``scale`` (float32 tensor that
    broadcasts against ``data``: 0-dim per tensor, ``(M, 1)`` per row),
    ``fmt`` (the FloatFormat). ``dequantize()`` returns ``float32(data) /
    scale`` (torchao's ``to_original_precision``) in the requested dtype.
    Make one with :func:`to_fp8`.
    """

    data: torch.Tensor
    scale: torch.Tensor
    fmt: FloatFormat

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``float32(data) / scale``, cast to ``dtype`` (default float32)."""
        return (self.data.to(torch.float32) / self.scale).to(dtype)


def _check_float_tensor(name: str, x) -> torch.Tensor:
    instance_of(name, x, torch.Tensor)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _cast(x: torch.Tensor, f: FloatFormat, scale: torch.Tensor, saturate: bool) -> FP8Tensor:
    """The cast itself, unchecked: round float32(x) * scale to ``f``, store it in f's dtype."""
    scaled = x.detach().to(torch.float32) * scale
    data = round_to_format(scaled, f, saturate=saturate).to(f.torch_dtype)  # exact: representable
    return FP8Tensor(data, scale, f)


def to_fp8(x: torch.Tensor, fmt="e4m3", scale=None, *, saturate: bool = True) -> FP8Tensor:
    """Cast ``x`` to FP8 with a scale: ``data = round(float32(x) * scale)``.

    Arguments:

    - ``x``: floating-point tensor (any dtype; multiplied by the scale in
      float32, then rounded once, to nearest even, by
      :func:`course_lib.formats.round_to_format`).
    - ``fmt``: ``"e4m3"`` (default) or ``"e5m2"`` (see :func:`fp8_format`).
    - ``scale``: ``None`` (default: per-tensor dynamic,
      :func:`tensor_to_scale`), a positive float, or a positive, finite tensor
      that broadcasts against ``x`` (e.g. a recipe's ``scale_for(x, fmt)``).
    - ``saturate``: ``True`` (default) maps values beyond ``+-max`` and
      ``+-inf`` to ``+-max`` (FP8 training's choice); ``False`` gives NaN
      (E4M3) or inf (E5M2), the OCP non-saturating mode. NaN stays NaN.

    Returns an :class:`FP8Tensor`; ``dequantize()`` undoes the scale.

    >>> x = torch.tensor([1.0, 1000.0])
    >>> to_fp8(x, scale=1.0).data.float().tolist()
    [1.0, 448.0]
    >>> to_fp8(x, scale=1.0, saturate=False).data.float().tolist()
    [1.0, nan]
    """
    _check_float_tensor("x", x)
    f = fp8_format(fmt)
    if not isinstance(saturate, bool):
        raise TypeError(f"saturate must be a bool, got {type(saturate).__name__} ({saturate!r})")
    if scale is None:
        scale = tensor_to_scale(x, f)
    else:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
            raise TypeError(f"scale must be None, a positive float or a float tensor, "
                            f"got {type(scale).__name__}")
        scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise ValueError(f"scale must be positive and finite everywhere, got {scale}")
        try:
            torch.broadcast_shapes(scale.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"scale of shape {tuple(scale.shape)} does not broadcast against x of "
                             f"shape {tuple(x.shape)}") from None
    return _cast(x, f, scale, saturate)


def dequantize(t: FP8Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``float32(t.data) / t.scale`` in ``dtype`` (same as ``t.dequantize(dtype)``).

    >>> dequantize(to_fp8(torch.tensor([0.3]))).item()
    0.30000001192092896
    """
    instance_of("t", t, FP8Tensor)
    return t.dequantize(dtype)


def quantize_dequantize(x: torch.Tensor, fmt="e4m3", scale=None, *,
                        saturate: bool = True) -> torch.Tensor:
    """``to_fp8(x, fmt, scale, saturate=saturate).dequantize(x.dtype)``: what FP8 keeps of ``x``.

    >>> quantize_dequantize(torch.tensor([0.1, 1.0, 3.0])).tolist()
    [0.1004464328289032, 0.9642857313156128, 3.0]
    """
    return to_fp8(x, fmt, scale, saturate=saturate).dequantize(x.dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``20 log10(||ref|| / ||ref - approx||)`` in dB.

    Computed in float64 (torchao's ``compute_error`` is the same formula).
    Higher is better; +inf when the two are equal. Each extra bit of
    precision adds about 6 dB.

    >>> round(sqnr_db(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.002])), 1)
    61.0
    """
    _check_float_tensor("reference", reference)
    _check_float_tensor("approx", approx)
    if reference.shape != approx.shape:
        raise ValueError(f"reference and approx must have the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(approx.shape)}")
    r = reference.detach().double()
    noise = torch.linalg.vector_norm(r - approx.detach().double())
    if noise == 0:
        return float("inf")
    return float(20 * torch.log10(torch.linalg.vector_norm(r) / noise))


# --------------------------------------------------------------------------- recipes
class ScalingRecipe:
    """Base class: a rule that picks the scale for a cast, ``scale_for(x, fmt="e4m3")``.

    ``axiswise`` is False when ``scale_for`` returns one scale for the whole
    tensor (then the FP8 copy can be reused for every matmul it enters) and
    True when it returns one per row (then each matmul needs its own cast).
    """

    name = "base"
    axiswise = False

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._params().items())})"

    def _params(self) -> dict:
        return {}


class TensorwiseScaling(ScalingRecipe):
    """Dynamic per-tensor scaling: ``scale = fmt.max / amax(x)``, amax of the tensor being cast.

    Where: torchao.float8's default ``"tensorwise"`` recipe
    (``Float8LinearConfig()``; E4M3 forward, E5M2 gradients), Transformer
    Engine's ``Float8CurrentScaling``. ``power_of_2`` (default False, as
    torchao's tensorwise recipe) rounds the scale down to a power of two.

    >>> TensorwiseScaling().scale_for(torch.tensor([[1.0, -2.0], [0.5, 0.0]])).item()
    224.0
    """

    name = "tensorwise"
    axiswise = False

    def __init__(self, power_of_2: bool = False):
        self.power_of_2 = _check_bool("power_of_2", power_of_2)

    def _params(self) -> dict:
        return {"power_of_2": self.power_of_2}

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        return tensor_to_scale(x, fmt, None, self.power_of_2)


class RowwiseScaling(ScalingRecipe):
    """Row-wise (axis-wise) dynamic scaling: one scale per row, amax over the last dimension.

    Returns a ``(..., 1)`` tensor. The last dimension is the one a matmul
    contracts, so the scale can be taken out of each dot product. Why it
    handles outliers better: an outlier raises the amax -- and coarsens the
    FP8 grid -- of its own row only, where per-tensor scaling would push
    every other row down towards FP8's subnormals and zero.

    Where: torchao.float8's ``"rowwise"`` recipe (``Float8LinearConfig.
    from_recipe_name("rowwise")``: axis-wise scales for input, weight and
    grad_output, all in E4M3, ``round_scales_to_power_of_2=True`` -- hence
    ``power_of_2`` defaults to True here). Finer still: 1x128 / 128x128
    blocks (Transformer Engine ``Float8BlockScaling``) and 32-element MXFP8
    blocks (``MXFP8BlockScaling``).

    >>> RowwiseScaling().scale_for(torch.tensor([[1.0, -3.0], [0.5, 0.25]])).tolist()
    [[128.0], [512.0]]
    """

    name = "rowwise"
    axiswise = True

    def __init__(self, power_of_2: bool = True):
        self.power_of_2 = _check_bool("power_of_2", power_of_2)

    def _params(self) -> dict:
        return {"power_of_2": self.power_of_2}

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        return tensor_to_scale(x, fmt, -1, self.power_of_2)


class DelayedScaling(ScalingRecipe):
    """Delayed per-tensor scaling: the scale comes from the amax *history*, updated after use.

    Algorithm (one object per tensor role; each ``scale_for(x, fmt)`` call
    is one use):

    1. ``amax_used = max(history)``, over its finite, nonzero entries; when
       there is none -- the first call, or only all-zero tensors so far (a
       zero-initialised weight) -- ``amax(x)`` itself, as torchao initialised
       its history (Transformer Engine keeps its previous scale instead);
    2. ``scale = amax_to_scale(amax_used) / 2**margin``;
    3. record ``amax(x)`` in the history (the newest of the last
       ``history_len``) -- *after* the scale was chosen, so a tensor whose
       magnitude jumps above everything in the history saturates this step.

    Arguments: ``history_len`` (int, default 16: torchao's
    ``DelayedScalingConfig``; Transformer Engine's ``DelayedScaling`` defaults
    to 1024), ``margin`` (int >= 0, default 0: Transformer Engine's headroom
    of ``2**margin``), ``power_of_2`` (default False). ``history`` is the list
    of recorded amaxes, newest first; ``reset()`` forgets them.

    Where: the pre-2025 Transformer Engine default and torchao's
    ``ScalingType.DELAYED``, deprecated in pytorch/ao#1680 and deleted in
    PR #1753 (torchao 0.10): users preferred the accuracy of dynamic scaling,
    and with ``torch.compile`` it was not faster in practice.

    >>> d = DelayedScaling(history_len=2)
    >>> [d.scale_for(torch.tensor([a])).item() for a in (2.0, 4.0, 1.0, 1.0)]
    [224.0, 224.0, 112.0, 112.0]
    >>> d.history
    [1.0, 1.0]
    """

    name = "delayed"
    axiswise = False

    def __init__(self, history_len: int = 16, margin: int = 0, power_of_2: bool = False):
        self.history_len = positive_int("history_len", history_len)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"margin must be a non-negative int, got {margin!r}")
        self.margin = margin
        self.power_of_2 = _check_bool("power_of_2", power_of_2)
        self._history: torch.Tensor | None = None   # newest first
        self._count = 0

    def _params(self) -> dict:
        return {"history_len": self.history_len, "margin": self.margin, "power_of_2": self.power_of_2}

    @property
    def history(self) -> list[float]:
        """The recorded amaxes, newest first (at most ``history_len``)."""
        if self._history is None:
            return []
        return self._history[:min(self._count, self.history_len)].tolist()

    def reset(self) -> None:
        """Forget the history (the next call initialises from its own amax again)."""
        self._history, self._count = None, 0

    def scale_for(self, x: torch.Tensor, fmt="e4m3") -> torch.Tensor:
        _check_float_tensor("x", x)
        amax_now = x.detach().float().abs().amax()
        if self._history is None:
            self._history = torch.zeros(self.history_len, dtype=torch.float32, device=amax_now.device)
        past = self._history[:min(self._count, self.history_len)]
        past = past[torch.isfinite(past) & (past > 0)]
        used = past.max() if past.numel() else amax_now
        scale = amax_to_scale(used, fmt, False) / 2.0 ** self.margin
        if self.power_of_2:
            scale = torch.exp2(torch.floor(torch.log2(scale)))
        self._history = torch.roll(self._history, 1)
        self._history[0] = amax_now
        self._count += 1
        return scale


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


#: The recipes by name (the names torchao uses where it has them).
SCALING_RECIPES: dict[str, type[ScalingRecipe]] = {
    "tensorwise": TensorwiseScaling,
    "rowwise": RowwiseScaling,
    "delayed": DelayedScaling,
}


def make_recipe(recipe) -> ScalingRecipe:
    """A fresh recipe from a name in ``SCALING_RECIPES`` (default arguments), or a copy of an instance.

    A copy, because a recipe may hold state (the amax history of
    :class:`DelayedScaling`) that must belong to one tensor only.

    >>> make_recipe("rowwise")
    RowwiseScaling(power_of_2=True)
    """
    if isinstance(recipe, ScalingRecipe):
        return copy.deepcopy(recipe)
    if isinstance(recipe, str) and recipe in SCALING_RECIPES:
        return SCALING_RECIPES[recipe]()
    raise ValueError(f"unknown recipe {recipe!r}; allowed: a ScalingRecipe instance or one of "
                     + ", ".join(repr(r) for r in SCALING_RECIPES))


# --------------------------------------------------------------------------- FP8 linear
def _cast_for_matmul(x: torch.Tensor, recipe: ScalingRecipe, f: FloatFormat, left: bool) -> FP8Tensor:
    """Cast a matmul operand: ``left`` = A of ``A @ B`` (scales along rows), else B (along columns)."""
    if left or not recipe.axiswise:
        return _cast(x, f, recipe.scale_for(x, f), True)
    return _cast(x, f, recipe.scale_for(x.t(), f).t(), True)


class _FP8Matmul(torch.autograd.Function):
    """``x2d @ weight^T`` with FP8 operands (see FP8Linear): forward, and backward from FP8 grads."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, layer: "FP8Linear") -> torch.Tensor:
        e4m3 = get_format("fp8_e4m3fn")
        x8 = _cast_for_matmul(x2d, layer.recipe_input, e4m3, left=True)
        w8 = _cast_for_matmul(weight, layer.recipe_weight, e4m3, left=True)   # W: rows = outputs
        out = x8.dequantize() @ w8.dequantize().t()
        ctx.layer = layer
        ctx.dtypes = (x2d.dtype, weight.dtype)
        ctx.axiswise = layer.recipe_input.axiswise or layer.recipe_weight.axiswise
        if ctx.axiswise:      # backward re-casts along other axes: keep the originals
            ctx.save_for_backward(x2d, weight)
        else:                 # per-tensor: keep the FP8 copies (1 byte per element) and scales
            ctx.save_for_backward(x8.data, x8.scale, w8.data, w8.scale)
        return out.to(x2d.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer = ctx.layer
        e4m3 = get_format("fp8_e4m3fn")
        gfmt = get_format(FP8_FORMATS[layer.backward_format])
        g = grad_out.to(torch.float32)
        if ctx.axiswise:
            x2d, weight = ctx.saved_tensors
            x_gw = _cast_for_matmul(x2d, layer.recipe_input, e4m3, left=False)        # columns of x
            w_gi = _cast_for_matmul(weight, layer.recipe_weight, e4m3, left=False)    # columns of W
        else:
            xd, xs, wd, ws = ctx.saved_tensors
            x_gw, w_gi = FP8Tensor(xd, xs, e4m3), FP8Tensor(wd, ws, e4m3)
        g_gi = _cast_for_matmul(g, layer.recipe_grad_output, gfmt, left=True)          # rows of g
        if layer.recipe_grad_output.axiswise:
            g_gw = _cast_for_matmul(g.t(), layer.recipe_grad_output, gfmt, left=True)  # g^T rows
        else:
            g_gw = FP8Tensor(g_gi.data.t(), g_gi.scale, gfmt)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_gi.dequantize() @ w_gi.dequantize()).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_w = (g_gw.dequantize() @ x_gw.dequantize()).to(ctx.dtypes[1])
        return grad_x, grad_w, None


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose matmuls run on FP8 operands (emulated: FP8 rounding, FP32 accumulation).

    Algorithm (module docstring): forward casts input and weight to E4M3
    with their recipe's scales and multiplies the dequantized operands in
    float32; backward casts grad_output to ``backward_format`` and computes
    grad_input and grad_weight from the FP8-rounded operands; the bias is
    added in high precision. The output has the input's dtype.

    Arguments: ``in_features``, ``out_features``, ``bias`` (as
    ``nn.Linear``), keyword-only ``recipe`` (``"tensorwise"`` (default),
    ``"rowwise"``, ``"delayed"`` or a :class:`ScalingRecipe` instance used as
    a template: the layer keeps its own copy per tensor role --
    ``recipe_input``, ``recipe_weight``, ``recipe_grad_output`` -- so a
    delayed recipe has one amax history per tensor, as in Transformer
    Engine), ``backward_format`` (``"e5m2"``: the "hybrid" recipe, default;
    ``"e4m3"``: "all-E4M3"), ``device``, ``dtype``. Any size works (the
    emulation has no alignment rule). Build one from an existing layer with
    :meth:`from_linear`, or convert a model with :func:`convert_to_fp8`.

    >>> _ = torch.manual_seed(0)
    >>> layer = FP8Linear(4, 3)
    >>> layer(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 recipe="tensorwise", backward_format: str = "e5m2", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._configure(recipe, backward_format)

    def _configure(self, recipe, backward_format) -> None:
        if backward_format not in FP8_FORMATS:
            raise ValueError(f"unknown backward_format {backward_format!r}; allowed: 'e5m2' (hybrid: "
                             f"E4M3 forward, E5M2 gradients), 'e4m3' (all-E4M3)")
        template = make_recipe(recipe)
        self.recipe_input = make_recipe(template)
        self.recipe_weight = make_recipe(template)
        self.recipe_grad_output = make_recipe(template)
        self.backward_format = backward_format

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, recipe="tensorwise",
                    backward_format: str = "e5m2") -> "FP8Linear":
        """An FP8Linear that **shares** ``linear``'s weight and bias Parameters (not copies).

        An optimizer built on the old layer keeps working, and the
        ``state_dict`` keys stay ``weight`` / ``bias``.
        """
        instance_of("linear", linear, nn.Linear)
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new._configure(recipe, backward_format)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        out = _FP8Matmul.apply(x2d, self.weight, self)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, recipe={self.recipe_input.name}, "
                f"backward_format={self.backward_format}")


def convert_to_fp8(model: nn.Module, *, recipe="tensorwise", backward_format: str = "e5m2",
                   hardware_shapes_only: bool = False,
                   module_filter: Callable[[str, nn.Linear], bool] | None = None) -> nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` by :class:`FP8Linear` -- **in place**.

    Each layer is swapped for ``FP8Linear.from_linear(layer, recipe=...,
    backward_format=...)``, which shares its Parameters (an existing
    optimizer keeps working). Returns ``model`` itself; only when ``model``
    *is* an ``nn.Linear`` (nothing to swap it in) a new FP8Linear is
    returned. Layers that are FP8Linear already are left alone.

    Arguments: ``recipe``, ``backward_format`` (see :class:`FP8Linear`),
    ``hardware_shapes_only`` (default False: the emulation handles every
    size; True skips layers whose ``in_features`` or ``out_features`` is not
    a multiple of 16, which ``torch._scaled_mm`` needs on FP8 GPUs -- the
    filter torchao's README applies), ``module_filter`` (``f(name, layer) ->
    bool``, False keeps that layer in high precision, e.g. the classifier
    head).

    >>> from course_lib.models import MLP
    >>> m = convert_to_fp8(MLP(hidden=(32,)), hardware_shapes_only=True)
    >>> [type(l).__name__ for l in m.net if isinstance(l, nn.Linear)]   # 32 -> 10 is skipped
    ['FP8Linear', 'Linear']
    """
    instance_of("model", model, nn.Module)
    _check_bool("hardware_shapes_only", hardware_shapes_only)
    callable_or_none("module_filter", module_filter)
    make_recipe(recipe)                      # fail early on a bad recipe / format
    if backward_format not in FP8_FORMATS:
        raise ValueError(f"unknown backward_format {backward_format!r}; allowed: 'e5m2', 'e4m3'")

    def wanted(name: str, layer: nn.Module) -> bool:
        if not isinstance(layer, nn.Linear) or isinstance(layer, FP8Linear):
            return False
        if hardware_shapes_only and (layer.in_features % 16 or layer.out_features % 16):
            return False
        return module_filter is None or bool(module_filter(name, layer))

    def swap(layer: nn.Linear) -> FP8Linear:
        return FP8Linear.from_linear(layer, recipe=recipe, backward_format=backward_format)

    if isinstance(model, nn.Linear):
        return swap(model) if wanted("", model) else model
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if wanted(full, child):
                setattr(parent, child_name, swap(child))
    return model


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
