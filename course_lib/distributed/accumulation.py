"""Gradient accumulation under data parallelism: synchronize on the last micro-step only.

With K micro-batches per optimizer step, every ``backward()`` of a DDP model
all-reduces the gradients -- K all-reduces where one suffices, because the
average of sums equals the sum of averages. ``DistributedDataParallel.no_sync()``
turns the all-reduce off; gradients then accumulate locally in ``.grad``
and the next synchronizing backward reduces the accumulated sum. FSDP2 has
the same switch as ``set_requires_gradient_sync(False)``.

Algorithm of :func:`accumulation_context`: for micro-step ``i`` (0-based) of
a window of ``K``, return the module's "don't synchronize" context when
``i < K - 1`` and a do-nothing context on the last micro-step. A plain
``nn.Module`` (single process) always gets the do-nothing context, so one
training loop serves both cases.

Remember to divide each micro-batch's loss by ``K`` (or the gradient is K
times the large-batch gradient).

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> from torch import nn
    >>> [is_sync_step(i, 3) for i in range(3)]
    [False, False, True]
    >>> with accumulation_context(nn.Linear(2, 2), 0, 3):   # plain module: nothing to switch
    ...     pass
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from course_lib import validate

__all__ = ["accumulation_context", "is_sync_step"]


def is_sync_step(micro_step: int, accumulation_steps: int) -> bool:
    """``True`` on the last micro-step of a window (the one whose backward all-reduces).

    Args:
        micro_step (int): index of the micro-step, counted from 0 (any
            non-negative int; taken modulo ``accumulation_steps``).
        accumulation_steps (int): micro-steps per optimizer step, K >= 1.
    """
    validate.non_negative_int("micro_step", micro_step)
    k = validate.positive_int("accumulation_steps", accumulation_steps)
    return micro_step % k == k - 1


@contextmanager
def _fsdp_no_sync(module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def accumulation_context(model: nn.Module, micro_step: int,
                         accumulation_steps: int) -> ContextManager:
    """The context to run micro-step ``micro_step``'s forward and backward in.

    Args:
        model (nn.Module): a ``DistributedDataParallel`` model, an FSDP2
            (``fully_shard``) model, or a plain module.
        micro_step (int): index from 0.
        accumulation_steps (int): K >= 1.

    Returns:
        ``model.no_sync()`` (DDP) / gradient sync off (FSDP2) on all but the
        last micro-step of each window; otherwise a null context.
    """
    validate.instance_of("model", model, nn.Module)
    if is_sync_step(micro_step, accumulation_steps):
        return nullcontext()
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return nullcontext()
