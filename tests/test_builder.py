"""The notebook builder: stubs, cleaning, idempotence, malformed markers, drift."""

import nbformat
import pytest

from course_lib.grading.builder import BuildError, build, learner_version, strip_solutions

from conftest import ROOT, make_notebook

SOLVED = '''def f(x):
    """Docstring stays."""
    ### BEGIN SOLUTION 00.parameter_bytes
    y = x * 2
    return y
    ### END SOLUTION

print("after")'''


def test_solution_block_becomes_an_indented_stub():
    src, ids = strip_solutions(SOLVED, "t")
    assert ids == ["00.parameter_bytes"]
    assert "y = x * 2" not in src and "BEGIN SOLUTION" not in src
    assert ('    raise NotImplementedError("Exercise 00.parameter_bytes: '
            'replace this line with your code")') in src
    assert '"""Docstring stays."""' in src and 'print("after")' in src
    compile(src, "stub", "exec")  # the learner cell is valid Python


@pytest.mark.parametrize("source, words", [
    ("### BEGIN SOLUTION 00.a\nx = 1", "never closed"),
    ("### BEGIN SOLUTION 00.a\n### BEGIN SOLUTION 00.b\n### END SOLUTION", "cannot nest"),
    ("x = 1\n### END SOLUTION", "END SOLUTION without a BEGIN"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "needs the exercise id"),
    ("### BEGIN SOLUTION 00.a and more\n### END SOLUTION", "malformed marker"),
    ("x = 1  ### END SOLUTION", "malformed marker"),
])
def test_malformed_markers_name_file_cell_and_line(source, words):
    with pytest.raises(BuildError, match=words) as info:
        strip_solutions(source, "solutions/07_x.ipynb: cell 3")
    assert "solutions/07_x.ipynb: cell 3, line" in str(info.value)


def test_unknown_exercise_id_is_an_error():
    with pytest.raises(BuildError, match="unknown exercise id '00.typo'"):
        strip_solutions("### BEGIN SOLUTION 00.typo\n### END SOLUTION", "nb: cell 1", {"00.real"})


def test_markers_in_markdown_are_an_error(tmp_path):
    make_notebook(tmp_path / "src" / "00_x.ipynb", ["#md ### BEGIN SOLUTION 00.parameter_bytes"])
    with pytest.raises(BuildError, match=r"00_x.ipynb: cell 1: solution markers are only allowed"):
        build(tmp_path / "src", tmp_path / "out")


def test_outputs_counts_and_volatile_metadata_are_cleared(tmp_path):
    path = make_notebook(tmp_path / "src" / "00_x.ipynb", [SOLVED])
    nb = nbformat.read(path, 4)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    nb.cells[0].execution_count = 7
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    nb.cells[0].metadata["tags"] = ["keep-me"]
    nb.metadata["widgets"] = {"state": {}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    out = learner_version(nb, "x")
    cell = out.cells[0]
    assert cell.outputs == [] and cell.execution_count is None
    assert cell.metadata == {"tags": ["keep-me"]}
    assert "widgets" not in out.metadata and out.metadata["language_info"] == {"name": "python"}
    assert out.metadata["course"] == {"chapter": "00"}
    assert nb.cells[0].outputs  # the solution itself is untouched


def test_build_is_idempotent_and_removes_stale_notebooks(tmp_path):
    make_notebook(tmp_path / "src" / "00_x.ipynb", [SOLVED])
    (tmp_path / "out").mkdir()
    make_notebook(tmp_path / "out" / "05_stale.ipynb", ["1"])
    first = build(tmp_path / "src", tmp_path / "out")
    assert {p.name for p in first} == {"00_x.ipynb", "05_stale.ipynb"}
    before = (tmp_path / "out" / "00_x.ipynb").read_bytes()
    assert build(tmp_path / "src", tmp_path / "out") == []
    assert (tmp_path / "out" / "00_x.ipynb").read_bytes() == before
    assert not (tmp_path / "out" / "05_stale.ipynb").exists()


def test_learner_notebooks_are_a_fresh_build_of_the_solutions(tmp_path):
    """Drift test: notebooks/ must equal what `make notebooks` writes now."""
    build(ROOT / "solutions", tmp_path)
    fresh = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    committed = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert fresh == committed, "run `make notebooks`"
    for name in fresh:
        assert (tmp_path / name).read_text() == (ROOT / "notebooks" / name).read_text(), \
            f"notebooks/{name} differs from a fresh build of solutions/{name}: run `make notebooks`"


def test_every_exercise_of_a_chapter_has_a_solution_block_and_a_check():
    from course_lib.grading.registry import exercises_for_chapter
    from course_lib.grading.runner import chapter_of

    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, 4)
        chapter = chapter_of(nb, path)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        expected = exercises_for_chapter(chapter)
        assert expected, f"{path.name}: chapter {chapter} has no registered exercise"
        for ex in expected:
            assert f"### BEGIN SOLUTION {ex.id}" in text, f"{path.name}: no solution block for {ex.id}"
            assert f'check("{ex.id}"' in text, f"{path.name}: no check cell for {ex.id}"
