"""Training-step speed, memory and MFU for each precision recipe; inference timed right.

**A step** (:class:`TrainingStep`): a *private copy* of the model, prepared
by the recipe (:meth:`course_lib.recipes.Recipe.prepare_model`: cast and
moved), the recipe's stepper (:meth:`~course_lib.recipes.Recipe.make_stepper`:
plain optimizer, FP32 masters or ``GradScaler``), the batch prepared once;
calling it runs ``zero_grad``, the forward and loss in the recipe's
precision, ``backward`` and ``step`` -- what :func:`course_lib.train.train`
does per step. A :class:`StepSetting` is a recipe plus the float32 matmul
precision of the *whole* step (``"high"`` = TF32 where the hardware has it;
:mod:`course_lib.bench.precision` explains why a forward-only context is
not enough).

**Measured** by :func:`benchmark_training_step`:

* time: :func:`course_lib.bench.measure` (warm-up excluded, CUDA
  synchronised, median and IQR); throughput = batch / median;
* memory, side by side with the prediction: the persistent bill predicted
  from the recipe's dtypes (chapter 00, :meth:`Recipe.training_state_bytes`)
  next to the same bill read off the live tensors after a step
  (:func:`course_lib.memory.measure_training_state`), plus what the
  forward saves for backward (:func:`course_lib.memory.saved_activation_bytes`:
  activations and autocast's weight copies); on CUDA also the allocator's
  peak allocated and reserved bytes during one step
  (:func:`course_lib.memory.cuda_peak_memory`);
* FLOPs: :func:`count_step_flops` (``FlopCounterMode`` on forward +
  backward of a copy on the *meta* device: shapes only, no memory and no
  arithmetic, so a GPU-sized model is counted in a second on any machine;
  dtype does not change the count), and
  MFU = FLOPs / median / peak, the peak from :func:`course_lib.bench.peak.peak_flops`
  for the precision the matmuls run in.

**Inference** (:func:`time_inference`) is the source tutorial's benchmark
done right: a fresh copy of the model per precision (the tutorial's
``model.half()`` converted the caller's model in place, so each later
precision started from already-rounded weights), ``torch.inference_mode``
(no autograd graph, nothing saved for backward), the recipe's autocast
context (``contextlib.nullcontext`` when there is none; ``torch.no_op`` does
not exist), and the median of synchronised timings instead of the mean of a
``time.time`` loop.

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import validate
from ..hardware import SpecTable
from ..memory import cuda_peak_memory, measure_training_state, saved_activation_bytes
from ..recipes import RECIPES, Recipe, get_recipe
from .flops import mfu, training_step_flops
from .peak import Peak
from .precision import fp32_matmul_precision
from .timer import Timing, _fmt, measure, resolve_device

__all__ = ["StepSetting", "STEP_SETTINGS", "get_step_setting", "TrainingStep", "StepResult",
           "count_step_flops", "benchmark_training_step", "step_table", "time_inference"]


@dataclass(frozen=True)
class StepSetting:
    """A recipe plus the float32 matmul precision for its whole step.

    ``precision_key`` is the precision the matmuls run in, for the peak
    table: the autocast or parameter dtype (``"fp16"``, ``"bf16"``), else
    ``"tf32"`` when ``fp32_matmul_precision="high"``, else ``"fp32"``.

    >>> STEP_SETTINGS["tf32"].precision_key, STEP_SETTINGS["amp_bf16"].precision_key
    ('tf32', 'bf16')
    """

    name: str
    recipe: Recipe
    fp32_matmul_precision: str = "highest"

    def __post_init__(self):
        validate.instance_of("name", self.name, str)
        validate.instance_of("recipe", self.recipe, Recipe)
        validate.one_of("fp32_matmul_precision", self.fp32_matmul_precision, ("highest", "high"))

    @property
    def precision_key(self) -> str:
        dtype = self.recipe.compute_dtype
        if dtype == torch.float16:
            return "fp16"
        if dtype == torch.bfloat16:
            return "bf16"
        return "tf32" if self.fp32_matmul_precision == "high" else "fp32"

    def context(self):
        """The whole-step context: the float32 matmul precision (a no-op for "highest")."""
        if self.fp32_matmul_precision == "highest":
            return contextlib.nullcontext()
        return fp32_matmul_precision(self.fp32_matmul_precision)


#: Every recipe of course_lib.recipes, plus "tf32": fp32 with TF32 matmuls for the whole step.
STEP_SETTINGS: dict[str, StepSetting] = {
    **{name: StepSetting(name, recipe) for name, recipe in RECIPES.items()},
    "tf32": StepSetting("tf32", RECIPES["fp32"], "high"),
}


def get_step_setting(setting) -> StepSetting:
    """A :class:`StepSetting` from a name in :data:`STEP_SETTINGS`, a Recipe or a StepSetting.

    >>> get_step_setting("amp_fp16").recipe.name
    'amp_fp16'
    """
    if isinstance(setting, StepSetting):
        return setting
    if isinstance(setting, Recipe):
        return StepSetting(setting.name, setting)
    if not isinstance(setting, str) or setting not in STEP_SETTINGS:
        raise ValueError(f"unknown step setting {setting!r}; allowed: {list(STEP_SETTINGS)}, a "
                         "course_lib.recipes.Recipe or a StepSetting")
    return STEP_SETTINGS[setting]


def _default_loss(logits, targets):
    from ..train import cross_entropy

    return cross_entropy(logits, targets)


def count_step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable | None = None) -> int:
    """FLOPs of one forward + backward of ``model`` on ``(x, y)``, counted on the meta device.

    Algorithm: copy the model and the batch to ``device="meta"`` (tensors
    with shapes and dtypes but no storage) and run
    :func:`course_lib.bench.training_step_flops` there. Counting needs only
    shapes, so this costs no memory and no arithmetic, whatever the model's
    size; the caller's model and tensors are untouched. Two consequences:

    * ``scaled_dot_product_attention`` decomposes into matmuls on the meta
      device and is counted (the full ``T x T`` scores, as ``FlopCounterMode``'s
      own SDPA formulas count). On *CPU tensors* torch 2.13's
      ``FlopCounterMode`` counts **zero** for it: the CPU flash-attention op
      is missing from its registry (pytorch/pytorch#195460, fixed by #195801);
    * a model whose forward needs values (``.item()``, data-dependent
      shapes) cannot run on meta tensors; then the count runs on a copy with
      the real tensors.

    >>> from course_lib.models import MLP
    >>> count_step_flops(MLP(hidden=(8,)), torch.randn(4, 64), torch.randint(0, 10, (4,)))
    10112
    """
    validate.instance_of("model", model, nn.Module)
    loss_fn = _default_loss if loss_fn is None else loss_fn
    try:
        meta = copy.deepcopy(model).to("meta")
        return training_step_flops(meta, x.to("meta"), y.to("meta"), loss_fn)
    except (NotImplementedError, RuntimeError):  # needs real values: count on a real copy
        return training_step_flops(copy.deepcopy(model), x, y, loss_fn)


class TrainingStep:
    """One training step of ``setting`` on a private copy of ``model``; call it to run a step.

    Args:
        model (nn.Module): copied (``copy.deepcopy``), never modified.
        x, y (Tensor): one batch (moved and cast once, as the recipe says).
        setting (str | Recipe | StepSetting): see :data:`STEP_SETTINGS`.
        device: default :func:`course_lib.device.default_device`.
        loss_fn (callable, default ``course_lib.train.cross_entropy``).
        optimizer (str, default "adam"): a name of :data:`course_lib.train.OPTIMIZERS`.
        lr (float, default 1e-3).

    Attributes: ``model``, ``stepper``, ``steps`` and ``skipped`` (steps the
    stepper skipped because of inf/NaN gradients, e.g. GradScaler's first
    steps while it lowers its scale).

    >>> from course_lib.models import MLP
    >>> step = TrainingStep(MLP(hidden=(8,)), torch.randn(4, 64), torch.randint(0, 10, (4,)), "amp_bf16",
    ...                     device="cpu")
    >>> info = step(); step.steps, step.model.net[0].weight.dtype
    (1, torch.float32)
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting="fp32", *, device=None,
                 loss_fn: Callable | None = None, optimizer: str = "adam", lr: float = 1e-3):
        from ..train import optimizer_factory

        validate.instance_of("model", model, nn.Module)
        validate.instance_of("x", x, torch.Tensor)
        validate.instance_of("y", y, torch.Tensor)
        self.setting = get_step_setting(setting)
        self.recipe = self.setting.recipe
        self.device = resolve_device(device)
        self.loss_fn = _default_loss if loss_fn is None else loss_fn
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(self.loss_fn).__name__}")
        self.optimizer_name = validate.instance_of("optimizer", optimizer, str)
        factory, _ = optimizer_factory(optimizer, lr)
        self.model = self.recipe.prepare_model(copy.deepcopy(model), self.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameter with requires_grad=True")
        self.stepper = self.recipe.make_stepper(params, factory, device_type=self.device.type)
        self.x = self.recipe.prepare_input(x, self.device)
        self.y = y.to(self.device)
        self.batch = int(y.shape[0]) if y.dim() else 1
        self.steps = 0
        self.skipped = 0

    def __call__(self):
        with self.setting.context():
            self.stepper.zero_grad()
            _, loss = self.recipe.compute_loss(self.model, self.x, self.y, self.loss_fn, self.device.type)
            self.stepper.backward(loss)
            info = self.stepper.step()
        self.steps += 1
        self.skipped += bool(info.skipped)
        return info

    def forward_loss(self) -> torch.Tensor:
        """The forward pass and loss only (with autograd recording), in the step's precision."""
        with self.setting.context():
            return self.recipe.compute_loss(self.model, self.x, self.y, self.loss_fn, self.device.type)[1]

    @property
    def bill_optimizer(self):
        """The object :func:`course_lib.memory.measure_training_state` reads (the masters' wrapper if any)."""
        return getattr(self.stepper, "master", self.stepper.optimizer)

    def memory(self) -> dict[str, int]:
        """Bytes: predicted and measured persistent state, saved for backward; CUDA peaks on CUDA.

        Run at least one step first (gradients and optimizer state exist only then).
        """
        n_params = sum(p.numel() for p in self.model.parameters())
        out = {"predicted_state": self.recipe.training_state_bytes(n_params, self.optimizer_name)["total"],
               "measured_state": measure_training_state(self.model, self.bill_optimizer)["total"],
               "saved_for_backward": saved_activation_bytes(self.forward_loss,
                                                            self.model.parameters())["extra_bytes"]}
        if self.device.type == "cuda":
            peaks = cuda_peak_memory(self, self.device)
            out |= {"cuda_peak_allocated": peaks["peak_allocated"], "cuda_peak_reserved": peaks["peak_reserved"]}
        return out


@dataclass(frozen=True)
class StepResult:
    """One setting's training step: time, throughput, memory (bytes), FLOPs and MFU."""

    setting: str
    precision_key: str
    timing: Timing
    batch: int
    flops_per_step: int | None
    peak: Peak | None
    memory: dict = field(default_factory=dict)
    skipped_steps: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.timing.median_s

    @property
    def achieved_flops(self) -> float | None:
        return None if self.flops_per_step is None else self.flops_per_step / self.timing.median_s

    @property
    def mfu(self) -> float | None:
        if self.flops_per_step is None or self.peak is None or self.peak.flops is None:
            return None
        return mfu(self.flops_per_step, self.timing.median_s, self.peak.flops)

    def as_dict(self) -> dict:
        return {"setting": self.setting, "precision": self.precision_key, "median_s": self.timing.median_s,
                "iqr_s": self.timing.iqr_s, "n": self.timing.n, "threads": self.timing.threads,
                "device": self.timing.device, "batch": self.batch, "samples_per_s": self.samples_per_s,
                "flops_per_step": self.flops_per_step, "achieved_flops": self.achieved_flops,
                "peak": None if self.peak is None else asdict(self.peak), "mfu": self.mfu,
                "memory_bytes": dict(self.memory), "skipped_steps": self.skipped_steps}


def benchmark_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting="fp32", *,
                            device=None, loss_fn: Callable | None = None, optimizer: str = "adam",
                            warmup: int = 3, repeats: int = 10, min_time_s: float = 0.0,
                            flops_per_step: int | None = None, peak: Peak | None = None,
                            memory: bool = True) -> StepResult:
    """Time, measure and count one training step of ``setting`` (see the module docstring).

    Args:
        model, x, y, setting, device, loss_fn, optimizer: as in :class:`TrainingStep`.
        warmup, repeats, min_time_s: passed to :func:`course_lib.bench.measure`.
        flops_per_step (int | None): counted with :func:`count_step_flops` when
            None (pass it to count once for many settings).
        peak (Peak | None): the peak for this setting's precision (MFU is None without one).
        memory (bool, default True): measure memory (one extra forward, and on CUDA one extra step).

    >>> from course_lib.models import MLP
    >>> r = benchmark_training_step(MLP(hidden=(8,)), torch.randn(4, 64), torch.randint(0, 10, (4,)),
    ...                             "fp32", device="cpu", warmup=1, repeats=2)
    >>> r.flops_per_step   # forward 2*4*(64*8 + 8*10), backward 2*4*64*8 + 2*(2*4*8*10)
    10112
    >>> r.memory["predicted_state"] == r.memory["measured_state"], r.mfu is None
    (True, True)
    """
    step = TrainingStep(model, x, y, setting, device=device, loss_fn=loss_fn, optimizer=optimizer)
    if peak is not None:
        validate.instance_of("peak", peak, Peak)
    if flops_per_step is None:
        flops_per_step = count_step_flops(model, x, y, step.loss_fn)
    timing = measure(step, warmup=warmup, repeats=repeats, device=step.device, min_time_s=min_time_s)
    skipped = step.skipped
    mem = step.memory() if memory else {}
    return StepResult(step.setting.name, step.setting.precision_key, timing, step.batch,
                      int(flops_per_step), peak, mem, skipped)


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def step_table(results: list[StepResult]) -> SpecTable:
    """Rows: setting, median step, samples/s, speed-up over the first ``fp32`` row, memory, MFU.

    Memory columns: the persistent bill predicted / measured, what the
    forward saves for backward, and on CUDA the allocator's peak allocated
    and reserved bytes during one step.
    """
    base = next((r.timing.median_s for r in results if r.setting == "fp32"), None)
    cuda = any("cuda_peak_allocated" in r.memory for r in results)
    rows = []
    for r in results:
        m = r.memory
        row = [r.setting, _fmt(r.timing.median_s), _fmt(r.timing.iqr_s), f"{r.samples_per_s:,.0f}",
               "-" if base is None else f"{base / r.timing.median_s:.2f}x",
               _mib(m.get("predicted_state")), _mib(m.get("measured_state")), _mib(m.get("saved_for_backward"))]
        if cuda:
            row += [_mib(m.get("cuda_peak_allocated")), _mib(m.get("cuda_peak_reserved"))]
        achieved = r.achieved_flops
        row += ["-" if achieved is None else f"{achieved / 1e12:.3g}",
                "-" if r.peak is None or r.peak.flops is None else f"{r.peak.flops / 1e12:.3g}",
                "n/a" if r.mfu is None else f"{r.mfu:.1%}", str(r.skipped_steps)]
        rows.append(row)
    headers = ["setting", "median step", "IQR", "samples/s", "vs fp32", "state (predicted)",
               "state (measured)", "saved for backward"]
    if cuda:
        headers += ["CUDA peak allocated", "CUDA peak reserved"]
    headers += ["achieved TFLOP/s", "peak TFLOP/s", "MFU", "skipped"]
    notes = ["state = weights + gradients + master copies + optimizer state (predicted from the recipe's "
             "dtypes, measured from the live tensors after a step); saved for backward = activations and "
             "autocast weight copies kept by the forward pass.",
             "MFU = counted FLOPs per step / median step time / peak of the precision the matmuls run in "
             "(GPU: datasheet dense peak; CPU: measured matmul peak). skipped = timed or warm-up steps the "
             "stepper skipped (inf/NaN gradients)."]
    return SpecTable(headers, rows, notes)


def time_inference(model: nn.Module, x: torch.Tensor, precision="fp32", *, device=None, warmup: int = 3,
                   repeats: int = 10, min_time_s: float = 0.0) -> Timing:
    """Time a forward pass of a fresh copy of ``model`` in ``precision``, under ``torch.inference_mode``.

    ``precision`` is a recipe name (or Recipe): its ``prepare_model`` /
    ``prepare_input`` cast a private copy and the input, its
    ``forward_context`` is autocast or nothing. ``model`` is not modified.

    >>> from course_lib.models import MLP
    >>> m = MLP(hidden=(8,)); t = time_inference(m, torch.randn(4, 64), "bf16_pure", device="cpu", repeats=2)
    >>> t.n, m.net[0].weight.dtype
    (2, torch.float32)
    """
    validate.instance_of("model", model, nn.Module)
    validate.instance_of("x", x, torch.Tensor)
    recipe = get_recipe(precision)
    dev = resolve_device(device)
    copy_ = recipe.prepare_model(copy.deepcopy(model), dev).eval()
    xin = recipe.prepare_input(x, dev)

    def forward():
        with torch.inference_mode(), recipe.forward_context(dev.type):
            return copy_(xin)

    return measure(forward, warmup=warmup, repeats=repeats, device=dev, min_time_s=min_time_s)
