"""QAT layers: configuration, fake quantizers, QATLinear/QATConv2d, prepare/remove/freeze/calibrate.

See the package docstring (:mod:`course_lib.qat`). Introduced in chapter 08
(notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.validate import fraction, instance_of, non_negative_int, one_of
from .affine import QParams, _check_axis, _check_bool, _check_qrange, fake_quantize_ste
from .observers import MinMaxObserver, MovingAverageMinMaxObserver, _RangeObserver

# --------------------------------------------------------------------------- configuration
_OBSERVERS = ("minmax", "moving_average")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a weight or an activation) is fake-quantized.

    Args:
        qmin, qmax (int, default -128, 127): integer range, must include 0.
        symmetric (bool, default False): symmetric (``z`` fixed) or affine.
        axis (int | None, default None): per tensor, or per slice along ``axis``.
        observer (str, default "moving_average"): ``"minmax"`` or ``"moving_average"``.
        averaging_constant (float, default 0.01): ``c`` of the moving average
            in ``(0, 1]``; ``1.0`` = the range of the current tensor.

    Example:
        >>> obs = QuantSpec(qmin=0, qmax=255).make_observer()
        >>> type(obs).__name__, obs.qmin, obs.qmax, obs.averaging_constant
        ('MovingAverageMinMaxObserver', 0, 255, 0.01)
    """

    qmin: int = -128
    qmax: int = 127
    symmetric: bool = False
    axis: int | None = None
    observer: str = "moving_average"
    averaging_constant: float = 0.01

    def __post_init__(self):
        _check_qrange(self.qmin, self.qmax)
        _check_bool("symmetric", self.symmetric)
        _check_axis(self.axis)
        one_of("observer", self.observer, _OBSERVERS)
        c = fraction("averaging_constant", self.averaging_constant, closed=True)
        if c == 0.0:
            raise ValueError("averaging_constant must be in (0, 1], got 0.0")

    def make_observer(self) -> _RangeObserver:
        """A fresh observer for this spec."""
        kw = dict(symmetric=self.symmetric, axis=self.axis)
        if self.observer == "minmax":
            return MinMaxObserver(self.qmin, self.qmax, **kw)
        return MovingAverageMinMaxObserver(self.qmin, self.qmax,
                                           averaging_constant=self.averaging_constant, **kw)


def _default_weight_spec() -> QuantSpec:
    # int8, symmetric, one scale per output channel, from the current weights
    # (c = 1): what torchao's int8 weight configs compute at convert time.
    return QuantSpec(-128, 127, symmetric=True, axis=0, observer="moving_average",
                     averaging_constant=1.0)


def _default_activation_spec() -> QuantSpec:
    # uint8, affine, per tensor, moving average with torch's c = 0.01.
    return QuantSpec(0, 255, symmetric=False, axis=None, observer="moving_average",
                     averaging_constant=0.01)


@dataclass(frozen=True)
class FakeQuantConfig:
    """Where and how ``prepare_qat`` fake-quantizes a model.

    (Named so as not to clash with torchao's ``QATConfig``, used alongside.)

    Args:
        weight (QuantSpec | None, default int8 symmetric per output channel,
            range of the current weight): ``None`` leaves weights in float.
        activation (QuantSpec | None, default uint8 affine per tensor, moving
            average c=0.01): the layer *input*; ``None`` leaves it in float.
            Must be per tensor (``axis=None``).
        enable_after_steps (int, default 0): training forward passes that run
            without fake quantization (observers still record).

    Example:
        >>> FakeQuantConfig(enable_after_steps=100).weight.axis
        0
        >>> FakeQuantConfig(weight=QuantSpec(axis=1))
        Traceback (most recent call last):
        ...
        ValueError: weight axis must be 0 (output channels of Linear and Conv2d) or None, got 1
    """

    weight: QuantSpec | None = field(default_factory=_default_weight_spec)
    activation: QuantSpec | None = field(default_factory=_default_activation_spec)
    enable_after_steps: int = 0

    def __post_init__(self):
        if self.weight is not None:
            instance_of("weight", self.weight, QuantSpec, "a QuantSpec or None")
            if self.weight.axis not in (None, 0):
                raise ValueError("weight axis must be 0 (output channels of Linear and Conv2d) "
                                 f"or None, got {self.weight.axis}")
        if self.activation is not None:
            instance_of("activation", self.activation, QuantSpec, "a QuantSpec or None")
            if self.activation.axis is not None:
                raise ValueError("activation must be per tensor (axis=None): a Linear's channels are "
                                 f"the last axis, a Conv2d's axis 1; got axis={self.activation.axis}")
        non_negative_int("enable_after_steps", self.enable_after_steps)


# --------------------------------------------------------------------------- modules
class FakeQuantizer(nn.Module):
    """An observer plus STE fake quantization for one tensor.

    ``forward(x, apply=True)``: in training mode (and unless the observer is
    frozen) record ``x``'s range; then, if ``apply``, return
    ``fake_quantize_ste(x, observer.calculate_qparams())``, else ``x``.

    Args:
        spec (QuantSpec): range, symmetry, axis and observer.

    Example:
        >>> fq = FakeQuantizer(QuantSpec(0, 255))
        >>> fq(torch.tensor([0.0, 0.1, 2.55]))
        tensor([0.0000, 0.1000, 2.5500])
    """

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = instance_of("spec", spec, QuantSpec)
        self.observer = spec.make_observer()

    def forward(self, x: torch.Tensor, apply: bool = True) -> torch.Tensor:
        if self.training:
            self.observer(x)
        if not apply:
            return x
        return fake_quantize_ste(x, self.observer.calculate_qparams())

    def qparams(self) -> QParams:
        """The current ``QParams`` (``observer.calculate_qparams()``)."""
        return self.observer.calculate_qparams()


class NoFakeQuantizer(nn.Module):
    """The null ``FakeQuantizer``: returns its input (used when a spec is ``None``)."""

    def forward(self, x: torch.Tensor, apply: bool = True) -> torch.Tensor:
        return x


def _make_fake_quantizer(spec: QuantSpec | None) -> nn.Module:
    return NoFakeQuantizer() if spec is None else FakeQuantizer(spec)


class _QATMixin:
    """Shared state of the QAT layers: the two quantizers and the step counter."""

    def _init_qat(self, config: FakeQuantConfig) -> None:
        self.qat_config = instance_of("config", config, FakeQuantConfig)
        self.weight_fake_quant = _make_fake_quantizer(config.weight)
        self.activation_fake_quant = _make_fake_quantizer(config.activation)
        #: Training forward passes seen (a buffer, so it is checkpointed).
        self.register_buffer("qat_steps", torch.zeros((), dtype=torch.int64))

    def fake_quant_active(self) -> bool:
        """Whether fake quantization is applied now (``qat_steps >= enable_after_steps``)."""
        return int(self.qat_steps) >= self.qat_config.enable_after_steps

    def _step_and_check(self) -> bool:
        active = self.fake_quant_active()
        if self.training:
            self.qat_steps += 1
        return active

    def _share_parameters(self, float_module: nn.Module) -> None:
        self.weight = float_module.weight
        self.bias = float_module.bias
        self.train(float_module.training)
        self.to(float_module.weight.device)  # the buffers; shared Parameters keep their identity


class QATLinear(_QATMixin, nn.Linear):
    """``nn.Linear`` that fake-quantizes its input and weight.

    ``forward(x) = F.linear(fq_act(x), fq_w(weight), bias)`` where ``fq_*``
    are ``FakeQuantizer``s (STE) per ``config``; both pass through unchanged
    for the first ``config.enable_after_steps`` training forward passes.
    Build one from a trained layer with ``QATLinear.from_float``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        config (FakeQuantConfig, default FakeQuantConfig()): what to quantize.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = QATLinear.from_float(nn.Linear(4, 3))
        >>> layer(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 config: FakeQuantConfig | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_qat(FakeQuantConfig() if config is None else config)

    @classmethod
    def from_float(cls, linear: nn.Linear, config: FakeQuantConfig | None = None) -> "QATLinear":
        """A ``QATLinear`` sharing ``linear``'s Parameter objects (an optimizer built on them still works)."""
        instance_of("linear", linear, nn.Linear)
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  config=config, device="meta")
        new._share_parameters(linear)
        return new

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's Parameters (quantizers dropped)."""
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self._step_and_check()
        x = self.activation_fake_quant(x, active)
        return F.linear(x, self.weight_fake_quant(self.weight, active), self.bias)


class QATConv2d(_QATMixin, nn.Conv2d):
    """``nn.Conv2d`` that fake-quantizes its input and weight (see ``QATLinear``).

    The weight is quantized per output channel (axis 0) by default. BatchNorm
    is not folded into the weights (torch's eager QAT fuses Conv+BN first;
    torchao's convert does not touch convolutions at all).

    Args:
        as ``nn.Conv2d``, plus config (FakeQuantConfig, default FakeQuantConfig()).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = QATConv2d.from_float(nn.Conv2d(1, 2, 3, padding=1))
        >>> conv(torch.randn(1, 1, 4, 4)).shape
        torch.Size([1, 2, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 config: FakeQuantConfig | None = None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        self._init_qat(FakeQuantConfig() if config is None else config)

    @staticmethod
    def _conv_args(conv: nn.Conv2d) -> dict:
        return dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                    kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: FakeQuantConfig | None = None) -> "QATConv2d":
        """A ``QATConv2d`` sharing ``conv``'s Parameter objects."""
        instance_of("conv", conv, nn.Conv2d)
        new = cls(**cls._conv_args(conv), config=config, device="meta")
        new._share_parameters(conv)
        return new

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this layer's Parameters."""
        out = nn.Conv2d(**self._conv_args(self), device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self._step_and_check()
        x = self.activation_fake_quant(x, active)
        return self._conv_forward(x, self.weight_fake_quant(self.weight, active), self.bias)


_QAT_SWAPS = {nn.Linear: QATLinear, nn.Conv2d: QATConv2d}
_QAT_TYPES = (QATLinear, QATConv2d)


def _swap_children(module: nn.Module, prefix: str, fn: Callable[[nn.Module, str], nn.Module | None]):
    for name, child in list(module.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        new = fn(child, fqn)
        if new is not None:
            setattr(module, name, new)
        else:
            _swap_children(child, fqn, fn)


def prepare_qat(model: nn.Module, config: FakeQuantConfig | None = None, *,
                filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap ``nn.Linear``/``nn.Conv2d`` layers for ``QATLinear``/``QATConv2d``, **in place**.

    In place, like torchao's ``quantize_``: the QAT layers share the float
    layers' Parameter objects, so an optimizer or scheduler built before
    ``prepare_qat`` keeps working; ``copy.deepcopy(model)`` first to keep the
    float model. Only exact ``nn.Linear``/``nn.Conv2d`` instances are swapped
    (a subclass may not call ``forward``, e.g. ``MultiheadAttention.out_proj``);
    layers already prepared are left alone, so calling it twice is harmless.

    Args:
        model (nn.Module): the model (its submodules are replaced).
        config (FakeQuantConfig | None, default FakeQuantConfig()): what to quantize.
        filter_fn (callable | None, default None): ``filter_fn(module, name)``
            -> bool, ``False`` keeps that layer in float (e.g. the last one).

    Returns:
        nn.Module: ``model`` (or, when ``model`` itself is a Linear/Conv2d, its
        QAT replacement).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = prepare_qat(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> [type(layer).__name__ for layer in m]
        ['QATLinear', 'ReLU', 'QATLinear']
    """
    instance_of("model", model, nn.Module)
    config = FakeQuantConfig() if config is None else instance_of("config", config, FakeQuantConfig)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool or None, "
                        f"got {type(filter_fn).__name__}")

    def swap(child: nn.Module, fqn: str):
        if isinstance(child, _QAT_TYPES):
            return child
        cls = _QAT_SWAPS.get(type(child))
        if cls is None or (filter_fn is not None and not filter_fn(child, fqn)):
            return None
        return cls.from_float(child, config)

    root = swap(model, "")
    if root is not None:
        return root
    _swap_children(model, "", swap)
    return model


def remove_qat(model: nn.Module) -> nn.Module:
    """Swap QAT layers back to plain ``nn.Linear``/``nn.Conv2d`` (in place, Parameters shared).

    Use it to hand a QAT-trained model to a post-training converter (e.g.
    torchao's int8 configs). Returns ``model`` (or the float replacement of a
    QAT root layer).

    Example:
        >>> m = remove_qat(prepare_qat(nn.Sequential(nn.Linear(2, 2))))
        >>> type(m[0]).__name__
        'Linear'
    """
    instance_of("model", model, nn.Module)

    def swap(child: nn.Module, fqn: str):
        return child.to_float() if isinstance(child, _QAT_TYPES) else None

    root = swap(model, "")
    if root is not None:
        return root
    _swap_children(model, "", swap)
    return model


def _observers(model: nn.Module) -> list[_RangeObserver]:
    return [m for m in model.modules() if isinstance(m, _RangeObserver)]


def freeze_observers(model: nn.Module, frozen: bool = True) -> int:
    """Freeze (or, with ``frozen=False``, unfreeze) every observer in ``model``.

    Frozen observers keep their ranges, so scales and zero points stop moving
    (usual in the last epochs of QAT, and before converting). Returns the
    number of observers changed.

    Example:
        >>> m = prepare_qat(nn.Sequential(nn.Linear(2, 2)))
        >>> freeze_observers(m)
        2
    """
    instance_of("model", model, nn.Module)
    _check_bool("frozen", frozen)
    observers = _observers(model)
    for obs in observers:
        obs.frozen = frozen
    return len(observers)


def calibrate_observers(model: nn.Module, batches: Iterable) -> int:
    """Run ``batches`` through ``model`` so that its observers record ranges.

    For post-training quantization (PTQ) with the same modules: only the
    ``FakeQuantizer``s are put in training mode, everything else in eval (so
    BatchNorm statistics and QAT step counters do not move), under
    ``torch.no_grad()``; the previous modes are restored. A batch may be a
    tensor or a tuple/list whose first element is the input.

    Returns:
        int: the number of batches run.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = prepare_qat(nn.Sequential(nn.Linear(2, 2))).eval()
        >>> calibrate_observers(m, [torch.randn(4, 2)])
        1
    """
    instance_of("model", model, nn.Module)
    modes = {m: m.training for m in model.modules()}
    n = 0
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, FakeQuantizer):
                m.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
                n += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    return n
