"""Recipes and steppers: one description per precision mode, one protocol per optimisation style."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from course_lib.data import digits_tensors
from course_lib.models import MLP
from course_lib.recipes import RECIPES, Recipe, get_recipe
from course_lib.scaling import DynamicLossScaler, NoLossScaler, StaticLossScaler
from course_lib.steppers import GradScalerStepper, MasterStepper, PlainStepper, StepInfo
from course_lib.train import train


# ----------------------------------------------------------------------------- recipes
def test_builtin_recipes_and_their_fields():
    assert list(RECIPES) == ["fp32", "fp16_naive", "mixed_manual", "amp_fp16", "amp_bf16", "bf16_pure"]
    r = get_recipe("mixed_manual")
    assert (r.param_dtype, r.input_dtype, r.autocast_dtype, r.loss_in_fp32, r.stepper) == \
        (torch.float16, torch.float16, None, True, "master")
    assert get_recipe(r) is r and get_recipe("amp_fp16").scales_loss and not get_recipe("amp_bf16").scales_loss
    assert get_recipe("amp_bf16").compute_dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, words", [
    ({"param_dtype": torch.float16, "autocast_dtype": torch.float16}, "autocast needs float32 parameters"),
    ({"autocast_dtype": torch.bfloat16, "input_dtype": torch.bfloat16}, "must not cast its inputs"),
    ({"param_dtype": torch.float16}, "needs torch.float16 inputs"),
    ({"input_dtype": torch.float16}, "float32 model without autocast"),
    ({"stepper": "master"}, "master weights of a 16-bit model"),
    ({"stepper": "grad_scaler", "autocast_dtype": torch.bfloat16}, "for float16 autocast"),
    ({"stepper": "adamw"}, "allowed: 'plain', 'master', 'grad_scaler'"),
    ({"param_dtype": torch.float64}, "param_dtype=torch.float64 is not allowed; allowed: torch.float32"),
    ({"default_loss_scale": 128.0}, "does not scale the loss"),
    ({"param_dtype": torch.float16, "input_dtype": torch.float16, "default_loss_scale": "dynamic"},
     "fixed loss scale"),
])
def test_invalid_recipes_fail_when_built_and_say_what_is_allowed(kwargs, words):
    with pytest.raises(ValueError) as info:
        Recipe("custom", "a recipe under test", **kwargs)
    assert words in str(info.value)


def test_get_recipe_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"allowed: \['fp32', 'fp16_naive'"):
        get_recipe("fp8")


@pytest.mark.parametrize("name, per_param", [("fp32", 16), ("fp16_naive", 8), ("mixed_manual", 16),
                                             ("amp_fp16", 16), ("amp_bf16", 16), ("bf16_pure", 8)])
def test_memory_bill_per_recipe(name, per_param):
    bill = get_recipe(name).training_state_bytes(1000, "adam")
    assert bill["total"] == per_param * 1000
    assert bill["total"] == sum(v for k, v in bill.items() if k != "total")
    assert get_recipe(name).training_state_bytes(1000, "sgd")["optimizer_state"] == 0


def test_a_custom_recipe_trains():
    custom = Recipe("bf16_masters", "bf16 model with FP32 master weights", param_dtype=torch.bfloat16,
                    input_dtype=torch.bfloat16, loss_in_fp32=True, stepper="master")
    s = digits_tensors(device="cpu")
    loader = DataLoader(TensorDataset(s.x_train[:256], s.y_train[:256]), batch_size=64)
    torch.manual_seed(0)
    r = train(MLP(hidden=(32,)), loader, precision=custom, lr=3e-3, steps=8, progress=False, device="cpu")
    assert r.precision == "bf16_masters" and r.final_loss < r.history[0]["loss"]
    assert all(p.dtype == torch.bfloat16 for p in r.model.parameters())


# ----------------------------------------------------------------------------- steppers
def _toy(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).to(dtype)
    x = torch.randn(8, 4, dtype=dtype)
    return model, x


def test_plain_stepper_holds_the_null_scaler_and_never_skips():
    model, x = _toy()
    stepper = PlainStepper(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(stepper.scaler, NoLossScaler)
    stepper.zero_grad()
    stepper.backward(model(x).pow(2).mean())
    next(model.parameters()).grad[0, 0] = float("inf")
    info = stepper.step()
    assert info == StepInfo(1.0, False, math.inf)          # measured, not skipped: plain never checks
    assert not torch.isfinite(next(model.parameters())).all()


@pytest.mark.parametrize("kind", ["master", "grad_scaler"])
def test_skipped_steps_are_reported_so_a_scheduler_steps_only_after_real_steps(kind):
    dtype = torch.float16 if kind == "master" else torch.float32
    model, x = _toy(dtype)
    params = list(model.parameters())
    if kind == "master":
        stepper = MasterStepper(params, lambda p: torch.optim.SGD(p, lr=0.1), DynamicLossScaler(2.0 ** 10))
    else:
        opt = torch.optim.SGD(params, lr=0.1)
        stepper = GradScalerStepper(params, opt, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    sched = torch.optim.lr_scheduler.StepLR(stepper.optimizer, step_size=1, gamma=0.5)
    lrs, infos = [], []
    for i in range(4):
        stepper.zero_grad()
        with torch.amp.autocast("cpu", dtype=torch.float16, enabled=kind == "grad_scaler"):
            loss = model(x).float().pow(2).mean()
        stepper.backward(loss * (float("inf") if i == 1 else 1.0))
        info = stepper.step()
        infos.append(info)
        if not info.skipped:
            sched.step()
        lrs.append(stepper.optimizer.param_groups[0]["lr"])
    assert [i.skipped for i in infos] == [False, True, False, False]
    assert math.isnan(infos[1].grad_norm) and infos[2].scale == infos[1].scale / 2
    assert lrs == [0.05, 0.05, 0.025, 0.0125]


def test_state_dicts_resume_a_stepper_exactly():
    def run(steps, state=None):
        model, x = _toy(torch.float16)
        stepper = MasterStepper(list(model.parameters()), lambda p: torch.optim.Adam(p, lr=1e-2),
                                StaticLossScaler(64.0))
        if state is not None:
            model.load_state_dict(state[0])
            stepper.load_state_dict(state[1])
        for _ in range(steps):
            stepper.zero_grad()
            stepper.backward(model(x).float().pow(2).mean())
            stepper.step()
        return model, stepper

    full, _ = run(6)
    model, stepper = run(3)
    rest, _ = run(3, (model.state_dict(), stepper.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), rest.state_dict().values()))


# ----------------------------------------------------------------------------- accumulation
def _loader(n, batch):
    s = digits_tensors(device="cpu")
    return DataLoader(TensorDataset(s.x_train[:n], s.y_train[:n]), batch_size=batch, shuffle=False)


@pytest.mark.parametrize("n, k", [(256, 4), (200, 2)])  # 200 = 6 full groups of 2x16 and a group of one 8
def test_accumulation_equals_one_batch_k_times_larger(n, k):
    micro = 16
    torch.manual_seed(0)
    acc = train(MLP(hidden=(32,)), _loader(n, micro), optimizer="sgd", lr=0.1, epochs=1,
                accum_steps=k, progress=False, device="cpu")
    torch.manual_seed(0)
    big = train(MLP(hidden=(32,)), _loader(n, micro * k), optimizer="sgd", lr=0.1, epochs=1,
                progress=False, device="cpu")
    assert acc.steps == big.steps == math.ceil(n / (micro * k))
    for a, b in zip(acc.model.parameters(), big.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)   # fp32 rounding of a different sum order
    for ra, rb in zip(acc.history, big.history):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)


def test_accumulation_updates_the_scaler_once_per_optimizer_step():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    r = train(MLP(hidden=(16,)), _loader(256, 16), precision="amp_fp16", optimizer="sgd", lr=0.05,
              steps=4, accum_steps=4, loss_scale=scaler, progress=False, device="cpu")
    assert [h["scale"] for h in r.history] == [256.0, 256.0, 512.0, 512.0]  # grows every 2 *steps*


def test_accumulation_with_no_sync_wraps_forward_and_backward_of_non_final_micro_steps():
    calls = []

    class FakeDDP(torch.nn.Module):
        """Records which micro-steps ran forward inside no_sync (as DDP needs: forward *and* backward)."""

        def __init__(self):
            super().__init__()
            self.inner = MLP(hidden=(8,))
            self.in_no_sync = False

        def forward(self, x):
            calls.append(self.in_no_sync)
            return self.inner(x)

        def no_sync(self):
            import contextlib

            @contextlib.contextmanager
            def ctx():
                self.in_no_sync = True
                try:
                    yield
                finally:
                    self.in_no_sync = False
            return ctx()

    train(FakeDDP(), _loader(96, 16), optimizer="sgd", lr=0.1, steps=2, accum_steps=3,
          progress=False, device="cpu")
    assert calls == [True, True, False, True, True, False]


def test_accumulation_loss_is_normalised_by_micro_batch_share():
    # One group of a 16-example and an 8-example micro-batch: weights 2/3 and 1/3.
    seen = []

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y)
        seen.append(loss.item())
        return loss

    r = train(MLP(hidden=(8,)), _loader(24, 16), optimizer="sgd", lr=0.1, steps=1, accum_steps=2,
              loss_fn=loss_fn, progress=False, device="cpu")
    assert r.history[0]["loss"] == pytest.approx(2 / 3 * seen[0] + 1 / 3 * seen[1], rel=1e-12)


def test_plain_stepper_can_skip_nonfinite_steps_when_asked():
    model, x = _toy()
    before = [p.detach().clone() for p in model.parameters()]
    stepper = PlainStepper(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1),
                           skip_nonfinite=True)
    stepper.zero_grad()
    stepper.backward(model(x).pow(2).mean())
    next(model.parameters()).grad[0, 0] = float("nan")
    info = stepper.step()
    assert info.skipped and math.isnan(info.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="option of the 'plain' stepper"):
        Recipe("x", "x", param_dtype=torch.float16, input_dtype=torch.float16, stepper="master",
               skip_nonfinite=True)
    checked = Recipe("fp16_checked", "tutorial loop + overflow check", param_dtype=torch.float16,
                     input_dtype=torch.float16, skip_nonfinite=True)
    assert checked.make_stepper(list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1)).skip_nonfinite
