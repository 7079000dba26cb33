"""One training loop for every chapter and every precision recipe, with accumulation and exact resume.

The loop (``train()``), written once for all recipes (the shape of nanoGPT's
``train.py``: precision is resolved once, then one uniform loop):

1. resolve the precision into a :class:`course_lib.recipes.Recipe`; cast and
   move the model (``recipe.prepare_model``); build the recipe's stepper
   (:mod:`course_lib.steppers`: plain optimizer, FP32 master weights, or
   ``torch.amp.GradScaler``);
2. for every optimizer step, take a *group* of ``accum_steps`` micro-batches;
   for each, run the forward pass and loss in the recipe's precision
   (``recipe.compute_loss``) and ``stepper.backward(loss * n_i / N)``, where
   ``n_i`` is the number of targets of micro-batch ``i`` and ``N`` of the
   group -- so the accumulated gradient is the gradient of the group's mean
   loss, the same as one batch ``accum_steps`` times larger (with equal
   micro-batches the weight is ``1/accum_steps``). A model with ``no_sync``
   (DDP) runs every micro-batch but the last inside ``model.no_sync()``;
3. ``stepper.step()`` unscales, checks, measures, clips and steps (or skips):
   one optimizer step and one scaler update per group;
4. record ``{step, epoch, loss, scale, skipped, grad_norm, lr}``; evaluate on
   ``val_loader`` after every epoch and at the end; checkpoint every
   ``checkpoint_every`` steps and at the end.

**The last group of an epoch.** When the number of batches is not a
multiple of ``accum_steps``, the last group of each epoch holds the
remaining micro-batches and is stepped as it is (weights ``n_i / N`` over the
micro-batches it has): no batch is dropped, none is carried into the next
epoch, so an epoch has ``ceil(len(train_loader) / accum_steps)`` steps.
The loss function must return the mean over its targets (as
``cross_entropy`` does) for the weighting to give the group's mean.

**Reproducibility** (:mod:`course_lib.checkpoint`): a fresh run seeds
torch, ``random`` and NumPy with ``seed``; every epoch's data order is a
function of ``(seed, epoch)``; a checkpoint holds the model, the stepper
(optimizer, FP32 masters, scaler), every RNG state, the position in the data
and the history, written atomically; ``resume=True`` continues from it and
produces the same weights, bit for bit, as an uninterrupted run.

On a CPU, fp16 arithmetic is emulated and slow (bf16 is fast): keep fp16
runs tiny there. Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb);
the recipes are taught in chapters 02-06, accumulation in chapters 05 and 07.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checkpoint
from course_lib.device import resolve_device
from course_lib.recipes import RECIPES, Recipe, get_recipe
from course_lib.validate import (callable_or_none, non_negative_int, one_of, positive_float,
                                 positive_int)

__all__ = ["OPTIMIZERS", "TrainResult", "train", "evaluate", "cross_entropy", "optimizer_factory",
           "RECIPES"]

#: Optimizer names ``train()`` accepts (a ``torch.optim.Optimizer`` class also works).
OPTIMIZERS: dict[str, type] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


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


# --------------------------------------------------------------------------- pieces of the loop
def optimizer_factory(optimizer, lr: float, optimizer_kwargs: dict | None = None) -> tuple[Callable, str]:
    """``(factory, name)``: ``factory(params) -> Optimizer`` for a name in OPTIMIZERS or a class."""
    kwargs = {} if optimizer_kwargs is None else dict(optimizer_kwargs)
    if "lr" in kwargs:
        raise ValueError("pass the learning rate as lr=..., not inside optimizer_kwargs")
    if isinstance(optimizer, str):
        cls, name = OPTIMIZERS[one_of("optimizer", optimizer.lower(), list(OPTIMIZERS))], optimizer.lower()
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls, name = optimizer, optimizer.__name__
    else:
        raise TypeError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a torch.optim.Optimizer "
                        f"class, got {optimizer!r}")
    return (lambda params: cls(params, lr=lr, **kwargs)), name


def _split_batch(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise ValueError(f"each batch must be a pair (inputs, targets); got {type(batch).__name__}{size}")
    return batch


def _loader_length(loader) -> int:
    try:
        n = len(loader)
    except TypeError:
        raise TypeError(f"train_loader must have a len() (e.g. a DataLoader), got "
                        f"{type(loader).__name__}") from None
    if n == 0:
        raise ValueError("train_loader is empty (len() == 0): check the data set and batch_size "
                         "(a DataLoader with drop_last=True yields nothing if the data set is "
                         "smaller than one batch)")
    return n


def _optimizer_step(model, group, recipe: Recipe, stepper, loss_fn, dev) -> tuple[float, Any]:
    """One optimizer step over a group of micro-batches: ``(mean loss of the group, StepInfo)``."""
    stepper.zero_grad()
    pairs = [_split_batch(b) for b in group]
    sizes = [y.numel() for _, y in pairs]
    total, loss_value = sum(sizes), 0.0
    for i, (x, y) in enumerate(pairs):
        last = i == len(pairs) - 1
        sync = model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            _, loss = recipe.compute_loss(model, recipe.prepare_input(x, dev), y.to(dev), loss_fn, dev.type)
            weight = sizes[i] / total
            stepper.backward(loss if len(pairs) == 1 else loss * weight)
        loss_value += weight * loss.detach().item()
    return loss_value, stepper.step()


def _epoch_groups(loader, n_batches: int, accum_steps: int, state, seed: int, pending_rng, dev):
    """Yield the groups of micro-batches left in the current epoch (resuming mid-epoch if needed)."""
    checkpoint.seed_epoch_order(loader, seed, state.epoch)
    batches = iter(loader)
    for _ in range(state.batch):  # resuming mid-epoch: skip the micro-batches already used
        next(batches)
    if pending_rng is not None:
        checkpoint.set_rng_state(pending_rng, dev)
    while state.batch < n_batches:
        group = []
        for _ in range(min(accum_steps, n_batches - state.batch)):
            try:
                group.append(next(batches))
            except StopIteration:
                raise RuntimeError(f"train_loader yielded {state.batch + len(group)} batches but "
                                   f"len() is {n_batches}; its length must match what it "
                                   "yields") from None
        yield group


# --------------------------------------------------------------------------- train
def train(model: nn.Module, train_loader, *, precision: str | Recipe = "fp32", optimizer="adam",
          lr: float = 1e-3, epochs: int | None = None, steps: int | None = None,
          accum_steps: int = 1, loss_fn: Callable | None = None, val_loader=None, device=None,
          loss_scale="auto", optimizer_kwargs: dict | None = None,
          checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          resume: bool | str = False, progress: bool = True, seed: int = 0,
          max_steps: int | None = None, grad_clip: float | None = None,
          callback: Callable[[dict], Any] | None = None) -> TrainResult:
    """Train ``model`` on ``train_loader`` with a precision recipe (see the module docstring).

    The model is moved to ``device`` and cast to the recipe's parameter dtype **in place**.

    Args:
        model (nn.Module): the model (returned trained in ``result.model``).
        train_loader: iterable of ``(x, y)`` batches with a ``len()``; a
            ``DataLoader``'s shuffling generator is re-seeded every epoch.
        precision (str | Recipe, default "fp32"): a name in ``RECIPES`` or a Recipe.
        optimizer (str | Optimizer class, default "adam"): "adam", "adamw",
            "sgd" or a ``torch.optim.Optimizer`` subclass.
        lr (float, default 1e-3): learning rate.
        epochs (int | None) / steps (int | None): the length of training in
            epochs or in optimizer steps; give exactly one.
        accum_steps (int, default 1): micro-batches per optimizer step.
        loss_fn (callable, default ``cross_entropy``): ``loss_fn(logits, y)``,
            the mean over the targets.
        val_loader (iterable | None): evaluated after every epoch and at the end.
        device (str | torch.device | None): default ``default_device()``.
        loss_scale (default "auto"): the recipe's default; "dynamic"; a number
            (fixed scale, or ``GradScaler``'s ``init_scale``); ``None``; or a
            scaler object of the recipe's stepper (see ``Recipe.make_stepper``).
        optimizer_kwargs (dict | None): extra optimizer arguments, e.g. ``{"momentum": 0.9}``.
        checkpoint_path (str | PathLike | None) / checkpoint_every (int | None):
            where and how often (in steps) to checkpoint; also at the end.
        resume (bool | "auto", default False): ``True`` continues from
            ``checkpoint_path`` (which must exist); ``"auto"`` resumes if it exists.
        progress (bool, default True): a tqdm bar with loss and scale.
        seed (int, default 0): seeds the RNGs (fresh runs) and the per-epoch data order.
        max_steps (int | None): stop after this many steps in total (e.g. to
            simulate an interruption).
        grad_clip (float | None): clip the unscaled gradients to this global norm.
        callback (callable | None): ``callback(record)`` after every step; an
            exception raised there stops training.

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    recipe = get_recipe(precision)
    make_optimizer, opt_name = optimizer_factory(optimizer, positive_float("lr", lr), optimizer_kwargs)
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs=... or steps=... "
                         f"(got epochs={epochs!r}, steps={steps!r})")
    epochs, steps = positive_int("epochs", epochs, allow_none=True), positive_int("steps", steps, allow_none=True)
    accum_steps = positive_int("accum_steps", accum_steps)
    max_steps = positive_int("max_steps", max_steps, allow_none=True)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every, allow_none=True)
    seed = non_negative_int("seed", seed)
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    callable_or_none("callback", callback)
    resuming = _check_checkpoint_args(checkpoint_path, checkpoint_every, resume)
    checkpoint_path = None if checkpoint_path is None else os.fspath(checkpoint_path)
    n_batches = _loader_length(train_loader)
    dev = resolve_device(device)

    total_steps = steps if steps is not None else epochs * math.ceil(n_batches / accum_steps)
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)
    if not resuming:
        checkpoint.seed_everything(seed)
    recipe.prepare_model(model, dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True")
    stepper = recipe.make_stepper(params, make_optimizer, loss_scale=loss_scale, grad_clip=grad_clip,
                                  device_type=dev.type)
    config = {"precision": recipe.name, "optimizer": opt_name, "seed": seed, "n_batches": n_batches,
              "accum_steps": accum_steps}
    state, pending_rng = checkpoint.TrainState(), None
    if resuming:
        ckpt = checkpoint.load(checkpoint_path, config=config)
        model.load_state_dict(ckpt["model"])
        stepper.load_state_dict(ckpt["stepper"])
        state, pending_rng = ckpt["state"], ckpt["rng"]

    def save() -> None:
        checkpoint.save(checkpoint_path, config=config, model=model, stepper=stepper, state=state,
                        device=dev)

    def end_epoch_if_done() -> None:
        epoch_done = state.batch == n_batches
        if (epoch_done or state.step == total_steps) and val_loader is not None and \
                (not state.val_history or state.val_history[-1]["step"] != state.step):
            metrics = evaluate(model, val_loader, precision=recipe, loss_fn=loss_fn, device=dev)
            state.val_history.append({"epoch": state.epoch, "step": state.step, **metrics})
        if epoch_done:
            state.epoch, state.batch = state.epoch + 1, 0

    t0 = time.perf_counter()
    bar = _progress_bar(progress, total_steps, state.step, recipe.name)
    with bar:
        end_epoch_if_done()  # a resumed checkpoint may sit exactly at the end of an epoch
        while state.step < stop_at:
            for group in _epoch_groups(train_loader, n_batches, accum_steps, state, seed, pending_rng, dev):
                pending_rng = None
                loss_value, info = _optimizer_step(model, group, recipe, stepper, loss_fn, dev)
                record = {"step": state.step, "epoch": state.epoch, "loss": loss_value,
                          "scale": float(info.scale), "skipped": bool(info.skipped),
                          "grad_norm": float(info.grad_norm),
                          "lr": float(stepper.optimizer.param_groups[0]["lr"])}
                state.history.append(record)
                state.step, state.batch = state.step + 1, state.batch + len(group)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", scale=f"{record['scale']:g}", refresh=False)
                if callback is not None:
                    callback(record)
                if checkpoint_every is not None and state.step % checkpoint_every == 0:
                    save()
                if state.step >= stop_at:
                    break
            end_epoch_if_done()
    if pending_rng is not None:  # resumed at the very end: leave the RNGs as they were saved
        checkpoint.set_rng_state(pending_rng, dev)
    if checkpoint_path is not None:
        save()
    return TrainResult(model=model, history=state.history, val_history=state.val_history,
                       precision=recipe.name, seconds=time.perf_counter() - t0,
                       stopped_early=state.step < total_steps, checkpoint_path=checkpoint_path)


def _check_checkpoint_args(checkpoint_path, checkpoint_every, resume) -> bool:
    """Validate the checkpoint arguments; return whether this run resumes from a file."""
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path=... (where to write checkpoints)")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    if resume and checkpoint_path is None:
        raise ValueError("resume needs checkpoint_path=... (the checkpoint to continue from)")
    exists = checkpoint_path is not None and os.path.exists(checkpoint_path)
    if resume is True and not exists:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {os.fspath(checkpoint_path)!r}; "
                                "train without resume, or pass resume='auto' to start fresh "
                                "when the file is missing")
    return bool(resume) and exists


class _NoBar:
    """The null progress bar."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=True)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, *, precision: str | Recipe = "fp32", loss_fn=None,
             device=None) -> dict[str, float | None]:
    """Return ``{"val_loss", "val_accuracy"}`` of ``model`` on ``loader``.

    Algorithm: eval mode, the forward pass and loss as in ``train()`` for the
    recipe (the model is used as it is, not cast); the loss is averaged over
    batches weighted by their number of targets; the accuracy is the share of
    ``argmax(logits, -1) == targets`` (``None`` if the targets are not class
    indices). The torch RNG state is restored afterwards, so evaluating never
    changes a training run.

    Args:
        model (nn.Module), loader (iterable of ``(x, y)``), precision (str |
        Recipe, default "fp32"), loss_fn (callable, default ``cross_entropy``),
        device (default: the model's device).

    Example:
        >>> from course_lib.data import digits_loaders
        >>> from course_lib.models import MLP
        >>> _, val = digits_loaders(device="cpu"); _ = torch.manual_seed(0)
        >>> 0.0 <= evaluate(MLP(), val)["val_accuracy"] <= 1.0
        True
    """
    recipe = get_recipe(precision)
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    first = next(model.parameters(), None)
    dev = resolve_device(device) if device is not None or first is None else first.device
    was_training = model.training
    model.eval()
    total_loss, n_loss, correct, n_targets, has_acc = 0.0, 0, 0, 0, True
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for batch in loader:
                x, y = _split_batch(batch)
                y = y.to(dev)
                out, loss = recipe.compute_loss(model, recipe.prepare_input(x, dev), y, loss_fn, dev.type)
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
