"""Chapter 07 exercises: which micro-steps synchronize; the loss weights of data parallelism
(notebooks/07_ddp_gradient_accumulation.ipynb).

Both answers are pure functions of small integers (no process group): the
rules that :func:`course_lib.distributed.training.train_ddp` follows, checked
against :func:`~course_lib.distributed.training.sync_schedule` and
:func:`~course_lib.distributed.training.loss_weights`.
"""
from __future__ import annotations

from fractions import Fraction

import torch

from course_lib.distributed.training import loss_weights, sync_schedule
from course_lib.grading.compare import same
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake


# --------------------------------------------------------------------------- 07.sync_schedule
def _schedule_cases(rng):
    k = rng.randint(2, 6)
    yield Case(f"edge: {3 * k} micro-batches, K={k} (complete groups)", (3 * k, k))
    k = rng.randint(3, 6)
    n = 2 * k + rng.randint(1, k - 1)
    yield Case(f"edge: {n} micro-batches, K={k}: the last group is incomplete", (n, k))
    yield Case("edge: K=1 (no accumulation)", (rng.randint(2, 9), 1))
    k = rng.randint(5, 9)
    yield Case(f"edge: fewer micro-batches than K={k} (one group)", (rng.randint(2, k - 1), k))
    yield Case("edge: a single micro-batch", (1, rng.randint(1, 4)))
    for _ in range(3):
        yield Case("random sizes", (rng.randint(1, 40), rng.randint(1, 9)))


def _compare_schedule(expected, got) -> str | None:
    try:
        flags = [bool(f) for f in got]
    except TypeError:
        return f"expected a list of bools, got {type(got).__name__}"
    if len(flags) != len(expected):
        return f"expected one flag per micro-batch ({len(expected)}), got {len(flags)}"
    for i, (e, g) in enumerate(zip(expected, flags)):
        if e != g:
            what = "must all-reduce" if e else "must not all-reduce (it runs inside no_sync())"
            return f"micro-batch {i} of {len(expected)}: its backward {what}; got {g}"
    return None


def _schedule_by_groups(num_micro_batches, accumulation_steps):
    flags = [False] * num_micro_batches
    for start in range(0, num_micro_batches, accumulation_steps):
        last = min(start + accumulation_steps, num_micro_batches) - 1   # the group's last
        flags[last] = True
    return flags


def _schedule_by_group_end(num_micro_batches, accumulation_steps):
    return [i == min((i // accumulation_steps + 1) * accumulation_steps, num_micro_batches) - 1
            for i in range(num_micro_batches)]


def _schedule_by_stride(num_micro_batches, accumulation_steps):
    flags = [False] * num_micro_batches
    for i in range(accumulation_steps - 1, num_micro_batches, accumulation_steps):
        flags[i] = True
    flags[-1] = True
    return flags


def _syncs_first(num_micro_batches, accumulation_steps):
    return [i % accumulation_steps == 0 for i in range(num_micro_batches)]   # FunASR PR #3472


def _forgets_last_group(num_micro_batches, accumulation_steps):
    return [(i + 1) % accumulation_steps == 0 for i in range(num_micro_batches)]   # the seed


def _syncs_always(num_micro_batches, accumulation_steps):
    return [True] * num_micro_batches


def _syncs_once_per_epoch(num_micro_batches, accumulation_steps):
    return [i == num_micro_batches - 1 for i in range(num_micro_batches)]


# --------------------------------------------------------------------------- 07.loss_weights
def _weights_cases(rng):
    b, k = rng.randint(2, 16), rng.randint(2, 4)
    yield Case(f"edge: 2 ranks x {k} equal micro-batches of {b}", ([[b] * k, [b] * k],))
    b = rng.randint(4, 16)
    short = rng.randint(1, b - 1)
    yield Case("edge: one process, a last group with a short micro-batch", ([[b, b, short]],))
    world = rng.randint(2, 4)
    yield Case(f"edge: {world} ranks, each with the same incomplete last group",
               ([[b, short]] * world,))
    big = rng.randint(2, 9)
    yield Case("edge: uneven shards: rank 0 holds one more target than rank 1",
               ([[big + 1], [big]],))
    yield Case("edge: ranks with different micro-batch sizes",
               ([[b, b], [b, rng.randint(1, b - 1)]],))
    for _ in range(3):
        world = rng.randint(1, 4)
        sizes = [[rng.randint(1, 16) for _ in range(rng.randint(1, 4))] for _ in range(world)]
        yield Case(f"random: {world} rank(s)", (sizes,))


_compare_weights = same(rtol=1e-12)


def _weights_with_fractions(sizes_per_rank):
    world = len(sizes_per_rank)
    total = sum(sum(row) for row in sizes_per_rank)
    return [[float(Fraction(world * n, total)) for n in row] for row in sizes_per_rank]


def _weights_with_tensors(sizes_per_rank):
    world = len(sizes_per_rank)
    rows = [torch.tensor(row, dtype=torch.float64) for row in sizes_per_rank]
    total = torch.stack([r.sum() for r in rows]).sum()
    return [(r / total * world).tolist() for r in rows]


def _weights_by_rank_share(sizes_per_rank):
    # train()'s n_i / N_r on each rank, times the rank's share of the step (W * N_r / T)
    world = len(sizes_per_rank)
    total = sum(sum(row) for row in sizes_per_rank)
    return [[(n / sum(row)) * (world * sum(row) / total) for n in row] for row in sizes_per_rank]


def _weights_one_over_k(sizes_per_rank):
    return [[1 / len(row)] * len(row) for row in sizes_per_rank]         # loss / accumulation_steps


def _weights_per_rank(sizes_per_rank):
    return [[n / sum(row) for n in row] for row in sizes_per_rank]


def _weights_forget_world(sizes_per_rank):
    total = sum(sum(row) for row in sizes_per_rank)
    return [[n / total for n in row] for row in sizes_per_rank]


EXERCISES = [
    Exercise(
        id="07.sync_schedule",
        title="Which micro-steps must all-reduce",
        points=2,
        reference=sync_schedule,
        cases=_schedule_cases,
        compare=_compare_schedule,
        hint="cut the epoch's micro-batches into groups of K (the last group keeps what is left); "
             "only the last micro-batch of each group synchronizes",
        alternatives=(
            Alternative(_schedule_by_groups, "walk the groups, mark each group's last index"),
            Alternative(_schedule_by_group_end, "i is the last index before its group's end "
                                                "min((i // K + 1) * K, n)"),
            Alternative(_schedule_by_stride, "every K-th micro-batch, then the epoch's last"),
        ),
        mistakes=(
            Mistake(_syncs_first, "i % K == 0: syncs the first micro-step, not the last "
                                  "(FunASR PR #3472)"),
            Mistake(_forgets_last_group, "(i + 1) % K == 0 only: the incomplete last group never "
                                         "syncs (the seed's loop)"),
            Mistake(_syncs_always, "never uses no_sync: K times the communication"),
            Mistake(_syncs_once_per_epoch, "syncs only the epoch's last micro-batch"),
        ),
    ),
    Exercise(
        id="07.loss_weights",
        title="Loss weights for W ranks x K micro-batches",
        points=3,
        reference=loss_weights,
        cases=_weights_cases,
        compare=_compare_weights,
        hint="DDP divides the sum of the ranks' gradients by W; the target is the mean over all "
             "targets of the step, so a micro-batch's weight is its share of all targets, "
             "times something that undoes DDP's division",
        alternatives=(
            Alternative(_weights_with_fractions, "exact fractions W*n/T, rounded once"),
            Alternative(_weights_with_tensors, "float64 tensors: n / T * W"),
            Alternative(_weights_by_rank_share, "n_i/N_r on each rank times the rank's share "
                                                "W*N_r/T"),
        ),
        mistakes=(
            Mistake(_weights_one_over_k, "1/K on every micro-batch (the seed's loss / "
                                         "accumulation_steps): wrong when sizes differ"),
            Mistake(_weights_per_rank, "n_i / N_r per rank: wrong when the ranks hold different "
                                       "numbers of targets"),
            Mistake(_weights_forget_world, "n_i / T: forgets that DDP averages over the ranks "
                                           "(W times too small)"),
        ),
    ),
]
