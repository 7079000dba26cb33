"""Steppers: one object per optimisation style, with one protocol.

Every training loop in the course (``course_lib.train``, the DDP loop of
chapter 07, your own) performs the same four calls, whatever the precision::

    stepper.zero_grad()
    for micro_batch in group:                 # gradient accumulation: 1 or more
        stepper.backward(loss / n_micro)      # scales the loss if the style does
    info = stepper.step()                     # -> StepInfo(scale, skipped, grad_norm)

and the style decides what happens inside (the pattern of Lightning Fabric's
precision plugins and of ``torch.amp.GradScaler``'s per-step protocol):

* :class:`PlainStepper` -- a torch optimizer on the model's own parameters.
  An optional *fixed* loss scale is applied and removed but never checked:
  the step is always taken (the source tutorial's FP16 loop; chapter 03).
* :class:`MasterStepper` -- FP32 master weights
  (:class:`course_lib.master.MasterWeightOptimizer`) with a course_lib loss
  scaler; steps with inf/NaN gradients are skipped (chapters 03-04).
* :class:`GradScalerStepper` -- ``torch.amp.GradScaler`` (chapter 05).

``step()`` returns a :class:`StepInfo`: the loss scale this step's backward
used, whether the optimizer step was skipped (so a learning-rate scheduler
steps only after a real optimizer step: pytorch/pytorch#44511, #55585), and
the global norm of the *unscaled* gradients, measured before clipping (NaN
when skipped). Gradients are unscaled before they are measured or clipped
(clipping scaled gradients is a classic bug: pytorch/examples#1196).

A stepper without loss scaling holds the null scaler
:class:`course_lib.scaling.NoLossScaler`, never ``None``. Build steppers
from a recipe: :meth:`course_lib.recipes.Recipe.make_stepper`.
Introduced in chapter 03 (notebooks/03_manual_mixed_precision.ipynb).

Example:
    >>> model = torch.nn.Linear(3, 1)
    >>> stepper = PlainStepper(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1))
    >>> stepper.zero_grad(); stepper.backward(model(torch.ones(2, 3)).sum())
    >>> info = stepper.step(); info.skipped, info.scale
    (False, 1.0)
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from course_lib.gradients import clip_grads_, global_grad_norm
from course_lib.master import MasterWeightOptimizer
from course_lib.scaling import LossScaler, NoLossScaler
from course_lib.validate import instance_of, positive_float

__all__ = ["StepInfo", "Stepper", "PlainStepper", "MasterStepper", "GradScalerStepper"]


@dataclass(frozen=True)
class StepInfo:
    """What one optimizer step did.

    Attributes:
        scale (float): the loss scale the step's backward passes used (1.0 without scaling).
        skipped (bool): the optimizer did not step (inf/NaN gradients).
        grad_norm (float): global L2 norm of the unscaled gradients before clipping (NaN if skipped).
    """

    scale: float
    skipped: bool
    grad_norm: float


class Stepper(ABC):
    """The protocol: ``zero_grad()``, ``backward(loss)`` (repeatable), ``step() -> StepInfo``."""

    #: The torch optimizer that updates the weights (attach learning-rate schedulers to it).
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled if this style scales); gradients accumulate."""

    @abstractmethod
    def step(self) -> StepInfo:
        """Unscale, check, measure, clip and step (or skip); return what happened."""

    @property
    @abstractmethod
    def scale(self) -> float:
        """The loss scale the next backward pass will use."""

    @abstractmethod
    def zero_grad(self) -> None:
        """Clear the gradients (set them to ``None``)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: optimizer state and scaler state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


def _clip(grads, grad_clip: float | None, norm: float) -> None:
    if grad_clip is not None and math.isfinite(norm):
        clip_grads_(grads, grad_clip, norm)


class PlainStepper(Stepper):
    """A torch optimizer on the model's own parameters; a fixed loss scale applied unchecked.

    Algorithm of ``step()``: unscale the gradients by the scaler (the null
    scaler multiplies by nothing), measure their global norm, clip them if
    ``grad_clip`` is set and the norm is finite, and step the optimizer --
    even when a gradient is inf/NaN (the tutorial's FP16 loop checks
    nothing), unless ``skip_nonfinite=True``: then such a step is skipped
    (gradients left as they are, optimizer untouched).

    Args:
        params (list of Tensor): the parameters the optimizer updates.
        optimizer (torch.optim.Optimizer): built on ``params``.
        scaler (LossScaler | None, default None): ``StaticLossScaler`` for a fixed scale;
            ``None`` means :class:`NoLossScaler`.
        grad_clip (float | None, default None): clip to this global norm.
        skip_nonfinite (bool, default False): skip a step whose gradients hold inf/NaN.
    """

    def __init__(self, params, optimizer: torch.optim.Optimizer, scaler: LossScaler | None = None,
                 grad_clip: float | None = None, skip_nonfinite: bool = False):
        self.params = list(params)
        self.optimizer = instance_of("optimizer", optimizer, torch.optim.Optimizer)
        self.scaler = NoLossScaler() if scaler is None else instance_of("scaler", scaler, LossScaler)
        self.grad_clip = positive_float("grad_clip", grad_clip, allow_none=True)
        self.skip_nonfinite = bool(instance_of("skip_nonfinite", skip_nonfinite, bool))

    @property
    def scale(self) -> float:
        return self.scaler.get_scale()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> StepInfo:
        scale = self.scaler.get_scale()
        grads = [p.grad for p in self.params if p.grad is not None]
        found_inf = self.scaler.unscale_(grads)
        self.scaler.update()
        if found_inf and self.skip_nonfinite:
            return StepInfo(scale, True, math.nan)
        norm = global_grad_norm(grads)
        _clip(grads, self.grad_clip, norm)
        self.optimizer.step()
        return StepInfo(scale, False, norm)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


class MasterStepper(Stepper):
    """FP32 master weights with a course_lib loss scaler; non-finite steps are skipped.

    A thin adapter of :class:`course_lib.master.MasterWeightOptimizer` (which
    holds the algorithm) to the stepper protocol.

    Args:
        params (list of Tensor): the 16-bit model's parameters.
        optimizer_factory (callable): called with the FP32 master param groups, returns
            a ``torch.optim.Optimizer``.
        scaler (LossScaler | None, default None): ``None`` means :class:`NoLossScaler`.
        grad_clip (float | None, default None): clip the unscaled master gradients.
    """

    def __init__(self, params, optimizer_factory: Callable[..., torch.optim.Optimizer],
                 scaler: LossScaler | None = None, grad_clip: float | None = None):
        self.master = MasterWeightOptimizer(params, optimizer_factory, scaler=scaler,
                                            max_grad_norm=grad_clip)
        self.optimizer = self.master.optimizer

    @property
    def scaler(self) -> LossScaler:
        return self.master.scaler

    @property
    def scale(self) -> float:
        return self.master.loss_scale

    def backward(self, loss: torch.Tensor) -> None:
        self.master.scale_loss(loss).backward()

    def step(self) -> StepInfo:
        scale = self.master.loss_scale
        stepped = self.master.step()
        return StepInfo(scale, not stepped, self.master.last_grad_norm)

    def zero_grad(self) -> None:
        self.master.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        return self.master.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.master.load_state_dict(state)


class GradScalerStepper(Stepper):
    """``torch.amp.GradScaler`` in the canonical order: scale, backward, unscale_, clip, step, update.

    Whether ``GradScaler.step`` really stepped is read from an optimizer
    step post-hook (it skips the optimizer when it found inf/NaN).

    Args:
        params (list of Tensor): the float32 parameters.
        optimizer (torch.optim.Optimizer): built on ``params``.
        grad_scaler (torch.amp.GradScaler): ``enabled=False`` is its own null object.
        grad_clip (float | None, default None): clip the unscaled gradients.
    """

    def __init__(self, params, optimizer: torch.optim.Optimizer, grad_scaler: torch.amp.GradScaler,
                 grad_clip: float | None = None):
        self.params = list(params)
        self.optimizer = instance_of("optimizer", optimizer, torch.optim.Optimizer)
        self.grad_scaler = instance_of("grad_scaler", grad_scaler, torch.amp.GradScaler)
        self.grad_clip = positive_float("grad_clip", grad_clip, allow_none=True)
        self._stepped = False
        self.optimizer.register_step_post_hook(self._mark_stepped)

    def _mark_stepped(self, *_args, **_kwargs) -> None:
        self._stepped = True

    @property
    def scale(self) -> float:
        return self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def step(self) -> StepInfo:
        scale = self.scale
        self.grad_scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = global_grad_norm(grads)
        _clip(grads, self.grad_clip, norm)
        self._stepped = False
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        skipped = not self._stepped
        return StepInfo(scale, skipped, math.nan if skipped else norm)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "grad_scaler": self.grad_scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state["grad_scaler"]:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
