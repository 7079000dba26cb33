"""Tests for course_lib.scaling, with torch.amp.GradScaler as the oracle."""
import random

import pytest
import torch

from course_lib.scaling import DynamicLossScaler, StaticLossScaler


# ----------------------------------------------------------------------------- static
def test_static_scale_unscale_update():
    s = StaticLossScaler(128.0)
    assert s.get_scale() == s.scale_value == 128.0
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    s.scale((w * torch.tensor([3.0, 0.25])).sum()).backward()
    assert torch.equal(w.grad, torch.tensor([384.0, 32.0]))
    assert s.unscale_([w]) is False  # parameters: their .grad is unscaled
    assert torch.equal(w.grad, torch.tensor([3.0, 0.25]))
    s.update()
    g = torch.tensor([1.0, float("nan")])
    assert s.unscale_(g) is True
    s.update()
    assert s.get_scale() == 128.0 and s.overflow_count == 1


def test_scale_promotes_low_precision_loss_like_gradscaler():
    loss = torch.tensor(3.0, dtype=torch.float16)
    ours = StaticLossScaler(1024.0).scale(loss)
    theirs = torch.amp.GradScaler("cpu", init_scale=1024.0).scale(loss)
    assert ours.dtype == theirs.dtype == torch.float32 and float(ours) == float(theirs) == 3072.0
    assert StaticLossScaler(2.0).scale(torch.tensor(1.0, dtype=torch.float64)).dtype == torch.float64


def test_unscale_checks_before_multiplying_and_accepts_optimizer():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.tensor([6e4, -2.0, 4.0], dtype=torch.float32)
    s = StaticLossScaler(2.0)
    assert s.unscale_(opt) is False and torch.equal(p.grad, torch.tensor([3e4, -1.0, 2.0]))


def test_call_order_errors():
    s = DynamicLossScaler()
    with pytest.raises(RuntimeError, match="No inf checks were recorded prior to update"):
        s.update()
    s.unscale_([torch.ones(2)])
    with pytest.raises(RuntimeError, match="already been called on this scaler since the last update"):
        s.unscale_([torch.ones(2)])
    s.update()
    s.unscale_([torch.ones(2)])  # fine again after update()
    s.update(found_inf=True)
    assert s.get_scale() == 2.0 ** 15


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"init_scale": -1.0}, ValueError, "init_scale"), ({"init_scale": "big"}, TypeError, "init_scale"),
    ({"growth_factor": 1.0}, ValueError, "growth_factor"),
    ({"backoff_factor": 1.5}, ValueError, "backoff_factor"),
    ({"growth_interval": 0}, ValueError, "growth_interval"),
    ({"growth_interval": 2.5}, TypeError, "growth_interval"),
    ({"min_scale": 8.0, "max_scale": 4.0}, ValueError, "min_scale"),
])
def test_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        DynamicLossScaler(**kwargs)
    with pytest.raises(ValueError, match="scale"):
        StaticLossScaler(float("inf"))
    with pytest.raises(TypeError, match="found_inf"):
        StaticLossScaler().update(found_inf="yes")


# ----------------------------------------------------------------------------- dynamic vs torch
def _drive(scaler_kwargs, n_steps=300, seed=0):
    """Run GradScaler and DynamicLossScaler side by side on the same data.

    Gradients are x * scale for a random x whose magnitude spans 1e-3..1e12, so
    large scales overflow float32 naturally; in addition some steps get an
    injected inf or NaN.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    w_ref = torch.nn.Parameter(torch.ones(6))
    w_our = torch.nn.Parameter(torch.ones(6))
    opt_ref = torch.optim.SGD([w_ref], lr=1e-3)
    opt_our = torch.optim.SGD([w_our], lr=1e-3)
    ref = torch.amp.GradScaler("cpu", **scaler_kwargs)
    ours = DynamicLossScaler(**scaler_kwargs)
    ref_steps = []
    opt_ref.register_step_post_hook(lambda *a: ref_steps.append(True))
    scales_ref, scales_our, skipped_ref, skipped_our = [], [], 0, 0
    for i in range(n_steps):
        x = torch.randn(6, generator=gen) * 10.0 ** rng.uniform(-3, 12)
        event = rng.random()
        if event < 0.1:
            x[rng.randrange(6)] = float("inf")
        elif event < 0.2:
            x[rng.randrange(6)] = float("nan")
        for w, opt, sc in ((w_ref, opt_ref, ref), (w_our, opt_our, ours)):
            opt.zero_grad()
            sc.scale((w * x).sum()).backward()
        n_before = len(ref_steps)
        ref.step(opt_ref)
        ref.update()
        skipped_ref += len(ref_steps) == n_before
        found_inf = ours.unscale_([w_our])
        if not found_inf:
            opt_our.step()
        ours.update(found_inf)
        skipped_our += found_inf
        scales_ref.append(ref.get_scale())
        scales_our.append(ours.get_scale())
    return scales_ref, scales_our, skipped_ref, skipped_our, w_ref, w_our, ref, ours


@pytest.mark.parametrize("kwargs", [
    {"init_scale": 2.0 ** 100, "growth_interval": 3},
    {"init_scale": 2.0 ** 16, "growth_interval": 5},
    {"init_scale": 1e30, "growth_factor": 1.7, "backoff_factor": 0.3, "growth_interval": 2},
    {},  # torch's defaults
])
def test_dynamic_matches_gradscaler_step_for_step(kwargs):
    scales_ref, scales_our, skipped_ref, skipped_our, w_ref, w_our, _, _ = _drive(kwargs)
    assert scales_our == scales_ref  # exact, every step
    assert skipped_our == skipped_ref
    assert 20 < skipped_ref < 300  # the sequence really contains both kinds of step
    if kwargs:
        assert len(set(scales_ref)) > 5  # the scale really moved (grew and backed off)
    assert torch.equal(w_our, w_ref)  # same unscaled gradients, same updates


def test_state_dict_compatible_with_gradscaler():
    *_, ref, ours = _drive({"init_scale": 2.0 ** 20, "growth_interval": 4}, n_steps=37)
    sd = ours.state_dict()
    for key, value in ref.state_dict().items():
        assert sd[key] == value, key
    restored = DynamicLossScaler()
    restored.load_state_dict(ref.state_dict())  # a GradScaler's state dict loads too
    for found in (False, False, False, False, True, False):
        ours.update(found)
        restored.update(found)
        assert restored.get_scale() == ours.get_scale()
    with pytest.raises(ValueError, match="lacks the keys"):
        DynamicLossScaler().load_state_dict({"scale": 4.0})


def test_growth_keeps_finite_scale_and_clamps():
    s = DynamicLossScaler(init_scale=2.0 ** 127, growth_interval=1)
    s.update(False)
    assert s.get_scale() == 2.0 ** 127  # 2**128 is inf in float32: not taken, like torch
    s = DynamicLossScaler(init_scale=8.0, growth_interval=1, min_scale=2.0, max_scale=32.0)
    for _ in range(5):
        s.update(False)
    assert s.get_scale() == 32.0
    for _ in range(10):
        s.update(True)
    assert s.get_scale() == 2.0 and s.overflow_count == 10


def test_loss_scaling_rescues_fp16_gradients_from_underflow():
    # d/dw of (w * 1e-8).sum() is 1e-8: below fp16's smallest subnormal (6e-8), so it flushes to 0.
    w = torch.ones(4, dtype=torch.float16, requires_grad=True)
    (w * torch.tensor(1e-8)).sum().backward()
    assert w.grad.abs().max() == 0
    w.grad = None
    s = StaticLossScaler(2.0 ** 14)
    s.scale((w * torch.tensor(1e-8)).sum()).backward()
    g32 = w.grad.float()  # unscale in float32 (as master weights do)
    assert s.unscale_([g32]) is False
    torch.testing.assert_close(g32, torch.full((4,), 1e-8), rtol=1e-3, atol=0)
    s.update()
    # Gotcha: with an fp16 loss, the seed gradient S itself is cast to fp16, so S = 2**16
    # (> 65504, fp16's max) overflows on the very first backward -- found_inf, step skipped.
    w.grad = None
    big = StaticLossScaler(2.0 ** 16)
    big.scale((w * torch.tensor(1e-8)).sum()).backward()
    assert torch.isinf(w.grad).all() and big.unscale_([w.grad.float()]) is True
