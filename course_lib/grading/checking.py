"""``check(exercise_id, obj)``: grade one exercise inside a notebook.

Algorithm: look the exercise up in the registry; draw a fresh seed; build its
cases (edge cases plus randomized inputs); for each case call the learner's
function and the reference on independent copies of the inputs (deep copies,
or fresh ``Case.build()`` results), the learner's call under a time limit and
with its printing captured; compare what each returned (or, for exercises with
``observe``, what each returned and did to its inputs) with the exercise's
comparator. The first case that does not pass decides the
status; points are all or nothing.

Statuses: ``passed``, ``failed`` (wrong answer), ``error`` (the learner's code
raised, or returned something unusable), ``timeout``, ``not implemented``
(the stub's ``NotImplementedError``), and, from the command-line grader only,
``not run``.

``check`` never raises and never hangs. It prints a short report and returns a
:class:`course_lib.grading.grade.Grade`. When the environment variable ``COURSE_LIB_RESULTS``
names a file (the command-line grader sets it), the result is also appended
there as one JSON line. Introduced in chapter 00 (notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
import traceback

from .compare import short
from .grade import Grade, Status
from .guards import ForbiddenDtype, forbid_dtypes
from .registry import REGISTRY, Registry
from .timelimit import CheckTimeout, call_with_time_limit

RESULTS_ENV = "COURSE_LIB_RESULTS"


def check(exercise_id: str, obj, *, record: bool = True, quiet: bool = False,
          seed: int | None = None, registry: Registry | None = None) -> Grade:
    """Grade ``obj`` (usually your function) against exercise ``exercise_id``.

    Prints a short report and returns a :class:`Grade`; never raises.
    ``record=False`` keeps the result out of the command-line grader's report
    (for demonstrations); ``seed`` fixes the random cases (default: a fresh
    one, shown in the report of a failure so you can replay it);
    ``registry`` is the course's own by default.

    Example::

        check("00.parameter_bytes", parameter_bytes)
    """
    try:
        grade = _run(exercise_id, obj, seed, registry or REGISTRY)
    except BaseException as exc:  # the grader itself failed: still report, never raise
        grade = Grade(str(exercise_id), Status.ERROR, 0, seed=seed,
                      messages=[f"internal grader error: {type(exc).__name__}: {exc}",
                                "please report this to the course maintainers"])
    if not quiet:
        print(grade.report())
    if record:
        _record(grade)
    return grade


def _record(grade: Grade) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(grade.to_json()) + "\n")
    except OSError as exc:
        print(f"(could not record the result for the grader: {exc})", file=sys.stderr)


def _run(exercise_id, obj, seed, registry: Registry) -> Grade:
    try:
        ex = registry.get(exercise_id)
    except KeyError as exc:
        return Grade(str(exercise_id), Status.ERROR, 0, messages=[str(exc.args[0])])
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)

    def result(status, passed, total, *messages):
        return Grade(ex.id, status, ex.points, passed, total, list(messages), seed, ex.title)

    hint = [f"hint: {ex.hint}"] if ex.hint else []
    if not callable(obj):
        return result(Status.ERROR, 0, 0,
                      f"expected a function to test, got {type(obj).__name__}: {short(obj)}",
                      "pass the function itself, e.g. check(id, my_function), not its result")
    cases = list(ex.cases(random.Random(seed)))
    total = len(cases)
    for done, case in enumerate(cases):
        args, kwargs = case.inputs()
        expected = ex.reference(*args, **kwargs)
        if ex.observe is not None:
            expected = ex.observe(args, kwargs, expected)
        args, kwargs = case.inputs()
        outcome, got, detail = _call_learner(obj, args, kwargs, ex.time_limit, ex.forbidden_dtypes)
        # described from a fresh copy of the inputs, only when a report needs it
        where = (lambda c=case, n=done: f"case {n + 1}/{total} ({c.label}), input {_describe(*c.inputs())}")
        if outcome == "ok" and ex.observe is not None:
            try:
                got = ex.observe(args, kwargs, got)
            except Exception as exc:  # the learner's function left something unusable behind
                outcome, detail = "error", f"{type(exc).__name__}: {exc} (after your function returned)"
        if outcome == "not implemented":
            return result(Status.NOT_IMPLEMENTED, done, total, f"not implemented yet ({detail})")
        if outcome == "timeout":
            return result(Status.TIMEOUT, done, total, f"{where()}: {detail}",
                          f"each case must finish within {ex.time_limit:g} s; look for a loop that never ends")
        if outcome == "forbidden":
            return result(Status.FAILED, done, total, f"{where()}: {detail}", *hint)
        if outcome == "error":
            return result(Status.ERROR, done, total, f"{where()}: your code raised {detail}", *hint)
        reason = ex.compare(expected, got)
        if reason:
            if not case.show_expected:
                reason = "wrong answer (the expected value is not shown for this case)"
            lines = [where(), f"  {reason}"]
            if case.show_expected and short(expected) not in reason:
                lines.append(f"  expected: {short(expected)}")
            if short(got) not in reason:
                lines.append(f"  got:      {short(got)}")
            return result(Status.FAILED, done, total, *lines, *hint)
    return result(Status.PASSED, total, total)


def _describe(args: tuple, kwargs: dict) -> str:
    parts = [short(a, 80) for a in args]
    parts += [f"{k}={short(v, 80)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def _call_learner(fn, args: tuple, kwargs: dict, time_limit: float, forbidden=()):
    """Run the learner's function on one case's inputs: (outcome, value, detail)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), forbid_dtypes(forbidden):
            got = call_with_time_limit(fn, time_limit, *args, **kwargs)
    except NotImplementedError as exc:
        return "not implemented", None, str(exc) or "NotImplementedError"
    except ForbiddenDtype as exc:
        return "forbidden", None, str(exc)
    except CheckTimeout as exc:
        return "timeout", None, str(exc)
    except SystemExit as exc:
        return "error", None, f"SystemExit({exc.code!r}): do not call sys.exit() in an exercise"
    except KeyboardInterrupt:  # Jupyter's stop button, or the grader's cell time limit
        return "timeout", None, "interrupted before it finished (the cell was stopped)"
    except BaseException as exc:
        return "error", None, _brief_traceback(exc)
    # Whatever the function printed (possibly megabytes) is dropped: the report stays short.
    return "ok", got, None


def _brief_traceback(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    learner = [f for f in frames if "course_lib" not in f.filename]
    line = ""
    if learner:
        f = learner[-1]
        line = f" (in {f.name}, line {f.lineno}: {f.line})" if f.line else f" (in {f.name}, line {f.lineno})"
    return f"{type(exc).__name__}: {exc}{line}"
