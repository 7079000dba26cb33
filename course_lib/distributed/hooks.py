"""Gradient-compression communication hooks for DDP, and a counter of what a hook sends.

DDP averages gradients bucket by bucket: by default one fp32 all-reduce of
each bucket (a flat buffer of ~25 MB of gradients). A communication hook
replaces that step (``ddp_model.register_comm_hook(state, hook)``;
``hook(state, bucket)`` returns a ``Future`` of the averaged bucket).

* :func:`fp16_compress_hook` (torch's): cast to fp16, divide by the world
  size, all-reduce in fp16, cast back. Half the bytes; fp16's range ends
  at 65504 and its subnormals at 5.96e-8, so large gradients overflow and
  tiny ones lose digits (use with a loss scaler).
* torch's ``bf16_compress_hook`` is the same in bf16. Two limits:
  ``register_comm_hook`` refuses it (by its name) unless torch was built
  with CUDA + NCCL >= 2.10 -- on the CPU wheel: ``TypeError: BF16 all
  reduce communication hook required CUDA 11+ and NCCL 2.10+ or XPU and
  XCCL``; and gloo builds without bf16 support fail the all-reduce with
  ``RuntimeError: Invalid scalar type`` (pytorch issue #111131, gloo issue
  #454; the torch 2.13 CPU wheel's gloo does sum bf16 CPU tensors, but
  still refuses int16 with that error). Also, a bf16 ring all-reduce
  rounds the running sum to bf16 at every hop: W-1 roundings.
* :func:`bf16_fp32_sum_hook` (ours) works on any backend and version and
  rounds only twice, whatever the world size. Algorithm, for W ranks and a
  bucket of n fp32 gradients split into W chunks of ``c = ceil(n/W)``:

  1. compress: round the bucket to bf16 (nearest-even), pad to ``W*c``;
  2. reduce-scatter by hand: ``all_to_all`` of the bf16 *bytes* (a uint8
     view: every backend moves bytes) sends chunk j to rank j; rank j now
     holds W bf16 versions of its chunk;
  3. decompress to fp32, divide by W, sum the W versions in **fp32**,
     round the averaged chunk to bf16;
  4. ``all_gather`` the bf16 bytes of every rank's averaged chunk;
     decompress into the fp32 bucket.

  Each rank sends ``(W-1)/W * 2n`` bytes in step 2 and again in step 4:
  ``4n(W-1)/W``, exactly what a native bf16 ring all-reduce sends and half
  of fp32's ``8n(W-1)/W``. (Simpler alternatives fail one test or the
  other: ``all_gather`` of every rank's whole bf16 bucket then a local
  fp32 sum sends ``2n(W-1)`` bytes -- less than fp32 only for W < 4 -- and
  needs W buckets of memory; all-reducing the bf16 values *upcast* to
  fp32 sends fp32 bytes, saving nothing.)

  Error bound per element (tested). With ``u`` the unit roundoff of the
  payload format (bf16 ``2**-8``, fp16 ``2**-11``), ``s`` half its smallest
  subnormal, ``g_r`` rank r's fp32 gradient and ``ḡ`` their exact average:
  ``|result - ḡ| <= (2u + 2u**2 + 4 * 2**-24) * mean_r|g_r| + (W + 2) s``.
  Derivation: rounding each ``g_r`` costs at most ``u|g_r|`` (so ``u *
  mean|g_r|`` on the average), the fp32 divide-and-sum ``O(2**-24)``, and
  rounding the average once more ``u * |average| <= u (1 + u) mean|g_r|``;
  near zero every rounding errs by at most ``s`` instead. torch's fp16 hook
  meets the same bound when W is a power of two (its division by W in fp16
  is then exact): one rounding to fp16, one in the fp16 sum (W = 2).

  Step 2 blocks the backward pass until the all-to-all completes (issuing
  the second collective from a future's callback could interleave buckets
  in different orders on different ranks); step 4 is asynchronous.

* :class:`CommCounter` + :func:`counting_hook`: wrap any hook and record,
  per optimizer step, how many times DDP called it (one call per bucket
  per synchronized backward), which collectives it issued and how many
  bytes. The collectives are observed, not declared: while the wrapped
  hook runs, a ``TorchDispatchMode`` sees every ``c10d`` operator it
  dispatches with its tensors. ``payload_bytes`` is the size of the
  tensors this rank hands to the collectives; ``wire_bytes`` is what this
  rank sends under the ring algorithms (the nccl-tests "bus bandwidth"
  model): all-reduce ``2(W-1)/W * S``, all-gather ``(W-1) * S``,
  reduce-scatter and all-to-all ``(W-1)/W * S``, S the input bytes.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> wire_bytes("allreduce_", 4000, world_size=2)    # fp32, 1000 values
    4000
    >>> wire_bytes("alltoall_base_", 2000, world_size=2) + wire_bytes("allgather_", 1000, world_size=2)
    2000
"""
# No ``from __future__ import annotations`` here: DDP's register_comm_hook
# compares a hook's annotations with the classes dist.GradBucket and
# torch.futures.Future[torch.Tensor], and string annotations fail that check
# ("Communication hook: bucket annotation should be dist.GradBucket").
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (allreduce_hook,
                                                                        fp16_compress_hook)
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib import validate

__all__ = ["bf16_fp32_sum_hook", "fp16_compress_hook", "allreduce_hook", "CommStats",
           "CommCounter", "counting_hook", "wire_bytes", "HOOKS"]


def bf16_fp32_sum_hook(process_group: dist.ProcessGroup | None,
                       bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP hook: average a bucket with bf16 payloads and fp32 sums (see the module docstring).

    Register with ``ddp_model.register_comm_hook(None, bf16_fp32_sum_hook)``
    (``None``: the default process group), or pass a process group as state.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    world = group.size()
    buffer = bucket.buffer()
    n = buffer.numel()
    chunk = -(-n // world)
    compressed = torch.zeros(world * chunk, dtype=torch.bfloat16, device=buffer.device)
    compressed[:n].copy_(buffer)                                      # 1. round to bf16
    received = torch.empty_like(compressed)
    dist.all_to_all_single(received.view(torch.uint8), compressed.view(torch.uint8),
                           group=group)                               # 2. chunk j -> rank j
    versions = received.view(world, chunk).to(torch.float32).div_(world)
    mine = versions.sum(dim=0).to(torch.bfloat16)                     # 3. fp32 sum, round once
    gathered = torch.empty_like(compressed)
    work = dist.all_gather(list(gathered.view(torch.uint8).chunk(world)), mine.view(torch.uint8),
                           group=group, async_op=True)                # 4. everyone's chunk

    def decompress(fut):
        buffer.copy_(gathered[:n])
        return buffer

    return work.get_future().then(decompress)


#: The hooks chapter 07 compares, by name (``None``: DDP's default fp32 all-reduce).
HOOKS: dict[str, Callable | None] = {"fp32": None, "fp16": fp16_compress_hook,
                                     "bf16": bf16_fp32_sum_hook}

_INPUT_ARGUMENTS = ("tensors", "input_tensors", "input_tensor", "input", "inputs")
_WIRE_FACTOR = {"allreduce": lambda w: 2 * (w - 1) / w,
                "allreduce_coalesced": lambda w: 2 * (w - 1) / w,
                "allgather": lambda w: w - 1, "allgather_base": lambda w: w - 1,
                "allgather_into_tensor_coalesced": lambda w: w - 1,
                "alltoall": lambda w: (w - 1) / w, "alltoall_base": lambda w: (w - 1) / w,
                "reduce_scatter": lambda w: (w - 1) / w,
                "reduce_scatter_base": lambda w: (w - 1) / w,
                "reduce_scatter_tensor_coalesced": lambda w: (w - 1) / w}


def wire_bytes(op: str, input_bytes: int, world_size: int) -> int:
    """Bytes one rank sends for collective ``op`` with ``input_bytes`` of input (ring model).

    Args:
        op (str): a ``c10d`` operator name such as ``"allreduce_"`` or
            ``"c10d.alltoall_base_.default"``.
        input_bytes (int): bytes of this rank's input tensors.
        world_size (int): ranks in the group.
    """
    base = op.split(".")[1] if op.count(".") == 2 else op
    factor = _WIRE_FACTOR.get(base.strip("_"), lambda w: 1)
    return int(round(input_bytes * factor(world_size)))


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class _CollectiveSpy(TorchDispatchMode):
    """Record ``(op name, input bytes)`` for every c10d operator dispatched inside."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d" and func.__name__ != "barrier":
            names = [a.name for a in func._schema.arguments]
            found = next((n for n in _INPUT_ARGUMENTS if n in names), None)
            if found is None:
                size = _tensor_bytes(list(args)) + _tensor_bytes(list(kwargs.values()))
            else:
                i = names.index(found)
                size = _tensor_bytes(args[i] if i < len(args) else kwargs.get(found))
            self.seen.append((func.__name__.split(".")[0], size))
        return func(*args, **kwargs)


@dataclass
class CommStats:
    """What a hook sent during one optimizer step (or in total).

    Attributes:
        hook_calls (int): bucket communications (DDP calls the hook once per
            bucket in each backward that synchronizes).
        collectives (Counter): collective operator name -> count.
        payload_bytes (int): bytes of the tensors handed to collectives.
        wire_bytes (int): bytes this rank sends (ring-algorithm model).
    """

    hook_calls: int = 0
    collectives: Counter = field(default_factory=Counter)
    payload_bytes: int = 0
    wire_bytes: int = 0

    def add(self, other: "CommStats") -> None:
        self.hook_calls += other.hook_calls
        self.collectives.update(other.collectives)
        self.payload_bytes += other.payload_bytes
        self.wire_bytes += other.wire_bytes


class CommCounter:
    """State for :func:`counting_hook`: wraps ``hook`` and counts what it sends, per step.

    Args:
        hook (callable, default torch's ``allreduce_hook``): the hook to
            wrap; ``allreduce_hook`` behaves exactly like DDP without a hook.
        state (any, default None): the wrapped hook's state (``None``: the
            default process group, as for torch's built-in hooks).
        process_group (ProcessGroup or None, default None): the group, for
            the world size in the ring model.

    Use: ``counter = CommCounter(fp16_compress_hook)``;
    ``ddp.register_comm_hook(counter, counting_hook)``; after each
    ``optimizer.step()`` call ``counter.end_step()``; read ``counter.steps``.
    """

    def __init__(self, hook: Callable | None = None, state: Any = None,
                 process_group: dist.ProcessGroup | None = None):
        self.hook = allreduce_hook if hook is None else hook
        if not callable(self.hook):
            raise TypeError(f"hook must be a DDP communication hook (callable), got "
                            f"{type(hook).__name__}")
        self.state = state
        self.process_group = process_group
        self.current = CommStats()
        self.steps: list[CommStats] = []

    def record(self, seen: list[tuple[str, int]]) -> None:
        world = dist.get_world_size(self.process_group)
        self.current.hook_calls += 1
        for op, size in seen:
            self.current.collectives[op] += 1
            self.current.payload_bytes += size
            self.current.wire_bytes += wire_bytes(op, size, world)

    def end_step(self) -> CommStats:
        """Close the current optimizer step; return its statistics."""
        done, self.current = self.current, CommStats()
        self.steps.append(done)
        return done

    @property
    def total(self) -> CommStats:
        """All finished steps plus the current one."""
        out = CommStats()
        for s in (*self.steps, self.current):
            out.add(s)
        return out


def counting_hook(counter: CommCounter,
                  bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP hook: run ``counter.hook`` on the bucket and record its collectives in ``counter``."""
    validate.instance_of("state", counter, CommCounter)
    with _CollectiveSpy() as spy:
        future = counter.hook(counter.state, bucket)
    counter.record(spy.seen)
    return future
