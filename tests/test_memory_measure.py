"""course_lib.memory measurements: saved_activation_bytes (exact, hand-computed) and cuda_peak_memory."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.memory import cuda_peak_memory, saved_activation_bytes

B, IN, HID, OUT = 3, 8, 16, 4


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))


def run(model, autocast_dtype=None, parameters=True):
    x = torch.randn(B, IN)

    def fn():
        with torch.amp.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
            return model(x)

    return saved_activation_bytes(fn, model.parameters() if parameters else None)


# Hand computation for Linear(IN,HID) -> ReLU -> Linear(HID,OUT) on a (B, IN) input that does
# not require grad:
#   layer 0 (addmm) saves its input x (for the weight gradient); its weight is not needed because
#     no gradient flows to x;
#   ReLU saves its output; layer 2 saves the same tensor as its input (one storage), and saves its
#     weight (as the view weight.t()) for the input gradient.
FP32_ACTIVATIONS = 4 * (B * IN + B * HID)          # 96 + 192 = 288 bytes
FP32_WEIGHT = 4 * HID * OUT                         # 256 bytes, the parameter itself


@pytest.mark.parametrize("parameters", [True, False])
def test_fp32_linear_relu_saved_bytes_exact(parameters):
    r = run(make_model(), parameters=parameters)
    assert r["activation_bytes"] == FP32_ACTIVATIONS == 288
    assert r["parameter_bytes"] == FP32_WEIGHT == 256
    assert r["parameter_cast_bytes"] == 0
    assert r["extra_bytes"] == 288
    assert r["saved_tensors"] == 4 and r["storages"] == 3
    relu_out = [t for t in r["tensors"] if t["shape"] == (B, HID)]
    assert len(relu_out) == 1 and relu_out[0]["times_saved"] == 2


@pytest.mark.parametrize("parameters", [True, False])
def test_bf16_autocast_halves_activations_and_saves_a_weight_copy(parameters):
    r = run(make_model(), autocast_dtype=torch.bfloat16, parameters=parameters)
    # autocast casts x and both weights to bf16 for the matmuls; the saved activations are bf16:
    assert r["activation_bytes"] == 2 * (B * IN + B * HID) == FP32_ACTIVATIONS // 2 == 144
    # layer 2 saves the bf16 *copy* of its weight (extra memory), not the fp32 parameter
    assert r["parameter_cast_bytes"] == 2 * HID * OUT == 128
    assert r["parameter_bytes"] == 0
    assert r["extra_bytes"] == 272
    assert {t["dtype"] for t in r["tensors"]} == {torch.bfloat16}


def test_fp16_autocast_matches_bf16_byte_counts():
    r = run(make_model(), autocast_dtype=torch.float16)
    assert (r["activation_bytes"], r["parameter_cast_bytes"]) == (144, 128)


def test_parameter_saved_twice_counts_once():
    w = nn.Parameter(torch.randn(4, 4))
    a = torch.randn(2, 4, requires_grad=True)
    r = saved_activation_bytes(lambda: (a @ w) + (a @ w.t()), [w])
    # each mm saves both operands: a twice, w and the view w.t() -> 2 storages
    assert r["saved_tensors"] == 4 and r["storages"] == 2
    assert r["parameter_bytes"] == 4 * 16 and r["activation_bytes"] == 4 * 8


def test_view_of_input_keeps_whole_storage():
    lin = nn.Linear(8, 2)
    x = torch.randn(10, 8)
    r = saved_activation_bytes(lambda: lin(x[:2]), lin.parameters())
    assert r["saved_tensors"] == 1
    assert r["activation_bytes"] == 4 * 10 * 8  # the slice keeps all of x alive, not 2 rows


def test_nothing_saved_without_grad():
    model = make_model()
    with torch.no_grad():
        r = run(model)
    assert r["saved_tensors"] == 0 and r["extra_bytes"] == 0 and r["tensors"] == []


def test_saved_activation_bytes_rejects_bad_input():
    with pytest.raises(TypeError, match="fn must be"):
        saved_activation_bytes(3)
    with pytest.raises(TypeError, match="parameters must be"):
        saved_activation_bytes(lambda: None, [1, 2])


def test_cuda_peak_memory_guarded():
    if torch.cuda.is_available():
        n = 1 << 20
        r = cuda_peak_memory(lambda: torch.empty(n, device="cuda"))
        assert r["peak_allocated_increase"] >= 4 * n
        assert r["peak_reserved"] >= r["peak_allocated"]
    else:
        with pytest.raises(RuntimeError, match="is_available"):
            cuda_peak_memory(lambda: None)
    with pytest.raises(TypeError, match="fn must be"):
        cuda_peak_memory(None)
