"""Worker functions for tests/test_distributed.py.

They run inside ranks started by course_lib.distributed.launch, which
imports them by name: that is why they live in a module and not in the
test file's closures.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn

from course_lib.distributed.process import current_worker
from course_lib.distributed.teardown import live_parallel_modules, orderly_teardown

_KEPT = []


def whoami(scale: float = 1.0) -> dict:
    """Identity of this rank, plus an all_reduce: sum over ranks of (rank + 1), times scale."""
    info = current_worker()
    total = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(total)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "info": info,
            "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")},
            "pid": os.getpid(), "sum": total * scale, "threads": torch.get_num_threads()}


def rank_and_argument(argument: str) -> str:
    print(f"hello from rank {dist.get_rank()}")
    return f"{dist.get_rank()}:{argument}:{os.environ.get('COURSE_TEST_MARKER')}"


def raise_on_rank(bad_rank: int) -> int:
    if dist.get_rank() == bad_rank:
        raise ValueError(f"boom from the test on rank {bad_rank}")
    time.sleep(30)                       # the healthy rank waits; the launcher must kill it
    return dist.get_rank()


def die_on_rank(bad_rank: int, how: str) -> int:
    if dist.get_rank() == bad_rank:
        if how == "exit":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "segfault":
            ctypes.string_at(0)          # read address 0: SIGSEGV
    time.sleep(30)
    return dist.get_rank()


def hang_in_all_reduce() -> None:
    """Rank 0 waits in an all_reduce that rank 1 never reaches."""
    if dist.get_rank() == 0:
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(60)


def teardown_with_live_ddp() -> dict:
    """Keep a DDP model referenced (as a script's global would) and tear down by hand."""
    _KEPT.append(nn.parallel.DistributedDataParallel(nn.Linear(2, 2)))
    live = len(live_parallel_modules())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        destroyed = orderly_teardown()
    return {"live": live, "destroyed": destroyed, "initialized_after": dist.is_initialized(),
            "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning]}


def return_unpicklable():
    return lambda: dist.get_rank()


def script_that_hangs() -> str:
    """Source of a torchrun script whose rank 0 waits in an all_reduce rank 1 never reaches."""
    # "started" is printed before the slow imports, so the output check does not depend on how
    # long torch takes to import on a loaded machine; the hang itself is after the group is up.
    return ("import os\n"
            "print('started', os.environ['RANK'], flush=True)\n"
            "import time, torch, torch.distributed as dist\n"
            "from course_lib.distributed import distributed_process\n"
            "with distributed_process('cpu') as info:\n"
            "    if info.rank == 0:\n"
            "        dist.all_reduce(torch.ones(1))\n"
            "    else:\n"
            "        time.sleep(120)\n")


# ------------------------------------------------------------- train_ddp (chapter 07)

class RecordingDataset(torch.utils.data.Dataset):
    """A dataset that remembers which indices this process read, in order."""

    def __init__(self, base):
        self.base = base
        self.seen: list[int] = []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.base[index]


def toy_dataset(n: int, seed: int = 0, features: int = 6, classes: int = 3):
    """A small deterministic classification data set (the same in every process)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    y = torch.randint(classes, (n,), generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def small_model(seed: int = 0, features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, classes))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).clone() for t in tensors])


def ddp_equivalence_run(n: int, micro_batch_size: int, accumulation_steps: int, epochs: int,
                        seed: int = 0, **train_kwargs) -> dict:
    """train_ddp on toy_dataset(n): per-step gradients, indices read, final weights."""
    from course_lib.distributed.training import train_ddp

    model = small_model(seed)
    data = RecordingDataset(toy_dataset(n, seed))
    grads = []

    def capture(record):     # after the step: .grad still holds the step's averaged gradient
        grads.append(flat(p.grad for p in model.parameters()))

    result = train_ddp(model, data, micro_batch_size=micro_batch_size,
                       accumulation_steps=accumulation_steps, epochs=epochs, seed=seed,
                       count_communication=True, callback=capture, progress=False,
                       **train_kwargs)
    return {"grads": grads, "params": flat(model.parameters()), "seen": list(data.seen),
            "calls": [s.hook_calls for s in result.comm], "history": result.history,
            "divergence": result.replica_divergence, "per_epoch": result.samples_per_epoch,
            "dropped": result.dropped_per_epoch, "padded": result.padded_per_epoch,
            "global_batch": result.global_batch_size, "steps": result.steps}
