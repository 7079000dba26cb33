"""Precision recipes: one frozen description per way of training in 16 bits.

A :class:`Recipe` says, once, everything that differs between precision
modes, so that training code never asks ``if precision == ...``:

* ``param_dtype`` -- the dtype of the model's parameters (and so of its
  gradients);
* ``input_dtype`` -- the dtype floating inputs are cast to (``None``: left
  alone; autocast recipes never cast inputs, autocast does it per op);
* ``autocast_dtype`` -- ``torch.amp.autocast(device_type, dtype)`` around
  the forward pass and the loss (``None``: no autocast);
* ``loss_in_fp32`` -- cast the model's output to float32 before the loss;
* ``stepper`` -- the optimisation style (:mod:`course_lib.steppers`):
  ``"plain"`` (a torch optimizer on the model's own parameters),
  ``"master"`` (FP32 master weights, :class:`course_lib.master.MasterWeightOptimizer`)
  or ``"grad_scaler"`` (``torch.amp.GradScaler``);
* ``default_loss_scale`` -- ``None`` (no scaling), ``"dynamic"`` or a
  fixed number;
* ``skip_nonfinite`` -- for the "plain" stepper only: skip a step whose
  gradients hold inf/NaN (the "master" and "grad_scaler" steppers always do).

From those fields a recipe derives its behaviour: :meth:`Recipe.forward_context`,
:meth:`Recipe.prepare_model`, :meth:`Recipe.prepare_input`,
:meth:`Recipe.compute_loss`, :meth:`Recipe.make_stepper` (the loss scale is
decoded here and nowhere else) and :meth:`Recipe.training_state_bytes`
(chapter 00's memory bill). Invalid combinations fail when the recipe is
built, with a message that says what is allowed.

The built-in recipes (:data:`RECIPES`):

==============  =========  ========  ========  =======  ===========  =============
name            params     inputs    autocast  loss     stepper      loss scale
==============  =========  ========  ========  =======  ===========  =============
``fp32``        float32    --        --        model's  plain        none
``fp16_naive``  float16    float16   --        model's  plain        none / fixed, unchecked
``mixed_manual``float16    float16   --        float32  master       dynamic
``amp_fp16``    float32    --        float16   autocast grad_scaler  dynamic
``amp_bf16``    float32    --        bfloat16  autocast plain        none
``bf16_pure``   bfloat16   bfloat16  --        model's  plain        none
==============  =========  ========  ========  =======  ===========  =============

``fp16_naive`` is what the source tutorial does (chapter 03 shows it fail);
``mixed_manual`` is chapter 03's fix; ``amp_fp16``/``amp_bf16`` are chapter 05's
``torch.autocast`` (+ ``GradScaler``); ``bf16_pure`` is chapter 06's stall.

Example:
    >>> r = get_recipe("amp_bf16"); r.autocast_dtype, r.stepper
    (torch.bfloat16, 'plain')
    >>> get_recipe("mixed_manual").training_state_bytes(1000, "adam")["total"]
    16000
    >>> Recipe("bad", "fp16 params with GradScaler", param_dtype=torch.float16,
    ...        input_dtype=torch.float16, stepper="grad_scaler", default_loss_scale="dynamic")
    Traceback (most recent call last):
    ...
    ValueError: recipe 'bad': stepper='grad_scaler' needs float32 parameters (torch.amp.GradScaler refuses to unscale float16 gradients: 'Attempting to unscale FP16 gradients'); use autocast_dtype=torch.float16 with float32 parameters, or stepper='master' for a 16-bit model

Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb); each
recipe is taught in the chapter named in its ``chapter`` field.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from numbers import Real
from typing import Callable

import torch

from course_lib.validate import instance_of, one_of, positive_float

__all__ = ["Recipe", "RECIPES", "get_recipe", "STEPPERS", "OPTIMIZER_STATES"]

#: The optimisation styles a recipe can name (see course_lib.steppers).
STEPPERS = ("plain", "master", "grad_scaler")
#: Optimizer name -> number of per-parameter state tensors it keeps (for the memory bill).
OPTIMIZER_STATES = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _dtype_name(dtype) -> str:
    return "None" if dtype is None else str(dtype)


@dataclass(frozen=True)
class Recipe:
    """One precision mode (see the module docstring for the fields and the built-ins)."""

    name: str
    description: str
    param_dtype: torch.dtype = torch.float32
    input_dtype: torch.dtype | None = None
    autocast_dtype: torch.dtype | None = None
    loss_in_fp32: bool = False
    stepper: str = "plain"
    default_loss_scale: float | str | None = None
    skip_nonfinite: bool = False
    chapter: str = "02"

    def __post_init__(self):
        def bad(why: str):
            raise ValueError(f"recipe {self.name!r}: {why}")

        instance_of("name", self.name, str)
        for field_name, allowed in (("param_dtype", _FLOAT_DTYPES), ("input_dtype", (None, *_SIXTEEN_BIT)),
                                    ("autocast_dtype", (None, *_SIXTEEN_BIT))):
            value = getattr(self, field_name)
            if value not in allowed:
                bad(f"{field_name}={_dtype_name(value)} is not allowed; allowed: "
                    + ", ".join(map(_dtype_name, allowed)))
        one_of("stepper", self.stepper, STEPPERS)
        if self.autocast_dtype is not None:
            if self.param_dtype != torch.float32:
                bad(f"autocast needs float32 parameters (autocast casts them per op), got "
                    f"param_dtype={self.param_dtype}; use autocast_dtype=None for a 16-bit model")
            if self.input_dtype is not None:
                bad("an autocast recipe must not cast its inputs (input_dtype must be None): autocast "
                    "casts per op, and a hand cast makes every op 16-bit, even those autocast keeps in "
                    "float32")
        elif self.param_dtype != torch.float32 and self.input_dtype != self.param_dtype:
            bad(f"a {self.param_dtype} model needs {self.param_dtype} inputs (input_dtype="
                f"{self.param_dtype}); got input_dtype={_dtype_name(self.input_dtype)}")
        elif self.param_dtype == torch.float32 and self.input_dtype is not None:
            bad(f"a float32 model without autocast takes float32 inputs (input_dtype=None), got "
                f"input_dtype={self.input_dtype}")
        if self.stepper == "master" and self.param_dtype not in _SIXTEEN_BIT:
            bad("stepper='master' keeps FP32 master weights of a 16-bit model; param_dtype must be "
                f"torch.float16 or torch.bfloat16, got {self.param_dtype}")
        if self.stepper == "grad_scaler":
            if self.param_dtype != torch.float32:
                bad("stepper='grad_scaler' needs float32 parameters (torch.amp.GradScaler refuses to "
                    "unscale float16 gradients: 'Attempting to unscale FP16 gradients'); use "
                    "autocast_dtype=torch.float16 with float32 parameters, or stepper='master' for a "
                    "16-bit model")
            if self.autocast_dtype != torch.float16:
                bad("stepper='grad_scaler' is for float16 autocast (autocast_dtype=torch.float16); "
                    f"got autocast_dtype={_dtype_name(self.autocast_dtype)}")
        self._check_loss_scale(self.default_loss_scale, "default_loss_scale")
        if self.skip_nonfinite and self.stepper != "plain":
            bad(f"skip_nonfinite is an option of the 'plain' stepper; stepper={self.stepper!r} "
                "always skips a step whose gradients hold inf/NaN")

    # -- what the recipe means ------------------------------------------------------------
    @property
    def scales_loss(self) -> bool:
        """Whether loss scaling can help: something computes gradients in float16."""
        return torch.float16 in (self.param_dtype, self.autocast_dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the matmuls run in (autocast's, else the parameters')."""
        return self.autocast_dtype or self.param_dtype

    def _check_loss_scale(self, loss_scale, what: str = "loss_scale"):
        """Decode a loss-scale argument for this recipe; return None, "dynamic", a float or an object."""
        from course_lib.scaling import LossScaler

        if loss_scale is None:
            return None
        if isinstance(loss_scale, str) and loss_scale != "dynamic":
            raise ValueError(f"{what}={loss_scale!r} is not understood; allowed: 'auto', 'dynamic', "
                             "None, a positive number, or a scaler object")
        if not self.scales_loss:
            raise ValueError(f"precision={self.name!r} does not scale the loss (nothing is computed "
                             f"in float16); {what} must be 'auto' or None, got {loss_scale!r}")
        if isinstance(loss_scale, Real) and not isinstance(loss_scale, bool):
            return positive_float(what, loss_scale)
        allowed = {"plain": "a fixed loss scale (a number; applied unchecked, as the tutorial does) or None",
                   "master": "'dynamic', a number, None, or a course_lib.scaling LossScaler",
                   "grad_scaler": "'dynamic', a number (GradScaler's init_scale), None, or a "
                                  "torch.amp.GradScaler"}[self.stepper]
        scaler_class = {"master": LossScaler, "grad_scaler": torch.amp.GradScaler}.get(self.stepper)
        if scaler_class is not None and (isinstance(loss_scale, scaler_class) or loss_scale == "dynamic"):
            return loss_scale
        raise (ValueError if loss_scale == "dynamic" else TypeError)(
            f"precision={self.name!r} (stepper {self.stepper!r}) takes as {what}: {allowed}; got "
            f"{loss_scale!r}" + (" (dynamic scaling needs an overflow check: use 'mixed_manual' "
                                 "or 'amp_fp16')" if self.stepper == "plain" else ""))

    # -- behaviour ---------------------------------------------------------------------
    def forward_context(self, device_type: str):
        """The context to run the forward pass and the loss in: autocast, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.amp.autocast(device_type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module, device) -> torch.nn.Module:
        """Move ``model`` to ``device`` and cast its parameters to ``param_dtype`` (in place)."""
        return model.to(device=device, dtype=self.param_dtype)

    def prepare_input(self, x: torch.Tensor, device) -> torch.Tensor:
        """Move ``x`` to ``device``; cast it to ``input_dtype`` if it is floating and one is set."""
        x = x.to(device)
        if self.input_dtype is not None and x.is_floating_point():
            x = x.to(self.input_dtype)
        return x

    def compute_loss(self, model, x, y, loss_fn: Callable, device_type: str):
        """``(output, loss)``: the forward pass and the loss, in this recipe's precision."""
        with self.forward_context(device_type):
            out = model(x)
            if self.loss_in_fp32:
                out = out.float()  # the loss in FP32 (Micikevicius et al. 2018)
            return out, loss_fn(out, y)

    def make_stepper(self, params, optimizer_factory: Callable, *, loss_scale="auto",
                     grad_clip: float | None = None, device_type: str = "cpu"):
        """Build this recipe's stepper (:mod:`course_lib.steppers`) for ``params``.

        Args:
            params (list of Parameters): the model's trainable parameters, already prepared.
            optimizer_factory (callable): ``optimizer_factory(params_or_groups) -> Optimizer``.
            loss_scale: ``"auto"`` (this recipe's default), ``"dynamic"``, a number, ``None`` or a
                scaler object of the stepper's kind (``LossScaler`` for "master",
                ``torch.amp.GradScaler`` for "grad_scaler").
            grad_clip (float | None): clip the unscaled gradients to this global norm.
            device_type (str): "cpu" or "cuda" (for ``torch.amp.GradScaler``).
        """
        from course_lib import steppers
        from course_lib.scaling import DynamicLossScaler, NoLossScaler, StaticLossScaler

        scale = self.default_loss_scale if loss_scale == "auto" else self._check_loss_scale(loss_scale)
        if self.stepper == "grad_scaler":
            if isinstance(scale, torch.amp.GradScaler):
                scaler = scale
            elif isinstance(scale, float):
                scaler = torch.amp.GradScaler(device_type, init_scale=scale)
            else:
                scaler = torch.amp.GradScaler(device_type, enabled=scale is not None)
            return steppers.GradScalerStepper(params, optimizer_factory(params), scaler, grad_clip)
        if scale is None:
            scaler = NoLossScaler()
        elif scale == "dynamic":
            scaler = DynamicLossScaler()
        elif isinstance(scale, float):
            scaler = StaticLossScaler(scale)
        else:
            scaler = scale
        if self.stepper == "master":
            return steppers.MasterStepper(params, optimizer_factory, scaler, grad_clip)
        return steppers.PlainStepper(params, optimizer_factory(params), scaler, grad_clip,
                                     skip_nonfinite=self.skip_nonfinite)

    def training_state_bytes(self, n_params: int, optimizer: str = "adam") -> dict[str, int]:
        """The persistent memory bill for ``n_params`` parameters (chapter 00).

        Weights and gradients in ``param_dtype``; FP32 master weights for the
        "master" stepper; the optimizer's per-parameter state tensors
        (:data:`OPTIMIZER_STATES`) in the dtype of the weights it steps: the
        masters where there are some. Returns ``{"weights", "gradients",
        "master_weights", "optimizer_state", "total"}`` in bytes.
        """
        from course_lib.validate import non_negative_int

        n_params = non_negative_int("n_params", n_params)
        optimizer = one_of("optimizer", optimizer, OPTIMIZER_STATES)
        w = torch.empty((), dtype=self.param_dtype).element_size()
        master = 4 if self.stepper == "master" else 0
        state = master or w
        bill = {"weights": n_params * w, "gradients": n_params * w,
                "master_weights": n_params * master,
                "optimizer_state": n_params * state * OPTIMIZER_STATES[optimizer]}
        bill["total"] = sum(bill.values())
        return bill

    def __str__(self) -> str:
        return f"{self.name}: {self.description}"


_F16, _B16, _F32 = torch.float16, torch.bfloat16, torch.float32

#: The built-in recipes, by name (the module docstring has the table).
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "float32 model, inputs, loss and optimizer (the reference)", chapter="02"),
    Recipe("fp16_naive", "model.half(), fp16 inputs and loss, plain optimizer on fp16 params, "
           "optional fixed unchecked loss scale (the tutorial's loop)", param_dtype=_F16,
           input_dtype=_F16, chapter="03"),
    Recipe("mixed_manual", "fp16 model + FP32 master weights (MasterWeightOptimizer) + static or "
           "dynamic loss scaling, loss in FP32", param_dtype=_F16, input_dtype=_F16,
           loss_in_fp32=True, stepper="master", default_loss_scale="dynamic", chapter="03"),
    Recipe("amp_fp16", "torch.amp.autocast(float16) + torch.amp.GradScaler, float32 params",
           autocast_dtype=_F16, stepper="grad_scaler", default_loss_scale="dynamic", chapter="05"),
    Recipe("amp_bf16", "torch.amp.autocast(bfloat16), float32 params, no loss scaling",
           autocast_dtype=_B16, chapter="05"),
    Recipe("bf16_pure", "model.to(bfloat16), bf16 inputs and loss, plain optimizer on bf16 params",
           param_dtype=_B16, input_dtype=_B16, chapter="06"),
)}


def get_recipe(precision) -> Recipe:
    """The :class:`Recipe` for ``precision``: a name in :data:`RECIPES` or a Recipe (returned as is).

    >>> get_recipe("fp32").param_dtype
    torch.float32
    """
    if isinstance(precision, Recipe):
        return precision
    if not isinstance(precision, str) or precision not in RECIPES:
        raise ValueError(f"unknown precision {precision!r}; allowed: {list(RECIPES)} or a "
                         "course_lib.recipes.Recipe")
    return RECIPES[precision]
