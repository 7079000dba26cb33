"""Chapter 08 exercises: scale and zero point from a range; quantize to integer codes; the
straight-through estimator's backward (notebooks/08_quantization_aware_training.ipynb)."""
from __future__ import annotations

import math
import warnings

import torch

from course_lib.grading.compare import same
from course_lib.grading.inputs import torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.qat import FP32_EPS, QParams, calculate_qparams, quantize, ste_gradient

#: Integer ranges the cases draw from: int8, uint8, int4, uint4, 7-bit unsigned (torch's
#: ``reduce_range``), 7-bit signed.
_RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (0, 127), (-64, 63)]

# Tolerance of 08.calculate_qparams. The reference computes the scale in float32 (a rounded
# difference, then a rounded division: within 1 ulp of the exact quotient); Python floats
# (float64) round once, when QParams stores the scale: within 1/2 ulp. The two differ by at most
# 1.5 ulp; 2**-22 relative (2 ulps at the top of a binade, 4 at the bottom) accepts that and still
# rejects a wrong number of steps (255 vs 256: 2**-8 relative).
_SCALE_RTOL = 2.0 ** -22
# Cases keep every x / s (and min / s) at least this far from a rounding tie (k + 1/2), except the
# deliberate exact ties built with power-of-two scales: "x / s" and "x * (1 / s)" (or float32 and
# float64) differ by a few float32 ulps of x / s -- at most 255 * 2**-23 ~ 3e-5 here -- so only a
# value that close to a tie can round differently.
_TIE_MARGIN = 1e-3


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def _near_tie(t: torch.Tensor) -> torch.Tensor:
    frac = t - torch.floor(t)
    return (frac - 0.5).abs() < _TIE_MARGIN


def _away_from_ties(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Move the elements of ``x`` whose ``x / scale`` lies within _TIE_MARGIN of a tie by 0.1 step."""
    t = x.double() / scale
    return torch.where(_near_tie(t), x + 0.1 * scale, x).to(torch.float32)


# -- 08.calculate_qparams --------------------------------------------------------------------------
def _range_is_safe(lo: float, hi: float, qmin: int, qmax: int) -> bool:
    qp = calculate_qparams(lo, hi, qmin, qmax)
    t = min(lo, 0.0) / qp.scale.double().item()
    return not bool(_near_tie(torch.tensor(t, dtype=torch.float64)))


def _qparams_cases(rng):
    yield Case("edge: [-1, 3] onto uint8 [0, 255]: min / scale = -63.75, the zero point is 64",
               (-1.0, 3.0, 0, 255))
    yield Case("edge: an all-positive range [0.5, 2]: widen it to include 0", (0.5, 2.0, 0, 255))
    yield Case("edge: an all-negative range [-3, -1] onto int8", (-3.0, -1.0, -128, 127))
    yield Case("edge: an all-zero range: the scale is eps", (0.0, 0.0, 0, 255))
    yield Case("edge: a range far narrower than eps, onto int8", (-1e-30, 1e-30, -128, 127))
    yield Case("edge: int8 [-128, 127], range [-2.5, 1.5]", (-2.5, 1.5, -128, 127))
    for _ in range(6):
        qmin, qmax = rng.choice(_RANGES)
        while True:
            mag = 10.0 ** rng.uniform(-4, 4)
            a, b = sorted((rng.uniform(-1, 1) * mag, rng.uniform(-1, 1) * mag))
            shift = rng.choice((0.0, 0.0, 1.2 * mag, -1.2 * mag))   # straddling 0, or one-sided
            lo, hi = _f32(a + shift), _f32(b + shift)
            if _range_is_safe(lo, hi, qmin, qmax):
                break
        yield Case(f"random range [{lo:.4g}, {hi:.4g}] onto [{qmin}, {qmax}]", (lo, hi, qmin, qmax))


def _compare_qparams(expected: QParams, got) -> str | None:
    if not isinstance(got, QParams):
        return (f"expected a QParams (return QParams(scale, zero_point, qmin, qmax)), "
                f"got {type(got).__name__}")
    if (got.qmin, got.qmax) != (expected.qmin, expected.qmax):
        return f"qmin, qmax: expected ({expected.qmin}, {expected.qmax}), got ({got.qmin}, {got.qmax})"
    if got.per_channel:
        return f"expected per-tensor parameters (axis=None), got axis={got.axis}"
    e, g = expected.scale.double().item(), got.scale.double().item()
    if abs(g - e) > _SCALE_RTOL * e:
        return f"scale: expected {e!r}, got {g!r}"
    if int(got.zero_point) != int(expected.zero_point):
        return f"zero_point: expected {int(expected.zero_point)}, got {int(got.zero_point)}"
    return None


def _qp_python_floats(min_val, max_val, qmin, qmax):
    lo, hi = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((hi - lo) / (qmax - qmin), FP32_EPS)
    zero_point = min(max(qmin - round(lo / scale), qmin), qmax)
    return QParams(scale, zero_point, qmin, qmax)


def _qp_torch_observer(min_val, max_val, qmin, qmax):
    with warnings.catch_warnings():   # torch.ao.quantization is deprecated in torch 2.13
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import MinMaxObserver
        obs = MinMaxObserver(dtype=torch.quint8 if qmin >= 0 else torch.qint8,
                             quant_min=qmin, quant_max=qmax)
        obs(torch.tensor([min_val, max_val]))
        scale, zero_point = obs.calculate_qparams()
    return QParams(scale, zero_point, qmin, qmax)


def _qp_ignores_zero(min_val, max_val, qmin, qmax):
    scale = max((max_val - min_val) / (qmax - qmin), FP32_EPS)
    zero_point = min(max(qmin - round(min_val / scale), qmin), qmax)
    return QParams(scale, zero_point, qmin, qmax)


def _qp_counts_levels(min_val, max_val, qmin, qmax):
    lo, hi = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((hi - lo) / (qmax - qmin + 1), FP32_EPS)
    return QParams(scale, qmin - round(lo / scale), qmin, qmax)


def _qp_no_eps(min_val, max_val, qmin, qmax):
    lo, hi = min(min_val, 0.0), max(max_val, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return QParams(scale, qmin - round(lo / scale), qmin, qmax)


def _qp_truncates(min_val, max_val, qmin, qmax):
    lo, hi = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((hi - lo) / (qmax - qmin), FP32_EPS)
    return QParams(scale, qmin - int(lo / scale), qmin, qmax)


def _qp_forgets_qmin(min_val, max_val, qmin, qmax):
    lo, hi = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((hi - lo) / (qmax - qmin), FP32_EPS)
    return QParams(scale, min(max(-round(lo / scale), qmin), qmax), qmin, qmax)


# -- 08.quantize ---------------------------------------------------------------------------------
def _random_qparams(rng, g) -> QParams:
    qmin, qmax = rng.choice(_RANGES)
    mag = 10.0 ** rng.uniform(-3, 3)
    lo, hi = sorted((torch.randn(2, generator=g) * mag).tolist())
    return calculate_qparams(lo, hi, qmin, qmax)


def _random_x(rng, g, qp: QParams, n: int) -> torch.Tensor:
    """Values over the represented range and 30% beyond it (some saturate), none near a tie."""
    s, z = qp.scale.item(), int(qp.zero_point)
    lo, hi = (qp.qmin - z) * s, (qp.qmax - z) * s
    width = hi - lo
    x = lo - 0.15 * width + torch.rand(n, generator=g) * 1.3 * width
    return _away_from_ties(x, s)


def _quantize_cases(rng):
    g = torch_generator(rng)
    ties = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.75])
    yield Case("edge: exact ties x / s = k + 1/2 round to even (int8, s = 0.5)", (ties, QParams(0.5, 0)))
    yield Case("edge: exact ties with zero point 4 (uint8, s = 0.5)",
               (ties.abs(), QParams(0.5, 4, 0, 255)))
    sat = torch.tensor([1000.0, -1000.0, float("inf"), -float("inf"), 63.5, -64.0, 0.0, -0.0])
    yield Case("edge: saturation (beyond the range, +-inf) and +-0 (int8, s = 0.5)", (sat, QParams(0.5, 0)))
    yield Case("edge: saturation with zero point 64 (uint8, s = 2**-4)",
               (torch.tensor([100.0, -100.0, 11.9375, -4.0, 0.0]), QParams(2.0 ** -4, 64, 0, 255)))
    for _ in range(5):
        qp = _random_qparams(rng, g)
        n = rng.randint(1, 300)
        yield Case(f"random: {n} values, scale {qp.scale.item():.3g}, zero point {int(qp.zero_point)}, "
                   f"range [{qp.qmin}, {qp.qmax}]", (_random_x(rng, g, qp, n), qp))


def _q_divide(x, qparams):
    q = torch.round(x / qparams.scale) + qparams.zero_point
    return torch.clamp(q, qparams.qmin, qparams.qmax).to(qparams.storage_dtype)


def _q_torch_quantize_per_tensor(x, qparams):
    dtype = torch.quint8 if qparams.qmin >= 0 else torch.qint8
    with warnings.catch_warnings():   # quantized tensor creation is deprecated in torch 2.13
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(x, qparams.scale.item(), int(qparams.zero_point), dtype).int_repr()
    return torch.clamp(q.int(), qparams.qmin, qparams.qmax).to(qparams.storage_dtype)


def _q_fake_quant_codes(x, qparams):
    fq = torch.fake_quantize_per_tensor_affine(x, qparams.scale, qparams.zero_point,
                                               qparams.qmin, qparams.qmax)
    return (torch.round(fq / qparams.scale) + qparams.zero_point).to(qparams.storage_dtype)


def _q_round_half_up(x, qparams):
    q = torch.floor(x * (1.0 / qparams.scale) + 0.5) + qparams.zero_point
    return torch.clamp(q, qparams.qmin, qparams.qmax).to(qparams.storage_dtype)


def _q_cast_before_clamp(x, qparams):
    q = (torch.round(x * (1.0 / qparams.scale)) + qparams.zero_point).to(qparams.storage_dtype)
    return torch.clamp(q, qparams.qmin, qparams.qmax)


def _q_clamp_before_zero_point(x, qparams):
    q = torch.clamp(torch.round(x * (1.0 / qparams.scale)), qparams.qmin, qparams.qmax)
    return (q + qparams.zero_point).to(qparams.storage_dtype)


def _q_returns_float(x, qparams):
    q = torch.round(x * (1.0 / qparams.scale)) + qparams.zero_point
    return torch.clamp(q, qparams.qmin, qparams.qmax)


def _q_truncates(x, qparams):
    q = torch.trunc(x * (1.0 / qparams.scale)) + qparams.zero_point
    return torch.clamp(q, qparams.qmin, qparams.qmax).to(qparams.storage_dtype)


# -- 08.ste_gradient -----------------------------------------------------------------------------
def _ste_cases(rng):
    g = torch_generator(rng)
    # s = 0.5, z = 0, int8: x / s = 127 (code qmax), 127.4 (rounds to qmax), 127.5 (ties to 128:
    # saturated), 127.52, -128 (qmin), -128.5 (ties to -128: inside!), -128.6, 0.6, 10
    x = torch.tensor([63.5, 63.7, 63.75, 63.76, -64.0, -64.25, -64.3, 0.3, 5.0])
    yield Case("edge: inputs at, just inside and just beyond qmin and qmax (int8, s = 0.5)",
               (x, QParams(0.5, 0), torch.linspace(-2.0, 2.0, len(x))))
    s, z = 2.0 ** -4, 64
    codes = torch.tensor([255.0, 255.3, 255.5, 256.0, 0.0, -0.3, -0.5, -1.0, 100.0])
    x = (codes - z) * s
    yield Case("edge: the same with zero point 64 (uint8, s = 2**-4)",
               (x, QParams(s, z, 0, 255), torch.full((len(x),), -1.5)))
    yield Case("edge: +-inf saturate", (torch.tensor([float("inf"), -float("inf"), 1.0]), QParams(0.1, 0),
                                        torch.tensor([1.0, 1.0, 1.0])))
    for _ in range(5):
        qp = _random_qparams(rng, g)
        n = rng.randint(1, 300)
        x = _random_x(rng, g, qp, n)
        yield Case(f"random: {n} values, scale {qp.scale.item():.3g}, zero point {int(qp.zero_point)}, "
                   f"range [{qp.qmin}, {qp.qmax}]", (x, qp, torch.randn(n, generator=g)))


def _ste_torch_autograd(x, qparams, grad_output):
    x = x.detach().clone().requires_grad_(True)
    y = torch.fake_quantize_per_tensor_affine(x, qparams.scale, qparams.zero_point,
                                              qparams.qmin, qparams.qmax)
    y.backward(grad_output)
    return x.grad


def _ste_where_divide(x, qparams, grad_output):
    code = torch.round(x / qparams.scale) + qparams.zero_point
    inside = (code >= qparams.qmin) & (code <= qparams.qmax)
    return torch.where(inside, grad_output, torch.zeros_like(grad_output))


def _ste_identity(x, qparams, grad_output):
    return grad_output.clone()


def _ste_round_derivative(x, qparams, grad_output):
    return torch.zeros_like(grad_output)


def _ste_exclusive(x, qparams, grad_output):
    code = torch.round(x * (1.0 / qparams.scale)) + qparams.zero_point
    return grad_output * ((code > qparams.qmin) & (code < qparams.qmax))


def _ste_real_range(x, qparams, grad_output):
    s, z = qparams.scale, qparams.zero_point
    return grad_output * ((x >= (qparams.qmin - z) * s) & (x <= (qparams.qmax - z) * s))


def _ste_forgets_zero_point(x, qparams, grad_output):
    code = torch.round(x * (1.0 / qparams.scale))
    return grad_output * ((code >= qparams.qmin) & (code <= qparams.qmax))


EXERCISES = [
    Exercise(
        id="08.calculate_qparams",
        title="Scale and zero point from an observed range",
        points=2,
        reference=calculate_qparams,
        cases=_qparams_cases,
        compare=_compare_qparams,
        hint="widen [min, max] to include 0 first; qmax - qmin steps (not qmax - qmin + 1); "
             "never let the scale drop below eps; the zero point is an integer: round, don't truncate",
        alternatives=(
            Alternative(_qp_python_floats, "the same formula in Python floats (float64, one rounding)"),
            Alternative(_qp_torch_observer, "torch's own MinMaxObserver (torch.ao.quantization)"),
        ),
        mistakes=(
            Mistake(_qp_ignores_zero, "uses [min, max] without widening it to include 0"),
            Mistake(_qp_counts_levels, "divides by the number of levels (qmax - qmin + 1)"),
            Mistake(_qp_no_eps, "no eps: an all-zero range gives scale 0"),
            Mistake(_qp_truncates, "truncates min / scale instead of rounding it"),
            Mistake(_qp_forgets_qmin, "zero point -round(min / scale), without qmin"),
        ),
    ),
    Exercise(
        id="08.quantize",
        title="Quantize to integer codes",
        points=2,
        reference=quantize,
        cases=_quantize_cases,
        compare=same(),
        hint="round (half to even: torch.round), add the zero point, clamp to [qmin, qmax], and only "
             "then convert to qparams.storage_dtype",
        alternatives=(
            Alternative(_q_divide, "x / s instead of x * (1 / s)"),
            Alternative(_q_torch_quantize_per_tensor, "torch.quantize_per_tensor(...).int_repr(), clamped"),
            Alternative(_q_fake_quant_codes, "torch's fake quantization, then the codes recovered"),
        ),
        mistakes=(
            Mistake(_q_round_half_up, "rounds half up: floor(x / s + 0.5)"),
            Mistake(_q_cast_before_clamp, "casts to int8 before clamping (the cast wraps around)"),
            Mistake(_q_clamp_before_zero_point, "clamps round(x / s) before adding the zero point"),
            Mistake(_q_returns_float, "returns a float tensor"),
            Mistake(_q_truncates, "truncates toward zero instead of rounding"),
        ),
    ),
    Exercise(
        id="08.ste_gradient",
        title="The straight-through estimator's backward",
        points=3,
        reference=ste_gradient,
        cases=_ste_cases,
        compare=same(),
        hint="compute the integer code round(x / s) + z *before* clamping; the gradient passes "
             "(unchanged) where that code lies in [qmin, qmax], ends included, and is 0 elsewhere",
        alternatives=(
            Alternative(_ste_torch_autograd, "autograd through torch.fake_quantize_per_tensor_affine"),
            Alternative(_ste_where_divide, "torch.where on round(x / s) + z (division, +0 for blocked)"),
        ),
        mistakes=(
            Mistake(_ste_identity, "passes every gradient through (no saturation mask)"),
            Mistake(_ste_round_derivative, "the true derivative of round: 0 everywhere"),
            Mistake(_ste_exclusive, "excludes the boundary codes qmin and qmax"),
            Mistake(_ste_real_range, "compares x with the real range [(qmin - z) s, (qmax - z) s]"),
            Mistake(_ste_forgets_zero_point, "tests round(x / s) against [qmin, qmax] without z"),
        ),
    ),
]
