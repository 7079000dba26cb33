"""Grading for the course: ``check`` in notebooks, the command-line grader, the builder.

* :func:`check` -- grade one exercise in a notebook (:mod:`.checking`);
* :func:`grade_paths` -- run notebooks in fresh kernels and report (:mod:`.report`);
* :func:`build` -- make learner notebooks from solutions (:mod:`.builder`);
* :class:`Exercise`, :class:`Case`, :func:`register` -- declare exercises (:mod:`.registry`).

See chapter 00 (notebooks/00_orientation.ipynb) and the README, "Grading".
"""
from .builder import BuildError, build
from .checking import CheckResult, check
from .compare import exact, same
from .registry import Case, Exercise, all_exercises, get_exercise, register
from .report import GradeReport, GradingError, grade_paths

__all__ = ["check", "CheckResult", "grade_paths", "GradeReport", "GradingError", "build",
           "BuildError", "Exercise", "Case", "register", "get_exercise", "all_exercises",
           "same", "exact"]
