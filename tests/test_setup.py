"""Setup: dependency lists agree, the torch policy picks the right build, `make lab` serves."""
import importlib.util
import os
import re
import signal
import socket
import subprocess
import time
import tomllib

import pytest
import yaml

from conftest import ROOT

CONDA_TO_PIP = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in pyproject["dependencies"]}
    for extra in pyproject["optional-dependencies"].values():
        pip_names |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in ("python", "pip"):
            conda_names.add(CONDA_TO_PIP.get(_name(dep), _name(dep)))
    assert conda_names == pip_names, (
        f"only in environment.yml: {sorted(conda_names - pip_names)}; "
        f"only in pyproject.toml: {sorted(pip_names - conda_names)}")


def test_minimum_torch_is_stated_and_enforced():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    policy = _load_policy()
    assert f"torch>={policy.MIN_TORCH}" in deps
    assert f"pytorch>={policy.MIN_TORCH}" in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def _load_policy():
    spec = importlib.util.spec_from_file_location("install_torch", ROOT / "tools" / "install_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def policy(monkeypatch):
    module = _load_policy()
    calls = []
    monkeypatch.setattr(module, "pip", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(module, "installed_torch", lambda: None)
    monkeypatch.setattr(module, "nvidia_gpu", lambda: None)
    monkeypatch.setattr(module.sys, "platform", "linux")
    monkeypatch.delenv("TORCH", raising=False)
    monkeypatch.delenv("TORCH_INDEX", raising=False)
    module.calls = calls
    return module


def test_cpu_linux_gets_a_cpu_build_from_local_disk_first(policy, capsys):
    assert policy.main() == 0
    first, second = policy.calls
    assert first[0].endswith("+cpu") and "--no-index" in first
    assert second[0].endswith("+cpu")
    assert "no NVIDIA GPU" in capsys.readouterr().out


def test_cpu_linux_falls_back_to_the_cpu_index(policy, monkeypatch):
    monkeypatch.setattr(policy, "pip", lambda *a: policy.calls.append(a) or (1 if "--no-index" in a else 0))
    assert policy.main() == 0
    assert policy.calls[-1] == (f"torch>={policy.MIN_TORCH}", "--extra-index-url", policy.CPU_INDEX)


def test_gpu_machine_gets_the_usual_cuda_build(policy, monkeypatch, capsys):
    monkeypatch.setattr(policy, "nvidia_gpu", lambda: "GPU 0: NVIDIA H100")
    assert policy.main() == 0
    assert policy.calls == [(f"torch>={policy.MIN_TORCH}",)]
    assert "CUDA build" in capsys.readouterr().out


def test_override_and_keep(policy, monkeypatch, capsys):
    monkeypatch.setenv("TORCH", "torch==2.5.1")
    monkeypatch.setenv("TORCH_INDEX", "https://example.invalid/simple")
    assert policy.main() == 0
    assert policy.calls == [("--index-url", "https://example.invalid/simple", "torch==2.5.1")]
    monkeypatch.delenv("TORCH")
    policy.calls.clear()
    monkeypatch.setattr(policy, "installed_torch", lambda: "2.13.0+cpu")
    assert policy.main() == 0 and policy.calls == []
    assert "keeping it" in capsys.readouterr().out
    monkeypatch.setattr(policy, "installed_torch", lambda: "2.1.0")
    assert policy.main() == 0 and policy.calls  # too old: replaced


def test_version_parsing():
    policy = _load_policy()
    assert policy.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert policy.version_tuple("2.4.0a0") >= policy.version_tuple("2.4")
    assert policy.version_tuple("2.3.1") < policy.version_tuple("2.4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (ROOT / ".venv" / ".course-installed").exists(),
                    reason="needs the .venv that `make` creates")
def test_make_lab_starts_jupyterlab_headless_and_prints_the_url():
    port = _free_port()
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"PORT={port}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if f"http://127.0.0.1:{port}/lab" in line:
                break
        text = "".join(seen)
        assert f"http://127.0.0.1:{port}/lab" in text, text[-3000:]
        if os.geteuid() == 0:
            assert "--allow-root" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_course_lab_settings_switch_off_the_news_prompt():
    import json

    overrides = json.loads((ROOT / "tools" / "jupyterlab-overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
    schema = ROOT / ".venv/share/jupyter/lab/schemas/@jupyterlab/apputils-extension/notification.json"
    if schema.exists():  # the keys are the ones this JupyterLab understands
        assert set(notification) <= set(json.loads(schema.read_text())["properties"])
    installed = ROOT / ".venv/share/jupyter/lab/settings/overrides.json"
    assert json.loads(installed.read_text()) == overrides, "make install copies the course's settings"


def test_optional_extras_match_the_requirements_the_library_names_in_its_messages():
    from course_lib.keras_compat import KERAS_REQUIREMENT
    from course_lib.qat import TORCHAO_REQUIREMENT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["keras"] == [KERAS_REQUIREMENT]
    assert extras["qat"] == [TORCHAO_REQUIREMENT]
    assert ".[lab,dev,keras,qat]" in (ROOT / "Makefile").read_text()  # make test installs them
