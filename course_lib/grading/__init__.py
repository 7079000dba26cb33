"""Grading for the course: ``check`` in notebooks, the command-line grader, the builder.

* :func:`check` -- grade one exercise in a notebook (:mod:`.checking`), returning a
  :class:`Grade` (:mod:`.grade`, the one grade type shared by check, the
  results file and the report);
* :func:`grade_paths` -- run notebooks in fresh kernels, in parallel, and report (:mod:`.report`);
* :func:`build` -- make learner notebooks from solutions (:mod:`.builder`);
* :class:`Exercise`, :class:`Case`, :class:`Alternative`, :class:`Mistake`,
  :class:`Registry` -- declare exercises (:mod:`.registry`).

See chapter 00 (notebooks/00_orientation.ipynb) and the README, "Grading".
"""
from .builder import BuildError, build
from .checking import check
from .compare import exact, same
from .grade import Grade, Status
from .registry import (REGISTRY, Alternative, Case, Exercise, Mistake, Registry, all_exercises,
                       get_exercise)
from .report import GradeReport, GradingError, grade_paths

__all__ = ["check", "Grade", "Status", "grade_paths", "GradeReport", "GradingError", "build",
           "BuildError", "Exercise", "Case", "Alternative", "Mistake", "Registry", "REGISTRY",
           "get_exercise", "all_exercises", "same", "exact"]
