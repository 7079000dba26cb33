"""Memory: the bill of training per precision recipe, predicted and measured.

**Predicted** (:func:`training_state_bytes`, chapter 00): the persistent
training state per parameter, in bytes, under each recipe of
:mod:`course_lib.recipes` (the recipe derives it from its dtypes:
:meth:`course_lib.recipes.Recipe.training_state_bytes`):

=============================  =======  =========  ======  ==================  =====
recipe                         weights  gradients  master  Adam state (m, v)   total
=============================  =======  =========  ======  ==================  =====
fp32, amp_fp16, amp_bf16       4        4          0       8 (fp32)            16
mixed_manual                   2        2          4       8 (fp32, on master) 16
fp16_naive, bf16_pure          2        2          0       4 (16-bit)          8
=============================  =======  =========  ======  ==================  =====

Autocast (``amp_*``) keeps FP32 parameters and gradients; its 16-bit copies are
temporary. Manual mixed precision with FP32 master weights (chapter 03) *adds*
the 16-bit copy to the FP32 masters. Only the pure 16-bit recipes halve the
bill, at the cost of updates that round away (chapter 06). The optimizer's
states live in the dtype of the weights it steps: the masters where there
are some. This is the *persistent* state: a step's *peak* adds temporaries
(the master optimizer's FP32 copies of the gradients) and the activations
saved for the backward pass.

**Measured**: :func:`measure_training_state` (the bill read off live
tensors, chapter 03), :func:`measure_step_peak` (the same at the peak of an
optimizer step, chapter 03), :func:`saved_activation_bytes` (what a forward pass
saves for backward, chapters 03 and 09), :func:`cuda_peak_memory` (chapter 09).
Introduced in chapter 00 (notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import torch

from course_lib.recipes import OPTIMIZER_STATES, RECIPES, get_recipe

__all__ = ["RECIPES", "OPTIMIZER_STATES", "dtype_bytes", "parameter_bytes", "training_state_bytes",
           "tensor_bytes", "measure_training_state", "measure_step_peak", "cuda_peak_memory",
           "saved_activation_bytes"]


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype`` (``torch.float16`` -> 2)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def parameter_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes the parameters of ``model`` take when stored as ``dtype``.

    Counts each parameter once (``model.parameters()`` skips tied duplicates)
    and ignores buffers such as BatchNorm's running statistics.

    >>> parameter_bytes(torch.nn.Linear(10, 5), torch.float16)   # (50 + 5) * 2
    110
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters()) * dtype_bytes(dtype)


def training_state_bytes(n_params: int, recipe: str, optimizer: str = "adam") -> dict[str, int]:
    """Persistent bytes of training state for ``n_params`` parameters.

    Returns ``{"weights", "gradients", "master_weights", "optimizer_state", "total"}``
    in bytes, for ``recipe`` a name in :data:`RECIPES` (or a Recipe) and
    ``optimizer`` in :data:`OPTIMIZER_STATES` (see the table in the module docstring).

    >>> training_state_bytes(1_000_000, "mixed_manual")["total"]
    16000000
    """
    return get_recipe(recipe).training_state_bytes(n_params, optimizer)


def tensor_bytes(tensors) -> int:
    """Total bytes of an iterable of tensors (``None`` entries skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def measure_training_state(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """The memory bill measured from live objects, in :func:`training_state_bytes`'s layout.

    Counts the bytes of ``model``'s parameters and their ``.grad``, the FP32
    master copies when ``optimizer`` is a
    :class:`course_lib.master.MasterWeightOptimizer` (its ``master_params``),
    and every per-parameter state tensor of the (wrapped) torch optimizer
    (Adam's ``exp_avg`` and ``exp_avg_sq``; scalar ``step`` counters are not
    per-parameter and are left out). Gradients count only where they exist:
    measure after a backward pass. Used in chapter 03 to check the predicted bill.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    masters = list(getattr(optimizer, "master_params", []))
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError("optimizer must be a torch.optim.Optimizer or a MasterWeightOptimizer, "
                        f"got {type(optimizer).__name__}")
    states = [t for s in inner.state.values() for t in s.values()
              if torch.is_tensor(t) and t.dim() > 0]
    params = list(model.parameters())
    bill = {
        "weights": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params),
        "master_weights": tensor_bytes(masters),
        "optimizer_state": tensor_bytes(states),
    }
    bill["total"] = sum(bill.values())
    return bill


def measure_step_peak(model: torch.nn.Module, optimizer, step) -> dict[str, int]:
    """The training state at its largest *during* an optimizer step, measured.

    Runs ``step()`` (a callable that performs one optimizer step, e.g.
    ``optimizer.step``) with a post-hook on the torch optimizer that does the
    update (the one wrapped by a :class:`course_lib.master.MasterWeightOptimizer`,
    or ``optimizer`` itself). At that moment everything a step needs is alive:
    weights, gradients, FP32 masters, the optimizer's state *and* the FP32
    master gradients, which the persistent bill does not list because
    :meth:`MasterWeightOptimizer.step` frees them before it returns. Returns
    :func:`measure_training_state`'s layout plus ``"master_gradients"``, taken
    at the hook (the persistent figures before and after are never larger, but
    the larger one is kept). Used in chapter 03.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError("optimizer must be a torch.optim.Optimizer or a MasterWeightOptimizer, "
                        f"got {type(optimizer).__name__}")
    masters = list(getattr(optimizer, "master_params", []))
    seen: list[dict[str, int]] = []

    def snapshot(*_args, **_kwargs) -> None:
        bill = measure_training_state(model, optimizer)
        bill["master_gradients"] = tensor_bytes(m.grad for m in masters)
        bill["total"] += bill["master_gradients"]
        seen.append(bill)

    snapshot()
    handle = inner.register_step_post_hook(snapshot)
    try:
        step()
    finally:
        handle.remove()
    return max(seen, key=lambda b: b["total"])


# ----------------------------------------------------------------------------- measured memory
# (chapter 09: what a step really holds, next to the persistent bill above)


def cuda_peak_memory(fn, device=None) -> dict[str, int]:
    """Peak CUDA memory of ``fn()``, from the caching allocator's statistics.

    Algorithm: synchronise, ``torch.cuda.reset_peak_memory_stats(device)``,
    read the current counters, run ``fn()``, synchronise, read the peaks.
    Returns bytes: ``peak_allocated`` and ``peak_reserved`` (maxima during
    the call), ``peak_allocated_increase`` (peak minus what was allocated
    before: the call's own high-water mark), ``allocated_before``,
    ``allocated_after``, ``reserved_before``, ``reserved_after``.

    * *allocated*: bytes in live tensors;
    * *reserved*: what PyTorch's caching allocator holds from the driver
      (allocated plus cached free blocks, kept for reuse); never less than
      allocated (pytorch/pytorch#40989 discusses the difference);
    * ``nvidia-smi`` shows yet more: the reserved memory plus the CUDA
      context (hundreds of MB per process, pytorch/pytorch#28113) and every
      other process on the GPU. Compare like with like.

    CUDA only: on a machine without a GPU it raises ``RuntimeError`` (CPU
    memory is measured with :func:`saved_activation_bytes` and the bill above).
    Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).

    >>> torch.cuda.is_available() or "CUDA only"
    'CUDA only'
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_memory() measures the CUDA caching allocator, but "
                           f"torch.cuda.is_available() is False (torch {torch.__version__}); on CPU use "
                           "saved_activation_bytes() or training_state_bytes()")
    dev = torch.device("cuda") if device is None else torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"device must be a CUDA device such as 'cuda' or 'cuda:0', got {str(dev)!r}")
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    allocated_before = torch.cuda.memory_allocated(dev)
    reserved_before = torch.cuda.memory_reserved(dev)
    result = fn()
    torch.cuda.synchronize(dev)
    stats = {
        "peak_allocated": torch.cuda.max_memory_allocated(dev),
        "peak_reserved": torch.cuda.max_memory_reserved(dev),
        "allocated_before": allocated_before,
        "allocated_after": torch.cuda.memory_allocated(dev),
        "reserved_before": reserved_before,
        "reserved_after": torch.cuda.memory_reserved(dev),
    }
    stats["peak_allocated_increase"] = stats["peak_allocated"] - allocated_before
    del result
    return stats


def _storage_key(t: torch.Tensor):
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def _saved_kind(t: torch.Tensor, param_keys) -> str:
    """``parameter``, ``parameter_cast`` (an autocast copy of one) or ``activation``."""
    base = t._base if t._base is not None else t
    if param_keys is not None:
        if _storage_key(t) in param_keys:
            return "parameter"
    elif base.is_leaf and base.requires_grad:
        return "parameter"
    fn = base.grad_fn
    if fn is not None and type(fn).__name__ in ("ToCopyBackward0", "_ToCopyBackward0"):
        for nxt, _ in fn.next_functions:
            if type(nxt).__name__ == "AccumulateGrad" and (
                    param_keys is None or _storage_key(nxt.variable) in param_keys):
                return "parameter_cast"
    return "activation"


def saved_activation_bytes(fn, parameters=None) -> dict:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs.

    Algorithm: run ``fn()`` inside ``torch.autograd.graph.saved_tensors_hooks``
    whose pack hook sees every tensor an op saves for its backward; group them
    by storage (a tensor saved by two ops, a view such as the ``weight.t()``
    that ``Linear`` saves, or an op's output that the next op saves as its
    input, all share one storage) and count each storage's bytes once
    (``untyped_storage().nbytes()``: a saved view keeps its whole storage
    alive). Each storage is one of:

    * ``parameter``: the storage of a parameter (with ``parameters=None``:
      of any leaf tensor that requires grad). Saving it costs nothing -- the
      weights are in memory anyway -- so it is reported apart;
    * ``parameter_cast``: a copy of a parameter made by a cast, e.g. the
      bf16/fp16 weight copy autocast makes for a matmul and the matmul saves
      for its backward (found from its autograd history, ``ToCopyBackward0``
      -> ``AccumulateGrad``): real extra memory;
    * ``activation``: everything else (inputs, layer outputs, their 16-bit
      copies).

    Under bf16 autocast a ``Linear -> ReLU -> Linear`` saves its activations
    in bf16 -- half the fp32 bytes -- plus the bf16 copy of the second
    weight, which fp32 does not need (fp32 saves the weight itself, for free).
    Tensors are only saved when grad is enabled and something requires grad.

    Args:
        fn (callable): zero-argument callable running the forward pass.
        parameters (iterable of tensors | None, default None): the model's
            parameters, for an exact classification.

    Returns:
        dict: ``activation_bytes``, ``parameter_cast_bytes``,
        ``parameter_bytes``, ``extra_bytes`` (activation + parameter casts:
        what the saved tensors add), ``saved_tensors`` (pack calls),
        ``storages`` (distinct storages), ``tensors`` (one dict per storage:
        ``shape``, ``dtype``, ``bytes``, ``kind``, ``times_saved``).
    Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).

    >>> lin = torch.nn.Linear(8, 4)
    >>> r = saved_activation_bytes(lambda: lin(torch.ones(3, 8)), lin.parameters())
    >>> r["activation_bytes"], r["parameter_bytes"]   # the input 3*8*4; weight not needed
    (96, 0)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    param_keys = None
    if parameters is not None:
        params = list(parameters)
        if not all(isinstance(p, torch.Tensor) for p in params):
            raise TypeError("parameters must be an iterable of tensors, e.g. model.parameters()")
        param_keys = {_storage_key(p) for p in params}
    storages: dict = {}
    keep = []  # hold the saved tensors so no storage is freed and its address reused mid-run
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        keep.append(t)
        key = _storage_key(t)
        if key in storages:
            storages[key]["times_saved"] += 1
        else:
            storages[key] = {"shape": tuple(t.shape), "dtype": t.dtype,
                             "bytes": t.untyped_storage().nbytes(),
                             "kind": _saved_kind(t, param_keys), "times_saved": 1}
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    keep.clear()
    by_kind = {"activation": 0, "parameter_cast": 0, "parameter": 0}
    for s in storages.values():
        by_kind[s["kind"]] += s["bytes"]
    return {"activation_bytes": by_kind["activation"],
            "parameter_cast_bytes": by_kind["parameter_cast"],
            "parameter_bytes": by_kind["parameter"],
            "extra_bytes": by_kind["activation"] + by_kind["parameter_cast"],
            "saved_tensors": count, "storages": len(storages), "tensors": list(storages.values())}
