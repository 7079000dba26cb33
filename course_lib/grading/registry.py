"""The exercise registry: what each graded exercise checks, and for how many points.

An :class:`Exercise` bundles everything the grader needs to judge a learner's
answer, declared in one place (``course_lib/exercises/chNN_*.py``):

* ``id`` -- ``"NN.name"``, where ``NN`` is the chapter number;
* ``points`` -- what the exercise is worth (all or nothing);
* ``reference`` -- course_lib's own implementation, the oracle;
* ``cases(rng)`` -- a function that returns the inputs to try: edge cases plus
  randomized ones drawn from ``rng``, so a hard-coded answer fails;
* ``compare(expected, got)`` -- returns ``None`` when ``got`` is acceptable,
  else a one-line reason (see :mod:`course_lib.grading.compare`);
* ``hint`` -- shown with the first failure;
* ``forbidden_dtypes`` -- dtypes the learner's code may not produce (e.g. an
  exercise that asks for bfloat16 rounding *by bit operations* forbids
  ``torch.bfloat16``, so ``x.to(torch.bfloat16)`` does not count).

The registry is filled lazily: asking for an exercise imports every module in
:mod:`course_lib.exercises`. Introduced in chapter 00
(notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

ID_PATTERN = re.compile(r"^(\d\d)\.[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Case:
    """One input to an exercise: call ``fn(*args, **kwargs)``.

    ``label`` names the case in reports ("edge: zero parameters");
    ``show_expected=False`` hides the reference's answer in the report when
    showing it would give the exercise away.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    show_expected: bool = True


@dataclass(frozen=True)
class Exercise:
    """A graded exercise (see the module docstring for the fields)."""

    id: str
    title: str
    points: int
    reference: Callable[..., Any]
    cases: Callable[[Any], Sequence[Case]]
    compare: Callable[[Any, Any], str | None]
    hint: str = ""
    time_limit: float = 10.0
    forbidden_dtypes: tuple = ()

    def __post_init__(self):
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"exercise id {self.id!r} must look like 'NN.snake_case_name' "
                             "(two-digit chapter, dot, lower-case name)")
        if not isinstance(self.points, int) or self.points <= 0:
            raise ValueError(f"exercise {self.id}: points must be a positive int, got {self.points!r}")
        if self.time_limit <= 0:
            raise ValueError(f"exercise {self.id}: time_limit must be > 0 s, got {self.time_limit!r}")

    @property
    def chapter(self) -> str:
        return self.id[:2]


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to the registry; a second exercise with the same id is an error."""
    if exercise.id in _REGISTRY and _REGISTRY[exercise.id] is not exercise:
        raise ValueError(f"exercise id {exercise.id!r} is registered twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import course_lib.exercises as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    _LOADED = True


def all_exercises() -> dict[str, Exercise]:
    """Every registered exercise, by id, in id order."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise with this id; ``KeyError`` with the known ids of that chapter otherwise."""
    exercises = all_exercises()
    if exercise_id in exercises:
        return exercises[exercise_id]
    chapter = str(exercise_id)[:2]
    same = [e for e in exercises if e.startswith(chapter + ".")] or list(exercises)
    raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(same)}")


def exercises_for_chapter(chapter: str) -> list[Exercise]:
    """The exercises of chapter ``"NN"``, in id order."""
    return [e for e in all_exercises().values() if e.chapter == chapter]
