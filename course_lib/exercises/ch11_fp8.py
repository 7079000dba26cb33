"""Chapter 11 exercises: a per-tensor FP8 scale from the amax; an FP8 quantize-dequantize with
saturation (notebooks/11_fp8.ipynb)."""
from __future__ import annotations

import torch

from course_lib.formats import round_to_format
from course_lib.fp8 import EPS, FP8_FORMATS, quantize_dequantize, tensor_to_scale
from course_lib.grading.compare import same
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake

_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_MAX = {"e4m3": 448.0, "e5m2": 57344.0}

# Tolerances. The reference divides in float64 and rounds once to float32; a float32 division
# (or 1 / (amax / max), two roundings) lands within 2 float32 ulps of it, and EPS = 1e-12 is
# itself rounded when a learner clamps a float32 tensor. 4 ulps (2**-21 relative) accepts every
# such order of operations and still rejects a scale computed in bfloat16 (2**-9) or float16
# (2**-11).
_SCALE_RTOL = 2.0 ** -21
# Dequantizing by "/ scale" or "* (1 / scale)" differs by at most 1 ulp (2**-23) plus the
# rounding of 1 / scale: 2 ulps. The FP8 rounding itself must agree exactly: a value one FP8
# step off differs by at least 2**-3 relative (E4M3) -- far outside this tolerance.
_QDQ_RTOL = 2.0 ** -22


# -- 11.fp8_scale -------------------------------------------------------------------------------
def _scale_cases(rng):
    g = torch_generator(rng)
    for fmt in ("e4m3", "e5m2"):
        x = torch.tensor([-5.0, 1.0, 2.5, -0.25])
        yield Case(f"edge: the largest magnitude is negative ({fmt})", (x, fmt))
    yield Case("edge: all zeros (amax 0: clamp it to 1e-12)", (torch.zeros(3, 4), "e4m3"))
    yield Case("edge: amax 1e-13, below EPS = 1e-12", (torch.tensor([1e-13, -5e-14]), "e5m2"))
    yield Case("edge: amax exactly at E4M3's max: scale 1", (torch.tensor([448.0, -3.0]), "e4m3"))
    # amax = 3 * 2**k: 448 / amax is not a bfloat16 (or float16) value, so a scale computed in the
    # input's dtype is off by far more than the tolerance.
    k = rng.randint(-8, 8)
    x16 = (torch.rand(5, 7, generator=g) * 2 - 1) * 2.0 ** k
    x16[rng.randrange(5), rng.randrange(7)] = -3.0 * 2.0 ** k
    yield Case("bfloat16 input (compute the scale in float32, not bfloat16)",
               (x16.to(torch.bfloat16), "e4m3"))
    yield Case("float16 input", (x16.to(torch.float16), "e5m2"))
    for _ in range(4):
        fmt = rng.choice(("e4m3", "e5m2"))
        shape = (rng.randint(1, 9), rng.randint(1, 33))
        magnitude = 2.0 ** rng.uniform(-20, 12)
        x = torch.randn(*shape, generator=g) * magnitude
        yield Case(f"random {shape[0]}x{shape[1]} float32 tensor, magnitude ~{magnitude:.2g} ({fmt})",
                   (x, fmt))
    x = log_uniform(g, 200, -30, 30)
    yield Case("random magnitudes from 2**-30 to 2**30 (e4m3)", (x, "e4m3"))


def _compare_scale(expected, got):
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor (a 0-dim float32 tensor), got {type(got).__name__}"
    if got.dim() != 0:
        return f"expected a 0-dim tensor (one scale for the whole tensor), got shape {tuple(got.shape)}"
    return same(rtol=_SCALE_RTOL)(expected, got)


def _scale_float32(x, fmt):
    amax = x.detach().abs().max().float()
    return torch.finfo(_DTYPES[fmt]).max / torch.clamp(amax, min=EPS)


def _scale_by_reciprocal(x, fmt):
    amax = torch.linalg.vector_norm(x.float(), ord=float("inf"))
    return 1.0 / (torch.maximum(amax, torch.tensor(1e-12)) / _MAX[fmt])


def _scale_without_abs(x, fmt):
    return (_MAX[fmt] / torch.clamp(x.max().float(), min=EPS)).float()


def _scale_inverted(x, fmt):
    return torch.clamp(x.abs().max().float(), min=EPS) / _MAX[fmt]


def _scale_no_eps(x, fmt):
    return _MAX[fmt] / x.abs().max().float()


def _scale_in_input_dtype(x, fmt):
    return (_MAX[fmt] / torch.clamp(x.abs().max(), min=EPS)).float()


def _scale_ignores_format(x, fmt):
    return 448.0 / torch.clamp(x.abs().max().float(), min=EPS)


def _scale_zero_only(x, fmt):
    amax = x.abs().max().float()
    return _MAX[fmt] / (amax if amax > 0 else torch.tensor(EPS))


# -- 11.fp8_quantize_dequantize --------------------------------------------------------------------
def _qdq_cases(rng):
    g = torch_generator(rng)
    for fmt in ("e4m3", "e5m2"):
        x = torch.randn(6, 10, generator=g) * 2.0 ** rng.uniform(-10, 10)
        yield Case(f"random tensor with its own per-tensor scale ({fmt})", (x, fmt, tensor_to_scale(x, fmt)))
    x = torch.randn(4, 16, generator=g)
    yield Case("edge: scale 4x too large: the largest values saturate (e4m3)",
               (x, "e4m3", tensor_to_scale(x, "e4m3") * 4))
    big = torch.tensor([1.0, 100.0, 500.0, 4000.0, 6e4, 7e4, -7e4, 1e6])
    yield Case("edge: E5M2 overflow: beyond 57344 must saturate, not become inf (e5m2)",
               (big, "e5m2", torch.tensor(1.0)))
    yield Case("edge: E4M3 overflow at scale 2 (e4m3)", (big, "e4m3", torch.tensor(2.0)))
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1.0])
    fmt = rng.choice(("e4m3", "e5m2"))
    yield Case(f"edge: +-inf saturate to +-max, NaN stays NaN ({fmt})", (specials, fmt, torch.tensor(0.5)))
    # 1.0625 lies halfway between the E4M3 values 1.0 and 1.125 (to even: 1.0); 1.1875 halfway
    # between 1.125 and 1.25 (to even: 1.25); 2**-10 halfway between 0 and E4M3's smallest
    # subnormal 2**-9 (to even: 0).
    ties = torch.tensor([1.0625, 1.1875, -1.0625, 2.0 ** -10, 3 * 2.0 ** -10])
    yield Case("edge: ties round to even, subnormals (e4m3, scale 1)", (ties, "e4m3", torch.tensor(1.0)))
    for _ in range(3):
        fmt = rng.choice(("e4m3", "e5m2"))
        x = log_uniform(g, 300, -12, 12)
        scale = torch.tensor(2.0 ** rng.uniform(-8, 8))
        yield Case(f"random magnitudes, scale {scale.item():.4g} ({fmt})", (x, fmt, scale))


def _qdq_torch_cast(x, fmt, scale):
    dtype = _DTYPES[fmt]
    fmax = torch.finfo(dtype).max
    y = (x.float() * scale).clamp(-fmax, fmax)
    return y.to(dtype).float() / scale


def _qdq_round_to_format(x, fmt, scale):
    rounded = round_to_format(x.float() * scale, FP8_FORMATS[fmt], saturate=True)
    return rounded * (1.0 / scale)


def _qdq_where(x, fmt, scale):
    y = x * scale
    y = torch.where(y.abs() > _MAX[fmt], torch.sign(y) * _MAX[fmt], y)   # NaN: the test is False
    return y.to(_DTYPES[fmt]).to(torch.float32) / scale


def _qdq_no_clamp(x, fmt, scale):
    return (x * scale).to(_DTYPES[fmt]).float() / scale


def _qdq_clamp_448(x, fmt, scale):
    return (x * scale).clamp(-448.0, 448.0).to(_DTYPES[fmt]).float() / scale


def _qdq_no_dequantize(x, fmt, scale):
    return (x * scale).clamp(-_MAX[fmt], _MAX[fmt]).to(_DTYPES[fmt]).float()


def _qdq_scale_inverted(x, fmt, scale):
    return (x / scale).clamp(-_MAX[fmt], _MAX[fmt]).to(_DTYPES[fmt]).float() * scale


def _qdq_nan_to_num(x, fmt, scale):
    y = torch.nan_to_num(x * scale, posinf=_MAX[fmt], neginf=-_MAX[fmt]).clamp(-_MAX[fmt], _MAX[fmt])
    return y.to(_DTYPES[fmt]).float() / scale


EXERCISES = [
    Exercise(
        id="11.fp8_scale",
        title="A per-tensor FP8 scale from the amax",
        points=2,
        reference=tensor_to_scale,
        cases=_scale_cases,
        compare=_compare_scale,
        hint="after scaling, the largest *magnitude* of x must land exactly on the format's largest "
             "value (torch.finfo of the float8 dtype); think about negative values, an all-zero "
             "tensor, and where a 16-bit input's arithmetic would round",
        alternatives=(
            Alternative(_scale_float32, "torch.finfo max divided in float32 (1 ulp from float64)"),
            Alternative(_scale_by_reciprocal, "infinity norm, then 1 / (amax / max): two roundings"),
        ),
        mistakes=(
            Mistake(_scale_without_abs, "uses x.max() instead of max |x|"),
            Mistake(_scale_inverted, "returns amax / max (the dequantization factor)"),
            Mistake(_scale_no_eps, "no EPS: an all-zero tensor gets an infinite scale"),
            Mistake(_scale_in_input_dtype, "divides in the input's dtype (bfloat16: 8 bits)"),
            Mistake(_scale_ignores_format, "uses 448 for E5M2 too"),
            Mistake(_scale_zero_only, "replaces only an exact 0 amax, not one below EPS"),
        ),
    ),
    Exercise(
        id="11.fp8_quantize_dequantize",
        title="FP8 quantize-dequantize with a scale and saturation",
        points=3,
        reference=quantize_dequantize,
        cases=_qdq_cases,
        compare=same(rtol=_QDQ_RTOL),
        hint="the scale goes on before the rounding and comes off after it; torch's float8 casts "
             "round to nearest even but do not all saturate (look at what float8_e5m2 gives past its "
             "max), and whatever saturates must leave NaN alone",
        alternatives=(
            Alternative(_qdq_torch_cast, "clamp with torch.finfo, then torch's float8 cast"),
            Alternative(_qdq_round_to_format, "course_lib.formats.round_to_format(saturate=True), "
                                              "multiply by 1 / scale"),
            Alternative(_qdq_where, "torch.where saturation, then the cast"),
        ),
        mistakes=(
            Mistake(_qdq_no_clamp, "relies on torch's cast (E5M2 overflows to inf)"),
            Mistake(_qdq_clamp_448, "clamps to 448 for E5M2 too"),
            Mistake(_qdq_no_dequantize, "returns the FP8 values without dividing by the scale"),
            Mistake(_qdq_scale_inverted, "divides by the scale before the cast"),
            Mistake(_qdq_nan_to_num, "torch.nan_to_num for the infinities also turns NaN into 0"),
        ),
    ),
]
