"""Affine quantization: scale and zero point, quantize/dequantize, fake quantization and the STE.

See the package docstring (:mod:`course_lib.qat`) for the algorithms. Introduced in chapter 08
(notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.validate import instance_of, non_negative_int, one_of

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
