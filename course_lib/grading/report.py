"""Grade many notebooks and report: a table for people, JSON for machines.

:func:`grade_paths` takes files and folders (searched recursively for
``*.ipynb``), grades each notebook with :func:`runner.grade_notebook`, and
groups them by learner: a notebook at ``ROOT/alice/01_formats.ipynb`` belongs
to ``alice``; one directly in ``ROOT`` (or given as a file) to the name of
its folder. Introduced in chapter 00.
"""
from __future__ import annotations

import concurrent.futures
import datetime as _dt
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

from .runner import NotebookGrade, grade_notebook


class GradingError(Exception):
    """The grader could not run (bad path, nothing to grade)."""


@dataclass
class GradeReport:
    notebooks: list[NotebookGrade] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def grading_failed(self) -> bool:
        return any(nb.grading_failed for nb in self.notebooks)

    def learners(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for nb in self.notebooks:
            row = out.setdefault(nb.learner, {"notebooks": 0, "points": 0, "max_points": 0})
            row["notebooks"] += 1
            row["points"] += nb.points
            row["max_points"] += nb.max_points
        return out

    def to_json(self) -> dict:
        from course_lib import __version__

        return {
            "course_lib_version": __version__,
            "graded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": self.settings,
            "notebooks": [nb.to_json() for nb in self.notebooks],
            "learners": self.learners(),
            "totals": {"points": sum(nb.points for nb in self.notebooks),
                       "max_points": sum(nb.max_points for nb in self.notebooks),
                       "notebooks": len(self.notebooks)},
            "grading_failed": self.grading_failed,
        }

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def table(self) -> str:
        lines: list[str] = []
        for nb in self.notebooks:
            lines.append(f"{nb.path}  (learner: {nb.learner}, chapter {nb.chapter or '?'}, "
                         f"{nb.elapsed_s:.1f} s)")
            width = max([len(e.exercise) for e in nb.exercises] + [8])
            lines.append(f"  {'exercise'.ljust(width)}  {'status'.ljust(15)}  points  seed")
            for e in nb.exercises:
                seed = "" if e.seed is None else str(e.seed)
                lines.append(f"  {e.exercise.ljust(width)}  {e.status.value.ljust(15)}  "
                             f"{f'{e.points}/{e.max_points}'.ljust(6)}  {seed}")
                if not e.passed and e.messages:
                    lines.append(f"  {''.ljust(width)}    {e.messages[0][:110]}")
            lines.append(f"  {'total'.ljust(width)}  {''.ljust(15)}  {nb.points}/{nb.max_points}")
            for event in nb.events[:8]:
                lines.append(f"  note: {event[:150]}")
            if len(nb.events) > 8:
                lines.append(f"  note: ... {len(nb.events) - 8} more in the JSON report")
            if nb.grading_failed:
                lines.append("  GRADING FAILED for this notebook")
            lines.append("")
        learners = self.learners()
        width = max([len(n) for n in learners] + [7])
        lines.append(f"{'learner'.ljust(width)}  notebooks  points")
        for name, row in sorted(learners.items()):
            pct = 100.0 * row["points"] / row["max_points"] if row["max_points"] else 0.0
            lines.append(f"{name.ljust(width)}  {str(row['notebooks']).rjust(9)}  "
                         f"{row['points']}/{row['max_points']} ({pct:.0f}%)")
        return "\n".join(lines)


def find_notebooks(paths) -> list[tuple[Path, str]]:
    """(notebook, learner) pairs for files and folders; GradingError for bad paths."""
    found: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            if p.suffix != ".ipynb":
                raise GradingError(f"{p} is not a notebook (.ipynb); pass notebooks or folders")
            found.append((p, p.resolve().parent.name))
        elif p.is_dir():
            for nb in sorted(p.rglob("*.ipynb")):
                if ".ipynb_checkpoints" in nb.parts:
                    continue
                rel = nb.relative_to(p)
                learner = rel.parts[0] if len(rel.parts) > 1 else p.resolve().name
                found.append((nb, learner))
        else:
            raise GradingError(f"{p} does not exist; pass notebooks (.ipynb) or folders of them")
    if not found:
        raise GradingError(f"no notebooks found in {', '.join(map(str, paths))}")
    return found


def grade_paths(paths, *, cell_timeout: float = 120, notebook_timeout: float = 900,
                kernel: str | None = None, output_limit: int = 1_000_000,
                executed_dir: Path | None = None, progress=None, jobs: int | None = None) -> GradeReport:
    """Grade every notebook under ``paths``; see :func:`runner.grade_notebook` for the limits.

    ``jobs`` notebooks are graded at the same time (default: the number of
    CPU cores), each in its own worker process and its own fresh kernel with
    its own limits; the report lists them in the order they were found.
    """
    from course_lib.validate import positive_int

    jobs = positive_int("jobs", os.cpu_count() or 1 if jobs is None else jobs)
    report = GradeReport(settings={"cell_timeout_s": cell_timeout,
                                   "notebook_timeout_s": notebook_timeout,
                                   "kernel": kernel or "this python", "output_limit": output_limit,
                                   "jobs": jobs})
    tasks = []
    for nb_path, learner in find_notebooks(paths):
        save = None
        if executed_dir is not None:
            Path(executed_dir, learner).mkdir(parents=True, exist_ok=True)
            save = Path(executed_dir, learner, nb_path.name)
        tasks.append(dict(path=nb_path, learner=learner, cell_timeout=cell_timeout,
                          notebook_timeout=notebook_timeout, kernel=kernel,
                          output_limit=output_limit, save_executed=save))
    if jobs == 1 or len(tasks) == 1:
        for task in tasks:
            if progress:
                progress(f"grading {task['path']} ...")
            report.notebooks.append(grade_notebook(**task))
        return report
    results: list[NotebookGrade | None] = [None] * len(tasks)
    context = multiprocessing.get_context("spawn")  # no threads or kernels inherited by workers
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                                mp_context=context) as pool:
        futures = {pool.submit(grade_notebook, **task): i for i, task in enumerate(tasks)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            i = futures[future]
            results[i] = future.result()
            if progress:
                progress(f"graded {tasks[i]['path']} ({done}/{len(tasks)})")
    report.notebooks.extend(results)
    return report
