"""course_lib.numerics against oracles: torch's casts, numpy's real float16 arithmetic,
torch.log_softmax."""
import numpy as np
import pytest
import torch

from course_lib import numerics as N


def test_underflow_fraction_matches_torch_cast():
    g = torch.Generator().manual_seed(0)
    x = torch.exp2(torch.rand(10_000, generator=g) * 50 - 45) * torch.randn(10_000, generator=g).sign()
    x[::7] = 0
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e5m2):
        nz = x != 0
        want = ((x.to(dtype).float() == 0) & nz).sum().item() / nz.sum().item()
        assert N.underflow_fraction(x, dtype) == pytest.approx(want, abs=1e-12)
    assert N.underflow_fraction(torch.zeros(3), "fp16") == 0.0


def test_subnormal_and_overflow_fractions():
    x = torch.tensor([1e-6, 1e-3, 7e4, 1e5, 0.0, float("inf")])
    assert N.subnormal_fraction(x, "fp16") == pytest.approx(1 / 5)   # 1e-6 of 5 nonzero (inf counts)
    assert N.overflow_fraction(x, "fp16") == pytest.approx(2 / 5)    # 7e4 and 1e5 of 5 finite


def test_lost_update_fraction_matches_torch_cast():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5000, generator=g)
    u = torch.randn(5000, generator=g) * 1e-3
    w16 = w.half()
    want = ((w16.float() + u).half() == w16).sum().item() / 5000
    assert N.lost_update_fraction(w, u, "fp16") == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        N.lost_update_fraction(w, u[:10], "fp16")


def test_sequential_sum_matches_numpy_float16_arithmetic():
    g = torch.Generator().manual_seed(2)
    values = torch.rand(3000, 3, generator=g) * 3
    ours = N.sequential_sum(values, "fp16", dim=0)
    v16 = values.numpy().astype(np.float16)
    acc = np.zeros(3, dtype=np.float16)
    for i in range(v16.shape[0]):
        acc = (acc + v16[i]).astype(np.float16)     # one IEEE half-precision addition
    assert torch.equal(ours[-1], torch.from_numpy(acc.astype(np.float32)))
    assert N.sequential_sum(torch.ones(3000), "fp16")[-1].item() == 2048.0


def test_stable_log_softmax_matches_torch_and_keeps_dtype():
    x = (torch.randn(8, 50) * 5000).half()
    x[0, :10] = float("-inf")
    out = N.stable_log_softmax(x)
    assert out.dtype == torch.float16
    want = torch.log_softmax(x.float(), -1).half()
    assert torch.equal(torch.isinf(out), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.allclose(out[finite].float(), want[finite].float(), rtol=1e-3, atol=1e-3)
    with pytest.raises(TypeError, match="floating-point"):
        N.stable_log_softmax(torch.ones(3, dtype=torch.int64))


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        N.underflow_fraction([1.0], "fp16")
    with pytest.raises(TypeError, match="floating-point"):
        N.underflow_fraction(torch.ones(2, dtype=torch.int32), "fp16")
