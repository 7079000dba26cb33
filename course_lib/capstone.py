"""The capstone: a precision plan for a tiny transformer, judged by the properties a good recipe has.

A :class:`CapstonePlan` is a mixed-precision recipe with its settings -- the
precision (a name in :data:`course_lib.recipes.RECIPES` or a
:class:`~course_lib.recipes.Recipe`), the optimizer and learning rate, how the
batch is split for gradient accumulation, the loss-scaler settings and
gradient clipping. A :class:`CapstoneBudget` is what a run may spend and how
it is checked: the :class:`~course_lib.models.TinyTransformer`'s size, the
slice of the character corpus (:func:`course_lib.data.char_lm_loaders`), the
number of optimizer steps, the batch, the seed and the step at which the run
is interrupted. The plan is the learner's; the budget is the grader's (a
recipe that passes only for a seed it picked itself is not a recipe).

:func:`evaluate_plan` trains the plan on the budget with
:func:`course_lib.train.train` and checks three **properties**, each with its
numbers:

(a) **loss reached** -- the validation loss is below the target. The target
    comes from the data, not from a run: the *unigram baseline*, the
    cross-entropy on the validation characters of the best predictor that
    ignores context (character frequencies counted on the training text,
    add-one smoothed). Beating it means the model learnt to use the previous
    characters. :func:`loss_baselines` also gives the uniform ``ln V`` (an
    untrained model starts near it) and the bigram baseline (one character of
    context), for scale. A run whose steps were all skipped, or that stalls
    (pure BF16 at a small learning rate, chapter 06), or diverges, fails here.
(b) **no corrupted step** -- every recorded loss is finite and every parameter
    is finite at the end. Steps the loss scaler skipped (inf/NaN gradients
    caught before the update) are allowed and counted: that is the scaler
    doing its job. A recipe that applies a non-finite update (``fp16_naive``
    with Adam, chapter 03) fails here.
(c) **bit-identical resume** -- the same plan run in two halves, through a
    checkpoint (``train(..., max_steps=k, checkpoint_path=p)``, then a fresh
    model and ``train(..., resume=True)``), ends with the same weights and the
    same history, bit for bit, as the uninterrupted run (chapter 05;
    :mod:`course_lib.checkpoint`). Before the resume the global RNGs are
    reseeded and the new model is initialised differently, as in a new process:
    only what the checkpoint holds may matter. On CUDA some kernels
    (atomic additions, e.g. the embedding's backward pass) may sum in a
    different order from run to run, so bit-identity there also needs
    ``torch.use_deterministic_algorithms(True)``; the grading budget runs on the CPU.

**Why the grading budget is what it is** (measured on a 2-core CPU with one torch
thread, three to five seeds per setting; ``tests/test_capstone.py`` re-checks the margins on one
seed, the exercise's tests on fresh ones): a one-layer, ``d_model=32`` model on 32-character windows,
batches of 16, 60 Adam steps on the first 40,000 characters of the corpus. With a learning rate
of 3e-3 to 3e-2 the validation loss ends 0.2 to 0.55 nats below the unigram target on every seed;
at 1e-4 (in any precision) or with every step skipped it stays within 0.2 nats of ``ln V``, more
than a nat above the target; 40 steps left lr=3e-3 only about 0.1 below the target, too close to
call. One evaluation (two training runs) takes about half a second in FP32 or BF16 and 1.5 to 3 s
for a recipe that computes in FP16, which a CPU emulates.

:func:`speedup_summary` turns raw step timings (seconds, e.g.
``course_lib.bench.measure(...).samples``) of a baseline and a candidate into
medians, interquartile ranges, the speed-up and a verdict that claims a
difference only when the interquartile ranges do not overlap.

Introduced in chapter 12 (notebooks/12_capstone.ipynb).

Example:
    >>> plan = CapstonePlan("amp_bf16", optimizer="adamw", lr=1e-2)
    >>> report = evaluate_plan(plan, budget=CapstoneBudget(steps=4, max_chars=4000))
    >>> report.no_corrupted_step, report.resume_bit_identical, report.steps
    (True, True, 4)
    >>> CapstonePlan("amp_fp16", loss_scale=1024.0)
    Traceback (most recent call last):
    ...
    ValueError: loss_scale=1024.0: precision 'amp_fp16' scales with torch.amp.GradScaler, whose scale is always dynamic; use loss_scale='dynamic' with init_scale=1024.0 (and growth_interval=...) to start it there
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Sequence

import torch

from course_lib.data import CharCorpus, char_lm_loaders
from course_lib.models import TinyTransformer
from course_lib.recipes import Recipe, get_recipe
from course_lib.scaling import DynamicLossScaler
from course_lib.train import OPTIMIZERS, TrainResult, optimizer_factory, train
from course_lib.validate import instance_of, non_negative_int, one_of, positive_float, positive_int

__all__ = ["CapstoneBudget", "GRADING_BUDGET", "CapstonePlan", "LossBaselines", "PlanReport", "NOT_CHECKED",
           "capstone_data", "capstone_model", "loss_baselines", "run_plan", "run_difference",
           "evaluate_plan", "speedup_summary"]


# ----------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class CapstoneBudget:
    """What a capstone run may spend, and where it is interrupted (the grader's side).

    Attributes:
        steps (int, default 60): optimizer steps.
        batch_size (int, default 16): sequences per optimizer step; a plan with
            ``accum_steps=a`` feeds them as ``a`` micro-batches of ``batch_size / a``
            (so every plan sees the same characters and the target is fair).
        block_size (int, default 32): characters per sequence.
        d_model (int, default 32), n_heads (int, default 2), n_layers (int, default 1):
            the :class:`~course_lib.models.TinyTransformer`.
        max_chars (int | None, default 40000): the first ``max_chars`` characters of
            the corpus (``None``: all of it); 10% at the end are the validation text.
        seed (int, default 0): initial weights, data order and every RNG of the run.
        interrupt_at (int | None, default None): the step after which the resume
            check stops and resumes the run; ``None`` means ``steps // 2``.
        device (str, default "cpu"): "cpu" or "cuda".

    >>> CapstoneBudget().resolved_interrupt_at
    30
    >>> CapstoneBudget(seed=7, interrupt_at=12)   # the repr lists what differs from the defaults
    CapstoneBudget(seed=7, interrupt_at=12)
    >>> CapstoneBudget(steps=10, interrupt_at=10)
    Traceback (most recent call last):
    ...
    ValueError: interrupt_at must be between 1 and steps - 1 = 9 (a step after which the run stops and resumes), got 10
    """

    steps: int = 60
    batch_size: int = 16
    block_size: int = 32
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    max_chars: int | None = 40_000
    seed: int = 0
    interrupt_at: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        for name in ("steps", "batch_size", "block_size", "d_model", "n_heads", "n_layers"):
            positive_int(name, getattr(self, name))
        positive_int("max_chars", self.max_chars, allow_none=True)
        non_negative_int("seed", self.seed)
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2 (the resume check interrupts the run once), "
                             f"got {self.steps}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.interrupt_at is not None:
            positive_int("interrupt_at", self.interrupt_at)
            if not 1 <= self.interrupt_at <= self.steps - 1:
                raise ValueError(f"interrupt_at must be between 1 and steps - 1 = {self.steps - 1} (a step "
                                 f"after which the run stops and resumes), got {self.interrupt_at}")
        one_of("device", self.device, ("cpu", "cuda"))

    def __repr__(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return f"CapstoneBudget({', '.join(changed)})"

    @property
    def resolved_interrupt_at(self) -> int:
        """The step after which the resume check interrupts the run."""
        return self.steps // 2 if self.interrupt_at is None else self.interrupt_at


#: The budget :func:`evaluate_plan` grades with (exercise 12.capstone_plan draws its seed and
#: interruption step, the rest stays): see the module docstring for why it is this size.
GRADING_BUDGET = CapstoneBudget()


# ----------------------------------------------------------------------------- the plan
_DYNAMIC_SETTINGS = ("init_scale", "growth_interval")


@dataclass(frozen=True)
class CapstonePlan:
    """A mixed-precision recipe with its settings (the learner's side).

    Attributes:
        precision (str | Recipe, default "amp_bf16"): a name in ``RECIPES`` or a Recipe.
        optimizer (str, default "adamw"): a name in ``course_lib.train.OPTIMIZERS``.
        lr (float, default 3e-3): learning rate.
        accum_steps (int, default 1): micro-batches per optimizer step (must divide the
            budget's ``batch_size``).
        loss_scale (default "auto"): ``"auto"`` (the recipe's default), ``None`` (no
            scaling), ``"dynamic"``, or a positive number: a *static* scale (for recipes
            whose stepper takes one: ``mixed_manual`` skips overflowing steps,
            ``fp16_naive`` applies it unchecked). ``torch.amp.GradScaler`` (``amp_fp16``)
            is always dynamic: give it ``"dynamic"`` and ``init_scale``.
        init_scale (float | None, default None): first scale of a dynamic scaler (None: 2**16).
        growth_interval (int | None, default None): clean steps before a dynamic scaler
            doubles its scale (None: 2000).
        grad_clip (float | None, default None): clip the unscaled gradients to this global norm.

    Every check runs when the plan is built: the recipe's own rules
    (:meth:`Recipe.make_stepper` is called on a dummy parameter), so a plan
    that exists can be trained. :meth:`train_kwargs` gives the arguments for
    :func:`course_lib.train.train`, with a *fresh* scaler object each call
    (a scaler object shared by two runs carries its scale from one into the other).

    >>> CapstonePlan("mixed_manual", lr=5e-3, loss_scale="dynamic", init_scale=2.0**12).describe()
    'mixed_manual, adamw lr=0.005, loss scale dynamic (init_scale=4096.0)'
    """

    precision: str | Recipe = "amp_bf16"
    optimizer: str = "adamw"
    lr: float = 3e-3
    accum_steps: int = 1
    loss_scale: Any = "auto"
    init_scale: float | None = None
    growth_interval: int | None = None
    grad_clip: float | None = None

    def __post_init__(self):
        recipe = get_recipe(self.precision)
        instance_of("optimizer", self.optimizer, str)
        one_of("optimizer", self.optimizer, list(OPTIMIZERS))
        positive_float("lr", self.lr)
        positive_int("accum_steps", self.accum_steps)
        positive_float("grad_clip", self.grad_clip, allow_none=True)
        positive_float("init_scale", self.init_scale, allow_none=True)
        positive_int("growth_interval", self.growth_interval, allow_none=True)
        ls = self.loss_scale
        if not (ls in ("auto", "dynamic", None) if isinstance(ls, (str, type(None))) else
                isinstance(ls, Real) and not isinstance(ls, bool)):
            raise (ValueError if isinstance(ls, str) else TypeError)(
                f"loss_scale must be 'auto', 'dynamic', None or a positive number (a static scale), "
                f"got {ls!r}")
        if isinstance(ls, Real):
            positive_float("loss_scale", ls)
            if recipe.stepper == "grad_scaler":
                raise ValueError(f"loss_scale={ls!r}: precision {recipe.name!r} scales with "
                                 "torch.amp.GradScaler, whose scale is always dynamic; use "
                                 f"loss_scale='dynamic' with init_scale={float(ls)!r} (and "
                                 "growth_interval=...) to start it there")
        settings = [s for s in _DYNAMIC_SETTINGS if getattr(self, s) is not None]
        if settings and not self.scale_is_dynamic:
            raise ValueError(f"{' and '.join(settings)} set, but the loss scale of this plan is not "
                             f"dynamic (precision {recipe.name!r}, loss_scale={ls!r}); they configure "
                             "a dynamic scaler: use loss_scale='dynamic' or leave them None")
        # The recipe's own rules, once, on a dummy parameter: a plan that exists can be trained.
        make_optimizer, _ = optimizer_factory(self.optimizer, self.lr)
        dummy = torch.nn.Parameter(torch.zeros(1, dtype=recipe.param_dtype))
        kwargs = self.train_kwargs("cpu")
        recipe.make_stepper([dummy], make_optimizer, loss_scale=kwargs["loss_scale"],
                            grad_clip=self.grad_clip, device_type="cpu")

    @property
    def recipe(self) -> Recipe:
        """The plan's :class:`~course_lib.recipes.Recipe`."""
        return get_recipe(self.precision)

    @property
    def scale_is_dynamic(self) -> bool:
        """Whether the loss scale adapts (``"dynamic"``, or ``"auto"`` on a recipe whose default is)."""
        ls = self.recipe.default_loss_scale if self.loss_scale == "auto" else self.loss_scale
        return ls == "dynamic"

    def train_kwargs(self, device_type: str = "cpu") -> dict[str, Any]:
        """Keyword arguments for :func:`course_lib.train.train`, with a fresh scaler each call.

        Returns ``{"precision", "optimizer", "lr", "accum_steps", "loss_scale",
        "grad_clip"}``; ``loss_scale`` is a new ``DynamicLossScaler`` (FP32
        masters) or ``torch.amp.GradScaler(device_type)`` (autocast FP16) when
        ``init_scale`` or ``growth_interval`` is set, else the plan's own value.

        >>> kw = CapstonePlan("amp_fp16", loss_scale="dynamic", growth_interval=100).train_kwargs()
        >>> type(kw["loss_scale"]).__name__, kw["loss_scale"].get_growth_interval()
        ('GradScaler', 100)
        """
        one_of("device_type", device_type, ("cpu", "cuda"))
        recipe = self.recipe
        loss_scale = self.loss_scale
        if any(getattr(self, s) is not None for s in _DYNAMIC_SETTINGS):
            init = 2.0 ** 16 if self.init_scale is None else float(self.init_scale)
            interval = 2000 if self.growth_interval is None else int(self.growth_interval)
            if recipe.stepper == "grad_scaler":
                loss_scale = torch.amp.GradScaler(device_type, init_scale=init, growth_interval=interval)
            else:
                loss_scale = DynamicLossScaler(init_scale=init, growth_interval=interval)
        elif isinstance(loss_scale, Real) and not isinstance(loss_scale, bool):
            loss_scale = float(loss_scale)
        return {"precision": recipe, "optimizer": self.optimizer, "lr": float(self.lr),
                "accum_steps": int(self.accum_steps), "loss_scale": loss_scale,
                "grad_clip": None if self.grad_clip is None else float(self.grad_clip)}

    def describe(self) -> str:
        """One line: precision, optimizer, learning rate and every non-default setting."""
        parts = [self.recipe.name, f"{self.optimizer} lr={self.lr:g}"]
        if self.accum_steps != 1:
            parts.append(f"accum_steps={self.accum_steps}")
        if self.loss_scale != "auto" or self.init_scale is not None or self.growth_interval is not None:
            extra = ", ".join(f"{s}={getattr(self, s)!r}" for s in _DYNAMIC_SETTINGS
                              if getattr(self, s) is not None)
            parts.append(f"loss scale {self.loss_scale}" + (f" ({extra})" if extra else ""))
        if self.grad_clip is not None:
            parts.append(f"grad_clip={self.grad_clip:g}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- data, model, target
@functools.lru_cache(maxsize=4)
def _corpus(max_chars: int | None) -> CharCorpus:
    return CharCorpus(max_chars=max_chars)


def capstone_data(budget: CapstoneBudget = GRADING_BUDGET, accum_steps: int = 1):
    """``(train_loader, val_loader, corpus)`` for ``budget``, in micro-batches of ``batch_size / accum_steps``.

    The corpus (:class:`course_lib.data.CharCorpus`, first ``max_chars``
    characters) is built once per ``max_chars`` and cached; the loaders are
    new each call (:func:`course_lib.data.char_lm_loaders`, shuffled with
    ``budget.seed``), on ``budget.device``.

    >>> tr, va, corpus = capstone_data(CapstoneBudget(max_chars=4000), accum_steps=4)
    >>> next(iter(tr))[0].shape, corpus.vocab_size
    (torch.Size([4, 32]), 55)
    """
    instance_of("budget", budget, CapstoneBudget)
    accum_steps = positive_int("accum_steps", accum_steps)
    if budget.batch_size % accum_steps:
        raise ValueError(f"accum_steps={accum_steps} does not divide the budget's batch_size="
                         f"{budget.batch_size}: every optimizer step sees batch_size sequences, split "
                         f"into accum_steps equal micro-batches; allowed: "
                         f"{[a for a in range(1, budget.batch_size + 1) if budget.batch_size % a == 0]}")
    return char_lm_loaders(block_size=budget.block_size, batch_size=budget.batch_size // accum_steps,
                           seed=budget.seed, corpus=_corpus(budget.max_chars), device=budget.device)


def capstone_model(budget: CapstoneBudget, vocab_size: int, seed: int | None = None) -> TinyTransformer:
    """The budget's :class:`~course_lib.models.TinyTransformer`, initialised after ``torch.manual_seed``.

    ``seed`` defaults to ``budget.seed`` (this reseeds torch's global RNG, as
    :func:`course_lib.train.train` does for a fresh run).

    >>> m = capstone_model(CapstoneBudget(), vocab_size=87); sum(p.numel() for p in m.parameters())
    19447
    """
    instance_of("budget", budget, CapstoneBudget)
    torch.manual_seed(budget.seed if seed is None else seed)
    return TinyTransformer(vocab_size, block_size=budget.block_size, d_model=budget.d_model,
                           n_heads=budget.n_heads, n_layers=budget.n_layers)


@dataclass(frozen=True)
class LossBaselines:
    """Cross-entropies (nats per character) of three context-free or short-context predictors.

    ``uniform`` = ``ln V``; ``unigram`` = character frequencies of the training
    text; ``bigram`` = the previous character's successor frequencies (both
    add-one smoothed), each on the validation targets ``evaluate()`` scores.
    ``target`` is the unigram baseline: a model must use context to beat it.
    """

    uniform: float
    unigram: float
    bigram: float
    vocab_size: int
    val_characters: int

    @property
    def target(self) -> float:
        return self.unigram


@functools.lru_cache(maxsize=8)
def _baselines(max_chars: int | None, block_size: int) -> LossBaselines:
    corpus = _corpus(max_chars)
    train_loader, val_loader, _ = char_lm_loaders(block_size=block_size, batch_size=64, corpus=corpus,
                                                  device="cpu")
    text = train_loader.dataset.data
    V = corpus.vocab_size
    pairs = [(x.reshape(-1), y.reshape(-1)) for x, y in val_loader]
    prev = torch.cat([p for p, _ in pairs])
    target = torch.cat([t for _, t in pairs])
    unigram = torch.bincount(text, minlength=V).double() + 1.0
    unigram = unigram / unigram.sum()
    bigram = torch.ones(V, V, dtype=torch.float64)
    bigram.index_put_((text[:-1], text[1:]), torch.ones(len(text) - 1, dtype=torch.float64), accumulate=True)
    bigram = bigram / bigram.sum(dim=1, keepdim=True)
    return LossBaselines(uniform=math.log(V), unigram=float(-unigram[target].log().mean()),
                         bigram=float(-bigram[prev, target].log().mean()), vocab_size=V,
                         val_characters=int(target.numel()))


def loss_baselines(budget: CapstoneBudget = GRADING_BUDGET) -> LossBaselines:
    """The loss baselines of the budget's data (see :class:`LossBaselines`); cached.

    >>> b = loss_baselines(); round(b.uniform, 3), round(b.unigram, 3), round(b.bigram, 3)
    (4.466, 3.314, 2.691)
    """
    instance_of("budget", budget, CapstoneBudget)
    return _baselines(budget.max_chars, budget.block_size)


# ----------------------------------------------------------------------------- running a plan
def run_plan(plan: CapstonePlan, budget: CapstoneBudget = GRADING_BUDGET, *, progress: bool = False,
             max_steps: int | None = None, checkpoint_path=None, resume: bool = False,
             model_seed: int | None = None) -> TrainResult:
    """Train ``plan`` on ``budget``: :func:`capstone_data`, :func:`capstone_model`, then ``train()``.

    ``max_steps``, ``checkpoint_path`` and ``resume`` are passed to
    :func:`course_lib.train.train`; ``model_seed`` initialises the model
    differently (a resumed run's weights must come from the checkpoint).
    The result's ``val_history`` holds the validation loss at the end.
    """
    instance_of("plan", plan, CapstonePlan)
    train_loader, val_loader, corpus = capstone_data(budget, plan.accum_steps)
    model = capstone_model(budget, corpus.vocab_size, seed=model_seed)
    return train(model, train_loader, steps=budget.steps, val_loader=val_loader, device=budget.device,
                 seed=budget.seed, progress=progress, max_steps=max_steps,
                 checkpoint_path=checkpoint_path, resume=resume, **plan.train_kwargs(budget.device))


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return _bits(a) == _bits(b)
    return type(a) is type(b) and a == b


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
        return torch.equal(a.detach().cpu().contiguous().view(width), b.detach().cpu().contiguous().view(width))
    return torch.equal(a.cpu(), b.cpu())


def run_difference(a: TrainResult, b: TrainResult) -> str | None:
    """``None`` if two runs ended bit for bit alike (weights, history, validation), else the first difference.

    Weights are compared as bit patterns (so NaN equals the same NaN, and
    -0.0 differs from +0.0); history values as the bits of Python floats.

    >>> from course_lib.train import TrainResult
    >>> lin = torch.nn.Linear(2, 1)
    >>> run_difference(TrainResult(lin, [{"loss": float("nan")}]), TrainResult(lin, [{"loss": float("nan")}])) is None
    True
    >>> run_difference(TrainResult(lin, [{"loss": 1.0}]), TrainResult(lin, [{"loss": 1.0 + 2**-52}]))
    "history differs at step 0: 'loss' 1.0 vs 1.0000000000000002"
    """
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if list(sa) != list(sb):
        return f"the models have different parameters: {sorted(set(sa) ^ set(sb))}"
    differ = [k for k in sa if not _same_tensor(sa[k], sb[k])]
    if differ:
        k = differ[0]
        x, y = sa[k].detach().double().cpu(), sb[k].detach().double().cpu()
        delta = float((x - y).abs().nan_to_num(nan=math.inf).max()) if x.shape == y.shape else math.nan
        return (f"weights differ in {len(differ)} of {len(sa)} tensors, first {k!r} "
                f"(largest difference {delta:.3g})")
    for name, ha, hb in (("history", a.history, b.history), ("val_history", a.val_history, b.val_history)):
        if len(ha) != len(hb):
            return f"{name} lengths differ: {len(ha)} vs {len(hb)}"
        for i, (ra, rb) in enumerate(zip(ha, hb)):
            for key in sorted(set(ra) | set(rb)):
                if not _same_value(ra.get(key), rb.get(key)):
                    return f"{name} differs at step {ra.get('step', i)}: {key!r} {ra.get(key)!r} vs {rb.get(key)!r}"
    return None


# ----------------------------------------------------------------------------- the report
#: ``PlanReport.resume_difference`` when the interrupted copy was not trained.
NOT_CHECKED = "not checked"

@dataclass(frozen=True)
class PlanReport:
    """What :func:`evaluate_plan` found: the three properties, with their numbers.

    Attributes:
        plan (CapstonePlan), budget (CapstoneBudget), baselines (LossBaselines).
        val_loss (float): validation loss at the end of the uninterrupted run.
        steps (int), skipped_steps (int): optimizer steps recorded and skipped by the scaler.
        nonfinite_loss_steps (tuple[int, ...]): steps whose recorded loss was inf/NaN.
        nonfinite_parameters (tuple[str, ...]): parameters holding inf/NaN at the end.
        resume_difference (str | None): ``None`` when the interrupted and resumed run
            equals the uninterrupted one bit for bit, else the first difference;
            ``NOT_CHECKED`` when the check did not run.
        seconds (float): wall time of the evaluation (both runs).
        history (list[dict]): the uninterrupted run's per-step records.
    """

    plan: CapstonePlan
    budget: CapstoneBudget
    baselines: LossBaselines
    val_loss: float
    steps: int
    skipped_steps: int
    nonfinite_loss_steps: tuple[int, ...]
    nonfinite_parameters: tuple[str, ...]
    resume_difference: str | None
    seconds: float
    history: list = field(default_factory=list, repr=False)

    @property
    def loss_reached(self) -> bool:
        """(a) the validation loss is finite and below the target."""
        return math.isfinite(self.val_loss) and self.val_loss < self.baselines.target

    @property
    def no_corrupted_step(self) -> bool:
        """(b) every recorded loss and every final parameter is finite."""
        return not self.nonfinite_loss_steps and not self.nonfinite_parameters

    @property
    def resume_checked(self) -> bool:
        """Whether the interrupted copy of the run was trained and compared."""
        return self.resume_difference != NOT_CHECKED

    @property
    def resume_bit_identical(self) -> bool | None:
        """(c) the interrupted-and-resumed run equals the uninterrupted one, bit for bit (None: not checked)."""
        return self.resume_difference is None if self.resume_checked else None

    @property
    def passed(self) -> bool:
        """All three properties checked and holding."""
        return self.loss_reached and self.no_corrupted_step and self.resume_bit_identical is True

    def properties(self) -> dict[str, tuple[bool | None, str]]:
        """``{name: (holds, the numbers behind it)}`` for the three properties (None: not checked)."""
        b = self.baselines
        skipped = f"; {self.skipped_steps} of {self.steps} steps skipped by the loss scaler"
        if self.skipped_steps == self.steps:
            skipped += " (every step: the scale never let an update through)"
        loss = (f"validation loss {self.val_loss:.4f} vs target {b.target:.4f} (unigram baseline; "
                f"uniform ln V = {b.uniform:.4f}, bigram {b.bigram:.4f}){skipped}")
        if self.nonfinite_loss_steps:
            first, n = self.nonfinite_loss_steps[0], len(self.nonfinite_loss_steps)
            corrupt = f"the loss is inf/NaN at {n} of {self.steps} steps, first at step {first}"
        else:
            corrupt = f"all {self.steps} recorded losses finite"
        if self.nonfinite_parameters:
            corrupt += (f"; {len(self.nonfinite_parameters)} parameter tensors hold inf/NaN at the end, "
                        f"first {self.nonfinite_parameters[0]!r}")
        else:
            corrupt += "; every parameter finite at the end"
        k = self.budget.resolved_interrupt_at
        if not self.resume_checked:
            resume = "not checked"
        elif self.resume_difference is None:
            resume = f"interrupted after step {k} and resumed: bit-identical weights and history"
        else:
            resume = f"interrupted after step {k} and resumed: {self.resume_difference}"
        return {"loss reached": (self.loss_reached, loss),
                "no corrupted step": (self.no_corrupted_step, corrupt),
                "bit-identical resume": (self.resume_bit_identical, resume)}

    @property
    def failures(self) -> list[str]:
        """One line per property that does not hold."""
        return [f"{name!r} does not hold ({detail})" for name, (ok, detail) in self.properties().items()
                if ok is False]

    @property
    def reason(self) -> str:
        """Why the plan did not pass (every failing property), or "" when it passed."""
        if self.passed:
            return ""
        return "; ".join(self.failures) or "'bit-identical resume' was not checked"

    def __str__(self) -> str:
        lines = [f"plan: {self.plan.describe()}",
                 f"budget: {self.budget.steps} steps x {self.budget.batch_size} sequences of "
                 f"{self.budget.block_size} characters, seed {self.budget.seed}, on {self.budget.device} "
                 f"({self.seconds:.2f} s of training)"]
        for name, (ok, detail) in self.properties().items():
            lines.append(f"[{ {True: 'ok', False: 'FAIL', None: '--'}[ok]:4s}] {name}: {detail}")
        return "\n".join(lines)

    __repr__ = __str__


def evaluate_plan(plan: CapstonePlan, *, budget: CapstoneBudget = GRADING_BUDGET,
                  check_resume: bool = True, fail_fast: bool = False, progress: bool = False) -> PlanReport:
    """Train ``plan`` on ``budget`` and check the three properties (see the module docstring).

    Algorithm: one uninterrupted run (:func:`run_plan`); then, when
    ``check_resume``, the same plan stopped after ``budget.resolved_interrupt_at``
    steps with a checkpoint in a temporary folder, the global RNGs reseeded, a
    model initialised with another seed, and ``train(..., resume=True)`` to the
    end; :func:`run_difference` compares the two. Reseeds the global RNGs (as
    ``train()`` does).

    Args:
        plan (CapstonePlan): the recipe and its settings.
        budget (CapstoneBudget, default GRADING_BUDGET): model, data, steps, seed, interruption.
        check_resume (bool, default True): run the interrupted copy (doubles the cost).
        fail_fast (bool, default False): skip the interrupted copy when (a) or (b) already
            failed (the grader's shortcut: the plan fails either way).
        progress (bool, default False): tqdm bars for the runs.

    Returns:
        PlanReport
    """
    instance_of("plan", plan, CapstonePlan)
    instance_of("budget", budget, CapstoneBudget)
    instance_of("check_resume", check_resume, bool)
    instance_of("fail_fast", fail_fast, bool)
    t0 = time.perf_counter()
    full = run_plan(plan, budget, progress=progress)
    losses = [r["loss"] for r in full.history]
    report = PlanReport(
        plan=plan, budget=budget, baselines=loss_baselines(budget),
        val_loss=float(full.val_loss) if full.val_loss is not None else math.nan,
        steps=full.steps, skipped_steps=full.skipped_steps,
        nonfinite_loss_steps=tuple(r["step"] for r, v in zip(full.history, losses) if not math.isfinite(v)),
        nonfinite_parameters=tuple(n for n, p in full.model.named_parameters()
                                   if not bool(torch.isfinite(p).all())),
        resume_difference=NOT_CHECKED, seconds=0.0, history=full.history)
    resume_difference: str | None = NOT_CHECKED
    if check_resume and not (fail_fast and not (report.loss_reached and report.no_corrupted_step)):
        with tempfile.TemporaryDirectory(prefix="capstone-") as folder:
            path = os.path.join(folder, "checkpoint.pt")
            run_plan(plan, budget, progress=progress, max_steps=budget.resolved_interrupt_at,
                     checkpoint_path=path)
            torch.manual_seed(budget.seed + 1)  # a new process: fresh RNGs, another initialisation
            resumed = run_plan(plan, budget, progress=progress, checkpoint_path=path, resume=True,
                               model_seed=budget.seed + 1)
        resume_difference = run_difference(full, resumed)
    return dataclasses.replace(report, resume_difference=resume_difference,
                               seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- speed-up
def _quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """``(Q1, median, Q3)``: ``statistics.quantiles(method="inclusive")``, as :class:`course_lib.bench.Timing`."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, statistics.median(samples), q3


def speedup_summary(baseline_s: Sequence[float], candidate_s: Sequence[float]) -> dict[str, Any]:
    """Medians, interquartile ranges, speed-up and an honest verdict from two lists of step times.

    Algorithm: for each list, the median and the quartiles Q1, Q3 (linear
    interpolation, ``statistics.quantiles(..., n=4, method="inclusive")`` --
    what :class:`course_lib.bench.Timing` and ``numpy.percentile`` compute;
    Q1 = Q3 = the value for a single sample); ``speedup = baseline median /
    candidate median`` (above 1: the candidate is faster); the verdict is
    ``"faster"`` when the candidate's Q3 is below the baseline's Q1,
    ``"slower"`` when its Q1 is above the baseline's Q3, and ``"no clear
    difference"`` when the interquartile ranges overlap (touching counts as
    overlapping).

    Args:
        baseline_s, candidate_s (sequences of float): durations in seconds
            (non-empty, finite, >= 0), e.g. ``measure(...).samples``.

    Returns:
        dict: ``baseline_median_s``, ``candidate_median_s``, ``baseline_iqr_s``,
        ``candidate_iqr_s``, ``speedup``, ``verdict``.

    >>> s = speedup_summary([2.0, 2.1, 2.2, 9.0], [1.0, 1.1, 1.2])
    >>> s["baseline_median_s"], s["candidate_median_s"], round(s["speedup"], 4), s["verdict"]
    (2.1500000000000004, 1.1, 1.9545, 'faster')
    >>> speedup_summary([1.0, 2.0], [1.5])["verdict"]
    'no clear difference'
    """
    from course_lib.bench import Timing

    summary: dict[str, Any] = {}
    quartiles = {}
    for name, samples in (("baseline", baseline_s), ("candidate", candidate_s)):
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
            raise TypeError(f"{name}_s must be a sequence of durations in seconds, got {type(samples).__name__}")
        Timing.from_samples(samples, threads=1, device="cpu", warmup=0)  # the shared check: non-empty, finite, >= 0
        values = [float(s) for s in samples]
        quartiles[name] = _quartiles(values)
        summary[f"{name}_median_s"] = quartiles[name][1]
    for name in ("baseline", "candidate"):
        summary[f"{name}_iqr_s"] = quartiles[name][2] - quartiles[name][0]
    summary["speedup"] = summary["baseline_median_s"] / summary["candidate_median_s"] \
        if summary["candidate_median_s"] > 0 else math.inf
    (b1, _, b3), (c1, _, c3) = quartiles["baseline"], quartiles["candidate"]
    summary["verdict"] = "faster" if c3 < b1 else "slower" if c1 > b3 else "no clear difference"
    return summary
