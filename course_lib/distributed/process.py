"""One rank's life: join the process group from the environment, work, tear down.

Every launcher (``torchrun``, ``python -m torch.distributed.run`` and
:func:`course_lib.distributed.launcher.launch`) starts N copies of the same
code and tells each one who it is through environment variables:

=================  ==================================================
``RANK``           global rank, 0..WORLD_SIZE-1 (who I am in the job)
``LOCAL_RANK``     rank on this machine: picks this process's GPU
``WORLD_SIZE``     number of processes in the job
``MASTER_ADDR``    host where rank 0's key-value store listens
``MASTER_PORT``    its port
=================  ==================================================

``distributed_process()`` reads them and, in order:

1. picks the device: ``cuda:LOCAL_RANK`` on a CUDA run (``LOCAL_RANK``, not
   ``RANK``: on the second machine of a 2x8-GPU job rank 9 drives
   ``cuda:1``), else ``cpu``, and calls ``torch.cuda.set_device``;
2. picks the backend with :func:`~course_lib.distributed.backend.backend_for`
   (gloo on CPU, NCCL on CUDA) and calls ``init_process_group`` (env://
   rendezvous; with NCCL the device is bound up front via ``device_id``);
3. yields a :class:`WorkerInfo`;
4. on a normal exit runs :func:`~course_lib.distributed.teardown.orderly_teardown`
   (barrier, release, destroy); when the block raised it skips it, because
   the other ranks may be stuck in a collective and a barrier would hang.

Use it in a ``torchrun`` script as ``with distributed_process() as info:
main(info)``; :func:`~course_lib.distributed.launcher.launch` wraps the
function it runs in it. Put the model inside ``main`` so that it is freed
before teardown.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> info = WorkerInfo.from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    >>> (info.rank, info.local_rank, info.world_size, info.is_main)
    (1, 1, 2, False)
    >>> current_worker() is None      # not inside distributed_process()
    True
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

from course_lib import validate
from course_lib.device import default_device
from course_lib.distributed.backend import backend_for
from course_lib.distributed.teardown import orderly_teardown

__all__ = ["WorkerInfo", "distributed_process", "current_worker", "ENV_VARS"]

#: The variables a launcher must set (``LOCAL_RANK`` defaults to ``RANK``).
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_CURRENT: "WorkerInfo | None" = None


@dataclass(frozen=True)
class WorkerInfo:
    """Who this process is in the job.

    Attributes:
        rank (int): global rank.
        local_rank (int): rank on this machine (selects the GPU).
        world_size (int): number of processes.
        device (torch.device): this rank's device (``cpu`` or ``cuda:LOCAL_RANK``).
        backend (str): ``"gloo"`` or ``"nccl"`` (empty before initialization).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """``True`` on rank 0 (the rank that logs and saves)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WorkerInfo":
        """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} not set: this process was not started by a distributed "
                "launcher. Start it with `torchrun --nproc_per_node=N script.py` or "
                "course_lib.distributed.launch(...)")
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", env["RANK"]))
        except ValueError as err:
            raise ValueError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers, got RANK="
                             f"{env.get('RANK')!r} LOCAL_RANK={env.get('LOCAL_RANK')!r} "
                             f"WORLD_SIZE={env.get('WORLD_SIZE')!r}") from err
        if not (world >= 1 and 0 <= rank < world and 0 <= local <= rank):
            raise ValueError(f"inconsistent ranks: RANK={rank} LOCAL_RANK={local} WORLD_SIZE={world}; "
                             "need 0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
        return cls(rank=rank, local_rank=local, world_size=world)


def current_worker() -> WorkerInfo | None:
    """The :class:`WorkerInfo` of the enclosing :func:`distributed_process`, or ``None``."""
    return _CURRENT


def _device_for(kind: str, local_rank: int) -> torch.device:
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False; use device='cpu'")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s): "
                           "NCCL needs one GPU per process; start at most "
                           f"{count} process(es) per machine")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextmanager
def distributed_process(device: str | None = None, *, timeout: float | None = None,
                        teardown: bool = True) -> Iterator[WorkerInfo]:
    """Join the job described by the environment; tear down in order on the way out.

    Args:
        device (str or None, default None): ``"cpu"`` or ``"cuda"``; ``None``
            asks :func:`course_lib.device.default_device`.
        timeout (float or None, default None): seconds a collective may wait
            before the backend raises (``None``: torch's default, 30 minutes
            for gloo).
        teardown (bool, default True): run the orderly teardown at the end.
            ``False`` reproduces the naive worker that just exits holding its
            process group (the SIGABRT pitfall); for demonstrations only.

    Yields:
        WorkerInfo: this rank, its device and backend.

    Raises:
        RuntimeError: variables missing (not launched by a distributed
        launcher), a process group already initialized, or no GPU for this
        ``LOCAL_RANK``.
    """
    global _CURRENT
    kind = validate.one_of("device", default_device() if device is None else device, ("cpu", "cuda"))
    validate.positive_float("timeout", timeout, allow_none=True)
    missing = [k for k in ENV_VARS if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not set: this process was not started by a distributed launcher. "
            "Run a script with `torchrun --nproc_per_node=N script.py`, or a function with "
            "course_lib.distributed.launch(fn, nprocs=N)")
    if dist.is_initialized():
        raise RuntimeError("a default process group is already initialized in this process; "
                           "distributed_process() creates it and destroys it at the end")
    info = WorkerInfo.from_env()
    dev = _device_for(kind, info.local_rank)
    backend = backend_for(dev)
    options = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
    if dev.type == "cuda":
        options["device_id"] = dev
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, **options)
    info = replace(info, device=dev, backend=backend)
    _CURRENT = info
    failed = True
    try:
        yield info
        failed = False
    finally:
        _CURRENT = None
        if teardown and not failed:
            orderly_teardown()
