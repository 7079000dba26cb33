"""Shared test helpers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def make_notebook(path: Path, sources: list[str], chapter: str = "00") -> Path:
    """Write a notebook of code cells (markdown when a source starts with '#md ')."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["course"] = {"chapter": chapter}
    nb.metadata["kernelspec"] = {"name": "half-precision-course", "display_name": "course",
                                 "language": "python"}
    for src in sources:
        if src.startswith("#md "):
            nb.cells.append(nbformat.v4.new_markdown_cell(src[4:]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(src))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def run_grader(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run ``python -m course_lib grade ARGS`` and return (process, JSON report or None)."""
    report = Path(cwd) / "_grade_report_test.json"
    if "--json" not in args:
        args = (*args, "--json", str(report))
    else:
        report = Path(args[args.index("--json") + 1])
    proc = subprocess.run([sys.executable, "-m", "course_lib", "grade", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    data = json.loads(report.read_text()) if report.exists() else None
    if report.exists() and report.name == "_grade_report_test.json":
        report.unlink()
    return proc, data


@pytest.fixture
def grader():
    return run_grader


# The course's models are tiny: one CPU thread runs them faster than two (see
# course_lib.device.tune_cpu_threads), and keeps the suite's timing steady.
import torch  # noqa: E402

torch.set_num_threads(1)
