"""Scaled FP8 casts: formats, scales from amax, to_fp8/dequantize, SQNR.

See the package docstring (:mod:`course_lib.fp8`) for the conventions and references.
Introduced in chapter 11 (notebooks/11_fp8.ipynb).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.formats import FloatFormat, get_format, round_to_format
from course_lib.validate import instance_of

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
