"""Build learner notebooks from solution notebooks (``make notebooks``).

``solutions/NN_name.ipynb`` is the single source of a chapter. In its code
cells, exercise code sits between two marker lines::

    ### BEGIN SOLUTION 00.parameter_bytes
    ...the answer...
    ### END SOLUTION

The builder replaces each block (markers included) by one line, at the
indentation of the BEGIN marker::

    raise NotImplementedError("Exercise 00.parameter_bytes: replace this line with your code")

and clears outputs, execution counts and volatile metadata (timings,
widget state, the Python version). Output is deterministic, so building twice
gives identical files (the notebook is only rewritten when it changes).
A BEGIN without an exercise id, an unknown id, an unclosed or nested block,
or an END without BEGIN is a :class:`BuildError` naming file and cell.
Introduced in chapter 00.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .registry import ID_PATTERN, all_exercises

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:[ \t]+(?P<id>\S+))?[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
MARKER = re.compile(r"### (BEGIN|END) SOLUTION")
KEEP_CELL_METADATA = ("tags", "editable", "deletable")
KEEP_NB_METADATA = ("kernelspec", "course")


class BuildError(ValueError):
    """A solution notebook's markers are malformed."""


def stub_line(indent: str, exercise_id: str) -> str:
    return f'{indent}raise NotImplementedError("Exercise {exercise_id}: replace this line with your code")'


def strip_solutions(source: str, where: str, known_ids=None) -> tuple[str, list[str]]:
    """Replace every solution block in ``source``; return (new source, exercise ids)."""
    out: list[str] = []
    ids: list[str] = []
    open_id = None
    open_line = 0
    for n, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_id is not None:
                raise BuildError(f"{where}, line {n}: BEGIN SOLUTION inside the block opened on "
                                 f"line {open_line} (blocks cannot nest)")
            ex_id = begin.group("id")
            if not ex_id or not ID_PATTERN.match(ex_id):
                raise BuildError(f"{where}, line {n}: '### BEGIN SOLUTION' needs the exercise id, "
                                 f"e.g. '### BEGIN SOLUTION 00.parameter_bytes' (got {line.strip()!r})")
            if known_ids is not None and ex_id not in known_ids:
                raise BuildError(f"{where}, line {n}: unknown exercise id {ex_id!r}; "
                                 f"registered ids: {', '.join(sorted(known_ids)) or 'none'}")
            open_id, open_line = ex_id, n
            ids.append(ex_id)
            out.append(stub_line(begin.group("indent"), ex_id))
        elif end:
            if open_id is None:
                raise BuildError(f"{where}, line {n}: END SOLUTION without a BEGIN SOLUTION")
            open_id = None
        elif MARKER.search(line):
            raise BuildError(f"{where}, line {n}: malformed marker {line.strip()!r}; write "
                             "'### BEGIN SOLUTION NN.name' or '### END SOLUTION' alone on a line")
        elif open_id is None:
            out.append(line)
    if open_id is not None:
        raise BuildError(f"{where}, line {open_line}: BEGIN SOLUTION {open_id} is never closed "
                         "with '### END SOLUTION'")
    return "\n".join(out), ids


def learner_version(nb, name: str, known_ids=None):
    """A learner copy of solution notebook ``nb`` (``name`` is used in errors)."""
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells, start=1):
        where = f"{name}: cell {index}"
        if cell.cell_type == "code":
            cell.source, _ = strip_solutions(cell.source, where, known_ids)
            cell.outputs = []
            cell.execution_count = None
        elif MARKER.search(cell.source):
            raise BuildError(f"{where}: solution markers are only allowed in code cells")
        cell.metadata = {k: cell.metadata[k] for k in KEEP_CELL_METADATA if k in cell.metadata}
    nb.metadata = {k: nb.metadata[k] for k in KEEP_NB_METADATA if k in nb.metadata}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def build_one(solution, notebooks_dir) -> Path | None:
    """Write the learner version of one solution notebook into ``notebooks_dir``.

    Returns the path written, or ``None`` when the file was already up to date.
    """
    path, dst = Path(solution), Path(notebooks_dir)
    if not path.is_file():
        raise BuildError(f"{path} is not a solution notebook")
    dst.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    text = nbformat.writes(learner_version(nb, str(path), set(all_exercises()))) + "\n"
    target = dst / path.name
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return None
    target.write_text(text, encoding="utf-8")
    return target


def build(solutions_dir, notebooks_dir) -> list[Path]:
    """Write ``notebooks_dir/X.ipynb`` for every ``solutions_dir/X.ipynb``; return changed files.

    Learner notebooks without a solution are removed (they would be stale).
    """
    src, dst = Path(solutions_dir), Path(notebooks_dir)
    if not src.is_dir():
        raise BuildError(f"{src} is not a folder of solution notebooks")
    dst.mkdir(parents=True, exist_ok=True)
    changed = []
    names = set()
    for path in sorted(src.glob("*.ipynb")):
        names.add(path.name)
        written = build_one(path, dst)
        if written is not None:
            changed.append(written)
    for stale in sorted(dst.glob("*.ipynb")):
        if stale.name not in names:
            stale.unlink()
            changed.append(stale)
    return changed
