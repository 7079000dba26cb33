"""Debugging mixed precision: find the first non-finite value, and compare outputs properly.

**First non-finite finder** (``NonFiniteDetector``). Once an inf or NaN
appears it spreads to everything computed after it, so the useful question
is *where did it appear first*. Algorithm: a forward hook on every module
(qualified names from ``named_modules()``) checks the module's output
tensors (tuples, lists and dicts are flattened) with one
``isfinite(...).all()`` per call; a full backward hook checks the gradient
w.r.t. the module's outputs (``grad_output``, which arrives first) and then
w.r.t. its inputs (``grad_input``); a tensor hook on every parameter checks
its gradient. Hooks fire in execution order, and a module's forward hook
fires after its children's, so the first event is the innermost, earliest
module holding a non-finite tensor. Each event keeps statistics of the
offending tensor (numel, dtype, number of inf and NaN, largest finite
``|x|``) and says whether what went *in* was still finite (forward: the
module's inputs; backward: its ``grad_output``) -- if it was, this module
made the inf/NaN. A gradient that is non-finite already in ``grad_output``
came from code after the module (a loss, or an op outside any module).

Checking costs one device synchronisation per module call, so it is a debug
mode: ``NonFiniteDetector(model, enabled=False)`` is a null object that
installs no hook at all (zero cost, same code path for the caller), and
``check_every=N`` checks only every N-th forward call of the model (and the
backward that follows it). Full backward hooks cannot wrap modules whose
outputs are modified in place afterwards (``nn.ReLU(inplace=True)``):
torch raises; use ``backward=False`` there. While attached, the detector
silences torch's "Full backward hook is firing when gradients are computed
with respect to module outputs since no inputs require gradients" warning:
it is expected for the first layer, whose input is data.
``first_nonfinite_module(model, inputs, autocast_dtype)`` is the one-call
form: one forward pass, the name of the first module whose output is
non-finite (chapter 05's exercise).

**Output comparison** (``compare_outputs``, ``compare_precisions``). To
judge a mixed-precision run, run *the same model with the same weights* on
*the same float32 input* twice: once in float32, once under
``torch.amp.autocast`` (autocast casts inside the ops; the input must not be
pre-cast), then compare in float64: max/mean absolute error, a relative
error ``|c - r| / (|r| + floor)`` with ``floor = rel_floor_fraction * max|r|``
(default ``1e-3``: an error is measured relative to the output's scale, so an
output that happens to be near zero does not produce a meaningless 1e5
"relative error"; bf16's unit roundoff ``2**-9`` is above 1e-3, so entries
near zero can still show relative errors near 1 -- ``max_abs_err /
ref_max_abs`` is the error relative to the scale), cosine similarity of the
flattened outputs, and, for logits (``class_dim``), the fraction of rows
whose arg-max agrees. The seed
tutorial's ``compare_model_outputs`` divides by ``|r| + 1e-7``, compares two
*different* models, and feeds a ``.half()`` input under autocast; each of
those makes its numbers meaningless.

Introduced in chapter 05 (notebooks/05_automatic_mixed_precision.ipynb).

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(float("inf"))
    >>> with NonFiniteDetector(model) as det:
    ...     _ = model(torch.ones(1, 2))
    >>> det.first_forward.module, det.first_forward.stats.n_inf
    ('0', 2)
    >>> r = torch.tensor([[2.0, 1.0]]); compare_outputs(r, r).max_abs_err
    0.0
"""
from __future__ import annotations

import contextlib
import html
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from course_lib.amp import check_autocast
from course_lib.validate import instance_of, non_negative_float, positive_int

# torch.utils.hooks.BackwardHook's message for modules whose inputs need no gradient.
_NO_INPUT_GRAD_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"

__all__ = ["TensorStats", "tensor_stats", "NonFiniteEvent", "NonFiniteDetector",
           "first_nonfinite_module", "OutputComparison", "compare_outputs", "compare_precisions"]


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class TensorStats:
    """What a tensor holds: size, dtype, counts of NaN and inf, largest finite magnitude."""

    numel: int
    dtype: torch.dtype
    n_nan: int
    n_inf: int
    max_abs_finite: float

    @property
    def finite(self) -> bool:
        return self.n_nan == 0 and self.n_inf == 0

    def __str__(self) -> str:
        return (f"{self.n_inf} inf, {self.n_nan} NaN of {self.numel} "
                f"{str(self.dtype).replace('torch.', '')} values, max |finite| {self.max_abs_finite:.4g}")


def tensor_stats(t: torch.Tensor) -> TensorStats:
    """Count NaN and inf in ``t`` and find its largest finite ``|x|`` (0.0 if none).

    Example:
        >>> print(tensor_stats(torch.tensor([1.0, -3.0, float("inf"), float("nan")])))
        1 inf, 1 NaN of 4 float32 values, max |finite| 3
    """
    instance_of("t", t, torch.Tensor)
    t = t.detach()
    if not (t.is_floating_point() or t.is_complex()):
        return TensorStats(t.numel(), t.dtype, 0, 0, float(t.abs().max()) if t.numel() else 0.0)
    finite = torch.isfinite(t)
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(torch.isinf(t).sum())
    mag = t.abs()[finite]
    return TensorStats(t.numel(), t.dtype, n_nan, n_inf, float(mag.max()) if mag.numel() else 0.0)


def _float_tensors(tree) -> list[tuple[int, torch.Tensor]]:
    """(position in the flattened structure, tensor) for each floating-point tensor."""
    leaves = tree_flatten(tree)[0]
    return [(i, t) for i, t in enumerate(leaves)
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """One device sync for any number of tensors."""
    if not tensors:
        return True
    flags = torch.stack([torch.isfinite(t.detach()).all().to(tensors[0].device) for t in tensors])
    return bool(flags.all())


# --------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class NonFiniteEvent:
    """One non-finite tensor seen by a ``NonFiniteDetector``.

    Attributes:
        phase (str): ``"forward"`` or ``"backward"``.
        module (str): qualified module name (``""`` is the model itself).
        module_type (str): the module's class name.
        where (str): ``"output"`` / ``"output[i]"`` (forward),
            ``"grad_output[i]"`` / ``"grad_input[i]"`` (backward, w.r.t. the
            module's i-th output / input), ``"grad(weight)"`` (a parameter's gradient).
        step (int): which forward call of the model (0-based).
        call (int): which call of this module within the step's pass (0-based;
            a module used twice has calls 0 and 1; in backward they come in reverse).
        stats (TensorStats): the offending tensor.
        inputs_finite (bool or None): forward -- were the module's inputs
            finite? ``grad_input`` -- was ``grad_output`` finite? ``None`` otherwise.
        first_in_submodule (str or None): the earliest submodule of this
            module with an event in the same step and phase, if any. With
            ``inputs_finite`` and no such submodule, this module produced the inf/NaN.
    """

    phase: str
    module: str
    module_type: str
    where: str
    step: int
    call: int
    stats: TensorStats
    inputs_finite: bool | None
    first_in_submodule: str | None = None

    @property
    def name(self) -> str:
        return f"'{self.module}' ({self.module_type})" if self.module else f"the model ({self.module_type})"

    def diagnosis(self) -> str:
        if self.first_in_submodule is not None and self.inputs_finite:
            return f"first seen in its submodule '{self.first_in_submodule}'"
        if self.phase == "forward":
            return ("its inputs were finite: this module produced it" if self.inputs_finite
                    else "its inputs were already non-finite")
        if self.where.startswith("grad_output"):
            return "the gradient arrived non-finite from code after this module (e.g. the loss)"
        if self.where.startswith("grad_input"):
            return ("grad_output was finite: this module's backward produced it" if self.inputs_finite
                    else "grad_output was already non-finite")
        return "a parameter gradient"

    def __str__(self) -> str:
        call = f", call {self.call}" if self.call else ""
        return (f"step {self.step}{call}: {self.name} {self.where}: {self.stats}; "
                f"{self.diagnosis()}")


class NonFiniteDetector:
    """Hooks that record, in execution order, every module output and gradient holding inf/NaN.

    Algorithm: see the module docstring. Use it as a context manager (hooks
    are installed on entry and removed on exit, also on an exception) or call
    ``attach()``/``detach()``.

    Args:
        model (nn.Module): any module; every submodule (and the model) is hooked.
        enabled (bool, default True): ``False`` makes a null detector that
            installs no hook and records nothing.
        check_every (int, default 1): check only forward calls ``0, N, 2N, ...``
            of ``model`` (and the backward passes that follow them).
        backward (bool, default True): also hook gradients (full backward hooks
            and parameter gradient hooks).
        max_events (int, default 100): keep at most this many events (later
            ones are only counted in ``dropped_events``).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
        >>> with NonFiniteDetector(m) as det:
        ...     m(torch.randn(2, 3)).sum().backward()
        >>> det.found, det.first_forward, len(m[0]._forward_hooks)
        (False, None, 0)
    """

    def __init__(self, model: nn.Module, enabled: bool = True, check_every: int = 1,
                 backward: bool = True, max_events: int = 100):
        self.model = instance_of("model", model, nn.Module)
        self.enabled = instance_of("enabled", enabled, bool)
        self.check_every = positive_int("check_every", check_every)
        self.backward = instance_of("backward", backward, bool)
        self.max_events = positive_int("max_events", max_events)
        self._handles: list = []
        self._attached = False
        self._warnings_context = None
        self.reset()

    # -- state --------------------------------------------------------------
    def reset(self) -> None:
        """Forget all events and restart the step count."""
        self.events: list[NonFiniteEvent] = []
        self.dropped_events = 0
        self.steps_seen = 0
        self.steps_checked = 0
        self._step = -1
        self._active = True  # checks before the model's first forward call (e.g. a submodule alone)
        self._calls: dict[tuple[str, str], int] = {}

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def found(self) -> bool:
        """Whether any non-finite tensor was seen."""
        return bool(self.events) or self.dropped_events > 0

    @property
    def forward_events(self) -> list[NonFiniteEvent]:
        return [e for e in self.events if e.phase == "forward"]

    @property
    def backward_events(self) -> list[NonFiniteEvent]:
        return [e for e in self.events if e.phase == "backward"]

    @property
    def first_forward(self) -> NonFiniteEvent | None:
        """The first module output holding inf/NaN, or ``None``."""
        return next(iter(self.forward_events), None)

    @property
    def first_backward(self) -> NonFiniteEvent | None:
        """The first gradient (w.r.t. a module's output or input, or a parameter) holding inf/NaN."""
        return next(iter(self.backward_events), None)

    # -- hooks --------------------------------------------------------------
    def attach(self) -> "NonFiniteDetector":
        """Install the hooks (nothing when disabled); return ``self``."""
        if self._attached:
            raise RuntimeError("this NonFiniteDetector is already attached; call detach() first")
        self._attached = True
        if not self.enabled:
            return self
        if self.backward:
            # torch warns when a full backward hook fires on a module none of whose inputs
            # requires grad (the first layer: its input is data). Expected here; silence it
            # while attached (the filters are restored by detach()).
            self._warnings_context = warnings.catch_warnings()
            self._warnings_context.__enter__()
            warnings.filterwarnings("ignore", message=_NO_INPUT_GRAD_WARNING, category=UserWarning)
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_call))
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
            if self.backward:
                self._handles.append(module.register_full_backward_hook(self._backward_hook(name)))
        if self.backward:
            seen: set[int] = set()
            for pname, p in self.model.named_parameters():
                if p.requires_grad and id(p) not in seen:  # tied weights: hook once
                    seen.add(id(p))
                    mod, _, attr = pname.rpartition(".")
                    mtype = type(self.model.get_submodule(mod)).__name__
                    self._handles.append(p.register_hook(self._param_hook(mod, mtype, attr)))
        return self

    def detach(self) -> None:
        """Remove every hook this detector installed (the recorded events stay)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._warnings_context is not None:
            self._warnings_context.__exit__(None, None, None)
            self._warnings_context = None
        self._attached = False

    def __enter__(self) -> "NonFiniteDetector":
        return self.attach()

    def __exit__(self, *exc) -> bool:
        self.detach()
        return False

    def _on_model_call(self, module, args) -> None:
        self._step += 1
        self.steps_seen += 1
        self._active = self._step % self.check_every == 0
        self.steps_checked += int(self._active)
        self._calls = {}

    def _next_call(self, phase: str, name: str) -> int:
        key = (phase, name)
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        return n

    def _record(self, phase, name, mtype, where, call, tensor, inputs_finite) -> None:
        if len(self.events) >= self.max_events:
            self.dropped_events += 1
            return
        step = max(self._step, 0)
        prefix = name + "." if name else ""
        inner = next((e.module for e in self.events if e.step == step and e.phase == phase
                      and e.module != name and e.module.startswith(prefix)), None)
        self.events.append(NonFiniteEvent(phase, name, mtype, where, step, call,
                                          tensor_stats(tensor), inputs_finite, inner))

    def _check(self, phase, name, mtype, label, tree, call, inputs_finite) -> bool:
        """Record an event per non-finite tensor in ``tree``; return whether all were finite."""
        tensors = _float_tensors(tree)
        if _all_finite([t for _, t in tensors]):
            return True
        single = len(tree_flatten(tree)[0]) == 1 and label == "output"
        for i, t in tensors:
            if not _all_finite([t]):
                where = label if single else f"{label}[{i}]"
                self._record(phase, name, mtype, where, call, t, inputs_finite())
        return False

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            if not self._active:
                return
            call = self._next_call("forward", name)
            self._check("forward", name, type(module).__name__, "output", output, call,
                        lambda: _all_finite([t for _, t in _float_tensors(args)]))
        return hook

    def _backward_hook(self, name: str):
        def hook(module, grad_input, grad_output):
            if not self._active:
                return None
            call = self._next_call("backward", name)
            mtype = type(module).__name__
            out_ok = self._check("backward", name, mtype, "grad_output", grad_output, call,
                                 lambda: None)
            self._check("backward", name, mtype, "grad_input", grad_input, call, lambda: out_ok)
            return None
        return hook

    def _param_hook(self, module_name: str, mtype: str, attr: str):
        def hook(grad):
            if self._active and not _all_finite([grad]):
                self._record("backward", module_name, mtype, f"grad({attr})", 0, grad, None)
            return None
        return hook

    # -- report -------------------------------------------------------------
    def report(self) -> str:
        """A few lines: how much was checked, the first forward and backward events."""
        if not self.enabled:
            return "NonFiniteDetector disabled: no hooks were installed, nothing was checked."
        n = len(self.events) + self.dropped_events
        lines = [f"NonFiniteDetector on {type(self.model).__name__}: {self.steps_checked} of "
                 f"{self.steps_seen} model calls checked, {n} non-finite tensor(s) seen"]
        if not n:
            lines.append("all checked outputs and gradients were finite")
        lines.append(f"first in forward : {self.first_forward or 'none'}")
        if self.backward:
            lines.append(f"first in backward: {self.first_backward or 'none'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else ("attached" if self._attached else "detached")
        return f"NonFiniteDetector({type(self.model).__name__}, {state}, events={len(self.events)})"


def first_nonfinite_module(model: nn.Module, inputs, autocast_dtype: torch.dtype | None = None) -> str | None:
    """The qualified name of the first module whose forward output holds inf or NaN; ``None`` if none.

    Algorithm: attach a forward-only :class:`NonFiniteDetector`, run
    ``model(*inputs)`` once under ``torch.no_grad()`` -- inside
    ``torch.amp.autocast(device_type, dtype=autocast_dtype)`` when a dtype is
    given, ``device_type`` being that of the first input tensor -- and return
    the module of the detector's first forward event. Forward hooks fire in
    execution order and a module's fires after its children's, so this is
    the earliest, innermost module whose output is non-finite: the one whose
    own computation made the inf/NaN when its inputs were finite. ``""``
    names the model itself (its own code, outside any submodule, made it).
    The model runs in whatever mode (train/eval) it is in.

    Args:
        model (nn.Module): the model to run.
        inputs (Tensor or sequence of Tensors): its positional arguments.
        autocast_dtype (torch.dtype or None, default None): ``torch.float16`` or
            ``torch.bfloat16`` to run under autocast; ``None`` runs without it.

    Returns:
        str or None: a name from ``model.named_modules()``, or ``None``.

    Introduced in chapter 05 (notebooks/05_automatic_mixed_precision.ipynb), exercise
    05.first_nonfinite_module.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = model[2].weight.fill_(1e5)
        >>> first_nonfinite_module(model, torch.full((1, 2), 1.0)) is None
        True
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(1e3); _ = model[0].bias.fill_(0.0)
        >>> first_nonfinite_module(model, torch.full((1, 2), 1.0), autocast_dtype=torch.float16)
        '2'
    """
    instance_of("model", model, nn.Module)
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if autocast_dtype is None:
        context = contextlib.nullcontext()
    else:
        device_type = tensors[0].device.type if tensors else "cpu"
        check_autocast(device_type, autocast_dtype)
        context = torch.amp.autocast(device_type, dtype=autocast_dtype)
    with NonFiniteDetector(model, backward=False) as detector, torch.no_grad(), context:
        model(*args)
    first = detector.first_forward
    return None if first is None else first.module


# --------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class OutputComparison:
    """How far a candidate output is from a reference, computed in float64.

    Attributes:
        max_abs_err, mean_abs_err (float): of ``|c - r|``.
        max_rel_err, mean_rel_err (float): of ``|c - r| / (|r| + rel_floor)``.
        rel_floor (float): the floor used, ``rel_floor_fraction * max|r|``.
        ref_max_abs (float): ``max|r|`` over finite values, the output's scale;
            ``max_abs_err / ref_max_abs`` is the error relative to that scale.
        cosine_similarity (float): of the flattened outputs (1.0 for two zero outputs).
        top1_agreement (float or None): share of rows whose arg-max over the
            class dimension agrees; ``None`` for outputs with fewer than 2 dims.
        numel (int), reference_dtype, candidate_dtype (torch.dtype).
        nonfinite_reference, nonfinite_candidate (int): inf/NaN counts.
    """

    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    mean_rel_err: float
    rel_floor: float
    ref_max_abs: float
    cosine_similarity: float
    top1_agreement: float | None
    numel: int
    reference_dtype: torch.dtype
    candidate_dtype: torch.dtype
    nonfinite_reference: int
    nonfinite_candidate: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reference_dtype"] = str(self.reference_dtype).replace("torch.", "")
        d["candidate_dtype"] = str(self.candidate_dtype).replace("torch.", "")
        return d

    def _rows(self) -> list[tuple[str, str]]:
        rows = [("max abs error", f"{self.max_abs_err:.4g}"), ("mean abs error", f"{self.mean_abs_err:.4g}"),
                ("max rel error", f"{self.max_rel_err:.4g}"), ("mean rel error", f"{self.mean_rel_err:.4g}"),
                ("rel error floor", f"{self.rel_floor:.4g}"),
                ("max abs error / max|ref|",
                 f"{self.max_abs_err / self.ref_max_abs:.4g}" if self.ref_max_abs else "-"),
                ("cosine similarity", f"{self.cosine_similarity:.8f}")]
        if self.top1_agreement is not None:
            rows.append(("top-1 agreement", f"{self.top1_agreement:.2%}"))
        rows.append(("values", f"{self.numel} ({self.reference_dtype} vs {self.candidate_dtype})"
                     .replace("torch.", "")))
        if self.nonfinite_reference or self.nonfinite_candidate:
            rows.append(("non-finite (ref, cand)", f"{self.nonfinite_reference}, {self.nonfinite_candidate}"))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self._rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self._rows())

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in self._rows())
        return f"<table>{body}</table>"


def compare_outputs(reference: torch.Tensor, candidate: torch.Tensor, *,
                    rel_floor_fraction: float = 1e-3, class_dim: int | None = -1) -> OutputComparison:
    """Compare ``candidate`` with ``reference`` (same shape), in float64.

    Algorithm: ``e = |c - r|``; ``floor = rel_floor_fraction * max|r|`` over
    the finite reference values; relative error ``e / (|r| + floor)`` (0 where
    ``e == 0``, so an all-zero reference gives 0 for equal values and inf
    otherwise); cosine similarity ``<r, c> / sqrt(<r, r> <c, c>)`` clamped to
    ``[-1, 1]`` (1.0 if both are zero, 0.0 if only one is, NaN if either holds
    inf/NaN); top-1 agreement
    ``mean(argmax(r, class_dim) == argmax(c, class_dim))`` for outputs with at
    least 2 dims. inf/NaN propagate into the errors (and are counted).

    Args:
        reference (Tensor): the float32 (or float64) output.
        candidate (Tensor): the output to judge, any floating dtype.
        rel_floor_fraction (float, default 1e-3): the relative-error floor as a
            fraction of ``max|reference|``.
        class_dim (int or None, default -1): dimension holding the classes
            (logits ``(B, C)`` or ``(B, T, V)``); ``None`` skips top-1.

    Example:
        >>> r = torch.tensor([[4.0, 1.0], [0.0, 2.0]])
        >>> c = compare_outputs(r, r + torch.tensor([[0.0, 0.0], [0.0, 0.5]]))
        >>> c.max_abs_err, c.rel_floor, round(c.max_rel_err, 6), c.top1_agreement  # 0.5 / (2 + 0.004)
        (0.5, 0.004, 0.249501, 1.0)
    """
    instance_of("reference", reference, torch.Tensor)
    instance_of("candidate", candidate, torch.Tensor)
    for name, t in (("reference", reference), ("candidate", candidate)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if reference.shape != candidate.shape:
        raise ValueError(f"reference and candidate must have the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(candidate.shape)}")
    rel_floor_fraction = non_negative_float("rel_floor_fraction", rel_floor_fraction)
    if class_dim is not None:
        if isinstance(class_dim, bool) or not isinstance(class_dim, int):
            raise TypeError(f"class_dim must be an int or None, got {type(class_dim).__name__}")
        if reference.dim() >= 2 and not -reference.dim() <= class_dim < reference.dim():
            raise ValueError(f"class_dim={class_dim} is out of range for outputs of shape "
                             f"{tuple(reference.shape)}")
    r = reference.detach().to(torch.float64)
    c = candidate.detach().to(device=r.device, dtype=torch.float64)
    err = (c - r).abs()
    finite_r = r[torch.isfinite(r)].abs()
    scale = float(finite_r.max()) if finite_r.numel() else 0.0
    floor = rel_floor_fraction * scale
    rel = torch.where(err == 0, torch.zeros_like(err), err / (r.abs() + floor))
    n = r.numel()
    rr, cc, rc = float((r * r).sum()), float((c * c).sum()), float((r * c).sum())
    if rr == 0.0 and cc == 0.0:
        cosine = 1.0
    elif rr == 0.0 or cc == 0.0:
        cosine = 0.0
    else:
        cosine = rc / math.sqrt(rr * cc)
        if math.isfinite(cosine):  # NaN stays NaN (min/max would turn it into 1.0)
            cosine = max(-1.0, min(1.0, cosine))
    top1 = None
    if class_dim is not None and r.dim() >= 2 and n:
        top1 = float((r.argmax(class_dim) == c.argmax(class_dim)).to(torch.float64).mean())
    nan = float("nan")
    return OutputComparison(
        max_abs_err=float(err.max()) if n else 0.0, mean_abs_err=float(err.mean()) if n else 0.0,
        max_rel_err=float(rel.max()) if n else 0.0, mean_rel_err=float(rel.mean()) if n else 0.0,
        rel_floor=floor, ref_max_abs=scale, cosine_similarity=cosine if n else nan,
        top1_agreement=top1, numel=n,
        reference_dtype=reference.dtype, candidate_dtype=candidate.dtype,
        nonfinite_reference=int((~torch.isfinite(r)).sum()),
        nonfinite_candidate=int((~torch.isfinite(c)).sum()))


def compare_precisions(model: nn.Module, inputs, device_type: str | None = None,
                       dtype: torch.dtype = torch.bfloat16, *, rel_floor_fraction: float = 1e-3,
                       class_dim: int | None = -1, eval_mode: bool = True) -> OutputComparison:
    """Run ``model`` in float32 and under ``autocast(device_type, dtype)``; compare the outputs.

    Algorithm: the same model object (same float32 weights; autocast casts
    them per op, so no copy is needed) is called twice on the same inputs
    under ``torch.no_grad()``: first with autocast explicitly disabled (the
    reference), then inside ``torch.amp.autocast(device_type, dtype=dtype)``;
    ``compare_outputs(reference, candidate)`` does the rest. With
    ``eval_mode`` the model runs in eval mode (its previous mode is restored),
    so dropout and batch-norm statistics are the same in both runs.

    Args:
        model (nn.Module): float32 parameters; returns a tensor.
        inputs (Tensor or sequence of Tensors): positional arguments; floating
            ones must be float32 (do not pre-cast: autocast casts inside the ops).
        device_type (str or None, default None): ``"cpu"`` or ``"cuda"``;
            ``None`` takes the device of the first input tensor.
        dtype (torch.dtype, default torch.bfloat16): ``torch.bfloat16`` or ``torch.float16``.
        rel_floor_fraction, class_dim: as in ``compare_outputs``.
        eval_mode (bool, default True): run in eval mode.

    Example:
        >>> _ = torch.manual_seed(0); m = torch.nn.Linear(8, 4)
        >>> cmp = compare_precisions(m, torch.randn(16, 8), dtype=torch.bfloat16)
        >>> 0 < cmp.max_abs_err < 0.05, cmp.cosine_similarity > 0.999
        (True, True)
    """
    instance_of("model", model, nn.Module)
    instance_of("eval_mode", eval_mode, bool)
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for a in tensors:
        if a.is_floating_point() and a.dtype != torch.float32:
            raise ValueError(f"inputs must be float32 (autocast casts inside the ops; a {a.dtype} "
                             "input would make the reference run in low precision too), got "
                             f"{a.dtype}")
    low = [n for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != torch.float32]
    if low:
        raise ValueError(f"compare_precisions needs a float32 model (the reference); parameter "
                         f"{low[0]!r} is {model.get_parameter(low[0]).dtype}")
    if device_type is None:
        device_type = tensors[0].device.type if tensors else "cpu"
    check_autocast(device_type, dtype)
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        with torch.no_grad():
            with torch.amp.autocast(device_type, enabled=False):
                reference = model(*args)
            with torch.amp.autocast(device_type, dtype=dtype):
                candidate = model(*args)
    finally:
        model.train(was_training)
    for name, out in (("reference", reference), ("candidate", candidate)):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"compare_precisions needs a model that returns a tensor; the {name} "
                            f"run returned {type(out).__name__} (wrap the model to pick one output)")
    return compare_outputs(reference, candidate, rel_floor_fraction=rel_floor_fraction,
                           class_dim=class_dim)
