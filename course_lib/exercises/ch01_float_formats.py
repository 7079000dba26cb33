"""Chapter 01 exercises: decode FP16 by hand, round to BF16 with bit operations, FP16 ulp
(notebooks/01_float_formats.ipynb)."""
from __future__ import annotations

import torch

from course_lib.formats import decode, round_to_format, ulp
from course_lib.grading.compare import same, same_float
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Case, Exercise, register


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


register(Exercise(
    id="01.decode_fp16",
    title="Decode an FP16 bit pattern by hand",
    points=2,
    reference=decode_fp16,
    cases=_decode_cases,
    compare=same_float,
    hint="1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits; an exponent field of 0 means "
         "subnormal (no implicit leading 1), 31 means inf or NaN; remember -0.0",
))

register(Exercise(
    id="01.round_to_bf16",
    title="Round float32 to bfloat16 (ties to even) with integer bit operations",
    points=3,
    reference=round_to_bf16,
    cases=_bf16_cases,
    compare=same(bitwise=True),
    hint="x.view(torch.int32) gives the bits; a bf16 value is a float32 whose low 16 bits are zero; "
         "a tie goes the way that leaves the lowest kept bit 0; NaN must stay NaN; return float32",
    forbidden_dtypes=(torch.bfloat16,),
))

register(Exercise(
    id="01.fp16_ulp",
    title="The spacing (ulp) of FP16 at x",
    points=2,
    reference=fp16_ulp,
    cases=_ulp_cases,
    compare=same(),
    hint="for |x| in [2**e, 2**(e+1)) the spacing is 2**(e - 10); below 2**-14 (subnormals, and 0) "
         "it stays 2**-24; torch.frexp gives e, but not for 0",
))
