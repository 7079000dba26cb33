"""The memory bill of training: bytes per parameter under each precision recipe.

Persistent training state per parameter, in bytes (activations are extra and
depend on batch size; they are where 16-bit compute really saves memory):

==============  =======  =========  ======  ==================  =====
recipe          weights  gradients  master  Adam state (m, v)   total
==============  =======  =========  ======  ==================  =====
fp32            4        4          0       8 (fp32)            16
amp             4        4          0       8 (fp32)            16
mixed           2        2          4       8 (fp32, on master) 16
fp16 / bf16     2        2          0       4 (16-bit)          8
==============  =======  =========  ======  ==================  =====

``amp`` is ``torch.autocast``: parameters and gradients stay FP32, the 16-bit
copies are temporary. ``mixed`` is manual mixed precision with FP32 master
weights (chapter 03): the 16-bit model copy does *not* halve model memory, it
adds to it. Only the pure 16-bit recipes halve the bill, at the cost of
updates that round away (chapter 06). The optimizer's states live in the
dtype of the weights it steps: the master weights where there are some.
Introduced in chapter 00 (notebooks/00_orientation.ipynb); used in chapter 03.
"""
from __future__ import annotations

import torch

RECIPES = ("fp32", "amp", "mixed", "fp16", "bf16")
#: optimizer name -> number of per-parameter state tensors it keeps
OPTIMIZER_STATES = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}

# recipe -> (bytes of model weights, of gradients, of master weights, of each optimizer state)
_LAYOUT = {
    "fp32": (4, 4, 0, 4),
    "amp": (4, 4, 0, 4),
    "mixed": (2, 2, 4, 4),
    "fp16": (2, 2, 0, 2),
    "bf16": (2, 2, 0, 2),
}


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
    in bytes, for ``recipe`` in :data:`RECIPES` and ``optimizer`` in
    :data:`OPTIMIZER_STATES` (see the table in the module docstring).

    >>> training_state_bytes(1_000_000, "mixed")["total"]
    16000000
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 0:
        raise ValueError(f"n_params must be a non-negative int, got {n_params!r}")
    if recipe not in _LAYOUT:
        raise ValueError(f"unknown recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZER_STATES)}")
    w, g, m, s = _LAYOUT[recipe]
    bill = {
        "weights": n_params * w,
        "gradients": n_params * g,
        "master_weights": n_params * m,
        "optimizer_state": n_params * s * OPTIMIZER_STATES[optimizer],
    }
    bill["total"] = sum(bill.values())
    return bill


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
