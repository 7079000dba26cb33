"""Chapter 04 exercises: GradScaler's scale-update rule; its unscale-and-check, in place and bit
for bit (notebooks/04_loss_scaling.ipynb).

Both exercises ask for torch's exact bits, because the chapter's point is that a hand-built
scaler can match ``torch.amp.GradScaler`` step for step (scale history, skipped steps and final
weights); "within an ulp" would let the two drift apart. The task texts say so.

``04.unscale_and_check`` grades a function that works *in place* and returns only a flag: its
``observe`` hands the comparator the returned flag *and* the gradient tensors the function
received (each call gets its own copy), so what it did to them is compared bit for bit.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import torch

from course_lib.gradients import unscale_and_check_
from course_lib.grading.compare import same, short
from course_lib.grading.inputs import log_uniform, torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.scaling import to_float32, update_scale

_F32_MAX = float(torch.finfo(torch.float32).max)


# ============================================================================ 04.update_scale
_FACTORS = ((2.0, 0.5), (2.0, 0.25), (1.5, 0.5), (1.7, 0.3), (4.0, 0.125), (1.0001, 0.9))


def _update_cases(rng):
    yield Case("clean step inside the window: count it", (65536.0, 3, False, 2.0, 0.5, 2000))
    yield Case("edge: the clean step that completes the window: grow, restart the count",
               (65536.0, 1999, False, 2.0, 0.5, 2000))
    yield Case("edge: overflow: back off, restart the count", (65536.0, 1234, True, 2.0, 0.5, 2000))
    yield Case("edge: overflow on the last step of a window: back off, do not grow",
               (1024.0, 9, True, 2.0, 0.5, 10))
    yield Case("edge: growth_interval=1: every clean step grows", (8.0, 0, False, 2.0, 0.5, 1))
    yield Case("edge: growing 2**127 gives inf in float32: keep the scale",
               (2.0 ** 127, 9, False, 2.0, 0.5, 10))
    yield Case("edge: a back-off whose exact product is not a float32 (65536 * 0.3)",
               (65536.0, 5, True, 2.0, 0.3, 2000))
    yield Case("edge: a growth whose exact product is not a float32 (3000 * 1.7)",
               (3000.0, 99, False, 1.7, 0.5, 100))
    yield Case("edge: backing off the smallest float32 subnormal rounds to 0 (ties to even)",
               (2.0 ** -149, 0, True, 2.0, 0.5, 2000))
    for _ in range(12):
        growth, backoff = rng.choice(_FACTORS)
        interval = rng.choice([1, 2, 5, 100, 2000])
        scale = to_float32(2.0 ** rng.uniform(-20, 40)) if rng.random() < 0.7 else 2.0 ** rng.randint(-20, 40)
        tracker = rng.choice([interval - 1, rng.randrange(interval)])
        found_inf = rng.random() < 0.4
        yield Case(f"random: found_inf={found_inf}, tracker {tracker} of {interval}, factors "
                   f"{growth:g}/{backoff:g}", (scale, tracker, found_inf, growth, backoff, interval))


def _compare_update(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (new_scale, new_growth_tracker), got {short(got)}"
    scale, tracker = got
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(tracker, torch.Tensor) and tracker.numel() == 1:
        tracker = tracker.item()
    if isinstance(tracker, float) and tracker.is_integer():
        tracker = int(tracker)
    reason = same()((expected[1],), (tracker,))
    if reason:
        return f"new_growth_tracker: {reason.removeprefix('at [0]: ')}"
    reason = same()((expected[0],), (scale,))
    if reason:
        return f"new_scale: {reason.removeprefix('at [0]: ')} (bit for bit, as GradScaler)"
    return None


def _update_with_torch_kernel(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                              growth_interval):
    """torch._amp_update_scale_, the kernel GradScaler.update() calls, on float32 tensors."""
    s = torch.tensor([scale], dtype=torch.float32)
    t = torch.tensor([growth_tracker], dtype=torch.int32)
    torch._amp_update_scale_(s, t, torch.tensor([float(found_inf)]), growth_factor, backoff_factor,
                             growth_interval)
    return s.item(), int(t.item())


def _update_with_gradscaler(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                            growth_interval):
    """A real torch.amp.GradScaler: set its state, let unscale_ see the gradient, update()."""
    gs = torch.amp.GradScaler("cpu", init_scale=scale, growth_factor=growth_factor,
                              backoff_factor=backoff_factor, growth_interval=growth_interval)
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([math.inf if found_inf else 1.0])
    opt = torch.optim.SGD([p], lr=0.1)
    gs.scale(torch.tensor(1.0))  # the first scale() creates the scale and tracker tensors
    gs._growth_tracker.fill_(growth_tracker)  # torch has no setter for the tracker
    gs.unscale_(opt)
    gs.update()
    return gs.get_scale(), gs._get_growth_tracker()


def _update_with_numpy(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                       growth_interval):
    """numpy: the float64 product cast to np.float32 (round to nearest even, inf on overflow)."""
    with np.errstate(over="ignore"):
        if found_inf:
            return float(np.float32(np.float64(scale) * backoff_factor)), 0
        if growth_tracker + 1 < growth_interval:
            return scale, growth_tracker + 1
        grown = np.float32(np.float64(scale) * growth_factor)
    return (float(grown) if np.isfinite(grown) else scale), 0


def _update_without_float32(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                            growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        grown = scale * growth_factor
        return (grown if grown <= _F32_MAX else scale), 0
    return scale, growth_tracker


def _update_grows_to_inf(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                         growth_interval):
    if found_inf:
        return to_float32(scale * backoff_factor), 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        return to_float32(scale * growth_factor), 0
    return scale, growth_tracker


def _update_keeps_count_on_overflow(scale, growth_tracker, found_inf, growth_factor,
                                    backoff_factor, growth_interval):
    if found_inf:
        return to_float32(scale * backoff_factor), growth_tracker
    return update_scale(scale, growth_tracker, False, growth_factor, backoff_factor, growth_interval)


def _update_grows_one_step_late(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                                growth_interval):
    if found_inf:
        return to_float32(scale * backoff_factor), 0
    if growth_tracker == growth_interval:  # compared before counting this step
        grown = to_float32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, growth_tracker + 1


def _update_divides_by_growth_factor(scale, growth_tracker, found_inf, growth_factor,
                                     backoff_factor, growth_interval):
    """The source tutorial's rule: one factor, divided on overflow."""
    if found_inf:
        return to_float32(scale / growth_factor), 0
    return update_scale(scale, growth_tracker, False, growth_factor, backoff_factor, growth_interval)


def _update_forgets_reset_after_growth(scale, growth_tracker, found_inf, growth_factor,
                                       backoff_factor, growth_interval):
    if found_inf:
        return to_float32(scale * backoff_factor), 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        grown = to_float32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), growth_tracker
    return scale, growth_tracker


# ============================================================================ 04.unscale_and_check
def _observe_unscale(args, kwargs, returned):
    """(the returned flag, the gradients after the call) -- what the comparator sees."""
    return returned, [t.clone() for t in args[0]]


def _grads(g, scale, sizes):
    """Scaled float32 gradients: magnitudes 2**-30 .. 2**-2 times the scale, random signs."""
    return [log_uniform(g, n, -30, -2) * scale for n in sizes]


def _unscale_cases(rng):
    g = torch_generator(rng)
    yield Case("finite gradients, scale 2**16", (_grads(g, 2.0 ** 16, [40, 7]), 2.0 ** 16))
    tricky = _grads(g, 3.0, [30])
    tricky.append(torch.tensor([5.0, 7.0, 10.0]))  # x * float32(1/3) != x / 3 for these
    yield Case("edge: scale 3 (not a power of two): multiply by float32(1/3)", (tricky, 3.0))
    bad = _grads(g, 1024.0, [20, 5])
    bad[1][rng.randrange(5)] = math.inf
    yield Case("edge: one gradient holds inf", (bad, 1024.0))
    nan = _grads(g, 64.0, [6, 6])
    nan[0][rng.randrange(6)] = math.nan
    yield Case("edge: one gradient holds NaN", (nan, 64.0))
    big = _grads(g, 0.5, [10])
    big[0][3] = 3e38
    yield Case("edge: scale 0.5 and a finite 3e38: inf only after unscaling (GradScaler checks "
               "before multiplying)", (big, 0.5))
    yield Case("edge: no gradients at all", ([], 128.0))
    yield Case("edge: an empty tensor, a 0-dim tensor, -0.0 and a float32 subnormal",
               ([torch.zeros(0), torch.tensor(12.0), torch.tensor([-0.0, 2.0 ** -140, 1.0])], 2.0 ** 10))
    for _ in range(5):
        scale = rng.choice([2.0 ** rng.randint(0, 24), to_float32(rng.uniform(1.0, 1e6))])
        sizes = [rng.randint(1, 60) for _ in range(rng.randint(1, 5))]
        yield Case(f"random: {len(sizes)} gradients, scale {scale:g}", (_grads(g, scale, sizes), scale))


def _compare_unscale(expected, got):
    (expected_flag, expected_grads), (flag, grads) = expected, got
    if not isinstance(flag, bool):
        return (f"return found_inf as a Python bool (True/False), got {type(flag).__name__}: "
                f"{short(flag)}")
    if flag != expected_flag:
        return f"found_inf: expected {expected_flag}, got {flag}"
    if expected_flag:
        return None  # the step will be skipped: the values do not matter
    reason = same(bitwise=True)(expected_grads, grads)
    if reason:
        return (f"your gradients after the call, bit for bit: {reason} (modified in place? "
                "multiplied by float32(1/scale)?)")
    return None


def _unscale_loop(grads, scale):
    """Check every tensor, then multiply each by the float32 inverse (the readable loop)."""
    inv = torch.tensor(1.0 / scale, dtype=torch.float64).to(torch.float32)
    found_inf = not all(bool(torch.isfinite(t).all()) for t in grads)
    for t in grads:
        t.mul_(inv)
    return found_inf


def _unscale_with_gradscaler(grads, scale):
    """torch.amp.GradScaler.unscale_ on parameters whose .grad *are* these tensors."""
    if not grads:
        return False
    params = [torch.nn.Parameter(torch.empty_like(t)) for t in grads]
    for p, t in zip(params, grads):
        p.grad = t  # the same tensor object: GradScaler modifies it in place
    opt = torch.optim.SGD(params, lr=0.1)
    gs = torch.amp.GradScaler("cpu", init_scale=scale)
    gs.scale(torch.tensor(1.0))  # the first scale() creates the scale tensor
    gs.unscale_(opt)
    found = gs._per_optimizer_states[id(opt)]["found_inf_per_device"]
    return bool(sum(v.item() for v in found.values()))


def _unscale_foreach(grads, scale):
    """torch._foreach_mul_ by a float32 0-dim tensor, after an isinf/isnan check."""
    if not grads:
        return False
    found = torch.stack([(t.isinf() | t.isnan()).any() for t in grads]).any()
    torch._foreach_mul_(grads, torch.tensor(struct.unpack("f", struct.pack("f", 1.0 / scale))[0]))
    return bool(found)


def _unscale_by_division(grads, scale):
    found_inf = not all(bool(torch.isfinite(t).all()) for t in grads)
    for t in grads:
        t.div_(scale)
    return found_inf


def _unscale_checks_after(grads, scale):
    inv = torch.tensor(1.0 / scale, dtype=torch.float64).to(torch.float32)
    for t in grads:
        t.mul_(inv)
    return not all(bool(torch.isfinite(t).all()) for t in grads)


def _unscale_out_of_place(grads, scale):
    inv = torch.tensor(1.0 / scale, dtype=torch.float64).to(torch.float32)
    found_inf = not all(bool(torch.isfinite(t).all()) for t in grads)
    grads = [t * inv for t in grads]  # new tensors: the caller's gradients are unchanged
    return found_inf


def _unscale_forgets_nan(grads, scale):
    inv = torch.tensor(1.0 / scale, dtype=torch.float64).to(torch.float32)
    found_inf = any(bool(torch.isinf(t).any()) for t in grads)
    for t in grads:
        t.mul_(inv)
    return found_inf


def _unscale_returns_tensor(grads, scale):
    inv = torch.tensor(1.0 / scale, dtype=torch.float64).to(torch.float32)
    found = torch.zeros(1)
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    return found


def _unscale_in_float64(grads, scale):
    found_inf = not all(bool(torch.isfinite(t).all()) for t in grads)
    for t in grads:
        t.copy_(t.double() * (1.0 / scale))
    return found_inf


EXERCISES = [
    Exercise(
        id="04.update_scale",
        title="GradScaler's scale update rule, bit for bit",
        points=2,
        reference=update_scale,
        cases=_update_cases,
        compare=_compare_update,
        hint="handle an overflow first (back off, restart the count); otherwise count the clean "
             "step and grow only when the count reaches growth_interval, and only if the grown "
             "scale is finite in float32; torch keeps the scale in a float32 tensor, so round "
             "every product to float32",
        alternatives=(
            Alternative(_update_with_torch_kernel, "torch._amp_update_scale_ on float32 tensors"),
            Alternative(_update_with_gradscaler, "a real torch.amp.GradScaler driven through one step"),
            Alternative(_update_with_numpy, "numpy: the float64 product cast to np.float32"),
        ),
        mistakes=(
            Mistake(_update_without_float32, "keeps the float64 product (no float32 rounding)"),
            Mistake(_update_grows_to_inf, "grows even when the grown scale is inf"),
            Mistake(_update_keeps_count_on_overflow, "does not restart the count on an overflow"),
            Mistake(_update_grows_one_step_late, "compares the count before counting the step"),
            Mistake(_update_divides_by_growth_factor,
                    "the tutorial's rule: divides by the growth factor on overflow"),
            Mistake(_update_forgets_reset_after_growth, "does not restart the count after growing"),
        ),
    ),
    Exercise(
        id="04.unscale_and_check",
        title="GradScaler's unscale: check, then multiply in place by float32(1/S)",
        points=3,
        reference=unscale_and_check_,
        cases=_unscale_cases,
        compare=_compare_unscale,
        observe=_observe_unscale,
        hint="compute the inverse once, in float64, and round it to float32; check every tensor "
             "with torch.isfinite *before* multiplying; multiply the tensors themselves (mul_); "
             "return a Python bool",
        alternatives=(
            Alternative(_unscale_loop, "a loop: isfinite on every tensor, then mul_ by the float32 inverse"),
            Alternative(_unscale_with_gradscaler, "torch.amp.GradScaler.unscale_ on parameters holding these grads"),
            Alternative(_unscale_foreach, "torch._foreach_mul_ after an isinf/isnan check"),
        ),
        mistakes=(
            Mistake(_unscale_by_division, "divides by the scale (within an ulp, not GradScaler's bits)"),
            Mistake(_unscale_checks_after, "checks after multiplying (a scale below 1 can overflow)"),
            Mistake(_unscale_out_of_place, "makes new tensors; the gradients are left scaled"),
            Mistake(_unscale_forgets_nan, "checks for inf but not NaN"),
            Mistake(_unscale_returns_tensor, "returns found_inf as a tensor"),
            Mistake(_unscale_in_float64, "multiplies in float64 by the float64 inverse"),
        ),
    ),
]
