"""Tests for course_lib.master.MasterWeightOptimizer (plain fp32 torch training is the oracle)."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

from course_lib.data import digits_tensors
from course_lib.master import MasterWeightOptimizer, clip_grads_, global_grad_norm
from course_lib.models import MLP
from course_lib.scaling import DynamicLossScaler, StaticLossScaler


@pytest.fixture(scope="module")
def data():
    s = digits_tensors(device="cpu")
    return s.x_train[:640], s.y_train[:640]


def _batches(data, n, bs=64):
    X, Y = data
    k = len(X) // bs
    for i in range(n):
        j = i % k
        yield X[j * bs:(j + 1) * bs], Y[j * bs:(j + 1) * bs]


def _base_model(seed=0):
    torch.manual_seed(seed)
    return MLP(hidden=(32,))


def _train_plain(model, data, n, opt_cls, **kw):
    opt = opt_cls(model.parameters(), **kw)
    losses, params = [], []
    for x, y in _batches(data, n):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        params.append([p.detach().clone() for p in model.parameters()])
    return losses, params


def _train_master(model, data, n, mwo):
    dtype = next(model.parameters()).dtype
    losses, params = [], []
    for x, y in _batches(data, n):
        mwo.zero_grad()
        loss = F.cross_entropy(model(x.to(dtype)).float(), y)  # fp32 loss
        mwo.scale_loss(loss).backward()
        mwo.step()
        losses.append(loss.item())
        params.append([p.detach().clone() for p in model.parameters()])
    return losses, params


# ----------------------------------------------------------------------------- (a) exactness
@pytest.mark.parametrize("opt_cls, kw, scaler", [
    (torch.optim.Adam, {"lr": 1e-3}, None),
    (torch.optim.Adam, {"lr": 1e-3}, StaticLossScaler(128.0)),  # powers of two scale exactly
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}, DynamicLossScaler()),
    (torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 0.1}, None),
    (torch.optim.RMSprop, {"lr": 1e-3}, None),
])
def test_fp32_model_reproduces_plain_training_exactly(data, opt_cls, kw, scaler):
    ref_losses, ref_params = _train_plain(_base_model(), data, 15, opt_cls, **kw)
    model = _base_model()
    mwo = MasterWeightOptimizer(model, opt_cls, scaler=scaler, **kw)
    losses, params = _train_master(model, data, 15, mwo)
    assert losses == ref_losses
    for step_ref, step_ours in zip(ref_params, params):
        assert all(torch.equal(a, b) for a, b in zip(step_ref, step_ours))
    assert mwo.steps_taken == 15 and mwo.skipped_steps == 0


def test_clipping_matches_torch_clip_grad_norm(data):
    g = [torch.randn(5, 3, generator=torch.Generator().manual_seed(i)) * 4 for i in range(3)]
    g_torch = [t.clone().requires_grad_() for t in g]
    for a, b in zip(g_torch, g):
        a.grad = b.clone()
    total = torch.nn.utils.clip_grad_norm_(g_torch, max_norm=1.0)
    norm = global_grad_norm(g)
    assert norm == float(total)
    clip_grads_(g, 1.0, norm)
    assert all(torch.equal(a.grad, b) for a, b in zip(g_torch, g))


# ----------------------------------------------------------------------------- (b) tracking
# Tolerances, measured on this problem (MLP 64-32-10, Adam lr=1e-3, 50 steps): fp16 masters
# differ from fp32 training by 0.5% of each tensor's largest weight and the losses by 2e-4;
# bf16 by 2% and 1e-3. The gap comes only from the 16-bit forward/backward rounding
# (unit roundoff 2**-11 for fp16, 2**-8 for bf16) since the update itself is fp32; the
# bounds below are ~3x the measured values.
@pytest.mark.parametrize("dtype, scaler, w_tol, loss_tol", [
    (torch.float16, StaticLossScaler(128.0), 1.5e-2, 1e-3),
    (torch.float16, DynamicLossScaler(), 1.5e-2, 1e-3),
    (torch.bfloat16, None, 6e-2, 5e-3),
])
def test_low_precision_model_tracks_fp32(data, dtype, scaler, w_tol, loss_tol):
    ref_losses, ref_params = _train_plain(_base_model(), data, 50, torch.optim.Adam, lr=1e-3)
    model = _base_model().to(dtype)
    mwo = MasterWeightOptimizer(model, torch.optim.Adam, scaler=scaler, lr=1e-3)
    losses, _ = _train_master(model, data, 50, mwo)
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < loss_tol
    assert losses[-1] < 0.8 * losses[0]  # it really trained
    for m, r in zip(mwo.master_params, ref_params[-1]):
        assert m.dtype == torch.float32
        assert float((m.detach() - r).abs().max() / r.abs().max()) < w_tol
    for p, m in zip(model.parameters(), mwo.master_params):
        assert p.dtype == dtype and torch.equal(p, m.to(dtype))  # model = rounded masters


def test_masters_keep_updates_that_fp16_weights_lose():
    # An update of 1e-4 is below half an ulp of 1.0 in fp16 (2**-11 ~ 4.9e-4): a plain
    # optimizer on fp16 weights never moves them; master weights accumulate the updates.
    naive = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = torch.optim.SGD([naive], lr=1e-4)
    model = torch.nn.Linear(4, 1, bias=False).half()
    with torch.no_grad():
        model.weight.fill_(1.0)
    mwo = MasterWeightOptimizer(model, torch.optim.SGD, lr=1e-4)
    for _ in range(100):
        opt.zero_grad()
        naive.sum().backward()
        opt.step()
        mwo.zero_grad()
        model.weight.sum().backward()
        mwo.step()
    assert torch.equal(naive, torch.ones(4, dtype=torch.float16))
    torch.testing.assert_close(mwo.master_params[0], torch.full((1, 4), 0.99), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.weight.float(), torch.full((1, 4), 0.99), rtol=0, atol=5e-4)


# ----------------------------------------------------------------------------- (c) overflow
def _snapshot(model, mwo):
    return ([p.detach().clone() for p in model.parameters()],
            [m.detach().clone() for m in mwo.master_params],
            copy.deepcopy(mwo.optimizer.state_dict()))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("scaler_cls", [DynamicLossScaler, None])
def test_overflow_skips_step_and_training_continues(data, bad, scaler_cls):
    model = _base_model().half()
    scaler = None if scaler_cls is None else scaler_cls(init_scale=1024.0)
    mwo = MasterWeightOptimizer(model, torch.optim.Adam, scaler=scaler, lr=1e-2)
    batches = list(_batches(data, 4))

    def backward(x, y):
        mwo.zero_grad()
        mwo.scale_loss(F.cross_entropy(model(x.half()).float(), y)).backward()

    backward(*batches[0])
    assert mwo.step() is True  # a normal step first, so the optimizer has state
    before = _snapshot(model, mwo)
    backward(*batches[1])
    model.net[0].weight.grad[3, 5] = bad  # inject
    assert mwo.step() is False
    after = _snapshot(model, mwo)
    assert _same(before, after)  # model, masters and optimizer state untouched
    assert mwo.skipped_steps == 1 and mwo.steps_taken == 1 and mwo.last_stepped is False
    assert all(p.grad is None for p in list(model.parameters()) + mwo.master_params)
    if scaler is not None:
        assert scaler.get_scale() == 512.0 and scaler.overflow_count == 1
    backward(*batches[2])
    assert mwo.step() is True and mwo.steps_taken == 2
    assert not _same(before[0], [p.detach() for p in model.parameters()])
    assert all(torch.isfinite(m).all() for m in mwo.master_params)


def test_too_large_static_scale_overflows_fp16_gradients(data):
    model = _base_model().half()
    mwo = MasterWeightOptimizer(model, torch.optim.SGD, lr=0.1, scaler=StaticLossScaler(2.0 ** 40))
    x, y = next(_batches(data, 1))
    mwo.scale_loss(F.cross_entropy(model(x.half()).float(), y)).backward()
    assert mwo.step() is False and mwo.skipped_steps == 1


# ----------------------------------------------------------------------------- (d) state dict
def test_state_dict_round_trip_resumes_identically(data):
    model = _base_model().half()
    mwo = MasterWeightOptimizer(model, torch.optim.Adam, lr=3e-3,
                                scaler=DynamicLossScaler(init_scale=2.0 ** 14, growth_interval=3))
    _train_master(model, data, 6, mwo)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "mwo": mwo.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain tensors and numbers only

    model2 = _base_model(seed=123).half()  # different initial weights, overwritten by the load
    mwo2 = MasterWeightOptimizer(model2, torch.optim.Adam, lr=3e-3,
                                 scaler=DynamicLossScaler(init_scale=2.0 ** 14, growth_interval=3))
    model2.load_state_dict(saved["model"])
    mwo2.load_state_dict(saved["mwo"])
    assert mwo2.scaler.get_scale() == mwo.scaler.get_scale() and mwo2.steps_taken == 6

    l1, p1 = _train_master(model, data, 6, mwo)
    l2, p2 = _train_master(model2, data, 6, mwo2)
    assert l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(p1[-1], p2[-1]))
    assert all(torch.equal(a, b) for a, b in zip(mwo.master_params, mwo2.master_params))
    assert mwo.scaler.state_dict() == mwo2.scaler.state_dict()


def test_state_dict_is_a_copy(data):
    model = _base_model().half()
    mwo = MasterWeightOptimizer(model, torch.optim.Adam, lr=1e-2)
    _train_master(model, data, 2, mwo)
    sd = mwo.state_dict()
    _train_master(model, data, 2, mwo)
    assert not torch.equal(sd["master_params"][0], mwo.master_params[0])
    assert sd["optimizer"]["state"][0]["step"] == 2


# ----------------------------------------------------------------------------- errors, groups
def test_param_groups_and_frozen_params():
    model = _base_model().half()
    model.net[2].bias.requires_grad_(False)
    mwo = MasterWeightOptimizer([{"params": model.net[0].parameters(), "lr": 0.1},
                                 {"params": model.net[2].parameters()}], torch.optim.SGD, lr=0.01)
    assert [g["lr"] for g in mwo.param_groups] == [0.1, 0.01]
    assert len(mwo.master_params) == 3 and all(m.dtype == torch.float32 for m in mwo.master_params)


def test_errors():
    model = _base_model().half()
    with pytest.raises(TypeError, match="optimizer_cls"):
        MasterWeightOptimizer(model, "adam")
    with pytest.raises(TypeError, match="LossScaler"):
        MasterWeightOptimizer(model, torch.optim.SGD, lr=0.1, scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        MasterWeightOptimizer(model, lambda params, **kw: object())
    with pytest.raises(ValueError, match="empty parameter list"):
        MasterWeightOptimizer([], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="max_grad_norm"):
        MasterWeightOptimizer(model, torch.optim.SGD, lr=0.1, max_grad_norm=-1.0)
    mwo = MasterWeightOptimizer(model, torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match=r"call scale_loss\(loss\).backward\(\) before step"):
        mwo.step()
    other = MasterWeightOptimizer(torch.nn.Linear(2, 2).half(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="different model"):
        mwo.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="lacks the keys"):
        mwo.load_state_dict({"master_params": []})
