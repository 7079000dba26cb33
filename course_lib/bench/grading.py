"""Benchmark: how fast an instructor grades a class (``python -m course_lib bench grading``).

Makes ``copies`` learners' submissions of one chapter (by default the
complete chapter 03, so every cell runs and every check passes), grades the
folder with the command-line grader at each ``--jobs`` value, and prints
notebooks per minute. Each notebook still runs in its own fresh kernel with
its own limits; ``--jobs N`` runs N of them at a time. Grading is CPU-bound,
so the speed-up is bounded by the number of cores (and each kernel should use
one torch thread, as the chapters do on a CPU).
Introduced with the grader (chapter 00, README "Grading").
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from course_lib.grading.report import grade_paths


def run(notebook: Path, copies: int = 16, jobs=(1, 2), progress=print) -> list[dict]:
    """Grade ``copies`` copies of ``notebook`` at each value of ``jobs``; one row per value."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="course-bench-grading-") as tmp:
        for i in range(copies):
            folder = Path(tmp, f"learner{i:02d}")
            folder.mkdir()
            shutil.copy(notebook, folder / notebook.name)
        for n in jobs:
            progress(f"grading {copies} copies of {notebook.name} with --jobs {n} ...")
            start = time.perf_counter()
            report = grade_paths([tmp], jobs=n)
            seconds = time.perf_counter() - start
            points = sum(nb.points for nb in report.notebooks)
            rows.append({"jobs": n, "notebooks": len(report.notebooks), "seconds": seconds,
                         "per_minute": 60 * len(report.notebooks) / seconds,
                         "all_full_marks": points == sum(nb.max_points for nb in report.notebooks),
                         "grading_failed": report.grading_failed})
    return rows


def format_rows(rows: list[dict]) -> str:
    base = rows[0]["per_minute"]
    lines = [f"{'jobs':>4}  {'notebooks':>9}  {'seconds':>8}  {'notebooks/min':>13}  {'speed-up':>8}  full marks"]
    for r in rows:
        lines.append(f"{r['jobs']:>4}  {r['notebooks']:>9}  {r['seconds']:>8.1f}  {r['per_minute']:>13.1f}  "
                     f"{r['per_minute'] / base:>7.2f}x  {'yes' if r['all_full_marks'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib bench grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", default="solutions/03_manual_mixed_precision.ipynb")
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    notebook = Path(args.notebook)
    if not notebook.is_file():
        print(f"bench grading: {notebook} does not exist; pass --notebook PATH", file=sys.stderr)
        return 2
    rows = run(notebook, args.copies, args.jobs, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rows))
    return 0 if all(r["all_full_marks"] and not r["grading_failed"] for r in rows) else 1
