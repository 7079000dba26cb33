"""course_lib.keras_compat: the import guard (Keras absent, disabled, on another backend), the policy
and weight helpers (oracles: independent NumPy/torch computations), and -- when Keras 3 is
installed -- each helper against Keras itself on the PyTorch backend."""
from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from torch import nn

import course_lib.keras_compat as kc
from course_lib.models import MLP


# --------------------------------------------------------------------------- the import guard
@pytest.fixture
def clean_env(monkeypatch):
    """No COURSE_NO_KERAS, no KERAS_BACKEND (restored afterwards: import_keras may setdefault it)."""
    monkeypatch.delenv(kc.DISABLE_ENV, raising=False)
    monkeypatch.delenv(kc.BACKEND_ENV, raising=False)
    return monkeypatch


def _fake_keras(version="3.9.0", backend="torch"):
    module = types.ModuleType("keras")
    module.__version__ = version
    module.backend = NS(backend=lambda: backend)
    return module


def test_disabled_by_environment_variable(clean_env, capsys):
    clean_env.setenv(kc.DISABLE_ENV, "1")
    status = kc.import_keras()
    assert not status.available and status.keras is None and status.version is None
    assert "COURSE_NO_KERAS='1' is set" in str(status) and "Unset COURSE_NO_KERAS" in str(status)
    status.skip("a policy table")
    out = capsys.readouterr().out
    assert out.startswith("[Keras not available: COURSE_NO_KERAS='1' is set] This cell would show a policy table.")


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_does_not_disable(clean_env, value):
    clean_env.setenv(kc.DISABLE_ENV, value)
    clean_env.setitem(sys.modules, "keras", _fake_keras())
    assert kc.import_keras().available


def test_not_installed_is_reported_with_the_install_command(clean_env, capsys):
    clean_env.setitem(sys.modules, "keras", None)  # makes `import keras` raise ModuleNotFoundError
    status = kc.import_keras()
    assert not status.available
    assert status.reason == "keras is not installed"
    assert 'pip install -e ".[keras]"' in str(status) and kc.KERAS_REQUIREMENT in str(status)
    status.skip("the loss-scale table")
    out = capsys.readouterr().out
    assert "This cell would show the loss-scale table." in out and 'pip install -e ".[keras]"' in out
    assert os.environ[kc.BACKEND_ENV] == "torch"  # set before the import was tried


def test_an_explicit_other_backend_is_respected_not_overridden(clean_env):
    clean_env.delitem(sys.modules, "keras", raising=False)
    clean_env.setenv(kc.BACKEND_ENV, "jax")
    status = kc.import_keras("torch")
    assert not status.available
    assert "KERAS_BACKEND='jax' is set" in status.reason and "'torch'" in status.fix
    assert os.environ[kc.BACKEND_ENV] == "jax"
    assert "keras" not in sys.modules  # refused before importing anything


def test_already_imported_on_another_backend_needs_a_restart(clean_env):
    clean_env.setitem(sys.modules, "keras", _fake_keras(backend="jax"))
    status = kc.import_keras("torch")
    assert not status.available and status.backend == "jax"
    assert "already imported on the 'jax' backend" in status.reason and "Restart the kernel" in status.fix
    ok = kc.import_keras("jax")
    assert ok.available and ok.backend == "jax" and ok.version == "3.9.0"
    assert str(ok) == "Keras 3.9.0 on the jax backend"


def test_keras_2_is_refused(clean_env):
    clean_env.setitem(sys.modules, "keras", _fake_keras(version="2.15.0", backend="tensorflow"))
    status = kc.import_keras()
    assert not status.available and "found Keras 2.15.0" in status.reason and "Keras 3" in status.fix


def test_a_failing_backend_import_is_reported_with_its_cause(clean_env):
    clean_env.delitem(sys.modules, "keras", raising=False)

    def broken(name):
        print("backend start-up noise", file=sys.stderr)
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    clean_env.setattr(kc.importlib, "import_module", broken)
    status = kc.import_keras()
    assert not status.available
    assert "ModuleNotFoundError: No module named 'tensorflow'" in status.reason
    assert "backend start-up noise" in status.reason  # the captured stderr explains the failure
    assert "KERAS_BACKEND='torch'" in status.fix


def test_import_keras_rejects_a_non_string_backend():
    with pytest.raises(TypeError, match="backend must be str, got int"):
        kc.import_keras(3)


# --------------------------------------------------------------------------- policies
def test_policy_dtypes_of_every_name():
    assert {p: kc.policy_dtypes(p) for p in kc.POLICY_NAMES} == {
        "float32": ("float32", "float32"), "float64": ("float64", "float64"),
        "float16": ("float16", "float16"), "bfloat16": ("bfloat16", "bfloat16"),
        "mixed_float16": ("float16", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}


def test_policy_dtypes_names_the_allowed_policies():
    with pytest.raises(ValueError, match="unknown policy 'mixed_float32'; allowed: 'float32'"):
        kc.policy_dtypes("mixed_float32")


class _CastLayer:
    """A stand-in for a Keras layer: casts its input to its compute dtype."""

    def __init__(self, name, policy, weight_dtypes):
        compute, variables = kc.policy_dtypes(policy)
        self.name, self.dtype_policy = name, NS(name=policy)
        self.compute_dtype, self.variable_dtype = compute, variables
        self.weights = [NS(dtype=d) for d in weight_dtypes]

    def __call__(self, x):
        return x.to(getattr(torch, self.compute_dtype))


def test_layer_dtype_rows_reads_policies_and_runs_layers_in_order():
    model = NS(layers=[_CastLayer("a", "mixed_float16", ["float32", "float32"]),
                       _CastLayer("b", "float32", ["float32", torch.float16]),
                       _CastLayer("c", "float16", [])])
    rows = kc.layer_dtype_rows(model, torch.zeros(2, 3))
    assert [(r["layer"], r["policy"], r["compute"], r["variables"], r["weights"], r["output"]) for r in rows] == [
        ("a", "mixed_float16", "float16", "float32", "float32", "float16"),
        ("b", "float32", "float32", "float32", "float16, float32", "float32"),
        ("c", "float16", "float16", "float16", "-", "float16")]
    assert "output" not in kc.layer_dtype_rows(model)[0]


def test_layer_dtype_rows_needs_layers():
    with pytest.raises(TypeError, match="Keras model with .layers, got Linear"):
        kc.layer_dtype_rows(nn.Linear(2, 2))


def test_format_dtype_rows_aligns_columns():
    text = kc.format_dtype_rows([{"layer": "dense", "output": "float16"}, {"layer": "d", "output": "x"}])
    assert text.splitlines() == ["layer  output", "-----  -------", "dense  float16", "d      x"]
    assert kc.format_dtype_rows([]) == "(no layers)"


# --------------------------------------------------------------------------- weights
def _numpy_forward(weights, use_bias, x):
    """The Keras Dense stack computed in float64 NumPy: x @ kernel + bias, ReLU between layers."""
    it, h = iter(weights), x.astype(np.float64)
    for i, has_bias in enumerate(use_bias):
        h = h @ next(it).astype(np.float64)
        if has_bias:
            h = h + next(it).astype(np.float64)
        if i < len(use_bias) - 1:
            h = np.maximum(h, 0.0)
    return h


@pytest.mark.parametrize("model, use_bias", [
    (MLP(), [True, True, True]),
    (MLP(in_features=5, hidden=(5, 5), num_classes=5), [True, True, True]),  # square: a transpose matters
    (nn.Sequential(nn.Linear(4, 7, bias=False), nn.ReLU(), nn.Linear(7, 3)), [False, True]),
])
def test_torch_to_keras_weights_computes_the_same_function(model, use_bias):
    torch.manual_seed(0)
    x = torch.randn(6, model[0].in_features if isinstance(model, nn.Sequential) else model.in_features)
    weights = kc.torch_to_keras_weights(model)
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in weights)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    # float64 on both sides, the same float32 weights: only the order of additions differs (~1e-15)
    np.testing.assert_allclose(_numpy_forward(weights, use_bias, x.numpy()), expected, rtol=1e-12, atol=1e-12)


def test_torch_to_keras_weights_layout_and_independence():
    layer = nn.Linear(3, 2)
    kernel, bias = kc.torch_to_keras_weights(layer)
    assert kernel.shape == (3, 2) and np.array_equal(kernel, layer.weight.detach().numpy().T)
    assert np.array_equal(bias, layer.bias.detach().numpy())
    w_before, b_before = layer.weight.detach().clone(), layer.bias.detach().clone()
    kernel += 1.0
    bias += 1.0  # new arrays: writing to them leaves the model alone
    assert torch.equal(layer.weight.detach(), w_before) and torch.equal(layer.bias.detach(), b_before)


def test_torch_to_keras_weights_of_a_half_model_are_exact_float32():
    model = MLP(hidden=(8,)).half()
    weights = kc.torch_to_keras_weights(model)
    assert [w.dtype for w in weights] == [np.float32] * 4
    assert np.array_equal(weights[0], model.net[0].weight.detach().float().numpy().T)  # fp16 -> fp32 is exact


def test_torch_to_keras_weights_refuses_other_parameters():
    with pytest.raises(ValueError, match=r"nn.Linear layers only; the model also has the parameters \['1.weight'"):
        kc.torch_to_keras_weights(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)))
    with pytest.raises(TypeError, match="model must be Module"):
        kc.torch_to_keras_weights([nn.Linear(2, 2)])


# --------------------------------------------------------------------------- loss scale
def test_loss_scale_of_reads_each_kind_of_optimizer():
    assert kc.loss_scale_of(NS(initial_scale=1024.0, built=False, dynamic_scale=None)) == 1024.0
    assert kc.loss_scale_of(NS(initial_scale=1024.0, built=True, dynamic_scale=NS(value=torch.tensor(512.0)))) == 512.0
    assert kc.loss_scale_of(NS(loss_scale_factor=None)) == 1.0
    assert kc.loss_scale_of(NS(loss_scale_factor=8.0)) == 8.0


def test_keras_like_scaler_follows_gradscaler_from_keras_start():
    """The oracle is torch.amp.GradScaler itself, started at Keras's 2**15, on real overflowed gradients."""
    pattern = [False, False, False, True, False, True, True, False, False, False, False]
    ours = kc.keras_like_scaler(dynamic_growth_steps=3)
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    gs = torch.amp.GradScaler("cpu", init_scale=kc.KERAS_INITIAL_SCALE, growth_interval=3)
    for overflow in pattern:
        assert ours.get_scale() == gs.get_scale()
        opt.zero_grad()
        gs.scale((w * (float("inf") if overflow else 1.0)).sum()).backward()
        gs.step(opt)
        gs.update()
        ours.update(overflow)
    assert ours.get_scale() == gs.get_scale()
    assert kc.keras_like_scaler().get_scale() == 2.0 ** 15 and kc.keras_like_scaler().growth_interval == 2000


# --------------------------------------------------------------------------- against Keras itself
@pytest.fixture(scope="module")
def keras():
    if os.environ.get(kc.DISABLE_ENV, "").strip() not in ("", "0"):
        pytest.skip(f"{kc.DISABLE_ENV} is set")
    status = kc.import_keras("torch")
    if not status.available:
        pytest.skip(str(status))
    yield status.keras
    status.keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def policy(keras):
    """Set the global policy for one test; back to float32 afterwards."""
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)
    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def test_policy_dtypes_match_keras(keras):
    for name in kc.POLICY_NAMES:
        p = keras.DTypePolicy(name)
        assert (p.compute_dtype, p.variable_dtype) == kc.policy_dtypes(name), name


def test_keras_twin_computes_what_the_torch_mlp_computes(keras):
    torch.manual_seed(0)
    mlp = MLP(hidden=(32, 16))
    twin = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    twin.set_weights(kc.torch_to_keras_weights(mlp))
    x = torch.randn(20, 64)
    with torch.no_grad():
        got, expected = twin(x), mlp(x)
    # float32, same weights, same inputs; Keras runs mm then add, torch addmm, so the sums of 64 (then
    # 32, 16) products are rounded in another order. Bound: n * u * sum|x_i w_i| with u = 2**-24 ~ 6e-8,
    # n = 64 and sum|x_i w_i| of a few units here (weights ~ U(+-1/8), x ~ N(0, 1)): ~1e-5.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layer_rows_of_a_real_mixed_model_and_a_late_policy_change(keras, policy):
    policy("mixed_float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2, dtype="float32")])
    policy("float16")
    late = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    late.layers[0].dtype_policy = "float32"  # after it was built: its kernel stays float16
    rows = kc.layer_dtype_rows(model, torch.zeros(1, 4))
    assert [(r["policy"], r["weights"], r["output"]) for r in rows] == [
        ("mixed_float16", "float32", "float16"), ("float32", "float32", "float32")]
    (row,) = kc.layer_dtype_rows(late, torch.zeros(1, 4))
    assert (row["compute"], row["weights"], row["output"]) == ("float32", "float16", "float32")
    with pytest.raises(AttributeError):
        model.layers[-1].dtype = "float32"  # the tutorial's line: read-only in Keras 3


def test_loss_scale_optimizer_matches_keras_like_scaler_and_skips(keras):
    pattern = [False, False, False, True, False, True, True, False, False, False, False, True]
    variable = keras.Variable(np.ones(3, dtype="float32"))
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0), dynamic_growth_steps=3)
    ours = kc.keras_like_scaler(dynamic_growth_steps=3)
    assert kc.loss_scale_of(lso) == kc.KERAS_INITIAL_SCALE  # before the first step: initial_scale
    for overflow in pattern:
        scale = kc.loss_scale_of(lso)
        assert scale == ours.get_scale()
        assert float(lso.scale_loss(torch.tensor(3.0))) == 3.0 * scale
        before = variable.value.detach().cpu().numpy().copy()
        grad = torch.full((3,), float("inf") if overflow else scale)  # a scaled gradient of 1.0
        lso.apply([grad], [variable])
        ours.update(overflow)
        if overflow:
            assert np.array_equal(variable.value.detach().cpu().numpy(), before)  # skipped
        else:
            assert np.array_equal(variable.value.detach().cpu().numpy(), before - 1.0)  # unscaled: SGD(1.0) subtracts 1.0
    assert kc.loss_scale_of(keras.optimizers.Adam()) == 1.0


def test_compile_wraps_only_mixed_float16(keras, policy):
    for name, expected in (("mixed_float16", "LossScaleOptimizer"), ("float16", "Adam"), ("float32", "Adam")):
        policy(name)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
        assert type(model.optimizer).__name__ == expected, name
