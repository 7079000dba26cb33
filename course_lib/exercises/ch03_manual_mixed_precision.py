"""Chapter 03 exercises: unscale and check gradients; one master-weight SGD step
(notebooks/03_manual_mixed_precision.ipynb)."""
from __future__ import annotations

import torch

from course_lib.grading.compare import same
from course_lib.grading.inputs import torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.master import master_sgd_step, unscale_to_fp32


def _grads(g, scale, shapes):
    return [(torch.randn(*s, generator=g) * 1e-3 * scale).half() for s in shapes]


def _unscale_cases(rng):
    g = torch_generator(rng)
    for scale in (128.0, 1024.0, 3.0, 2.0 ** 14):
        yield Case(f"finite gradients, scale {scale:g}", (_grads(g, scale, [(5, 3), (7,)]), scale))
    bad = _grads(g, 128.0, [(4, 4), (3,)])
    bad[1][rng.randrange(3)] = float("inf")
    yield Case("edge: one gradient holds inf", (bad, 128.0))
    nan = _grads(g, 64.0, [(2, 2)])
    nan[0][0, 0] = float("nan")
    yield Case("edge: a NaN", (nan, 64.0))


def _step_cases(rng):
    g = torch_generator(rng)
    for scale in (1.0, 128.0, 1000.0):
        shapes = [(rng.randint(1, 6), rng.randint(1, 6)), (rng.randint(1, 9),)]
        masters = [torch.randn(*s, generator=g) for s in shapes]
        params16 = [m.half() for m in masters]
        grads16 = _grads(g, scale, shapes)
        lr = rng.choice([1e-3, 0.01, 0.1])
        yield Case(f"finite gradients, lr {lr:g}, scale {scale:g}", (params16, grads16, masters, lr, scale))
    masters = [torch.randn(3, 3, generator=g)]
    grads16 = _grads(g, 128.0, [(3, 3)])
    grads16[0][1, 1] = float("inf")
    yield Case("edge: overflowed gradients: skip the step", ([masters[0].half()], grads16, masters, 0.1, 128.0))
    masters = [torch.full((4,), 1.0)]
    tiny = [torch.full((4,), 2e-4 * 128, dtype=torch.float16)]
    yield Case("edge: an update smaller than half an FP16 ulp (the master must still move)",
               ([masters[0].half()], tiny, masters, 1e-3, 128.0))


def _compare_unscale(expected, got):
    if not isinstance(got, tuple) or len(got) != 2:
        return f"expected a tuple (grads32, found_inf), got {type(got).__name__}"
    if not isinstance(got[1], bool):
        return f"found_inf must be a Python bool, got {type(got[1]).__name__}"
    if got[1] != expected[1]:
        return f"found_inf: expected {expected[1]}, got {got[1]}"
    if expected[1]:
        return None  # with inf/NaN present the values do not matter: the step is skipped
    return same(rtol=1e-6)(expected[0], list(got[0]))


def _compare_step(expected, got):
    if not isinstance(got, tuple) or len(got) != 3:
        return f"expected a tuple (new_params16, new_masters, stepped), got {type(got).__name__}"
    params16, masters, stepped = got
    if stepped is not expected[2]:
        return f"stepped: expected {expected[2]}, got {stepped!r}"
    return (same(rtol=1e-6)(expected[1], list(masters))
            or same(rtol=2 ** -10)(expected[0], list(params16)))


# -- known-correct alternatives and known mistakes ---------------------------------------------
def _unscale_by_division(grads16, scale):
    grads = [g.float() / scale for g in grads16]
    return grads, not all(bool(torch.isfinite(g).all()) for g in grads)


def _unscale_like_gradscaler(grads16, scale):
    grads = [g.detach().float().clone() for g in grads16]
    found = torch.zeros(1)
    inv = torch.tensor(1.0 / scale, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    return grads, bool(found.item())


def _unscale_in_fp16(grads16, scale):
    grads = [(g / scale).float() for g in grads16]
    return grads, not all(bool(torch.isfinite(g).all()) for g in grads)


def _unscale_forgets_nan(grads16, scale):
    grads = [g.float() / scale for g in grads16]
    return grads, any(bool(torch.isinf(g).any()) for g in grads)


def _unscale_returns_tensor_flag(grads16, scale):
    grads = [g.float() / scale for g in grads16]
    return grads, torch.stack([~torch.isfinite(g).all() for g in grads]).any()


def _step_with_torch_sgd(params16, grads16, masters, lr, scale):
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new_masters = [m.detach().clone().requires_grad_(True) for m in masters]
    for m, g in zip(new_masters, grads32):
        m.grad = g
    torch.optim.SGD(new_masters, lr=lr).step()
    new_masters = [m.detach() for m in new_masters]
    return [m.to(p.dtype) for m, p in zip(new_masters, params16)], new_masters, True


def _step_with_foreach(params16, grads16, masters, lr, scale):
    grads32 = [g.float() * (1.0 / scale) for g in grads16]
    if not all(bool(torch.isfinite(g).all()) for g in grads32):
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new_masters = torch._foreach_add([m.clone() for m in masters], grads32, alpha=-lr)
    return [m.half() for m in new_masters], new_masters, True


def _step_without_master(params16, grads16, masters, lr, scale):
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new16 = [(p.float() - lr * g).half() for p, g in zip(params16, grads32)]
    return new16, [p.float() for p in new16], True


def _step_never_skips(params16, grads16, masters, lr, scale):
    grads32, _ = unscale_to_fp32(grads16, scale)
    new_masters = [m - lr * g for m, g in zip(masters, grads32)]
    return [m.half() for m in new_masters], new_masters, True


def _step_forgets_to_unscale(params16, grads16, masters, lr, scale):
    grads32 = [g.float() for g in grads16]
    if not all(bool(torch.isfinite(g).all()) for g in grads32):
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new_masters = [m - lr * g for m, g in zip(masters, grads32)]
    return [m.half() for m in new_masters], new_masters, True


EXERCISES = [
    Exercise(
        id="03.unscale_to_fp32",
        title="Unscale 16-bit gradients into float32 and detect overflow",
        points=2,
        reference=unscale_to_fp32,
        cases=_unscale_cases,
        compare=_compare_unscale,
        hint="convert each gradient to float32 *before* dividing by the scale; found_inf is True "
             "when any value is inf or NaN (torch.isfinite); return (list, bool)",
        alternatives=(
            Alternative(_unscale_by_division, "float32 division by the scale (1 ulp from multiplying by 1/scale)"),
            Alternative(_unscale_like_gradscaler, "torch's fused check-and-unscale kernel, as GradScaler"),
        ),
        mistakes=(
            Mistake(_unscale_in_fp16, "divides in FP16, then converts"),
            Mistake(_unscale_forgets_nan, "checks for inf but not NaN"),
            Mistake(_unscale_returns_tensor_flag, "returns found_inf as a tensor, not a bool"),
        ),
    ),
    Exercise(
        id="03.master_sgd_step",
        title="One SGD step through FP32 master weights",
        points=3,
        reference=master_sgd_step,
        cases=_step_cases,
        compare=_compare_step,
        hint="unscale into float32, skip (return unchanged copies and False) on inf/NaN, update the "
             "float32 masters, and make the new 16-bit parameters by casting the masters; do not "
             "modify the inputs",
        alternatives=(
            Alternative(_step_with_torch_sgd, "torch.optim.SGD on copies of the masters"),
            Alternative(_step_with_foreach, "torch._foreach_add with alpha=-lr"),
        ),
        mistakes=(
            Mistake(_step_without_master, "updates the FP16 weights directly (no master)"),
            Mistake(_step_never_skips, "steps even when a gradient overflowed"),
            Mistake(_step_forgets_to_unscale, "updates with the scaled gradients"),
        ),
    ),
]
