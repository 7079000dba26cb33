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
