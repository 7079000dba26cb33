"""course_lib.distributed: data-parallel training on several processes, CPU or GPU.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).
Everything runs as real multi-process jobs: gloo between CPU processes,
NCCL between GPUs, chosen from the device. One idea per module:

- ``backend``: ``backend_for(device)`` (cpu -> gloo, cuda -> nccl) and
  ``free_port()``.
- ``process``: ``distributed_process()``, the context one rank runs in:
  reads RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, picks
  ``cuda:LOCAL_RANK`` or the CPU, initializes the process group, and tears
  down in order; ``WorkerInfo``, ``current_worker()``.
- ``teardown``: ``orderly_teardown()`` -- barrier, release DDP/FSDP modules
  (gc), ``destroy_process_group``; without it a rank can die with SIGABRT
  at interpreter exit (measured: 3 of 20 torchrun launches, torch 2.13).
- ``launcher``: ``launch(fn, nprocs)`` runs an importable function on N
  ranks (torch.multiprocessing, forkserver) and returns each rank's value;
  functions from a notebook's ``__main__`` are refused up front.
- ``torchrun``: ``launch_script(path, nprocs)`` runs a script with torchrun.
- ``errors``: ``RankRaisedError`` (with the rank's traceback),
  ``RankDiedError`` (signal / exit code), ``LaunchTimeoutError`` (with the
  hung ranks' Python stacks), ``NotImportableError``.
- ``accumulation``: ``accumulation_context(model, micro_step, K)`` --
  ``no_sync`` on all but the last micro-step (DDP and FSDP2).
- ``hooks``: DDP communication hooks -- torch's ``fp16_compress_hook``, our
  ``bf16_fp32_sum_hook`` (bf16 payload, fp32 sums, any backend) -- and
  ``CommCounter`` + ``counting_hook`` (calls and bytes per step, observed).
- ``fsdp``: FSDP2 ``fully_shard`` with ``MixedPrecisionPolicy``:
  ``shard_mixed_precision``, ``master_dtypes``, ``compute_dtypes``.
- ``training``: ``train_ddp(model, dataset, micro_batch_size=, accumulation_steps=,
  precision=, ...)`` -- data-parallel training with ``DistributedSampler``
  (drop rule, ``set_epoch``), ``no_sync`` accumulation and the course's
  recipes and steppers (through ``course_lib.train``); ``GlobalOrderSampler``
  (the single-process oracle's order), ``replica_divergence``, the rules
  ``sync_schedule`` and ``loss_weights``, and the sync/uneven-input experiments.
- ``demos``: the worker functions chapter 07 launches to measure each claim.

The command line ``python -m course_lib.distributed --nprocs 2 pkg.mod:fn``
(or ``... script.py``) does the same from a shell.

>>> backend_for("cpu")
'gloo'
"""
from course_lib.distributed.accumulation import accumulation_context, is_sync_step
from course_lib.distributed.backend import backend_for, free_port
from course_lib.distributed.errors import (LaunchError, LaunchTimeoutError, NotImportableError,
                                           RankDiedError, RankRaisedError)
from course_lib.distributed.hooks import (CommCounter, CommStats, bf16_fp32_sum_hook,
                                          counting_hook, fp16_compress_hook)
from course_lib.distributed.launcher import launch, target_name
from course_lib.distributed.process import WorkerInfo, current_worker, distributed_process
from course_lib.distributed.teardown import live_parallel_modules, orderly_teardown
from course_lib.distributed.torchrun import launch_script
from course_lib.distributed.training import (DistributedTrainResult, GlobalOrderSampler,
                                             loss_weights, replica_divergence, sync_schedule,
                                             train_ddp)

__all__ = ["accumulation_context", "is_sync_step", "backend_for", "free_port", "LaunchError",
           "LaunchTimeoutError", "NotImportableError", "RankDiedError", "RankRaisedError",
           "CommCounter", "CommStats", "bf16_fp32_sum_hook", "counting_hook", "fp16_compress_hook",
           "launch", "target_name", "WorkerInfo", "current_worker", "distributed_process",
           "live_parallel_modules", "orderly_teardown", "launch_script", "train_ddp",
           "DistributedTrainResult", "GlobalOrderSampler", "replica_divergence", "sync_schedule",
           "loss_weights"]
