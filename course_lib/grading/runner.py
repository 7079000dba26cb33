"""Run a learner's notebook in a fresh kernel and collect every exercise's result.

Algorithm (for one notebook):

1. Read it with nbformat; find its chapter (notebook metadata
   ``course.chapter``, else the ``NN_`` file-name prefix) and so the exercises
   it must report.
2. Start a fresh kernel with ``COURSE_LIB_RESULTS`` pointing to a private
   file; :func:`course_lib.grading.check` appends each result there, so
   results survive a kernel crash, cleared output or megabytes of printing.
3. Execute the cells in order with nbclient, errors allowed:
   a cell past the cell time limit is interrupted (and if the kernel does not
   answer 10 s later, it is restarted); a kernel that dies (``os._exit``, a
   segfault) is restarted and execution goes on with the next cell;
   the notebook time limit stops execution. Each cell keeps at most
   ``output_limit`` characters of output.
4. Every expected exercise gets a status: its last recorded ``check`` result,
   or ``not run`` with the reason (deleted check cell, earlier crash, time
   limit). Introduced in chapter 00.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async, run_sync

from .checking import RESULTS_ENV
from .grade import Grade, Status
from .kernel import THIS_PYTHON, GraderKernelManager
from .registry import REGISTRY

CHAPTER_FROM_NAME = re.compile(r"^(\d\d)[_\-.]")


@dataclass
class NotebookGrade:
    path: str
    learner: str
    chapter: str | None
    exercises: list[Grade] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    grading_failed: bool = False

    @property
    def points(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_points(self) -> int:
        return sum(e.max_points for e in self.exercises)

    def to_json(self) -> dict:
        return {"path": self.path, "learner": self.learner, "chapter": self.chapter,
                "exercises": [g.to_json() for g in self.exercises], "events": list(self.events),
                "elapsed_s": self.elapsed_s, "grading_failed": self.grading_failed,
                "points": self.points, "max_points": self.max_points}


class _RestartKernel(Exception):
    pass


class _KernelUnavailable(Exception):
    """No kernel could be started: grading itself failed."""


class _CappedClient(NotebookClient):
    """NotebookClient that keeps at most ``output_limit`` characters per cell."""

    def __init__(self, *args, output_limit: int = 1_000_000, **kwargs):
        super().__init__(*args, **kwargs)
        self._output_limit = output_limit
        self._output_size: dict[int, int] = {}

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {}), default=str))
        used = self._output_size.get(cell_index, 0)
        self._output_size[cell_index] = used + size
        if used + size > self._output_limit:
            if used <= self._output_limit:
                outs.append(nbformat.v4.new_output(
                    "stream", name="stderr",
                    text=f"[grader: output of this cell cut at {self._output_limit} characters]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)


def chapter_of(nb, path: Path) -> str | None:
    """The chapter number ``"NN"`` of a notebook, from metadata or file name."""
    chapter = nb.metadata.get("course", {}).get("chapter") if nb is not None else None
    if isinstance(chapter, str) and re.fullmatch(r"\d\d", chapter):
        return chapter
    m = CHAPTER_FROM_NAME.match(path.name)
    return m.group(1) if m else None


def grade_notebook(path, *, learner: str = "", cell_timeout: float = 120,
                   notebook_timeout: float = 900, kernel: str | None = None,
                   output_limit: int = 1_000_000, save_executed: Path | None = None) -> NotebookGrade:
    """Execute ``path`` in a fresh kernel and grade every exercise of its chapter.

    ``cell_timeout`` and ``notebook_timeout`` are in seconds. ``kernel`` names a
    kernelspec (default: this interpreter). ``save_executed`` writes the executed
    notebook there. Never raises for problems in the learner's notebook; sets
    ``grading_failed`` when the notebook could not be graded at all.
    """
    path = Path(path)
    for name, value in (("cell_timeout", cell_timeout), ("notebook_timeout", notebook_timeout)):
        if not value or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    grade = NotebookGrade(str(path), learner, None)
    start = time.monotonic()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        grade.chapter = chapter_of(None, path)
        grade.grading_failed = True
        grade.events.append(f"could not read the notebook: {type(exc).__name__}: {exc}")
        grade.exercises = _grades(grade.chapter, {}, "the notebook could not be read")
        return grade
    grade.chapter = chapter_of(nb, path)
    if grade.chapter is None:
        grade.events.append("cannot tell the chapter: no course.chapter metadata and the file name "
                            "does not start with 'NN_'")
        grade.grading_failed = True
        return grade

    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        results_file = Path(tmp) / "results.jsonl"
        results_file.touch()
        env = dict(os.environ)
        env[RESULTS_ENV] = str(results_file)
        env.setdefault("MPLBACKEND", "Agg")
        env["COURSE_LIB_GRADING"] = "1"
        try:
            stopped_at = _execute(nb, path, grade.events, env, cell_timeout, notebook_timeout,
                                  kernel, output_limit)
        except _KernelUnavailable as exc:
            grade.events.append(str(exc))
            grade.grading_failed = True
            stopped_at = None
        results = _read_results(results_file)
    why_missing = _why_missing(grade.events, stopped_at)
    grade.exercises = _grades(grade.chapter, results, why_missing)
    grade.elapsed_s = round(time.monotonic() - start, 2)
    if save_executed is not None:
        nbformat.write(nb, save_executed)
    return grade


def _execute(nb, path, events, env, cell_timeout, notebook_timeout, kernel, output_limit):
    """Run all cells; return the index where the notebook time limit stopped it (or None)."""
    client = _CappedClient(
        nb, output_limit=output_limit, timeout=int(max(1, cell_timeout)), allow_errors=True,
        kernel_name=kernel or THIS_PYTHON, kernel_manager_class=GraderKernelManager,
        interrupt_on_timeout=False, record_timing=False, startup_timeout=120,
        shutdown_kernel="immediate", resources={"metadata": {"path": str(path.parent.resolve())}})
    deadline = time.monotonic() + notebook_timeout
    i, n = 0, len(nb.cells)
    while i < n:
        try:
            with client.setup_kernel(env=env):
                while i < n:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        events.append(f"notebook time limit ({notebook_timeout:g} s) reached "
                                      f"before cell {i + 1}; the remaining cells did not run")
                        return i
                    client.timeout = int(max(1, min(cell_timeout, left)))
                    cell = nb.cells[i]
                    try:
                        client.execute_cell(cell, i)
                    except CellTimeoutError:
                        events.append(f"cell {i + 1}: stopped after {client.timeout} s (time limit)")
                        i += 1
                        if not _interrupt(client, i - 1):
                            events.append(f"cell {i}: the kernel did not respond to an interrupt; "
                                          "restarted it (earlier variables are lost)")
                            raise _RestartKernel
                        continue
                    for out in cell.get("outputs", []):
                        if out.get("output_type") == "error":
                            events.append(f"cell {i + 1}: {out.get('ename')}: {str(out.get('evalue'))[:200]}")
                    i += 1
        except DeadKernelError:
            events.append(f"cell {i + 1}: the kernel died (os._exit, crash or out of memory); "
                          "restarted it and continued with the next cell (earlier variables are lost)")
            i += 1
            client.km = client.kc = None
        except _RestartKernel:
            client.km = client.kc = None
        except Exception as exc:  # the kernel could not be started at all
            raise _KernelUnavailable(f"could not start or talk to the kernel: "
                                     f"{type(exc).__name__}: {exc}") from exc
    return None


def _interrupt(client, index) -> bool:
    """Interrupt a timed-out cell; True when the kernel answers again within 10 s."""

    async def interrupt():
        await ensure_async(client.km.interrupt_kernel())

    try:
        run_sync(interrupt)()
        probe = nbformat.v4.new_code_cell("pass")
        saved = client.timeout
        client.timeout = 10
        try:
            client.execute_cell(probe, index)
        finally:
            client.timeout = saved
        return True
    except (CellTimeoutError, DeadKernelError):
        return False


def _read_results(results_file: Path) -> dict[str, Grade]:
    results: dict[str, Grade] = {}
    for line in results_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            grade = Grade.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        results[grade.exercise] = grade  # the last check of an exercise counts
    return results


def _why_missing(events, stopped_at) -> str:
    if stopped_at is not None:
        return "its check did not run: " + events[-1]
    why = "no check(...) for this exercise ran (was its check cell deleted or changed?)"
    problems = [e for e in events if e.startswith("cell ")]
    return why + ("; first problem in the notebook: " + problems[0] if problems else "")


def _grades(chapter, results: dict[str, Grade], why_missing: str) -> list[Grade]:
    grades = []
    for ex in REGISTRY.for_chapter(chapter) if chapter else []:
        recorded = results.get(ex.id)
        if recorded is None:
            grades.append(Grade(ex.id, Status.NOT_RUN, ex.points, messages=[why_missing], title=ex.title))
        else:  # points and title come from the registry, not from what the kernel wrote
            recorded.max_points, recorded.title = ex.points, ex.title
            grades.append(recorded)
    return grades
