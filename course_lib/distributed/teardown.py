"""Orderly end of a distributed process: barrier, release, destroy.

The pitfall. A worker that simply returns while its process group is alive
(and a ``DistributedDataParallel`` model still refers to it) leaves gloo's
C++ threads and their pending work objects to be destroyed during Python's
interpreter finalization; they need the GIL, which is already gone, and the
process dies with ``terminate called without an active exception`` and
SIGABRT (pytorch PR #179291 describes the mechanism). It happens in a
fraction of runs only. Measured here with torch 2.13 (CPU, 2 gloo ranks,
3-step DDP job, no teardown): 3 of 20 ``torchrun`` launches and 1 of 20
``torch.multiprocessing`` *spawn* launches ended with a rank killed by
SIGABRT. Processes started by *fork* or *forkserver* leave through
``os._exit`` and never run finalization, so they never showed it (0 of 20).

Algorithm of ``orderly_teardown`` (run by every rank, after its work):

1. ``dist.barrier()``: no rank tears down while another still communicates
   (a rank that destroyed its group early would make a late collective on
   another rank fail or hang);
2. ``gc.collect()``: free models that are no longer referenced, including
   reference cycles, so that no ``DistributedDataParallel`` reducer or FSDP
   state keeps the process group alive; a module that is still referenced
   (a global, a returned object) is reported with a ``RuntimeWarning``, since
   teardown cannot release a reference it does not own;
3. ``dist.destroy_process_group()``: shut the backend down (its threads are
   joined now, while the interpreter is fully alive).

After a failure do **not** tear down collectively: the other ranks may be
blocked in a collective and a barrier would hang (torchtitan PR #1342);
:func:`course_lib.distributed.process.distributed_process` skips teardown
when its block raised.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> orderly_teardown()          # nothing to do outside a process group
    False
    >>> live_parallel_modules()
    []
"""
from __future__ import annotations

import gc
import warnings

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["orderly_teardown", "live_parallel_modules"]


def _parallel_types() -> tuple[type, ...]:
    types: list[type] = [DistributedDataParallel]
    try:  # FSDP2: torch >= 2.6 exports it here, 2.4-2.5 under _composable
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        try:
            from torch.distributed._composable.fsdp import FSDPModule
        except ImportError:
            FSDPModule = None
    if FSDPModule is not None:
        types.append(FSDPModule)
    return tuple(types)


def live_parallel_modules() -> list[nn.Module]:
    """Return the DDP and FSDP2 modules that are still alive (after a ``gc.collect()``).

    Algorithm: collect garbage, then scan the objects the garbage collector
    tracks for instances of ``DistributedDataParallel`` or ``FSDPModule``.
    Costs a few tens of milliseconds in a process that imported torch.
    """
    gc.collect()
    types = _parallel_types()
    # type(obj), not isinstance(obj, ...): isinstance reads obj.__class__, which
    # makes some module-level torch objects emit deprecation warnings.
    return [obj for obj in gc.get_objects() if issubclass(type(obj), types)]


def orderly_teardown(*, barrier: bool = True) -> bool:
    """Barrier, release, destroy: end this rank's process group in order.

    Args:
        barrier (bool, default True): wait for every rank first. Pass
            ``False`` only when the other ranks are known to be done
            communicating.

    Returns:
        bool: ``True`` if a process group was destroyed, ``False`` if none
        was initialized.

    Warns:
        RuntimeWarning: a DDP/FSDP module is still referenced at teardown
        (delete it, or keep it inside the function that trains).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier:
        dist.barrier()
    leftover = live_parallel_modules()
    if leftover:
        names = ", ".join(sorted({type(m).__name__ for m in leftover}))
        warnings.warn(f"{len(leftover)} distributed module(s) ({names}) are still referenced at "
                      "teardown; they keep the process group alive, and a process that exits "
                      "holding one can abort (SIGABRT) during interpreter shutdown. Create the "
                      "model inside the function you launch, or `del` it before the end.",
                      RuntimeWarning, stacklevel=2)
    del leftover
    dist.destroy_process_group()
    return True
