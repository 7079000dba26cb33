"""course_lib.memory, course_lib.env and course_lib.device."""
import pytest
import torch

from course_lib import memory
from course_lib.device import DEVICE_ENV, default_device, tune_cpu_threads
from course_lib.env import autocast_support, cpu_flags, environment_report


def test_parameter_bytes_counts_parameters_once_in_the_dtype():
    lin = torch.nn.Linear(10, 5)
    assert memory.parameter_bytes(lin, torch.float16) == 55 * 2
    tied = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    assert memory.parameter_bytes(tied, torch.float32) == 55 * 4
    assert memory.parameter_bytes(torch.nn.BatchNorm1d(3), torch.float32) == 6 * 4
    with pytest.raises(TypeError, match="torch.nn.Module"):
        memory.parameter_bytes("model", torch.float16)
    with pytest.raises(TypeError, match="torch.dtype"):
        memory.parameter_bytes(lin, "float16")


@pytest.mark.parametrize("recipe, per_param", [("fp32", 16), ("amp_fp16", 16), ("amp_bf16", 16),
                                               ("mixed_manual", 16), ("fp16_naive", 8),
                                               ("bf16_pure", 8)])
def test_training_state_bytes_with_adam(recipe, per_param):
    bill = memory.training_state_bytes(1000, recipe, "adam")
    assert bill["total"] == per_param * 1000
    assert bill["total"] == sum(v for k, v in bill.items() if k != "total")


def test_training_state_bytes_matches_real_adam_state():
    model = torch.nn.Linear(30, 20)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 30)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    real = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)
    assert memory.training_state_bytes(n, "fp32", "adam")["optimizer_state"] == real


def test_training_state_bytes_bad_input():
    with pytest.raises(ValueError, match=r"allowed: \['fp32', 'fp16_naive', 'mixed_manual'"):
        memory.training_state_bytes(10, "fp8")
    with pytest.raises(ValueError, match="unknown optimizer"):
        memory.training_state_bytes(10, "fp32", "lion")
    with pytest.raises(ValueError, match="non-negative int"):
        memory.training_state_bytes(-1, "fp32")


def test_environment_report_on_this_machine():
    report = environment_report()
    assert report.torch == torch.__version__
    assert report.device == default_device()
    text = str(report)
    assert "autocast bfloat16" in text and "Python" in text
    assert "<table>" in report._repr_html_()
    if not torch.cuda.is_available():
        assert report.gpu is None and "none" in text
    assert isinstance(cpu_flags(), dict)


def test_autocast_support_reports_the_dtype_that_came_out():
    assert autocast_support("cpu", torch.bfloat16).startswith("works")
    verdict = autocast_support("cpu", torch.float64)        # CPU autocast refuses float64
    assert verdict.startswith(("no effect", "not supported")), verdict


def test_device_override(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="allowed: 'cpu', 'cuda'"):
        default_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match="is_available"):
            default_device()


def test_tune_cpu_threads_sets_and_returns():
    before = torch.get_num_threads()
    try:
        assert tune_cpu_threads(1) == before
        if default_device() == "cpu":
            assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="positive int"):
            tune_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_measured_bill_matches_the_predicted_one():
    from course_lib.master import MasterWeightOptimizer

    model = torch.nn.Sequential(torch.nn.Linear(12, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    n = sum(p.numel() for p in model.parameters())
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 12)).sum().backward()
    adam.step()
    assert memory.measure_training_state(model, adam) == memory.training_state_bytes(n, "fp32", "adam")

    model16 = torch.nn.Linear(12, 7).half()
    n16 = sum(p.numel() for p in model16.parameters())
    opt = MasterWeightOptimizer(model16, torch.optim.Adam, lr=1e-3)
    model16(torch.randn(5, 12).half()).float().sum().backward()
    opt.step()
    for p in model16.parameters():
        p.grad = torch.zeros_like(p)
    assert memory.measure_training_state(model16, opt) == memory.training_state_bytes(n16, "mixed_manual", "adam")
    with pytest.raises(TypeError, match="torch.optim.Optimizer or a MasterWeightOptimizer"):
        memory.measure_training_state(model16, "adam")


def test_step_peak_counts_the_fp32_master_gradients_the_persistent_bill_leaves_out():
    from course_lib.master import MasterWeightOptimizer

    model16 = torch.nn.Linear(12, 7).half()
    n = sum(p.numel() for p in model16.parameters())
    opt = MasterWeightOptimizer(model16, torch.optim.Adam, lr=1e-3)
    model16(torch.randn(5, 12).half()).float().sum().backward()
    peak = memory.measure_step_peak(model16, opt, opt.step)
    assert peak["master_gradients"] == 4 * n and peak["total"] == 20 * n
    assert all(m.grad is None for m in opt.master_params)   # freed again after the step
    model = torch.nn.Linear(12, 7)
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 12)).sum().backward()
    assert memory.measure_step_peak(model, adam, adam.step)["total"] == 16 * n
    with pytest.raises(TypeError, match="MasterWeightOptimizer"):
        memory.measure_step_peak(model, "adam", adam.step)
