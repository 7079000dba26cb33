"""Tests for course_lib.models."""
import pytest
import torch

from course_lib.models import MLP, SmallCNN, TinyTransformer, count_parameters


def _make(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


def test_mlp_shapes_and_flattening():
    m = _make(MLP)
    x = torch.randn(5, 64)
    assert m(x).shape == (5, 10)
    assert torch.equal(m(x.reshape(5, 1, 8, 8)), m(x))
    assert _make(MLP, hidden=())(x).shape == (5, 10)  # logistic regression
    with pytest.raises(ValueError, match="expects 64 features"):
        m(torch.randn(5, 10))


def test_small_cnn_shapes():
    m = _make(SmallCNN, num_classes=7)
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 7)
    assert m(torch.randn(4, 64)).shape == (4, 7)
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        m(torch.randn(4, 3, 8, 8))


def test_parameter_counts():
    assert count_parameters(_make(MLP)) == (64 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10)
    assert count_parameters(_make(SmallCNN)) == (16 * 9 + 16) + 32 + (16 * 32 * 9 + 32) + 64 + (512 * 10 + 10)
    V, T, d = 94, 64, 64
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = V * d + T * d + 2 * block + 2 * d + (d * V + V)
    assert count_parameters(_make(TinyTransformer, V)) == expected == 116318
    frozen = _make(MLP)
    frozen.net[0].weight.requires_grad_(False)
    assert count_parameters(frozen) == count_parameters(frozen, trainable_only=False) - 64 * 128


def test_seeded_construction_is_reproducible():
    a, b, c = _make(TinyTransformer, 20, block_size=8), _make(TinyTransformer, 20, block_size=8), \
        _make(TinyTransformer, 20, block_size=8, seed=1)
    for (ka, va), (_, vb), (_, vc) in zip(a.state_dict().items(), b.state_dict().items(),
                                          c.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.head.weight, c.head.weight)


@pytest.mark.parametrize("sdpa", [True, False])
def test_transformer_is_causal(sdpa):
    m = _make(TinyTransformer, 30, block_size=12, d_model=32, n_heads=4, n_layers=2, sdpa=sdpa).eval()
    idx = torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    out = m(idx)
    assert out.shape == (2, 12, 30)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 30
    out2 = m(changed)
    assert torch.equal(out[:, :7], out2[:, :7])  # the past does not see the future
    assert not torch.allclose(out[:, 7:], out2[:, 7:])


def test_sdpa_and_manual_attention_agree():
    fast = _make(TinyTransformer, 30, block_size=16, d_model=32, sdpa=True).eval()
    slow = TinyTransformer(30, block_size=16, d_model=32, sdpa=False).eval()
    slow.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 30, (3, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast(idx), slow(idx), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast(idx[:, :5]), slow(idx[:, :5]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_models_run_in_16_bits(dtype):
    for model, x in [(_make(MLP, hidden=(16,)), torch.randn(4, 64)),
                     (_make(SmallCNN, channels=(4, 8)), torch.randn(4, 1, 8, 8)),
                     (_make(TinyTransformer, 11, block_size=8, d_model=16, n_heads=2, n_layers=1),
                      torch.randint(0, 11, (2, 8)))]:
        model = model.to(dtype)
        out = model(x.to(dtype) if x.is_floating_point() else x)
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_bad_arguments():
    with pytest.raises(TypeError, match="hidden must be a sequence"):
        MLP(hidden=128)
    with pytest.raises(ValueError, match="num_classes"):
        MLP(num_classes=0)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TinyTransformer(10, d_model=30, n_heads=4)
    with pytest.raises(TypeError, match="channels must be a pair"):
        SmallCNN(channels=16)
    m = _make(TinyTransformer, 10, block_size=4, d_model=8, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        m(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        m(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters([torch.zeros(3)])
