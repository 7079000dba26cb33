"""Quantization-aware training (QAT): affine int8, fake quantization, observers.

One idea per module: :mod:`.affine` (scale, zero point, quantize, fake
quantization, the STE), :mod:`.observers`, :mod:`.layers` (QAT layers and the
functions that prepare, freeze, calibrate and remove them), :mod:`.real_int8`
(real int8 through torchao; the model's size on disk).

Affine quantization maps a real ``x`` to an integer ``q`` in ``[qmin, qmax]``
(int8: ``[-128, 127]``, uint8: ``[0, 255]``) with a ``scale`` ``s > 0`` and an
integer ``zero_point`` ``z``::

    q  = clamp(round(x / s) + z, qmin, qmax)      (round half to even)
    x̂  = (q - z) * s                              (dequantize)

``fake_quantize`` is the round trip ``x -> x̂``: a float tensor that holds only
the ``qmax - qmin + 1`` values an int8 model can represent. Training through it
lets the weights adapt to that grid, which is quantization-aware training.

**Choosing s and z** (``calculate_qparams``), exactly as torch's observers do
(``torch/ao/quantization/observer.py``, ``_calculate_qparams``): widen the
observed range ``[min, max]`` to include 0 (``min_neg = min(min, 0)``,
``max_pos = max(max, 0)``, so that 0 -- padding, ReLU zeros -- is exact), then

* asymmetric: ``s = (max_pos - min_neg) / (qmax - qmin)``,
  ``z = clamp(qmin - round(min_neg / s), qmin, qmax)``;
* symmetric: ``s = max(-min_neg, max_pos) / ((qmax - qmin) / 2)``, ``z = 0``
  for a signed range (``qmin < 0``); for an unsigned one torch's choices:
  128 for ``[0, 255]``, 2**15 for ``[0, 65535]``, else ``(qmin + qmax) // 2``
  (what torch gives for an explicit ``quant_min``/``quant_max``);

and ``s = max(s, eps)`` with ``eps = torch.finfo(torch.float32).eps``, so a
degenerate range (all zeros) still gives a valid scale. Everything is computed
in float32, so the results equal torch's bit for bit. Per channel (``axis``),
each slice along ``axis`` gets its own ``s`` and ``z``.

**The straight-through estimator (STE).** ``round`` has derivative 0 almost
everywhere, so backpropagating through ``fake_quantize`` gives zero gradients
and nothing trains. The STE (Bengio et al. 2013; Jacob et al. 2018) pretends
the rounding is the identity: the gradient is passed through unchanged where
the input was inside the clamp range and is 0 where it saturated::

    dL/dx = dL/dx̂ * [qmin <= round(x / s) + z <= qmax]

``FakeQuantizeSTE`` / ``fake_quantize_ste`` implement it; forward and backward
match ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` bit for bit, including the sign of
zero gradients (the mask is applied as ``grad * mask``, like torch).

*At the boundary* (``round(x / s) + z`` exactly ``qmin`` or ``qmax``) the
gradient is **1**: the boundary values are representable, so those inputs are
not saturated, and torch's kernels use the same inclusive mask. Just outside
(``qmax + 1``) it is 0. We compute the mask explicitly rather than
differentiate ``torch.clamp``, because clamp's boundary subgradient is a
convention, and it has been changed: pytorch/pytorch PR #191142 switched it to
0 (``self > min`` instead of ``>=``), which silently zeroed the gradient of
every element that rounds exactly to ``qmin`` or ``qmax`` in torchao's fake
quantization (it clamps *rounded* values against *integer* bounds, so landing
on the bound is common, not measure-zero) -- no error, training just degrades
-- until pytorch/ao PR #4806 gave torchao a clamp of its own. torch 2.13.0, as
used here, gives ``torch.clamp`` gradient 1 at the bound (``F.hardtanh``: 0).

Where we differ from torch's CPU kernels, deliberately (tested):

* NaN in, NaN out (the gradient mask is 0 there, as in torch);
  ``torch.fake_quantize_per_*`` turn a NaN into the value of ``qmin``, which
  hides a divergence.
* Per channel, inputs with ``|x / s| >= 2**63`` (e.g. ``±inf``) saturate to
  ``qmax``/``qmin``; torch's per-channel CPU kernel casts the float to int64
  first, which is undefined there and gives ``qmin`` for ``+inf`` on x86.

Arithmetic, so that results are bitwise torch's: ``x * (1 / s)`` (not
``x / s``) with ``1 / s`` in float32, rounded in float32 (float64 for float64
inputs); the dequantized product ``(q - z) * s`` is formed in float32 per
tensor and in float64 per channel, as torch's kernels do, then rounded to the
input's dtype. For float32 inputs both give the correctly rounded product.

**Observers** record the range of what flows through them (``MinMaxObserver``:
running min/max; ``MovingAverageMinMaxObserver``: ``m <- m + c (m_now - m)``
with averaging constant ``c``, 0.01 as in torch) in buffers, so the ranges are
saved in ``state_dict``; ``frozen`` stops the updates.

**QAT layers.** ``prepare_qat(model, FakeQuantConfig())`` swaps every
``nn.Linear`` and ``nn.Conv2d`` **in place** for ``QATLinear``/``QATConv2d``,
which fake-quantize the weight (default: per output channel, symmetric int8)
and the input activation (default: per tensor, asymmetric uint8) with the STE.
Fake quantization starts after ``enable_after_steps`` training forward passes
(the observers watch from the start, so ranges are ready; the delay lets
weights and activations settle first, as in pytorch/ao PR #198). Observers
record only in training mode, like BatchNorm's running statistics, so
evaluating never moves a range (torch's ``FakeQuantize`` observes in eval mode
too unless ``disable_observer`` is applied). ``freeze_observers`` fixes the
ranges; ``calibrate_observers`` records them without training (post-training
quantization with the same modules); ``remove_qat`` swaps plain layers back.

**Real int8** comes from torchao (``pip install -e .[qat]``): ``quantize_(m,
QATConfig(base, step="prepare"))``, train, ``quantize_(m, QATConfig(base,
step="convert"))`` (pytorch/ao PRs #2629/#2630; the older ``*QATQuantizer``
classes are deprecated). ``torchao_qat_prepare``/``torchao_qat_convert`` wrap
that. After *prepare* the weights are still float32 Parameters (pytorch/ao
#1290: prepare only fake-quantizes); after *convert* a ``Linear.weight`` is a
torchao tensor subclass holding int8 ``qdata`` plus scales -- whose ``.dtype``
still reports ``torch.float32``, the dtype it dequantizes to. torchao converts
``nn.Linear`` (and ``nn.Embedding``) only; convolutions stay float.

Introduced in chapter 08 (notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

from .affine import (
    FP32_EPS,
    qrange,
    QParams,
    calculate_qparams,
    quantize,
    dequantize,
    fake_quantize,
    FakeQuantizeSTE,
    fake_quantize_ste,
    ste_gradient,
)
from .observers import (MinMaxObserver, MovingAverageMinMaxObserver)
from .layers import (
    QuantSpec,
    FakeQuantConfig,
    FakeQuantizer,
    NoFakeQuantizer,
    QATLinear,
    QATConv2d,
    prepare_qat,
    remove_qat,
    freeze_observers,
    calibrate_observers,
)
from .real_int8 import (
    TORCHAO_REQUIREMENT,
    torchao_available,
    torchao_status,
    torchao_qat_prepare,
    torchao_qat_convert,
    torchao_int8_dynamic_quantize,
    serialized_size_bytes,
    DISABLE_TORCHAO_ENV,
)

__all__ = [
    "FP32_EPS", "qrange", "QParams", "calculate_qparams", "quantize", "dequantize",
    "fake_quantize", "FakeQuantizeSTE", "fake_quantize_ste", "ste_gradient",
    "MinMaxObserver", "MovingAverageMinMaxObserver",
    "QuantSpec", "FakeQuantConfig", "FakeQuantizer", "NoFakeQuantizer", "QATLinear", "QATConv2d",
    "prepare_qat", "remove_qat", "freeze_observers", "calibrate_observers",
    "TORCHAO_REQUIREMENT", "torchao_available", "torchao_status", "torchao_qat_prepare", "torchao_qat_convert",
    "torchao_int8_dynamic_quantize",
    "serialized_size_bytes", "DISABLE_TORCHAO_ENV",
]
