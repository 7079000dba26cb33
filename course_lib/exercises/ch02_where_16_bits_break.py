"""Chapter 02 exercises: log-softmax without overflow; the smallest loss scale that saves a
gradient tensor from underflow (notebooks/02_where_16_bits_break.ipynb)."""
from __future__ import annotations


import torch

from course_lib.grading.compare import same
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.numerics import smallest_loss_scale, stable_log_softmax

_FP16_MAX = 65504.0


def _softmax_cases(rng):
    """Finite FP16 logits (magnitudes up to tens of thousands), and -inf only where masked."""
    g = torch_generator(rng)
    for scale in (1.0, 30.0, 1000.0, 30000.0):
        x = (torch.randn(4, 16, generator=g) * scale).clamp(-_FP16_MAX, _FP16_MAX).half()
        yield Case(f"finite logits of size ~{scale:g} (fp16, shape 4x16)", (x,))
    x = (torch.randn(2, 3, 40, generator=g) * 20).half()
    yield Case("3-d logits, log-softmax over the last dimension", (x,))
    masked = (torch.randn(3, 8, generator=g) * 50).half()
    masked[0, :5] = float("-inf")
    masked[2, 1:] = float("-inf")                     # one unmasked entry: log-softmax 0 there
    yield Case("edge: masked entries (-inf) as in causal attention", (masked,))
    yield Case("edge: a row of equal logits at the FP16 maximum",
               (torch.full((2, 5), _FP16_MAX, dtype=torch.float16),))


def _scale_cases(rng):
    g = torch_generator(rng)
    yield Case("edge: no nonzero value (any scale works: 1.0)", (torch.zeros(6), 0))
    yield Case("edge: exactly half the smallest subnormal (a tie: rounds to 0 at scale 1)",
               (torch.tensor([2.0 ** -25, 0.5]), 0))
    yield Case("edge: 65504 fits, nothing to rescue", (torch.tensor([65504.0, 1e-3]), 0))
    yield Case("edge: already overflows FP16 at scale 1 (65520 rounds to inf)",
               (torch.tensor([65520.0, 1.0]), 0))
    yield Case("edge: the range is too wide: no scale keeps everything",
               (torch.tensor([2.0 ** -31, 1000.0]), 0))
    for _ in range(4):
        grads = log_uniform(g, 400, rng.uniform(-45, -20), rng.uniform(-12, -2))
        grads[torch.rand(400, generator=g) < 0.1] = 0.0            # exact zeros do not count
        allowed = rng.choice([0, 1, 5, 40])
        yield Case(f"real-looking gradients, at most {allowed} may flush", (grads, allowed))


# -- known-correct alternatives and known mistakes ---------------------------------------------
def _log_softmax_torch(x):
    return torch.log_softmax(x.float(), dim=-1).to(x.dtype)


def _log_softmax_logsumexp(x):
    return (x.float() - torch.logsumexp(x.float(), dim=-1, keepdim=True)).to(x.dtype)


def _log_softmax_pure_fp16(x):
    """Max-subtracted and kept in FP16 throughout (no FP32 upcast)."""
    m = x.amax(dim=-1, keepdim=True)
    shifted = x - m
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def _log_softmax_naive(x):
    return torch.log(torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))


def _log_softmax_returns_fp32(x):
    return torch.log_softmax(x.float(), -1)


def _log_softmax_wrong_dim(x):
    return torch.log_softmax(x.float(), dim=0).to(x.dtype)


def _scale_by_torch_casts(grads, max_flushed):
    nonzero = grads != 0
    for k in range(25):
        scaled = (grads.float() * 2.0 ** k).half()
        if torch.isinf(scaled).any():
            return None
        if int(((scaled == 0) & nonzero).sum()) <= max_flushed:
            return float(2 ** k)
    return None


def _scale_by_exponents(grads, max_flushed):
    """Closed form: the scale each value needs, from its exponent, then a sorted quantile."""
    a = grads.double().abs()
    a = a[a > 0]
    if a.numel() == 0:
        return 1.0 if (grads.double().abs() < 65520).all() else None
    mantissa, exponent = torch.frexp(a)                        # a = mantissa * 2**exponent
    # survives at 2**k iff a * 2**k > 2**-25: k >= -24 - exponent, one more for an exact power of two
    need = (-24 - exponent + (mantissa == 0.5).long()).clamp(min=0)
    k = int(need.sort().values[a.numel() - 1 - max_flushed]) if max_flushed < a.numel() else 0
    if k > 24 or float(a.max()) * 2.0 ** k >= 65520:
        return None
    return float(2 ** k)


def _scale_ignores_overflow(grads, max_flushed):
    nonzero = grads != 0
    for k in range(25):
        if int((((grads * 2.0 ** k).half() == 0) & nonzero).sum()) <= max_flushed:
            return float(2 ** k)
    return None


def _scale_counts_subnormals_as_lost(grads, max_flushed):
    for k in range(25):
        scaled = (grads * 2.0 ** k).half()
        if torch.isinf(scaled).any():
            return None
        lost = (scaled.float().abs() < 2.0 ** -14) & (grads != 0)
        if int(lost.sum()) <= max_flushed:
            return float(2 ** k)
    return None


def _scale_counts_zeros(grads, max_flushed):
    for k in range(25):
        scaled = (grads * 2.0 ** k).half()
        if torch.isinf(scaled).any():
            return None
        if int((scaled == 0).sum()) <= max_flushed:
            return float(2 ** k)
    return None


def _scale_half_threshold_inclusive(grads, max_flushed):
    """Treats exactly half the smallest subnormal as surviving (the tie goes to even: 0)."""
    for k in range(25):
        scaled = grads.double() * 2.0 ** k
        if (scaled.abs() >= 65520).any():
            return None
        flushed = (scaled.abs() < 2.0 ** -25) & (grads != 0)
        if int(flushed.sum()) <= max_flushed:
            return float(2 ** k)
    return None


EXERCISES = [
    Exercise(
        id="02.stable_log_softmax",
        title="Log-softmax of 16-bit logits without overflow",
        points=3,
        reference=stable_log_softmax,
        cases=_softmax_cases,
        compare=same(rtol=2e-3, atol=2e-3),
        hint="exp(x) overflows FP16 for x > 11.09: subtract the maximum of each row first "
             "(log_softmax(x) = (x - max) - log(sum(exp(x - max)))), and return the input's dtype",
        alternatives=(
            Alternative(_log_softmax_torch, "torch.log_softmax in float32, cast back"),
            Alternative(_log_softmax_logsumexp, "x - torch.logsumexp(x)"),
            Alternative(_log_softmax_pure_fp16, "max-subtracted, entirely in FP16"),
        ),
        mistakes=(
            Mistake(_log_softmax_naive, "log(exp(x) / sum(exp(x))): overflows"),
            Mistake(_log_softmax_returns_fp32, "returns float32 instead of the input's dtype"),
            Mistake(_log_softmax_wrong_dim, "softmax over the first dimension"),
        ),
    ),
    Exercise(
        id="02.smallest_loss_scale",
        title="The smallest power-of-two loss scale that saves a gradient tensor from underflow",
        points=3,
        reference=smallest_loss_scale,
        cases=_scale_cases,
        compare=same(),
        hint="try S = 1, 2, 4, ..., 2**24: cast grads * S to FP16, count the nonzero values that "
             "became 0 and stop at the first S with at most max_flushed of them; if grads * S "
             "holds an inf, no larger scale can work: return None",
        alternatives=(
            Alternative(_scale_by_torch_casts, "the search with torch's own FP16 cast"),
            Alternative(_scale_by_exponents, "closed form from each value's exponent"),
        ),
        mistakes=(
            Mistake(_scale_ignores_overflow, "never checks for overflow"),
            Mistake(_scale_counts_subnormals_as_lost, "counts subnormals as lost"),
            Mistake(_scale_counts_zeros, "counts the exact zeros as flushed"),
            Mistake(_scale_half_threshold_inclusive, "half the smallest subnormal survives"),
        ),
    ),
]
