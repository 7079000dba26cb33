"""Execute solution notebooks in place, refreshing their stored outputs (``make solutions``).

The solutions keep their outputs in the repository: the test suite compares the
cells marked ``# NBVAL_CHECK_OUTPUT`` with them, and readers of the repository
see every figure. Runs each notebook in a fresh kernel of this interpreter,
stops at the first error (a solution must run clean), and drops volatile
metadata so a re-run only changes what really changed. Introduced in chapter 00.
"""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from .kernel import THIS_PYTHON, GraderKernelManager

VOLATILE_CELL_METADATA = ("execution", "ExecuteTime")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_volatile(nb) -> None:
    """Remove what changes on every run although nobody edited anything.

    Timing metadata, the widget state, the Python patch version, and each
    widget output's view (it names a random model id and needs the widget state
    that is not stored anyway); the widget's plain-text representation stays.
    """
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(WIDGET_VIEW, None)
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def execute_notebook(path, timeout: float = 600) -> float:
    """Execute ``path`` in place; return the seconds it took. Raises on the first error."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=int(timeout), kernel_name=THIS_PYTHON,
                   kernel_manager_class=GraderKernelManager, record_timing=False,
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    elapsed = time.monotonic() - start
    drop_volatile(nb)
    nbformat.write(nb, path)
    return elapsed


def execute_paths(paths, timeout: float = 600, report=print) -> dict[str, float]:
    """Execute every notebook in ``paths`` (files or folders); return seconds per notebook."""
    times = {}
    for raw in paths:
        p = Path(raw)
        targets = sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
        for nb in targets:
            report(f"executing {nb} ...")
            times[str(nb)] = execute_notebook(nb, timeout)
            report(f"  {times[str(nb)]:.1f} s")
    return times
