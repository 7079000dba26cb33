"""One training loop for every chapter, in six precision modes, with exact resume.

Algorithm of ``train()``: for each batch ``(x, y)`` -- zero the gradients,
run the forward pass and the loss in the chosen precision, backpropagate
(scaled, if the mode scales the loss), compute the global gradient norm of the
*unscaled* gradients (optionally clip it), and step the optimizer unless the
gradients overflowed. Every step appends a record ``{step, epoch, loss,
scale, skipped, grad_norm, lr}`` to the history; after every epoch (and at
the end of training) the model is evaluated on ``val_loader``.

The precision modes (``PRECISIONS``):

* ``"fp32"`` -- everything in float32; the reference.
* ``"fp16_naive"`` -- what a naive tutorial does: ``model.half()``, inputs
  half, loss computed in fp16, a plain optimizer on the fp16 parameters (its
  state is fp16 too). ``loss_scale=<number>`` multiplies the loss by a fixed
  scale and divides the fp16 gradients by it before the step; overflows are
  *not* detected, so NaNs end up in the weights.
* ``"mixed_manual"`` -- mixed precision by hand (chapter 03): fp16 model and
  inputs, logits cast to float32 for the loss, ``MasterWeightOptimizer``
  (float32 master weights) with a ``DynamicLossScaler`` (default), a
  ``StaticLossScaler`` (``loss_scale=<number>``) or no scaling (``None``).
* ``"amp_fp16"`` -- ``torch.amp.autocast(device, dtype=torch.float16)``
  around forward and loss, float32 parameters, ``torch.amp.GradScaler(device)``.
* ``"amp_bf16"`` -- ``torch.amp.autocast(device, dtype=torch.bfloat16)``,
  float32 parameters, no loss scaling (bf16 has fp32's exponent range).
* ``"bf16_pure"`` -- ``model.to(torch.bfloat16)``, inputs bf16, loss in bf16,
  a plain optimizer on the bf16 parameters (no master weights).

Reproducibility. A fresh run seeds ``torch``, ``random`` and ``numpy`` with
``seed``. Before every epoch the loader's shuffling generator is re-seeded
from ``(seed, epoch)``, so epoch ``e`` has the same batch order whether or
not the run was interrupted. A checkpoint holds the model, optimizer (with
FP32 masters), scaler, all RNG states, the position in the data (epoch and
batch) and the history; ``resume=True`` continues from it and produces the
same weights, bit for bit, as an uninterrupted run. Checkpoints are written
atomically (temporary file + ``os.replace``).

On a CPU, fp16 arithmetic is emulated and very slow (bf16 is fast): keep fp16
runs tiny there.
Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb); the
modes are taught in chapters 02 (fp16_naive), 03 (mixed_manual),
05 (amp_fp16, amp_bf16) and 06 (bf16_pure).
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler

from course_lib.device import default_device
from course_lib.master import MasterWeightOptimizer, clip_grads_, global_grad_norm
from course_lib.scaling import DynamicLossScaler, LossScaler, StaticLossScaler

__all__ = ["PRECISIONS", "OPTIMIZERS", "TrainResult", "train", "evaluate", "cross_entropy",
           "CHECKPOINT_VERSION"]

#: The precision modes ``train()`` accepts, with a one-line description.
PRECISIONS: dict[str, str] = {
    "fp32": "float32 model, inputs, loss and optimizer (the reference)",
    "fp16_naive": "model.half(), fp16 inputs and loss, plain optimizer on fp16 params, "
                  "optional fixed loss scale",
    "mixed_manual": "fp16 model + FP32 master weights (MasterWeightOptimizer) + static or "
                    "dynamic loss scaling",
    "amp_fp16": "torch.amp.autocast(float16) + torch.amp.GradScaler, float32 params",
    "amp_bf16": "torch.amp.autocast(bfloat16), float32 params, no loss scaling",
    "bf16_pure": "model.to(bfloat16), bf16 inputs and loss, plain optimizer on bf16 params",
}

#: Optimizer names ``train()`` accepts (a ``torch.optim.Optimizer`` class also works).
OPTIMIZERS: dict[str, type] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

#: Version of the checkpoint format written by ``train()``.
CHECKPOINT_VERSION = 1

_MODEL_DTYPE = {"fp32": torch.float32, "fp16_naive": torch.float16, "mixed_manual": torch.float16,
                "amp_fp16": torch.float32, "amp_bf16": torch.float32, "bf16_pure": torch.bfloat16}
_AUTOCAST_DTYPE = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for classification ``(B, C)`` or sequences ``(B, T, C)``.

    Algorithm: flatten all leading dimensions, then ``F.cross_entropy``
    (log-softmax + negative log-likelihood, averaged). It computes in the
    logits' dtype (cast them to float32 first for an fp32 loss).

    Example:
        >>> round(cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)).item(), 4)
        1.3863
    """
    if logits.dim() > 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


# --------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What ``train()`` returns.

    Attributes:
        model (nn.Module): the trained model (the object that was passed in).
        history (list[dict]): one record per step: ``step`` (0-based), ``epoch``,
            ``loss`` (unscaled), ``scale`` (loss scale used, 1.0 if none),
            ``skipped`` (bool), ``grad_norm`` (of the unscaled gradients; NaN
            when skipped), ``lr``.
        val_history (list[dict]): one record per evaluation: ``epoch``,
            ``step`` (steps done), ``val_loss``, ``val_accuracy``.
        precision (str), seconds (float, wall time of this call),
        stopped_early (bool, ``max_steps`` ended the run before its planned
        end), checkpoint_path (str | None).

    Example:
        >>> r = TrainResult(nn.Linear(1, 1), [{"step": 0, "loss": 2.0, "skipped": False}])
        >>> r.final_loss, r.skipped_steps, r.as_dict_of_lists()["loss"]
        (2.0, 0, [2.0])
    """

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)
    precision: str = "fp32"
    seconds: float = 0.0
    stopped_early: bool = False
    checkpoint_path: str | None = None

    def as_dict_of_lists(self) -> dict[str, list]:
        """The history as ``{key: [value per step]}`` (handy for plotting)."""
        keys: list[str] = []
        for rec in self.history:
            keys += [k for k in rec if k not in keys]
        return {k: [rec.get(k) for rec in self.history] for k in keys}

    @property
    def losses(self) -> list[float]:
        """The loss of every step."""
        return [rec["loss"] for rec in self.history]

    @property
    def steps(self) -> int:
        """Number of steps in the history (skipped ones included)."""
        return len(self.history)

    @property
    def final_loss(self) -> float:
        """Loss of the last step (NaN if there was none)."""
        return self.history[-1]["loss"] if self.history else math.nan

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped because of inf/NaN gradients."""
        return sum(bool(rec.get("skipped")) for rec in self.history)

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the last evaluation (``None`` if none)."""
        return self.val_history[-1]["val_accuracy"] if self.val_history else None

    @property
    def val_loss(self) -> float | None:
        """Validation loss of the last evaluation (``None`` if none)."""
        return self.val_history[-1]["val_loss"] if self.val_history else None

    def __repr__(self) -> str:
        acc = "n/a" if self.val_accuracy is None else f"{self.val_accuracy:.4f}"
        return (f"TrainResult(precision={self.precision!r}, steps={self.steps}, "
                f"final_loss={self.final_loss:.4f}, skipped_steps={self.skipped_steps}, "
                f"val_accuracy={acc}, seconds={self.seconds:.2f})")


# --------------------------------------------------------------------------- validation
def _pos_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _pos_float(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite float, got {value!r}")
    return float(value)


def _optimizer_factory(optimizer) -> tuple[Callable, str]:
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {sorted(OPTIMIZERS)} "
                             "or a torch.optim.Optimizer class")
        return OPTIMIZERS[key], key
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer, optimizer.__name__
    raise TypeError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a torch.optim.Optimizer "
                    f"class, got {optimizer!r}")


def _check_loss_scale(precision: str, loss_scale):
    if isinstance(loss_scale, str) and loss_scale not in ("auto", "dynamic"):
        raise ValueError(f"loss_scale={loss_scale!r} is not understood; allowed: 'auto', "
                         "'dynamic', None, a positive number, or a scaler object")
    if precision in ("fp32", "amp_bf16", "bf16_pure"):
        if loss_scale not in ("auto", None):
            raise ValueError(f"precision={precision!r} does not scale the loss; loss_scale must be "
                             f"'auto' or None, got {loss_scale!r} (loss scaling is for the fp16 "
                             "modes 'fp16_naive', 'mixed_manual', 'amp_fp16')")
        return None
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        return _pos_float("loss_scale", loss_scale)
    if precision == "fp16_naive":
        if loss_scale == "dynamic" or isinstance(loss_scale, (LossScaler, torch.amp.GradScaler)):
            raise ValueError("precision='fp16_naive' only supports a fixed loss scale: pass "
                             "loss_scale=<number> or None (dynamic scaling: use 'mixed_manual' "
                             "or 'amp_fp16')")
        if loss_scale not in ("auto", None):
            raise TypeError(f"loss_scale must be 'auto', None or a number, got {loss_scale!r}")
        return None
    if precision == "mixed_manual":
        if isinstance(loss_scale, torch.amp.GradScaler):
            raise TypeError("precision='mixed_manual' uses course_lib.scaling scalers; pass a "
                            "StaticLossScaler/DynamicLossScaler, a number, 'dynamic' or None")
        if loss_scale in ("auto", "dynamic", None) or isinstance(loss_scale, LossScaler):
            return loss_scale
    if precision == "amp_fp16":
        if isinstance(loss_scale, LossScaler):
            raise TypeError("precision='amp_fp16' uses torch.amp.GradScaler; pass a GradScaler, "
                            "a number (its init_scale), 'dynamic' or None")
        if loss_scale in ("auto", "dynamic", None) or isinstance(loss_scale, torch.amp.GradScaler):
            return loss_scale
    raise TypeError(f"loss_scale={loss_scale!r} is not allowed for precision={precision!r}")


# --------------------------------------------------------------------------- helpers
def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 0x5EED) % (2 ** 63)


def _seed_epoch_order(loader, seed: int, epoch: int) -> None:
    """Make the loader's order a function of (seed, epoch), without touching global RNGs."""
    s = getattr(loader, "sampler", None)
    samplers = []
    while s is not None and s not in samplers:
        samplers.append(s)
        s = getattr(s, "sampler", None)
    bs = getattr(loader, "batch_sampler", None)
    if bs is not None and getattr(bs, "sampler", None) is not None:
        samplers.append(bs.sampler)
    gen = getattr(loader, "generator", None)
    if isinstance(loader, torch.utils.data.DataLoader) and gen is None:
        gen = torch.Generator()
        loader.generator = gen  # the iterator then draws its base seed from it, not the global RNG
    if gen is not None:
        gen.manual_seed(_epoch_seed(seed, epoch))
    for s in samplers:
        # RandomSampler, SubsetRandomSampler, WeightedRandomSampler: all draw from .generator
        if isinstance(s, RandomSampler) or hasattr(s, "generator"):
            if s.generator is None:
                s.generator = torch.Generator()
            if s.generator is not gen:
                s.generator.manual_seed(_epoch_seed(seed, epoch) + 1)
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4]))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_atomic(obj: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _split_batch(batch, device: torch.device, input_dtype: torch.dtype | None):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise ValueError(f"each batch must be a pair (inputs, targets); got {type(batch).__name__}{size}")
    x, y = batch
    x = x.to(device)
    if input_dtype is not None and x.is_floating_point():
        x = x.to(input_dtype)
    return x, y.to(device)


def _forward_loss(model, x, y, precision: str, loss_fn, device_type: str):
    if precision in _AUTOCAST_DTYPE:
        with torch.amp.autocast(device_type, dtype=_AUTOCAST_DTYPE[precision]):
            out = model(x)
            return out, loss_fn(out, y)
    out = model(x)
    if precision == "mixed_manual":
        out = out.float()  # fp32 loss (Micikevicius et al. 2018)
    return out, loss_fn(out, y)


def _input_dtype(precision: str):
    return None if precision in ("fp32", "amp_fp16", "amp_bf16") else _MODEL_DTYPE[precision]


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, *, precision: str = "fp32", loss_fn=None,
             device=None) -> dict[str, float | None]:
    """Return ``{"val_loss", "val_accuracy"}`` of ``model`` on ``loader``.

    Algorithm: eval mode, the forward pass and loss as in ``train()`` for
    ``precision`` (the model is used as it is, not cast); the loss is averaged
    over batches weighted by their number of targets; the accuracy is the
    share of ``argmax(logits, -1) == targets`` (``None`` if the targets are
    not class indices). The torch RNG state is restored afterwards, so
    evaluating never changes a training run.

    Args:
        model (nn.Module), loader (iterable of ``(x, y)``), precision (str,
        default "fp32"), loss_fn (callable, default ``cross_entropy``),
        device (default: the model's device).

    Example:
        >>> from course_lib.data import digits_loaders
        >>> from course_lib.models import MLP
        >>> _, val = digits_loaders(device="cpu"); _ = torch.manual_seed(0)
        >>> 0.0 <= evaluate(MLP(), val)["val_accuracy"] <= 1.0
        True
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    first = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device(default_device()))
    was_training = model.training
    model.eval()
    total_loss, n_loss, correct, n_targets, has_acc = 0.0, 0, 0, 0, True
    fork_devices = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            for batch in loader:
                x, y = _split_batch(batch, dev, _input_dtype(precision))
                out, loss = _forward_loss(model, x, y, precision, loss_fn, dev.type)
                n = y.numel()
                total_loss += float(loss) * n
                n_loss += n
                if has_acc and out.dim() == y.dim() + 1 and not y.is_floating_point():
                    correct += int((out.argmax(-1) == y).sum())
                    n_targets += n
                else:
                    has_acc = False
    finally:
        model.train(was_training)
    if n_loss == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"val_loss": total_loss / n_loss,
            "val_accuracy": correct / n_targets if has_acc and n_targets else None}


# --------------------------------------------------------------------------- train
def train(model: nn.Module, train_loader, *, precision: str = "fp32", optimizer="adam",
          lr: float = 1e-3, epochs: int | None = None, steps: int | None = None,
          loss_fn: Callable | None = None, val_loader=None, device=None, loss_scale="auto",
          optimizer_kwargs: dict | None = None, checkpoint_path: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, resume: bool | str = False, progress: bool = True,
          seed: int = 0, max_steps: int | None = None, grad_clip: float | None = None,
          callback: Callable[[dict], Any] | None = None) -> TrainResult:
    """Train ``model`` on ``train_loader`` in one of the ``PRECISIONS`` modes.

    See the module docstring for the loop and the modes. The model is moved
    to ``device`` and cast to the mode's parameter dtype **in place**.

    Args:
        model (nn.Module): the model (returned trained in ``result.model``).
        train_loader: iterable of ``(x, y)`` batches with a ``len()``; a
            ``DataLoader``'s shuffling generator is re-seeded every epoch.
        precision (str, default "fp32"): one of ``PRECISIONS``.
        optimizer (str | Optimizer class, default "adam"): "adam", "adamw",
            "sgd" or a ``torch.optim.Optimizer`` subclass.
        lr (float, default 1e-3): learning rate.
        epochs (int | None) / steps (int | None): the length of training;
            give exactly one.
        loss_fn (callable, default ``cross_entropy``): ``loss_fn(logits, y)``.
        val_loader (iterable | None, default None): evaluated after every
            epoch and at the end of training.
        device (str | torch.device | None, default None): ``default_device()``.
        loss_scale (default "auto"): "auto" = the mode's default (dynamic for
            "mixed_manual" and "amp_fp16", none for "fp16_naive"); "dynamic";
            a number (fixed scale for "fp16_naive"/"mixed_manual", the
            ``GradScaler`` ``init_scale`` for "amp_fp16"); ``None`` (no
            scaling); or a scaler object (``LossScaler`` for "mixed_manual",
            ``torch.amp.GradScaler`` for "amp_fp16", used as is). The other
            modes accept only "auto"/None.
        optimizer_kwargs (dict | None): extra optimizer arguments, e.g.
            ``{"momentum": 0.9}``.
        checkpoint_path (str | PathLike | None): where to save checkpoints
            (every ``checkpoint_every`` steps and at the end).
        checkpoint_every (int | None): steps between checkpoints.
        resume (bool | "auto", default False): ``True`` continues from
            ``checkpoint_path`` (which must exist); ``"auto"`` resumes if it
            exists and starts fresh otherwise.
        progress (bool, default True): show a tqdm bar with loss and scale.
        seed (int, default 0): seeds torch/random/numpy (fresh runs) and the
            per-epoch data order.
        max_steps (int | None): stop once this many steps (in total, counting
            resumed ones) are done, e.g. to simulate an interruption.
        grad_clip (float | None): clip the unscaled gradients to this global norm.
        callback (callable | None): ``callback(record)`` after every step;
            an exception raised there stops training.

    Returns:
        TrainResult

    Example:
        >>> from course_lib.data import digits_loaders
        >>> from course_lib.models import MLP
        >>> tr, va = digits_loaders(device="cpu"); _ = torch.manual_seed(0)
        >>> r = train(MLP(), tr, val_loader=va, epochs=1, progress=False, device="cpu")
        >>> r.steps, r.val_accuracy > 0.5
        (23, True)
    """
    # ---- validate -----------------------------------------------------------
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
    opt_cls, opt_name = _optimizer_factory(optimizer)
    lr = _pos_float("lr", lr)
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs=... or steps=... "
                         f"(got epochs={epochs!r}, steps={steps!r})")
    epochs = _pos_int("epochs", epochs, allow_none=True)
    steps = _pos_int("steps", steps, allow_none=True)
    max_steps = _pos_int("max_steps", max_steps, allow_none=True)
    checkpoint_every = _pos_int("checkpoint_every", checkpoint_every, allow_none=True)
    grad_clip = _pos_float("grad_clip", grad_clip, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    optimizer_kwargs = {} if optimizer_kwargs is None else dict(optimizer_kwargs)
    if "lr" in optimizer_kwargs:
        raise ValueError("pass the learning rate as lr=..., not inside optimizer_kwargs")
    if checkpoint_path is not None:
        checkpoint_path = os.fspath(checkpoint_path)
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path=... (where to write checkpoints)")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    if resume and checkpoint_path is None:
        raise ValueError("resume needs checkpoint_path=... (the checkpoint to continue from)")
    if resume is True and not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {checkpoint_path!r}; "
                                "train without resume, or pass resume='auto' to start fresh "
                                "when the file is missing")
    scale_arg = _check_loss_scale(precision, loss_scale)
    try:
        n_batches = len(train_loader)
    except TypeError:
        raise TypeError(f"train_loader must have a len() (e.g. a DataLoader), got "
                        f"{type(train_loader).__name__}") from None
    if n_batches == 0:
        raise ValueError("train_loader is empty (len() == 0): check the data set and batch_size "
                         "(a DataLoader with drop_last=True yields nothing if the data set is "
                         "smaller than one batch)")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")
    dev = torch.device(device if device is not None else default_device())
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or device=None")

    # ---- set up ----------------------------------------------------------------
    total_steps = steps if steps is not None else epochs * n_batches
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)
    resuming = bool(resume) and os.path.exists(checkpoint_path)
    if not resuming:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
    model.to(device=dev, dtype=_MODEL_DTYPE[precision])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True")

    mwo: MasterWeightOptimizer | None = None
    grad_scaler: torch.amp.GradScaler | None = None
    naive_scale: float | None = None
    if precision == "mixed_manual":
        if scale_arg in ("auto", "dynamic"):
            scaler = DynamicLossScaler()
        elif isinstance(scale_arg, float):
            scaler = StaticLossScaler(scale_arg)
        else:
            scaler = scale_arg  # a LossScaler or None
        mwo = MasterWeightOptimizer(params, opt_cls, scaler=scaler, max_grad_norm=grad_clip,
                                    lr=lr, **optimizer_kwargs)
        opt = mwo.optimizer
    else:
        opt = opt_cls(params, lr=lr, **optimizer_kwargs)
        if precision == "amp_fp16":
            if isinstance(scale_arg, torch.amp.GradScaler):
                grad_scaler = scale_arg
            elif isinstance(scale_arg, float):
                grad_scaler = torch.amp.GradScaler(dev.type, init_scale=scale_arg)
            else:
                grad_scaler = torch.amp.GradScaler(dev.type, enabled=scale_arg is not None)
        elif precision == "fp16_naive":
            naive_scale = scale_arg

    config = {"precision": precision, "optimizer": opt_name, "seed": seed, "n_batches": n_batches}
    step, epoch, batch = 0, 0, 0
    history: list[dict] = []
    val_history: list[dict] = []
    pending_rng = None
    if resuming:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != "course_lib.train":
            raise ValueError(f"{checkpoint_path!r} is not a checkpoint written by train()")
        mismatch = {k: (ckpt["config"].get(k), v) for k, v in config.items()
                    if ckpt["config"].get(k) != v}
        if mismatch:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatch.items())
            raise ValueError(f"the checkpoint {checkpoint_path!r} was written by a different setup "
                             f"({detail}); call train() with the same settings or start fresh")
        model.load_state_dict(ckpt["model"])
        if mwo is not None:
            mwo.load_state_dict(ckpt["optimizer"])
        else:
            opt.load_state_dict(ckpt["optimizer"])
        if grad_scaler is not None and ckpt["grad_scaler"]:
            grad_scaler.load_state_dict(ckpt["grad_scaler"])
        step, epoch, batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        history, val_history = list(ckpt["history"]), list(ckpt["val_history"])
        pending_rng = ckpt["rng"]

    def save_checkpoint() -> None:
        _save_atomic({
            "format": "course_lib.train", "version": CHECKPOINT_VERSION, "config": config,
            "model": model.state_dict(),
            "optimizer": mwo.state_dict() if mwo is not None else opt.state_dict(),
            "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            "rng": _rng_state(dev), "step": step, "epoch": epoch, "batch": batch,
            "history": history, "val_history": val_history,
        }, checkpoint_path)

    def finish_epoch_if_done() -> None:
        nonlocal epoch, batch
        epoch_done, training_done = batch == n_batches, step == total_steps
        if (epoch_done or training_done) and val_loader is not None and \
                (not val_history or val_history[-1]["step"] != step):
            metrics = evaluate(model, val_loader, precision=precision, loss_fn=loss_fn, device=dev)
            val_history.append({"epoch": epoch, "step": step, **metrics})
        if epoch_done:
            epoch, batch = epoch + 1, 0

    # post-step hook: tells whether GradScaler.step() really stepped the optimizer
    stepped_flag = [False]

    def _mark_stepped(*_args, **_kwargs):
        stepped_flag[0] = True

    hook = opt.register_step_post_hook(_mark_stepped) if grad_scaler is not None else None

    def one_step(batch_data) -> dict:
        x, y = _split_batch(batch_data, dev, _input_dtype(precision))
        if mwo is not None:
            mwo.zero_grad()
        else:
            opt.zero_grad(set_to_none=True)
        _, loss = _forward_loss(model, x, y, precision, loss_fn, dev.type)
        skipped, grad_norm = False, math.nan
        if mwo is not None:
            scale = mwo.loss_scale
            mwo.scale_loss(loss).backward()
            skipped = not mwo.step()
            grad_norm = mwo.last_grad_norm
        elif grad_scaler is not None:
            scale = grad_scaler.get_scale() if grad_scaler.is_enabled() else 1.0
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(opt)
            grad_norm = global_grad_norm(p.grad for p in params)
            if grad_clip is not None and math.isfinite(grad_norm):
                clip_grads_([p.grad for p in params if p.grad is not None], grad_clip, grad_norm)
            stepped_flag[0] = False
            grad_scaler.step(opt)
            grad_scaler.update()
            skipped = not stepped_flag[0]
            if skipped:
                grad_norm = math.nan
        else:
            scale = 1.0
            if naive_scale is not None:
                scale = naive_scale
                (loss * naive_scale).backward()
                with torch.no_grad():
                    for p in params:
                        if p.grad is not None:
                            p.grad.div_(naive_scale)
            else:
                loss.backward()
            grad_norm = global_grad_norm(p.grad for p in params)
            if grad_clip is not None and math.isfinite(grad_norm):
                clip_grads_([p.grad for p in params if p.grad is not None], grad_clip, grad_norm)
            opt.step()
        return {"step": step, "epoch": epoch, "loss": loss.detach().item(), "scale": float(scale),
                "skipped": bool(skipped), "grad_norm": float(grad_norm),
                "lr": float(opt.param_groups[0]["lr"])}

    # ---- the loop ------------------------------------------------------------------
    t0 = time.perf_counter()
    if resuming:
        finish_epoch_if_done()  # the checkpoint may sit exactly at the end of an epoch
        if batch == 0:
            _set_rng_state(pending_rng, dev)
            pending_rng = None
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=step, desc=precision, leave=True)
    try:
        while step < stop_at:
            _seed_epoch_order(train_loader, seed, epoch)
            it = iter(train_loader)
            for _ in range(batch):  # resuming mid-epoch: skip the batches already used
                next(it)
            if pending_rng is not None:
                _set_rng_state(pending_rng, dev)
                pending_rng = None
            while batch < n_batches and step < stop_at:
                try:
                    data = next(it)
                except StopIteration:
                    raise RuntimeError(f"train_loader yielded {batch} batches but len() is "
                                       f"{n_batches}; its length must match what it yields") from None
                record = one_step(data)
                history.append(record)
                step += 1
                batch += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", scale=f"{record['scale']:g}",
                                    refresh=False)
                if callback is not None:
                    callback(record)
                if checkpoint_every is not None and step % checkpoint_every == 0:
                    save_checkpoint()
            finish_epoch_if_done()
    finally:
        if bar is not None:
            bar.close()
        if hook is not None:
            hook.remove()
    if pending_rng is not None:
        _set_rng_state(pending_rng, dev)
    if checkpoint_path is not None:
        save_checkpoint()
    return TrainResult(model=model, history=history, val_history=val_history, precision=precision,
                       seconds=time.perf_counter() - t0, stopped_early=step < total_steps,
                       checkpoint_path=checkpoint_path)
