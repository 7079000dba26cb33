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


def test_measure_cpu_peak_flops_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    peak = bench.measure_cpu_peak_flops(torch.float32, size=96, threads=2, budget_s=0.02)
    assert math.isfinite(peak) and peak > 0
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="floating-point"):
        bench.measure_cpu_peak_flops(torch.int32, size=8)
    with pytest.raises(TypeError, match="dtype must be dtype"):
        bench.measure_cpu_peak_flops("float32", size=8)


def test_flops_module_exports_are_documented():
    for name in flops_mod.__all__:
        assert getattr(flops_mod, name).__doc__
