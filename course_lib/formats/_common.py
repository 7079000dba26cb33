"""Shared helpers of ``course_lib.formats``: input checks, float32 bit constants, per-format constants.

Everything works on the float32 bit pattern viewed as int32 (sign bit 31,
biased exponent bits 30..23, mantissa bits 22..0). Introduced in chapter 01
(notebooks/01_float_formats.ipynb).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import torch

from .registry import FloatFormat

# float32 layout: 1 sign, 8 exponent (bias 127), 23 mantissa bits.
F32_MANT_BITS = 23
F32_BIAS = 127
SIGN_BIT = -(1 << 31)          # 0x80000000 as an int32 (two's complement)
ABS_MASK = (1 << 31) - 1       # 0x7FFFFFFF: everything but the sign
INF_BITS = 0xFF << 23          # 0x7F800000: exponent all ones, mantissa 0
QNAN_BITS = INF_BITS | (1 << 22)  # 0x7FC00000: + the quiet bit
IMPLICIT_BIT = 1 << 23         # 0x00800000: the hidden leading 1 of a normal number


def f32_bits(value: float) -> int:
    """The float32 bit pattern of a Python float that float32 represents exactly."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    if struct.unpack("<f", struct.pack("<I", bits))[0] != value:  # pragma: no cover - internal
        raise AssertionError(f"{value!r} is not exact in float32")
    return bits


def f32_from_bits(bits: int) -> float:
    """The Python float of a float32 bit pattern (0 <= bits < 2**32)."""
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def as_float32(x, func: str) -> torch.Tensor:
    """Return ``x`` as a detached float32 tensor; reject integer/bool/complex input.

    Accepted: floating tensors (float32 used as is; float64 is rounded to
    float32 first -- a double rounding, see round_to_format; float16,
    bfloat16, float8 are widened exactly) and Python floats/ints or (nested)
    lists of them.
    """
    if isinstance(x, torch.Tensor):
        if not x.dtype.is_floating_point:
            hint = (" (if these are bit patterns, decode them with decode(bits, fmt))"
                    if not x.dtype.is_complex and x.dtype != torch.bool else "")
            raise TypeError(f"{func} expects a floating-point tensor (float32; float64, float16, "
                            f"bfloat16 and float8 are converted to float32); got dtype {x.dtype}. "
                            f"Convert with x.float(){hint}")
        return x.detach().to(torch.float32)
    if isinstance(x, bool) or (isinstance(x, (list, tuple)) and _contains_bool(x)):
        raise TypeError(f"{func} expects floats; got a bool ({x!r})")
    if isinstance(x, (int, float, list, tuple)):
        try:
            return torch.tensor(x, dtype=torch.float64).to(torch.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{func} expects a float tensor or (lists of) Python numbers; "
                            f"could not convert {x!r}: {exc}") from None
    raise TypeError(f"{func} expects a floating-point torch.Tensor or Python number(s); "
                    f"got {type(x).__name__}")


def _contains_bool(seq) -> bool:
    return any(isinstance(v, bool) or (isinstance(v, (list, tuple)) and _contains_bool(v)) for v in seq)


def as_bit_patterns(bits, fmt: FloatFormat, func: str) -> torch.Tensor:
    """Return bit patterns as an int64 tensor, checking 0 <= bits < 2**fmt.bits."""
    if isinstance(bits, torch.Tensor):
        if bits.dtype.is_floating_point or bits.dtype.is_complex or bits.dtype == torch.bool:
            raise TypeError(f"{func} expects integer bit patterns (a Python int, a list of ints or an "
                            f"integer tensor); got a tensor of dtype {bits.dtype}. To get the bits of "
                            f"a float tensor use encode(x, fmt) or x.view(torch.int16) for float16")
        p = bits.to(torch.int64)
    elif isinstance(bits, bool):
        raise TypeError(f"{func} expects integer bit patterns; got a bool ({bits!r})")
    elif isinstance(bits, int) or isinstance(bits, (list, tuple)):
        try:
            p = torch.tensor(bits, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{func} expects integer bit patterns; could not convert {bits!r}: "
                            f"{exc}") from None
        if _contains_float(bits):
            raise TypeError(f"{func} expects integer bit patterns; got floats in {bits!r}")
    else:
        raise TypeError(f"{func} expects integer bit patterns (int, list of ints or integer tensor); "
                        f"got {type(bits).__name__}")
    if p.numel():
        lo, hi = int(p.min()), int(p.max())
        top = (1 << fmt.bits) - 1
        if lo < 0 or hi > top:
            bad = lo if lo < 0 else hi
            hint = ""
            if lo < 0:
                hint = (f"; negative numbers are not bit patterns -- if they come from "
                        f".view(torch.int{fmt.bits}), mask them: bits & 0x{top:X}")
            raise ValueError(f"bit pattern {bad} is out of range for {fmt.name} ({fmt.bits} bits); "
                             f"allowed: 0..{top} (0x0..0x{top:X}){hint}")
    return p


def _contains_float(obj) -> bool:
    if isinstance(obj, (list, tuple)):
        return any(_contains_float(v) for v in obj)
    return isinstance(obj, float)


@dataclass(frozen=True)
class Consts:
    """Per-format constants, all in float32 bit-pattern units (see ``consts``)."""

    drop: int            # D = 23 - m: float32 mantissa bits below the target's last bit (normal range)
    emn: int             # float32 biased exponent of the target's min_normal: emin + 127
    variable: bool       # True when the target's subnormals lie above float32's (emn > 1)
    max_bits: int        # float32 bits of fmt.max
    min_normal_bits: int
    min_sub_bits: int
    half_min_sub_bits: int  # float32 bits of min_subnormal / 2 (only used when variable)
    min_sub_exp: int     # q = emin - m: min_subnormal == 2**q
    above_max_bits: int  # max_bits + 2**D: the value after max if the exponent range went on
    overflow_nearest_bits: int  # the smallest |x| (as bits) that rounds to nearest above max
    special_from: dict   # per rounding mode: the smallest |x| (bits) that can round above max


@lru_cache(maxsize=None)
def consts(fmt: FloatFormat) -> Consts:
    """Derive the rounding constants of ``fmt`` from its layout (cached)."""
    m = fmt.mantissa_bits
    emn = fmt.emin + F32_BIAS  # >= 1: emin >= -126 for every allowed format
    variable = emn > 1
    q = fmt.emin - m
    drop = F32_MANT_BITS - m
    max_bits = f32_bits(fmt.max)
    # Nearest-even rounds the midpoint max + 2**(D-1) up iff max's last kept bit is odd (for
    # m == 0 that bit is the implicit 1); anything above the midpoint rounds up.
    max_odd = m == 0 or (max_bits >> drop) & 1
    midpoint = max_bits + ((1 << drop) >> 1)
    above_max = max_bits + (1 << drop)
    overflow_nearest = (midpoint if max_odd else midpoint + 1) if drop else above_max
    return Consts(
        drop=drop,
        emn=emn,
        variable=variable,
        max_bits=max_bits,
        min_normal_bits=emn << F32_MANT_BITS,
        min_sub_bits=f32_bits(fmt.min_subnormal),
        # variable formats have emin >= -63, so min_subnormal / 2 >= 2**-87 is a float32 normal
        half_min_sub_bits=f32_bits(fmt.min_subnormal / 2) if variable else 0,
        min_sub_exp=q,
        above_max_bits=above_max,
        overflow_nearest_bits=overflow_nearest,
        special_from={"nearest": overflow_nearest, "toward_zero": above_max,
                      "stochastic": max_bits + 1},
    )
