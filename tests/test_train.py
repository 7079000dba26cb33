"""Tests for course_lib.train: modes against hand-written torch loops, exact resume, errors."""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.data import char_lm_loaders, digits_loaders, digits_tensors
from course_lib.master import MasterWeightOptimizer
from course_lib.models import MLP, TinyTransformer
from course_lib.scaling import DynamicLossScaler
from course_lib.train import RECIPES, TrainResult, evaluate, train


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(hidden=(32,))


def _dropout_mlp(seed=0):  # dropout makes the result depend on the torch RNG stream
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def _canon(records):
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in records]


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def loaders():
    return digits_loaders(batch_size=128, device="cpu")  # 12 train batches, 3 val batches


@pytest.fixture(scope="module")
def fixed_batches():
    s = digits_tensors(device="cpu")
    return DataLoader(TensorDataset(s.x_train[:640], s.y_train[:640]), batch_size=64, shuffle=False)


# ----------------------------------------------------------------------------- oracle loops
def _hand_loop(precision, model, loader, steps, lr):
    """What each mode should do, written directly with torch (and MasterWeightOptimizer)."""
    torch.manual_seed(0)
    scales = []
    if precision == "mixed_manual":
        model.half()
        opt = MasterWeightOptimizer(model, torch.optim.Adam, lr=lr, scaler=DynamicLossScaler(2.0 ** 20, growth_interval=3))
    else:
        model.to({"bf16_pure": torch.bfloat16}.get(precision, torch.float32))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20, growth_interval=3)
    done = 0
    while done < steps:
        for x, y in loader:
            if done == steps:
                break
            opt.zero_grad()
            if precision == "fp32":
                F.cross_entropy(model(x), y).backward()
                opt.step()
            elif precision == "bf16_pure":
                F.cross_entropy(model(x.bfloat16()), y).backward()
                opt.step()
            elif precision == "amp_bf16":
                with torch.amp.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
            elif precision == "amp_fp16":
                with torch.amp.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(x), y)
                scales.append(scaler.get_scale())
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            elif precision == "mixed_manual":
                scales.append(opt.loss_scale)
                opt.scale_loss(F.cross_entropy(model(x.half()).float(), y)).backward()
                opt.step()
            done += 1
    return scales


@pytest.mark.parametrize("precision", ["fp32", "bf16_pure", "amp_bf16", "amp_fp16", "mixed_manual"])
def test_train_matches_hand_written_torch_loop(precision, fixed_batches):
    steps, lr = 14, 3e-3
    ref = _mlp()
    ref_scales = _hand_loop(precision, ref, fixed_batches, steps, lr)
    scale = {"amp_fp16": torch.amp.GradScaler("cpu", init_scale=2.0 ** 20, growth_interval=3),
             "mixed_manual": DynamicLossScaler(2.0 ** 20, growth_interval=3)}.get(precision, "auto")
    r = train(_mlp(), fixed_batches, precision=precision, lr=lr, steps=steps, loss_scale=scale,
              progress=False, device="cpu")
    assert _same_weights(r.model, ref)
    assert r.steps == steps and [h["step"] for h in r.history] == list(range(steps))
    if ref_scales:
        assert [h["scale"] for h in r.history] == ref_scales
        assert r.skipped_steps == sum(b < a for a, b in zip(ref_scales, ref_scales[1:] + [math.inf]))
        assert r.skipped_steps >= 1  # 2**20 overflows fp16 at first
    assert all(math.isnan(h["grad_norm"]) == h["skipped"] for h in r.history)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("precision", ["fp32", "mixed_manual", "amp_fp16", "amp_bf16", "bf16_pure"])
def test_digits_accuracy_per_mode(precision):
    tr, va = digits_loaders(batch_size=64, device="cpu")
    torch.manual_seed(0)
    r = train(MLP(), tr, val_loader=va, precision=precision, epochs=3, progress=False, device="cpu")
    assert [v["epoch"] for v in r.val_history] == [0, 1, 2]
    assert r.val_accuracy > 0.88 and r.final_loss < 0.6
    assert r.val_history[-1]["val_loss"] < r.val_history[0]["val_loss"]


def test_fp16_naive_adam_breaks_but_sgd_trains(loaders):
    tr, va = loaders
    r = train(_mlp(), tr, precision="fp16_naive", optimizer="adam", steps=12, progress=False, device="cpu")
    # Adam's eps=1e-8 is 0 in fp16: a zero gradient gives 0/0 = NaN in the update.
    assert math.isnan(r.final_loss) and r.skipped_steps == 0
    r = train(_mlp(), tr, val_loader=va, precision="fp16_naive", optimizer="sgd", lr=0.1,
              optimizer_kwargs={"momentum": 0.9}, epochs=2, loss_scale=8.0, progress=False, device="cpu")
    assert all(p.dtype == torch.float16 for p in r.model.parameters())
    assert math.isfinite(r.final_loss) and r.val_accuracy > 0.8 and r.history[0]["scale"] == 8.0


def test_char_transformer_learns_with_bf16_autocast():
    tr, _, corpus = char_lm_loaders(block_size=32, batch_size=16, max_chars=40_000, device="cpu")
    torch.manual_seed(0)
    model = TinyTransformer(corpus.vocab_size, block_size=32, d_model=32, n_heads=2, n_layers=1)
    r = train(model, tr, precision="amp_bf16", lr=1e-2, steps=40, progress=False, device="cpu")
    assert r.history[0]["loss"] > 4.0 and r.final_loss < 3.2  # uniform guess = ln(vocab) ~ 4.2


# ----------------------------------------------------------------------------- data order
def test_data_order_is_per_epoch_deterministic(loaders):
    tr, _ = loaders

    def recorder(store):
        def loss_fn(out, y):
            store.append(y.tolist())
            return F.cross_entropy(out, y)
        return loss_fn

    a, b, c = [], [], []
    for store, seed in ((a, 0), (b, 0), (c, 1)):
        train(_mlp(), tr, epochs=2, loss_fn=recorder(store), seed=seed, progress=False, device="cpu")
    assert a == b and a != c
    assert a[:12] != a[12:] and sorted(sum(a[:12], [])) == sorted(sum(a[12:], []))


# ----------------------------------------------------------------------------- resume
def _scale_for(precision):
    return {"mixed_manual": lambda: DynamicLossScaler(init_scale=2.0 ** 20, growth_interval=4),
            "amp_fp16": lambda: 2.0 ** 20,
            "fp16_naive": lambda: 4.0}.get(precision, lambda: "auto")


@pytest.mark.parametrize("precision", list(RECIPES))
def test_interrupted_and_resumed_run_is_bit_identical(precision, tmp_path):
    opt = "sgd" if precision == "fp16_naive" else "adam"
    common = dict(precision=precision, optimizer=opt, lr=0.05 if opt == "sgd" else 3e-3,
                  epochs=2, progress=False, device="cpu", seed=5)
    tr, va = digits_loaders(batch_size=128, device="cpu")
    full = train(_dropout_mlp(), tr, val_loader=va, loss_scale=_scale_for(precision)(), **common)

    ckpt = tmp_path / "run.pt"
    part = train(_dropout_mlp(), tr, val_loader=va, loss_scale=_scale_for(precision)(),
                 checkpoint_path=ckpt, max_steps=7, **common)
    assert part.stopped_early and part.steps == 7 and part.val_history == []
    tr2, va2 = digits_loaders(batch_size=128, device="cpu")  # as in a new process
    rest = train(_dropout_mlp(seed=99), tr2, val_loader=va2, loss_scale=_scale_for(precision)(),
                 checkpoint_path=ckpt, resume=True, **common)
    assert _same_weights(rest.model, full.model)
    assert _canon(rest.history) == _canon(full.history) and len(full.history) == 24
    assert _canon(rest.val_history) == _canon(full.val_history) and len(full.val_history) == 2
    assert not rest.stopped_early
    if precision in ("mixed_manual", "amp_fp16"):
        assert full.skipped_steps >= 1  # the resumed stretch includes the scaler's state


@pytest.mark.parametrize("precision", ["fp32", "mixed_manual", "amp_fp16"])
def test_crash_in_callback_then_resume_from_last_checkpoint(precision, tmp_path):
    # A DataLoader without a generator (global-RNG shuffling) and a stop exactly at an epoch end.
    s = digits_tensors(device="cpu")
    make_loader = lambda: DataLoader(TensorDataset(s.x_train[:512], s.y_train[:512]),  # noqa: E731
                                     batch_size=64, shuffle=True)
    common = dict(precision=precision, lr=3e-3, steps=20, progress=False, device="cpu")
    full = train(_dropout_mlp(), make_loader(), loss_scale=_scale_for(precision)(), **common)

    class Crash(Exception):
        pass

    def crash_at_11(record):
        if record["step"] == 10:
            raise Crash

    ckpt = tmp_path / "ckpt" / "run.pt"
    with pytest.raises(Crash):
        train(_dropout_mlp(), make_loader(), loss_scale=_scale_for(precision)(), checkpoint_path=ckpt,
              checkpoint_every=4, callback=crash_at_11, **common)
    saved = torch.load(ckpt, weights_only=True)
    st = saved["state"]
    assert (st["step"], st["epoch"], st["batch"]) == (8, 0, 8)  # saved at an epoch's end
    assert os.listdir(ckpt.parent) == ["run.pt"]  # atomic write: no temporary files left
    rest = train(_dropout_mlp(seed=7), make_loader(), loss_scale=_scale_for(precision)(),
                 checkpoint_path=ckpt, resume=True, checkpoint_every=4, **common)
    assert _same_weights(rest.model, full.model)
    assert _canon(rest.history) == _canon(full.history)


def test_resume_auto_mismatch_and_missing(tmp_path, loaders):
    tr, _ = loaders
    ckpt = tmp_path / "a.pt"
    with pytest.raises(FileNotFoundError, match="resume='auto'"):
        train(_mlp(), tr, steps=2, checkpoint_path=ckpt, resume=True, progress=False, device="cpu")
    r = train(_mlp(), tr, steps=3, checkpoint_path=ckpt, resume="auto", progress=False, device="cpu")
    assert r.steps == 3 and ckpt.exists()
    more = train(_mlp(), tr, steps=5, checkpoint_path=ckpt, resume="auto", progress=False, device="cpu")
    assert more.steps == 5 and _canon(more.history[:3]) == _canon(r.history)  # continued
    with pytest.raises(ValueError, match="precision: checkpoint 'fp32' vs now 'amp_bf16'"):
        train(_mlp(), tr, steps=5, precision="amp_bf16", checkpoint_path=ckpt, resume=True,
              progress=False, device="cpu")


# ----------------------------------------------------------------------------- details
def test_grad_clip_limits_the_update(fixed_batches):
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    r = train(model, fixed_batches, optimizer="sgd", lr=0.1, steps=1, grad_clip=0.01,
              progress=False, device="cpu")
    assert r.history[0]["grad_norm"] > 0.01  # the recorded norm is the unclipped one
    delta = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(delta) == pytest.approx(0.1 * 0.01, rel=1e-4)


def test_result_helpers_and_evaluate(loaders):
    tr, va = loaders
    r = train(_mlp(), tr, val_loader=va, steps=5, progress=False, device="cpu")
    d = r.as_dict_of_lists()
    assert set(d) == {"step", "epoch", "loss", "scale", "skipped", "grad_norm", "lr"}
    assert all(len(v) == 5 for v in d.values()) and d["lr"] == [1e-3] * 5
    assert r.final_loss == d["loss"][-1] and r.skipped_steps == 0 and r.losses == d["loss"]
    assert len(r.val_history) == 1 and r.val_history[0]["step"] == 5  # end of training
    rng = torch.get_rng_state()
    again = evaluate(r.model, va, device="cpu")
    assert torch.equal(rng, torch.get_rng_state())  # evaluation leaves the RNG alone
    assert again["val_accuracy"] == r.val_accuracy and again["val_loss"] == pytest.approx(r.val_loss)
    assert "TrainResult(precision='fp32', steps=5" in repr(r)
    assert isinstance(r, TrainResult) and r.model is not None


def test_progress_bar_shows_loss_and_scale(loaders, capsys):
    tr, _ = loaders
    train(_mlp(), tr, steps=3, precision="amp_fp16", progress=True, device="cpu")
    err = capsys.readouterr().err
    assert "loss=" in err and "scale=65536" in err and "3/3" in err


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"precision": "fp8"}, ValueError, "allowed: ['fp32', 'fp16_naive'"),
    ({"optimizer": "lamb"}, ValueError, "allowed: 'adam', 'adamw', 'sgd'"),
    ({"optimizer": 3}, TypeError, "optimizer must be"),
    ({"epochs": 1, "steps": 3}, ValueError, "exactly one of epochs"),
    ({"steps": None}, ValueError, "exactly one of epochs"),
    ({"steps": 0}, ValueError, "steps must be a positive int"),
    ({"lr": -1.0}, ValueError, "lr must be a positive"),
    ({"loss_scale": 128.0}, ValueError, "does not scale the loss"),
    ({"precision": "fp16_naive", "loss_scale": "dynamic"}, ValueError, "fixed loss scale"),
    ({"precision": "amp_fp16", "loss_scale": DynamicLossScaler()}, TypeError, "GradScaler"),
    ({"loss_scale": "huge"}, ValueError, "not understood"),
    ({"checkpoint_every": 2}, ValueError, "checkpoint_path"),
    ({"resume": True}, ValueError, "checkpoint_path"),
    ({"optimizer_kwargs": {"lr": 1.0}}, ValueError, "lr=..."),
    ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
])
def test_bad_input_errors(loaders, kwargs, exc, words):
    tr, _ = loaders
    args = {"steps": 1, "progress": False, "device": "cpu", **kwargs}
    with pytest.raises(exc) as info:
        train(_mlp(), tr, **args)
    assert words in str(info.value)


def test_bad_loaders():
    with pytest.raises(ValueError, match="train_loader is empty"):
        train(_mlp(), [], steps=1, progress=False, device="cpu")
    with pytest.raises(TypeError, match="must have a len"):
        train(_mlp(), iter([(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))]), steps=1,
              progress=False, device="cpu")
    with pytest.raises(ValueError, match="pair \\(inputs, targets\\)"):
        train(_mlp(), [torch.zeros(2, 64)], steps=1, progress=False, device="cpu")
    with pytest.raises(TypeError, match="nn.Module"):
        train(copy.deepcopy, [], steps=1)


_KILLED_RUNS = r"""
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_train import _dropout_mlp, _scale_for
from course_lib.data import digits_loaders
from course_lib.train import train
commons, folder = {commons!r}, {folder!r}

def die(record):
    if record["step"] == 9:               # after the checkpoint at step 8: lose step 9 and the rest
        os.kill(os.getpid(), signal.SIGKILL)

for p, common in commons.items():         # one forked child per recipe, killed mid-run
    pid = os.fork()
    if pid == 0:
        tr, va = digits_loaders(batch_size=128, device="cpu")
        train(_dropout_mlp(), tr, val_loader=va, loss_scale=_scale_for(p)(), checkpoint_every=4,
              checkpoint_path=os.path.join(folder, p + ".pt"), callback=die, **common)
        os._exit(0)                       # not reached: the callback kills the child
    _, status = os.waitpid(pid, 0)
    print(p, "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else status)
"""


def test_a_killed_process_resumes_bit_identically_for_every_recipe(tmp_path):
    import subprocess
    import sys

    commons = {p: dict(precision=p, optimizer="sgd" if p == "fp16_naive" else "adam",
                       lr=0.05 if p == "fp16_naive" else 3e-3, epochs=2, progress=False,
                       device="cpu", seed=5) for p in RECIPES}
    script = _KILLED_RUNS.format(tests=os.path.dirname(__file__), commons=commons, folder=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == [w for p in commons for w in (p, "killed")], out.stdout + out.stderr
    tr, va = digits_loaders(batch_size=128, device="cpu")
    for p, common in commons.items():
        full = train(_dropout_mlp(), tr, val_loader=va, loss_scale=_scale_for(p)(), **common)
        rest = train(_dropout_mlp(seed=42), tr, val_loader=va, loss_scale=_scale_for(p)(),
                     checkpoint_path=tmp_path / f"{p}.pt", resume=True, **common)
        assert rest.history[8]["step"] == 8 and len(rest.history) == 24
        assert _same_weights(rest.model, full.model), p
        assert _canon(rest.history) == _canon(full.history), p
