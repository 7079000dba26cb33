"""Bit patterns <-> values: ``decode``, ``encode``, ``fields``, ``explain``.

Introduced in chapter 01 (notebooks/01_float_formats.ipynb).

A pattern of a format with ``e`` exponent and ``m`` mantissa bits is read as
sign ``s`` (top bit), exponent field ``E`` (next ``e`` bits), mantissa field
``M`` (low ``m`` bits), and means

- ``E == 0`` (subnormal or zero): ``(-1)**s * M * 2**(emin - m)``
  (``= 0.M * 2**emin``: no implicit leading 1);
- otherwise (normal): ``(-1)**s * (1 + M / 2**m) * 2**(E - bias)``;

except the reserved patterns of the format's convention: "ieee" -- ``E``
all ones is inf (``M == 0``) or NaN; "fn" -- ``E`` and ``M`` all ones is NaN;
"fnuz" -- the sign bit alone (the would-be -0) is the one NaN.

``decode`` builds the float32 bit pattern directly for normal numbers
(exponent ``E - bias + 127``, mantissa ``M`` shifted up by ``23 - m``) and
computes subnormals as ``M * min_subnormal`` (exact: ``M < 2**23`` and the
scale is a power of two). ``encode`` is ``round_to_format`` followed by the
inverse mapping.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import F32_BIAS, F32_MANT_BITS, QNAN_BITS, as_bit_patterns, as_float32, consts
from .registry import FloatFormat, get_format
from .rounding import _check_rounding, _round_bits

#: The values of ``BitFields.kind``.
KINDS = ("zero", "subnormal", "normal", "inf", "nan")


def _split(p: torch.Tensor, fmt: FloatFormat):
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    sign = (p >> (e + m)) & 1
    exp = (p >> m) & ((1 << e) - 1)
    man = p & ((1 << m) - 1)
    return sign, exp, man


def _nan_mask(p: torch.Tensor, fmt: FloatFormat, exp: torch.Tensor, man: torch.Tensor) -> torch.Tensor:
    if fmt.convention == "ieee":
        return (exp == (1 << fmt.exponent_bits) - 1) & (man != 0)
    if fmt.convention == "fn":
        return (p & (fmt.sign_mask - 1)) == fmt.nan_pattern       # all ones, either sign
    return p == fmt.nan_pattern                                    # fnuz: 0x80 only


def decode(bits, fmt) -> torch.Tensor:
    """Values of bit patterns: integer(s) in ``[0, 2**fmt.bits)`` -> float32 tensor.

    ``bits``: a Python int, a (nested) list of ints or an integer tensor (any
    integer dtype; the result has its shape and device). ``fmt``: name, alias,
    torch dtype or FloatFormat. Patterns outside ``0..2**bits - 1`` raise
    ValueError (negative numbers too: mask an ``int16`` view with ``& 0xFFFF``
    first); float tensors raise TypeError. Every format's values are exact in
    float32 (fp32 patterns decode to themselves). NaN patterns decode to the
    quiet NaN ``0x7FC00000`` with the pattern's sign ("fnuz": +NaN); payloads
    are not kept. Algorithm: see the module docstring.

    >>> decode([0x3C00, 0x7BFF, 0x0001, 0xFC00], "fp16").tolist()
    [1.0, 65504.0, 5.960464477539063e-08, -inf]
    >>> decode(0x7E, "e4m3").item(), decode(0x80, "fp8_e4m3fnuz").item()
    (448.0, nan)
    """
    fmt = get_format(fmt)
    p = as_bit_patterns(bits, fmt, "decode")
    c = consts(fmt)
    sign, exp, man = _split(p, fmt)
    # normal: float32 bits = (E - bias + 127) << 23 | M << (23 - m); below 2**31 for every format
    normal_bits = ((exp + (F32_BIAS - fmt.bias)) << F32_MANT_BITS) | (man << c.drop)
    value = torch.where(exp == 0, man.to(torch.float32) * fmt.min_subnormal,
                        normal_bits.to(torch.int32).view(torch.float32))
    emax_field = (1 << fmt.exponent_bits) - 1
    if fmt.has_inf:
        value = torch.where((exp == emax_field) & (man == 0), float("inf"), value)
    nan_bits = torch.tensor(QNAN_BITS, dtype=torch.int32, device=p.device).view(torch.float32)
    value = torch.where(_nan_mask(p, fmt, exp, man), nan_bits, value)
    if fmt.convention == "fnuz":
        sign = sign * (p != fmt.nan_pattern)           # the NaN 0x80 has no sign
    return torch.where(sign.bool(), -value, value)     # -(+0.0) is -0.0, -(nan) flips its sign bit


def _encode_rounded(r: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """float32 tensor of values representable in ``fmt`` -> int64 bit patterns."""
    c = consts(fmt)
    rb = r.view(torch.int32).to(torch.int64)
    sign = (rb >> 31) & 1
    a = rb & 0x7FFFFFFF
    # normal: (a - ((127 - bias) << 23)) >> D == (E - 127 + bias) << m | M >> D
    normal = (a - ((F32_BIAS - fmt.bias) << F32_MANT_BITS)) >> c.drop
    if c.variable:
        # subnormal (and zero): M = |r| / min_subnormal = |r| * 2**-q, exact (-q <= 86)
        sub = (r.abs() * 2.0 ** -c.min_sub_exp).to(torch.int64)
        p = torch.where(a >= c.min_normal_bits, normal, sub)
    else:
        p = normal  # 8 exponent bits: the target's subnormals are float32's, a >> D works there too
    if fmt.has_inf:
        p = torch.where(a == 0x7F800000, fmt.inf_pattern, p)
    isnan = a > 0x7F800000
    if fmt.convention == "fnuz":
        p = torch.where(isnan, fmt.nan_pattern, p | ((sign * (p != 0)) << (fmt.bits - 1)))
    else:
        p = torch.where(isnan, fmt.nan_pattern, p) | (sign << (fmt.bits - 1))
    return p


def encode(x, fmt, rounding: str = "nearest", *, saturate: bool | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Bit patterns of ``x`` rounded to ``fmt``: float tensor -> int64 tensor in ``[0, 2**bits)``.

    The same arguments, rounding and overflow rules as
    :func:`round_to_format` (``rounding`` "nearest" | "stochastic" |
    "toward_zero", ``saturate`` None | True | False, ``generator``); then
    normal values map to ``(E << m) | M`` with ``E = exponent + bias``,
    subnormals to ``M = |value| / min_subnormal``, and the sign to the top
    bit. NaN encodes as the format's canonical NaN (``FloatFormat.nan_pattern``,
    with the input's sign for "ieee"/"fn"); "fnuz" never sets the sign of 0.
    Integer input raises TypeError. ``decode(encode(x, f), f)`` equals
    ``round_to_format(x, f)``.

    >>> [hex(v) for v in encode(torch.tensor([1.0, -2.0, 65504.0]), "fp16").tolist()]
    ['0x3c00', '0xc000', '0x7bff']
    >>> encode(torch.tensor([1.0, 448.0, 1e-3]), "e4m3").tolist()
    [56, 126, 1]
    """
    fmt = get_format(fmt)
    _check_rounding(rounding)
    x = as_float32(x, "encode")
    r = _round_bits(x, fmt, rounding, saturate, generator).view(torch.float32)
    return _encode_rounded(r, fmt)


class BitFields(NamedTuple):
    """The fields of one bit pattern: ``sign`` (0/1), ``exponent`` (the raw field E),
    ``mantissa`` (the raw field M), ``kind`` ("zero", "subnormal", "normal", "inf", "nan")
    and the decoded ``value`` (a Python float)."""

    sign: int
    exponent: int
    mantissa: int
    kind: str
    value: float


def _one_pattern(bits, fmt: FloatFormat, func: str) -> int:
    p = as_bit_patterns(bits, fmt, func)
    if p.numel() != 1:
        raise ValueError(f"{func} takes ONE bit pattern; got {p.numel()} (shape {tuple(p.shape)}); "
                         "use decode() for many")
    return int(p.reshape(()).item())


def fields(bits, fmt) -> BitFields:
    """Split ONE bit pattern into sign, exponent field, mantissa field, kind and value.

    ``bits``: a Python int (or a one-element integer tensor/list) in
    ``0..2**fmt.bits - 1``; ``fmt``: name, alias, dtype or FloatFormat.
    Returns a :class:`BitFields` named tuple. Out-of-range patterns raise
    ValueError, floats TypeError.

    >>> fields(0x3C00, "fp16")
    BitFields(sign=0, exponent=15, mantissa=0, kind='normal', value=1.0)
    >>> fields(0x0001, "fp16").kind, fields(0x7F, "e4m3").kind, fields(0x7F, "fp8_e4m3fnuz").kind
    ('subnormal', 'nan', 'normal')
    """
    fmt = get_format(fmt)
    p = _one_pattern(bits, fmt, "fields")
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    sign, exp, man = (p >> (e + m)) & 1, (p >> m) & ((1 << e) - 1), p & ((1 << m) - 1)
    value = float(decode(p, fmt))
    if value != value:
        kind = "nan"
    elif value in (float("inf"), float("-inf")):
        kind = "inf"
    elif exp == 0:
        kind = "zero" if man == 0 else "subnormal"
    else:
        kind = "normal"
    return BitFields(sign, exp, man, kind, value)


def explain(bits, fmt) -> str:
    """A one-line, human-readable breakdown of ONE bit pattern of ``fmt``.

    Shows the bits grouped as sign / exponent / mantissa, the format name,
    the sign, the exponent (field minus bias; subnormals use ``1 - bias``),
    the significand as ``1 + M/2**m`` (normal) or ``0 + M/2**m`` (subnormal),
    the value and its kind. Arguments as in :func:`fields`.

    >>> print(explain(0x3C00, "fp16"))
    0 01111 0000000000  fp16  sign=+  exponent=15-15=0  mantissa=1+0/1024  → 1.0 (normal)
    >>> print(explain(0x0001, "fp16"))
    0 00000 0000000001  fp16  sign=+  exponent=1-15=-14 (subnormal: field 0 counts as 1)  mantissa=0+1/1024  → 5.960464477539063e-08 (subnormal)
    >>> print(explain(0x7E, "e4m3"))
    0 1111 110  fp8_e4m3fn  sign=+  exponent=15-7=8  mantissa=1+6/8  → 448.0 (normal)
    """
    fmt = get_format(fmt)
    f = fields(bits, fmt)
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    groups = [str(f.sign), format(f.exponent, f"0{e}b")] + ([format(f.mantissa, f"0{m}b")] if m else [])
    head = f"{' '.join(groups)}  {fmt.name}  sign={'-' if f.sign else '+'}"
    scale = 1 << m
    if f.kind == "nan" and fmt.convention == "fnuz":
        return (f"{' '.join(groups)}  {fmt.name}  (sign bit alone, the would-be -0: this format's "
                f"only NaN)  → nan (nan)")
    if f.kind == "zero":
        return f"{head}  (exponent field 0, mantissa 0)  → {f.value!r} (zero)"
    if f.kind == "nan":
        why = {"ieee": "exponent all ones, mantissa != 0",
               "fn": "exponent and mantissa all ones: one of its two NaNs (one per sign), no inf"}[
                   fmt.convention]
        return f"{head}  ({why})  → nan (nan)"
    if f.kind == "inf":
        return f"{head}  (exponent all ones, mantissa 0)  → {f.value} (inf)"
    if f.exponent == 0:
        expo = f"exponent=1-{fmt.bias}={fmt.emin} (subnormal: field 0 counts as 1)"
        lead = 0
    else:
        expo = f"exponent={f.exponent}-{fmt.bias}={f.exponent - fmt.bias}"
        lead = 1
    return f"{head}  {expo}  mantissa={lead}+{f.mantissa}/{scale}  → {f.value!r} ({f.kind})"
