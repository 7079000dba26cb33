"""Loss scaling: keep small fp16 gradients from flushing to zero.

Algorithm. Before ``backward()`` multiply the loss by a scale ``S``; by the
chain rule every gradient is multiplied by ``S`` too, lifting tiny values
out of fp16's underflow range. Before the optimizer step, multiply the
gradients by ``1/S`` ("unscale") and check them: if any is inf or NaN the
scale was too large, so the step must be skipped.

* ``StaticLossScaler``: ``S`` never changes.
* ``DynamicLossScaler``: the rule of ``torch.amp.GradScaler`` -- on an
  overflow multiply ``S`` by ``backoff_factor`` (and restart the count);
  after ``growth_interval`` consecutive clean steps multiply it by
  ``growth_factor`` (kept only if the result is finite). ``S`` is held in
  float32 and every product is rounded to float32 exactly as torch does, so
  the two produce the same scale trajectory step for step. Options torch
  lacks: ``min_scale``/``max_scale`` clamp ``S``; ``hysteresis=N`` backs off
  only at the N-th overflow (DeepSpeed's ``delayed_shift``). With the
  defaults the rule is exactly GradScaler's.

The call order per step is ``scale(loss).backward()``, ``unscale_(grads)``
(returns ``found_inf``: skip the optimizer step when it is ``True``), then
``update()``. ``unscale_`` is one fused kernel per device and dtype with one
host synchronisation (:func:`course_lib.gradients.unscale_and_check_`); the
readable per-tensor loop it replaces is
:func:`course_lib.gradients.unscale_and_check_reference_`.
``python -m course_lib bench scaler`` times the whole step against
``torch.amp.GradScaler`` on the same gradients.
Introduced in chapter 04 (notebooks/04_loss_scaling.ipynb).
"""
from __future__ import annotations

import math
import struct
from typing import Any

import torch

from course_lib.gradients import unscale_and_check_
from course_lib.validate import instance_of, positive_float, positive_int

__all__ = ["LossScaler", "NoLossScaler", "StaticLossScaler", "DynamicLossScaler", "update_scale",
           "to_float32"]

_FLOAT32 = struct.Struct("f")


def to_float32(x: float) -> float:
    """Round a Python float to the nearest float32 (ties to even; inf beyond the range).

    This is how torch stores a loss scale: ``float(torch.tensor(x,
    dtype=torch.float64).to(torch.float32))``, computed without creating a
    tensor (``struct`` packs the value as a C ``float``, the same
    round-to-nearest conversion; it refuses values that round to inf, which
    are returned as inf).

    Example:
        >>> to_float32(0.1), to_float32(2.0 ** 128), to_float32(3.0)
        (0.10000000149011612, inf, 3.0)
    """
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _collect_grads(grads_or_params) -> list[torch.Tensor]:
    """Gradients to unscale: ``.grad`` of parameters / of an optimizer's params, or the tensors."""
    if isinstance(grads_or_params, torch.optim.Optimizer):  # the common case: one pass, no checks
        return [p.grad for g in grads_or_params.param_groups for p in g["params"] if p.grad is not None]
    if isinstance(grads_or_params, torch.Tensor):
        items: list = [grads_or_params]
    else:
        try:
            items = list(grads_or_params)
        except TypeError:
            raise TypeError("unscale_() takes gradients or parameters: a Tensor, an iterable of "
                            f"Tensors, or a torch.optim.Optimizer; got {type(grads_or_params).__name__}") \
                from None
    out = []
    for t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"unscale_() got an element of type {type(t).__name__}; "
                            "allowed: gradient tensors or parameters")
        if isinstance(t, torch.nn.Parameter) or t.requires_grad:  # a parameter: unscale its gradient
            if t.grad is not None:
                out.append(t.grad)
        else:
            out.append(t)  # a gradient tensor itself
    return out


class LossScaler:
    """Base class: a loss scale ``S`` with ``scale``/``unscale_``/``update``.

    Subclasses implement ``_next_scale(found_inf)``. Use ``StaticLossScaler``
    or ``DynamicLossScaler``.
    """

    def __init__(self, scale: float):
        self._scale = to_float32(positive_float("scale", scale))
        self._pending_found_inf: bool | None = None  # set by unscale_, consumed by update
        self._scale_tensors: dict[torch.device, tuple[float, torch.Tensor]] = {}  # see scale()
        #: Number of ``update()`` calls that saw an inf/NaN gradient.
        self.overflow_count = 0

    # -- the scale -----------------------------------------------------------
    @property
    def scale_value(self) -> float:
        """The current loss scale ``S`` (a Python float, float32-representable)."""
        return self._scale

    def get_scale(self) -> float:
        """Return the current loss scale (same as ``scale_value``; named like GradScaler's)."""
        return self._scale

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self._scale!r})"

    # -- the three steps -----------------------------------------------------
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss * S`` (call ``.backward()`` on the result).

        As in ``torch.amp.GradScaler``, ``S`` is a 0-dim float32 tensor, so a
        0-dim fp16 or bf16 loss is promoted to float32 (an fp64 loss stays
        fp64). The tensor is made once per device and value and reused (never
        modified in place: autograd keeps it for the backward pass).

        Example:
            >>> StaticLossScaler(8.0).scale(torch.tensor(0.5))
            tensor(4.)
        """
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"scale() takes a loss Tensor, got {type(loss).__name__}")
        cached = self._scale_tensors.get(loss.device)
        if cached is None or cached[0] != self._scale:
            cached = (self._scale, torch.full((), self._scale, dtype=torch.float32, device=loss.device))
            self._scale_tensors[loss.device] = cached
        return loss * cached[1]

    def unscale_(self, grads_or_params) -> bool:
        """Multiply gradients in place by ``1/S``; return ``True`` if any is inf/NaN.

        Algorithm (as ``torch.amp.GradScaler.unscale_``): ``inv = float32(1 /
        float64(S))``; every gradient is checked for non-finite values
        *before* the multiplication, then multiplied by ``inv``. The result is
        remembered for ``update()``. Call it once per step.

        Args:
            grads_or_params: gradient tensors, parameters (their ``.grad`` is
                used; ``None`` grads are skipped), a single tensor, or a
                ``torch.optim.Optimizer`` (its parameters' grads).

        Returns:
            bool: ``found_inf``.

        Example:
            >>> s = StaticLossScaler(4.0); g = torch.tensor([8.0, float("inf")])
            >>> s.unscale_([g]), g
            (True, tensor([2., inf]))
        """
        if self._pending_found_inf is not None:
            raise RuntimeError("unscale_() has already been called on this scaler since the last "
                               "update(); call update() to finish this step before unscaling again.")
        found_inf = unscale_and_check_(_collect_grads(grads_or_params), self._unscale_by())
        self._pending_found_inf = found_inf
        return found_inf

    def update(self, found_inf: bool | None = None) -> None:
        """Finish the step: adjust ``S`` given whether this step overflowed.

        Args:
            found_inf (bool | None, default None): ``None`` uses the result of
                this step's ``unscale_()``; a bool is OR-ed with it (or used
                alone if ``unscale_()`` was not called).

        Example:
            >>> s = DynamicLossScaler(init_scale=1024.0); s.update(found_inf=True); s.get_scale()
            512.0
        """
        if found_inf is None:
            if self._pending_found_inf is None:
                raise RuntimeError("No inf checks were recorded prior to update(): call "
                                   "unscale_(grads) first, or pass update(found_inf=True/False).")
            found = self._pending_found_inf
        else:
            is_flag = isinstance(found_inf, (bool, int)) or type(found_inf).__name__ == "bool_"
            if not is_flag and not (isinstance(found_inf, torch.Tensor) and found_inf.numel() == 1):
                raise TypeError(f"found_inf must be a bool or None, got {type(found_inf).__name__}")
            found = bool(found_inf) or bool(self._pending_found_inf)
        self._pending_found_inf = None
        if found:
            self.overflow_count += 1
        self._scale = self._next_scale(found)

    def _next_scale(self, found_inf: bool) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _unscale_by(self) -> float | None:
        """The scale ``unscale_`` divides by (``None``: check only, multiply by nothing)."""
        return self._scale

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return the scaler's state as a dict of Python numbers (call it after ``update()``)."""
        return {"scale": self._scale, "overflow_count": self.overflow_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by ``state_dict()``."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict() takes a dict, got {type(state).__name__}")
        if "scale" not in state:
            raise ValueError(f"state dict lacks the key 'scale' (has {sorted(state)}); "
                             "pass the dict returned by state_dict()")
        self._scale = to_float32(positive_float("state['scale']", state["scale"]))
        self.overflow_count = int(state.get("overflow_count", 0))
        self._pending_found_inf = None


class NoLossScaler(LossScaler):
    """The null scaler: scale 1, nothing multiplied, but ``unscale_`` still checks for inf/NaN.

    Use it where a step has no loss scaling but the same protocol
    (``scale`` / ``unscale_`` / ``update``) keeps the caller free of
    ``if scaler is None`` branches: ``scale(loss)`` returns ``loss`` itself
    (no promotion to float32), ``unscale_`` only reports non-finite
    gradients, and ``update`` changes nothing but ``overflow_count``.

    Example:
        >>> s = NoLossScaler(); g = torch.tensor([float("nan")])
        >>> s.scale(torch.tensor(2.0)), s.unscale_([g]), s.get_scale()
        (tensor(2.), True, 1.0)
    """

    def __init__(self):
        super().__init__(1.0)

    def __repr__(self) -> str:
        return "NoLossScaler()"

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss`` unchanged."""
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"scale() takes a loss Tensor, got {type(loss).__name__}")
        return loss

    def _unscale_by(self) -> float | None:
        return None

    def _next_scale(self, found_inf: bool) -> float:
        return 1.0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; a state saved with a real loss scale is refused."""
        if isinstance(state, dict) and state.get("scale", 1.0) != 1.0:
            raise ValueError(f"the state was saved with a loss scale of {state['scale']!r}, but this "
                             "has no loss scaler (NoLossScaler); load it into the scaler that saved it")
        super().load_state_dict(state)


class StaticLossScaler(LossScaler):
    """A fixed loss scale.

    Algorithm: ``S`` never changes; ``unscale_`` still reports overflows so
    the caller can skip the step.

    Args:
        scale (float, default 128.0): the loss scale ``S`` (> 0; powers of two
            make scaling and unscaling exact).

    Example:
        >>> s = StaticLossScaler(128.0)
        >>> s.update(found_inf=True); s.get_scale(), s.overflow_count
        (128.0, 1)
    """

    def __init__(self, scale: float = 128.0):
        super().__init__(scale)

    def _next_scale(self, found_inf: bool) -> float:
        return self._scale


def update_scale(scale: float, growth_tracker: int, found_inf: bool, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """One step of ``torch.amp.GradScaler``'s scale rule: return ``(new_scale, new_growth_tracker)``.

    Algorithm (the CPU and CUDA kernels of ``torch._amp_update_scale_``)::

        if found_inf:  return f32(scale * backoff_factor), 0
        tracker = growth_tracker + 1
        if tracker == growth_interval:
            grown = f32(scale * growth_factor)
            return (grown if isfinite(grown) else scale), 0
        return scale, tracker

    ``f32`` rounds the float64 product to the nearest float32 (:func:`to_float32`):
    torch keeps the scale in a float32 tensor and multiplies it by the factors,
    which are Python floats (float64). The result is therefore bit-identical
    to GradScaler's. No argument checks: this is the inner rule that
    :class:`DynamicLossScaler` (which validates its arguments) calls every step.

    Args:
        scale (float): the current scale (float32-representable).
        growth_tracker (int): clean steps since the last growth or overflow, ``0 <= . < growth_interval``.
        found_inf (bool): whether this step's gradients held inf/NaN.
        growth_factor (float, default 2.0), backoff_factor (float, default 0.5),
        growth_interval (int, default 2000): as in ``torch.amp.GradScaler``.

    Example:
        >>> update_scale(65536.0, 1999, False)
        (131072.0, 0)
        >>> update_scale(65536.0, 1234, True, backoff_factor=0.3)
        (19660.80078125, 0)
    """
    if found_inf:
        return to_float32(scale * backoff_factor), 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        grown = to_float32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, growth_tracker


class DynamicLossScaler(LossScaler):
    """The dynamic loss scale of ``torch.amp.GradScaler``, plus bounds and hysteresis.

    Algorithm (per ``update(found_inf)``; :func:`update_scale` is GradScaler's rule)::

        if found_inf and hysteresis_left > 1:      # tolerated overflow (hysteresis)
            hysteresis_left -= 1; tracker = 0      #   S unchanged; the step is still skipped
        else:
            if not found_inf and consecutive_hysteresis: hysteresis_left = hysteresis
            S, tracker = update_scale(S, tracker, found_inf, growth_factor, backoff_factor,
                                      growth_interval)
            if a growth window just completed: hysteresis_left = hysteresis
            S = clamp(S, min_scale, max_scale)     # only the bounds that are not None

    **Hysteresis** (DeepSpeed's ``delayed_shift``, Megatron-LM's
    ``hysteresis``): with ``hysteresis=N`` the scale backs off only at the
    N-th overflow; the overflows before it skip their steps but leave ``S``
    alone, so one isolated spike does not halve the scale. Once spent, the
    counter stays at 1 -- every further overflow backs off -- until it is
    refilled. It is **not** refilled by a clean step: only when
    ``growth_interval`` consecutive clean steps complete a growth window
    (whether or not the growth was taken), as in DeepSpeed's default and
    Megatron-LM. With ``consecutive_hysteresis=True`` (DeepSpeed's option of
    that name) every clean step refills it, so only N overflows *in a row*
    back off. Every overflow restarts the growth window, tolerated or not.
    ``hysteresis=1`` (the default) is exactly GradScaler's rule.

    Args:
        init_scale (float, default 2.**16): the first ``S``.
        growth_factor (float, default 2.0): > 1.
        backoff_factor (float, default 0.5): in (0, 1).
        growth_interval (int, default 2000): clean steps between growths.
        min_scale (float | None, default None): lower bound for ``S``.
        max_scale (float | None, default None): upper bound for ``S``.
        hysteresis (int, default 1): overflows needed for one back-off.
        consecutive_hysteresis (bool, default False): refill the hysteresis on every clean step.

    Example:
        >>> s = DynamicLossScaler(init_scale=8.0, growth_interval=2)
        >>> for inf in (False, False, True): s.update(inf)
        >>> s.get_scale()
        8.0
        >>> h = DynamicLossScaler(init_scale=8.0, hysteresis=2)
        >>> scales = []
        >>> for inf in (True, False, True, True): h.update(inf); scales.append(h.get_scale())
        >>> scales  # the first overflow is tolerated; the counter is not refilled by a clean step
        [8.0, 8.0, 4.0, 2.0]
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 min_scale: float | None = None, max_scale: float | None = None,
                 hysteresis: int = 1, consecutive_hysteresis: bool = False):
        super().__init__(positive_float("init_scale", init_scale))
        self.growth_factor = positive_float("growth_factor", growth_factor)
        if self.growth_factor <= 1.0:
            raise ValueError(f"growth_factor must be > 1.0, got {growth_factor!r}")
        self.backoff_factor = positive_float("backoff_factor", backoff_factor)
        if self.backoff_factor >= 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        self.growth_interval = positive_int("growth_interval", growth_interval)
        self.min_scale = None if min_scale is None else positive_float("min_scale", min_scale)
        self.max_scale = None if max_scale is None else positive_float("max_scale", max_scale)
        if self.min_scale is not None and self.max_scale is not None and self.min_scale > self.max_scale:
            raise ValueError(f"min_scale={min_scale} is larger than max_scale={max_scale}")
        self.hysteresis = positive_int("hysteresis", hysteresis)
        self.consecutive_hysteresis = instance_of("consecutive_hysteresis", consecutive_hysteresis, bool)
        self._scale = self._clamp(self._scale)
        #: Consecutive clean steps since the last growth or overflow.
        self.growth_tracker = 0
        #: Overflows still tolerated before the next back-off counts (``hysteresis`` when full).
        self.hysteresis_left = self.hysteresis

    def __repr__(self) -> str:
        extra = (f", hysteresis={self.hysteresis}, hysteresis_left={self.hysteresis_left}"
                 if self.hysteresis > 1 else "")
        return (f"DynamicLossScaler(scale={self._scale!r}, growth_tracker={self.growth_tracker}, "
                f"growth_factor={self.growth_factor}, backoff_factor={self.backoff_factor}, "
                f"growth_interval={self.growth_interval}{extra})")

    def _clamp(self, s: float) -> float:
        if self.min_scale is not None and s < self.min_scale:
            s = to_float32(self.min_scale)
        if self.max_scale is not None and s > self.max_scale:
            s = to_float32(self.max_scale)
        return s

    def _next_scale(self, found_inf: bool) -> float:
        if found_inf and self.hysteresis_left > 1:
            self.hysteresis_left -= 1
            self.growth_tracker = 0
            return self._scale
        if not found_inf and self.consecutive_hysteresis:
            self.hysteresis_left = self.hysteresis
        s, self.growth_tracker = update_scale(self._scale, self.growth_tracker, found_inf,
                                              self.growth_factor, self.backoff_factor,
                                              self.growth_interval)
        if not found_inf and self.growth_tracker == 0:  # a growth window just completed
            self.hysteresis_left = self.hysteresis
        return self._clamp(s)

    _KEYS = ("growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")

    def state_dict(self) -> dict[str, Any]:
        """Return the state; the first five keys match ``torch.amp.GradScaler.state_dict()``.

        Example:
            >>> sorted(DynamicLossScaler().state_dict())[:3]
            ['_growth_tracker', '_hysteresis_left', 'backoff_factor']
        """
        return {"scale": self._scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self.growth_tracker, "min_scale": self.min_scale,
                "max_scale": self.max_scale, "hysteresis": self.hysteresis,
                "consecutive_hysteresis": self.consecutive_hysteresis,
                "_hysteresis_left": self.hysteresis_left, "overflow_count": self.overflow_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()`` -- or from a ``GradScaler.state_dict()``.

        A GradScaler's state has no bounds or hysteresis: those keep this
        scaler's settings (with the hysteresis counter full).
        """
        if isinstance(state, dict):
            missing = [k for k in self._KEYS if k not in state]
            if missing:
                raise ValueError(f"state dict lacks the keys {missing}; pass the dict returned by "
                                 "DynamicLossScaler.state_dict() or torch.amp.GradScaler.state_dict()")
        super().load_state_dict(state)
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.growth_tracker = int(state["_growth_tracker"])
        self.min_scale = state.get("min_scale", self.min_scale)
        self.max_scale = state.get("max_scale", self.max_scale)
        self.hysteresis = int(state.get("hysteresis", self.hysteresis))
        self.consecutive_hysteresis = bool(state.get("consecutive_hysteresis", self.consecutive_hysteresis))
        self.hysteresis_left = int(state.get("_hysteresis_left", self.hysteresis))
