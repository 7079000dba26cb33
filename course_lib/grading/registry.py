"""The exercise registry: what each graded exercise checks, and for how many points.

An :class:`Exercise` bundles everything the grader needs to judge a learner's
answer, declared in one place (``course_lib/exercises/chNN_*.py``):

* ``id`` -- ``"NN.name"``, where ``NN`` is the chapter number;
* ``points`` -- what the exercise is worth (all or nothing);
* ``reference`` -- course_lib's own implementation, the oracle;
* ``cases(rng)`` -- the inputs to try: edge cases plus randomized ones drawn
  from ``rng``, so a hard-coded answer fails; every case must keep the
  promises the exercise text makes (a "finite logits" case holds no inf);
* ``compare(expected, got)`` -- returns ``None`` when ``got`` is acceptable,
  else a one-line reason (see :mod:`course_lib.grading.compare`); tolerances
  follow the numerics: unless the exercise asks for bit-exact results, a
  different order of operations (1 ulp) must pass;
* ``hint`` -- shown with the first failure;
* ``observe(args, kwargs, returned)`` -- optional: what is compared, for an
  exercise whose answer is also what the function *did* to its inputs (an
  in-place unscale, an optimizer step): it sees the inputs after the call
  (the reference's own and the learner's own) and the returned value;
* ``forbidden_dtypes`` -- dtypes the learner's code may not produce;
* ``alternatives`` -- known-correct answers written differently from the
  reference (torch built-ins, another algorithm, another order of
  operations): :class:`Alternative`; at least two per exercise;
* ``mistakes`` -- the errors learners make: :class:`Mistake`.

``tests/test_exercises.py`` runs ``check`` on every alternative and mistake
over ``test_seeds`` fresh seeds (50 unless the exercise states why each
seed is so expensive that fewer must do, as a whole training run per case
is): every alternative must pass every run, every mistake must fail (every
run when ``always=True``, at least once otherwise).
A grader that rejects a correct answer is as bad as one that accepts a wrong one.

A :class:`Registry` holds exercises by id. :data:`REGISTRY`, the course's
own, is filled lazily from the explicit list of chapter modules in
:data:`course_lib.exercises.CHAPTER_MODULES` (each exposes ``EXERCISES``);
tests build registries of their own. Introduced in chapter 00
(notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

ID_PATTERN = re.compile(r"^(\d\d)\.[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Case:
    """One input to an exercise: call ``fn(*args, **kwargs)``.

    ``label`` names the case in reports ("edge: zero parameters");
    ``show_expected=False`` hides the reference's answer in the report when
    showing it would give the exercise away. The reference and the learner's
    function each get their own deep copy of ``args``/``kwargs`` -- or, when
    ``build`` is given, their own fresh ``build()`` (a zero-argument callable
    returning the args tuple; it must be deterministic): for inputs a deep copy
    does not reproduce, such as a model whose parameters hold ``.grad`` next to
    its optimizer and ``torch.amp.GradScaler``.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    show_expected: bool = True
    build: Callable[[], tuple] | None = None

    def inputs(self) -> tuple[tuple, dict]:
        """A fresh ``(args, kwargs)`` for one call."""
        if self.build is not None:
            return tuple(self.build()), {}
        return copy.deepcopy(self.args), copy.deepcopy(self.kwargs)


@dataclass(frozen=True)
class Alternative:
    """A known-correct answer, written differently from the reference: it must pass every check."""

    fn: Callable[..., Any]
    why: str


@dataclass(frozen=True)
class Mistake:
    """A known mistake: it must fail ``check`` -- on every seed when ``always`` (an edge case
    catches it), on at least one seed in the test's many otherwise."""

    fn: Callable[..., Any]
    why: str
    always: bool = True


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
    observe: Callable[[tuple, dict, Any], Any] | None = None
    alternatives: tuple[Alternative, ...] = ()
    mistakes: tuple[Mistake, ...] = ()
    test_seeds: int = 50
    test_seeds_why: str = ""

    def __post_init__(self):
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"exercise id {self.id!r} must look like 'NN.snake_case_name' "
                             "(two-digit chapter, dot, lower-case name)")
        if not isinstance(self.points, int) or self.points <= 0:
            raise ValueError(f"exercise {self.id}: points must be a positive int, got {self.points!r}")
        if self.time_limit <= 0:
            raise ValueError(f"exercise {self.id}: time_limit must be > 0 s, got {self.time_limit!r}")
        if self.test_seeds < 50 and not self.test_seeds_why:
            raise ValueError(f"exercise {self.id}: fewer than 50 test seeds needs a reason "
                             "(test_seeds_why)")
        for name, kind in (("alternatives", Alternative), ("mistakes", Mistake)):
            bad = [x for x in getattr(self, name) if not isinstance(x, kind)]
            if bad:
                raise TypeError(f"exercise {self.id}: {name} must hold {kind.__name__} objects, "
                                f"got {type(bad[0]).__name__}")

    @property
    def chapter(self) -> str:
        return self.id[:2]


class Registry:
    """Exercises by id; filled from exercise objects and/or (lazily) from modules.

    Args:
        exercises (iterable of Exercise): added at once.
        modules (iterable of str): importable module names, each with an
            ``EXERCISES`` list, imported on first use.

    Example:
        >>> r = Registry([Exercise("99.one", "one", 1, lambda: 1, lambda rng: [], lambda e, g: None)])
        >>> list(r.all()), r.for_chapter("99")[0].title
        (['99.one'], 'one')
    """

    def __init__(self, exercises=(), modules=()):
        self._exercises: dict[str, Exercise] = {}
        self._modules = list(modules)
        for ex in exercises:
            self.add(ex)

    def add(self, exercise: Exercise) -> Exercise:
        """Add ``exercise``; a second exercise with the same id is an error."""
        if not isinstance(exercise, Exercise):
            raise TypeError(f"a registry holds Exercise objects, got {type(exercise).__name__}")
        if self._exercises.get(exercise.id, exercise) is not exercise:
            raise ValueError(f"exercise id {exercise.id!r} is registered twice")
        self._exercises[exercise.id] = exercise
        return exercise

    def _load(self) -> None:
        while self._modules:
            module = importlib.import_module(self._modules.pop(0))
            for ex in getattr(module, "EXERCISES"):
                self.add(ex)

    def all(self) -> dict[str, Exercise]:
        """Every exercise, by id, in id order."""
        self._load()
        return dict(sorted(self._exercises.items()))

    def get(self, exercise_id: str) -> Exercise:
        """The exercise with this id; ``KeyError`` listing the known ids of that chapter otherwise."""
        exercises = self.all()
        if exercise_id in exercises:
            return exercises[exercise_id]
        chapter = str(exercise_id)[:2]
        same = [e for e in exercises if e.startswith(chapter + ".")] or list(exercises)
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(same)}")

    def for_chapter(self, chapter: str) -> list[Exercise]:
        """The exercises of chapter ``"NN"``, in id order."""
        return [e for e in self.all().values() if e.chapter == chapter]


def _course_modules() -> list[str]:
    from course_lib.exercises import CHAPTER_MODULES

    return [f"course_lib.exercises.{name}" for name in CHAPTER_MODULES]


#: The course's own exercises (every chapter module in course_lib.exercises.CHAPTER_MODULES).
REGISTRY = Registry(modules=_course_modules())


def all_exercises() -> dict[str, Exercise]:
    """Every exercise of the course, by id (``REGISTRY.all()``)."""
    return REGISTRY.all()


def get_exercise(exercise_id: str) -> Exercise:
    """The course's exercise with this id (``REGISTRY.get``)."""
    return REGISTRY.get(exercise_id)


def exercises_for_chapter(chapter: str) -> list[Exercise]:
    """The course's exercises of chapter ``"NN"`` (``REGISTRY.for_chapter``)."""
    return REGISTRY.for_chapter(chapter)
