"""See what autocast does: trace the dtype of every op, and discover autocast's op policy live.

Autocast (``torch.amp.autocast(device_type, dtype=...)``) does not convert a
model. It sits in PyTorch's dispatcher and, op by op, casts the *inputs* of
some ops before they run: matmul-like ops to the low-precision ``dtype``,
numerically sensitive ops to float32, and a few multi-input ops to the widest
input dtype. Every other op runs in whatever dtype its inputs already have.
This module shows it happening instead of listing it from memory.

**Tracing** (``trace_dtypes``). Algorithm: run the model (or any function)
inside ``torch.amp.autocast`` *and* a ``TorchDispatchMode`` that records, for
every ATen op that executes, its name, the dtypes of its tensor inputs and
of its tensor outputs, in call order. The dispatcher handles the
highest-priority dispatch key first, and the key order in
``c10/core/DispatchKey.h`` puts ``AutocastCPU``/``AutocastCUDA`` above the
autograd keys, which are above ``Python`` (the key a dispatch mode is called
from) -- "Autocasting precedes VariableTypeId, to ensure casts are
autograd-exposed". So the mode sees ops *after* autocast rewrote them: the
casts it inserted appear as ``aten::_to_copy`` rows (fp32 -> bf16 for each
weight) followed by ``aten::addmm`` in bf16. Autocast caches the cast of a
float32 leaf that requires grad (a weight) until the autocast region ends
(``cached_cast`` in ``autocast_mode.cpp``), so a module used twice casts its
weights once. The table is what really ran
(checked by running it: chapter 05 shows the rows). Module forward pre/post
hooks keep a stack of qualified module names, so each row also says which
module (``blocks.0.attn.qkv``, a ``Linear``) issued the op.

**Policy discovery** (``autocast_policy``). For a fixed list of
representative ops (``PROBE_OPS``), each op is run on small tensors and its
output dtype classified:

* ``"lower"``: float32 inputs come out in the autocast ``dtype``
  (autocast cast them down: mm, matmul, linear, conv, bmm, ...);
* ``"fp32"``: 16-bit inputs come out float32 under autocast although they
  stay 16-bit without it (autocast cast them up, or set the output dtype);
* ``"promote"``: with mixed float32/16-bit inputs, autocast inserted casts to
  the widest dtype (seen as extra ``aten::_to_copy`` rows in a trace, compared
  with the same call without autocast);
* ``"unchanged"``: none of the above: the op runs in its inputs' dtype;
* ``"error"``: the probe raised under autocast (the message is kept in
  ``PolicyTable.evidence``).

The lists differ between devices. In torch's source
(``aten/src/ATen/autocast_mode.cpp``, ``TORCH_LIBRARY_IMPL(aten,
AutocastCPU, m)``) the CPU fp32 list holds losses (``mse_loss``,
``nll_loss``, ``cross_entropy_loss``, ``binary_cross_entropy_with_logits``,
...), ``prod``, linear algebra and FFTs, but **not** ``softmax``,
``log_softmax``, ``layer_norm``, ``group_norm``, ``exp``, ``log``, ``pow``,
``sum`` or ``cumsum``, which the CUDA lists (``AT_FORALL_FP32`` and
``AT_FORALL_FP32_SET_OPT_DTYPE`` in ``aten/src/ATen/autocast_mode.h``) run in
float32. The CPU promote list is ``cat``, ``stack``, ``index_copy``; the
CUDA one is ``addcdiv``, ``addcmul``, ``atan2``, ``dot``, ``index_put``,
``scatter_add``, ... So a softmax or a LayerNorm fed bf16 activations runs
in bf16 on a CPU and in fp32 on a GPU. Where this is discussed: pytorch PR
#76661 ("In eager autocasting, softmax is only up-casted on GPU (and not on
CPU)", aligning TorchScript autocast with it); pytorch/xla PR #8509 (softmax
had run in bf16 under XLA autocast until it was added to the fp32 list);
huggingface/pytorch-image-models PR #1340 (layer_norm and group_norm are
force-cast to fp32 by CUDA autocast, batch_norm is not). Related but
different: open_clip PR #850 (LayerNorm returns fp32 under CUDA autocast,
so a subclass casts back) and pytorch issue #123911 (on CUDA,
``softmax(x16)`` and ``softmax(x16, dtype=float32).half()`` differed slightly).
``SOURCE_POLICY`` records, for the probe ops, what the source says per
device; on a CUDA machine ``autocast_policy("cuda", ...)`` runs the same
probes unchanged.

Introduced in chapter 05 (notebooks/05_automatic_mixed_precision.ipynb).

Example:
    >>> _ = torch.manual_seed(0)
    >>> trace = trace_dtypes(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> trace.summary()["aten::addmm"]
    {'bfloat16': 1}
    >>> dict(autocast_policy("cpu", torch.bfloat16, ops=["matmul", "softmax", "mse_loss"]))
    {'matmul': 'lower', 'softmax': 'unchanged', 'mse_loss': 'fp32'}
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from course_lib.validate import instance_of, one_of

__all__ = ["check_autocast", "OpRecord", "DtypeTrace", "trace_dtypes", "PROBE_OPS", "POLICY_CLASSES",
           "SOURCE_POLICY", "PolicyTable", "autocast_policy", "policy_differences",
           "dtype_name"]

#: Autocast devices this module supports (the course runs on CPU or CUDA).
DEVICE_TYPES = ("cpu", "cuda")
#: Low-precision dtypes autocast can lower to.
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
#: The classes ``autocast_policy`` assigns.
POLICY_CLASSES = ("lower", "fp32", "promote", "unchanged", "error")

# Ops that only relabel memory (no arithmetic); hidden from tables by default.
_SHAPE_ONLY_OPS = {"aten::_unsafe_view", "aten::lift_fresh"}
_CAST_OP = "aten::_to_copy"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``.

    >>> dtype_name(torch.float16)
    'float16'
    """
    return str(dtype).replace("torch.", "")


def check_autocast(device_type: str, dtype: torch.dtype) -> tuple[str, torch.dtype]:
    """Check an autocast ``(device_type, dtype)`` pair; return it or raise a clear error.

    ``device_type`` must be ``"cpu"`` or ``"cuda"`` (``"cuda"`` only where
    ``torch.cuda.is_available()``); ``dtype`` ``torch.bfloat16`` or ``torch.float16``.

    >>> check_autocast("cpu", torch.float16)
    ('cpu', torch.float16)
    """
    return _check_device_type(device_type), _check_dtype(dtype)


def _check_device_type(device_type: str) -> str:
    one_of("device_type", device_type, DEVICE_TYPES)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device_type='cuda' but torch.cuda.is_available() is False "
                           f"(torch {torch.__version__}); use device_type='cpu' here, or run on "
                           "a CUDA machine")
    return device_type


def _check_dtype(dtype) -> torch.dtype:
    instance_of("dtype", dtype, torch.dtype)
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16 (the dtypes autocast "
                         f"lowers to), got {dtype}")
    return dtype


# --------------------------------------------------------------------------- tracing
@dataclass(frozen=True)
class OpRecord:
    """One ATen op that ran: what it was, where it came from, which dtypes went in and out.

    ``module`` is the qualified name of the innermost module whose forward was
    running (``""`` is the root module, ``None`` means no module: a plain
    function, or the backward pass); ``is_view`` marks ops that only relabel
    memory (``t``, ``view``, ``detach``, ...).
    """

    index: int
    op: str
    overload: str
    module: str | None
    module_type: str | None
    input_dtypes: tuple[torch.dtype, ...]
    output_dtypes: tuple[torch.dtype, ...]
    phase: str = "forward"
    is_view: bool = False

    @property
    def output_dtype(self) -> torch.dtype | None:
        """The dtype of the first (primary) output, or ``None`` if the op returned no tensor."""
        return self.output_dtypes[0] if self.output_dtypes else None

    @property
    def where(self) -> str:
        """``'net.0 (Linear)'``, ``'(MLP)'`` for the root module, ``'-'`` outside any module."""
        if self.module is None:
            return "-"
        return f"{self.module} ({self.module_type})" if self.module else f"({self.module_type})"


def _dtypes(tree) -> tuple[torch.dtype, ...]:
    return tuple(t.dtype for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(dtype_name(d) for d in dtypes) or "-"


@dataclass
class DtypeTrace:
    """The ops of one traced call, in call order (``rows``), with summaries and tables.

    Attributes:
        rows (list[OpRecord]): every ATen op that ran, views and casts included.
        device_type (str), dtype (torch.dtype), enabled (bool): the autocast settings used.
        output: what the traced call returned.
    """

    rows: list[OpRecord]
    device_type: str
    dtype: torch.dtype
    enabled: bool
    output: Any = field(default=None, repr=False)

    def compute_rows(self, views: bool = False) -> list[OpRecord]:
        """The rows, without view/shape-only ops unless ``views``."""
        return [r for r in self.rows if views or not r.is_view]

    def casts(self) -> list[OpRecord]:
        """The dtype conversions that ran (``aten::_to_copy``): autocast's casts and the model's own."""
        return [r for r in self.rows if r.op == _CAST_OP]

    def filter(self, module: str | None = None, op: str | None = None,
               phase: str | None = None) -> list[OpRecord]:
        """Rows whose module path starts with ``module`` / whose op is ``op`` / in ``phase``.

        ``module`` matches whole path components: ``"net.1"`` matches
        ``net.1`` and ``net.1.x`` but not ``net.10``.
        """
        def in_module(r: OpRecord) -> bool:
            if module is None:
                return True
            if r.module is None:
                return False
            return module == "" or r.module == module or r.module.startswith(module + ".")
        return [r for r in self.rows if in_module(r) and (op is None or r.op == op)
                and (phase is None or r.phase == phase)]

    def summary(self, views: bool = False, by_module: bool = False) -> dict:
        """Count ops by primary output dtype: ``{op: {dtype name: count}}``.

        With ``by_module=True`` the keys are ``(module, op)`` pairs (module
        ``None`` for ops outside any module). View ops are left out unless ``views``.
        """
        counts: dict = {}
        for r in self.compute_rows(views):
            key = (r.module, r.op) if by_module else r.op
            out = dtype_name(r.output_dtype) if r.output_dtype is not None else "-"
            counts.setdefault(key, Counter())[out] += 1
        return {k: dict(v) for k, v in counts.items()}

    def _table_rows(self, views: bool) -> list[tuple[str, ...]]:
        return [(str(r.index), r.phase, r.where, r.op.replace("aten::", ""),
                 _names(r.input_dtypes), _names(r.output_dtypes))
                for r in self.compute_rows(views)]

    _HEADER = ("#", "phase", "module", "op", "input dtypes", "output dtypes")

    def table(self, views: bool = False, max_rows: int | None = None) -> str:
        """A plain-text table, one line per op (views hidden unless ``views``)."""
        rows = self._table_rows(views)
        n_ops, more = len(rows), 0
        if max_rows is not None and len(rows) > max_rows:
            more, rows = len(rows) - max_rows, rows[:max_rows]
        show_phase = any(r[1] != "forward" for r in rows)
        cols = [0, 1, 2, 3, 4, 5] if show_phase else [0, 2, 3, 4, 5]
        all_rows = [self._HEADER] + rows
        widths = {c: max(len(r[c]) for r in all_rows) for c in cols}
        n_views = len(self.rows) - len(self.compute_rows())
        title = f"{self._title()}: {n_ops} ops" + ("" if views else f" ({n_views} views hidden)")
        lines = [title] + ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in all_rows]
        if more:
            lines.append(f"... {more} more rows")
        return "\n".join(lines)

    def _title(self) -> str:
        return (f"autocast({self.device_type}, {dtype_name(self.dtype)})" if self.enabled
                else "no autocast")

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self._HEADER)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r)
                       + "</tr>" for r in self._table_rows(False))
        return f"<p>{html.escape(self._title())}</p><table><tr>{head}</tr>{body}</table>"


class _DtypeRecorder(TorchDispatchMode):
    """A dispatch mode that appends an ``OpRecord`` for every op it sees."""

    def __init__(self, module_stack: list[tuple[str, str]]):
        super().__init__()
        self.rows: list[OpRecord] = []
        self.phase = "forward"
        self._stack = module_stack

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        path, mtype = self._stack[-1] if (self._stack and self.phase == "forward") else (None, None)
        self.rows.append(OpRecord(
            index=len(self.rows), op=name, overload=func._overloadname, module=path,
            module_type=mtype, input_dtypes=_dtypes((args, kwargs)), output_dtypes=_dtypes(out),
            phase=self.phase, is_view=bool(func.is_view) or name in _SHAPE_ONLY_OPS))
        return out


def _install_module_hooks(root: nn.Module, stack: list[tuple[str, str]]) -> list:
    handles = []
    for path, module in root.named_modules():
        def pre(mod, args, _path=path):
            stack.append((_path, type(mod).__name__))

        def post(mod, args, output, _path=path):
            # pop back to (and including) this module's entry; robust if a child raised
            while stack:
                if stack.pop()[0] == _path:
                    break

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    return handles


def _first_float_tensor(tree) -> torch.Tensor | None:
    for t in tree_flatten(tree)[0]:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    return None


def trace_dtypes(fn_or_model: Callable, *inputs, device_type: str = "cpu",
                 dtype: torch.dtype = torch.bfloat16, enabled: bool = True,
                 root: nn.Module | None = None, backward: bool = False, **kwargs) -> DtypeTrace:
    """Run ``fn_or_model(*inputs, **kwargs)`` under autocast and record every op's dtypes.

    Algorithm: see the module docstring. The call runs inside
    ``torch.amp.autocast(device_type, dtype=dtype, enabled=enabled)`` and a
    recording ``TorchDispatchMode``; forward pre/post hooks on every submodule
    of ``root`` name the module each op came from. With ``backward=True`` the
    first floating-point output is summed in float32 *outside* autocast (as a
    training loop would) and ``.backward()`` is traced too (rows with
    ``phase="backward"``, no module attribution). Hooks are removed afterwards,
    also when the call raises.

    Args:
        fn_or_model (callable): an ``nn.Module`` or any function.
        *inputs, **kwargs: passed to it unchanged (no dtype conversion).
        device_type (str, default "cpu"): ``"cpu"`` or ``"cuda"``.
        dtype (torch.dtype, default torch.bfloat16): autocast's low-precision dtype.
        enabled (bool, default True): ``False`` traces the same call without
            autocast, for comparison.
        root (nn.Module or None): the module whose submodules are named in the
            table; defaults to ``fn_or_model`` when it is a module (pass the
            model when tracing e.g. ``lambda x: loss_fn(model(x), y)``).
        backward (bool, default False): also trace the backward pass.

    Returns:
        DtypeTrace: ``.rows``, ``.summary()``, ``.casts()``, ``.table()``, ``.output``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> t = trace_dtypes(model, torch.randn(2, 4))
        >>> [(r.where, r.op, dtype_name(r.output_dtype)) for r in t.compute_rows()]  # doctest: +NORMALIZE_WHITESPACE
        [('0 (Linear)', 'aten::_to_copy', 'bfloat16'), ('0 (Linear)', 'aten::_to_copy', 'bfloat16'),
         ('0 (Linear)', 'aten::_to_copy', 'bfloat16'), ('0 (Linear)', 'aten::addmm', 'bfloat16'),
         ('1 (LayerNorm)', 'aten::native_layer_norm', 'bfloat16')]
    """
    if not callable(fn_or_model):
        raise TypeError(f"fn_or_model must be an nn.Module or a function, got {type(fn_or_model).__name__}")
    _check_device_type(device_type)
    _check_dtype(dtype)
    instance_of("enabled", enabled, bool)
    instance_of("backward", backward, bool)
    if root is None and isinstance(fn_or_model, nn.Module):
        root = fn_or_model
    if root is not None:
        instance_of("root", root, nn.Module)
    stack: list[tuple[str, str]] = []
    handles = _install_module_hooks(root, stack) if root is not None else []
    recorder = _DtypeRecorder(stack)
    try:
        with recorder:
            with torch.amp.autocast(device_type, dtype=dtype, enabled=enabled):
                output = fn_or_model(*inputs, **kwargs)
            if backward:
                target = _first_float_tensor(output)
                if target is None or not target.requires_grad:
                    raise ValueError("backward=True needs a floating-point output that requires grad; "
                                     "the traced call returned none")
                loss = target.float().sum()
                recorder.phase = "backward"
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    return DtypeTrace(rows=recorder.rows, device_type=device_type, dtype=dtype, enabled=enabled,
                      output=output)


# --------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class _Probe:
    """``fn(p, *activations)``: activations get the probe's dtype, ``p`` holds fp32 parameters."""

    shapes: tuple[tuple[int, ...], ...]
    fn: Callable


class _Params:
    """Fixed float32 parameters (weights, running stats) and integer targets for the probes."""

    def __init__(self, device: torch.device):
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return (torch.rand(*shape, generator=g) + 0.5).to(device)

        self.linear_w, self.linear_b = rand(6, 8), rand(6)
        self.conv_w, self.conv_b = rand(3, 2, 3, 3), rand(3)
        self.norm_w, self.norm_b = rand(8), rand(8)
        self.group_w, self.group_b = rand(4), rand(4)
        self.running_mean, self.running_var = torch.zeros(8, device=device), torch.ones(8, device=device)
        self.targets = torch.tensor([0, 3, 5, 7], device=device)


_V = (4, 8)  # the shape of most activations
PROBES: dict[str, _Probe] = {
    # matmul-like: in every device's lower-precision list
    "mm": _Probe(((4, 8), (8, 4)), lambda p, a, b: torch.mm(a, b)),
    "matmul": _Probe(((4, 8), (8, 4)), lambda p, a, b: a @ b),
    "linear": _Probe((_V,), lambda p, x: F.linear(x, p.linear_w, p.linear_b)),
    "addmm": _Probe(((4, 4), (4, 8), (8, 4)), lambda p, c, a, b: torch.addmm(c, a, b)),
    "bmm": _Probe(((2, 4, 8), (2, 8, 4)), lambda p, a, b: torch.bmm(a, b)),
    "baddbmm": _Probe(((2, 4, 4), (2, 4, 8), (2, 8, 4)), lambda p, c, a, b: torch.baddbmm(c, a, b)),
    "conv2d": _Probe(((1, 2, 5, 5),), lambda p, x: F.conv2d(x, p.conv_w, p.conv_b)),
    "scaled_dot_product_attention": _Probe(
        ((1, 2, 4, 8),) * 3, lambda p, q, k, v: F.scaled_dot_product_attention(q, k, v)),
    # normalisation and softmax: fp32 on CUDA, not on CPU
    "softmax": _Probe((_V,), lambda p, x: F.softmax(x, dim=-1)),
    "log_softmax": _Probe((_V,), lambda p, x: F.log_softmax(x, dim=-1)),
    "layer_norm": _Probe((_V,), lambda p, x: F.layer_norm(x, (8,), p.norm_w, p.norm_b)),
    "group_norm": _Probe(((2, 4, 3),), lambda p, x: F.group_norm(x, 2, p.group_w, p.group_b)),
    "batch_norm": _Probe((_V,), lambda p, x: F.batch_norm(
        x, p.running_mean.clone(), p.running_var.clone(), p.norm_w, p.norm_b, training=True)),
    # losses
    "cross_entropy": _Probe((_V,), lambda p, x: F.cross_entropy(x, p.targets)),
    "nll_loss": _Probe((_V,), lambda p, x: F.nll_loss(x, p.targets)),
    "mse_loss": _Probe((_V, _V), lambda p, a, b: F.mse_loss(a, b)),
    "binary_cross_entropy_with_logits": _Probe(
        (_V, _V), lambda p, x, t: F.binary_cross_entropy_with_logits(x, t)),
    # pointwise and reductions
    "exp": _Probe((_V,), lambda p, x: torch.exp(x)),
    "log": _Probe((_V,), lambda p, x: torch.log(x)),
    "pow": _Probe((_V,), lambda p, x: torch.pow(x, 2)),
    "softplus": _Probe((_V,), lambda p, x: F.softplus(x)),
    "sigmoid": _Probe((_V,), lambda p, x: torch.sigmoid(x)),
    "gelu": _Probe((_V,), lambda p, x: F.gelu(x)),
    "relu": _Probe((_V,), lambda p, x: F.relu(x)),
    "sum": _Probe((_V,), lambda p, x: torch.sum(x)),
    "cumsum": _Probe((_V,), lambda p, x: torch.cumsum(x, dim=-1)),
    "prod": _Probe((_V,), lambda p, x: torch.prod(x)),
    "logsumexp": _Probe((_V,), lambda p, x: torch.logsumexp(x, dim=-1)),
    "vector_norm": _Probe((_V,), lambda p, x: torch.linalg.vector_norm(x)),
    # multi-input ops that autocast may promote to the widest input dtype
    "addcmul": _Probe((_V, _V, _V), lambda p, a, b, c: torch.addcmul(a, b, c)),
    "dot": _Probe(((8,), (8,)), lambda p, a, b: torch.dot(a, b)),
    "cat": _Probe((_V, _V), lambda p, a, b: torch.cat([a, b])),
    "stack": _Probe((_V, _V), lambda p, a, b: torch.stack([a, b])),
}
#: Names of the ops ``autocast_policy`` probes, in display order.
PROBE_OPS: tuple[str, ...] = tuple(PROBES)

# What torch's source says for the probe ops (same for bf16 and fp16), read from
# aten/src/ATen/autocast_mode.cpp (TORCH_LIBRARY_IMPL(aten, AutocastCPU, m): KERNEL_CPU
# lower_precision_fp / fp32 / promote lists) and aten/src/ATen/autocast_mode.h
# (AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE,
# AT_FORALL_PROMOTE, registered for AutocastCUDA). Composite ops take the class of
# what they decompose into: cross_entropy on CUDA is log_softmax (fp32_set_opt_dtype)
# + nll_loss (fp32); on CPU cross_entropy_loss is itself in the fp32 list.
# "dot" on CPU: not listed, and eager torch.dot rejects mixed dtypes, so the mixed
# probe raises with or without autocast: no change.
_LOWER = ("mm", "matmul", "linear", "addmm", "bmm", "baddbmm", "conv2d",
          "scaled_dot_product_attention")
_SOURCE_CPU_FP32 = ("cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits", "prod")
_SOURCE_CUDA_FP32 = ("softmax", "log_softmax", "layer_norm", "group_norm", "cross_entropy",
                     "nll_loss", "mse_loss", "binary_cross_entropy_with_logits", "exp", "log",
                     "pow", "softplus", "sum", "cumsum", "prod", "logsumexp", "vector_norm")
_SOURCE_CPU_PROMOTE = ("cat", "stack")
_SOURCE_CUDA_PROMOTE = ("addcmul", "dot")


def _source_policy(fp32: Iterable[str], promote: Iterable[str]) -> dict[str, str]:
    fp32, promote = set(fp32), set(promote)
    return {op: "lower" if op in _LOWER else "fp32" if op in fp32 else
            "promote" if op in promote else "unchanged" for op in PROBE_OPS}


#: ``{device_type: {op: class}}`` for the probe ops, as torch's source lists them
#: (see the comment above it in this file for where each list lives).
SOURCE_POLICY: dict[str, dict[str, str]] = {
    "cpu": _source_policy(_SOURCE_CPU_FP32, _SOURCE_CPU_PROMOTE),
    "cuda": _source_policy(_SOURCE_CUDA_FP32, _SOURCE_CUDA_PROMOTE),
}


class PolicyTable(dict):
    """``{op: class}`` as discovered by ``autocast_policy``, plus the evidence for each class.

    ``evidence[op]`` holds the output dtype for float32 inputs (``fp32_in``),
    for 16-bit inputs with and without autocast (``low_in``,
    ``low_in_eager``), and the number of up-casts autocast added for mixed
    inputs (``promote_casts``), or the error message.
    """

    def __init__(self, classes: Mapping[str, str], evidence: Mapping[str, dict],
                 device_type: str, dtype: torch.dtype):
        super().__init__(classes)
        self.evidence = dict(evidence)
        self.device_type = device_type
        self.dtype = dtype

    def table(self, compare_with: Mapping[str, str] | None = None, label: str = "source") -> str:
        """One line per op; with ``compare_with`` (e.g. ``SOURCE_POLICY["cuda"]``) a second column."""
        title = f"autocast({self.device_type}, {dtype_name(self.dtype)})"
        rows = [("op", title) + ((label,) if compare_with is not None else ())]
        for op, cls in self.items():
            extra = ()
            if compare_with is not None:
                other = compare_with.get(op, "?")
                extra = (other + ("  <-- differs" if other != cls else ""),)
            rows.append((op, cls) + extra)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(op)}</td><td>{html.escape(c)}</td></tr>"
                       for op, c in self.items())
        return (f"<table><tr><th>op</th><th>autocast({self.device_type}, "
                f"{dtype_name(self.dtype)})</th></tr>{rows}</table>")


def _run(fn: Callable, device_type: str, dtype: torch.dtype, enabled: bool):
    with torch.amp.autocast(device_type, dtype=dtype, enabled=enabled):
        return fn()


def _upcasts(trace: DtypeTrace, low: torch.dtype) -> int:
    return sum(1 for r in trace.casts()
               if r.input_dtypes[:1] == (low,) and r.output_dtype == torch.float32)


def _classify(probe: _Probe, params: _Params, device: torch.device, device_type: str,
              dtype: torch.dtype) -> tuple[str, dict]:
    g = torch.Generator().manual_seed(1)
    acts32 = [(torch.rand(*s, generator=g) + 0.5).to(device) for s in probe.shapes]
    acts_low = [a.to(dtype) for a in acts32]
    evidence: dict[str, Any] = {}
    try:
        out32 = _run(lambda: probe.fn(params, *acts32), device_type, dtype, True)
        evidence["fp32_in"] = dtype_name(out32.dtype)
        if out32.dtype == dtype:
            return "lower", evidence
        out_low = _run(lambda: probe.fn(params, *acts_low), device_type, dtype, True)
        evidence["low_in"] = dtype_name(out_low.dtype)
    except Exception as exc:  # report, do not crash the table
        evidence["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return "error", evidence
    try:
        eager = _run(lambda: probe.fn(params, *acts_low), device_type, dtype, False).dtype
        evidence["low_in_eager"] = dtype_name(eager)
    except Exception as exc:  # e.g. F.linear(bf16 input, fp32 weight) without autocast
        evidence["low_in_eager"] = f"raises {type(exc).__name__}"
        eager = None
    if out_low.dtype == torch.float32 and eager != torch.float32:
        return "fp32", evidence
    if len(probe.shapes) >= 2:
        mixed = [acts32[0]] + acts_low[1:]
        call = lambda *xs: probe.fn(params, *xs)  # noqa: E731
        casts = {}
        for enabled in (True, False):
            try:
                casts[enabled] = _upcasts(trace_dtypes(call, *mixed, device_type=device_type,
                                                       dtype=dtype, enabled=enabled), dtype)
            except Exception:
                casts[enabled] = None
        evidence["promote_casts"] = (casts[True], casts[False])
        if casts[True] is not None and (casts[False] is None or casts[True] > casts[False]):
            return "promote", evidence
    return "unchanged", evidence


def autocast_policy(device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                    ops: Iterable[str] | None = None) -> PolicyTable:
    """Discover, by running them, how autocast treats a list of representative ops.

    Algorithm (classes as in the module docstring), per op, on small positive
    tensors (float32 parameters such as weights and running statistics stay
    float32, as in a model under autocast):

    1. run it on float32 inputs under autocast: output in ``dtype`` -> ``"lower"``;
    2. run it on ``dtype`` inputs under autocast and without: float32 under
       autocast but not without -> ``"fp32"``;
    3. for ops with several inputs, trace it on mixed inputs (the first
       float32, the others ``dtype``) with and without autocast: more
       ``dtype`` -> float32 ``aten::_to_copy`` casts under autocast (or it
       only works under autocast) -> ``"promote"``;
    4. otherwise ``"unchanged"``; a probe that raises under autocast is ``"error"``.

    Args:
        device_type (str, default "cpu"): ``"cpu"`` or ``"cuda"`` (raises if CUDA is absent).
        dtype (torch.dtype, default torch.bfloat16): ``torch.bfloat16`` or ``torch.float16``.
        ops (iterable of str or None): names from ``PROBE_OPS``; ``None`` probes all.

    Returns:
        PolicyTable: a ``dict`` ``{op: class}`` in probe order, with ``.evidence``
        and ``.table(compare_with=...)``.

    Example:
        >>> p = autocast_policy("cpu", torch.float16, ops=["linear", "layer_norm", "cat"])
        >>> dict(p), p.evidence["layer_norm"]["low_in"]
        ({'linear': 'lower', 'layer_norm': 'unchanged', 'cat': 'promote'}, 'float16')
    """
    _check_device_type(device_type)
    _check_dtype(dtype)
    if ops is None:
        names = list(PROBE_OPS)
    else:
        if isinstance(ops, str):
            raise TypeError(f"ops must be a list of op names such as ['matmul', 'softmax'], got {ops!r}")
        names = [one_of("op", op, PROBE_OPS) for op in ops]
    device = torch.device(device_type)
    params = _Params(device)
    classes, evidence = {}, {}
    for name in names:
        classes[name], evidence[name] = _classify(PROBES[name], params, device, device_type, dtype)
    return PolicyTable(classes, evidence, device_type, dtype)


def policy_differences(left: Mapping[str, str], right: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{op: (left class, right class)}`` for the ops both tables hold and classify differently.

    Example:
        >>> policy_differences(SOURCE_POLICY["cpu"], SOURCE_POLICY["cuda"])["softmax"]
        ('unchanged', 'fp32')
    """
    return {op: (left[op], right[op]) for op in left if op in right and left[op] != right[op]}
