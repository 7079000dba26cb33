"""Tests for course_lib.scaling, with torch.amp.GradScaler as the oracle."""
import math
import random
import struct

import pytest
import torch

from course_lib.gradients import unscale_and_check_, unscale_and_check_reference_
from course_lib.scaling import DynamicLossScaler, StaticLossScaler, to_float32, update_scale


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
    ({"hysteresis": 0}, ValueError, "hysteresis"), ({"hysteresis": 1.5}, TypeError, "hysteresis"),
    ({"consecutive_hysteresis": "yes"}, TypeError, "consecutive_hysteresis"),
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


# ----------------------------------------------------------------------------- float32 rounding
def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def test_to_float32_matches_torch_bit_for_bit():
    rng = random.Random(0)
    f32_max = float(torch.finfo(torch.float32).max)
    half_ulp_top = 2.0 ** 103  # half the spacing of float32 just below 2**128
    xs = [rng.uniform(-1, 1) * 2.0 ** rng.uniform(-155, 129) for _ in range(20_000)]
    xs += [0.0, -0.0, 2.0 ** -149, 2.0 ** -150, 2.0 ** -151, 1.5 * 2.0 ** -149, 2.0 ** -126,
           f32_max, f32_max + half_ulp_top / 2, f32_max + half_ulp_top, -f32_max - half_ulp_top,
           math.inf, -math.inf, 0.1, 1 / 3]
    expected = torch.tensor(xs, dtype=torch.float64).to(torch.float32).double().tolist()
    for x, e in zip(xs, expected):
        assert _bits(to_float32(x)) == _bits(e), x  # sign of zero and inf included
    assert to_float32(f32_max + half_ulp_top) == math.inf  # a tie at the top rounds to even: inf
    assert math.isnan(to_float32(math.nan))


def test_update_scale_matches_torch_kernel_bit_for_bit():
    # torch._amp_update_scale_ is the kernel GradScaler.update() runs.
    rng = random.Random(1)
    for _ in range(2000):
        scale = to_float32(2.0 ** rng.uniform(-30, 128))
        interval = rng.choice([1, 2, 3, 7, 2000])
        tracker = rng.randrange(interval)
        found = rng.random() < 0.3
        growth = rng.choice([2.0, 1.7, 3.0, 1.0001])
        backoff = rng.choice([0.5, 0.3, 0.9, 0.125])
        s_t = torch.tensor([scale])
        g_t = torch.tensor([tracker], dtype=torch.int32)
        torch._amp_update_scale_(s_t, g_t, torch.tensor([float(found)]), growth, backoff, interval)
        got = update_scale(scale, tracker, found, growth, backoff, interval)
        assert got == (s_t.item(), g_t.item()), (scale, tracker, found, growth, backoff, interval)


def test_fused_and_loop_unscale_agree_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    for scale in (2.0 ** 16, 3.0, 1000.0, 0.5):
        grads = [torch.randn(n, generator=g) * 1e3 for n in (0, 1, 17, 300)]
        grads[2][5] = 3e38  # finite; times 1/0.5 it overflows -- checked *before* multiplying
        a, b = [t.clone() for t in grads], [t.clone() for t in grads]
        assert unscale_and_check_(a, scale) is unscale_and_check_reference_(b, scale) is False
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert torch.isinf(a[2][5]) == (scale < 1)


# ----------------------------------------------------------------------------- scale() and unscale_()
def test_scale_follows_the_current_scale_and_promotes_like_gradscaler():
    s = DynamicLossScaler(init_scale=1024.0)
    loss = torch.tensor(3.0, dtype=torch.float16)
    assert float(s.scale(loss)) == 3072.0
    s.update(found_inf=True)
    assert float(s.scale(loss)) == 1536.0  # the cached scale tensor is rebuilt when S changes
    out16 = torch.ones(3, dtype=torch.float16)
    ours, theirs = s.scale(out16), torch.amp.GradScaler("cpu", init_scale=512.0).scale(out16)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)  # a 0-dim scale keeps fp16 here


def test_scaled_loss_backward_survives_a_scale_change():
    s = DynamicLossScaler(init_scale=8.0)
    w = torch.ones(2, requires_grad=True)
    scaled = s.scale((w * 3.0).sum())
    s.update(found_inf=True)  # the scale changes before backward: the graph keeps the old one
    scaled.backward()
    assert torch.equal(w.grad, torch.full((2,), 24.0))


def test_unscale_skips_frozen_parameters_and_missing_grads():
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    no_grad = torch.nn.Parameter(torch.ones(2))
    live = torch.nn.Parameter(torch.ones(2))
    live.grad = torch.full((2,), 8.0)
    s = StaticLossScaler(4.0)
    assert s.unscale_([frozen, no_grad, live]) is False
    assert torch.equal(frozen, torch.ones(2)) and torch.equal(live.grad, torch.full((2,), 2.0))
    s.update()
    opt = torch.optim.SGD([no_grad, live], lr=0.1)
    assert s.unscale_(opt) is False and torch.equal(live.grad, torch.full((2,), 0.5))
    s.update()
    with pytest.raises(TypeError, match="element of type"):
        s.unscale_([1.0])


# ----------------------------------------------------------------------------- hysteresis
class _DeepSpeedRule:
    """DeepSpeed's DynamicLossScaler.update_scale (deepspeed/runtime/fp16/loss_scaler.py),
    transcribed without logging and without min_scale: the oracle for hysteresis."""

    def __init__(self, init_scale, scale_window, delayed_shift, consecutive_hysteresis):
        self.cur_scale, self.cur_iter, self.last_overflow_iter = init_scale, 0, -1
        self.scale_factor, self.scale_window = 2.0, scale_window
        self.delayed_shift = self.cur_hysteresis = delayed_shift
        self.consecutive_hysteresis = consecutive_hysteresis

    def update_scale(self, overflow):
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                self.cur_scale = self.cur_scale / self.scale_factor
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            stable_interval = (self.cur_iter - self.last_overflow_iter) - 1
            if stable_interval > 0 and stable_interval % self.scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1


@pytest.mark.parametrize("hysteresis", [1, 2, 3, 5])
@pytest.mark.parametrize("consecutive", [False, True])
def test_hysteresis_backs_off_like_deepspeed(hysteresis, consecutive):
    # No growth in either (window longer than the run): the back-off rule alone is compared.
    # (DeepSpeed's growth comes one clean step later than GradScaler's, so growth is tested below.)
    rng = random.Random(hysteresis * 10 + consecutive)
    ours = DynamicLossScaler(init_scale=2.0 ** 60, growth_interval=10_000, hysteresis=hysteresis,
                             consecutive_hysteresis=consecutive)
    ds = _DeepSpeedRule(2.0 ** 60, 10_000, hysteresis, consecutive)
    backoffs = 0
    for _ in range(400):
        found = rng.random() < 0.35
        before = ours.get_scale()
        ours.update(found)
        ds.update_scale(found)
        assert ours.get_scale() == ds.cur_scale and ours.hysteresis_left == ds.cur_hysteresis
        backoffs += ours.get_scale() < before
    if hysteresis > 1:
        assert backoffs < ours.overflow_count  # some overflows were tolerated
    if not consecutive or hysteresis <= 3:
        assert backoffs > 5  # and some were not


def test_hysteresis_is_refilled_by_a_growth_window_not_by_a_clean_step():
    s = DynamicLossScaler(init_scale=64.0, growth_interval=3, hysteresis=2)
    trace = []
    for found in (True, False, True, True, False, False, False, True, True):
        s.update(found)
        trace.append((s.get_scale(), s.hysteresis_left))
    assert trace == [(64.0, 1),                           # tolerated: S kept, counter spent
                     (64.0, 1),                           # a clean step does not refill it
                     (32.0, 1), (16.0, 1),                # so each further overflow backs off
                     (16.0, 1), (16.0, 1), (32.0, 2),     # a growth window refills it
                     (32.0, 1), (16.0, 1)]
    c = DynamicLossScaler(init_scale=64.0, growth_interval=100, hysteresis=2, consecutive_hysteresis=True)
    for found in (True, False, True, False, True, True):
        c.update(found)
    assert c.get_scale() == 32.0 and c.overflow_count == 4  # only two in a row backed off


def test_hysteresis_one_is_gradscaler_and_skips_are_reported():
    scales_ref, scales_our, skipped_ref, skipped_our, w_ref, w_our, *_ = _drive(
        {"init_scale": 2.0 ** 40, "growth_interval": 3}, n_steps=120, seed=3)
    assert scales_our == scales_ref and skipped_our == skipped_ref and torch.equal(w_our, w_ref)
    s = DynamicLossScaler(init_scale=16.0, hysteresis=3)
    s.scale(torch.tensor(1.0))
    assert s.unscale_([torch.tensor([float("inf")])]) is True  # tolerated or not, the step is skipped
    s.update()
    assert s.get_scale() == 16.0 and s.overflow_count == 1


def test_hysteresis_state_round_trip_and_gradscaler_state_keeps_settings():
    a = DynamicLossScaler(init_scale=256.0, growth_interval=4, hysteresis=3, min_scale=2.0)
    for found in (True, False, True):
        a.update(found)
    b = DynamicLossScaler()
    b.load_state_dict(a.state_dict())
    assert b.hysteresis == 3 and b.hysteresis_left == 1 and b.min_scale == 2.0
    for found in (True, False, False, False, False, True, True, True, True, True, True, True, True,
                  True, True):
        a.update(found)
        b.update(found)
        assert (a.get_scale(), a.hysteresis_left, a.growth_tracker) == \
            (b.get_scale(), b.hysteresis_left, b.growth_tracker)
    assert a.get_scale() == 2.0  # clamped at min_scale
    g = torch.amp.GradScaler("cpu", init_scale=8.0)
    c = DynamicLossScaler(hysteresis=2)
    c.load_state_dict(g.state_dict())  # GradScaler has no hysteresis: ours is kept, counter full
    assert c.get_scale() == 8.0 and c.hysteresis == 2 and c.hysteresis_left == 2
