"""Chapter 02 exercises: measure underflow, compute log-softmax without overflow
(notebooks/02_where_16_bits_break.ipynb)."""
from __future__ import annotations

import torch

from course_lib.grading.compare import same
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Case, Exercise, register
from course_lib.numerics import stable_log_softmax, underflow_fraction

_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def _underflow_cases(rng):
    g = torch_generator(rng)
    yield Case("edge: all zeros (no nonzero value: answer 0.0)", (torch.zeros(5), torch.float16))
    yield Case("edge: exact FP16 tie at half the smallest subnormal (rounds to 0) and just above",
               (torch.tensor([2.0 ** -25, 2.0 ** -25 * 1.0001, 0.0, 1.0]), torch.float16))
    for dtype in _DTYPES:
        x = log_uniform(g, 500, -40, 4)
        x[torch.rand(500, generator=g) < 0.1] = 0.0          # zeros do not count
        yield Case(f"random magnitudes 2**-40..2**4 with zeros, {dtype}", (x, dtype))


def _softmax_cases(rng):
    g = torch_generator(rng)
    for scale in (1.0, 30.0, 1000.0, 30000.0):
        x = (torch.randn(4, 16, generator=g) * scale).half()
        yield Case(f"logits of size ~{scale:g} (fp16, shape 4x16)", (x,))
    x = (torch.randn(2, 3, 40, generator=g) * 20).half()
    yield Case("3-d logits, softmax over the last dimension", (x,))
    masked = (torch.randn(3, 8, generator=g) * 50).half()
    masked[0, :5] = float("-inf")
    yield Case("edge: masked entries (-inf) as in causal attention", (masked,))


register(Exercise(
    id="02.underflow_fraction",
    title="The fraction of nonzero values that a cast flushes to zero",
    points=2,
    reference=underflow_fraction,
    cases=_underflow_cases,
    compare=same(atol=1e-7),
    hint="count only the nonzero inputs; cast with x.to(dtype) and look for zeros; return a float "
         "(0.0 when nothing is nonzero)",
))

register(Exercise(
    id="02.stable_log_softmax",
    title="Log-softmax of 16-bit logits without overflow",
    points=3,
    reference=stable_log_softmax,
    cases=_softmax_cases,
    compare=same(rtol=2e-3, atol=2e-3),
    hint="exp(x) overflows FP16 for x > 11.09: subtract the maximum of each row first "
         "(log_softmax(x) = (x - max) - log(sum(exp(x - max)))), and return the input's dtype",
))
