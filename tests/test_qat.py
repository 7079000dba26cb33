"""Tests for course_lib.qat: torch's observer formula and fake-quant kernels are the oracles."""
from __future__ import annotations

import copy
import dataclasses
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.utils import determine_qparams

from course_lib import qat
from course_lib.qat import (FP32_EPS, FakeQuantConfig, FakeQuantizer, MinMaxObserver,
                            MovingAverageMinMaxObserver, NoFakeQuantizer, QATConv2d, QATLinear,
                            QParams, QuantSpec, calculate_qparams, calibrate_observers, dequantize,
                            fake_quantize, fake_quantize_ste, freeze_observers, prepare_qat, qrange,
                            quantize, remove_qat, serialized_size_bytes)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (0, 127), (-64, 63)]
EPS = torch.tensor([FP32_EPS])


# --------------------------------------------------------------------------- helpers
def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape, values, NaN positions and sign of every zero."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return (torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])
            and torch.equal(torch.signbit(a[~nan_a]), torch.signbit(b[~nan_b])))


def torch_qparams(lo, hi, qmin, qmax, symmetric, per_channel=False):
    """torch's functional observer math (``torch.ao.quantization.utils.determine_qparams``).

    ``dtype``/``has_customized_qrange`` are chosen as an observer built with
    these bounds would have them: uint8 at its default range is "not
    customized" (zero point 128 when symmetric); other unsigned ranges are
    customized uint8 ranges; signed ranges are int8 ones.
    """
    dtype = torch.quint8 if qmin >= 0 else torch.qint8
    customized = (qmin, qmax) not in ((0, 255), (-128, 127))
    scheme = {(False, False): torch.per_tensor_affine, (True, False): torch.per_tensor_symmetric,
              (False, True): torch.per_channel_affine, (True, True): torch.per_channel_symmetric}
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    return determine_qparams(lo, hi, qmin, qmax, dtype, EPS, customized,
                             scheme[(symmetric, per_channel)])


def torch_fq(x, qp: QParams):
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, qp.axis,
                                                  qp.qmin, qp.qmax)


def ours_and_torch(x: torch.Tensor, qp: QParams, grad: torch.Tensor):
    """Forward and input-gradient of fake_quantize_ste and of torch's kernel."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().clone().requires_grad_()
    ya, yb = fake_quantize_ste(a, qp), torch_fq(b, qp)
    ya.backward(grad)
    yb.backward(grad)
    return ya.detach(), yb.detach(), a.grad, b.grad


# --------------------------------------------------------------------------- qparams
def test_qrange():
    assert qrange(torch.int8) == (-128, 127)
    assert qrange(torch.uint8) == (0, 255)
    assert qrange(torch.int32) == (-2**31, 2**31 - 1)
    with pytest.raises(ValueError, match="dtype"):
        qrange(torch.float32)


@pytest.mark.parametrize("symmetric", [False, True])
def test_calculate_qparams_matches_torch_on_random_ranges(symmetric):
    gen = torch.Generator().manual_seed(0)
    for i in range(300):
        qmin, qmax = RANGES[i % len(RANGES)]
        # ranges straddling 0, all-positive and all-negative, over many magnitudes
        mag = 10.0 ** torch.randint(-8, 9, (), generator=gen).item()
        a, b = (torch.randn(2, generator=gen) * mag).tolist()
        shift = (0.0, 3 * mag, -3 * mag)[i % 3]
        lo, hi = min(a, b) + shift, max(a, b) + shift
        ours = calculate_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
        scale, zp = torch_qparams(lo, hi, qmin, qmax, symmetric)
        assert ours.scale.double().reshape(1).equal(scale), (lo, hi, qmin, qmax)
        assert ours.zero_point.long().reshape(1).equal(zp), (lo, hi, qmin, qmax)
        assert qmin <= ours.zero_point.item() <= qmax


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("lo,hi", [
    (0.0, 0.0),                # degenerate: scale = eps
    (-0.0, 0.0),               # signed zeros
    (2.5, 2.5),                # min == max > 0: the range is widened to [0, 2.5]
    (-7.0, -7.0),              # min == max < 0
    (1e-40, 1e-40),            # subnormal range: scale clamped to eps
    (-1e-30, 1e-30),           # tiny range
    (-1.5e38, 1.6e38),         # near float32's max, still finite
    (0.0, 1.0), (-1.0, 0.0),   # one end at 0
])
def test_calculate_qparams_edge_ranges_match_torch(lo, hi, symmetric):
    for qmin, qmax in RANGES:
        ours = calculate_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
        scale, zp = torch_qparams(lo, hi, qmin, qmax, symmetric)
        assert ours.scale.double().reshape(1).equal(scale)
        assert ours.zero_point.long().reshape(1).equal(zp)
        assert ours.scale.item() >= FP32_EPS


def test_degenerate_range_gives_eps_and_exact_zero():
    qp = calculate_qparams(0.0, 0.0, 0, 255)
    assert qp.scale.item() == FP32_EPS == 2.0**-23
    assert qp.zero_point.item() == 0
    assert fake_quantize(torch.zeros(3), qp).eq(0).all()


def test_calculate_qparams_rejects_bad_ranges():
    with pytest.raises(ValueError, match="too wide"):   # torch returns scale = inf here
        calculate_qparams(-3e38, 3e38, 0, 255)
    assert torch.isinf(torch_qparams(-3e38, 3e38, 0, 255, False)[0]).all()
    with pytest.raises(ValueError, match="finite"):
        calculate_qparams(float("nan"), 1.0)
    with pytest.raises(ValueError, match="finite"):
        calculate_qparams(0.0, float("inf"))
    with pytest.raises(ValueError, match="<= max_val"):
        calculate_qparams(1.0, 0.0)
    with pytest.raises(ValueError, match="include 0"):
        calculate_qparams(-1.0, 1.0, 1, 255)
    with pytest.raises(ValueError, match="qmin < qmax"):
        calculate_qparams(-1.0, 1.0, 5, 5)
    with pytest.raises(TypeError, match="qmin"):
        calculate_qparams(-1.0, 1.0, -128.0, 127)
    with pytest.raises(ValueError, match="per-tensor"):
        calculate_qparams(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        calculate_qparams(torch.zeros(2, 2), torch.ones(2, 2), axis=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_calculate_qparams_per_channel_matches_torch(symmetric):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 20, generator=gen) * torch.logspace(-4, 3, 8).unsqueeze(1)
    x[3] = 0.0                       # an all-zero channel
    x[5] = x[5].abs() + 1.0          # an all-positive one
    lo, hi = torch.aminmax(x, dim=1)
    for qmin, qmax in RANGES:
        ours = calculate_qparams(lo, hi, qmin, qmax, symmetric=symmetric, axis=0)
        scale, zp = torch_qparams(lo, hi, qmin, qmax, symmetric, per_channel=True)
        assert ours.per_channel and ours.axis == 0
        assert ours.scale.double().equal(scale) and ours.zero_point.long().equal(zp)


def test_qparams_validation():
    qp = QParams(torch.tensor([0.5]), torch.tensor([3]), 0, 255)
    assert qp.scale.shape == () and qp.scale.dtype == torch.float32
    assert qp.zero_point.dtype == torch.int32 and qp.storage_dtype == torch.uint8
    assert QParams(0.1, 0, -2**15, 2**15 - 1).storage_dtype == torch.int16
    assert QParams(0.1, 0, 0, 2**20).storage_dtype == torch.int32
    with pytest.raises(ValueError, match="positive and finite"):
        QParams(0.0, 0)
    with pytest.raises(ValueError, match="positive and finite"):
        QParams(float("inf"), 0)
    with pytest.raises(ValueError, match="zero_point must lie"):
        QParams(0.1, 200)
    with pytest.raises(TypeError, match="zero_point"):
        QParams(0.1, 0.5)
    with pytest.raises(ValueError, match="one scale"):
        QParams(torch.ones(3), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="as many zero points"):
        QParams(torch.ones(3), torch.zeros(2, dtype=torch.int32), axis=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        qp.qmin = 1


# --------------------------------------------------------------------------- quantize / dequantize
def test_quantize_dequantize_round_trip_is_fake_quantize():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1000, generator=gen) * 4
    for qmin, qmax in [(-128, 127), (0, 255)]:
        qp = calculate_qparams(x.min() * 0.8, x.max() * 0.8, qmin, qmax)
        q = quantize(x, qp)
        assert q.dtype == (torch.int8 if qmin < 0 else torch.uint8)
        assert q.min().item() == qmin and q.max().item() == qmax   # the 0.8 range saturates both ends
        fq = torch_fq(x, qp)
        # the codes torch's kernel used, recovered from its (exact-grid) output
        codes = torch.round(fq.double() / qp.scale.double()) + qp.zero_point.double()
        assert torch.equal(q.double(), codes)
        assert torch.equal(dequantize(q, qp), fq)            # bitwise
        assert torch.equal(fake_quantize(x, qp), fq)


def test_quantize_ties_round_to_even_and_saturate():
    qp = QParams(1.0, 0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, 1e30, -1e30,
                      float("inf"), float("-inf")])
    assert quantize(x, qp).tolist() == [0, 2, 2, 0, -2, 126, 127, 127, -128, 127, -128]
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([1.0, float("nan")]), qp)
    with pytest.raises(TypeError, match="floating"):
        quantize(torch.tensor([1, 2]), qp)
    with pytest.raises(TypeError, match="integer tensor"):
        dequantize(torch.tensor([1.0]), qp)
    with pytest.raises(TypeError, match="QParams"):
        quantize(torch.tensor([1.0]), (1.0, 0))


# --------------------------------------------------------------------------- fake quantization vs torch
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fake_quantize_ste_matches_torch_per_tensor(dtype):
    gen = torch.Generator().manual_seed(3)
    for i in range(60):
        qmin, qmax = RANGES[i % len(RANGES)]
        x = (torch.randn(257, generator=gen) * 10.0 ** (i % 5 - 2)).to(dtype)
        shrink = 0.5 + 0.5 * torch.rand((), generator=gen).item()    # some inputs saturate
        qp = calculate_qparams(x.min().float() * shrink, x.max().float() * shrink, qmin, qmax,
                               symmetric=bool(i % 2))
        grad = torch.randn(257, generator=gen).to(dtype)
        ya, yb, ga, gb = ours_and_torch(x, qp, grad)
        assert same_bits(ya, yb), (dtype, i)
        assert same_bits(ga, gb), (dtype, i)   # grad * mask: -0.0 where grad < 0 is masked


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((6, 40), 0), ((7, 5, 3), 1), ((2, 4, 3, 3), 0),
                                        ((3, 2, 5), 2)])
def test_fake_quantize_ste_matches_torch_per_channel(dtype, shape, axis):
    gen = torch.Generator().manual_seed(4)
    for i, (qmin, qmax) in enumerate(RANGES):
        spread = torch.logspace(-3, 2, shape[axis]).reshape([-1 if d == axis else 1
                                                             for d in range(len(shape))])
        x = (torch.randn(shape, generator=gen) * spread).to(dtype)
        obs = MinMaxObserver(qmin, qmax, symmetric=bool(i % 2), axis=axis)
        obs(x * 0.7)
        qp = obs.calculate_qparams()
        grad = torch.randn(shape, generator=gen).to(dtype)
        ya, yb, ga, gb = ours_and_torch(x, qp, grad)
        assert same_bits(ya, yb) and same_bits(ga, gb), (dtype, shape, axis, qmin, qmax)


def boundary_inputs(qp: QParams) -> torch.Tensor:
    """x with round(x/s) + z at qmin-2 .. qmin+1 and qmax-1 .. qmax+2, ±1 ulp and ties."""
    s, z = qp.scale.item(), qp.zero_point.item()
    out = []
    for k in list(range(qp.qmin - 2, qp.qmin + 2)) + list(range(qp.qmax - 1, qp.qmax + 3)):
        for offset in (0.0, 0.5, -0.5, 0.49, -0.49):
            v = torch.tensor((k - z + offset) * s, dtype=torch.float32)
            out += [v, torch.nextafter(v, torch.tensor(float("inf"))),
                    torch.nextafter(v, torch.tensor(float("-inf")))]
    return torch.stack(out)


@pytest.mark.parametrize("qmin,qmax,scale,zp", [(-128, 127, 0.1, 3), (0, 255, 0.0173, 121),
                                                (-8, 7, 1.0, 0), (0, 255, 2.0**-10, 0)])
def test_boundaries_match_torch_and_pass_the_gradient(qmin, qmax, scale, zp):
    qp = QParams(scale, zp, qmin, qmax)
    x = boundary_inputs(qp)
    grad = -torch.ones_like(x)
    ya, yb, ga, gb = ours_and_torch(x, qp, grad)
    assert same_bits(ya, yb) and same_bits(ga, gb)
    # Independently of torch: the gradient is 1 exactly where round(x/s)+z is in
    # [qmin, qmax] -- boundaries included -- and 0 one step outside.
    k = torch.round(x * (1.0 / qp.scale)) + zp
    assert (k == qmin).any() and (k == qmax).any() and (k == qmin - 1).any() and (k == qmax + 1).any()
    inside = (k >= qmin) & (k <= qmax)
    assert torch.equal(ga.abs(), inside.float())
    assert torch.equal(ya[k == qmax], torch.full_like(ya[k == qmax], (qmax - zp) * qp.scale.item()))


def test_special_values():
    qp = QParams(0.1, 3)
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 3e38, -3e38, -0.0, 0.0, 1e19])
    grad = -torch.ones_like(x)
    ya, yb, ga, gb = ours_and_torch(x, qp, grad)
    finite = ~torch.isnan(x)
    assert same_bits(ya[finite], yb[finite]) and same_bits(ga, gb)
    assert torch.isnan(ya[0])                      # ours keeps the NaN ...
    assert yb[0].item() == pytest.approx(-13.1)    # ... torch returns the value of qmin
    assert ya[5].item() == 0 and not torch.signbit(ya[5])    # -0.0 -> +0.0, as torch
    # Per channel, torch's CPU kernel casts x/s to int64 before clamping (undefined
    # past 2**63), so use its per-tensor kernel with that channel's qparams as oracle.
    qpc = QParams(torch.tensor([0.1, 0.5]), torch.tensor([3, -7]), axis=1)
    xc = torch.stack([x, x], dim=1)
    yc = fake_quantize(xc, qpc)
    for c in range(2):
        ref = torch.fake_quantize_per_tensor_affine(x, qpc.scale[c].item(), qpc.zero_point[c].item(),
                                                    -128, 127)
        assert same_bits(yc[finite, c], ref[finite])
        assert torch.isnan(yc[0, c])


def test_fake_quantize_without_ste_has_zero_gradient():
    x = torch.linspace(-2, 2, 50, requires_grad=True)
    fake_quantize(x, QParams(0.1, 0)).sum().backward()
    assert torch.equal(x.grad, torch.zeros(50))      # round() has derivative 0: why QAT needs the STE
    x.grad = None
    fake_quantize_ste(x, QParams(0.1, 0)).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))


def test_fake_quantize_argument_errors():
    qp = QParams(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), axis=1)
    with pytest.raises(ValueError, match="channels along axis 1"):
        fake_quantize(torch.zeros(2, 3), qp)
    with pytest.raises(ValueError, match="dimensions"):
        fake_quantize(torch.zeros(2), qp)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fake_quantize_ste([1.0], QParams(0.1, 0))


# --------------------------------------------------------------------------- observers
def test_minmax_observer_running_range_per_tensor_and_per_channel():
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(4, 6, generator=gen) * (i + 1) for i in range(5)]
    obs, obs_c = MinMaxObserver(), MinMaxObserver(axis=1)
    for b in batches:
        assert obs(b) is b and obs_c(b) is b
    allx = torch.cat(batches)
    assert obs.min_val.equal(allx.min()) and obs.max_val.equal(allx.max())
    assert obs_c.min_val.equal(allx.min(dim=0).values) and obs_c.max_val.equal(allx.max(dim=0).values)
    qp = obs_c.calculate_qparams()
    ref = torch_qparams(allx.min(dim=0).values, allx.max(dim=0).values, -128, 127, False, True)
    assert qp.axis == 1 and qp.scale.double().equal(ref[0]) and qp.zero_point.long().equal(ref[1])


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_moving_average_observer_follows_the_ema(c):
    gen = torch.Generator().manual_seed(6)
    obs, obs_c = MovingAverageMinMaxObserver(averaging_constant=c), \
        MovingAverageMinMaxObserver(averaging_constant=c, axis=0)
    lo = hi = lo_c = hi_c = None
    for i in range(20):
        x = torch.randn(3, 7, generator=gen) * (1 + i % 4)
        obs(x)
        obs_c(x)
        cur_lo, cur_hi = torch.aminmax(x)
        cur_lo_c, cur_hi_c = torch.aminmax(x, dim=1)
        if lo is None or c == 1.0:
            lo, hi, lo_c, hi_c = cur_lo, cur_hi, cur_lo_c, cur_hi_c
        else:  # float32 arithmetic, in torch's order
            lo, hi = lo + c * (cur_lo - lo), hi + c * (cur_hi - hi)
            lo_c, hi_c = lo_c + c * (cur_lo_c - lo_c), hi_c + c * (cur_hi_c - hi_c)
        assert obs.min_val.equal(lo) and obs.max_val.equal(hi)
        assert obs_c.min_val.equal(lo_c) and obs_c.max_val.equal(hi_c)


def test_moving_average_observer_matches_torchs_class():
    # torch's observer classes as a second oracle. In torch 2.13.0 they emit no
    # warning (only the quantized-tensor functions such as torch.quantize_per_tensor
    # do); should a later torch deprecate them loudly, that is not our concern here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import (MovingAverageMinMaxObserver as TorchMA,
                                                    MovingAveragePerChannelMinMaxObserver as TorchMAC)
        ref = TorchMA(averaging_constant=0.01, dtype=torch.quint8)
        ref_c = TorchMAC(averaging_constant=0.01, ch_axis=0, dtype=torch.qint8,
                         qscheme=torch.per_channel_symmetric)
        ours = MovingAverageMinMaxObserver(0, 255, averaging_constant=0.01)
        ours_c = MovingAverageMinMaxObserver(-128, 127, symmetric=True, axis=0, averaging_constant=0.01)
        gen = torch.Generator().manual_seed(7)
        for i in range(30):
            x = torch.randn(4, 9, generator=gen) * (1 + i % 3) + 0.5
            for o in (ref, ref_c, ours, ours_c):
                o(x)
        s, z = ref.calculate_qparams()
        sc, zc = ref_c.calculate_qparams()
    qp, qpc = ours.calculate_qparams(), ours_c.calculate_qparams()
    assert qp.scale.reshape(1).equal(s) and qp.zero_point.reshape(1).long().equal(z.long())
    assert qpc.scale.equal(sc) and qpc.zero_point.long().equal(zc.long())


def test_observer_frozen_empty_and_errors():
    obs = MovingAverageMinMaxObserver()
    with pytest.raises(RuntimeError, match="observed nothing"):
        obs.calculate_qparams()
    obs(torch.empty(0))
    assert not obs.has_observed
    obs(torch.tensor([-1.0, 2.0]))
    obs.frozen = True
    obs(torch.tensor([-100.0, 100.0]))
    assert obs.min_val.item() == -1.0 and obs.max_val.item() == 2.0
    obs.frozen = False
    obs(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="inf or NaN"):
        obs.calculate_qparams()
    obs.reset()
    assert not obs.has_observed
    per_channel = MinMaxObserver(axis=0)
    per_channel(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="channels"):
        per_channel(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0.0)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=1.5)
    with pytest.raises(TypeError, match="frozen"):
        obs.frozen = 1


def test_observer_state_dict_round_trip():
    src = MovingAverageMinMaxObserver(axis=0, averaging_constant=0.2)
    src(torch.randn(5, 3))
    src(torch.randn(5, 3))
    src.frozen = True
    dst = MovingAverageMinMaxObserver(axis=0, averaging_constant=0.2)  # empty buffers
    dst.load_state_dict(src.state_dict())
    assert dst.frozen and dst.min_val.equal(src.min_val) and dst.max_val.equal(src.max_val)
    assert dst.calculate_qparams().scale.equal(src.calculate_qparams().scale)
    assert set(src.state_dict()) == {"min_val", "max_val", "frozen_flag"}


# --------------------------------------------------------------------------- configuration
def test_config_defaults_and_validation():
    cfg = FakeQuantConfig()
    assert (cfg.weight.qmin, cfg.weight.qmax, cfg.weight.symmetric, cfg.weight.axis) == (-128, 127, True, 0)
    assert (cfg.activation.qmin, cfg.activation.qmax, cfg.activation.symmetric,
            cfg.activation.axis) == (0, 255, False, None)
    assert cfg.activation.averaging_constant == 0.01 and cfg.enable_after_steps == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.enable_after_steps = 3
    with pytest.raises(ValueError, match="include 0"):
        QuantSpec(qmin=1, qmax=255)
    with pytest.raises(ValueError, match="qmin < qmax"):
        QuantSpec(qmin=0, qmax=0)
    with pytest.raises(ValueError, match="observer"):
        QuantSpec(observer="histogram")
    with pytest.raises(TypeError, match="symmetric"):
        QuantSpec(symmetric="yes")
    with pytest.raises(ValueError, match="averaging_constant"):
        QuantSpec(averaging_constant=0.0)
    with pytest.raises(ValueError, match="weight axis"):
        FakeQuantConfig(weight=QuantSpec(axis=1))
    with pytest.raises(ValueError, match="per tensor"):
        FakeQuantConfig(activation=QuantSpec(axis=1))
    with pytest.raises(ValueError, match="enable_after_steps"):
        FakeQuantConfig(enable_after_steps=-1)
    with pytest.raises(TypeError, match="weight"):
        FakeQuantConfig(weight="int8")


# --------------------------------------------------------------------------- QAT layers
def small_cnn():
    from course_lib.models import SmallCNN
    torch.manual_seed(0)
    return SmallCNN(channels=(4, 8))


def test_prepare_qat_swaps_in_place_and_shares_parameters():
    model = small_cnn()
    params_before = {n: p for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = prepare_qat(model)
    assert out is model
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("QATConv2d") == 2 and kinds.count("QATLinear") == 1
    assert "Conv2d" not in kinds and "Linear" not in kinds and kinds.count("BatchNorm2d") == 2
    for n, p in model.named_parameters():            # same Parameter objects, same names
        assert p is params_before[n]
    assert model.features[0].kernel_size == (3, 3) and model.features[0].padding == (1, 1)
    assert isinstance(model.head.weight_fake_quant, FakeQuantizer)
    # the optimizer built before prepare_qat still updates the model
    x = torch.randn(4, 1, 8, 8)
    before = model.head.weight.detach().clone()
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(before, model.head.weight)
    # idempotent; filter_fn; root layer; remove_qat
    assert prepare_qat(model) is model and type(model.head) is QATLinear
    m2 = prepare_qat(small_cnn(), filter_fn=lambda mod, name: name != "head")
    assert type(m2.head) is nn.Linear and type(m2.features[0]) is QATConv2d
    assert type(prepare_qat(nn.Linear(2, 2))) is QATLinear
    remove_qat(model)
    assert [type(m).__name__ for m in model.modules()].count("QATConv2d") == 0
    assert type(model.head) is nn.Linear and model.head.weight is params_before["head.weight"]
    with pytest.raises(TypeError, match="config"):
        prepare_qat(small_cnn(), config=QuantSpec())


def test_qat_linear_forward_is_fake_quantized_input_and_weight():
    torch.manual_seed(1)
    layer = QATLinear.from_float(nn.Linear(5, 3))
    x = torch.randn(8, 5)
    y = layer(x)
    qa, qw = layer.activation_fake_quant.qparams(), layer.weight_fake_quant.qparams()
    assert qw.per_channel and qw.scale.shape == (3,) and not qa.per_channel
    ref = F.linear(torch_fq(x, qa), torch_fq(layer.weight.detach(), qw), layer.bias)
    assert torch.equal(y, ref)
    conv = QATConv2d.from_float(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False),
                                FakeQuantConfig(activation=None))
    assert isinstance(conv.activation_fake_quant, NoFakeQuantizer)
    xc = torch.randn(2, 2, 6, 6)
    yc = conv(xc)
    ref_c = F.conv2d(xc, torch_fq(conv.weight.detach(), conv.weight_fake_quant.qparams()),
                     None, stride=2, padding=1)
    assert torch.equal(yc, ref_c)


def test_qat_training_on_digits_reduces_the_loss():
    from course_lib.data import digits_tensors
    data = digits_tensors(device="cpu", flatten=False)
    model = prepare_qat(small_cnn())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        idx = torch.randint(0, len(data.y_train), (64,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # ln(10) = 2.30 at the start; this net gets well below half of it in 40 Adam
    # steps. Without working STE gradients (all zero) the loss would not move.
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses
    assert int(model.head.qat_steps) == 40
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert acc > 0.8


def test_enable_after_steps_delays_fake_quantization():
    torch.manual_seed(2)
    float_model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    model = prepare_qat(copy.deepcopy(float_model), FakeQuantConfig(enable_after_steps=3))
    x = torch.randn(5, 6)
    for step in range(3):                          # training passes 1..3: plain float
        assert torch.equal(model(x), float_model(x)), step
    assert int(model[0].qat_steps) == 3 and model[0].weight_fake_quant.observer.has_observed
    model.eval()                                   # eval passes do not count
    assert torch.equal(model(x), float_model(x)) is False   # 3 steps done: active in eval
    assert int(model[0].qat_steps) == 3
    model.train()
    y4 = model(x)                                  # pass 4: fake-quantized
    assert not torch.equal(y4, float_model(x))
    assert int(model[0].qat_steps) == 4
    delayed = prepare_qat(copy.deepcopy(float_model), FakeQuantConfig(enable_after_steps=10)).eval()
    assert torch.equal(delayed(x), float_model(x))   # eval before the delay has passed: float


def test_state_dict_round_trip_of_a_prepared_model():
    model = prepare_qat(small_cnn(), FakeQuantConfig(enable_after_steps=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = model(torch.randn(8, 1, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze_observers(model)
    state = model.state_dict()
    assert {"head.qat_steps", "head.weight_fake_quant.observer.min_val",
            "head.activation_fake_quant.observer.frozen_flag"} <= set(state)
    fresh = prepare_qat(small_cnn(), FakeQuantConfig(enable_after_steps=1))
    fresh.load_state_dict(state)                  # strict: every key matches, ranges resized
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n
    model.eval()
    fresh.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))


def test_freeze_observers_stops_range_updates():
    model = prepare_qat(small_cnn())
    model(torch.randn(4, 1, 8, 8))
    assert freeze_observers(model) == 6            # 3 layers x (weight, activation)
    obs = model.features[0].activation_fake_quant.observer
    before = (obs.min_val.clone(), obs.max_val.clone())
    model(torch.randn(4, 1, 8, 8) * 50)
    assert torch.equal(obs.min_val, before[0]) and torch.equal(obs.max_val, before[1])
    assert freeze_observers(model, frozen=False) == 6
    model(torch.randn(4, 1, 8, 8) * 50)
    assert not torch.equal(obs.max_val, before[1])


def test_calibrate_observers_leaves_batchnorm_and_counters_alone():
    model = prepare_qat(small_cnn()).train()
    bn = model.features[1]
    mean_before = bn.running_mean.clone()
    with pytest.raises(RuntimeError, match="observed nothing"):
        model.eval()(torch.randn(2, 1, 8, 8))
    model.train()
    n = calibrate_observers(model, [(torch.randn(8, 1, 8, 8), None), torch.randn(8, 1, 8, 8)])
    assert n == 2 and model.training and bn.training   # modes restored
    assert torch.equal(bn.running_mean, mean_before)
    assert int(model.head.qat_steps) == 0
    assert model.head.activation_fake_quant.observer.has_observed
    model.eval()(torch.randn(2, 1, 8, 8))              # now evaluable


# --------------------------------------------------------------------------- size
def test_serialized_size_bytes_is_the_file_size(tmp_path):
    # torch.save names the zip's top folder after the file ("archive" for a
    # buffer), so the file must be called archive.pt for the sizes to agree.
    model = small_cnn()
    path = tmp_path / "archive.pt"
    torch.save(model.state_dict(), path)
    assert serialized_size_bytes(model) == os.path.getsize(path)
    assert serialized_size_bytes(nn.Linear(100, 100)) > serialized_size_bytes(nn.Linear(10, 10)) + 4 * 9000


# --------------------------------------------------------------------------- torchao
def test_torchao_helpers_raise_a_clear_import_error_when_missing(monkeypatch):
    monkeypatch.setattr(qat.real_int8, "_import_torchao", lambda: "torchao is not importable (test)")
    assert qat.torchao_available() is False
    with pytest.raises(ImportError, match=r"pip install -e \.\[qat\]"):
        qat.torchao_qat_prepare(nn.Linear(2, 2))
    with pytest.raises(ImportError, match="torchao_qat_convert needs torchao"):
        qat.torchao_qat_convert(nn.Linear(2, 2))


@pytest.fixture
def torchao_or_skip():
    if not qat.torchao_available():
        pytest.skip(f"torchao not available: {qat.real_int8._import_torchao()}; "
                    f"install it with pip install -e .[qat] ({qat.TORCHAO_REQUIREMENT})")


def test_torchao_qat_prepare_convert(torchao_or_skip):
    from torchao.quantization.qat import FakeQuantizedLinear
    torch.manual_seed(3)
    float_model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 16), nn.ReLU(),
                                nn.Linear(16, 4))
    ours = prepare_qat(copy.deepcopy(float_model), FakeQuantConfig(activation=None))
    model = qat.torchao_qat_prepare(copy.deepcopy(float_model))
    # After prepare: still float32 Parameters (pytorch/ao#1290); only the forward fake-quantizes.
    assert type(model[2]) is FakeQuantizedLinear and type(model[0]) is nn.Conv2d
    assert type(model[2].weight) is nn.Parameter and model[2].weight.dtype == torch.float32
    # torchao's int8 weight fake quantization is ours (per channel, symmetric, current range)
    ours[0] = remove_qat(ours[0])                 # torchao leaves convolutions in float
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), ours(x))
    with pytest.raises(ValueError, match="remove_qat"):
        qat.torchao_qat_prepare(prepare_qat(copy.deepcopy(float_model)))
    size_fp32 = serialized_size_bytes(model)
    qat.torchao_qat_convert(model)
    w = model[2].weight
    # After convert: an int8 tensor subclass whose .dtype still says float32.
    assert type(model[2]) is nn.Linear and w.qdata.dtype == torch.int8 and w.dtype == torch.float32
    assert type(model[0].weight) is nn.Parameter                   # conv untouched
    qp = ours[2].weight_fake_quant.qparams()
    assert torch.equal(w.qdata, quantize(float_model[2].weight.detach(), qp))
    assert torch.equal(w.dequantize(), fake_quantize(float_model[2].weight.detach(), qp))
    with torch.no_grad():
        assert torch.equal(model(x), ours.eval()(x))
    assert serialized_size_bytes(model) < size_fp32
    with pytest.raises(ValueError, match="scheme"):
        qat.torchao_qat_prepare(nn.Linear(2, 2), scheme="int4")


def test_qat_model_under_fp16_autocast_keeps_activation_dtype():
    # Chapter 08: fake quantization under CPU fp16 autocast. Our function keeps
    # the input's dtype (an fp16 activation stays fp16, bitwise equal to torch's
    # tensor-qparams kernel); torch's default QAT (fused observer + fake quant)
    # raises "expected scalar type Float but found Half" here (pytorch/pytorch#94371).
    torch.manual_seed(4)
    model = prepare_qat(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    x = torch.randn(5, 8)
    seen = {}
    model[2].activation_fake_quant.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0], y=out))
    with torch.amp.autocast("cpu", dtype=torch.float16):
        y = model(x)
    assert y.dtype == torch.float16 and seen["x"].dtype == torch.float16
    qp = model[2].activation_fake_quant.qparams()
    assert seen["y"].dtype == torch.float16
    assert torch.equal(seen["y"], torch_fq(seen["x"], qp))
    y.float().sum().backward()
    assert model[0].weight.grad.dtype == torch.float32 and torch.isfinite(model[0].weight.grad).all()


# --------------------------------------------------------------------------- additions for chapter 08
@pytest.mark.parametrize("per_channel", [False, True])
def test_ste_gradient_matches_torch_kernels_without_a_graph(per_channel):
    g = torch.Generator().manual_seed(3)
    if per_channel:
        x = torch.randn(6, 9, generator=g) * 4
        qp = QParams(torch.rand(6, generator=g) * 0.05 + 0.01, torch.randint(-3, 4, (6,), generator=g),
                     -8, 7, axis=0)
    else:
        qp = QParams(0.03, 2, -8, 7)
        x = boundary_inputs(qp)             # codes qmin-2 .. qmax+2, +-1 ulp, ties
    grad = torch.randn(x.shape, generator=g)
    *_, torch_grad = ours_and_torch(x, qp, grad)
    assert same_bits(qat.ste_gradient(x, qp, grad), torch_grad)
    with pytest.raises(ValueError, match="shape"):
        qat.ste_gradient(x, qp, grad.reshape(-1)[:1])


def test_torchao_status_in_both_states(monkeypatch):
    monkeypatch.setenv(qat.DISABLE_TORCHAO_ENV, "1")
    qat.real_int8._import_torchao.cache_clear()
    try:
        assert not qat.torchao_available()
        assert qat.DISABLE_TORCHAO_ENV in qat.torchao_status()
        with pytest.raises(ImportError, match=r"pip install -e \.\[qat\]"):
            qat.torchao_qat_prepare(nn.Sequential(nn.Linear(4, 4)))
    finally:
        monkeypatch.delenv(qat.DISABLE_TORCHAO_ENV)
        qat.real_int8._import_torchao.cache_clear()
    if qat.torchao_available():
        assert qat.torchao_status().startswith("torchao ")


@pytest.mark.skipif(not qat.torchao_available(), reason=f"needs {qat.TORCHAO_REQUIREMENT}")
def test_torchao_int8_dynamic_computes_with_an_integer_matmul_and_prepare_prints_nothing(capfd):
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    prepared = qat.torchao_qat_prepare(copy.deepcopy(model))
    assert capfd.readouterr().err == ""            # torchao's import noise is kept quiet
    assert prepared is not None
    qat.torchao_int8_dynamic_quantize(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(torch.randn(8, 32))
    assert "aten::_int_mm" in {e.key for e in prof.key_averages()}
