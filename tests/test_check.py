"""check(): statuses, reports, time limits and recording, on real chapter exercises
and on exercises registered here (chapter 99, which no notebook uses)."""
import json
import sys
import time

import pytest
import torch

from course_lib.grading import Case, Exercise, Registry, Status, check as course_check, exact
from course_lib.grading.checking import RESULTS_ENV
from course_lib.grading.timelimit import CheckTimeout, call_with_time_limit
from course_lib.memory import parameter_bytes, training_state_bytes


def _double(x):
    return 2 * x


def _cases(rng):
    yield Case("edge: zero", (0,))
    for _ in range(5):
        yield Case("random", (rng.randint(-1000, 1000),))


# A registry of this test module's own: nothing leaks into the course's registry.
LOCAL = Registry([Exercise(id="99.double", title="double it", points=3, reference=_double, cases=_cases,
                           compare=exact, hint="multiply by two", time_limit=0.5),
                  Exercise(id="99.broken", title="broken reference", points=1,
                           reference=lambda x: 1 / 0, cases=_cases, compare=exact)])


def check(exercise_id, obj, **kwargs):
    """check() against the local registry for chapter 99, the course's otherwise."""
    if exercise_id.startswith("99."):
        kwargs["registry"] = LOCAL
    return course_check(exercise_id, obj, **kwargs)


def test_reference_passes_with_full_points(capsys):
    r = check("99.double", lambda x: x + x)
    assert r.status == "passed" and r.points == 3 == r.max_points
    assert r.passed_cases == r.total_cases == 6
    assert "[PASSED] 99.double" in capsys.readouterr().out


def test_hard_coded_answer_fails():
    # Right on the edge case, wrong on the random ones.
    r = check("99.double", lambda x: 0, seed=1)
    assert r.status == "failed" and r.points == 0 and r.passed_cases == 1
    text = r.report()
    assert "case 2/6 (random)" in text and "hint: multiply by two" in text
    assert "seed 1" in text  # the seed is in the report, to replay the same cases


def test_random_cases_change_between_calls():
    seeds = {check("99.double", _double, quiet=True).seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize("fn, status, words", [
    (lambda x: (_ for _ in ()).throw(NotImplementedError("Exercise 99.double: replace")),
     "not implemented", "not implemented yet"),
    (lambda x: 1 / 0, "error", "ZeroDivisionError"),
    (lambda x: sys.exit(3), "error", "SystemExit"),
    (lambda x: str(2 * x), "failed", "expected a number, got str"),
])
def test_statuses(fn, status, words):
    r = check("99.double", fn, quiet=True)
    assert r.status == status, r.report()
    assert isinstance(r.status, Status)
    assert r.points == 0
    assert words in r.report()


def test_infinite_loop_times_out_even_when_it_catches_exceptions():
    # CheckTimeout derives from BaseException: `except Exception` does not swallow it.
    def stubborn(x):
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass

    start = time.monotonic()
    r = check("99.double", stubborn, quiet=True)
    assert r.status == "timeout" and "0.5 s" in r.report()
    assert time.monotonic() - start < 5


def test_printing_is_not_in_the_report(capsys):
    def noisy(x):
        print("x" * 1_000_000)
        return 2 * x

    r = check("99.double", noisy)
    out = capsys.readouterr().out
    assert r.passed and len(out) < 2000


def test_learner_cannot_corrupt_reference_inputs():
    def mutating(model, dtype):
        n = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            p.data = p.data[:1]
        return n * torch.empty((), dtype=dtype).element_size()

    assert check("00.parameter_bytes", mutating, quiet=True).passed


def test_unknown_id_and_non_callable_never_raise():
    r = check("00.no_such_exercise", _double, quiet=True)
    assert r.status == "error" and "00.parameter_bytes" in r.messages[0]
    r = check("99.double", 42, quiet=True)
    assert r.status == "error" and "expected a function" in r.messages[0]


def test_internal_grader_error_is_reported_not_raised():
    r = check("99.broken", _double, quiet=True)
    assert r.status == "error" and "internal grader error" in r.messages[0]


def test_results_are_recorded_for_the_grader(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(log))
    check("99.double", _double, quiet=True)
    check("99.double", lambda x: 0, quiet=True)
    check("99.double", _double, quiet=True, record=False)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["passed", "failed"]
    assert lines[0]["exercise"] == "99.double" and lines[0]["points"] == 3


def test_result_display_does_not_repeat_the_report():
    r = check("99.double", _double, quiet=True)
    assert r._ipython_display_() is None
    assert "99.double" in repr(r) and str(r) == r.report()


def test_chapter00_exercises_pass_on_reference_and_fail_on_wrong_answers():
    assert check("00.parameter_bytes", parameter_bytes, quiet=True).passed
    assert check("00.training_state_bytes", training_state_bytes, quiet=True).passed
    # Classic mistakes: 2 bytes for everything; "mixed precision halves memory".
    wrong = lambda model, dtype: sum(p.numel() for p in model.parameters()) * 2  # noqa: E731
    assert check("00.parameter_bytes", wrong, quiet=True).status == "failed"

    def halves(n, recipe, optimizer="adam"):
        bill = training_state_bytes(n, recipe, optimizer)
        if recipe == "mixed_manual":
            bill = {k: v // 2 for k, v in bill.items()}
        return bill

    assert check("00.training_state_bytes", halves, quiet=True).status == "failed"


def test_time_limit_helper_thread_fallback():
    import threading

    box = {}

    def worker():
        try:
            call_with_time_limit(time.sleep, 0.2, 5)
        except CheckTimeout as exc:
            box["exc"] = exc
        box["value"] = call_with_time_limit(lambda: 7, 1.0)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert isinstance(box.get("exc"), CheckTimeout) and box["value"] == 7
    with pytest.raises(ValueError, match="seconds must be > 0"):
        call_with_time_limit(time.sleep, 0, 1)


def test_test_exercises_do_not_leak_into_the_course_registry():
    from course_lib.grading import all_exercises

    assert not [i for i in all_exercises() if i.startswith("99.")]
    assert LOCAL.get("99.double").points == 3
    with pytest.raises(KeyError, match="known: 99.broken, 99.double"):
        LOCAL.get("99.nope")
