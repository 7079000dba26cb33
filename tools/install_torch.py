#!/usr/bin/env python3
"""Install PyTorch into the current interpreter with the course's torch policy.

Policy (stated in the README, "Installing torch"):

1. ``TORCH`` set (e.g. ``make lab TORCH="torch==2.5.1"``): install exactly that
   requirement, from ``TORCH_INDEX`` when given. Nothing is guessed.
2. torch already importable and at least MIN_TORCH: keep it.
3. An NVIDIA GPU is visible (``nvidia-smi -L`` lists one, or
   ``/proc/driver/nvidia/gpus`` is non-empty): the usual CUDA build from the
   default package index (``pip install "torch>=MIN"``).
4. No NVIDIA GPU, Linux: a CPU build. First a CPU wheel already on this machine's
   disk (pip's configured ``find-links``, no network), else PyTorch's CPU wheel
   index. A plain ``torch`` from the default index would pull a multi-GB CUDA
   build that a CPU machine cannot use.
5. No NVIDIA GPU, macOS or Windows: the default index already serves CPU builds.

Only the standard library is used: this runs before anything is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

MIN_TORCH = "2.4"
# The CPU build tried first from local disk; any >= MIN_TORCH works.
CPU_TORCH_VERSION = os.environ.get("TORCH_CPU_VERSION", "2.13.0")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def say(msg: str) -> None:
    print(f"[install_torch] {msg}", flush=True)


def pip(*args: str) -> int:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    say("running: " + " ".join(cmd[1:]))
    return subprocess.call(cmd)


def installed_torch() -> str | None:
    code = "import torch, sys; sys.stdout.write(torch.__version__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def nvidia_gpu() -> str | None:
    """Name of the first NVIDIA GPU, or None."""
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    gpus = "/proc/driver/nvidia/gpus"
    if os.path.isdir(gpus) and os.listdir(gpus):
        return "NVIDIA GPU (from /proc/driver/nvidia)"
    return None


def main() -> int:
    explicit = os.environ.get("TORCH", "").strip()
    index = os.environ.get("TORCH_INDEX", "").strip()
    if explicit:
        say(f"TORCH={explicit!r} given: installing exactly that")
        extra = ["--index-url", index] if index else []
        return pip(*extra, *explicit.split())

    have = installed_torch()
    if have and version_tuple(have) >= version_tuple(MIN_TORCH):
        say(f"torch {have} already installed (>= {MIN_TORCH}); keeping it")
        return 0

    gpu = nvidia_gpu()
    if gpu:
        say(f"found {gpu}: installing the usual CUDA build of torch>={MIN_TORCH}")
        return pip(f"torch>={MIN_TORCH}")

    if not sys.platform.startswith("linux"):
        say(f"no NVIDIA GPU on {sys.platform}: the default index serves a CPU build")
        return pip(f"torch>={MIN_TORCH}")

    say("no NVIDIA GPU found: installing a CPU build of torch "
        "(override with TORCH=... and TORCH_INDEX=...)")
    # A CPU wheel already on disk (pip's find-links): no network, seconds.
    local = [f"torch=={CPU_TORCH_VERSION}+cpu", "--no-index", "--no-deps"]
    if pip(*local) == 0:
        # torch's own dependencies (sympy, networkx, ...) from the usual index.
        return pip(f"torch=={CPU_TORCH_VERSION}+cpu")
    say("no CPU wheel on local disk; using PyTorch's CPU wheel index")
    return pip(f"torch>={MIN_TORCH}", "--extra-index-url", CPU_INDEX)


if __name__ == "__main__":
    sys.exit(main())
