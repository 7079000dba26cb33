"""course_lib.debug: the first non-finite finder and the output comparison."""
import math

import pytest
import torch
from torch import nn

from course_lib.data import digits_tensors
from course_lib.debug import NonFiniteDetector, compare_outputs, compare_precisions, tensor_stats
from course_lib.models import MLP

FP16_MAX = torch.finfo(torch.float16).max  # 65504


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


def _all_hooks(model: nn.Module) -> int:
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            + len(m._backward_pre_hooks) for m in model.modules())
    return n + sum(len(p._backward_hooks or {}) for p in model.parameters())


def _overflow_model() -> nn.Sequential:
    """Layer "2" has every weight 3e4: its inputs are sigmoids (sum > 2.2 for this seed), so
    every output exceeds 65504 when the matmul runs in fp16."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[2].weight.fill_(3e4)
    return model


# --------------------------------------------------------------------------- stats
def test_tensor_stats_named_edge_cases():
    tiny = torch.finfo(torch.float16).smallest_normal / 4  # a subnormal
    t = torch.tensor([0.0, -0.0, tiny, -FP16_MAX, float("inf"), float("-inf"), float("nan")],
                     dtype=torch.float16)
    s = tensor_stats(t)
    assert (s.numel, s.dtype, s.n_inf, s.n_nan, s.max_abs_finite) == (7, torch.float16, 2, 1, FP16_MAX)
    assert not s.finite and "2 inf, 1 NaN of 7 float16 values" in str(s)
    assert tensor_stats(torch.tensor([0.0, -0.0])).max_abs_finite == 0.0
    assert tensor_stats(torch.tensor([float("nan")])).max_abs_finite == 0.0  # no finite value
    assert tensor_stats(torch.empty(0)).finite
    assert tensor_stats(torch.tensor([3, -7])).max_abs_finite == 7.0


# --------------------------------------------------------------------------- detector
def test_finite_model_reports_nothing():
    torch.manual_seed(0)
    model = MLP(hidden=(16,))
    with NonFiniteDetector(model) as det:
        model(torch.randn(4, 64)).sum().backward()
    assert not det.found and det.events == [] and det.first_forward is None and det.first_backward is None
    assert "all checked outputs and gradients were finite" in det.report()
    assert det.steps_checked == det.steps_seen == 1


def test_fp16_overflow_in_forward_names_the_layer():
    model, x = _overflow_model(), torch.randn(4, 8)
    with NonFiniteDetector(model) as det:
        with torch.amp.autocast("cpu", dtype=torch.float16):
            out = model(x)
        out.float().mean().backward()
    first = det.first_forward
    assert (first.module, first.module_type, first.where, first.inputs_finite) == ("2", "Linear", "output", True)
    # oracle: the same layer run directly under autocast
    with torch.no_grad(), torch.amp.autocast("cpu", dtype=torch.float16):
        h = model[1](model[0](x))
        direct = model[2](h)
    assert torch.isinf(direct).all() and torch.isfinite(h).all()
    assert first.stats == tensor_stats(direct) and first.stats.n_inf == direct.numel() == 32
    assert "this module produced it" in str(first)
    # everything after it is non-finite too; the model's own output blames its submodule
    later = det.forward_events[1:]
    assert [e.module for e in later] == ["3", ""] and later[0].inputs_finite is False
    assert later[1].first_in_submodule == "2" and "submodule '2'" in later[1].diagnosis()
    # backward: the first non-finite gradient is layer 3's weight grad (its input holds inf)
    assert (det.first_backward.module, det.first_backward.where) == ("3", "grad(weight)")


def test_fp16_gradient_overflow_in_backward_names_the_layer():
    # forward is finite (layer 1's input is tiny); with a loss scale of 2**10 the gradient
    # w.r.t. layer 1's input is W1^T g with W1 = 256 everywhere: > 65504 in fp16
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)).half()
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
        model[0].bias.zero_()
        model[1].weight.fill_(256.0)
        model[1].bias.zero_()
    with NonFiniteDetector(model) as det:
        out = model(torch.randn(4, 8).half())
        (out.float().sum() * 2.0 ** 10).backward()
    assert det.first_forward is None
    first = det.first_backward
    assert (first.module, first.where, first.inputs_finite) == ("1", "grad_input[0]", True)
    assert "this module's backward produced it" in str(first)
    # oracle: gradient w.r.t. layer 1's input, computed by hand in fp16
    g_out = (torch.full((4, 4), 2.0 ** 10).half() @ model[2].weight)  # dL/d(layer-1 output)
    assert torch.isfinite(g_out).all() and torch.isinf(g_out @ model[1].weight).all()
    assert first.stats.n_inf == 32
    assert det.backward_events[det.backward_events.index(first) + 1].where == "grad_output[0]"


def test_log_of_negative_names_the_log_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with NonFiniteDetector(model) as det:
        model(x).sum().backward()
    first = det.first_forward
    assert (first.module, first.module_type, first.inputs_finite) == ("1", "Log", True)
    pre = model[0](x).detach()
    assert first.stats.n_nan == int((pre < 0).sum()) > 0 and first.stats.n_inf == int((pre == 0).sum())


def test_sqrt_at_zero_is_found_in_backward_only():
    # ReLU makes exact zeros; d sqrt(x)/dx = 1/(2 sqrt(x)) is inf there
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Sqrt(), nn.Linear(4, 2))
    x = torch.randn(8, 4)
    with NonFiniteDetector(model) as det:
        model(x).sum().backward()
    assert det.first_forward is None
    first = det.first_backward
    assert (first.module, first.module_type, first.where, first.inputs_finite) == \
        ("2", "Sqrt", "grad_input[0]", True)
    zeros = int((model[1](model[0](x)) == 0).sum())
    assert first.stats.n_inf + first.stats.n_nan == zeros > 0
    assert det.backward_events[1].module == "1" and det.backward_events[1].where == "grad_output[0]"


def test_hooks_are_removed_on_exit_and_on_exception():
    model = _overflow_model()
    before = _all_hooks(model)
    with NonFiniteDetector(model) as det:
        assert det.attached and _all_hooks(model) > before
    assert _all_hooks(model) == before == 0 and not det.attached
    with pytest.raises(RuntimeError, match="boom"):
        with NonFiniteDetector(model):
            raise RuntimeError("boom")
    assert _all_hooks(model) == 0
    det = NonFiniteDetector(model).attach()
    with pytest.raises(RuntimeError, match="already attached"):
        det.attach()
    det.detach()
    assert _all_hooks(model) == 0


def test_disabled_detector_installs_nothing_and_records_nothing():
    model = _overflow_model()
    with NonFiniteDetector(model, enabled=False) as det:
        assert _all_hooks(model) == 0
        with torch.amp.autocast("cpu", dtype=torch.float16):
            out = model(torch.randn(4, 8))
        out.float().mean().backward()
    assert not torch.isfinite(out).all()  # the model really is broken
    assert not det.found and det.first_forward is None and det.first_backward is None
    assert "disabled" in det.report()


def test_tuple_outputs_and_a_module_used_twice():
    class Split(nn.Module):
        def forward(self, x):
            return x * 2, torch.log(x - 10)  # second output: log of a negative number

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.split, self.lin = Split(), nn.Linear(4, 4)

        def forward(self, x):
            a, b = self.split(x)
            return self.lin(self.lin(a)) + b.nan_to_num()

    net = Net()
    with NonFiniteDetector(net) as det:
        net(torch.rand(2, 4))
    assert [(e.module, e.where) for e in det.events] == [("split", "output[1]")]

    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1e3, 0.0], [0.0, 1e3]]))
        lin.bias.zero_()
    twice = nn.Sequential(lin, lin).half()  # 1e3 * 1e3 * 1 > 65504: only the second call overflows
    with NonFiniteDetector(twice) as det:
        twice(torch.ones(1, 2).half())
    first = det.first_forward
    assert (first.module, first.call, first.inputs_finite) == ("0", 1, True)
    assert "call 1" in str(first)


def test_check_every_skips_steps():
    model = _overflow_model()
    with NonFiniteDetector(model, check_every=2, backward=False) as det:
        for _ in range(5):
            with torch.no_grad(), torch.amp.autocast("cpu", dtype=torch.float16):
                model(torch.randn(2, 8))
    assert det.steps_seen == 5 and det.steps_checked == 3
    assert sorted({e.step for e in det.events}) == [0, 2, 4]
    assert det.backward_events == [] and "first in backward" not in det.report()


def test_max_events_and_reset():
    model = _overflow_model()
    with NonFiniteDetector(model, max_events=2) as det:
        with torch.no_grad(), torch.amp.autocast("cpu", dtype=torch.float16):
            model(torch.randn(2, 8))
    assert len(det.events) == 2 and det.dropped_events == 1 and det.found
    det.reset()
    assert not det.found and det.steps_seen == 0


def test_detector_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model must be Module"):
        NonFiniteDetector("model")
    with pytest.raises(ValueError, match="check_every must be a positive int"):
        NonFiniteDetector(nn.Linear(1, 1), check_every=0)
    with pytest.raises(TypeError, match="enabled"):
        NonFiniteDetector(nn.Linear(1, 1), enabled=1)


# --------------------------------------------------------------------------- comparison
def test_identical_outputs_compare_perfectly():
    r = torch.randn(16, 10)
    c = compare_outputs(r, r.clone())
    assert (c.max_abs_err, c.mean_abs_err, c.max_rel_err, c.mean_rel_err) == (0.0, 0.0, 0.0, 0.0)
    assert c.cosine_similarity == 1.0 and c.top1_agreement == 1.0 and c.numel == 160
    z = compare_outputs(torch.zeros(3), torch.zeros(3))
    assert (z.max_rel_err, z.cosine_similarity, z.top1_agreement) == (0.0, 1.0, None)


def test_known_perturbation_gives_hand_computed_numbers():
    r = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    d = torch.tensor([[0.0, 0.0], [0.25, 0.0]])  # perturb the zero entry
    c = compare_outputs(r, r + d)
    floor = 1e-3 * 4.0
    assert c.rel_floor == floor and c.ref_max_abs == 4.0
    assert c.max_abs_err == 0.25 and c.mean_abs_err == 0.25 / 4
    assert c.max_rel_err == 0.25 / (0.0 + floor)  # the floor keeps it finite: 62.5, not 2.5e6
    rr, cc, rc = 26.0, 25.0 + 0.0625 + 1.0, 26.0
    assert c.cosine_similarity == pytest.approx(rc / math.sqrt(rr * cc), rel=1e-15)
    assert c.top1_agreement == 1.0  # row 1 becomes [0.25, 1.0]: its arg-max stays class 1
    # a perturbation that flips one arg-max
    flipped = compare_outputs(r, r + torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert flipped.top1_agreement == 0.5
    assert compare_outputs(r, -r).cosine_similarity == -1.0
    # the seed tutorial's floor (1e-7) turns a tiny error on a zero output into 2.5e6
    assert compare_outputs(r, r + d, rel_floor_fraction=0.25e-7).max_rel_err == pytest.approx(2.5e6)


def test_nonfinite_values_are_counted_and_propagate():
    r = torch.tensor([1.0, 2.0, 3.0])
    c = compare_outputs(r, torch.tensor([1.0, float("inf"), float("nan")]))
    assert c.nonfinite_candidate == 2 and c.nonfinite_reference == 0
    assert math.isnan(c.max_abs_err) or math.isinf(c.max_abs_err)
    assert "non-finite" in str(c)


def test_compare_outputs_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        compare_outputs(torch.ones(2), torch.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        compare_outputs(torch.ones(2, dtype=torch.int64), torch.ones(2))
    with pytest.raises(ValueError, match="class_dim"):
        compare_outputs(torch.ones(2, 3), torch.ones(2, 3), class_dim=2)


@pytest.fixture(scope="module")
def digits_val():
    return digits_tensors(device="cpu").x_val


def test_bf16_autocast_on_mlp_is_close_but_not_exact(digits_val):
    torch.manual_seed(0)
    model = MLP()
    model.train()
    cmp = compare_precisions(model, digits_val, "cpu", torch.bfloat16)
    assert model.training  # mode restored
    # oracle: the two runs done by hand give exactly the same comparison
    with torch.no_grad():
        ref = model(digits_val)
        with torch.amp.autocast("cpu", dtype=torch.bfloat16):
            cand = model(digits_val)
    assert cand.dtype == torch.bfloat16 and cmp == compare_outputs(ref, cand)
    # bf16 rounds inputs, weights and each layer's output with relative error <= 2**-9;
    # through three layers the error stays a few of those relative to the output's scale
    assert 0.0 < cmp.max_abs_err / cmp.ref_max_abs < 20 * 2.0 ** -9
    assert cmp.cosine_similarity > 0.999
    # arg-max flips only where the top two logits are within the error: rare
    assert cmp.top1_agreement >= 0.95 and cmp.numel == digits_val.shape[0] * 10


def test_compare_precisions_refuses_what_the_seed_did(digits_val):
    model = MLP()
    with pytest.raises(ValueError, match="inputs must be float32"):
        compare_precisions(model, digits_val.half())
    with pytest.raises(ValueError, match="needs a float32 model"):
        compare_precisions(MLP().half(), digits_val)
    with pytest.raises(TypeError, match="returns a tensor"):
        compare_precisions(_TupleModel(), digits_val)


class _TupleModel(nn.Module):
    def forward(self, x):
        return x, x


def test_first_nonfinite_module_names_the_layer_that_made_the_inf():
    from course_lib.debug import first_nonfinite_module

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    assert first_nonfinite_module(model, x) is None
    with torch.no_grad():
        model[2].weight.fill_(1e38)                      # the sum of 8 such products overflows FP32
        model[0].weight.abs_()
        model[0].bias.fill_(1.0)                         # every hidden unit positive
    assert first_nonfinite_module(model, x) == "2"
    with torch.no_grad():
        model[2].weight.fill_(3e3)                       # finite in FP32 and BF16, inf in FP16
    x = torch.ones(3, 4) * 10
    assert first_nonfinite_module(model, x) is None
    assert first_nonfinite_module(model, x, autocast_dtype=torch.bfloat16) is None
    assert first_nonfinite_module(model.half(), x.half()) == "2"


def test_compare_outputs_reports_nan_cosine_when_the_candidate_is_not_finite():
    ref = torch.randn(4, 3)
    bad = ref.clone()
    bad[0, 0] = float("nan")
    result = compare_outputs(ref, bad)
    assert math.isnan(result.cosine_similarity)
