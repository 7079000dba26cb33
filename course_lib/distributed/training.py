"""Data-parallel training with gradient accumulation: one optimizer step on W x K micro-batches.

:func:`train_ddp` runs on every rank of a launched job
(:func:`~course_lib.distributed.launcher.launch` or ``torchrun``) and trains
one replica of the model per rank. Algorithm, on each of the W ranks:

1. **Shard the data.** ``DistributedSampler(dataset, W, rank, shuffle=True,
   seed, drop_last=True)``: every epoch, the permutation
   ``randperm(N, seed + epoch)`` is cut to a multiple of W and rank r takes
   positions ``r, r + W, r + 2W, ...`` of it. ``sampler.set_epoch(epoch)``
   is called before every epoch (by :func:`course_lib.checkpoint.seed_epoch_order`),
   or every epoch repeats epoch 0's order (pytorch issue #31771).
2. **Prepare the replica.** The precision recipe
   (:mod:`course_lib.recipes`; a name such as ``"amp_bf16"`` or a
   ``Recipe``) casts the model and moves it to this rank's device
   (``cuda:LOCAL_RANK``, not the global rank; ``cpu`` with gloo) *before*
   ``DistributedDataParallel`` wraps it; DDP then broadcasts rank 0's
   weights so every replica starts equal. An optional communication hook
   (``"fp16"``, ``"bf16"``, any DDP hook) compresses the all-reduce.
3. **Train** with :func:`course_lib.train.train` (the course's one loop and
   its steppers): micro-batches of ``micro_batch_size`` in groups of
   ``accumulation_steps`` (K). Micro-steps 0..K-2 of a group run their
   forward *and* backward inside ``no_sync()`` (DDP decides in the forward
   whether the next backward all-reduces: setting the flag around the
   backward only does nothing, build-nanogpt PR #30); the last micro-step's
   backward all-reduces the accumulated sum, once. Each micro-batch's mean
   loss is weighted by ``n_i / N`` (its share of the group's targets), and
   DDP averages over the ranks, so the gradient is that of the mean loss
   over the W x K micro-batches. The stepper then unscales, clips (the
   averaged, unscaled gradients) and steps -- identically on every rank,
   because every rank holds the same gradients.
4. **Log and check.** The history's ``loss`` is averaged over the ranks
   (one scalar all-reduce per step); at the end
   :func:`replica_divergence` compares every rank's parameters with rank
   0's (exactly 0 when data parallelism is right).

**Uneven shards: the drop rule.** When N is not a multiple of W,
``drop_last=True`` drops the last ``N mod W`` (< W) samples of each epoch's
permutation -- a different few each epoch, since the permutation changes.
Every rank then holds exactly ``N // W`` samples, so every rank runs the same
number of micro-batches of the same sizes: every collective (the gradient
all-reduce, DDP's buffer broadcast in each forward) is met by every rank, and
no rank can wait for one that never comes (the hang of PyMarlin issue #80;
``torch.distributed.algorithms.Join`` is the other cure: it makes a rank that
ran out of data shadow the others' collectives). The alternative,
DistributedSampler's default ``drop_last=False``, *pads* by repeating the
first ``W - N mod W`` samples of the permutation: nothing is dropped, but
those samples count twice in that epoch's gradient. ``drop_last=False`` is
accepted for comparison.

**The last incomplete group** (as in :func:`course_lib.train.train`): when a
rank's number of micro-batches is not a multiple of K, its last group holds
the remaining micro-batches and is stepped as it is, with weights ``n_i / N``
over the micro-batches it has (its last micro-step synchronizes). Because
every rank has the same shard size, every rank's last group has the same
sizes, and the step is the gradient of the mean loss over the group's
``W * N`` targets. :func:`sync_schedule` and :func:`loss_weights` state both
rules for any shapes (the general weight is ``W * n_i / total``; it reduces
to ``n_i / N`` when all ranks hold N targets).

**Equivalence.** With ``drop_last=True`` the W ranks' k-th groups together
are positions ``k*W*K*b .. (k+1)*W*K*b - 1`` of the epoch's (cut)
permutation: exactly the k-th batch of one process that reads the same
permutation in batches of ``W * K * b``. :class:`GlobalOrderSampler` gives
that process its order, so a single-process :func:`course_lib.train.train`
run is the oracle of a DDP run (tests/test_distributed.py compares
gradients and parameters).

The module also holds the worker functions chapter 07 launches to measure
the sync rules on real processes: :func:`sync_variants_job` and
:func:`uneven_inputs_job`.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> sync_schedule(5, 2)                # groups [0, 1], [2, 3], [4]: the last of each syncs
    [False, True, False, True, True]
    >>> loss_weights([[4, 4], [4, 4]])     # 2 ranks x 2 equal micro-batches: 1/K each
    [[0.5, 0.5], [0.5, 0.5]]
    >>> list(GlobalOrderSampler(range(5), world_size=2, shuffle=False))   # 5 mod 2 = 1 dropped
    [0, 1, 2, 3]
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from course_lib import validate
from course_lib.distributed.accumulation import accumulation_context
from course_lib.distributed.hooks import HOOKS, CommCounter, CommStats, counting_hook
from course_lib.distributed.process import current_worker
from course_lib.recipes import Recipe, get_recipe
from course_lib.train import TrainResult, train

__all__ = ["train_ddp", "DistributedTrainResult", "GlobalOrderSampler", "replica_divergence",
           "sync_schedule", "loss_weights", "SYNC_VARIANTS", "sync_variants_job",
           "uneven_inputs_job"]


# --------------------------------------------------------------------------- the two rules
def sync_schedule(num_micro_batches: int, accumulation_steps: int) -> list[bool]:
    """For each micro-batch of an epoch: does its backward all-reduce (is it the last of its group)?

    Groups are consecutive runs of ``accumulation_steps`` micro-batches; the
    last group holds what remains (course_lib.train's rule). Micro-batch i
    synchronizes iff ``(i + 1) % K == 0`` or ``i`` is the epoch's last.

    Args:
        num_micro_batches (int): micro-batches in the epoch (on one rank), >= 1.
        accumulation_steps (int): K >= 1.

    Example:
        >>> sync_schedule(3, 1)
        [True, True, True]
    """
    n = validate.positive_int("num_micro_batches", num_micro_batches)
    k = validate.positive_int("accumulation_steps", accumulation_steps)
    return [(i + 1) % k == 0 or i == n - 1 for i in range(n)]


def loss_weights(sizes_per_rank: Sequence[Sequence[int]]) -> list[list[float]]:
    """Weights of each rank's micro-batch losses for one optimizer step of data parallelism.

    Rank r's micro-batch i has ``n[r][i]`` targets and mean loss ``L[r][i]``;
    each rank back-propagates ``sum_i w[r][i] * L[r][i]`` and DDP *averages*
    the W ranks' gradients. For the result to be the gradient of the mean
    loss over all ``T = sum n`` targets of the step, ``w[r][i] = W * n[r][i] / T``
    (DDP's division by W is undone by the factor W). With equal rank totals N
    this is ``n_i / N``, course_lib.train's weight; with equal micro-batches,
    ``1 / K``.

    Args:
        sizes_per_rank (sequence of sequences of int): targets per micro-batch,
            per rank; every rank has at least one micro-batch (a rank with no
            data cannot take part in the step's all-reduce) and T > 0.

    Returns:
        list[list[float]]: the weights, shaped like ``sizes_per_rank``.

    Example:
        >>> loss_weights([[8, 8, 3]])               # one process, last group of 19 targets
        [[0.42105263157894735, 0.42105263157894735, 0.15789473684210525]]
        >>> loss_weights([[3], [2]])                # uneven shards: rank 0 holds 3 of 5
        [[1.2], [0.8]]
    """
    if isinstance(sizes_per_rank, (str, bytes)) or not isinstance(sizes_per_rank, Sequence) \
            or not sizes_per_rank:
        raise ValueError(f"sizes_per_rank must be a non-empty list of lists of ints (one list per "
                         f"rank), got {sizes_per_rank!r}")
    rows = []
    for r, sizes in enumerate(sizes_per_rank):
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
            raise ValueError(f"sizes_per_rank[{r}] must be a non-empty list of ints (every rank "
                             f"takes part in the all-reduce), got {sizes!r}")
        rows.append([validate.non_negative_int(f"sizes_per_rank[{r}][{i}]", n)
                     for i, n in enumerate(sizes)])
    total = sum(sum(row) for row in rows)
    if total == 0:
        raise ValueError("sizes_per_rank holds no targets at all (the mean loss is undefined)")
    world = len(rows)
    return [[world * n / total for n in row] for row in rows]


# --------------------------------------------------------------------------- the oracle's order
class GlobalOrderSampler(Sampler):
    """One process's order of the samples that W ``DistributedSampler`` ranks use in an epoch.

    Algorithm: build the W ranks' ``DistributedSampler(dataset, W, r, shuffle,
    seed, drop_last)`` for the current epoch and interleave their shards
    (``shard_0[0], shard_1[0], ..., shard_0[1], shard_1[1], ...``). That
    undoes DistributedSampler's split (rank r took positions r, r+W, ...),
    so this is the epoch's permutation cut to a multiple of W
    (``drop_last=True``) or padded with its first samples
    (``drop_last=False``) -- computed by torch's own sampler, not
    re-implemented. Read in batches of ``W * K * b``, batch k is the union of
    the ranks' k-th groups of K micro-batches of b.

    Args:
        dataset (sized): anything with ``len()`` (only its length is used).
        world_size (int): W.
        seed (int, default 0), shuffle (bool, default True), drop_last (bool,
            default True): as given to the ranks' DistributedSampler.

    Call :meth:`set_epoch` like DistributedSampler's (``train()`` does).
    """

    def __init__(self, dataset, world_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        self.world_size = validate.positive_int("world_size", world_size)
        self.samplers = [DistributedSampler(dataset, num_replicas=self.world_size, rank=r,
                                            shuffle=shuffle, seed=seed, drop_last=drop_last)
                         for r in range(self.world_size)]

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samplers[0]) * self.world_size

    def __iter__(self):
        shards = [list(s) for s in self.samplers]
        return iter([shard[j] for j in range(len(shards[0])) for shard in shards])


# --------------------------------------------------------------------------- checks
def replica_divergence(model: nn.Module) -> float:
    """Largest ``|parameter - rank 0's parameter|`` over every element and rank (same on all ranks).

    Data-parallel replicas that received the same averaged gradients and ran
    the same optimizer are bitwise equal: the result is exactly 0.0. Anything
    else means the ranks trained different models (a missed all-reduce, a
    wrong sync condition: FunASR PR #3472). Equal values count as equal
    (also inf == inf); NaN against NaN counts as equal too.

    Args:
        model (nn.Module): this rank's replica (a DDP wrapper or the module
            inside it); needs an initialized process group.
    """
    validate.instance_of("model", model, nn.Module)
    params = [p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]
    device = params[0].device if params else torch.device("cpu")
    mine = torch.cat(params) if params else torch.zeros(0, device=device)
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    same = (mine == reference) | (mine.isnan() & reference.isnan())
    gap = torch.where(same, torch.zeros_like(mine), (mine - reference).abs())
    worst = gap.max().reshape(1) if gap.numel() else torch.zeros(1, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


# --------------------------------------------------------------------------- the result
@dataclass
class DistributedTrainResult(TrainResult):
    """What :func:`train_ddp` returns on each rank: a ``TrainResult`` plus the job's facts.

    Attributes (besides :class:`course_lib.train.TrainResult`'s; ``model`` is
    the trained module itself, not its DDP wrapper, and ``history[i]["loss"]``
    is the step's loss averaged over the ranks, ``"rank_loss"`` this rank's):
        rank (int), world_size (int).
        global_batch_size (int): ``W * K * micro_batch_size`` (a full step).
        samples_per_epoch (int): samples the W ranks use per epoch.
        dropped_per_epoch (int): ``N mod W`` with ``drop_last`` (0 when padding).
        padded_per_epoch (int): repeated samples per epoch without ``drop_last``.
        comm (list[CommStats]): per optimizer step, what the gradient
            communication sent (``count_communication=True``; else empty).
        replica_divergence (float): :func:`replica_divergence` at the end.
    """

    rank: int = 0
    world_size: int = 1
    global_batch_size: int = 0
    samples_per_epoch: int = 0
    dropped_per_epoch: int = 0
    padded_per_epoch: int = 0
    comm: list[CommStats] = field(default_factory=list)
    replica_divergence: float = 0.0


class _SyncEveryMicroStep(DistributedDataParallel):
    """DDP whose ``no_sync()`` does nothing: every backward all-reduces (``no_sync=False``)."""

    def no_sync(self):
        return contextlib.nullcontext()


def _this_device() -> torch.device:
    info = current_worker()
    if info is not None:
        return info.device
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("train_ddp runs inside a distributed job: launch it with "
                           "course_lib.distributed.launch(fn, nprocs=N) or call it in a torchrun "
                           "script inside `with distributed_process():`")
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _wrap(model: nn.Module, device: torch.device,
          wrapper: type = DistributedDataParallel) -> DistributedDataParallel:
    """Move ``model`` to this rank's device and wrap it (one GPU per rank on CUDA)."""
    model.to(device)
    return wrapper(model, device_ids=[device.index] if device.type == "cuda" else None)


def _resolve_hook(comm_hook):
    if comm_hook is None or callable(comm_hook):
        return comm_hook
    if isinstance(comm_hook, str) and comm_hook in HOOKS:
        return HOOKS[comm_hook]
    raise ValueError(f"comm_hook must be None, one of {sorted(HOOKS)} or a DDP communication "
                     f"hook (callable), got {comm_hook!r}")


# --------------------------------------------------------------------------- train_ddp
def train_ddp(model: nn.Module, dataset, *, micro_batch_size: int, accumulation_steps: int = 1,
              precision: str | Recipe = "fp32", optimizer="adam", lr: float = 1e-3,
              epochs: int | None = None, steps: int | None = None,
              loss_fn: Callable | None = None, val_dataset=None, val_batch_size: int = 512,
              drop_last: bool = True, grad_clip: float | None = None, loss_scale="auto",
              optimizer_kwargs: dict | None = None, seed: int = 0, comm_hook=None,
              count_communication: bool = False, no_sync: bool = True, progress: bool = False,
              callback: Callable[[dict], Any] | None = None) -> DistributedTrainResult:
    """Train ``model`` data-parallel on this rank's shard of ``dataset`` (see the module docstring).

    Call it on every rank of a launched job, with the same arguments, e.g.
    ``launch(train_ddp, 2, args=(model, dataset), kwargs={...})``. The model
    is cast and moved in place, then wrapped (the wrapper is not returned).
    Checkpointing is not offered here yet: ``course_lib.train`` writes its
    checkpoint from the process that calls it, and W ranks would all write.

    Args:
        model (nn.Module): a plain module with float32 parameters (the recipe
            casts it); identical on every rank or not -- DDP copies rank 0's.
        dataset (Dataset): map-style, with ``len()``, yielding ``(x, y)``.
        micro_batch_size (int): b, samples per micro-batch on one rank.
        accumulation_steps (int, default 1): K, micro-batches per optimizer step.
        precision (str | Recipe, default "fp32"): a recipe name
            (:data:`course_lib.recipes.RECIPES`) or a ``Recipe``.
        optimizer, lr, epochs, steps, loss_fn, grad_clip, loss_scale,
            optimizer_kwargs, seed: as in :func:`course_lib.train.train`
            (``seed`` also seeds the sampler's permutations).
        val_dataset (Dataset | None): evaluated after every epoch on every rank
            (whole, not sharded: the replicas are equal, so are the results).
        val_batch_size (int, default 512): its batch size.
        drop_last (bool, default True): the drop rule; ``False`` pads
            (DistributedSampler's default) -- see the module docstring.
        comm_hook (None | "fp32" | "fp16" | "bf16" | callable, default None):
            gradient communication (:mod:`course_lib.distributed.hooks`);
            ``None`` and ``"fp32"`` are DDP's own fp32 all-reduce.
        count_communication (bool, default False): wrap the hook in a
            :class:`~course_lib.distributed.hooks.CommCounter` and return
            per-step statistics in ``result.comm``.
        no_sync (bool, default True): accumulate inside ``no_sync()``;
            ``False`` all-reduces after every micro-step (the same gradients
            up to rounding, K times the communication: for comparison).
        progress (bool, default False): a progress bar on rank 0.
        callback (callable | None): ``callback(record)`` after every step on
            every rank (the record's ``loss`` already averaged over ranks).

    Returns:
        DistributedTrainResult

    Raises:
        RuntimeError: not inside a distributed job.
        ValueError: the dataset has fewer samples than ranks, or a bad argument.
    """
    validate.instance_of("model", model, nn.Module)
    if isinstance(model, DistributedDataParallel):
        raise TypeError("pass the plain model: train_ddp casts it with the recipe first and wraps "
                        "it in DistributedDataParallel itself (a dtype change after wrapping "
                        "breaks DDP's gradient buckets)")
    recipe = get_recipe(precision)
    b = validate.positive_int("micro_batch_size", micro_batch_size)
    k = validate.positive_int("accumulation_steps", accumulation_steps)
    validate.positive_int("val_batch_size", val_batch_size)
    validate.instance_of("drop_last", drop_last, bool)
    validate.instance_of("count_communication", count_communication, bool)
    validate.instance_of("no_sync", no_sync, bool)
    validate.non_negative_int("seed", seed)
    hook = _resolve_hook(comm_hook)
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must be a map-style Dataset with len(), got "
                        f"{type(dataset).__name__}") from None
    device = _this_device()
    rank, world = dist.get_rank(), dist.get_world_size()
    if n < world:
        raise ValueError(f"the dataset has {n} sample(s) but there are {world} ranks: every rank "
                         "needs at least one")

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=b, sampler=sampler)
    val_loader = (None if val_dataset is None
                  else DataLoader(val_dataset, batch_size=val_batch_size, shuffle=False))

    recipe.prepare_model(model, device)          # cast and move BEFORE wrapping
    ddp = _wrap(model, device, DistributedDataParallel if no_sync else _SyncEveryMicroStep)
    counter = None
    if count_communication:
        counter = CommCounter(hook)
        ddp.register_comm_hook(counter, counting_hook)
    elif hook is not None:
        ddp.register_comm_hook(None, hook)

    def after_step(record: dict) -> None:         # train() stores this very dict in its history
        local = torch.tensor([record["loss"]], dtype=torch.float64, device=device)
        dist.all_reduce(local)                    # the logged loss: mean over the ranks
        record["rank_loss"], record["loss"] = record["loss"], float(local) / world
        if counter is not None:
            counter.end_step()
        if callback is not None:
            callback(record)

    try:
        result = train(ddp, loader, precision=recipe, optimizer=optimizer, lr=lr, epochs=epochs,
                       steps=steps, accum_steps=k, loss_fn=loss_fn, val_loader=val_loader,
                       device=device, loss_scale=loss_scale, optimizer_kwargs=optimizer_kwargs,
                       progress=progress and rank == 0, seed=seed, grad_clip=grad_clip,
                       callback=after_step)
    finally:
        del ddp                                    # no DDP module may outlive the job
    divergence = replica_divergence(model)
    kept = len(sampler) * world
    return DistributedTrainResult(
        model=model, history=result.history, val_history=result.val_history,
        precision=result.precision, seconds=result.seconds, stopped_early=result.stopped_early,
        rank=rank, world_size=world, global_batch_size=world * k * b, samples_per_epoch=kept,
        dropped_per_epoch=max(n - kept, 0), padded_per_epoch=max(kept - n, 0),
        comm=list(counter.steps) if counter is not None else [], replica_divergence=divergence)


# --------------------------------------------------------------------------- experiments
#: The sync rules :func:`sync_variants_job` compares: name -> what the loop does.
SYNC_VARIANTS = {
    "no_sync": "forward and backward of micro-steps 0..K-2 inside ddp.no_sync()",
    "flag_at_backward": "ddp.require_backward_grad_sync = (i == K-1) set between forward and "
                        "backward (build-nanogpt before PR #30)",
    "sync_first": "no_sync() unless i % K == 0: syncs the first micro-step, not the last "
                  "(FunASR before PR #3472)",
    "every_micro_step": "no no_sync at all: every backward all-reduces",
}


def _micro_batch(rank: int, step: int, micro: int, size: int, features: int, classes: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible micro-batch that any rank can regenerate (for the oracle)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step * 101 + micro)
    return (torch.randn(size, features, generator=gen),
            torch.randint(classes, (size,), generator=gen))


def sync_variants_job(accumulation_steps: int = 4, optimizer_steps: int = 2,
                      micro_batch_size: int = 8, seed: int = 0) -> dict:
    """Run each rule of :data:`SYNC_VARIANTS` on real DDP replicas; measure what it did.

    For every variant: the same initial MLP (64-32-10), ``optimizer_steps``
    SGD steps of K micro-batches per rank (loss weight 1/K); a
    :class:`~course_lib.distributed.hooks.CommCounter` records which
    micro-steps all-reduced. Oracle: a plain copy of the initial model
    back-propagates the mean loss over all ranks' micro-batches of step 0
    (every rank regenerates them), giving the exact large-batch gradient.

    Returns:
        dict: per variant ``{"synced_micro_steps": [[i, ...] per step],
        "all_reduces_per_step": [...], "grad_error": max |step-0 gradient -
        oracle| on this rank, "replica_divergence": after the last step}``,
        plus ``"rank"`` and ``"world_size"``.
    """
    k = validate.positive_int("accumulation_steps", accumulation_steps)
    steps = validate.positive_int("optimizer_steps", optimizer_steps)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _this_device()
    features, classes = 64, 10
    torch.manual_seed(seed)
    from course_lib.models import MLP
    base = MLP(in_features=features, hidden=(32,), num_classes=classes)

    oracle = copy.deepcopy(base)
    batches = [_micro_batch(r, 0, i, micro_batch_size, features, classes, seed)
               for r in range(world) for i in range(k)]
    x_all, y_all = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    nn.functional.cross_entropy(oracle(x_all), y_all).backward()
    exact = torch.cat([p.grad.reshape(-1) for p in oracle.parameters()])

    out: dict = {"rank": rank, "world_size": world}
    for variant in SYNC_VARIANTS:
        counter = CommCounter()
        ddp = _wrap(copy.deepcopy(base), device)
        ddp.register_comm_hook(counter, counting_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        synced, grad_error = [], None
        for step in range(steps):
            synced.append([])
            for i in range(k):
                x, y = (t.to(device) for t in
                        _micro_batch(rank, step, i, micro_batch_size, features, classes, seed))
                calls = counter.current.hook_calls
                if variant == "no_sync":
                    with accumulation_context(ddp, i, k):
                        (nn.functional.cross_entropy(ddp(x), y) / k).backward()
                elif variant == "flag_at_backward":
                    loss = nn.functional.cross_entropy(ddp(x), y) / k
                    ddp.require_backward_grad_sync = i == k - 1
                    loss.backward()
                elif variant == "sync_first":
                    with (ddp.no_sync() if i % k != 0 else contextlib.nullcontext()):
                        (nn.functional.cross_entropy(ddp(x), y) / k).backward()
                else:
                    (nn.functional.cross_entropy(ddp(x), y) / k).backward()
                if counter.current.hook_calls > calls:
                    synced[-1].append(i)
            if step == 0:
                got = torch.cat([p.grad.reshape(-1) for p in ddp.module.parameters()]).cpu()
                grad_error = float((got - exact).abs().max())
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter.end_step()
        ddp.require_backward_grad_sync = True
        out[variant] = {"synced_micro_steps": synced,
                        "all_reduces_per_step": [s.hook_calls for s in counter.steps],
                        "grad_error": grad_error,
                        "replica_divergence": replica_divergence(ddp)}
        del ddp, opt
    return out


def uneven_inputs_job(use_join: bool, batches_per_rank: Sequence[int] = (3, 2),
                      micro_batch_size: int = 4, seed: int = 0) -> dict:
    """Ranks with different numbers of batches: plain DDP waits forever; ``Join`` finishes.

    Rank r trains on ``batches_per_rank[r]`` batches (one optimizer step
    each), as happens when data is split into unequal shards by hand. Without
    ``Join`` the rank with more batches blocks in an all-reduce no other rank
    joins (PyMarlin issue #80): launch this with a short ``timeout`` to see
    :class:`~course_lib.distributed.errors.LaunchTimeoutError` and the
    waiting rank's stack. With ``use_join=True`` the loop runs inside
    ``torch.distributed.algorithms.Join([ddp])``: a rank that ran out of data
    shadows the others' all-reduces (contributing zeros), so every rank
    finishes.

    Returns:
        dict: ``batches`` (this rank's), ``steps_done``,
        ``replica_divergence`` after the loop.
    """
    from torch.distributed.algorithms import Join

    rank = dist.get_rank()
    mine = validate.positive_int("batches", list(batches_per_rank)[rank])
    torch.manual_seed(seed)
    from course_lib.models import MLP
    device = _this_device()
    ddp = _wrap(MLP(in_features=64, hidden=(32,), num_classes=10), device)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    done = 0
    with (Join([ddp]) if use_join else contextlib.nullcontext()):
        for step in range(mine):
            x, y = (t.to(device) for t in _micro_batch(rank, step, 0, micro_batch_size, 64, 10, seed))
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
            done += 1
    out = {"batches": mine, "steps_done": done, "replica_divergence": replica_divergence(ddp)}
    del ddp, opt
    return out
