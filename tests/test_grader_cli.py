"""The command-line grader, end to end: adversarial learner notebooks still get a complete
report; bad input and broken kernels fail grading clearly. (The course's own solution and
learner notebooks are graded in tests/test_notebooks.py.)"""
import json
import subprocess
import sys

import pytest

from course_lib.grading.registry import exercises_for_chapter

from conftest import ROOT, make_notebook, run_grader

CH00 = [e.id for e in exercises_for_chapter("00")]
IMPORTS = "import torch\nfrom course_lib.grading import check\n"
GOOD_PB = IMPORTS + "from course_lib.memory import parameter_bytes\n"
GOOD_TS = IMPORTS + "from course_lib.memory import training_state_bytes\n"
CHECK_PB = IMPORTS + 'check("00.parameter_bytes", parameter_bytes)'
CHECK_TS = IMPORTS + 'check("00.training_state_bytes", training_state_bytes)'
STUBBORN = "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"

ADVERSARIAL = {
    # learner folder: (cells, expected status per exercise, words expected in the notes)
    "raises": ([GOOD_TS, "def parameter_bytes(model, dtype):\n    raise ValueError('oops')",
                CHECK_PB, CHECK_TS], {"00.parameter_bytes": "error",
                                      "00.training_state_bytes": "passed"}, []),
    # check()'s own 10 s limit stops the loop inside the kernel, before the 25 s cell limit
    # (with a margin: on a loaded machine the kernel's other work in that cell takes time too).
    "hangs_in_function": ([GOOD_TS, "def parameter_bytes(model, dtype):\n    while True:\n        pass",
                           CHECK_PB, CHECK_TS], {"00.parameter_bytes": "timeout",
                                                 "00.training_state_bytes": "passed"},
                          ["still running after 10 s"]),
    "hangs_in_cell": ([IMPORTS, "while True:\n    pass", GOOD_PB, GOOD_TS, CHECK_PB, CHECK_TS],
                      {"00.parameter_bytes": "passed", "00.training_state_bytes": "passed"},
                      ["cell 2: stopped after"]),
    "ignores_interrupts": ([IMPORTS, STUBBORN, GOOD_PB, GOOD_TS, CHECK_PB, CHECK_TS],
                           {"00.parameter_bytes": "passed", "00.training_state_bytes": "passed"},
                           ["did not respond to an interrupt"]),
    "prints_megabytes": ([GOOD_PB, GOOD_TS, "for _ in range(20):\n    print('x' * 1_000_000)",
                          CHECK_PB, CHECK_TS + "\nfrom IPython.display import clear_output\nclear_output()"],
                         {"00.parameter_bytes": "passed", "00.training_state_bytes": "passed"}, []),
    "calls_sys_exit": ([GOOD_PB, "import sys\nsys.exit(1)",
                        "import sys\ndef training_state_bytes(n, recipe, optimizer='adam'):\n    sys.exit(0)",
                        CHECK_PB, CHECK_TS],
                       {"00.parameter_bytes": "passed", "00.training_state_bytes": "error"}, ["SystemExit"]),
    "calls_os_exit": ([IMPORTS, "import os\nos._exit(1)", GOOD_PB, GOOD_TS, CHECK_PB, CHECK_TS],
                      {"00.parameter_bytes": "passed", "00.training_state_bytes": "passed"},
                      ["kernel died"]),
    "deleted_check_cell": ([GOOD_PB, GOOD_TS, CHECK_PB],
                           {"00.parameter_bytes": "passed", "00.training_state_bytes": "not run"}, []),
    "reordered_cells": ([CHECK_PB, GOOD_PB, GOOD_TS, CHECK_TS],
                        {"00.parameter_bytes": "not run", "00.training_state_bytes": "passed"},
                        ["cell 1: NameError"]),
    "wrong_types": ([IMPORTS + "def parameter_bytes(model, dtype):\n    return torch.tensor([1.0, 2.0])",
                     IMPORTS + "def training_state_bytes(n, recipe, optimizer='adam'):\n    return str(n)",
                     CHECK_PB, CHECK_TS],
                    {"00.parameter_bytes": "failed", "00.training_state_bytes": "failed"}, []),
}


# One grader run for every adversarial notebook (in parallel, --jobs 2): the tests that use it
# run in one xdist worker (loadgroup), so the run happens once.
pytestmark = pytest.mark.xdist_group("grader_cli")


@pytest.fixture(scope="module")
def adversarial_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    for learner, (cells, _, _) in ADVERSARIAL.items():
        make_notebook(root / learner / "00_orientation.ipynb", cells)
    report = root / "report.json"
    proc, data = run_grader(str(root), "--cell-timeout", "25", "--json", str(report),
                            "--save-executed", str(root / "executed"), "--jobs", "2")
    return proc, data, root


@pytest.mark.parametrize("learner", sorted(ADVERSARIAL))
def test_adversarial_notebooks_get_a_complete_report(adversarial_report, learner):
    proc, data, _ = adversarial_report
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, expected, words = ADVERSARIAL[learner]
    (nb,) = [nb for nb in data["notebooks"] if nb["learner"] == learner]
    got = {ex["exercise"]: ex["status"] for ex in nb["exercises"]}
    assert sorted(got) == sorted(CH00)
    assert got == expected, (nb["events"], nb["exercises"])
    for ex in nb["exercises"]:
        assert ex["points"] == (ex["max_points"] if ex["status"] == "passed" else 0)
        if ex["status"] != "passed":
            assert ex["messages"], ex
    notes = " ".join(nb["events"]) + " ".join(m for ex in nb["exercises"] for m in ex["messages"])
    for word in words:
        assert word in notes, (word, notes)
    assert learner in proc.stdout


def test_megabytes_of_output_are_cut(adversarial_report):
    _, _, root = adversarial_report
    executed = root / "executed" / "prints_megabytes" / "00_orientation.ipynb"
    assert executed.stat().st_size < 3_000_000
    assert "output of this cell cut" in executed.read_text()


def test_unreadable_notebook_is_reported_and_fails_grading(tmp_path):
    bad = tmp_path / "alice" / "00_orientation.ipynb"
    bad.parent.mkdir()
    bad.write_text("{ this is not a notebook")
    proc, data = run_grader(str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    (nb,) = data["notebooks"]
    assert nb["grading_failed"] and "could not read" in nb["events"][0]
    assert {ex["exercise"]: ex["status"] for ex in nb["exercises"]} == {i: "not run" for i in CH00}


@pytest.mark.parametrize("args, words", [
    (["does/not/exist"], "does not exist"),
    (["README.md"], "is not a notebook"),
    (["course_lib/exercises"], "no notebooks found"),
    (["notebooks", "--cell-timeout", "0"], "cell_timeout must be a positive"),
])
def test_bad_grader_input_exits_nonzero_with_a_clear_message(args, words):
    proc = subprocess.run([sys.executable, "-m", "course_lib", "grade", *args, "--json", ""],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert words in proc.stderr


def test_json_report_layout(adversarial_report):
    _, data, _ = adversarial_report
    assert set(data) >= {"notebooks", "learners", "totals", "settings", "grading_failed"}
    nb = data["notebooks"][0]
    assert set(nb) >= {"path", "learner", "chapter", "exercises", "points", "max_points", "events"}
    assert set(nb["exercises"][0]) >= {"exercise", "points", "max_points", "status", "messages", "seed"}
    graded = [ex for n in data["notebooks"] for ex in n["exercises"] if ex["status"] != "not run"]
    assert graded and all(isinstance(ex["seed"], int) for ex in graded)  # to replay check(..., seed=)
    assert data["totals"]["max_points"] == sum(n["max_points"] for n in data["notebooks"])
    json.dumps(data)


def test_a_kernel_that_cannot_start_fails_grading_with_a_report(tmp_path):
    nb = make_notebook(tmp_path / "bob" / "00_orientation.ipynb", ["1 + 1"])
    proc, data = run_grader(str(nb), "--kernel", "no-such-kernel", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    (report,) = data["notebooks"]
    assert report["grading_failed"] and "could not start" in report["events"][0]
    assert {ex["exercise"]: ex["status"] for ex in report["exercises"]} == {i: "not run" for i in CH00}
