"""Chapter 01 exercises: decode FP16 by hand, round to BF16 with bit operations, FP16 ulp
(notebooks/01_float_formats.ipynb)."""
from __future__ import annotations

import torch

from course_lib.formats import decode, round_to_format, ulp
from course_lib.grading.compare import same, same_float
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake


def decode_fp16(bits: int) -> float:
    """Reference: the value of the FP16 bit pattern ``bits`` (0 <= bits < 2**16)."""
    return decode(bits, "fp16").item()


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """Reference: float32 ``x`` rounded to the nearest bfloat16 value (ties to even), as float32."""
    return round_to_format(x, "bf16")


def fp16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Reference: the spacing of FP16 at |x| for finite |x| <= 65504, as float32."""
    return ulp(x, "fp16")


def _decode_cases(rng):
    named = {0x0000: "+0", 0x8000: "-0", 0x0001: "smallest subnormal", 0x03FF: "largest subnormal",
             0x0400: "smallest normal", 0x3C00: "one", 0x3555: "about 1/3", 0x7BFF: "largest normal",
             0x7C00: "+inf", 0xFC00: "-inf", 0x7E00: "NaN", 0xFD01: "NaN with sign and payload",
             0x8201: "negative subnormal"}
    for bits, label in named.items():
        yield Case(f"edge: {label} (0x{bits:04X})", (bits,))
    for _ in range(12):
        bits = rng.randrange(1 << 16)
        yield Case(f"random pattern 0x{bits:04X}", (bits,))


def _bf16_cases(rng):
    g = torch_generator(rng)
    specials = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan")])
    yield Case("edge: zeros, ones, infinities, NaN", (specials,))
    # NaNs whose payload would carry into the exponent (and look like inf) when rounded blindly.
    payloads = torch.tensor([0x7FFFFFFF, -1, 0x7F80FFFF, 0x7FBF8000], dtype=torch.int32)
    yield Case("edge: NaNs with large payloads (NaN must stay NaN)", (payloads.view(torch.float32),))
    # Exact midpoints between neighbouring bf16 values: the low 16 bits are 0x8000.
    upper = torch.randint(0, 0x7F7F, (64,), generator=g, dtype=torch.int32)
    ties = ((upper << 16) | 0x8000).view(torch.float32)
    yield Case("ties: exactly halfway between two bf16 values (even and odd)", (ties,))
    yield Case("negative ties", (-ties,))
    near_max = torch.tensor([0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF],
                            dtype=torch.int32).view(torch.float32)
    yield Case("edge: around bf16's largest value (the last two round to inf)", (near_max,))
    subnormal = torch.randint(1, 1 << 23, (64,), generator=g, dtype=torch.int32).view(torch.float32)
    yield Case("float32 subnormals", (subnormal,))
    for _ in range(4):
        patterns = torch.randint(-(2**31), 2**31 - 1, (3, 50), generator=g, dtype=torch.int32)
        yield Case("random float32 bit patterns (a 3x50 tensor)", (patterns.view(torch.float32),))


def _ulp_cases(rng):
    g = torch_generator(rng)
    edges = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0 ** -14, 2.0 ** -24, 6e-8, 3e-5, 1024.0, 2047.9,
                          2048.0, 65504.0, -65504.0])
    yield Case("edge: zero, powers of two, subnormals, the largest value", (edges,))
    for _ in range(4):
        x = log_uniform(g, 200, -25, 16).clamp(-65504.0, 65504.0)     # |x| from 2**-25 to 2**16
        yield Case("random magnitudes over every FP16 binade", (x,))


# -- known-correct alternatives and known mistakes ---------------------------------------------
def _decode_with_struct(bits):
    import struct

    return struct.unpack("<e", int(bits).to_bytes(2, "little"))[0]


def _decode_with_numpy(bits):
    import numpy as np

    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def _decode_with_ldexp(bits):
    import math

    sign, exponent, mantissa = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if exponent == 0x1F:
        return math.nan if mantissa else math.copysign(math.inf, -sign or 1)
    significand = mantissa if exponent == 0 else mantissa | 0x400      # an integer of 10 or 11 bits
    return math.copysign(math.ldexp(significand, max(exponent, 1) - 25), -1.0 if sign else 1.0)


def _decode_positive_zero(bits):
    value = decode_fp16(bits)
    return 0.0 if value == 0 else value


def _decode_no_subnormals(bits):
    s, e, m = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if e == 0x1F:
        return float("nan") if m else (-1) ** s * float("inf")
    return (-1) ** s * 2.0 ** (e - 15) * (1 + m / 1024)        # treats E=0 as normal


def _decode_bias_16(bits):
    s, e, m = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if e == 0x1F:
        return float("nan") if m else (-1) ** s * float("inf")
    if e == 0:
        return (-1) ** s * 2.0 ** -15 * (m / 1024)
    return (-1) ** s * 2.0 ** (e - 16) * (1 + m / 1024)


def _bf16_by_division(x):
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF          # unsigned 32-bit pattern
    high, low = torch.div(bits, 65536, rounding_mode="floor"), bits % 65536
    up = (low > 0x8000) | ((low == 0x8000) & (high % 2 == 1))
    rounded = ((high + up.to(torch.int64)) * 65536) & 0xFFFFFFFF
    rounded = torch.where(rounded >= 2 ** 31, rounded - 2 ** 32, rounded).to(torch.int32)
    return torch.where(torch.isnan(x), x, rounded.view(torch.float32))


def _bf16_with_numpy(x):
    import numpy as np

    b = x.detach().numpy().view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = torch.from_numpy(r.view(np.float32).copy())
    return torch.where(torch.isnan(x), x, out)


def _bf16_truncate(x):
    return (x.view(torch.int32) & -0x10000).view(torch.float32)


def _bf16_round_half_up(x):
    r = ((x.view(torch.int32) + 0x8000) & -0x10000).view(torch.float32)
    return torch.where(torch.isnan(x), x, r)


def _bf16_cast(x):
    return x.to(torch.bfloat16).float()


def _bf16_forgets_nan(x):
    bits = x.view(torch.int32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).view(torch.float32)


def _ulp_from_exponent_field(x):
    exponent = ((x.view(torch.int32) >> 23) & 0xFF) - 127            # float32's binade of |x|
    return torch.exp2((exponent.clamp(min=-14) - 10).to(torch.float32))


def _ulp_with_math_frexp(x):
    import math

    out = [math.ldexp(1.0, max(math.frexp(v)[1] - 1, -14) - 10) if v else 2.0 ** -24
           for v in x.abs().tolist()]
    return torch.tensor(out, dtype=torch.float32).reshape(x.shape)


def _ulp_forgets_zero(x):
    _, e = torch.frexp(x.abs())
    return torch.exp2(((e - 1).clamp(min=-14) - 10).float())


def _ulp_no_subnormal_floor(x):
    _, e = torch.frexp(x.abs())
    return torch.exp2((e - 11).float())


def _ulp_of_rounded_value(x):
    _, e = torch.frexp(x.abs().half().float())                      # the binade after rounding
    k = torch.where(x == 0, torch.full_like(e, -14), (e - 1).clamp(min=-14))
    return torch.exp2((k - 10).float())


EXERCISES = [
    Exercise(
        id="01.decode_fp16",
        title="Decode an FP16 bit pattern by hand",
        points=2,
        reference=decode_fp16,
        cases=_decode_cases,
        compare=same_float,
        hint="1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits; an exponent field of 0 means "
             "subnormal (no implicit leading 1), 31 means inf or NaN; remember -0.0",
        alternatives=(
            Alternative(_decode_with_struct, "struct's 'e' format (IEEE half)"),
            Alternative(_decode_with_numpy, "numpy's float16 view"),
            Alternative(_decode_with_ldexp, "an integer significand and math.ldexp"),
        ),
        mistakes=(
            Mistake(_decode_positive_zero, "returns +0.0 for -0.0"),
            Mistake(_decode_no_subnormals, "treats exponent field 0 as a normal number"),
            Mistake(_decode_bias_16, "bias 16 instead of 15"),
            Mistake(lambda bits: 1.0, "a hard-coded answer"),
        ),
    ),
    Exercise(
        id="01.round_to_bf16",
        title="Round float32 to bfloat16 (ties to even) with integer bit operations",
        points=3,
        reference=round_to_bf16,
        cases=_bf16_cases,
        compare=same(bitwise=True),
        hint="x.view(torch.int32) gives the bits; a bf16 value is a float32 whose low 16 bits are zero; "
             "a tie goes the way that leaves the lowest kept bit 0; keep NaN as it is; return float32",
        forbidden_dtypes=(torch.bfloat16,),
        alternatives=(
            Alternative(_bf16_by_division, "64-bit integer division and remainder, ties by parity"),
            Alternative(_bf16_with_numpy, "the same bit trick in numpy uint64"),
        ),
        mistakes=(
            Mistake(_bf16_truncate, "truncates (rounds toward zero)"),
            Mistake(_bf16_round_half_up, "rounds ties up instead of to even"),
            Mistake(_bf16_cast, "casts with x.to(torch.bfloat16) (refused: not bit operations)"),
            Mistake(_bf16_forgets_nan, "lets a NaN payload carry into infinity"),
        ),
    ),
    Exercise(
        id="01.fp16_ulp",
        title="The spacing (ulp) of FP16 at x",
        points=2,
        reference=fp16_ulp,
        cases=_ulp_cases,
        compare=same(),
        hint="for |x| in [2**e, 2**(e+1)) the spacing is 2**(e - 10); below 2**-14 (subnormals, and 0) "
             "it stays 2**-24; torch.frexp gives e, but not for 0",
        alternatives=(
            Alternative(_ulp_from_exponent_field, "float32's exponent field read from the bits"),
            Alternative(_ulp_with_math_frexp, "math.frexp per element"),
        ),
        mistakes=(
            Mistake(_ulp_forgets_zero, "no special case for 0"),
            Mistake(_ulp_no_subnormal_floor, "no floor at the subnormal spacing 2**-24"),
            Mistake(_ulp_of_rounded_value, "the spacing after rounding x to FP16"),
        ),
    ),
]
