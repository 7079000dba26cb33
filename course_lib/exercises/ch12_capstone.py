"""Chapter 12 exercises: a precision plan graded by its properties; an honest speed-up summary
(notebooks/12_capstone.ipynb).

``12.capstone_plan`` is graded on what a good recipe *does*, not on one
number: each case is the grading budget (:data:`course_lib.capstone.GRADING_BUDGET`)
with a seed and an interruption step drawn from the check's rng; the
learner's plan is trained there by :func:`course_lib.capstone.evaluate_plan`
and must reach the loss target, corrupt no step and resume bit for bit. The
expected value is never shown (it would be the course's own plan): ``observe``
pairs each returned plan with its case's budget, and the comparator evaluates
only the learner's. Several *different* correct recipes pass (the alternatives)
and broken ones fail (the mistakes), each for the property it breaks.

``12.speedup_summary`` is graded on made-up step timings, so no timing noise
enters the grade: medians, interquartile ranges, the speed-up and a verdict
that claims a difference only when the interquartile ranges do not overlap.
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import torch

from course_lib.capstone import GRADING_BUDGET, CapstoneBudget, CapstonePlan, evaluate_plan, speedup_summary
from course_lib.grading.compare import same, short
from course_lib.grading.registry import Alternative, Case, Exercise, Mistake
from course_lib.recipes import Recipe


# ----------------------------------------------------------------------------- 12.capstone_plan
def reference_make_plan(budget: CapstoneBudget) -> CapstonePlan:
    """The course's plan: BF16 autocast (FP32 range, no scaler, FP32 weights), AdamW, clipped.

    On a CUDA GPU without BF16 support (compute capability below 8.0) the same
    plan in FP16 autocast with a dynamic ``GradScaler``.
    """
    if budget.device == "cuda" and not torch.cuda.is_bf16_supported():
        return CapstonePlan("amp_fp16", optimizer="adamw", lr=5e-3, loss_scale="dynamic", grad_clip=1.0)
    return CapstonePlan("amp_bf16", optimizer="adamw", lr=5e-3, grad_clip=1.0)


def _plan_cases(rng):
    for i in range(2):
        seed = rng.randrange(2 ** 31)
        k = rng.randint(1, GRADING_BUDGET.steps - 1)
        budget = dataclasses.replace(GRADING_BUDGET, seed=seed, interrupt_at=k)
        yield Case(f"grading budget, seed {seed}, interrupted after step {k}", (budget,))


class _Submitted:
    """A returned plan paired with its case's budget; the same short text for the reference and
    the learner, so a report never shows the course's plan."""

    def __init__(self, budget, plan):
        self.budget, self.plan = budget, plan

    def __repr__(self) -> str:
        return "the plan trained on this case's budget"


def _observe_plan(args, kwargs, returned):
    return _Submitted(args[0], returned)


def _compare_plan(expected, got) -> str | None:
    plan = got.plan
    if not isinstance(plan, CapstonePlan):
        return (f"{got!r}: make_plan must return a course_lib.capstone.CapstonePlan, got "
                f"{type(plan).__name__}: {short(plan)}")
    try:
        report = evaluate_plan(plan, budget=got.budget, fail_fast=True)
    except Exception as exc:  # the plan does not fit the budget (accum_steps), or training raised
        return f"{got!r} ({plan.describe()}) could not run: {type(exc).__name__}: {exc}"
    if report.passed:
        return None
    return f"{got!r} ({plan.describe()}) failed: {report.reason}"


def _plan_bf16_autocast(budget):
    return CapstonePlan("amp_bf16", optimizer="adamw", lr=1e-2)


def _plan_manual_mixed_dynamic(budget):
    return CapstonePlan("mixed_manual", optimizer="adam", lr=5e-3, loss_scale="dynamic", growth_interval=50)


def _plan_fp16_autocast_accumulation(budget):
    return CapstonePlan("amp_fp16", optimizer="adamw", lr=1e-2, accum_steps=4, loss_scale="dynamic",
                        init_scale=2.0 ** 12)


def _plan_fp32_clipped(budget):
    return CapstonePlan("fp32", optimizer="adam", lr=1e-2, grad_clip=1.0)


_BF16_MASTERS = Recipe("bf16_masters", "bf16 model + FP32 master weights, loss in FP32 (chapter 06's fix)",
                       param_dtype=torch.bfloat16, input_dtype=torch.bfloat16, loss_in_fp32=True,
                       stepper="master", chapter="06")


def _plan_bf16_with_masters(budget):
    return CapstonePlan(_BF16_MASTERS, optimizer="adamw", lr=1e-2)


def _plan_fp16_naive_adam(budget):
    return CapstonePlan("fp16_naive", optimizer="adam", lr=3e-3)


def _plan_huge_static_scale(budget):
    return CapstonePlan("mixed_manual", optimizer="adam", lr=3e-3, loss_scale=2.0 ** 40)


def _plan_pure_bf16_tiny_lr(budget):
    return CapstonePlan("bf16_pure", optimizer="adam", lr=1e-4)


def _plan_diverging_lr(budget):
    return CapstonePlan("fp32", optimizer="adam", lr=1.0)


# ----------------------------------------------------------------------------- 12.speedup_summary
def _lognormal(rng, center, n, spread=0.03):
    return [center * rng.lognormvariate(0.0, spread) for _ in range(n)]


def _speedup_cases(rng):
    def step():
        return rng.uniform(5e-3, 0.2)

    t = step()
    yield Case("the plan is clearly faster (BF16 on hardware that has it)",
               (_lognormal(rng, t, 9), _lognormal(rng, t / rng.uniform(1.5, 3.0), 9)))
    yield Case("the plan is clearly slower (FP16 emulated on a CPU)",
               (_lognormal(rng, t, 7), _lognormal(rng, t * rng.uniform(3.0, 20.0), 7)))
    base = [t * (0.8 + 0.4 * i / 7) * rng.uniform(0.99, 1.01) for i in range(8)]  # Q1 ~ 0.9t, Q3 ~ 1.1t
    shifted = [x * rng.uniform(0.94, 0.96) for x in base]  # medians 4-6% apart, the spreads overlap
    rng.shuffle(base)
    rng.shuffle(shifted)
    yield Case("overlapping spreads: the medians differ, the data do not support a claim", (base, shifted))
    noisy = _lognormal(rng, t, 7)
    noisy[rng.randrange(7)] *= 40.0  # another process took the core for one step
    yield Case("one FP32 step was interrupted (40x slower)", (noisy, _lognormal(rng, t / 1.3, 7)))
    yield Case("edge: an even number of samples (the median averages the middle two)",
               (_lognormal(rng, t, 6), _lognormal(rng, t / 1.5, 4)))
    yield Case("edge: a single sample each", ([t], [t * rng.uniform(0.4, 0.8)]))
    same_samples = _lognormal(rng, t, 5)
    yield Case("edge: identical timings", (list(same_samples), list(reversed(same_samples))))
    yield Case("random case", (_lognormal(rng, t, rng.randint(3, 15), spread=rng.uniform(0.01, 0.3)),
                               _lognormal(rng, t * rng.uniform(0.3, 3.0), rng.randint(3, 15),
                                          spread=rng.uniform(0.01, 0.3))))


def _verdict(b1, b3, c1, c3):
    return "faster" if c3 < b1 else "slower" if c1 > b3 else "no clear difference"


def _speedup_numpy(baseline_s, candidate_s):
    b1, bm, b3 = np.percentile(baseline_s, [25, 50, 75])  # linear interpolation = method="inclusive"
    c1, cm, c3 = np.percentile(candidate_s, [25, 50, 75])
    return {"baseline_median_s": float(bm), "candidate_median_s": float(cm), "baseline_iqr_s": float(b3 - b1),
            "candidate_iqr_s": float(c3 - c1), "speedup": float(bm / cm), "verdict": _verdict(b1, b3, c1, c3)}


def _speedup_torch(baseline_s, candidate_s):
    q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    b1, bm, b3 = torch.quantile(torch.tensor(baseline_s, dtype=torch.float64), q).tolist()
    c1, cm, c3 = torch.quantile(torch.tensor(candidate_s, dtype=torch.float64), q).tolist()
    return {"baseline_median_s": bm, "candidate_median_s": cm, "baseline_iqr_s": b3 - b1,
            "candidate_iqr_s": c3 - c1, "speedup": bm / cm, "verdict": _verdict(b1, b3, c1, c3)}


def _by_hand_quartiles(xs):
    xs = sorted(xs)

    def at(p):  # linear interpolation between order statistics at position p * (n - 1)
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def _speedup_by_hand(baseline_s, candidate_s):
    b1, bm, b3 = _by_hand_quartiles(baseline_s)
    c1, cm, c3 = _by_hand_quartiles(candidate_s)
    return {"baseline_median_s": bm, "candidate_median_s": cm, "baseline_iqr_s": b3 - b1,
            "candidate_iqr_s": c3 - c1, "speedup": bm / cm, "verdict": _verdict(b1, b3, c1, c3)}


def _speedup_inverted(baseline_s, candidate_s):
    s = speedup_summary(baseline_s, candidate_s)
    return {**s, "speedup": s["candidate_median_s"] / s["baseline_median_s"]}


def _speedup_means(baseline_s, candidate_s):
    s = speedup_summary(baseline_s, candidate_s)
    bm, cm = statistics.fmean(baseline_s), statistics.fmean(candidate_s)
    return {**s, "baseline_median_s": bm, "candidate_median_s": cm, "speedup": bm / cm}


def _verdict_from_ratio(baseline_s, candidate_s):
    s = speedup_summary(baseline_s, candidate_s)
    verdict = "faster" if s["speedup"] > 1 else "slower" if s["speedup"] < 1 else "no clear difference"
    return {**s, "verdict": verdict}


def _exclusive_quartiles(baseline_s, candidate_s):
    def q(xs):  # statistics.quantiles' default method is "exclusive"
        q1, _, q3 = statistics.quantiles(xs, n=4)
        return q1, statistics.median(xs), q3

    (b1, bm, b3), (c1, cm, c3) = q(baseline_s), q(candidate_s)
    return {"baseline_median_s": bm, "candidate_median_s": cm, "baseline_iqr_s": b3 - b1,
            "candidate_iqr_s": c3 - c1, "speedup": bm / cm, "verdict": _verdict(b1, b3, c1, c3)}


def _range_not_iqr(baseline_s, candidate_s):
    s = speedup_summary(baseline_s, candidate_s)
    return {**s, "baseline_iqr_s": max(baseline_s) - min(baseline_s),
            "candidate_iqr_s": max(candidate_s) - min(candidate_s)}


def _lower_median(baseline_s, candidate_s):
    s = speedup_summary(baseline_s, candidate_s)
    bm = torch.tensor(baseline_s, dtype=torch.float64).median().item()  # lower middle for even counts
    cm = torch.tensor(candidate_s, dtype=torch.float64).median().item()
    return {**s, "baseline_median_s": bm, "candidate_median_s": cm, "speedup": bm / cm}


EXERCISES = [
    Exercise(
        id="12.capstone_plan",
        title="Choose a precision plan that reaches the loss, corrupts no step and resumes bit for bit",
        points=4,
        reference=reference_make_plan,
        cases=_plan_cases,
        observe=_observe_plan,
        compare=_compare_plan,
        hint="start from what your hardware does natively (chapter 00's report) and what each format "
             "needs: FP16 needs a loss scaler and FP32 weights for the optimizer (chapters 03-05), BF16 "
             "needs no scaler but pure-BF16 weights lose small updates (chapter 06); an Adam learning rate "
             "of a few 1e-3 to 1e-2 suits a model this small and a run this short. Run "
             "evaluate_plan(make_plan(GRADING_BUDGET)) to see every property with its numbers",
        time_limit=10.0,
        alternatives=(
            Alternative(_plan_bf16_autocast, "BF16 autocast, AdamW 1e-2, no clipping"),
            Alternative(_plan_manual_mixed_dynamic,
                        "chapter 03-04's manual mixed precision: FP16 model, FP32 masters, dynamic scaling"),
            Alternative(_plan_fp16_autocast_accumulation,
                        "FP16 autocast + GradScaler starting at 2**12, the batch in 4 accumulated micro-batches"),
            Alternative(_plan_fp32_clipped, "plain FP32 with gradient clipping (slow, but correct)"),
            Alternative(_plan_bf16_with_masters, "a custom Recipe: BF16 model with FP32 master weights"),
        ),
        mistakes=(
            Mistake(_plan_fp16_naive_adam,
                    "the tutorial's FP16 loop with Adam: eps rounds to 0 in FP16, NaN from the first update "
                    "(fails 'no corrupted step')"),
            Mistake(_plan_huge_static_scale,
                    "a static loss scale of 2**40: every step overflows and is skipped (fails 'loss reached')"),
            Mistake(_plan_pure_bf16_tiny_lr,
                    "pure BF16 at lr=1e-4: 60 steps of updates too small to move the loss off ln V, some of "
                    "them rounded away in BF16 (fails 'loss reached')"),
            Mistake(_plan_diverging_lr, "Adam at lr=1.0: the loss diverges (fails 'loss reached')"),
        ),
        test_seeds=3,
        test_seeds_why="each case trains the plan twice on the grading budget (0.5-2 s on one CPU "
                       "thread, more for recipes that compute in FP16, which a CPU emulates); 3 fresh "
                       "seeds of 2 cases per alternative keep tests/test_exercises.py -k 12. near 40 s, "
                       "and the separation is wide: correct plans end 0.2-0.5 nats below the target "
                       "on every seed measured, broken ones more than a nat above it or non-finite",
    ),
    Exercise(
        id="12.speedup_summary",
        title="From raw step timings to medians, spreads, a speed-up and an honest verdict",
        points=2,
        reference=speedup_summary,
        cases=_speedup_cases,
        compare=same(rtol=1e-9),
        hint="statistics.median for the medians; quartiles with statistics.quantiles(xs, n=4, "
             "method='inclusive') (the default method is 'exclusive'); speedup = baseline median / "
             "candidate median; claim 'faster' or 'slower' only when the two interquartile ranges "
             "do not overlap",
        alternatives=(
            Alternative(_speedup_numpy, "numpy.percentile (linear interpolation)"),
            Alternative(_speedup_torch, "torch.quantile in float64"),
            Alternative(_speedup_by_hand, "sorted samples, interpolation written by hand"),
        ),
        mistakes=(
            Mistake(_speedup_inverted, "speed-up upside down: candidate / baseline"),
            Mistake(_speedup_means, "means instead of medians: one interrupted step moves them"),
            Mistake(_verdict_from_ratio, "verdict from the ratio alone, even when the spreads overlap"),
            Mistake(_exclusive_quartiles, "statistics.quantiles' default method ('exclusive')"),
            Mistake(_range_not_iqr, "max - min instead of the interquartile range"),
            Mistake(_lower_median, "torch.median: the lower middle value for an even count"),
        ),
    ),
]
