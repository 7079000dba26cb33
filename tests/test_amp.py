"""course_lib.amp: the dtype tracer and the live autocast policy, with torch as the oracle."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.amp import (PROBE_OPS, SOURCE_POLICY, autocast_policy, check_autocast, dtype_name,
                            policy_differences, trace_dtypes)
from course_lib.models import MLP, TinyTransformer

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]


# --------------------------------------------------------------------------- tracer
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_dispatch_mode_sees_ops_after_autocast_cast_them(dtype):
    torch.manual_seed(0)
    lin, x = nn.Linear(4, 3), torch.randn(2, 4)
    trace = trace_dtypes(lin, x, dtype=dtype)
    ops = [r.op for r in trace.compute_rows()]
    # autocast casts input, weight and bias (fp32 -> dtype), then runs addmm in dtype
    assert ops == ["aten::_to_copy"] * 3 + ["aten::addmm"]
    assert all(r.input_dtypes == (FP32,) and r.output_dtypes == (dtype,) for r in trace.casts())
    addmm = trace.filter(op="aten::addmm")[0]
    assert addmm.input_dtypes == (dtype,) * 3 and addmm.output_dtypes == (dtype,)
    # oracle: the same call under autocast, untraced, gives the traced output dtype and values
    with torch.amp.autocast("cpu", dtype=dtype):
        expected = lin(x)
    assert expected.dtype == dtype and torch.equal(trace.output, expected)


def test_without_autocast_nothing_is_cast():
    torch.manual_seed(0)
    trace = trace_dtypes(nn.Linear(4, 3), torch.randn(2, 4), enabled=False)
    assert trace.casts() == []
    assert [(r.op, r.output_dtype) for r in trace.compute_rows()] == [("aten::addmm", FP32)]
    assert trace.table().startswith("no autocast: 1 ops")


def test_mlp_rows_name_their_modules():
    torch.manual_seed(0)
    trace = trace_dtypes(MLP(hidden=(16, 8)), torch.randn(3, 64))
    addmm = trace.filter(op="aten::addmm")
    assert [(r.module, r.module_type) for r in addmm] == [("net.0", "Linear"), ("net.2", "Linear"),
                                                         ("net.4", "Linear")]
    assert all(r.output_dtype == BF16 for r in addmm)
    relu = trace.filter(op="aten::relu")
    assert [(r.module, r.output_dtype) for r in relu] == [("net.1", BF16), ("net.3", BF16)]
    # the first Linear casts its fp32 input too; later ones get bf16 activations already
    assert [len(trace.filter(module=f"net.{i}", op="aten::_to_copy")) for i in (0, 2, 4)] == [3, 2, 2]
    assert trace.summary() == {"aten::_to_copy": {"bfloat16": 7}, "aten::addmm": {"bfloat16": 3},
                               "aten::relu": {"bfloat16": 2}}
    by_module = trace.summary(by_module=True)
    assert by_module[("net.2", "aten::addmm")] == {"bfloat16": 1}
    # (B, 64) input: the root's flatten returns it as is, so no op runs in the root itself
    assert [r for r in trace.rows if r.module == ""] == []


def test_transformer_on_cpu_runs_softmax_and_layernorm_as_their_inputs_come():
    torch.manual_seed(0)
    model = TinyTransformer(vocab_size=20, block_size=8, d_model=16, n_heads=2, n_layers=1, sdpa=False)
    trace = trace_dtypes(model, torch.randint(0, 20, (2, 8)))
    softmax = trace.filter(op="aten::_softmax")
    # CPU autocast has no fp32 rule for softmax: bf16 scores in, bf16 probabilities out
    assert [(r.module, r.input_dtypes, r.output_dtype) for r in softmax] == \
        [("blocks.0.attn", (BF16,), BF16)]
    # the residual stream stays fp32 (fp32 embeddings + bf16 branch promote to fp32),
    # so every LayerNorm gets and returns fp32
    ln = trace.filter(op="aten::native_layer_norm")
    assert [r.module for r in ln] == ["blocks.0.ln1", "blocks.0.ln2", "ln_f"]
    assert all(r.input_dtypes[0] == FP32 and r.output_dtype == FP32 for r in ln)
    adds = [r for r in trace.filter(module="blocks.0", op="aten::add") if r.module == "blocks.0"]
    assert [r.input_dtypes for r in adds] == [(FP32, BF16), (FP32, BF16)]
    assert all(r.output_dtype == BF16 for r in trace.filter(op="aten::addmm"))
    assert trace.output.dtype == BF16
    assert "blocks.0.attn.qkv (Linear)" in trace.table()


def test_module_used_twice_and_ops_after_a_child_return_to_the_parent():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.lin(self.lin(x)))

    torch.manual_seed(0)
    model = Twice()
    trace = trace_dtypes(model, torch.randn(2, 4))
    assert [(r.module, r.op) for r in trace.compute_rows()] == [
        ("lin", "aten::_to_copy"), ("lin", "aten::_to_copy"), ("lin", "aten::_to_copy"),
        ("lin", "aten::addmm"),
        ("lin", "aten::addmm"),  # second call: autocast's cast cache reuses the bf16 weight and bias
        ("", "aten::tanh")]
    assert _hook_counts(model) == [(0, 0), (0, 0)]


def test_hooks_are_removed_even_when_the_call_raises():
    model = MLP(hidden=(8,))
    with pytest.raises(ValueError, match="expects 64 features"):
        trace_dtypes(model, torch.randn(2, 5))
    assert all(c == (0, 0) for c in _hook_counts(model))


def test_function_with_root_and_backward_trace():
    torch.manual_seed(0)
    lin, x, y = nn.Linear(4, 3), torch.randn(5, 4), torch.randint(0, 3, (5,))
    trace = trace_dtypes(lambda a: F.cross_entropy(lin(a), y), x, root=lin, backward=True)
    fwd = trace.filter(phase="forward")
    assert [r.module for r in fwd if r.op == "aten::addmm"] == [""]
    # the loss is computed outside any module, in fp32 (CPU fp32 list: cross_entropy_loss)
    outside = [r for r in fwd if r.module is None and not r.is_view]
    assert outside[0].op == "aten::_to_copy" and outside[0].output_dtype == FP32
    assert trace.output.dtype == FP32
    bwd = trace.filter(phase="backward")
    assert bwd and all(r.module is None for r in bwd)
    # the weight gradient matmul runs in bf16; the grads of the cast weight and bias
    # are cast back to fp32 (the backward of _to_copy)
    assert any(r.op == "aten::mm" and r.output_dtype == BF16 for r in bwd)
    back_casts = [r for r in bwd if r.op == "aten::_to_copy" and r.output_dtype == FP32]
    assert len(back_casts) == 2 and lin.weight.grad.dtype == FP32
    assert "backward" in trace.table()


def test_table_summary_and_html_agree_with_rows():
    torch.manual_seed(0)
    trace = trace_dtypes(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), torch.randn(2, 4))
    counted = sum(sum(v.values()) for v in trace.summary().values())
    assert counted == len(trace.compute_rows()) == len(trace.table().splitlines()) - 2
    assert sum(sum(v.values()) for v in trace.summary(views=True).values()) == len(trace.rows)
    html_text = trace._repr_html_()
    assert html_text.count("<tr>") == len(trace.compute_rows()) + 1 and "native_layer_norm" in html_text
    assert "... 3 more rows" in trace.table(max_rows=2)


def test_tracer_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn_or_model"):
        trace_dtypes(3, torch.ones(1))
    with pytest.raises(ValueError, match="device_type"):
        trace_dtypes(torch.sin, torch.ones(1), device_type="tpu")
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        trace_dtypes(torch.sin, torch.ones(1), dtype=torch.float32)
    with pytest.raises(ValueError, match="backward=True"):
        trace_dtypes(torch.sin, torch.ones(1), backward=True)


# --------------------------------------------------------------------------- policy
@pytest.fixture(scope="module")
def cpu_policies():
    return {dt: autocast_policy("cpu", dt) for dt in (BF16, FP16)}


@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_matmul_is_lowered_as_torch_does_it(cpu_policies, dtype):
    a = torch.randn(4, 4)
    with torch.amp.autocast("cpu", dtype=dtype):
        oracle = (a @ a).dtype
    assert oracle == dtype and cpu_policies[dtype]["matmul"] == "lower"


@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_cpu_policy_matches_torch_source(cpu_policies, dtype):
    # SOURCE_POLICY["cpu"] was read from aten/src/ATen/autocast_mode.cpp (AutocastCPU lists);
    # e.g. mse_loss, nll_loss, cross_entropy_loss, prod: fp32; cat, stack: promote;
    # softmax, layer_norm, exp, sum: absent, so unchanged.
    policy = cpu_policies[dtype]
    assert list(policy) == list(PROBE_OPS)
    assert dict(policy) == SOURCE_POLICY["cpu"]


@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_policy_evidence_matches_direct_calls(cpu_policies, dtype):
    ev = cpu_policies[dtype].evidence
    x = (torch.rand(4, 8) + 0.5).to(dtype)
    with torch.amp.autocast("cpu", dtype=dtype):
        assert ev["softmax"]["low_in"] == dtype_name(F.softmax(x, -1).dtype) == dtype_name(dtype)
        assert ev["layer_norm"]["low_in"] == dtype_name(F.layer_norm(x, (8,)).dtype)
        assert ev["mse_loss"]["low_in"] == dtype_name(F.mse_loss(x, x).dtype) == "float32"
    assert ev["mse_loss"]["low_in_eager"] == dtype_name(F.mse_loss(x, x).dtype) == dtype_name(dtype)
    # cat of (fp32, low): one up-cast inserted by autocast, none without it
    assert ev["cat"]["promote_casts"] == (1, 0)


def test_cpu_and_cuda_lists_differ(cpu_policies):
    diff = policy_differences(cpu_policies[BF16], SOURCE_POLICY["cuda"])
    for op in ("softmax", "log_softmax", "layer_norm", "group_norm", "exp", "log", "sum", "cumsum"):
        assert diff[op] == ("unchanged", "fp32")
    assert diff["addcmul"] == ("unchanged", "promote") and diff["cat"] == ("promote", "unchanged")
    for op in ("matmul", "linear", "mse_loss", "cross_entropy", "gelu"):
        assert op not in diff
    table = cpu_policies[BF16].table(compare_with=SOURCE_POLICY["cuda"], label="cuda (source)")
    assert sum("<-- differs" in line for line in table.splitlines()) == len(diff)


def test_cuda_policy_runs_unchanged_or_says_why_not():
    if torch.cuda.is_available():
        assert dict(autocast_policy("cuda", torch.float16)) == SOURCE_POLICY["cuda"]
    else:
        with pytest.raises(RuntimeError, match="is_available"):
            autocast_policy("cuda", torch.float16)


def test_policy_subset_and_bad_arguments():
    assert list(autocast_policy(ops=["gelu", "mm"])) == ["gelu", "mm"]
    with pytest.raises(ValueError, match="unknown op 'conv7d'"):
        autocast_policy(ops=["conv7d"])
    with pytest.raises(TypeError, match="list of op names"):
        autocast_policy(ops="softmax")
    with pytest.raises(ValueError, match="float32"):
        autocast_policy(dtype=torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        check_autocast("cpu", "bf16")
