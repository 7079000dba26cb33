"""The format registry: ``FloatFormat``, the built-in formats, ``get_format``, ``make_format``.

A binary floating-point format is fixed by three things: how many exponent
bits it has, how many mantissa (fraction) bits, and what it does with the
all-ones exponent (its *convention*). Every other number in a format's data
sheet -- bias, largest value, smallest normal and subnormal, epsilon -- is
derived here from those bits, never typed in. Introduced in chapter 01
(notebooks/01_float_formats.ipynb).

Conventions (names follow ``ml_dtypes`` / ``torch``):

``"ieee"``
    IEEE 754 style (fp32, fp16, bf16, tf32, fp8 e5m2): the all-ones exponent
    is reserved, mantissa 0 is +-inf and any other mantissa is NaN. Bias
    ``2**(e-1) - 1``.
``"fn"``
    "finite" (fp8 e4m3fn): no infinities; the all-ones exponent holds normal
    numbers, except the single all-ones exponent-and-mantissa pattern, which
    is NaN (``0x7F`` / ``0xFF``). Bias ``2**(e-1) - 1``.
``"fnuz"``
    "finite, no negative zero" (fp8 e4m3fnuz / e5m2fnuz, AMD/Graphcore): no
    infinities, no -0; the pattern that would be -0 (sign bit alone, ``0x80``)
    is the one NaN. The bias is one larger: ``2**(e-1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The allowed values of ``FloatFormat.convention``.
CONVENTIONS = ("ieee", "fn", "fnuz")
#: Allowed ranges of user-defined formats: every value (and every rounding
#: step) must be exact in float32 arithmetic, which has 8 exponent and 23
#: mantissa bits.
EXPONENT_BITS_RANGE = (2, 8)
MANTISSA_BITS_RANGE = (0, 23)

# torch dtypes and the (exponent bits, mantissa bits, convention) they store.
# Looked up by name so that an older torch without a dtype simply lacks it.
_TORCH_DTYPE_LAYOUTS = {
    "float32": (8, 23, "ieee"),
    "float16": (5, 10, "ieee"),
    "bfloat16": (8, 7, "ieee"),
    "float8_e4m3fn": (4, 3, "fn"),
    "float8_e5m2": (5, 2, "ieee"),
    "float8_e4m3fnuz": (4, 3, "fnuz"),
    "float8_e5m2fnuz": (5, 2, "fnuz"),
}
_LAYOUT_TO_TORCH_DTYPE = {
    layout: getattr(torch, name)
    for name, layout in _TORCH_DTYPE_LAYOUTS.items() if hasattr(torch, name)
}


def _check_int(value, what: str, lo: int, hi: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int in {lo}..{hi}; got {value!r} "
                        f"({type(value).__name__})")
    if not lo <= value <= hi:
        raise ValueError(f"{what}={value} is out of range; allowed: {lo}..{hi} ({why})")
    return value


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    Arguments: ``name`` (str), ``exponent_bits`` (int, 2..8), ``mantissa_bits``
    (int, 0..23), ``convention`` (``"ieee"``, ``"fn"`` or ``"fnuz"``, default
    ``"ieee"``; see the module docstring). Construct user formats with
    :func:`make_format`, look up built-ins with :func:`get_format`.

    Derived properties (all computed from the bits): ``bits``, ``bias``,
    ``emin``, ``emax``, ``max``, ``min_normal``, ``min_subnormal``, ``eps``,
    ``decimal_digits``, ``has_inf``, ``has_negative_zero``, ``torch_dtype``
    and the bit patterns ``max_pattern``, ``nan_pattern``, ``inf_pattern``.

    >>> fp16 = FloatFormat("fp16", 5, 10)
    >>> fp16.bias, fp16.max, fp16.min_normal, fp16.min_subnormal == 2.0**-24
    (15, 65504.0, 6.103515625e-05, True)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    convention: str = "ieee"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str; got {self.name!r}")
        e = _check_int(self.exponent_bits, "exponent_bits", *EXPONENT_BITS_RANGE,
                       "so that every value fits in float32 arithmetic")
        m = _check_int(self.mantissa_bits, "mantissa_bits", *MANTISSA_BITS_RANGE,
                       "so that every value fits in float32 arithmetic")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention={self.convention!r} is not known; allowed: "
                             + ", ".join(repr(c) for c in CONVENTIONS))
        if self.convention == "ieee" and m == 0:
            raise ValueError("an 'ieee' format needs mantissa_bits >= 1: with 0 mantissa bits the "
                             "all-ones exponent can only encode inf and no NaN is left; "
                             "use convention='fn' (all-ones pattern = NaN) instead")
        if self.convention != "ieee" and e == 8:
            raise ValueError(f"exponent_bits=8 with convention={self.convention!r} is not supported: "
                             "its range would leave float32's (largest value above 2**128 for 'fn', "
                             "normals below 2**-126 for 'fnuz'); allowed: exponent_bits 2..7 for "
                             "'fn'/'fnuz', 2..8 for 'ieee'")

    # -- the layout -----------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width: 1 sign bit + exponent bits + mantissa bits."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """Exponent bias: ``2**(e-1) - 1`` ("ieee", "fn"), one more for "fnuz"."""
        return 2 ** (self.exponent_bits - 1) - (0 if self.convention == "fnuz" else 1)

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: exponent field 1 means ``1 - bias``."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number (``max`` lies in ``[2**emax, 2**(emax+1))``)."""
        return (self.max_pattern >> self.mantissa_bits) - self.bias

    @property
    def has_inf(self) -> bool:
        """True for "ieee" formats: the all-ones exponent with mantissa 0 is +-inf."""
        return self.convention == "ieee"

    @property
    def has_negative_zero(self) -> bool:
        """False only for "fnuz", whose would-be -0 pattern is the NaN."""
        return self.convention != "fnuz"

    # -- special bit patterns (positive sign) ---------------------------------------------
    @property
    def exponent_mask(self) -> int:
        """The all-ones exponent field, in place: ``((1 << e) - 1) << m``."""
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits

    @property
    def sign_mask(self) -> int:
        """The sign bit in place: ``1 << (bits - 1)``."""
        return 1 << (self.bits - 1)

    @property
    def max_pattern(self) -> int:
        """Bit pattern of ``max``: the largest pattern below the reserved ones.

        "ieee": exponent all-ones-minus-one, mantissa all ones (fp16: 0x7BFF);
        "fn": all ones minus one (0x7E: the all-ones 0x7F is NaN);
        "fnuz": all ones (0x7F: only 0x80 is reserved).
        """
        if self.convention == "ieee":
            return (self.exponent_mask - (1 << self.mantissa_bits)) | ((1 << self.mantissa_bits) - 1)
        all_ones = self.sign_mask - 1
        return all_ones - 1 if self.convention == "fn" else all_ones

    @property
    def nan_pattern(self) -> int:
        """The canonical NaN: quiet NaN (top mantissa bit set) for "ieee", all ones for "fn",
        the sign bit alone (0x80) for "fnuz"."""
        if self.convention == "ieee":
            return self.exponent_mask | (1 << (self.mantissa_bits - 1))
        if self.convention == "fn":
            return self.sign_mask - 1
        return self.sign_mask

    @property
    def inf_pattern(self) -> int | None:
        """``+inf`` (all-ones exponent, mantissa 0) for "ieee" formats, else None."""
        return self.exponent_mask if self.has_inf else None

    # -- derived numbers --------------------------------------------------------------------
    @property
    def max(self) -> float:
        """Largest finite value, decoded from ``max_pattern``: ``2**emax * (1 + M / 2**m)``."""
        mantissa = self.max_pattern & ((1 << self.mantissa_bits) - 1)
        return math.ldexp((1 << self.mantissa_bits) + mantissa, self.emax - self.mantissa_bits)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**emin`` (``torch.finfo(...).tiny``)."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, ``2**(emin - m)`` (pattern 0x...01).

        With 0 mantissa bits there are no subnormals and this equals ``min_normal``."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon ``2**-m``: the gap between 1.0 and the next value."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Decimal digits of precision, ``(m + 1) * log10(2)`` (the +1 is the implicit bit)."""
        return (self.mantissa_bits + 1) * math.log10(2.0)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype with this exact layout, or None (tf32, user formats)."""
        return _LAYOUT_TO_TORCH_DTYPE.get((self.exponent_bits, self.mantissa_bits, self.convention))


def make_format(exponent_bits: int, mantissa_bits: int, convention: str = "ieee",
                name: str | None = None) -> FloatFormat:
    """Make a user-defined format with ``exponent_bits`` (2..8) and ``mantissa_bits`` (0..23).

    ``convention`` is ``"ieee"`` (default), ``"fn"`` or ``"fnuz"`` (see the
    module docstring); ``name`` defaults to ``"e{E}m{M}"`` plus the convention
    suffix for the finite ones (``"e4m3fn"``). The limits keep every value and
    every rounding step exact in float32 arithmetic; "fn"/"fnuz" allow at most
    7 exponent bits and "ieee" needs at least 1 mantissa bit (for NaN).
    Raises TypeError for non-int sizes, ValueError for values out of range.

    >>> e3m2 = make_format(3, 2)
    >>> e3m2.name, e3m2.bias, e3m2.max, e3m2.min_subnormal
    ('e3m2', 3, 14.0, 0.0625)
    >>> make_format(5, 10).max == get_format("fp16").max
    True
    """
    if name is None:
        name = f"e{exponent_bits}m{mantissa_bits}" + ("" if convention == "ieee" else str(convention))
    return FloatFormat(name, exponent_bits, mantissa_bits, convention)


#: The built-in formats, by canonical name.
FORMATS: dict[str, FloatFormat] = {
    f.name: f for f in (
        # What the bits give (all derived by the properties above, checked in the tests):
        # max 0x7F7FFFFF = (2 - 2**-23) * 2**127 ≈ 3.40e38, min_subnormal 0x00000001 = 2**-149
        FloatFormat("fp32", 8, 23, "ieee"),
        # NVIDIA TensorFloat-32 (19 bits used of a 32-bit register): fp32's range, fp16's
        # precision; max (2 - 2**-10) * 2**127, min_subnormal 2**-136
        FloatFormat("tf32", 8, 10, "ieee"),
        # max 0x7BFF = (2 - 2**-10) * 2**15 = 65504, min_normal 0x0400 = 2**-14,
        # min_subnormal 0x0001 = 2**-24 ≈ 5.96e-8, inf 0x7C00
        FloatFormat("fp16", 5, 10, "ieee"),
        # the top half of fp32: max 0x7F7F = (2 - 2**-7) * 2**127 ≈ 3.39e38, min_subnormal 2**-133
        FloatFormat("bf16", 8, 7, "ieee"),
        # bias 7; max 0x7E = 1.75 * 2**8 = 448 (0x7F = S.1111.111 is NaN), min_subnormal 2**-9
        FloatFormat("fp8_e4m3fn", 4, 3, "fn"),
        # bias 15; max 0x7B = 1.75 * 2**15 = 57344, inf 0x7C, min_subnormal 2**-16
        FloatFormat("fp8_e5m2", 5, 2, "ieee"),
        # bias 8; max 0x7F = 1.875 * 2**7 = 240, NaN 0x80, min_subnormal 2**-10
        FloatFormat("fp8_e4m3fnuz", 4, 3, "fnuz"),
        # bias 16; max 0x7F = 1.75 * 2**15 = 57344, NaN 0x80, min_subnormal 2**-17
        FloatFormat("fp8_e5m2fnuz", 5, 2, "fnuz"),
    )
}

#: Other names accepted by :func:`get_format` (case-insensitive).
ALIASES: dict[str, str] = {
    "float32": "fp32", "single": "fp32", "float": "fp32",
    "tensorfloat32": "tf32", "tensorfloat-32": "tf32",
    "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16",
    "e4m3": "fp8_e4m3fn", "fp8_e4m3": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "e4m3fnuz": "fp8_e4m3fnuz", "float8_e4m3fnuz": "fp8_e4m3fnuz",
    "e5m2fnuz": "fp8_e5m2fnuz", "float8_e5m2fnuz": "fp8_e5m2fnuz",
}


def get_format(spec) -> FloatFormat:
    """Look up a format by name, alias, torch dtype, or pass a ``FloatFormat`` through.

    Names are case-insensitive: ``"fp16"``, ``"float16"``, ``"half"``,
    ``"bf16"``, ``"bfloat16"``, ``"fp32"``, ``"tf32"``, ``"e4m3"`` ... (see
    ``FORMATS`` and ``ALIASES``). torch dtypes map to the format with the same
    layout (``torch.float8_e4m3fn`` -> ``fp8_e4m3fn``). Unknown names or dtypes
    raise ValueError listing the known names; other types raise TypeError.

    >>> get_format("half").name, get_format(torch.bfloat16).name, get_format("E4M3").name
    ('fp16', 'bf16', 'fp8_e4m3fn')
    """
    if isinstance(spec, FloatFormat):
        return spec
    if isinstance(spec, torch.dtype):
        for fmt in FORMATS.values():
            if fmt.torch_dtype == spec:
                return fmt
        raise ValueError(f"torch dtype {spec} is not one of the course's formats; known dtypes: "
                         + ", ".join(str(f.torch_dtype) for f in FORMATS.values() if f.torch_dtype))
    if isinstance(spec, str):
        key = spec.strip().lower()
        key = ALIASES.get(key, key)
        if key in FORMATS:
            return FORMATS[key]
        raise ValueError(f"unknown format {spec!r}; known names: {', '.join(FORMATS)} "
                         f"(aliases: {', '.join(ALIASES)}); for other layouts use "
                         "make_format(exponent_bits, mantissa_bits, convention)")
    raise TypeError(f"format must be a name (str), a torch.dtype or a FloatFormat; "
                    f"got {spec!r} ({type(spec).__name__})")
