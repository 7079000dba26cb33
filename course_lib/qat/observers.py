"""Observers: the running range of what flows through a layer, and the scale and zero point from it.

See the package docstring (:mod:`course_lib.qat`). Introduced in chapter 08
(notebooks/08_quantization_aware_training.ipynb).
"""
from __future__ import annotations

import torch
from torch import nn

from course_lib.validate import fraction
from .affine import FP32_EPS, QParams, _check_axis, _check_bool, _check_qrange, _check_x, calculate_qparams

# --------------------------------------------------------------------------- observers
class _RangeObserver(nn.Module):
    """Base: records a range in buffers ``min_val``/``max_val``; subclasses define ``_update``."""

    def __init__(self, qmin: int = -128, qmax: int = 127, *, symmetric: bool = False,
                 axis: int | None = None, eps: float = FP32_EPS):
        super().__init__()
        self.qmin, self.qmax = _check_qrange(qmin, qmax)
        self.symmetric = _check_bool("symmetric", symmetric)
        self.axis = _check_axis(axis)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        # Empty until the first observation; then 0-d (per tensor) or (C,) (per channel).
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.register_buffer("frozen_flag", torch.tensor(False))

    @property
    def frozen(self) -> bool:
        """When True, ``forward`` passes tensors through without updating the range."""
        return bool(self.frozen_flag)

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.frozen_flag.fill_(_check_bool("frozen", value))

    @property
    def has_observed(self) -> bool:
        """Whether any tensor has been observed (or a range loaded)."""
        return self.min_val.numel() > 0

    def reset(self) -> None:
        """Forget the recorded range."""
        self.min_val.resize_(0)
        self.max_val.resize_(0)

    def _current_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return torch.aminmax(x)
        if self.axis >= x.dim():
            raise ValueError(f"observer axis={self.axis} but the tensor has {x.dim()} dimensions")
        return torch.aminmax(x.movedim(self.axis, 0).flatten(1), dim=1)

    def _store(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min_val.resize_(lo.shape).copy_(lo)
        self.max_val.resize_(hi.shape).copy_(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x``'s range (unless frozen or ``x`` is empty); return ``x`` unchanged."""
        _check_x(x)
        if self.frozen or x.numel() == 0:
            return x
        lo, hi = self._current_range(x)
        if not self.has_observed:
            self._store(lo, hi)
        else:
            if lo.shape != self.min_val.shape:
                raise ValueError(f"observer recorded {self.min_val.numel()} channels, the tensor "
                                 f"has {lo.numel()} along axis {self.axis}")
            self._store(*self._update(lo, hi))
        return x

    def _update(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def calculate_qparams(self) -> QParams:
        """``calculate_qparams`` of the recorded range (see the module docstring)."""
        if not self.has_observed:
            raise RuntimeError(f"{type(self).__name__} has observed nothing yet: call it on a tensor "
                               "(a training forward pass, or calibrate_observers) first")
        return calculate_qparams(self.min_val, self.max_val, self.qmin, self.qmax,
                                 symmetric=self.symmetric, axis=self.axis, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("min_val", "max_val"):  # the range's shape is set by the saved one
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                getattr(self, name).resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        where = "per tensor" if self.axis is None else f"axis={self.axis}"
        return f"qmin={self.qmin}, qmax={self.qmax}, {kind}, {where}, frozen={self.frozen}"


class MinMaxObserver(_RangeObserver):
    """Record the running minimum and maximum of everything observed.

    Algorithm: ``min <- min(min, min(x))``, ``max <- max(max, max(x))``
    (per slice along ``axis`` when given), stored in float32 buffers.

    Args:
        qmin, qmax (int, default -128, 127): the integer range for ``calculate_qparams``.
        symmetric (bool, default False): symmetric or affine parameters.
        axis (int | None, default None): per-tensor, or per slice along ``axis``.
        eps (float, default ``FP32_EPS``): smallest scale.

    Example:
        >>> obs = MinMaxObserver(0, 255)
        >>> _ = obs(torch.tensor([-1.0, 2.0])); _ = obs(torch.tensor([3.0]))
        >>> obs.min_val, obs.max_val
        (tensor(-1.), tensor(3.))
        >>> obs.calculate_qparams().zero_point
        tensor(64, dtype=torch.int32)
    """

    def _update(self, lo, hi):
        return torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)


class MovingAverageMinMaxObserver(_RangeObserver):
    """Record an exponential moving average of each observed minimum and maximum.

    Algorithm: the first tensor sets ``min, max``; then
    ``min <- min + c * (min(x) - min)`` (same for ``max``), as torch's
    ``MovingAverageMinMaxObserver``. With ``c = 1`` the range is that of the
    latest tensor exactly (the update is skipped, so no rounding enters).

    Args:
        qmin, qmax, symmetric, axis, eps: as ``MinMaxObserver``.
        averaging_constant (float, default 0.01): ``c`` in ``(0, 1]``.

    Example:
        >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
        >>> _ = obs(torch.tensor([-1.0, 1.0])); _ = obs(torch.tensor([-3.0, 5.0]))
        >>> obs.min_val, obs.max_val
        (tensor(-2.), tensor(3.))
    """

    def __init__(self, qmin: int = -128, qmax: int = 127, *, symmetric: bool = False,
                 axis: int | None = None, eps: float = FP32_EPS,
                 averaging_constant: float = 0.01):
        super().__init__(qmin, qmax, symmetric=symmetric, axis=axis, eps=eps)
        self.averaging_constant = fraction("averaging_constant", averaging_constant, closed=True)
        if self.averaging_constant == 0.0:
            raise ValueError("averaging_constant must be in (0, 1], got 0.0 (the range would never move)")

    def _update(self, lo, hi):
        c = self.averaging_constant
        if c == 1.0:
            return lo, hi
        return self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", averaging_constant={self.averaging_constant}"
