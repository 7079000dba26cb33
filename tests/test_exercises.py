"""Every exercise: the reference passes, the learner stub is 'not implemented', every declared
known-correct alternative passes on every one of many fresh seeds, and every declared mistake
fails (on every seed, or at least once for mistakes only random cases can catch)."""
import random

import pytest

from course_lib.grading import Status, all_exercises, check
from course_lib.master import unscale_to_fp32

SEEDS = 50
EXERCISES = all_exercises()


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


def _fresh_seeds(n=SEEDS):
    rng = random.SystemRandom()
    return [rng.randrange(2 ** 32) for _ in range(n)]


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_reference_passes_and_stub_is_not_implemented(exercise_id):
    ex = EXERCISES[exercise_id]
    assert check(exercise_id, ex.reference, quiet=True, record=False).status is Status.PASSED
    grade = check(exercise_id, _stub, quiet=True, record=False)
    assert grade.status is Status.NOT_IMPLEMENTED and grade.points == 0


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_every_exercise_declares_alternatives_and_mistakes(exercise_id):
    ex = EXERCISES[exercise_id]
    assert len(ex.alternatives) >= 2, f"{exercise_id}: declare at least two known-correct alternatives"
    assert len(ex.mistakes) >= 2, f"{exercise_id}: declare the mistakes learners make"
    assert all(a.why for a in ex.alternatives) and all(m.why for m in ex.mistakes)


ALTERNATIVES = [(i, a) for i, ex in EXERCISES.items() for a in ex.alternatives]
MISTAKES = [(i, m) for i, ex in EXERCISES.items() for m in ex.mistakes]


@pytest.mark.parametrize("exercise_id, alternative", ALTERNATIVES,
                         ids=[f"{i}-{a.fn.__name__}" for i, a in ALTERNATIVES])
def test_known_correct_alternatives_pass_on_every_seed(exercise_id, alternative):
    for seed in _fresh_seeds(EXERCISES[exercise_id].test_seeds):
        grade = check(exercise_id, alternative.fn, quiet=True, record=False, seed=seed)
        assert grade.status is Status.PASSED, f"{alternative.why}:\n{grade.report()}"


@pytest.mark.parametrize("exercise_id, mistake", MISTAKES,
                         ids=[f"{i}-{m.fn.__name__}" for i, m in MISTAKES])
def test_known_mistakes_fail(exercise_id, mistake):
    grades = [check(exercise_id, mistake.fn, quiet=True, record=False, seed=s)
              for s in _fresh_seeds(EXERCISES[exercise_id].test_seeds)]
    caught = [g for g in grades if g.status is not Status.PASSED]
    if mistake.always:
        assert len(caught) == len(grades), (f"{mistake.why}: passed on seed "
                                            f"{next(g.seed for g in grades if g.passed)}")
    else:
        assert caught, f"{mistake.why}: never caught in {len(grades)} seeds"
    for g in caught:
        assert g.points == 0 and g.messages
        assert g.status in (Status.FAILED, Status.ERROR), g.report()


def test_forbidden_cast_is_named_in_the_report():
    bf16_cast = next(m.fn for m in EXERCISES["01.round_to_bf16"].mistakes if "casts" in m.why)
    report = check("01.round_to_bf16", bf16_cast, quiet=True, record=False).report()
    assert "torch.bfloat16" in report and "`to`" in report


def _step_mutates_inputs(params16, grads16, masters, lr, scale):
    grads32, found_inf = unscale_to_fp32(grads16, scale)
    if found_inf:
        return params16, masters, False
    for m, g, p in zip(masters, grads32, params16):
        m.sub_(lr * g)
        p.copy_(m)
    return params16, masters, True


def test_learner_mutation_cannot_affect_the_reference():
    # The reference and the learner get independent deep copies of each case's inputs, so a
    # learner that mutates its inputs cannot change what it is compared against; its returned
    # values are judged as they are (here they are right).
    assert check("03.master_sgd_step", _step_mutates_inputs, quiet=True, record=False).passed


def test_same_seed_replays_the_same_cases():
    wrong = next(m.fn for m in EXERCISES["02.smallest_loss_scale"].mistakes if "exact zeros" in m.why)
    first = check("02.smallest_loss_scale", wrong, quiet=True, record=False)
    again = check("02.smallest_loss_scale", wrong, quiet=True, record=False, seed=first.seed)
    assert first.seed is not None and again.report() == first.report()
    assert f"seed={first.seed}" in first.report()
