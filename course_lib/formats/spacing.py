"""Spacing of a format: ``ulp``, ``next_up``, ``next_down``.

Introduced in chapter 01 (notebooks/01_float_formats.ipynb).

In the binade ``[2**e, 2**(e+1))`` a format with ``m`` mantissa bits has
``2**m`` equally spaced values, so its spacing (one "unit in the last
place") is ``2**(e - m)``; below ``min_normal`` the subnormals keep the
spacing of the lowest binade, ``min_subnormal = 2**(emin - m)``. ``ulp``
reads ``e`` off the float32 exponent field (clamped at ``emin``) and builds
``2**(e - m)`` as float32 bits. ``next_up`` / ``next_down`` step the bit
pattern: patterns ordered by value are ``-max .. -0, +0 .. +max`` in
sign-magnitude, so moving one value up is magnitude + 1 for positives and
magnitude - 1 for negatives.
"""
from __future__ import annotations

import torch

from ._common import F32_BIAS, F32_MANT_BITS, INF_BITS, as_float32, consts
from .codec import _encode_rounded, decode
from .registry import get_format
from .rounding import _round_bits


def ulp(x, fmt) -> torch.Tensor:
    """Spacing of ``fmt`` at ``|x|``: ``2**(e - m)`` for ``|x|`` in ``[2**e, 2**(e+1))``.

    ``x``: float tensor or Python float(s) (as in :func:`round_to_format`;
    integer tensors raise TypeError), ``fmt``: name, alias, dtype or
    FloatFormat. Returns a float32 tensor of ``x``'s shape. Definitions at
    the edges: below ``min_normal`` (including 0) the spacing is
    ``min_subnormal``; in the top binade ``[2**emax, 2**(emax+1))`` -- which
    holds ``max``, and for "fn"/"fnuz" formats values above it -- it is
    ``2**(emax - m)`` (so ``ulp(max)`` is the gap below ``max``); for
    ``|x| >= 2**(emax+1)`` and for +-inf it is inf (as ``math.ulp(inf)``);
    NaN gives NaN. ``x`` need not be representable in ``fmt``.

    >>> ulp(torch.tensor([1.0, 1000.0, 65504.0, 0.0, 1e9]), "fp16").tolist()
    [0.0009765625, 0.5, 32.0, 5.960464477539063e-08, inf]
    >>> ulp(torch.tensor([1.0]), "bf16").item() == get_format("bf16").eps
    True
    """
    fmt = get_format(fmt)
    x = as_float32(x, "ulp")
    c = consts(fmt)
    a = x.view(torch.int32) & 0x7FFFFFFF
    e = (a >> F32_MANT_BITS).clamp_(min=c.emn)            # biased exponent, at least emin's
    q = e - fmt.mantissa_bits                             # biased exponent of 2**(e - m)
    # q >= 1: a float32 normal (q << 23); q in [-22, 0]: a float32 subnormal, 1 << (q + 22)
    bits = torch.where(q >= 1, q << F32_MANT_BITS, torch.bitwise_left_shift(1, (q + 22).clamp_(min=0)))
    out = bits.view(torch.float32)
    top = min(fmt.emax + 1 + F32_BIAS, 255) << F32_MANT_BITS  # bits of 2**(emax+1) (or inf)
    out = torch.where(a >= top, float("inf"), out)
    return torch.where(a > INF_BITS, float("nan"), out)


def _step(x, fmt, up: bool, func: str) -> torch.Tensor:
    fmt = get_format(fmt)
    x = as_float32(x, func)
    # toward zero with satfinite: |t| <= |x|, finite, t representable; +-inf -> +-max
    t = _round_bits(x, fmt, "toward_zero", True, None).view(torch.float32)
    p = _encode_rounded(t, fmt)
    exact = t == x
    sign_mask = fmt.sign_mask
    mag = p & (sign_mask - 1)
    order = torch.where((p & sign_mask) != 0, -mag, mag)   # patterns in value order; +-0 -> 0
    if up:   # exact: the next value; x above t (x > 0): t's successor; x below t (x < 0): t itself
        order = order + (exact | (x > 0)).to(torch.int64)
    else:
        order = order - (exact | (x < 0)).to(torch.int64)
    beyond = order.abs() > fmt.max_pattern
    new = torch.where(order < 0, sign_mask | (-order), order).clamp_(max=(1 << fmt.bits) - 1)
    if up and fmt.has_negative_zero:  # up from below zero ends at -0 (IEEE 754: nextUp(-min) == -0)
        new = torch.where((order == 0) & (x < 0), sign_mask, new)
    value = decode(torch.where(beyond, 0, new), fmt)
    if fmt.has_inf:
        value = torch.where(beyond, torch.where(order > 0, float("inf"), float("-inf")), value)
    else:
        value = torch.where(beyond, float("nan"), value)
    return torch.where(torch.isnan(x), float("nan"), value)


def next_up(x, fmt) -> torch.Tensor:
    """The smallest value of ``fmt`` strictly greater than ``x`` (IEEE 754 ``nextUp``).

    ``x``: float tensor or Python float(s); need not be representable in
    ``fmt`` (then it is the first representable value above ``x``). Returns
    float32. Edges: ``next_up(+-0) = min_subnormal``; ``next_up(-min_subnormal)
    = -0.0`` (+0.0 in "fnuz"); ``next_up(max)`` is +inf for "ieee" formats
    and NaN for "fn"/"fnuz" ones (nothing is above max: the next pattern is
    their NaN); ``next_up(-inf) = -max``; ``next_up(+inf)`` is +inf ("ieee")
    or NaN; NaN gives NaN. Algorithm: round toward zero, then step the bit
    pattern in value order (see the module docstring).

    >>> next_up(torch.tensor([1.0, 65504.0, -0.0, 1.0001]), "fp16").tolist()
    [1.0009765625, inf, 5.960464477539063e-08, 1.0009765625]
    >>> next_up(torch.tensor([448.0]), "e4m3").item()
    nan
    """
    return _step(x, fmt, True, "next_up")


def next_down(x, fmt) -> torch.Tensor:
    """The largest value of ``fmt`` strictly less than ``x`` (IEEE 754 ``nextDown``).

    Mirror image of :func:`next_up`: ``next_down(x) == -next_up(-x)``.
    ``next_down(min_subnormal) = +0.0``; ``next_down(+-0) = -min_subnormal``;
    ``next_down(-max)`` is -inf ("ieee") or NaN; ``next_down(+inf) = max``.

    >>> next_down(torch.tensor([1.0, 2048.0, 1e9]), "fp16").tolist()
    [0.99951171875, 2047.0, 65504.0]
    """
    return _step(x, fmt, False, "next_down")
