"""Chapter 10 exercises: what a Keras dtype policy means; a torch MLP's weights in Keras's layout
(notebooks/10_keras_appendix.ipynb).

Both are graded without Keras (plain Python, torch and NumPy), so a learner who
skips the optional Keras install still gets every point; tests/test_keras_compat.py
checks the references against Keras itself when it is installed.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from course_lib.grading.compare import same, short
from course_lib.grading.inputs import torch_generator
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.keras_compat import POLICY_NAMES, policy_dtypes, torch_to_keras_weights
from course_lib.models import MLP


# -- 10.policy_dtypes --------------------------------------------------------------------------
def _policy_cases(rng):
    names = list(POLICY_NAMES)
    rng.shuffle(names)
    for name in names:
        yield Case(f"policy {name!r}", (name,))


def _compare_policy(expected, got):
    if not isinstance(got, tuple) or len(got) != 2 or not all(isinstance(d, str) for d in got):
        return f"expected a tuple of two dtype names such as ('float16', 'float32'), got {short(got)}"
    return same()(expected, got)


def _policy_by_prefix(policy):
    compute = policy.removeprefix("mixed_")
    return compute, ("float32" if policy.startswith("mixed_") else compute)


def _policy_by_partition(policy):
    head, sep, tail = policy.partition("_")
    return (tail, "float32") if head == "mixed" and sep else (policy, policy)


def _policy_by_table(policy):
    return {"float32": ("float32", "float32"), "float64": ("float64", "float64"),
            "float16": ("float16", "float16"), "bfloat16": ("bfloat16", "bfloat16"),
            "mixed_float16": ("float16", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}[policy]


def _sixteen_bit_is_mixed(policy):
    compute = policy.removeprefix("mixed_")
    return compute, ("float32" if compute in ("float16", "bfloat16") else compute)


def _policy_swapped(policy):
    compute, variables = _policy_by_prefix(policy)
    return variables, compute


def _mixed_stores_16_bit(policy):
    compute = policy.removeprefix("mixed_")
    return compute, compute


# -- 10.torch_to_keras_weights -----------------------------------------------------------------
def _randomize(model: nn.Module, g: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _weights_cases(rng):
    g = torch_generator(rng)
    with torch.random.fork_rng(devices=[]):  # building modules must not move the caller's RNG
        yield Case("the course's MLP (64 -> 128 -> 64 -> 10)", (_randomize(MLP(), g),))
        n_in, n_out = rng.randint(2, 12), rng.randint(13, 20)
        yield Case(f"one layer ({n_in} -> {n_out}, logistic regression)",
                   (_randomize(MLP(in_features=n_in, hidden=(), num_classes=n_out), g),))
        widths = [rng.randint(2, 24) for _ in range(rng.randint(2, 4))]
        yield Case(f"random widths {widths}",
                   (_randomize(MLP(in_features=rng.randint(2, 24), hidden=tuple(widths),
                                   num_classes=rng.randint(2, 12)), g),))
        n = rng.randint(3, 9)
        yield Case(f"edge: square layers ({n} -> {n} -> {n} -> {n}: a missing transpose keeps the shapes)",
                   (_randomize(MLP(in_features=n, hidden=(n, n), num_classes=n), g),))
        a, b, c = rng.randint(2, 10), rng.randint(11, 16), rng.randint(2, 10)
        yield Case(f"edge: a Linear without bias (Linear({a}, {b}, bias=False), ReLU, Linear({b}, {c}))",
                   (_randomize(nn.Sequential(nn.Linear(a, b, bias=False), nn.ReLU(), nn.Linear(b, c)), g),))


def _compare_weights(expected, got):
    if not isinstance(got, (list, tuple)):
        return f"expected a list of NumPy arrays, got {type(got).__name__}"
    if len(got) != len(expected):
        return f"expected {len(expected)} arrays, got {len(got)}"
    for i, (e, a) in enumerate(zip(expected, got)):
        if not isinstance(a, np.ndarray):
            return f"at [{i}]: expected a NumPy array, got {type(a).__name__}"
        if a.dtype != e.dtype:
            return f"at [{i}]: dtype: expected {e.dtype}, got {a.dtype}"
        if a.shape != e.shape:
            return f"at [{i}]: shape: expected {e.shape}, got {a.shape}"
        reason = same(bitwise=True)(torch.from_numpy(np.ascontiguousarray(e)),
                                    torch.from_numpy(np.ascontiguousarray(a)))
        if reason:
            return f"at [{i}]: {reason}"
    return None


def _weights_from_parameters(model):
    return [p.detach().numpy().T if p.dim() == 2 else p.detach().numpy() for p in model.parameters()]


def _weights_from_state_dict(model):
    return [np.ascontiguousarray(np.transpose(v.cpu().numpy())) for v in model.state_dict().values()]


def _weights_with_mT(model):
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out.append(m.weight.mT.contiguous().detach().numpy())
            out += [m.bias.detach().numpy()] if m.bias is not None else []
    return out


def _weights_reshaped(model):
    return [p.detach().numpy().reshape(p.shape[1], p.shape[0]) if p.dim() == 2 else p.detach().numpy()
            for p in model.parameters()]


def _weights_torch_layout(model):
    return [p.detach().numpy() for p in model.parameters()]


def _weights_in_float16(model):
    return [p.detach().half().numpy().T if p.dim() == 2 else p.detach().half().numpy()
            for p in model.parameters()]


def _weights_bias_first(model):
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out += [m.bias.detach().numpy()] if m.bias is not None else []
            out.append(m.weight.detach().numpy().T)
    return out


def _weights_assume_bias(model):
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out += [m.weight.detach().numpy().T, np.asarray(m.bias.detach().numpy())]
    return out


EXERCISES = [
    Exercise(
        id="10.policy_dtypes",
        title="What a Keras dtype policy computes in and stores",
        points=1,
        reference=policy_dtypes,
        cases=_policy_cases,
        compare=_compare_policy,
        hint="a 'mixed_' policy computes in the 16-bit type named after the prefix but keeps its "
             "variables in float32; every other policy uses its one dtype for both",
        alternatives=(
            Alternative(_policy_by_prefix, "str.removeprefix and startswith"),
            Alternative(_policy_by_partition, "str.partition on the first underscore"),
            Alternative(_policy_by_table, "a lookup table of the six policies"),
        ),
        mistakes=(
            Mistake(_sixteen_bit_is_mixed, "treats 'float16' like 'mixed_float16' (float32 variables)"),
            Mistake(_policy_swapped, "returns (variable dtype, compute dtype)"),
            Mistake(_mixed_stores_16_bit, "mixed policies store 16-bit variables"),
        ),
    ),
    Exercise(
        id="10.torch_to_keras_weights",
        title="A torch MLP's weights in the order and layout Keras's set_weights takes",
        points=3,
        reference=torch_to_keras_weights,
        cases=_weights_cases,
        compare=_compare_weights,
        hint="nn.Linear stores weight as (out_features, in_features) and computes x @ W.T + b; a Keras "
             "Dense kernel is (in_features, out_features). Per layer: kernel, then bias if there is one; "
             "keep float32",
        alternatives=(
            Alternative(_weights_from_parameters, "model.parameters() with NumPy's .T"),
            Alternative(_weights_from_state_dict, "state_dict() with np.transpose"),
            Alternative(_weights_with_mT, "nn.Linear modules with Tensor.mT"),
        ),
        mistakes=(
            Mistake(_weights_reshaped, "reshapes the weight to (in, out) instead of transposing it"),
            Mistake(_weights_torch_layout, "keeps torch's (out, in) layout"),
            Mistake(_weights_in_float16, "rounds the weights to float16 for a mixed_float16 model"),
            Mistake(_weights_bias_first, "puts each bias before its kernel"),
            Mistake(_weights_assume_bias, "assumes every Linear has a bias"),
        ),
    ),
]
