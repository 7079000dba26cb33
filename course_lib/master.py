"""FP32 master weights for a low-precision (fp16/bf16) model.

Algorithm (Micikevicius et al., "Mixed Precision Training", 2018). The model
computes in 16 bits, but the optimizer updates a float32 *master* copy of
every parameter, because an update ``lr * g`` is often smaller than half a
unit in the last place of a 16-bit weight and would simply be rounded away.
Each ``step()``:

1. copy the model's 16-bit gradients into float32 master gradients;
2. unscale them by the loss scale (if a loss scaler is used) and check for
   inf/NaN; on overflow **skip** the step: nothing changes except the counter
   ``skipped_steps`` (and the scaler's scale), and the gradients are zeroed;
3. optionally clip the master gradients by their global L2 norm;
4. step the wrapped torch optimizer on the float32 masters;
5. copy the masters back into the model, rounding to the model's dtype.

Any ``torch.optim`` optimizer works; its state (momenta, ...) is float32
because it lives on the masters.
Introduced in chapter 03 (notebooks/03_manual_mixed_precision.ipynb).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from course_lib.gradients import clip_grads_, global_grad_norm, unscale_and_check_
from course_lib.scaling import LossScaler, NoLossScaler
from course_lib.validate import instance_of, positive_float

__all__ = ["MasterWeightOptimizer", "unscale_to_fp32", "master_sgd_step",
           # re-exported from course_lib.gradients, where they live
           "global_grad_norm", "clip_grads_"]


def _param_groups(params) -> list[dict]:
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    elif isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module or an iterable of Parameters, got a single Tensor; "
                        "wrap it in a list")
    else:
        try:
            params = list(params)
        except TypeError:
            raise TypeError("params must be an nn.Module, an iterable of Parameters or of param-group "
                            f"dicts; got {type(params).__name__}") from None
    if not params:
        raise ValueError("MasterWeightOptimizer got an empty parameter list")
    groups = params if isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError("param groups must all be dicts with a 'params' key (or pass Parameters)")
        ps = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
        for p in ps:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"expected Parameters, got an element of type {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"parameter of dtype {p.dtype} is not floating point")
        out.append({**g, "params": [p for p in ps if p.requires_grad]})
    if not any(g["params"] for g in out):
        raise ValueError("MasterWeightOptimizer got no parameter with requires_grad=True")
    return out


class MasterWeightOptimizer:
    """Train a 16-bit model through float32 master weights (see module docstring).

    Args:
        params (nn.Module | iterable of Parameters | iterable of param-group dicts):
            the low-precision model's parameters (fp16, bf16 -- or fp32, which
            then reproduces plain fp32 training exactly).
        optimizer_cls (callable, default ``torch.optim.Adam``): called as
            ``optimizer_cls(master_param_groups, **optimizer_kwargs)``; must
            return a ``torch.optim.Optimizer``.
        scaler (LossScaler | None, default None): a ``StaticLossScaler`` or
            ``DynamicLossScaler``; ``None`` means no loss scaling and is
            replaced by the null scaler ``NoLossScaler()`` (the gradients are
            still checked for inf/NaN).
        max_grad_norm (float | None, default None): clip the unscaled master
            gradients to this global L2 norm.
        **optimizer_kwargs: e.g. ``lr=1e-3``.

    Attributes:
        optimizer (torch.optim.Optimizer): the wrapped optimizer (on the masters);
        master_params (list[Tensor]): the float32 masters;
        model_params (list[Tensor]): the model's parameters;
        scaler, skipped_steps (int), steps_taken (int), last_grad_norm (float,
        NaN after a skipped step), last_stepped (bool | None).

    Example:
        >>> from course_lib.scaling import StaticLossScaler
        >>> model = torch.nn.Linear(4, 2).to(torch.bfloat16)
        >>> opt = MasterWeightOptimizer(model, torch.optim.SGD, lr=0.1, scaler=StaticLossScaler(128.0))
        >>> loss = model(torch.ones(3, 4, dtype=torch.bfloat16)).float().pow(2).mean()
        >>> opt.scale_loss(loss).backward(); opt.step(), opt.skipped_steps
        (True, 0)
        >>> opt.zero_grad()
    """

    def __init__(self, params, optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                 *, scaler: LossScaler | None = None, max_grad_norm: float | None = None,
                 **optimizer_kwargs: Any):
        if not callable(optimizer_cls):
            raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer class or factory, "
                            f"got {optimizer_cls!r}")
        scaler = NoLossScaler() if scaler is None else instance_of(
            "scaler", scaler, LossScaler, "a course_lib.scaling.LossScaler (StaticLossScaler or "
            "DynamicLossScaler) or None")
        max_grad_norm = positive_float("max_grad_norm", max_grad_norm, allow_none=True)
        groups = _param_groups(params)
        self.model_params: list[torch.Tensor] = [p for g in groups for p in g["params"]]
        self.master_params: list[torch.Tensor] = []
        master_groups = []
        for g in groups:
            masters = [p.detach().clone().to(torch.float32).requires_grad_(True) for p in g["params"]]
            self.master_params += masters
            master_groups.append({**g, "params": masters})
        self.optimizer = optimizer_cls(master_groups, **optimizer_kwargs)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer_cls returned {type(self.optimizer).__name__}, "
                            "not a torch.optim.Optimizer")
        self.scaler: LossScaler = scaler
        self.max_grad_norm = max_grad_norm
        self.skipped_steps = 0
        self.steps_taken = 0
        self.last_grad_norm = math.nan
        self.last_stepped: bool | None = None

    # -- convenience ---------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        """The wrapped optimizer's param groups (change ``lr`` here)."""
        return self.optimizer.param_groups

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1.0 without a scaler)."""
        return self.scaler.get_scale()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss`` multiplied by the loss scale; call ``.backward()`` on it."""
        return self.scaler.scale(loss)

    def __repr__(self) -> str:
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self.model_params})
        return (f"MasterWeightOptimizer({type(self.optimizer).__name__}, model dtypes={dtypes}, "
                f"params={len(self.model_params)}, scaler={self.scaler!r}, "
                f"steps_taken={self.steps_taken}, skipped_steps={self.skipped_steps})")

    # -- the step ------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the model parameters and of the masters."""
        for p in self.model_params + self.master_params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> bool:
        """Update the masters from the model's gradients and copy them back.

        Returns:
            bool: ``True`` if the optimizer stepped, ``False`` if the step was
            skipped because a gradient was inf/NaN (then the gradients are
            zeroed and ``skipped_steps`` is incremented).
        """
        if all(p.grad is None for p in self.model_params):
            raise RuntimeError("step() found no gradients on the model parameters: call "
                               "scale_loss(loss).backward() before step().")
        for p, m in zip(self.model_params, self.master_params):
            m.grad = None if p.grad is None else p.grad.detach().to(torch.float32, copy=True)
        grads = [m.grad for m in self.master_params if m.grad is not None]

        found_inf = self.scaler.unscale_(grads)
        self.scaler.update(found_inf)
        if found_inf:
            self.skipped_steps += 1
            self.last_grad_norm = math.nan
            self.last_stepped = False
            self.zero_grad()
            return False

        self.last_grad_norm = global_grad_norm(grads)
        if self.max_grad_norm is not None:
            clip_grads_(grads, self.max_grad_norm, self.last_grad_norm)
        self.optimizer.step()
        for p, m in zip(self.model_params, self.master_params):
            p.copy_(m)  # rounds to the model's dtype (round-to-nearest-even)
            m.grad = None
        self.steps_taken += 1
        self.last_stepped = True
        return True

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return a (deep-copied) dict: masters, optimizer, scaler and counters."""
        return {
            "master_params": [m.detach().clone() for m in self.master_params],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "steps_taken": self.steps_taken,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; the model parameters are set from the masters."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict() takes a dict, got {type(state).__name__}")
        missing = [k for k in ("master_params", "optimizer", "scaler", "skipped_steps", "steps_taken")
                   if k not in state]
        if missing:
            raise ValueError(f"state dict lacks the keys {missing}; pass the dict returned by "
                             "MasterWeightOptimizer.state_dict()")
        masters = state["master_params"]
        if len(masters) != len(self.master_params):
            raise ValueError(f"state has {len(masters)} master tensors, this optimizer has "
                             f"{len(self.master_params)}: was it saved for a different model?")
        for i, (m, saved) in enumerate(zip(self.master_params, masters)):
            if m.shape != saved.shape:
                raise ValueError(f"master {i} has shape {tuple(m.shape)} but the state has "
                                 f"{tuple(saved.shape)}: was it saved for a different model?")
        for m, saved in zip(self.master_params, masters):
            m.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state["skipped_steps"])
        self.steps_taken = int(state["steps_taken"])
        for p, m in zip(self.model_params, self.master_params):
            p.copy_(m)


# -- the step, written out functionally (chapter 03's exercises) ------------------------------

def unscale_to_fp32(grads16: list[torch.Tensor], scale: float) -> tuple[list[torch.Tensor], bool]:
    """Copy 16-bit gradients to float32, divide by the loss scale, and check them.

    Returns ``(grads32, found_inf)``: new float32 tensors ``g.float() * (1/scale)``
    (:func:`course_lib.gradients.unscale_and_check_`, as GradScaler does; within
    one ulp of ``g.float() / scale``, equal to it for powers of two) and whether
    any of them holds inf or NaN. The inputs are not modified.
    This is steps 1-2 of :meth:`MasterWeightOptimizer.step`.

    >>> unscale_to_fp32([torch.tensor([256.0], dtype=torch.float16)], 128.0)
    ([tensor([2.])], False)
    """
    scale = positive_float("scale", scale)
    grads32 = [g.detach().to(torch.float32, copy=True) for g in grads16]
    found_inf = unscale_and_check_(grads32, scale)
    return grads32, found_inf


def master_sgd_step(params16: list[torch.Tensor], grads16: list[torch.Tensor],
                    masters: list[torch.Tensor], lr: float, scale: float):
    """One SGD step of manual mixed precision, as a pure function.

    Algorithm: unscale the 16-bit gradients into float32 (:func:`unscale_to_fp32`);
    if any is inf/NaN, skip: return copies of ``params16`` and ``masters``
    unchanged and ``False``. Otherwise ``master - lr * grad`` in float32, and
    the new 16-bit parameters are the new masters rounded to the 16-bit dtype.

    Returns ``(new_params16, new_masters, stepped)``; the inputs are not modified.
    """
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return [p.clone() for p in params16], [m.clone() for m in masters], False
    new_masters = [m - lr * g for m, g in zip(masters, grads32)]
    new_params16 = [m.to(p.dtype) for m, p in zip(new_masters, params16)]
    return new_params16, new_masters, True
