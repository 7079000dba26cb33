"""Quantization-aware training (QAT): affine int8, fake quantization, observers.

Affine quantization maps a real ``x`` to an integer ``q`` in ``[qmin, qmax]``
(int8: ``[-128, 127]``, uint8: ``[0, 255]``) with a ``scale`` ``s > 0`` and an
integer ``zero_point`` ``z``::

    q  = clamp(round(x / s) + z, qmin, qmax)      (round half to even)
    x̂  = (q - z) * s                              (dequantize)

``fake_quantize`` is the round trip ``x -> x̂``: a float tensor that holds only
the ``qmax - qmin + 1`` values an int8 model can represent. Training through it
lets the weights adapt to that grid, which is quantization-aware training.

**Choosing s and z** (``calculate_qparams``), exactly as torch's observers do
(``torch/ao/quantization/observer.py``, ``_calculate_qparams``): widen the
observed range ``[min, max]`` to include 0 (``min_neg = min(min, 0)``,
``max_pos = max(max, 0)``, so that 0 -- padding, ReLU zeros -- is exact), then

* asymmetric: ``s = (max_pos - min_neg) / (qmax - qmin)``,
  ``z = clamp(qmin - round(min_neg / s), qmin, qmax)``;
* symmetric: ``s = max(-min_neg, max_pos) / ((qmax - qmin) / 2)``, ``z = 0``
  for a signed range (``qmin < 0``); for an unsigned one torch's choices:
  128 for ``[0, 255]``, 2**15 for ``[0, 65535]``, else ``(qmin + qmax) // 2``
  (what torch gives for an explicit ``quant_min``/``quant_max``);

and ``s = max(s, eps)`` with ``eps = torch.finfo(torch.float32).eps``, so a
degenerate range (all zeros) still gives a valid scale. Everything is computed
in float32, so the results equal torch's bit for bit. Per channel (``axis``),
each slice along ``axis`` gets its own ``s`` and ``z``.

**The straight-through estimator (STE).** ``round`` has derivative 0 almost
everywhere, so backpropagating through ``fake_quantize`` gives zero gradients
and nothing trains. The STE (Bengio et al. 2013; Jacob et al. 2018) pretends
the rounding is the identity: the gradient is passed through unchanged where
the input was inside the clamp range and is 0 where it saturated::

    dL/dx = dL/dx̂ * [qmin <= round(x / s) + z <= qmax]

``FakeQuantizeSTE`` / ``fake_quantize_ste`` implement it; forward and backward
match ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` bit for bit, including the sign of
zero gradients (the mask is applied as ``grad * mask``, like torch).

*At the boundary* (``round(x / s) + z`` exactly ``qmin`` or ``qmax``) the
gradient is **1**: the boundary values are representable, so those inputs are
not saturated, and torch's kernels use the same inclusive mask. Just outside
(``qmax + 1``) it is 0. We compute the mask explicitly rather than
differentiate ``torch.clamp``, because clamp's boundary subgradient is a
convention, and it has been changed: pytorch/pytorch PR #191142 switched it to
0 (``self > min`` instead of ``>=``), which silently zeroed the gradient of
every element that rounds exactly to ``qmin`` or ``qmax`` in torchao's fake
quantization (it clamps *rounded* values against *integer* bounds, so landing
on the bound is common, not measure-zero) -- no error, training just degrades
-- until pytorch/ao PR #4806 gave torchao a clamp of its own. torch 2.13.0, as
used here, gives ``torch.clamp`` gradient 1 at the bound (``F.hardtanh``: 0).

Where we differ from torch's CPU kernels, deliberately (tested):

* NaN in, NaN out (the gradient mask is 0 there, as in torch);
  ``torch.fake_quantize_per_*`` turn a NaN into the value of ``qmin``, which
  hides a divergence.
* Per channel, inputs with ``|x / s| >= 2**63`` (e.g. ``±inf``) saturate to
  ``qmax``/``qmin``; torch's per-channel CPU kernel casts the float to int64
  first, which is undefined there and gives ``qmin`` for ``+inf`` on x86.

Arithmetic, so that results are bitwise torch's: ``x * (1 / s)`` (not
``x / s``) with ``1 / s`` in float32, rounded in float32 (float64 for float64
inputs); the dequantized product ``(q - z) * s`` is formed in float32 per
tensor and in float64 per channel, as torch's kernels do, then rounded to the
input's dtype. For float32 inputs both give the correctly rounded product.

**Observers** record the range of what flows through them (``MinMaxObserver``:
running min/max; ``MovingAverageMinMaxObserver``: ``m <- m + c (m_now - m)``
with averaging constant ``c``, 0.01 as in torch) in buffers, so the ranges are
saved in ``state_dict``; ``frozen`` stops the updates.

**QAT layers.** ``prepare_qat(model, FakeQuantConfig())`` swaps every
``nn.Linear`` and ``nn.Conv2d`` **in place** for ``QATLinear``/``QATConv2d``,
which fake-quantize the weight (default: per output channel, symmetric int8)
and the input activation (default: per tensor, asymmetric uint8) with the STE.
Fake quantization starts after ``enable_after_steps`` training forward passes
(the observers watch from the start, so ranges are ready; the delay lets
weights and activations settle first, as in pytorch/ao PR #198). Observers
record only in training mode, like BatchNorm's running statistics, so
evaluating never moves a range (torch's ``FakeQuantize`` observes in eval mode
too unless ``disable_observer`` is applied). ``freeze_observers`` fixes the
ranges; ``calibrate_observers`` records them without training (post-training
quantization with the same modules); ``remove_qat`` swaps plain layers back.

**Real int8** comes from torchao (``pip install -e .[qat]``): ``quantize_(m,
QATConfig(base, step="prepare"))``, train, ``quantize_(m, QATConfig(base,
step="convert"))`` (pytorch/ao PRs #2629/#2630; the older ``*QATQuantizer``
classes are deprecated). ``torchao_qat_prepare``/``torchao_qat_convert`` wrap
that. After *prepare* the weights are still float32 Parameters (pytorch/ao
#1290: prepare only fake-quantizes); after *convert* a ``Linear.weight`` is a
torchao tensor subclass holding int8 ``qdata`` plus scales -- whose ``.dtype``
still reports ``torch.float32``, the dtype it dequantizes to. torchao converts
``nn.Linear`` (and ``nn.Embedding``) only; convolutions stay float.

Introduced in chapter 08 (notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.validate import fraction, instance_of, non_negative_int, one_of

__all__ = [
    "FP32_EPS", "qrange", "QParams", "calculate_qparams", "quantize", "dequantize",
    "fake_quantize", "FakeQuantizeSTE", "fake_quantize_ste", "ste_gradient",
    "MinMaxObserver", "MovingAverageMinMaxObserver",
    "QuantSpec", "FakeQuantConfig", "FakeQuantizer", "NoFakeQuantizer", "QATLinear", "QATConv2d",
    "prepare_qat", "remove_qat", "freeze_observers", "calibrate_observers",
    "TORCHAO_REQUIREMENT", "torchao_available", "torchao_status", "torchao_qat_prepare", "torchao_qat_convert",
    "torchao_int8_dynamic_quantize",
    "serialized_size_bytes",
]

#: Smallest scale an observer returns: ``torch.finfo(torch.float32).eps`` = 2**-23
#: (torch's observers' default ``eps``).
FP32_EPS = torch.finfo(torch.float32).eps

_INT32 = torch.iinfo(torch.int32)


# --------------------------------------------------------------------------- validation helpers
def _int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    return int(value)


def _check_qrange(qmin, qmax, *, need_zero: bool = True) -> tuple[int, int]:
    qmin, qmax = _int("qmin", qmin), _int("qmax", qmax)
    if not (_INT32.min <= qmin < qmax <= _INT32.max):
        raise ValueError(f"need int32 bounds with qmin < qmax, got qmin={qmin}, qmax={qmax}")
    if need_zero and not qmin <= 0 <= qmax:
        raise ValueError(f"the quantized range must include 0 (as torch requires), "
                         f"got [qmin, qmax] = [{qmin}, {qmax}]")
    return qmin, qmax


def _check_axis(axis, allow_none: bool = True) -> int | None:
    if axis is None and allow_none:
        return None
    return non_negative_int("axis", axis)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def _storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """Smallest integer dtype holding ``[qmin, qmax]``."""
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    raise AssertionError("unreachable: bounds are checked to fit int32")


def qrange(dtype: torch.dtype) -> tuple[int, int]:
    """Return ``(qmin, qmax)``, the full range of an integer ``dtype``.

    Args:
        dtype (torch.dtype): ``torch.int8``, ``torch.uint8``, ``torch.int16``
            or ``torch.int32``.

    Example:
        >>> qrange(torch.int8), qrange(torch.uint8)
        ((-128, 127), (0, 255))
    """
    allowed = (torch.int8, torch.uint8, torch.int16, torch.int32)
    one_of("dtype", dtype, allowed)
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------- QParams
@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters: ``scale``, ``zero_point``, range and axis.

    Args:
        scale (float | Tensor): ``s > 0``; stored as float32, 0-d per tensor or
            ``(C,)`` per channel.
        zero_point (int | Tensor): ``z`` in ``[qmin, qmax]``; stored as int32,
            same shape as ``scale``.
        qmin, qmax (int, default -128, 127): the integer range.
        axis (int | None, default None): ``None`` per tensor; else the
            dimension of ``x`` whose slices have their own ``s, z``.

    Example:
        >>> qp = QParams(0.5, 0)
        >>> qp.scale, qp.zero_point, qp.per_channel
        (tensor(0.5000), tensor(0, dtype=torch.int32), False)
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int = -128
    qmax: int = 127
    axis: int | None = None

    def __post_init__(self):
        qmin, qmax = _check_qrange(self.qmin, self.qmax, need_zero=False)
        axis = _check_axis(self.axis)
        scale = torch.as_tensor(self.scale).detach()
        zp = torch.as_tensor(self.zero_point, device=scale.device).detach()
        if scale.is_floating_point() is False:
            raise TypeError(f"scale must be a float or a floating tensor, got {scale.dtype}")
        if zp.is_floating_point() or zp.dtype == torch.bool:
            raise TypeError(f"zero_point must be an int or an integer tensor, got {zp.dtype}")
        scale, zp = scale.to(torch.float32), zp.to(torch.int32)
        if axis is None:
            if scale.numel() != 1 or zp.numel() != 1:
                raise ValueError(f"per-tensor QParams (axis=None) take one scale and zero_point, "
                                 f"got {scale.numel()} and {zp.numel()} values")
            scale, zp = scale.reshape(()), zp.reshape(())
        else:
            scale, zp = scale.reshape(-1), zp.reshape(-1)
            if scale.numel() != zp.numel():
                raise ValueError(f"per-channel QParams need as many zero points as scales, "
                                 f"got {zp.numel()} and {scale.numel()}")
        if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        if not bool(torch.all((zp >= qmin) & (zp <= qmax))):
            raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}], got {zp}")
        for name, value in (("scale", scale), ("zero_point", zp), ("qmin", qmin),
                            ("qmax", qmax), ("axis", axis)):
            object.__setattr__(self, name, value)

    @classmethod
    def _trusted(cls, scale, zero_point, qmin, qmax, axis) -> "QParams":
        """Build without the checks (values computed here and already checked)."""
        qp = object.__new__(cls)
        for name, value in (("scale", scale), ("zero_point", zero_point), ("qmin", qmin),
                            ("qmax", qmax), ("axis", axis)):
            object.__setattr__(qp, name, value)
        return qp

    @property
    def per_channel(self) -> bool:
        """True when ``axis`` is set (one ``scale``/``zero_point`` per slice)."""
        return self.axis is not None

    @property
    def storage_dtype(self) -> torch.dtype:
        """Integer dtype ``quantize`` returns: the smallest of int8/uint8/int16/int32 that fits."""
        return _storage_dtype(self.qmin, self.qmax)

    def __repr__(self) -> str:
        where = "per tensor" if self.axis is None else f"per channel, axis={self.axis}"
        s = self.scale.tolist()
        z = self.zero_point.tolist()
        return f"QParams(scale={s}, zero_point={z}, qmin={self.qmin}, qmax={self.qmax}, {where})"


def _symmetric_zero_point(qmin: int, qmax: int) -> int:
    """torch's rule: 0 for a signed range; 128 / 2**15 for uint8 / uint16; else the midpoint rounded down."""
    if qmin < 0:
        return 0
    return {(0, 255): 128, (0, 65535): 2**15}.get((qmin, qmax), (qmin + qmax) // 2)


def calculate_qparams(min_val, max_val, qmin: int = -128, qmax: int = 127, *,
                      symmetric: bool = False, axis: int | None = None,
                      eps: float = FP32_EPS) -> QParams:
    """Return the ``QParams`` that map ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    Algorithm: torch's observer formula (module docstring), in float32:
    include 0 in the range, then asymmetric
    ``s = (max_pos - min_neg) / (qmax - qmin)``, ``z = qmin - round(min_neg / s)``
    (clamped), or symmetric ``s = max(|min_neg|, max_pos) / ((qmax - qmin) / 2)``,
    ``z = 0`` (middle of an unsigned range); ``s = max(s, eps)``.

    Args:
        min_val, max_val (float | Tensor): observed minimum and maximum; 0-d
            (or Python floats) per tensor, 1-D ``(C,)`` per channel.
        qmin, qmax (int, default -128, 127): integer range; must include 0.
        symmetric (bool, default False): symmetric (``z`` fixed) or affine.
        axis (int | None, default None): the channel axis to record in the
            result for per-channel parameters (then ``min_val`` is ``(C,)``).
        eps (float, default ``FP32_EPS``): smallest allowed scale.

    Raises:
        ValueError: ``min_val > max_val``, a non-finite bound, or a range so
        wide that the scale overflows float32 (torch would return ``inf``).

    Example:
        >>> calculate_qparams(-1.0, 3.0, 0, 255)           # uint8, affine
        QParams(scale=0.01568627543747425, zero_point=64, qmin=0, qmax=255, per tensor)
        >>> calculate_qparams(-1.0, 3.0, symmetric=True)   # int8, symmetric
        QParams(scale=0.0235294122248888, zero_point=0, qmin=-128, qmax=127, per tensor)
        >>> calculate_qparams(0.0, 0.0).scale.item() == FP32_EPS   # degenerate range
        True
    """
    qmin, qmax = _check_qrange(qmin, qmax)
    _check_bool("symmetric", symmetric)
    axis = _check_axis(axis)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    lo = torch.as_tensor(min_val, dtype=torch.float32)
    hi = torch.as_tensor(max_val, dtype=torch.float32, device=lo.device)
    if lo.shape != hi.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if axis is None and lo.numel() != 1:
        raise ValueError(f"per-tensor qparams (axis=None) need one min and max, got shape "
                         f"{tuple(lo.shape)}; pass axis=... for per-channel ranges")
    if axis is not None and lo.dim() != 1:
        raise ValueError(f"per-channel qparams need 1-D min_val/max_val (one per channel), "
                         f"got shape {tuple(lo.shape)}")
    if not bool(torch.all(torch.isfinite(lo) & torch.isfinite(hi))):
        raise ValueError(f"min_val and max_val must be finite, got min={lo}, max={hi} "
                         "(did the observed tensors contain inf or NaN?)")
    if bool(torch.any(lo > hi)):
        raise ValueError(f"min_val must be <= max_val, got min={lo}, max={hi}")
    if axis is None:
        lo, hi = lo.reshape(()), hi.reshape(())
    zero = torch.zeros_like(lo)
    min_neg, max_pos = torch.minimum(lo, zero), torch.maximum(hi, zero)
    eps_t = torch.tensor(eps, dtype=torch.float32, device=lo.device)
    if symmetric:
        scale = torch.maximum(torch.maximum(-min_neg, max_pos) / (float(qmax - qmin) / 2), eps_t)
        zp = torch.full_like(lo, _symmetric_zero_point(qmin, qmax), dtype=torch.int32)
    else:
        scale = torch.maximum((max_pos - min_neg) / float(qmax - qmin), eps_t)
        zp = torch.clamp(qmin - torch.round(min_neg / scale).to(torch.int64), qmin, qmax)
        zp = zp.to(torch.int32)
    if not bool(torch.all(torch.isfinite(scale))):
        raise ValueError(f"the range [{lo}, {hi}] is too wide: its scale overflows float32")
    return QParams._trusted(scale, zp, qmin, qmax, axis)


# --------------------------------------------------------------------------- quantize / dequantize
def _check_x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return x


def _check_qparams(qparams) -> QParams:
    return instance_of("qparams", qparams, QParams, "a QParams (see calculate_qparams)")


def _broadcast(qparams: QParams, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``zero_point`` shaped to broadcast against ``x`` (on ``x``'s device)."""
    scale = qparams.scale.to(x.device)
    zp = qparams.zero_point.to(x.device)
    if qparams.axis is None:
        return scale, zp
    axis = qparams.axis
    if axis >= x.dim():
        raise ValueError(f"QParams axis={axis} but x has only {x.dim()} dimensions")
    if x.shape[axis] != scale.numel():
        raise ValueError(f"x has {x.shape[axis]} channels along axis {axis} but QParams has "
                         f"{scale.numel()} scales")
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.reshape(shape), zp.reshape(shape)


def _unclamped_q(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """``round(x * (1/s)) + z`` as torch's kernels compute it (float32, float64 for float64)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_scale = (1.0 / scale).to(compute)           # 1.0f / scale, in float32
    return torch.round(x.to(compute) * inv_scale) + zp.to(compute)


def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Return ``q = clamp(round(x / s) + z, qmin, qmax)`` as an integer tensor.

    ``x / s`` is computed as ``x * (1 / s)`` in float32, as torch does; ties
    round to even. The dtype is ``qparams.storage_dtype`` (int8 for
    ``[-128, 127]``, uint8 for ``[0, 255]``). ``±inf`` saturate.

    Args:
        x (Tensor): floating-point input, no NaN.
        qparams (QParams): from ``calculate_qparams`` or an observer.

    Raises:
        ValueError: ``x`` contains NaN (no integer represents it).

    Example:
        >>> qp = QParams(0.5, 0)
        >>> quantize(torch.tensor([0.2, 0.25, 0.75, 1.0, 100.0]), qp)
        tensor([  0,   0,   2,   2, 127], dtype=torch.int8)
    """
    x, qparams = _check_x(x), _check_qparams(qparams)
    if bool(torch.isnan(x).any()):
        raise ValueError("quantize() got NaN: no integer represents it (torch.quantize_per_tensor "
                         "silently maps it to an arbitrary code); find where the NaN comes from")
    scale, zp = _broadcast(qparams, x)
    q = torch.clamp(_unclamped_q(x, scale, zp), qparams.qmin, qparams.qmax)
    return q.to(qparams.storage_dtype)


def dequantize(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Return ``x̂ = (q - z) * s`` as float32 (the exact product, rounded once).

    Args:
        q (Tensor): integer codes (e.g. from ``quantize``).
        qparams (QParams): the parameters they were quantized with.

    Example:
        >>> qp = QParams(0.5, 3, qmin=0, qmax=255)
        >>> dequantize(torch.tensor([0, 3, 4, 255], dtype=torch.uint8), qp)
        tensor([ -1.5000,   0.0000,   0.5000, 126.0000])
    """
    qparams = _check_qparams(qparams)
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor, got "
                        f"{q.dtype if isinstance(q, torch.Tensor) else type(q).__name__}")
    scale, zp = _broadcast(qparams, q)
    return ((q.to(torch.float64) - zp.to(torch.float64)) * scale.to(torch.float64)).to(torch.float32)


def _fake_quant_forward(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int,
                        qmax: int, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂, mask)``: the fake-quantized values and where ``qmin <= round(x/s)+z <= qmax``."""
    qf = _unclamped_q(x, scale, zp)
    mask = (qf >= qmin) & (qf <= qmax)                # False for NaN, like torch
    q = torch.clamp(qf, qmin, qmax)                   # NaN stays NaN (torch: becomes qmin)
    # torch forms (q - z) * s in float32 per tensor and in float64 per channel.
    prod = torch.float64 if per_channel else torch.float32
    out = (q.to(prod) - zp.to(prod)) * scale.to(prod)
    return out.to(x.dtype), mask


def fake_quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Return ``x̂ = (clamp(round(x / s) + z, qmin, qmax) - z) * s`` in ``x``'s dtype.

    The forward of fake quantization, written with ordinary torch ops: if you
    backpropagate through it, ``round`` gives **zero** gradient everywhere --
    use ``fake_quantize_ste`` for training.

    Args:
        x (Tensor): floating-point input (float32, float16, bfloat16, float64).
        qparams (QParams): scale, zero point, range, axis.

    Example:
        >>> qp = QParams(0.5, 0)
        >>> fake_quantize(torch.tensor([0.2, 0.3, -70.0, 1.26]), qp)
        tensor([  0.0000,   0.5000, -64.0000,   1.5000])
    """
    x, qparams = _check_x(x), _check_qparams(qparams)
    scale, zp = _broadcast(qparams, x)
    return _fake_quant_forward(x, scale, zp, qparams.qmin, qparams.qmax, qparams.per_channel)[0]


class FakeQuantizeSTE(torch.autograd.Function):
    """Fake quantization with the straight-through estimator.

    ``forward(ctx, x, scale, zero_point, qmin, qmax, axis)`` returns
    ``fake_quantize(x)``; ``backward`` returns ``grad * mask`` for ``x``
    (``mask`` = ``qmin <= round(x/s) + z <= qmax``, inclusive) and no
    gradient for the others. ``scale``/``zero_point`` must already be shaped
    to broadcast against ``x``; call ``fake_quantize_ste`` instead.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis):
        out, mask = _fake_quant_forward(x, scale, zero_point, qmin, qmax, axis is not None)
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None, None, None, None


def fake_quantize_ste(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """``fake_quantize(x, qparams)`` with the straight-through-estimator gradient.

    Backward: ``dL/dx = dL/dx̂`` where ``qmin <= round(x / s) + z <= qmax``
    (boundaries included) and 0 where ``x`` saturated; bitwise equal to
    ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``.

    Args:
        x (Tensor): floating-point input.
        qparams (QParams): scale, zero point, range, axis.

    Example:
        >>> x = torch.tensor([0.3, 63.5, 63.7, 63.75], requires_grad=True)
        >>> y = fake_quantize_ste(x, QParams(0.5, 0))  # x / 0.5 = 0.6, 127, 127.4, 127.5
        >>> y.sum().backward(); y.detach(), x.grad     # 127.5 rounds (to even) to 128 > qmax
        (tensor([ 0.5000, 63.5000, 63.5000, 63.5000]), tensor([1., 1., 1., 0.]))
    """
    x, qparams = _check_x(x), _check_qparams(qparams)
    scale, zp = _broadcast(qparams, x)
    return FakeQuantizeSTE.apply(x, scale, zp, qparams.qmin, qparams.qmax, qparams.axis)


def ste_gradient(x: torch.Tensor, qparams: QParams, grad_output: torch.Tensor) -> torch.Tensor:
    """The straight-through estimator's backward: ``dL/dx`` from ``dL/dx̂`` for ``x̂ = fake_quantize(x)``.

    Algorithm: ``grad_output * mask`` with ``mask = qmin <= round(x * (1/s)) + z <= qmax``
    (inclusive: the boundary codes are representable, so those inputs pass
    the gradient; a saturated input, ``±inf`` or NaN gets 0). The same mask,
    computed the same way, as ``FakeQuantizeSTE.backward`` and torch's
    ``fake_quantize_per_tensor_affine`` backward, without building a graph.

    Args:
        x (Tensor): the floating-point input of the fake quantization.
        qparams (QParams): its scale, zero point, range and axis.
        grad_output (Tensor): ``dL/dx̂``, same shape as ``x``.

    Returns:
        Tensor: ``dL/dx`` in ``grad_output``'s dtype.

    Example:
        >>> x = torch.tensor([0.3, 63.5, 63.7, 63.75])       # x / 0.5 = 0.6, 127, 127.4, 127.5
        >>> ste_gradient(x, QParams(0.5, 0), torch.tensor([2.0, 2.0, 2.0, 2.0]))
        tensor([2., 2., 2., 0.])
    """
    x, qparams = _check_x(x), _check_qparams(qparams)
    if not isinstance(grad_output, torch.Tensor):
        raise TypeError(f"grad_output must be a torch.Tensor, got {type(grad_output).__name__}")
    if grad_output.shape != x.shape:
        raise ValueError(f"grad_output must have x's shape {tuple(x.shape)}, got {tuple(grad_output.shape)}")
    scale, zp = _broadcast(qparams, x)
    _, mask = _fake_quant_forward(x.detach(), scale, zp, qparams.qmin, qparams.qmax,
                                  qparams.per_channel)
    return grad_output * mask


# --------------------------------------------------------------------------- observers
class _RangeObserver(nn.Module):
    """Base: records a range in buffers ``min_val``/``max_val``; subclasses define ``_update``."""

    def __init__(self, qmin: int = -128, qmax: int = 127, *, symmetric: bool = False,
                 axis: int | None = None, eps: float = FP32_EPS):
        super().__init__()
        self.qmin, self.qmax = _check_qrange(qmin, qmax)
        self.symmetric = _check_bool("symmetric", symmetric)
        self.axis = _check_axis(axis)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        # Empty until the first observation; then 0-d (per tensor) or (C,) (per channel).
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.register_buffer("frozen_flag", torch.tensor(False))

    @property
    def frozen(self) -> bool:
        """When True, ``forward`` passes tensors through without updating the range."""
        return bool(self.frozen_flag)

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.frozen_flag.fill_(_check_bool("frozen", value))

    @property
    def has_observed(self) -> bool:
        """Whether any tensor has been observed (or a range loaded)."""
        return self.min_val.numel() > 0

    def reset(self) -> None:
        """Forget the recorded range."""
        self.min_val.resize_(0)
        self.max_val.resize_(0)

    def _current_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return torch.aminmax(x)
        if self.axis >= x.dim():
            raise ValueError(f"observer axis={self.axis} but the tensor has {x.dim()} dimensions")
        return torch.aminmax(x.movedim(self.axis, 0).flatten(1), dim=1)

    def _store(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min_val.resize_(lo.shape).copy_(lo)
        self.max_val.resize_(hi.shape).copy_(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x``'s range (unless frozen or ``x`` is empty); return ``x`` unchanged."""
        _check_x(x)
        if self.frozen or x.numel() == 0:
            return x
        lo, hi = self._current_range(x)
        if not self.has_observed:
            self._store(lo, hi)
        else:
            if lo.shape != self.min_val.shape:
                raise ValueError(f"observer recorded {self.min_val.numel()} channels, the tensor "
                                 f"has {lo.numel()} along axis {self.axis}")
            self._store(*self._update(lo, hi))
        return x

    def _update(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def calculate_qparams(self) -> QParams:
        """``calculate_qparams`` of the recorded range (see the module docstring)."""
        if not self.has_observed:
            raise RuntimeError(f"{type(self).__name__} has observed nothing yet: call it on a tensor "
                               "(a training forward pass, or calibrate_observers) first")
        return calculate_qparams(self.min_val, self.max_val, self.qmin, self.qmax,
                                 symmetric=self.symmetric, axis=self.axis, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("min_val", "max_val"):  # the range's shape is set by the saved one
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                getattr(self, name).resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        where = "per tensor" if self.axis is None else f"axis={self.axis}"
        return f"qmin={self.qmin}, qmax={self.qmax}, {kind}, {where}, frozen={self.frozen}"


class MinMaxObserver(_RangeObserver):
    """Record the running minimum and maximum of everything observed.

    Algorithm: ``min <- min(min, min(x))``, ``max <- max(max, max(x))``
    (per slice along ``axis`` when given), stored in float32 buffers.

    Args:
        qmin, qmax (int, default -128, 127): the integer range for ``calculate_qparams``.
        symmetric (bool, default False): symmetric or affine parameters.
        axis (int | None, default None): per-tensor, or per slice along ``axis``.
        eps (float, default ``FP32_EPS``): smallest scale.

    Example:
        >>> obs = MinMaxObserver(0, 255)
        >>> _ = obs(torch.tensor([-1.0, 2.0])); _ = obs(torch.tensor([3.0]))
        >>> obs.min_val, obs.max_val
        (tensor(-1.), tensor(3.))
        >>> obs.calculate_qparams().zero_point
        tensor(64, dtype=torch.int32)
    """

    def _update(self, lo, hi):
        return torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)


class MovingAverageMinMaxObserver(_RangeObserver):
    """Record an exponential moving average of each observed minimum and maximum.

    Algorithm: the first tensor sets ``min, max``; then
    ``min <- min + c * (min(x) - min)`` (same for ``max``), as torch's
    ``MovingAverageMinMaxObserver``. With ``c = 1`` the range is that of the
    latest tensor exactly (the update is skipped, so no rounding enters).

    Args:
        qmin, qmax, symmetric, axis, eps: as ``MinMaxObserver``.
        averaging_constant (float, default 0.01): ``c`` in ``(0, 1]``.

    Example:
        >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
        >>> _ = obs(torch.tensor([-1.0, 1.0])); _ = obs(torch.tensor([-3.0, 5.0]))
        >>> obs.min_val, obs.max_val
        (tensor(-2.), tensor(3.))
    """

    def __init__(self, qmin: int = -128, qmax: int = 127, *, symmetric: bool = False,
                 axis: int | None = None, eps: float = FP32_EPS,
                 averaging_constant: float = 0.01):
        super().__init__(qmin, qmax, symmetric=symmetric, axis=axis, eps=eps)
        self.averaging_constant = fraction("averaging_constant", averaging_constant, closed=True)
        if self.averaging_constant == 0.0:
            raise ValueError("averaging_constant must be in (0, 1], got 0.0 (the range would never move)")

    def _update(self, lo, hi):
        c = self.averaging_constant
        if c == 1.0:
            return lo, hi
        return self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", averaging_constant={self.averaging_constant}"


# --------------------------------------------------------------------------- configuration
_OBSERVERS = ("minmax", "moving_average")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a weight or an activation) is fake-quantized.

    Args:
        qmin, qmax (int, default -128, 127): integer range, must include 0.
        symmetric (bool, default False): symmetric (``z`` fixed) or affine.
        axis (int | None, default None): per tensor, or per slice along ``axis``.
        observer (str, default "moving_average"): ``"minmax"`` or ``"moving_average"``.
        averaging_constant (float, default 0.01): ``c`` of the moving average
            in ``(0, 1]``; ``1.0`` = the range of the current tensor.

    Example:
        >>> obs = QuantSpec(qmin=0, qmax=255).make_observer()
        >>> type(obs).__name__, obs.qmin, obs.qmax, obs.averaging_constant
        ('MovingAverageMinMaxObserver', 0, 255, 0.01)
    """

    qmin: int = -128
    qmax: int = 127
    symmetric: bool = False
    axis: int | None = None
    observer: str = "moving_average"
    averaging_constant: float = 0.01

    def __post_init__(self):
        _check_qrange(self.qmin, self.qmax)
        _check_bool("symmetric", self.symmetric)
        _check_axis(self.axis)
        one_of("observer", self.observer, _OBSERVERS)
        c = fraction("averaging_constant", self.averaging_constant, closed=True)
        if c == 0.0:
            raise ValueError("averaging_constant must be in (0, 1], got 0.0")

    def make_observer(self) -> _RangeObserver:
        """A fresh observer for this spec."""
        kw = dict(symmetric=self.symmetric, axis=self.axis)
        if self.observer == "minmax":
            return MinMaxObserver(self.qmin, self.qmax, **kw)
        return MovingAverageMinMaxObserver(self.qmin, self.qmax,
                                           averaging_constant=self.averaging_constant, **kw)


def _default_weight_spec() -> QuantSpec:
    # int8, symmetric, one scale per output channel, from the current weights
    # (c = 1): what torchao's int8 weight configs compute at convert time.
    return QuantSpec(-128, 127, symmetric=True, axis=0, observer="moving_average",
                     averaging_constant=1.0)


def _default_activation_spec() -> QuantSpec:
    # uint8, affine, per tensor, moving average with torch's c = 0.01.
    return QuantSpec(0, 255, symmetric=False, axis=None, observer="moving_average",
                     averaging_constant=0.01)


@dataclass(frozen=True)
class FakeQuantConfig:
    """Where and how ``prepare_qat`` fake-quantizes a model.

    (Named so as not to clash with torchao's ``QATConfig``, used alongside.)

    Args:
        weight (QuantSpec | None, default int8 symmetric per output channel,
            range of the current weight): ``None`` leaves weights in float.
        activation (QuantSpec | None, default uint8 affine per tensor, moving
            average c=0.01): the layer *input*; ``None`` leaves it in float.
            Must be per tensor (``axis=None``).
        enable_after_steps (int, default 0): training forward passes that run
            without fake quantization (observers still record).

    Example:
        >>> FakeQuantConfig(enable_after_steps=100).weight.axis
        0
        >>> FakeQuantConfig(weight=QuantSpec(axis=1))
        Traceback (most recent call last):
        ...
        ValueError: weight axis must be 0 (output channels of Linear and Conv2d) or None, got 1
    """

    weight: QuantSpec | None = field(default_factory=_default_weight_spec)
    activation: QuantSpec | None = field(default_factory=_default_activation_spec)
    enable_after_steps: int = 0

    def __post_init__(self):
        if self.weight is not None:
            instance_of("weight", self.weight, QuantSpec, "a QuantSpec or None")
            if self.weight.axis not in (None, 0):
                raise ValueError("weight axis must be 0 (output channels of Linear and Conv2d) "
                                 f"or None, got {self.weight.axis}")
        if self.activation is not None:
            instance_of("activation", self.activation, QuantSpec, "a QuantSpec or None")
            if self.activation.axis is not None:
                raise ValueError("activation must be per tensor (axis=None): a Linear's channels are "
                                 f"the last axis, a Conv2d's axis 1; got axis={self.activation.axis}")
        non_negative_int("enable_after_steps", self.enable_after_steps)


# --------------------------------------------------------------------------- modules
class FakeQuantizer(nn.Module):
    """An observer plus STE fake quantization for one tensor.

    ``forward(x, apply=True)``: in training mode (and unless the observer is
    frozen) record ``x``'s range; then, if ``apply``, return
    ``fake_quantize_ste(x, observer.calculate_qparams())``, else ``x``.

    Args:
        spec (QuantSpec): range, symmetry, axis and observer.

    Example:
        >>> fq = FakeQuantizer(QuantSpec(0, 255))
        >>> fq(torch.tensor([0.0, 0.1, 2.55]))
        tensor([0.0000, 0.1000, 2.5500])
    """

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = instance_of("spec", spec, QuantSpec)
        self.observer = spec.make_observer()

    def forward(self, x: torch.Tensor, apply: bool = True) -> torch.Tensor:
        if self.training:
            self.observer(x)
        if not apply:
            return x
        return fake_quantize_ste(x, self.observer.calculate_qparams())

    def qparams(self) -> QParams:
        """The current ``QParams`` (``observer.calculate_qparams()``)."""
        return self.observer.calculate_qparams()


class NoFakeQuantizer(nn.Module):
    """The null ``FakeQuantizer``: returns its input (used when a spec is ``None``)."""

    def forward(self, x: torch.Tensor, apply: bool = True) -> torch.Tensor:
        return x


def _make_fake_quantizer(spec: QuantSpec | None) -> nn.Module:
    return NoFakeQuantizer() if spec is None else FakeQuantizer(spec)


class _QATMixin:
    """Shared state of the QAT layers: the two quantizers and the step counter."""

    def _init_qat(self, config: FakeQuantConfig) -> None:
        self.qat_config = instance_of("config", config, FakeQuantConfig)
        self.weight_fake_quant = _make_fake_quantizer(config.weight)
        self.activation_fake_quant = _make_fake_quantizer(config.activation)
        #: Training forward passes seen (a buffer, so it is checkpointed).
        self.register_buffer("qat_steps", torch.zeros((), dtype=torch.int64))

    def fake_quant_active(self) -> bool:
        """Whether fake quantization is applied now (``qat_steps >= enable_after_steps``)."""
        return int(self.qat_steps) >= self.qat_config.enable_after_steps

    def _step_and_check(self) -> bool:
        active = self.fake_quant_active()
        if self.training:
            self.qat_steps += 1
        return active

    def _share_parameters(self, float_module: nn.Module) -> None:
        self.weight = float_module.weight
        self.bias = float_module.bias
        self.train(float_module.training)
        self.to(float_module.weight.device)  # the buffers; shared Parameters keep their identity


class QATLinear(_QATMixin, nn.Linear):
    """``nn.Linear`` that fake-quantizes its input and weight.

    ``forward(x) = F.linear(fq_act(x), fq_w(weight), bias)`` where ``fq_*``
    are ``FakeQuantizer``s (STE) per ``config``; both pass through unchanged
    for the first ``config.enable_after_steps`` training forward passes.
    Build one from a trained layer with ``QATLinear.from_float``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        config (FakeQuantConfig, default FakeQuantConfig()): what to quantize.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = QATLinear.from_float(nn.Linear(4, 3))
        >>> layer(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 config: FakeQuantConfig | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_qat(FakeQuantConfig() if config is None else config)

    @classmethod
    def from_float(cls, linear: nn.Linear, config: FakeQuantConfig | None = None) -> "QATLinear":
        """A ``QATLinear`` sharing ``linear``'s Parameter objects (an optimizer built on them still works)."""
        instance_of("linear", linear, nn.Linear)
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  config=config, device="meta")
        new._share_parameters(linear)
        return new

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's Parameters (quantizers dropped)."""
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self._step_and_check()
        x = self.activation_fake_quant(x, active)
        return F.linear(x, self.weight_fake_quant(self.weight, active), self.bias)


class QATConv2d(_QATMixin, nn.Conv2d):
    """``nn.Conv2d`` that fake-quantizes its input and weight (see ``QATLinear``).

    The weight is quantized per output channel (axis 0) by default. BatchNorm
    is not folded into the weights (torch's eager QAT fuses Conv+BN first;
    torchao's convert does not touch convolutions at all).

    Args:
        as ``nn.Conv2d``, plus config (FakeQuantConfig, default FakeQuantConfig()).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = QATConv2d.from_float(nn.Conv2d(1, 2, 3, padding=1))
        >>> conv(torch.randn(1, 1, 4, 4)).shape
        torch.Size([1, 2, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 config: FakeQuantConfig | None = None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        self._init_qat(FakeQuantConfig() if config is None else config)

    @staticmethod
    def _conv_args(conv: nn.Conv2d) -> dict:
        return dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                    kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: FakeQuantConfig | None = None) -> "QATConv2d":
        """A ``QATConv2d`` sharing ``conv``'s Parameter objects."""
        instance_of("conv", conv, nn.Conv2d)
        new = cls(**cls._conv_args(conv), config=config, device="meta")
        new._share_parameters(conv)
        return new

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this layer's Parameters."""
        out = nn.Conv2d(**self._conv_args(self), device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self._step_and_check()
        x = self.activation_fake_quant(x, active)
        return self._conv_forward(x, self.weight_fake_quant(self.weight, active), self.bias)


_QAT_SWAPS = {nn.Linear: QATLinear, nn.Conv2d: QATConv2d}
_QAT_TYPES = (QATLinear, QATConv2d)


def _swap_children(module: nn.Module, prefix: str, fn: Callable[[nn.Module, str], nn.Module | None]):
    for name, child in list(module.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        new = fn(child, fqn)
        if new is not None:
            setattr(module, name, new)
        else:
            _swap_children(child, fqn, fn)


def prepare_qat(model: nn.Module, config: FakeQuantConfig | None = None, *,
                filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap ``nn.Linear``/``nn.Conv2d`` layers for ``QATLinear``/``QATConv2d``, **in place**.

    In place, like torchao's ``quantize_``: the QAT layers share the float
    layers' Parameter objects, so an optimizer or scheduler built before
    ``prepare_qat`` keeps working; ``copy.deepcopy(model)`` first to keep the
    float model. Only exact ``nn.Linear``/``nn.Conv2d`` instances are swapped
    (a subclass may not call ``forward``, e.g. ``MultiheadAttention.out_proj``);
    layers already prepared are left alone, so calling it twice is harmless.

    Args:
        model (nn.Module): the model (its submodules are replaced).
        config (FakeQuantConfig | None, default FakeQuantConfig()): what to quantize.
        filter_fn (callable | None, default None): ``filter_fn(module, name)``
            -> bool, ``False`` keeps that layer in float (e.g. the last one).

    Returns:
        nn.Module: ``model`` (or, when ``model`` itself is a Linear/Conv2d, its
        QAT replacement).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = prepare_qat(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> [type(layer).__name__ for layer in m]
        ['QATLinear', 'ReLU', 'QATLinear']
    """
    instance_of("model", model, nn.Module)
    config = FakeQuantConfig() if config is None else instance_of("config", config, FakeQuantConfig)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")

    def swap(child: nn.Module, fqn: str):
        if isinstance(child, _QAT_TYPES):
            return child
        cls = _QAT_SWAPS.get(type(child))
        if cls is None or (filter_fn is not None and not filter_fn(child, fqn)):
            return None
        return cls.from_float(child, config)

    root = swap(model, "")
    if root is not None:
        return root
    _swap_children(model, "", swap)
    return model


def remove_qat(model: nn.Module) -> nn.Module:
    """Swap QAT layers back to plain ``nn.Linear``/``nn.Conv2d`` (in place, Parameters shared).

    Use it to hand a QAT-trained model to a post-training converter (e.g.
    torchao's int8 configs). Returns ``model`` (or the float replacement of a
    QAT root layer).

    Example:
        >>> m = remove_qat(prepare_qat(nn.Sequential(nn.Linear(2, 2))))
        >>> type(m[0]).__name__
        'Linear'
    """
    instance_of("model", model, nn.Module)

    def swap(child: nn.Module, fqn: str):
        return child.to_float() if isinstance(child, _QAT_TYPES) else None

    root = swap(model, "")
    if root is not None:
        return root
    _swap_children(model, "", swap)
    return model


def _observers(model: nn.Module) -> list[_RangeObserver]:
    return [m for m in model.modules() if isinstance(m, _RangeObserver)]


def freeze_observers(model: nn.Module, frozen: bool = True) -> int:
    """Freeze (or, with ``frozen=False``, unfreeze) every observer in ``model``.

    Frozen observers keep their ranges, so scales and zero points stop moving
    (usual in the last epochs of QAT, and before converting). Returns the
    number of observers changed.

    Example:
        >>> m = prepare_qat(nn.Sequential(nn.Linear(2, 2)))
        >>> freeze_observers(m)
        2
    """
    instance_of("model", model, nn.Module)
    _check_bool("frozen", frozen)
    observers = _observers(model)
    for obs in observers:
        obs.frozen = frozen
    return len(observers)


def calibrate_observers(model: nn.Module, batches: Iterable) -> int:
    """Run ``batches`` through ``model`` so that its observers record ranges.

    For post-training quantization (PTQ) with the same modules: only the
    ``FakeQuantizer``s are put in training mode, everything else in eval (so
    BatchNorm statistics and QAT step counters do not move), under
    ``torch.no_grad()``; the previous modes are restored. A batch may be a
    tensor or a tuple/list whose first element is the input.

    Returns:
        int: the number of batches run.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = prepare_qat(nn.Sequential(nn.Linear(2, 2))).eval()
        >>> calibrate_observers(m, [torch.randn(4, 2)])
        1
    """
    instance_of("model", model, nn.Module)
    modes = {m: m.training for m in model.modules()}
    n = 0
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, FakeQuantizer):
                m.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
                n += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    return n


# --------------------------------------------------------------------------- torchao (real int8)
#: The requirement that ``torchao_available`` checks (oldest release whose
#: ``QATConfig(base_config, step=...)`` accepts the int8 base configs used here,
#: newest tested with torch 2.13).
TORCHAO_REQUIREMENT = "torchao>=0.14.1,<0.19"
_TORCHAO_MIN = (0, 14, 1)
_INSTALL_HINT = ("pip install -e .[qat]  (or: pip install --no-deps 'torchao>=0.14.1,<0.19'; "
                 "install torch first)")
_TORCHAO_SCHEMES = ("int8_weight_only", "int8_dynamic_activation")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@contextlib.contextmanager
def _quiet_torchao_imports():
    """Quiet torchao's import-time log lines and warnings, for the duration of the block only.

    A CPU build logs "Failed to load ..._C_cutlass_90a / _C_mxfp8" (GPU-only
    kernels); torch logs an Enum registration notice ("<enum
    'ScaleCalculationMode'> is an Enum subclass ... register_constant() ...
    is deprecated") when torchao imports a module -- at import time, and again
    inside ``quantize_(..., QATConfig(...))``, which imports
    ``torchao.prototype.mx_formats`` lazily; torchao 0.15-0.16 warn about
    their own internal import paths. None of it concerns this CPU path or
    anything a learner can change. Loggers are set to ERROR (not disabled),
    so real errors still show.
    """
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Importing .*deprecated",
                                    category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


#: Set this environment variable (to anything) to run as if torchao were not installed:
#: chapter 08's skip path, testable on a machine that has torchao.
DISABLE_TORCHAO_ENV = "COURSE_NO_TORCHAO"


@functools.lru_cache(maxsize=1)
def _import_torchao():
    """Import torchao quietly; return the module, or the reason it cannot be used."""
    if os.environ.get(DISABLE_TORCHAO_ENV):
        return f"torchao is switched off ({DISABLE_TORCHAO_ENV} is set)"
    try:
        with _quiet_torchao_imports():
            torchao = importlib.import_module("torchao")
            importlib.import_module("torchao.quantization.qat")
    except ImportError as exc:
        return f"torchao is not importable ({exc})"
    except Exception as exc:  # an installed torchao built for another torch can fail oddly
        return f"torchao failed to import with torch {torch.__version__} ({type(exc).__name__}: {exc})"
    version = getattr(torchao, "__version__", "0")
    if _version_tuple(version) < _TORCHAO_MIN:
        return f"torchao {version} is too old: QATConfig with int8 base configs needs {TORCHAO_REQUIREMENT}"
    return torchao


def torchao_available() -> bool:
    """Whether a usable torchao (``TORCHAO_REQUIREMENT``) can be imported.

    The first call imports torchao (a few seconds); the answer is cached.

    Example:
        >>> TORCHAO_REQUIREMENT  # what torchao_available() checks for
        'torchao>=0.14.1,<0.19'
    """
    return not isinstance(_import_torchao(), str)


def torchao_status() -> str:
    """One line: the torchao version in use, or why it cannot be used and what to install.

    For a chapter cell that skips the torchao part cleanly (``if not
    torchao_available(): print(torchao_status())``).

    Example:
        >>> torchao_status().startswith("torchao")
        True
    """
    torchao = _import_torchao()
    if isinstance(torchao, str):
        return f"{torchao}; install it with: {_INSTALL_HINT}"
    return f"torchao {torchao.__version__} (course_lib checks for {TORCHAO_REQUIREMENT})"


def _require_torchao(what: str):
    torchao = _import_torchao()
    if isinstance(torchao, str):
        raise ImportError(f"{what} needs torchao: {torchao}. Install it with: {_INSTALL_HINT}")
    return torchao


def _torchao_base_config(scheme: str):
    one_of("scheme", scheme, _TORCHAO_SCHEMES)
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                                      PerAxis)
    if scheme == "int8_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                 weight_granularity=PerAxis(0))


def _torchao_qat(model: nn.Module, scheme: str, step: str, filter_fn) -> nn.Module:
    _require_torchao(f"torchao_qat_{step}")
    instance_of("model", model, nn.Module)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")
    if any(isinstance(m, _QAT_TYPES) for m in model.modules()):
        raise ValueError("model holds course_lib QAT layers: call remove_qat(model) first "
                         "(torchao would fake-quantize them a second time)")
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    qat_config = QATConfig(_torchao_base_config(scheme), step=step)
    with _quiet_torchao_imports():
        if filter_fn is None:
            quantize_(model, qat_config)
        else:
            quantize_(model, qat_config, filter_fn=filter_fn)
    return model


def torchao_qat_prepare(model: nn.Module, scheme: str = "int8_weight_only", *,
                        filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """torchao QAT, step 1: ``quantize_(model, QATConfig(base, step="prepare"))``, in place.

    Swaps ``nn.Linear`` for torchao's ``FakeQuantizedLinear`` (weights stay
    float32 Parameters; only the forward is fake-quantized). Convolutions are
    not supported by torchao and stay float.

    Args:
        model (nn.Module): the float model.
        scheme (str, default "int8_weight_only"): ``"int8_weight_only"``
            (``IntxWeightOnlyConfig(int8, PerAxis(0))``) or
            ``"int8_dynamic_activation"`` (``Int8DynamicActivationIntxWeightConfig``:
            int8 per-token activations too). Use the same scheme to convert.
        filter_fn (callable | None): torchao's ``filter_fn(module, name)``;
            ``None`` = every ``nn.Linear``.

    Raises:
        ImportError: torchao is missing or unusable (the message says what to install).
    """
    return _torchao_qat(model, scheme, "prepare", filter_fn)


def torchao_qat_convert(model: nn.Module, scheme: str = "int8_weight_only", *,
                        filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """torchao QAT, step 2: ``quantize_(model, QATConfig(base, step="convert"))``, in place.

    Each prepared ``Linear`` gets an int8 weight: a torchao tensor subclass
    (``IntxUnpackedToInt8Tensor``) with ``qdata`` (int8) and per-channel
    ``scale``; its ``.dtype`` reports float32, the dtype it computes in (on
    CPU the weight is dequantized for each matmul: smaller on disk, not faster).
    Only layers swapped by ``torchao_qat_prepare`` are converted: on a plain
    ``nn.Linear`` (never prepared) torchao 0.18 does nothing, silently -- the
    weight stays a float32 Parameter.

    Args:
        as ``torchao_qat_prepare`` (same ``scheme``).

    Raises:
        ImportError: torchao is missing or unusable.
    """
    return _torchao_qat(model, scheme, "convert", filter_fn)


def torchao_int8_dynamic_quantize(model: nn.Module, *,
                                  filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Post-training int8 with int8 *compute*: ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``.

    In place. Each ``nn.Linear`` weight becomes torchao's ``Int8Tensor``
    (int8 per output channel, symmetric); at every call the activation is
    quantized to int8 per row (its scale computed from that batch: "dynamic")
    and the product runs as an integer matmul (``aten::_int_mm``, int32
    accumulation), then is rescaled to float32. Whether that is faster than
    float32 depends on the layer size and the CPU (chapter 08 measures it).
    Use it on a float model (after QAT, ``remove_qat`` first); torchao
    quantizes ``nn.Linear`` only.

    Args:
        model (nn.Module): the float model.
        filter_fn (callable | None): torchao's ``filter_fn(module, name)``;
            ``None`` = every ``nn.Linear``.

    Raises:
        ImportError: torchao is missing or unusable (the message says what to install).
        ValueError: ``model`` still holds course_lib QAT layers.
    """
    _require_torchao("torchao_int8_dynamic_quantize")
    instance_of("model", model, nn.Module)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")
    if any(isinstance(m, _QAT_TYPES) for m in model.modules()):
        raise ValueError("model holds course_lib QAT layers: call remove_qat(model) first")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    with _quiet_torchao_imports():
        if filter_fn is None:
            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        else:
            quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=filter_fn)
    return model


def serialized_size_bytes(obj) -> int:
    """Bytes ``torch.save`` writes for a module's ``state_dict`` (or any object).

    Measured by saving into an in-memory ``io.BytesIO``: the size of a
    checkpoint on disk, including pickle and zip overhead (for a file called
    ``archive.pt``: torch.save names the zip's top folder after the file, so
    each stored record's name, and the size, depend a little on the name).

    Args:
        obj (nn.Module | object): a module (its ``state_dict()`` is saved) or
            anything ``torch.save`` accepts.

    Example:
        >>> serialized_size_bytes(nn.Linear(100, 100)) > 4 * 100 * 100
        True
    """
    buffer = io.BytesIO()
    torch.save(obj.state_dict() if isinstance(obj, nn.Module) else obj, buffer)
    return buffer.getbuffer().nbytes
