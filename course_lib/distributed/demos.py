"""Worker functions chapter 07 launches, each measuring one claim on real processes.

Each ``*_job`` function runs inside a launched rank (``launch(fn, nprocs)``)
and returns plain data; :func:`count_exit_crashes` runs in the caller.

* :func:`small_ddp_job` -- a 3-step DDP training job (the unit of the
  teardown experiment).
* :func:`count_exit_crashes` -- launch ``small_ddp_job`` N times with or
  without the orderly teardown and count the ranks that died at exit.
* :func:`hook_comparison_job` -- for DDP without a hook (fp32), torch's fp16
  hook and :func:`~course_lib.distributed.hooks.bf16_fp32_sum_hook`:
  hook calls and bytes per optimizer step with and without ``no_sync``
  accumulation, and the averaged gradient against the exact average of the
  ranks' fp32 gradients (the oracle: each rank's gradient from a plain
  copy of the model, all-gathered, averaged in float64).
* :func:`fsdp_mixed_precision_job` -- FSDP2 with ``param_dtype=bf16`` and
  ``reduce_dtype`` fp32 / ``None``, and the model cast to bf16 before
  sharding: master and compute dtypes, the reduced gradient against its
  oracle, and how many master weights one small SGD step changes.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> flat_grads(torch.nn.Linear(2, 1)).numel()      # no gradients yet: zeros
    3
"""
from __future__ import annotations

import copy
import time
from collections import Counter

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from course_lib.distributed.accumulation import accumulation_context
from course_lib.distributed.errors import RankDiedError
from course_lib.distributed.fsdp import (compute_dtypes, master_dtypes, mixed_precision_policy,
                                         shard_mixed_precision)
from course_lib.distributed.hooks import HOOKS, CommCounter, counting_hook
from course_lib.models import MLP

__all__ = ["small_ddp_job", "count_exit_crashes", "hook_comparison_job", "torch_bf16_findings",
           "fsdp_mixed_precision_job", "flat_grads", "rank_batch"]

#: Unit roundoff (half the spacing at 1) and half the smallest subnormal.
ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
HALF_MIN_SUBNORMAL = {torch.float32: 2.0 ** -150, torch.float16: 2.0 ** -25,
                      torch.bfloat16: 2.0 ** -134}
HOOK_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rank_batch(batch: int = 16, features: int = 64, classes: int = 10, seed: int = 0,
               step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible random batch that differs by rank and step."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 1009 + step)
    return torch.randn(batch, features, generator=gen), torch.randint(classes, (batch,), generator=gen)


def flat_grads(model: nn.Module) -> torch.Tensor:
    """All parameter gradients concatenated in float32 (zeros where there is none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach()
                      .reshape(-1).to(torch.float32) for p in model.parameters()])


def small_ddp_job(steps: int = 3) -> float:
    """Train a small MLP under DDP for ``steps`` SGD steps; return the sum of its weights."""
    torch.manual_seed(0)
    model = DistributedDataParallel(MLP(in_features=8, hidden=(16,), num_classes=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x, y = rank_batch(batch=4, features=8, classes=2, step=step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return float(sum(p.detach().sum() for p in model.parameters()))


def count_exit_crashes(launches: int = 20, *, teardown: bool = True, start_method: str = "spawn",
                       nprocs: int = 2, timeout: float = 120.0) -> dict:
    """Launch :func:`small_ddp_job` ``launches`` times; count the launches where a rank died.

    Runs in the caller (it launches jobs). Use ``start_method="spawn"``:
    forkserver workers end with ``os._exit`` and never meet the
    interpreter-shutdown abort the orderly teardown prevents.

    Returns:
        dict: ``launches``, ``crashed`` (launches with a dead rank),
        ``signals`` (Counter of signal names or exit codes) and
        ``seconds_per_launch``.
    """
    from course_lib.distributed.launcher import launch  # launch imports this package
    signals: Counter = Counter()
    crashed = 0
    start = time.perf_counter()
    for _ in range(launches):
        try:
            launch(small_ddp_job, nprocs, start_method=start_method, teardown=teardown,
                   timeout=timeout)
        except RankDiedError as err:
            crashed += 1
            signals[err.signal_name or f"exit {err.exitcode}"] += 1
    return {"launches": launches, "crashed": crashed, "signals": signals,
            "seconds_per_launch": (time.perf_counter() - start) / max(launches, 1)}


def _ddp(model: nn.Module, hook_name: str, counter: CommCounter | None = None):
    ddp = DistributedDataParallel(model)
    if counter is not None:
        ddp.register_comm_hook(counter, counting_hook)
    elif HOOKS[hook_name] is not None:
        ddp.register_comm_hook(None, HOOKS[hook_name])
    return ddp


def hook_comparison_job(hidden: tuple[int, ...] = (32,), optimizer_steps: int = 2,
                        accumulation_steps: int = 3, seed: int = 0) -> dict:
    """Per hook: communication per optimizer step (with/without ``no_sync``) and gradient error.

    Returns (same on every rank except ``rank``): ``{"rank", "world_size",
    "parameters", "hooks": {name: {...}}}`` where each hook entry has
    ``calls_per_step_no_sync``, ``calls_per_step_every_micro_step``,
    ``collectives`` (per synchronized step), ``payload_bytes`` and
    ``wire_bytes`` (per optimizer step with ``no_sync``), ``max_error``
    (max over elements of ``|hooked - exact average|``), ``bound`` (the
    element-wise bound of the module docstring of
    :mod:`course_lib.distributed.hooks`), ``within_bound``,
    ``representable`` (every averaged value is exactly representable in the
    hook's dtype), and ``grad``/``local_grads`` (for the caller's own checks).
    """
    world = dist.get_world_size()
    torch.manual_seed(seed)
    base = MLP(in_features=64, hidden=hidden, num_classes=10)
    n = sum(p.numel() for p in base.parameters())
    x, y = rank_batch(seed=seed)

    plain = copy.deepcopy(base)                       # the oracle: this rank's fp32 gradient
    nn.functional.cross_entropy(plain(x), y).backward()
    local = flat_grads(plain)
    everyone = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(everyone, local)
    stacked = torch.stack(everyone).to(torch.float64)
    exact, mean_abs = stacked.mean(0), stacked.abs().mean(0)

    out: dict = {"rank": dist.get_rank(), "world_size": world, "parameters": n, "hooks": {},
                 "local_grads": torch.stack(everyone)}
    for name in HOOKS:
        dtype = HOOK_DTYPE[name]
        ddp = _ddp(copy.deepcopy(base), name)        # numerics: one synchronized backward
        nn.functional.cross_entropy(ddp(x), y).backward()
        grad = flat_grads(ddp.module)
        u, tiny = ROUNDOFF[dtype], HALF_MIN_SUBNORMAL[dtype]
        bound = (2 * u + 2 * u * u + 4 * ROUNDOFF[torch.float32]) * mean_abs + (world + 2) * tiny
        error = (grad.to(torch.float64) - exact).abs()
        entry = {"grad": grad, "max_error": float(error.max()),
                 "within_bound": bool((error <= bound).all()), "bound": bound,
                 "representable": bool((grad.to(dtype).to(torch.float32) == grad).all())}
        for mode, use_no_sync in (("no_sync", True), ("every_micro_step", False)):
            counter = CommCounter(HOOKS[name])
            ddp = _ddp(copy.deepcopy(base), name, counter)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
            for step in range(optimizer_steps):
                for micro in range(accumulation_steps):
                    xb, yb = rank_batch(seed=seed, step=step * accumulation_steps + micro)
                    context = (accumulation_context(ddp, micro, accumulation_steps) if use_no_sync
                               else accumulation_context(ddp, 0, 1))
                    with context:
                        (nn.functional.cross_entropy(ddp(xb), yb) / accumulation_steps).backward()
                opt.step()
                opt.zero_grad()
                counter.end_step()
            entry[f"calls_per_step_{mode}"] = [s.hook_calls for s in counter.steps]
            if use_no_sync:
                entry["collectives"] = dict(counter.steps[0].collectives)
                entry["payload_bytes"] = counter.steps[0].payload_bytes
                entry["wire_bytes"] = counter.steps[0].wire_bytes
        out["hooks"][name] = entry
    out["torch_bf16"] = torch_bf16_findings()
    return out


def torch_bf16_findings() -> dict:
    """What torch's own bf16 path does on this build and backend (strings, for the chapter).

    Returns:
        dict: ``register_bf16_compress_hook`` ("accepted" or the error),
        ``bf16_all_reduce`` and ``int16_all_reduce`` ("ok: [values]" or the
        error's first line). Inputs: rank r contributes ``r + 1`` in every
        element, so the right sum is ``W(W+1)/2``. The probes run on a process
        group of their own: a collective that fails (int16 on gloo) can leave
        its group unusable, and the default group must stay healthy for the
        orderly teardown's barrier.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
    found = {}
    group = dist.new_group()
    probe = DistributedDataParallel(nn.Linear(2, 1))
    try:
        probe.register_comm_hook(None, bf16_compress_hook)
        found["register_bf16_compress_hook"] = "accepted"
    except (TypeError, RuntimeError, ValueError) as err:
        found["register_bf16_compress_hook"] = f"{type(err).__name__}: {err}"
    for key, dtype in (("bf16_all_reduce", torch.bfloat16), ("int16_all_reduce", torch.int16)):
        value = torch.full((3,), dist.get_rank() + 1, dtype=dtype)
        try:
            dist.all_reduce(value, group=group)
            found[key] = f"ok: {value.tolist()}"
        except RuntimeError as err:
            found[key] = f"RuntimeError: {str(err).splitlines()[0]}"
    return found


def _changed_fraction(model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """One SGD step on the masters; fraction of this rank's master elements that changed."""
    before = [p.to_local().detach().clone() if hasattr(p, "to_local") else p.detach().clone()
              for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x).float(), y).backward()
    opt.step()
    after = [p.to_local().detach() if hasattr(p, "to_local") else p.detach()
             for p in model.parameters()]
    changed = sum(int((a != b).sum()) for a, b in zip(after, before))
    return changed / max(sum(b.numel() for b in before), 1)


def fsdp_mixed_precision_job(lr: float = 1e-5, seed: int = 0) -> dict:
    """FSDP2 mixed precision on this rank: three cases, measured.

    Cases: ``"reduce_fp32"`` (param bf16, reduce fp32), ``"reduce_default"``
    (param bf16, reduce ``None`` = bf16), ``"cast_before_sharding"`` (model
    ``.to(bf16)`` first, low-precision masters allowed).

    Returns:
        dict: per case ``master_dtypes``, ``compute_dtypes``, ``output_dtype``,
        ``grad_dtype``, ``grad`` (the first layer's full averaged weight
        gradient), ``oracle_fp32`` (the fp32 average of the ranks' bf16
        gradients), ``representable_bf16`` and ``changed_fraction`` (of
        master elements, after one SGD step of ``lr``).
    """
    world = dist.get_world_size()
    x, y = rank_batch(batch=8, features=64, seed=seed)
    out: dict = {}
    cases = {"reduce_fp32": (torch.float32, False), "reduce_default": (None, False),
             "cast_before_sharding": (torch.float32, True)}
    for case, (reduce_dtype, cast_first) in cases.items():
        torch.manual_seed(seed)
        model = MLP(in_features=64, hidden=(32,), num_classes=10)
        plain = copy.deepcopy(model).to(torch.bfloat16)   # what each rank computes locally
        nn.functional.cross_entropy(plain(x.to(torch.bfloat16)).float(), y).backward()
        local = next(plain.parameters()).grad.to(torch.float32)
        if cast_first:
            model = model.to(torch.bfloat16)
        shard_mixed_precision(model, mixed_precision_policy(torch.bfloat16, reduce_dtype),
                              allow_low_precision_masters=cast_first)
        entry = {"master_dtypes": master_dtypes(model),
                 "compute_dtypes": compute_dtypes(model, [x])}
        logits = model(x)
        entry["output_dtype"] = logits.dtype
        nn.functional.cross_entropy(logits.float(), y).backward()
        first = next(model.parameters())
        entry["grad_dtype"] = first.grad.to_local().dtype
        grad = first.grad.full_tensor().to(torch.float32)
        entry["grad"] = grad
        everyone = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(everyone, local.contiguous())
        entry["oracle_fp32"] = torch.stack(everyone).sum(0) / world
        entry["representable_bf16"] = bool((grad.to(torch.bfloat16).to(torch.float32) == grad).all())
        entry["changed_fraction"] = _changed_fraction(model, lr, x, y)
        out[case] = entry
        del model
    return out
