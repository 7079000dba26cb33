"""course_lib.bench: timer semantics (fake clock), threads, torch.compile plumbing, FLOPs, MFU.

No timing is asserted: durations come from an injected fake clock, and real
measurements are only checked for shape (positive, finite, thread count).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib import bench
from course_lib.bench import flops as flops_mod
from course_lib.models import MLP


class FakeClock:
    """A clock whose consecutive (start, stop) readings give the listed durations."""

    def __init__(self, durations):
        self.ticks = []
        now = 100.0
        for d in durations:
            self.ticks += [now, now + d]
            now += d + 7.0  # gaps between calls must not count
        self.i = 0

    def __call__(self):
        t = self.ticks[self.i]
        self.i += 1
        return t


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


# ----------------------------------------------------------------------------- timer


def test_warmup_calls_are_run_but_not_timed():
    fn, clock = Counter(), FakeClock([1.0] * 5)
    t = bench.measure(fn, warmup=3, repeats=5, device="cpu", clock=clock)
    assert fn.calls == 8 and t.n == 5 and t.warmup == 3
    assert clock.i == 10  # the clock was read only around the 5 timed calls


def test_median_iqr_min_mean_on_fake_clock():
    t = bench.measure(Counter(), warmup=0, repeats=5, device="cpu", clock=FakeClock([4.0, 1.0, 3.0, 2.0, 5.0]))
    assert (t.median_s, t.iqr_s, t.min_s, t.mean_s) == (3.0, 2.0, 1.0, 3.0)
    assert t.samples == (4.0, 1.0, 3.0, 2.0, 5.0)


def test_iqr_matches_linear_interpolation_quantiles():
    durations = [1.0, 2.0, 3.0, 4.0, 10.0, 0.5]
    t = bench.measure(Counter(), warmup=0, repeats=6, device="cpu", clock=FakeClock(durations))
    q = torch.quantile(torch.tensor(durations, dtype=torch.float64), torch.tensor([0.25, 0.5, 0.75],
                                                                                  dtype=torch.float64))
    assert t.iqr_s == pytest.approx(float(q[2] - q[0]), abs=1e-12)   # independent oracle
    assert t.median_s == pytest.approx(float(q[1]), abs=1e-12) == 2.5


def test_single_sample_has_zero_spread():
    t = bench.Timing.from_samples([0.25], threads=1, device="cpu", warmup=0)
    assert (t.median_s, t.iqr_s, t.n) == (0.25, 0.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        bench.Timing.from_samples([], threads=1, device="cpu", warmup=0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        bench.Timing.from_samples([1.0, -1.0], threads=1, device="cpu", warmup=0)


def test_min_time_keeps_timing_and_max_repeats_caps():
    t = bench.measure(Counter(), warmup=0, repeats=2, min_time_s=5.0, device="cpu", clock=FakeClock([1.0] * 20))
    assert t.n == 5
    t = bench.measure(Counter(), warmup=0, repeats=2, min_time_s=100.0, max_repeats=7, device="cpu",
                      clock=FakeClock([1.0] * 20))
    assert t.n == 7


def test_threads_and_device_are_recorded():
    t = bench.measure(lambda: torch.ones(16).sum(), warmup=1, repeats=3, device="cpu")
    assert t.threads == torch.get_num_threads() and t.device == "cpu"
    assert all(math.isfinite(s) and s >= 0 for s in t.samples)
    assert "median" in str(t) and "cpu" in str(t)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"repeats": 0}, ValueError, "repeats must be a positive int"),
    ({"warmup": -1}, ValueError, "warmup must be a non-negative int"),
    ({"min_time_s": -1.0}, ValueError, "min_time_s"),
    ({"repeats": 5, "max_repeats": 3}, ValueError, "max_repeats"),
    ({"device": "mps"}, ValueError, "unknown device type"),
    ({"device": 3}, TypeError, "device must be"),
    ({"clock": 1.0}, TypeError, "clock must be"),
])
def test_measure_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        bench.measure(Counter(), **kwargs)
    with pytest.raises(TypeError, match="fn must be"):
        bench.measure(42, device="cpu")


def test_cuda_device_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        t = bench.measure(lambda: torch.ones(16, device="cuda").sum(), repeats=2, device="cuda")
        assert t.device.startswith("cuda")
    else:
        with pytest.raises(ValueError, match="is_available"):
            bench.measure(Counter(), device="cuda")


def test_unsynchronized_time_on_cpu_explains_not_applicable():
    r = bench.unsynchronized_time(lambda: torch.ones(8).sum(), device="cpu", repeats=3)
    assert r.device == "cpu" and r.applicable is False and r.unsynchronized_s is None
    assert "synchronous" in r.explanation and r.synchronized.n == 3
    assert "Not applicable" in str(r)


# ----------------------------------------------------------------------------- threads


def test_thread_scaling_records_counts_and_restores():
    before = torch.get_num_threads()
    ts = bench.thread_scaling(lambda: torch.ones(32).sum(), threads=(2, 1), warmup=0, repeats=2, device="cpu")
    assert [t.threads for t in ts] == [2, 1]
    assert torch.get_num_threads() == before


def test_thread_scaling_restores_after_an_exception():
    before = torch.get_num_threads()

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        bench.thread_scaling(boom, threads=(before + 1,), device="cpu")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads,exc", [((), ValueError), (2, TypeError), ((0,), ValueError),
                                         ((1.5,), TypeError), ("12", TypeError)])
def test_thread_scaling_rejects_bad_counts(threads, exc):
    with pytest.raises(exc):
        bench.thread_scaling(Counter(), threads=threads)


# ----------------------------------------------------------------------------- torch.compile


def test_measure_compiled_separates_first_call_from_steady_state():
    x = torch.randn(16, 16)
    r = bench.measure_compiled(lambda: torch.relu(x @ x).sum(), backend="eager", warmup=1, repeats=3,
                               device="cpu")
    assert r.ok and r.error is None, r.error
    assert r.first_call_s > 0 and r.steady.n == 3 and r.eager.n == 3
    assert r.compile_overhead_s == pytest.approx(r.first_call_s - r.steady.median_s)
    assert "first call" in str(r)


def test_measure_compiled_reports_failure_instead_of_raising():
    r = bench.measure_compiled(lambda: torch.ones(4).sum(), backend="no-such-backend", repeats=2, device="cpu")
    assert not r.ok and "no-such-backend" in r.error
    assert r.first_call_s is None and r.steady is None and r.compile_overhead_s is None
    assert r.eager is not None and "could not compile" in str(r)


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("batch,fan_in,fan_out,bias", [(3, 8, 4, True), (5, 7, 11, False), (1, 1, 1, True)])
def test_linear_forward_flops_are_2_b_in_out(batch, fan_in, fan_out, bias):
    lin = nn.Linear(fan_in, fan_out, bias=bias)
    x = torch.randn(batch, fan_in)
    assert bench.count_flops(lin, x) == 2 * batch * fan_in * fan_out == bench.matmul_flops(batch, fan_in, fan_out)


def test_linear_backward_is_twice_forward_only_when_the_input_needs_grad():
    lin = nn.Linear(8, 4)
    fwd = 2 * 3 * 8 * 4
    x = torch.randn(3, 8)
    # input needs grad: grad wrt input and wrt weight, two matmuls of the forward's size
    assert bench.count_flops(lin, x.clone().requires_grad_(), backward=True) == fwd + 2 * fwd
    # input is data: autograd skips the input gradient, backward = 1x forward
    assert bench.count_flops(lin, x, backward=True) == fwd + fwd


def test_count_flops_restores_module_grads_and_needs_a_grad_output():
    lin = nn.Linear(4, 2)
    assert lin.weight.grad is None
    bench.count_flops(lin, torch.randn(3, 4), backward=True)
    assert lin.weight.grad is None
    marker = torch.full_like(lin.weight, 7.0)
    lin.weight.grad = marker
    bench.count_flops(lin, torch.randn(3, 4), backward=True)
    assert lin.weight.grad is marker and torch.all(marker == 7.0)
    with torch.no_grad(), pytest.raises(ValueError, match="does not require grad"):
        bench.count_flops(lin, torch.randn(3, 4), backward=True)
    with pytest.raises(TypeError, match="fn_or_model"):
        bench.count_flops(3, torch.randn(2))


def test_flops_by_module_breakdown_adds_up():
    m = MLP(hidden=(32,))
    x = torch.randn(5, 64)
    d = bench.flops_by_module(m, x)
    assert d["Global"] == d["MLP"] == bench.count_flops(m, x)
    assert d["MLP.net.0"] == 2 * 5 * 64 * 32 and d["MLP.net.2"] == 2 * 5 * 32 * 10
    assert d["MLP.net.0"] + d["MLP.net.2"] == d["MLP.net"]


def test_training_step_flops_hand_computed():
    torch.manual_seed(0)
    m = MLP(hidden=(32,))
    x, y = torch.randn(5, 64), torch.randint(0, 10, (5,))
    fwd0, fwd2 = 2 * 5 * 64 * 32, 2 * 5 * 32 * 10
    # layer 0 sees data (backward = weight grad only), layer 2 needs both gradients
    expected = (fwd0 + fwd2) + fwd0 + 2 * fwd2
    assert bench.training_step_flops(m, x, y, nn.functional.cross_entropy) == expected
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(TypeError, match="model must be Module"):
        bench.training_step_flops(lambda t: t, x, y, nn.functional.cross_entropy)


def test_transformer_flops_per_token_formula_and_flags():
    n, L, T, d = 10_000, 4, 128, 64
    assert bench.transformer_flops_per_token(n, L, T, d) == 6 * n + 12 * L * T * d
    assert bench.transformer_flops_per_token(n, L, T, d, include_attention=False) == 6 * n
    assert bench.transformer_flops_per_token(n, L, T, d, embedding_params=2000) == 6 * 8000 + 12 * L * T * d
    assert bench.transformer_flops_per_token(n, L, T, d, embedding_params=2000,
                                             include_embeddings=True) == 6 * n + 12 * L * T * d
    with pytest.raises(ValueError, match="cannot exceed"):
        bench.transformer_flops_per_token(10, 1, 1, 1, embedding_params=11)
    with pytest.raises(TypeError, match="include_attention must be a bool"):
        bench.transformer_flops_per_token(10, 1, 1, 1, include_attention=1)
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        bench.transformer_flops_per_token(10, 0, 1, 1)


def test_mfu_arithmetic():
    assert bench.mfu(3e12, 0.5, 12e12) == 0.5
    assert bench.mfu(1.0, 1.0, 4.0) == 0.25
    assert bench.mfu(989.5e12, 1.0, 989.5e12) == 1.0
    for bad in ({"flops_per_step": 0.0}, {"seconds_per_step": -1.0}, {"peak_flops": float("inf")}):
        args = {"flops_per_step": 1.0, "seconds_per_step": 1.0, "peak_flops": 1.0} | bad
        with pytest.raises(ValueError):
            bench.mfu(**args)


def test_cpu_peak_is_measured_positive_and_bad_precision_is_refused():
    from course_lib.bench.peak import peak_flops

    before = torch.get_num_threads()
    peak = peak_flops("fp32", "cpu", cpu_size=96, cpu_repeats=1)
    assert math.isfinite(peak.flops) and peak.flops > 0 and peak.source.startswith("measured")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="allowed"):
        peak_flops("int8", "cpu")


def test_flops_module_exports_are_documented():
    for name in flops_mod.__all__:
        assert getattr(flops_mod, name).__doc__


# ============================================================================= chapter 09 additions
# precision, simulated device, wall-clock timer, matmul sweep, peaks, training steps, threads, sweep/CLI

import json

from course_lib.bench import matmul as matmul_mod
from course_lib.bench import peak as peak_mod
from course_lib.bench import precision as prec
from course_lib.bench import step as step_mod
from course_lib.bench import sweep as sweep_mod
from course_lib.bench import thread_advice
from course_lib.bench.simulated import SimulatedDevice
from course_lib.bench.wallclock import measure_wall_clock


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


# ----------------------------------------------------------------------------- precision


def test_fp32_matmul_precision_sets_and_restores_also_on_error(restore_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    with prec.fp32_matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"   # torch 2.13's mapping
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(KeyError), prec.fp32_matmul_precision("high"):
        raise KeyError("boom")
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="unknown precision 'tf32'"):
        with prec.fp32_matmul_precision("tf32"):
            pass


def test_fp32_matmul_precision_restores_a_state_written_with_the_new_api(restore_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.fp32_precision = "tf32"   # new API: the legacy getter now raises
    try:
        with pytest.raises(RuntimeError, match="mix of the legacy and new"):
            torch.get_float32_matmul_precision()
        with prec.fp32_matmul_precision("high"):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def test_tf32_support_rule_for_cpus():
    assert not prec.tf32_support("cpu", cpu_flags={"avx512_bf16": True}).available
    yes = prec.tf32_support("cpu", cpu_flags={"amx_fp16": True})
    assert yes.available and "AMX-FP16" in yes.reason and "available" in str(yes)
    with pytest.raises(TypeError, match="cpu_flags"):
        prec.tf32_support("cpu", cpu_flags=["amx_fp16"])


def test_matmul_precision_effect_highest_is_identical_and_high_follows_the_rule(restore_matmul_precision):
    same = prec.matmul_precision_effect("highest", "cpu", size=64)
    assert not same["changed"] and same["error_precision"] == same["error_highest"] < 1e-5
    if not prec.tf32_support("cpu").available:   # no AMX-FP16: torch's oneDNN TF32 path is unused
        high = prec.matmul_precision_effect("high", "cpu", size=256)
        assert not high["changed"]


def test_backward_matmuls_read_the_precision_when_they_run(restore_matmul_precision):
    """Why a forward-only context is not enough (needs a mode that changes a CPU matmul)."""
    if not prec.matmul_precision_effect("medium", "cpu", size=512)["changed"]:
        pytest.skip("'medium' does not change a float32 matmul on this CPU (no oneDNN BF16 path)")
    torch.manual_seed(0)
    lin, x = nn.Linear(512, 512), torch.randn(512, 512)

    def grad(backward_mode):
        lin.zero_grad(set_to_none=True)
        out = lin(x)
        with prec.fp32_matmul_precision(backward_mode):
            out.square().sum().backward()
        return lin.weight.grad.clone()

    assert not torch.equal(grad("medium"), grad("highest"))


# ----------------------------------------------------------------------------- simulated device, wall clock


def test_simulated_device_queues_work_and_synchronize_waits():
    dev = SimulatedDevice(launch_overhead_s=0.25, start_s=10.0)
    dev.launch(2.0)
    assert dev.clock() == 10.25 and dev.pending_s == 2.0
    dev.launch(1.0)                       # queued behind the first
    assert dev.clock() == 10.5 and dev.pending_s == 2.75
    dev.synchronize()
    assert dev.clock() == 13.25 and dev.pending_s == 0.0
    dev.synchronize()                     # idle: no time passes
    assert dev.clock() == 13.25 and (dev.launches, dev.synchronizations) == (2, 2)
    with pytest.raises(ValueError, match="seconds"):
        dev.launch(-1.0)


def test_simulated_kernel_refuses_unplanned_calls():
    dev = SimulatedDevice()
    k = dev.kernel([1.0])
    k()
    with pytest.raises(RuntimeError, match="exactly warmup \\+ repeats"):
        k()
    with pytest.raises(ValueError, match="at least one"):
        dev.kernel([])


def test_measure_wall_clock_protocol_on_a_simulated_device():
    dev = SimulatedDevice(launch_overhead_s=0.0, start_s=0.0)
    k = dev.kernel([100.0, 100.0, 1.0, 3.0, 2.0, 4.0])   # two slow warm-up calls
    t = measure_wall_clock(k, synchronize=dev.synchronize, clock=dev.clock, warmup=2, repeats=4)
    assert t.samples == (1.0, 3.0, 2.0, 4.0)            # warm-up excluded, its queue drained first
    assert t.median_s == 2.5 and t.warmup == 2 and t.device == "synchronised wall clock"
    assert dev.synchronizations == 8                      # before each of the 8 clock readings
    with pytest.raises(TypeError, match="synchronize must be"):
        measure_wall_clock(k, synchronize=None)


def test_unsynchronised_reading_on_the_simulated_device_is_the_launch_only():
    dev = SimulatedDevice(launch_overhead_s=1e-6, start_s=0.0)
    k = dev.kernel([1e-3] * 3)
    t = bench.measure(k, warmup=0, repeats=3, device="cpu", clock=dev.clock)  # CPU path: no sync
    assert t.median_s == pytest.approx(1e-6) and dev.pending_s > 1e-3


# ----------------------------------------------------------------------------- matmul sweep


def test_alignment_labels():
    assert [matmul_mod.alignment(n) for n in (1, 2, 12, 24, 4096, 4095)] == ["odd", "x2", "x4", "x8", "x16", "odd"]


def test_matmul_sweep_order_sizes_for_and_callback(restore_matmul_precision):
    seen = []
    rows = matmul_mod.matmul_sweep([8, 9], ["fp32", "tf32", "fp16"], ["nn", "tn"], device="cpu", repeats=1,
                                   sizes_for={"fp16": [4]}, on_result=seen.append)
    assert [(r.setting, r.layout, r.size) for r in rows] == [
        ("fp32", "nn", 8), ("fp32", "nn", 9), ("fp32", "tn", 8), ("fp32", "tn", 9),
        ("tf32", "nn", 8), ("tf32", "nn", 9), ("tf32", "tn", 8), ("tf32", "tn", 9),
        ("fp16", "nn", 4), ("fp16", "tn", 4)]
    assert seen == rows
    r = rows[0]
    assert r.tflops == pytest.approx(2 * 8 ** 3 / r.median_s / 1e12) and r.threads == torch.get_num_threads()
    assert torch.get_float32_matmul_precision() == "highest"      # the tf32 rows restored it
    for kwargs, match in (({"settings": ["fp64"]}, "setting"), ({"layouts": ["tt"]}, "layout"),
                          ({"sizes_for": {"bf16": [2]}}, "sizes_for key")):
        with pytest.raises(ValueError, match=match):
            matmul_mod.matmul_sweep([4], **({"settings": ["fp32"]} | kwargs), device="cpu", repeats=1)


def test_matmul_table_compares_with_fp32_of_the_same_layout_and_size():
    R = matmul_mod.MatmulResult
    rows = [R("fp32", 8, "nn", 4.0, 0.0, 1.0, "cpu", 1, 3), R("fp32", 8, "nt", 2.0, 0.0, 1.0, "cpu", 1, 3),
            R("bf16", 8, "nn", 1.0, 0.0, 1.0, "cpu", 1, 3), R("bf16", 8, "nt", 1.0, 0.0, 1.0, "cpu", 1, 3),
            R("bf16", 16, "nt", 1.0, 0.0, 1.0, "cpu", 1, 3)]
    table = matmul_mod.matmul_table(rows)
    assert [row[-1] for row in table] == ["1.00x", "1.00x", "4.00x", "2.00x", "-"]
    assert rows[0].as_dict()["alignment"] == "x8"


# ----------------------------------------------------------------------------- peaks


def test_cpu_peak_is_the_fastest_layout(monkeypatch):
    speeds = {"nn": 1.0, "nt": 7.0, "tn": 3.0}
    monkeypatch.setattr(peak_mod, "matmul_throughput",
                        lambda size, setting, layout, **kw: matmul_mod.MatmulResult(
                            setting, size, layout, 1.0, 0.0, speeds[layout], "cpu", 1, 1,
                            min_s=2 * size ** 3 / (speeds[layout] * 2e12)))   # fastest call: 2x the median's speed
    p = peak_mod.peak_flops("fp16", "cpu")
    assert p.flops == pytest.approx(14e12) and "(nt)" in p.source and "measured" in p.source
    with pytest.raises(ValueError, match="precision"):
        peak_mod.peak_flops("fp64", "cpu")


@pytest.mark.parametrize("name,key,expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5e12),     # dense, not the datasheet's sparse 1979
    ("NVIDIA H100 80GB HBM3", "tf32", 494.5e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
    ("Tesla T4", "bf16", None),                       # no BF16 tensor cores
    ("Some Future GPU", "fp16", None),                # not in the table: no guess
])
def test_gpu_peak_comes_from_the_table(monkeypatch, name, key, expected):
    monkeypatch.setattr(peak_mod, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    p = peak_mod.peak_flops(key)
    assert p.flops == expected
    assert p.source if expected else ("not in" in p.source or "no bf16" in p.source)


# ----------------------------------------------------------------------------- training steps


def _tiny_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_step_settings_and_their_precision_keys():
    keys = {name: s.precision_key for name, s in step_mod.STEP_SETTINGS.items()}
    assert keys == {"fp32": "fp32", "fp16_naive": "fp16", "mixed_manual": "fp16", "amp_fp16": "fp16",
                    "amp_bf16": "bf16", "bf16_pure": "bf16", "tf32": "tf32"}
    assert step_mod.get_step_setting(step_mod.RECIPES["amp_bf16"]).name == "amp_bf16"
    with pytest.raises(ValueError, match="unknown step setting"):
        step_mod.get_step_setting("fp8")
    with pytest.raises(ValueError, match="fp32_matmul_precision"):
        step_mod.StepSetting("x", step_mod.RECIPES["fp32"], "medium")


@pytest.mark.parametrize("setting", ["fp32", "amp_fp16", "amp_bf16", "bf16_pure", "mixed_manual"])
def test_training_step_leaves_the_model_alone_and_measures_the_predicted_bill(setting):
    torch.manual_seed(0)
    model = MLP(hidden=(16,))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _tiny_batch()
    step = step_mod.TrainingStep(model, x, y, setting, device="cpu")
    step()
    step()
    assert step.steps == 2 and all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    mem = step.memory()
    assert mem["measured_state"] == mem["predicted_state"] > 0          # bytes, exact
    assert mem["saved_for_backward"] > 0 and "cuda_peak_allocated" not in mem


def test_tf32_setting_covers_forward_and_backward_and_restores(restore_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    seen = {}

    def record_backward(grad):
        seen.setdefault("backward", torch.get_float32_matmul_precision())

    def loss_fn(logits, targets):
        seen["forward"] = torch.get_float32_matmul_precision()
        logits.register_hook(record_backward)
        return nn.functional.cross_entropy(logits, targets)

    step = step_mod.TrainingStep(MLP(hidden=(8,)), *_tiny_batch(), "tf32", device="cpu", loss_fn=loss_fn)
    step()
    assert seen == {"forward": "high", "backward": "high"}
    assert torch.get_float32_matmul_precision() == "highest"


def test_benchmark_training_step_derived_numbers():
    torch.manual_seed(0)
    model, (x, y) = MLP(hidden=(8,)), _tiny_batch(4)
    peak = peak_mod.Peak("fp32", 1e9, "test")
    r = step_mod.benchmark_training_step(model, x, y, "fp32", device="cpu", warmup=0, repeats=2, peak=peak,
                                         memory=False)
    assert r.flops_per_step == bench.training_step_flops(model, x, y, nn.functional.cross_entropy) == 10112
    assert r.samples_per_s == 4 / r.timing.median_s
    assert r.mfu == pytest.approx(10112 / r.timing.median_s / 1e9) and r.memory == {}
    d = r.as_dict()
    assert d["peak"]["flops"] == 1e9 and d["mfu"] == r.mfu and json.dumps(d)
    no_peak = step_mod.benchmark_training_step(model, x, y, "fp32", device="cpu", warmup=0, repeats=1,
                                               flops_per_step=123, memory=False)
    assert no_peak.mfu is None and no_peak.flops_per_step == 123
    table = step_mod.step_table([r, no_peak])
    assert table[0][4] == "1.00x" and table[1][-2] == "n/a" and "MFU" in table.headers


def test_time_inference_copies_the_model_and_runs_in_inference_mode():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.modes = []

        def forward(self, x):
            self.modes.append((torch.is_inference_mode_enabled(), x.dtype))
            return self.lin(x)

    probe = Probe()
    t = step_mod.time_inference(probe, torch.randn(3, 4), "bf16_pure", device="cpu", warmup=1, repeats=2)
    assert t.n == 2 and probe.modes == [] and probe.lin.weight.dtype == torch.float32   # a copy ran


# ----------------------------------------------------------------------------- threads, sweep, CLI


def test_thread_counts():
    assert thread_advice.thread_counts(1) == [1]
    assert thread_advice.thread_counts(12) == [1, 2, 4, 8, 12]
    assert thread_advice.thread_counts(16) == [1, 2, 4, 8, 16]


def test_best_threads_picks_the_fastest_count_on_a_fake_clock():
    # thread_scaling -> measure(clock=...): 1 thread: 4 s per call, 2 threads: 1 s per call
    a = thread_advice.best_threads(Counter(), "fake", threads=(1, 2), warmup=0, repeats=2,
                                   clock=FakeClock([4.0, 4.0, 1.0, 1.0]))
    assert a.best_threads == 2 and a.speedup_over_one(a.best) == 4.0
    rows = thread_advice.thread_table([a])
    assert [r[1] for r in rows] == ["1", "2"] and rows[1][-1] == "best" and rows[1][-2] == "4.00x"


def test_busy_warning():
    assert sweep_mod.busy_warning([4.0, 1, 1], None, 2).startswith("WARNING")
    assert sweep_mod.busy_warning(None, None, 2) is None
    assert sweep_mod.busy_warning([1.0, 1, 1], [2.0, 1, 1], 2) is None


def test_default_cpu_config_is_small_and_has_tf32_only_where_available():
    c = sweep_mod.default_config("cpu")
    sizes = c.matmul_sizes
    assert max(sizes) <= 512 and any(s % 8 for s in sizes) and any(s % 16 == 0 for s in sizes)
    assert ("tf32" in c.step_settings) == prec.tf32_support("cpu").available
    assert set(c.step_settings) >= {"fp32", "amp_fp16", "amp_bf16"}
    assert json.dumps(c.as_dict())


def _tiny_config():
    return sweep_mod.SweepConfig("cpu", (8,), ("fp32", "bf16"), ("nn",), 1,
                                 (sweep_mod._mlp(8, (8,), 4, "tiny"),), ("fp32", "amp_bf16"), 1, 2, (1,))


def test_cli_writes_json_and_plot(monkeypatch, tmp_path, capsys):
    real = sweep_mod.run_sweep
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda dev, progress: real(dev, config=_tiny_config(),
                                                                           progress=False))
    from course_lib.__main__ import main

    out = tmp_path / "r.json"
    assert main(["bench", "--device", "cpu", "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert {"date", "torch", "machine", "threads", "load_before", "matmul", "peaks", "training_steps",
            "threads_question", "config"} <= set(report)
    assert report["training_steps"]["tiny"]["rows"][1]["setting"] == "amp_bf16"
    assert (tmp_path / "r.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "== Matmul throughput ==" in printed and "JSON report written" in printed


def test_bench_command_line_errors(capsys):
    from course_lib.__main__ import main

    assert main(["bench", "no-such-benchmark"]) == 2
    assert main(["bench", "--device", "cpu", "formats"]) == 2
    if not torch.cuda.is_available():
        assert sweep_mod.cli(device="cuda") == 2
    err = capsys.readouterr().err
    assert "unknown benchmark" in err and "belong to the main sweep" in err


def test_count_step_flops_on_meta_matches_real_counting_and_counts_sdpa():
    from course_lib.models import TinyTransformer

    torch.manual_seed(0)
    mlp, (x, y) = MLP(), _tiny_batch(5)
    assert step_mod.count_step_flops(mlp, x, y) == bench.training_step_flops(mlp, x, y, nn.functional.cross_entropy)
    assert all(p.device.type == "cpu" and p.grad is None for p in mlp.parameters())
    idx, tgt = torch.randint(0, 32, (2, 16)), torch.randint(0, 32, (2, 16))
    explicit = TinyTransformer(32, block_size=16, d_model=16, n_heads=2, n_layers=1, sdpa=False)
    fused = TinyTransformer(32, block_size=16, d_model=16, n_heads=2, n_layers=1, sdpa=True)
    counted = step_mod.count_step_flops(explicit, idx, tgt)
    assert counted == bench.training_step_flops(explicit, idx, tgt, step_mod._default_loss)
    # the fused kernel is counted like the explicit matmuls (on CPU tensors torch 2.13 counts it as 0:
    # pytorch/pytorch#195460)
    assert step_mod.count_step_flops(fused, idx, tgt) == counted
