"""Counting FLOPs and computing MFU (model FLOPs utilisation).

**Counting.** :func:`count_flops` runs the code under
``torch.utils.flop_counter.FlopCounterMode``, which adds up the FLOPs of the
matrix ops it sees (``mm``, ``addmm``, ``bmm``, convolutions, scaled dot
product attention, ...), a multiply-add counting 2: ``Linear(in, out)`` on
``B`` rows is ``2*B*in*out`` (the bias add and elementwise ops such as ReLU,
softmax or LayerNorm are not counted). Its backward is two matmuls of the
same size -- the gradient with respect to the input and to the weight --
so ``2x`` the forward, *but* when the input does not require grad (the first
layer fed with data) autograd skips the input gradient and the backward of
that layer is ``1x``. :func:`training_step_flops` measures forward +
backward of a real step this way; :func:`flops_by_module` gives the
per-module breakdown.

**The 6N rule.** :func:`transformer_flops_per_token` is the usual estimate
for a decoder-only transformer with ``N`` parameters, ``L`` layers, context
``T`` and width ``d``: ``6N`` per token for the weight matmuls (2 forward,
4 backward) plus ``12*L*T*d`` for the attention score and value matmuls
(``QK^T`` and ``AV``: ``2*T*d`` each per token and layer forward, times 3
for forward + backward) -- the PaLM paper's Appendix B formula that
nanoGPT's ``estimate_mfu`` uses. Two points are disputed, and the flags
make the choice explicit:

* the attention term: Kaplan et al. count ``2*L*T*d`` forward (so ``6``, not
  ``12``, per token with backward; karpathy/nanoGPT#456), and with a
  causal mask half the scores are never needed -- FlashAttention's own
  benchmarks count 7, others 6 or 12 (discussion in pytorch/torchtitan#280);
* embeddings: an embedding lookup is a gather, not a matmul, so torchtitan
  excludes embedding parameters from ``N`` (torchtitan#280); pytorch/
  torchtitan#452 argues PaLM includes them. A *tied* output head is a real
  matmul either way.

**MFU** = achieved FLOP/s / peak FLOP/s = ``flops_per_step /
seconds_per_step / peak_flops`` (:func:`mfu`). The peak must be the dense
figure for the precision actually used (:func:`course_lib.hardware.peak_tflops`);
on a CPU it is measured, not looked up: :func:`course_lib.bench.peak.peak_flops`
times a large matmul (``2*n**3`` FLOPs per ``n x n`` product).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import validate

__all__ = ["matmul_flops", "count_flops", "flops_by_module", "training_step_flops",
           "transformer_flops_per_token", "mfu"]


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an ``(m, k) @ (k, n)`` product: ``2*m*k*n`` (one multiply and one add each).

    >>> matmul_flops(3, 8, 4)
    192
    """
    return 2 * validate.positive_int("m", m) * validate.positive_int("k", k) * validate.positive_int("n", n)


def _scalar(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"backward=True needs a tensor output (or a tuple starting with one), "
                        f"got {type(out).__name__}")
    if not out.requires_grad:
        raise ValueError("backward=True, but the output does not require grad (no parameters "
                         "or inputs with requires_grad=True were used, or it ran under no_grad)")
    return out if out.dim() == 0 else out.sum()


class _KeepGrads:
    """Snapshot the ``.grad`` of a module's parameters and put them back afterwards."""

    def __init__(self, obj):
        self.params = list(obj.parameters()) if isinstance(obj, nn.Module) else []

    def __enter__(self):
        self.saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        return self

    def __exit__(self, *exc):
        for p, g in zip(self.params, self.saved):
            p.grad = g
        return False


def _counted(fn_or_model, inputs, backward: bool) -> FlopCounterMode:
    if not callable(fn_or_model):
        raise TypeError(f"fn_or_model must be an nn.Module or a callable, got {type(fn_or_model).__name__}")
    if not isinstance(backward, bool):
        raise TypeError(f"backward must be a bool, got {type(backward).__name__}")
    counter = FlopCounterMode(display=False)
    with _KeepGrads(fn_or_model), counter:
        out = fn_or_model(*inputs)
        if backward:
            _scalar(out).backward()
    return counter


def count_flops(fn_or_model, *inputs, backward: bool = False) -> int:
    """FLOPs of ``fn_or_model(*inputs)`` (plus its backward when ``backward=True``).

    Counted by ``FlopCounterMode`` (matrix ops only; see the module
    docstring). With ``backward=True`` the output (its sum, if not a scalar)
    is backpropagated; a module's parameter ``.grad`` are restored afterwards
    (a plain callable's leaves keep the gradients it produced).

    >>> lin = nn.Linear(8, 4); x = torch.randn(3, 8)
    >>> count_flops(lin, x), count_flops(lin, x.requires_grad_(), backward=True)
    (192, 576)
    """
    return int(_counted(fn_or_model, inputs, backward).get_total_flops())


def flops_by_module(fn_or_model, *inputs, backward: bool = False) -> dict[str, int]:
    """Per-module FLOPs: ``{"Global": total, "MLP": ..., "MLP.net.0": ..., ...}``.

    Module names are FlopCounterMode's: the root module's class name, then
    dotted submodule paths; a parent's count includes its children's.

    >>> from course_lib.models import MLP
    >>> d = flops_by_module(MLP(hidden=(32,)), torch.randn(5, 64))
    >>> d["Global"], d["MLP.net.0"], d["MLP.net.2"]
    (23680, 20480, 3200)
    """
    counts = _counted(fn_or_model, inputs, backward).get_flop_counts()
    return {name: int(sum(ops.values())) for name, ops in sorted(counts.items())}  # stable order


def training_step_flops(model: nn.Module, inputs, targets, loss_fn: Callable) -> int:
    """FLOPs of one training step's forward and backward, measured (not the 6N rule).

    Runs ``loss_fn(model(inputs), targets).backward()`` under
    ``FlopCounterMode``; the optimizer step (elementwise) adds no counted
    FLOPs. ``model``'s ``.grad`` are restored afterwards.

    >>> from course_lib.models import MLP
    >>> m = MLP(hidden=(32,)); x, y = torch.randn(5, 64), torch.randint(0, 10, (5,))
    >>> training_step_flops(m, x, y, nn.functional.cross_entropy)  # 3 * 23680 - 20480
    50560
    """
    validate.instance_of("model", model, nn.Module)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    counter = FlopCounterMode(display=False)
    with _KeepGrads(model), counter:
        loss = loss_fn(model(inputs), targets)
        _scalar(loss).backward()
    return int(counter.get_total_flops())


def transformer_flops_per_token(n_params: int, n_layers: int, seq_len: int, d_model: int, *,
                                include_attention: bool = True, include_embeddings: bool = False,
                                embedding_params: int = 0) -> int:
    """Training FLOPs per token of a decoder-only transformer: ``6N (+ 12*L*T*d)``.

    Args:
        n_params (int): parameter count ``N`` as you have it (e.g.
            ``count_parameters(model)``).
        n_layers, seq_len, d_model (int): ``L``, ``T``, ``d``.
        include_attention (bool, default True): add ``12*L*T*d`` (the
            PaLM / nanoGPT convention; see the module docstring for why 6 or
            7 are also used).
        include_embeddings (bool, default False): keep the embedding
            parameters in ``N``; when False, ``embedding_params`` is
            subtracted (a lookup is not a matmul).
        embedding_params (int, default 0): how many of ``n_params`` sit in
            embedding tables (token + position).

    >>> transformer_flops_per_token(1000, 2, 16, 8)  # 6*1000 + 12*2*16*8
    9072
    >>> transformer_flops_per_token(1000, 2, 16, 8, include_attention=False, embedding_params=200)
    4800
    """
    n_params = validate.positive_int("n_params", n_params)
    n_layers = validate.positive_int("n_layers", n_layers)
    seq_len = validate.positive_int("seq_len", seq_len)
    d_model = validate.positive_int("d_model", d_model)
    embedding_params = validate.non_negative_int("embedding_params", embedding_params)
    if embedding_params > n_params:
        raise ValueError(f"embedding_params ({embedding_params}) cannot exceed n_params ({n_params})")
    for name, flag in (("include_attention", include_attention), ("include_embeddings", include_embeddings)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    n = n_params if include_embeddings else n_params - embedding_params
    return 6 * n + (12 * n_layers * seq_len * d_model if include_attention else 0)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``flops_per_step / seconds_per_step / peak_flops``.

    ``peak_flops`` in FLOP/s (``peak_tflops(...) * 1e12``). Values above 1
    mean the FLOP count or the peak is wrong (a sparse peak makes MFU look
    half as good; counting recomputation or 12 instead of 6 for causal
    attention makes it look better).

    >>> mfu(3e12, 0.5, 12e12)
    0.5
    """
    flops_per_step = validate.positive_float("flops_per_step", flops_per_step)
    seconds_per_step = validate.positive_float("seconds_per_step", seconds_per_step)
    peak_flops = validate.positive_float("peak_flops", peak_flops)
    return flops_per_step / seconds_per_step / peak_flops
