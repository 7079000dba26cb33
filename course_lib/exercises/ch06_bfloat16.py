"""Chapter 06 exercises: stochastic rounding to BF16 with integer bit operations; the
Kahan-compensated BF16 update (notebooks/06_bfloat16.ipynb).

Why the stochastic-rounding check is deterministic: the random integers are an *input*
(``noise``), so the reference and the learner see the same randomness and the answer is
exact, bit for bit. A statistical check (draw, average, compare with bounds from the
variance) would pass any unbiased rounding, but it cannot see a bias of one part in
2**16 of an ulp (an off-by-one in the carry test) without ~2**32 samples, and it fails
correct answers with a small probability; with the noise given, every mistake below is
caught on every seed and no correct answer is ever refused. The exercise text fixes the
convention (add the noise, then clear the low 16 bits); torchao's "up when noise < low
bits" has the same distribution but another realisation, and the text says so.
"""
from __future__ import annotations

import torch

from course_lib.bf16 import kahan_add_, stochastic_round_bits
from course_lib.grading.compare import same
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake

_LOW16 = 1 << 16


def _f32(patterns) -> torch.Tensor:
    """float32 tensor from int32 bit patterns (Python ints, unsigned allowed)."""
    ints = [p - (1 << 32) if p >= 1 << 31 else p for p in patterns]
    return torch.tensor(ints, dtype=torch.int32).view(torch.float32)


def _noise(g, shape) -> torch.Tensor:
    return torch.randint(0, _LOW16, shape, generator=g, dtype=torch.int32)


def _sr_cases(rng):
    g = torch_generator(rng)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, -1.0])
    for n in (0, 0xFFFF):
        yield Case(f"edge: zeros, infinities, NaN, +-1 with noise {n:#06x}",
                   (specials.clone(), torch.full((7,), n, dtype=torch.int32)))
    nans = _f32([0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF, 0x7FFF8000, 0x7FC00000])
    yield Case("edge: NaNs with large payloads, noise 0xffff (a NaN must stay NaN)",
               (nans, torch.full((5,), 0xFFFF, dtype=torch.int32)))
    # Values with random low 16 bits: noise 0 truncates, noise 0xffff rounds every inexact one up.
    upper = torch.randint(0x0080, 0x7F7F, (64,), generator=g, dtype=torch.int32)
    x = ((upper << 16) | torch.randint(1, _LOW16, (64,), generator=g, dtype=torch.int32)).view(torch.float32)
    yield Case("noise 0: every value rounds toward zero", (x, torch.zeros(64, dtype=torch.int32)))
    yield Case("noise 0xffff: every inexact value rounds away from zero (negative values)",
               (-x, torch.full((64,), 0xFFFF, dtype=torch.int32)))
    low = torch.randint(1, _LOW16, (64,), generator=g, dtype=torch.int32)
    exact_carry = ((upper << 16) | low).view(torch.float32)
    yield Case("boundary: noise = 2**16 - low bits (carries) and one less (does not)",
               (torch.cat([exact_carry, exact_carry]), torch.cat([_LOW16 - low, _LOW16 - 1 - low])))
    exact = (upper << 16).view(torch.float32)
    yield Case("bf16 values (low 16 bits zero) never move", (exact, _noise(g, (64,))))
    near_max = _f32([0x7F7F0000, 0x7F7F0001, 0x7F7F8000, 0x7F7FFFFF, 0xFF7FFFFF, 0xFF7F4000])
    yield Case("edge: around bf16's largest value (a carry out of 0x7F7F is inf)",
               (near_max, torch.tensor([0xFFFF, 0xFFFF, 0x7FFF, 1, 1, 0xC000], dtype=torch.int32)))
    sub = torch.randint(1, 1 << 23, (64,), generator=g, dtype=torch.int32)
    sub = torch.where(torch.rand(64, generator=g) < 0.5, sub, sub | -(2 ** 31)).view(torch.float32)
    yield Case("float32 subnormals, both signs", (sub, _noise(g, (64,))))
    for _ in range(3):
        x = log_uniform(g, 150, -30, 30).reshape(3, 50)
        yield Case("random magnitudes 2**-30 .. 2**30, both signs (a 3x50 tensor)", (x, _noise(g, (3, 50))))


def _kahan_reference(w: torch.Tensor, c: torch.Tensor, update: torch.Tensor):
    """Reference: one Kahan-compensated update, returning new tensors (inputs unchanged)."""
    w, c = w.clone(), c.clone()
    kahan_add_(w, update, c)
    return w, c


def _bf16_ulp(w: torch.Tensor) -> torch.Tensor:
    """BF16 spacing at |w| (float32), for drawing updates of a realistic size."""
    _, e = torch.frexp(w.float().abs())
    return torch.exp2((e.clamp(min=-125) - 8).float())


def _kahan_cases(rng):
    g = torch_generator(rng)
    one = torch.ones(1, dtype=torch.bfloat16)
    yield Case("edge: a quarter-ulp update, no compensation yet (w must not move; c keeps it)",
               (one.repeat(4), torch.zeros(4, dtype=torch.bfloat16), torch.full((4,), 2.0 ** -9)))
    half_gap = torch.full((2,), 2.0 ** -8, dtype=torch.bfloat16)
    yield Case("edge: the compensation pushes w over half an ulp (w moves one ulp; c goes negative)",
               (one.repeat(2), half_gap, torch.full((2,), 2.0 ** -9)))
    yield Case("edge: w = 0 and a zero update",
               (torch.tensor([0.0, 0.5], dtype=torch.bfloat16),
                torch.tensor([0.0, 2.0 ** -11], dtype=torch.bfloat16), torch.tensor([2.0 ** -20, 0.0])))
    for label, lo, hi in (("updates far below half an ulp", -6.0, -2.0),
                          ("updates of about one ulp", -1.5, 1.5),
                          ("updates of several ulps", 0.0, 4.0)):
        w = log_uniform(g, 96, -12, 4).to(torch.bfloat16)
        ulp = _bf16_ulp(w)
        c = ((torch.rand(96, generator=g) - 0.5) * ulp).to(torch.bfloat16)     # |c| <= ulp / 2
        u = log_uniform(g, 96, lo, hi) * ulp
        yield Case(f"{label} (random w over 16 binades, both signs, |c| <= ulp/2)", (w, c, u))
    # a compensation built by 40 earlier steps of the same recurrence (the state training leaves)
    w = log_uniform(g, 64, -6, 0).to(torch.bfloat16)
    c = torch.zeros_like(w)
    for _ in range(40):
        w, c = _kahan_reference(w, c, log_uniform(g, 64, -3, 0) * _bf16_ulp(w))
    yield Case("after 40 earlier steps (the compensation training leaves)",
               (w, c, log_uniform(g, 64, -3, 0) * _bf16_ulp(w)))


# -- known-correct alternatives and known mistakes ---------------------------------------------
def _sr_on_magnitude(x, noise):
    bits = x.view(torch.int32)
    sign, magnitude = bits & -(2 ** 31), bits & 0x7FFFFFFF
    rounded = ((magnitude + noise) & ~0xFFFF) | sign
    return torch.where(torch.isnan(x), x, rounded.view(torch.float32))


def _sr_int64_division(x, noise):
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF            # unsigned pattern
    sign, magnitude = bits // 2 ** 31, bits % 2 ** 31
    kept = (magnitude + noise.to(torch.int64)) // _LOW16 * _LOW16
    out = kept + sign * 2 ** 31
    out = torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32)
    return torch.where(torch.isnan(x), x, out.view(torch.float32))


def _sr_float_arithmetic(x, noise):
    """No bit operations: the bf16 spacing from frexp, floor, and the fraction in units of 2**-16."""
    a = x.double().abs()
    _, e = torch.frexp(a)
    spacing = torch.exp2((e.clamp(min=-125) - 8).double())        # 2**(e-1-7); subnormals 2**-133
    steps = torch.floor(a / spacing)
    frac16 = (a / spacing - steps) * _LOW16                         # exact: an integer in [0, 2**16)
    up = (frac16 + noise.double()) >= _LOW16
    mag = (steps + up.double()) * spacing                           # 2**128 becomes inf in float32
    out = torch.copysign(mag, x.double()).float()
    return torch.where(torch.isfinite(x), out, x)


def _sr_numpy(x, noise):
    import numpy as np

    b = x.detach().numpy().view(np.uint32).astype(np.uint64)
    sign, mag = b & 0x80000000, b & 0x7FFFFFFF
    r = (((mag + noise.numpy().astype(np.uint64)) >> 16 << 16) | sign).astype(np.uint32)
    out = torch.from_numpy(r.view(np.float32).copy())
    return torch.where(torch.isnan(x), x, out)


def _sr_truncate(x, noise):
    return (x.view(torch.int32) & -0x10000).view(torch.float32)


def _sr_nearest_then_noise(x, noise):
    bits = x.view(torch.int32)
    nearest = (bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000
    return torch.where(torch.isnan(x), x, nearest.view(torch.float32))


def _sr_forgets_nan(x, noise):
    return ((x.view(torch.int32) + noise) & -0x10000).view(torch.float32)


def _sr_forgets_to_clear(x, noise):
    return torch.where(torch.isnan(x), x, (x.view(torch.int32) + noise).view(torch.float32))


def _sr_drops_sign(x, noise):
    magnitude = x.view(torch.int32) & 0x7FFFFFFF
    return torch.where(torch.isnan(x), x, ((magnitude + noise) & -0x10000).view(torch.float32))


def _sr_library_cast(x, noise):
    from course_lib.bf16 import stochastic_round

    return stochastic_round(x).float()


def _kahan_torchdistx(w, c, update):
    w, c = w.clone(), c.clone()
    c.add_(update)
    old = w.clone()
    w.add_(c)
    c.add_(old.sub_(w))
    return w, c


def _kahan_round_to_format(w, c, update):
    from course_lib.formats import round_to_format

    c1 = round_to_format(c.float() + update, "bf16")
    w1 = round_to_format(w.float() + c1, "bf16")
    c2 = round_to_format(c1 + (w.float() - w1), "bf16")
    return w1.to(torch.bfloat16), c2.to(torch.bfloat16)      # exact: already bf16 values


def _kahan_explicit_casts(w, c, update):
    c1 = (c.float() + update.float()).to(torch.bfloat16)
    w1 = (w.float() + c1.float()).to(torch.bfloat16)
    c2 = (c1.float() + (w.float() - w1.float())).to(torch.bfloat16)
    return w1, c2


def _kahan_no_compensation(w, c, update):
    return (w.float() + update).to(torch.bfloat16), c.clone()


def _kahan_sign_flipped(w, c, update):
    c1 = (c.float() + update).to(torch.bfloat16)
    w1 = (w.float() + c1.float()).to(torch.bfloat16)
    return w1, (c1.float() + (w1.float() - w.float())).to(torch.bfloat16)


def _kahan_reassociated(w, c, update):
    c1 = (c.float() + update).to(torch.bfloat16)
    w1 = (w.float() + c1.float()).to(torch.bfloat16)
    return w1, ((c1 + w) - w1)                      # (c + w) - w' in bf16: c is rounded away again


def _kahan_update_skips_c(w, c, update):
    c1 = (c.float() + update).to(torch.bfloat16)
    w1 = (w.float() + update).to(torch.bfloat16)    # adds u, not the compensated c
    return w1, (c1.float() + (w.float() - w1.float())).to(torch.bfloat16)


def _kahan_fp32_compensation(w, c, update):
    c1 = c.float() + update
    w1 = (w.float() + c1).to(torch.bfloat16)
    return w1, c1 + (w.float() - w1.float())        # returns a float32 compensation


EXERCISES = [
    Exercise(
        id="06.stochastic_round_bits",
        title="Stochastic rounding to BF16 with integer bit operations (the noise given)",
        points=3,
        reference=stochastic_round_bits,
        cases=_sr_cases,
        compare=same(bitwise=True),
        hint="the carry out of the low 16 bits is the 'round up': one integer addition on "
             "x.view(torch.int32) makes it, then those 16 bits must go; a NaN must come back as NaN. "
             "Comparing noise < low bits (torchao's way) gives other outcomes for the same noise",
        forbidden_dtypes=(torch.bfloat16,),
        alternatives=(
            Alternative(_sr_on_magnitude, "sign and magnitude split, add to the magnitude, sign put back"),
            Alternative(_sr_int64_division, "unsigned 64-bit integer division instead of masks"),
            Alternative(_sr_float_arithmetic, "no bit operations: frexp, floor and the fraction in float64"),
            Alternative(_sr_numpy, "the same bit trick in numpy uint64"),
        ),
        mistakes=(
            Mistake(_sr_truncate, "ignores the noise (truncates)"),
            Mistake(_sr_nearest_then_noise, "rounds to nearest instead"),
            Mistake(_sr_forgets_nan, "lets a NaN payload carry into the sign bit"),
            Mistake(_sr_forgets_to_clear, "adds the noise but keeps the low 16 bits"),
            Mistake(_sr_drops_sign, "works on the magnitude and forgets the sign"),
            Mistake(_sr_library_cast, "calls stochastic_round (a bfloat16 tensor, its own randomness)"),
        ),
    ),
    Exercise(
        id="06.kahan_update",
        title="One Kahan-compensated update of BF16 weights",
        points=3,
        reference=_kahan_reference,
        cases=_kahan_cases,
        compare=same(bitwise=True),
        hint="three lines, each computed in float32 and rounded to bf16: c1 = c + u; w1 = w + c1; "
             "c2 = c1 + (w - w1) -- in that grouping; return (w1, c2) as new bfloat16 tensors",
        alternatives=(
            Alternative(_kahan_torchdistx, "torchdistx's in-place bf16 tensor operations"),
            Alternative(_kahan_round_to_format, "float32 arithmetic rounded by course_lib.formats"),
            Alternative(_kahan_explicit_casts, "explicit .float() / .to(torch.bfloat16) casts"),
        ),
        mistakes=(
            Mistake(_kahan_no_compensation, "plain round-to-nearest update, compensation unchanged"),
            Mistake(_kahan_sign_flipped, "c + (w' - w): the correction with the wrong sign"),
            Mistake(_kahan_reassociated, "(c + w) - w' in bf16: the compensation is rounded away"),
            Mistake(_kahan_update_skips_c, "adds u to w instead of the compensated c + u"),
            Mistake(_kahan_fp32_compensation, "returns a float32 compensation"),
        ),
    ),
]
