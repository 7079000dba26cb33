"""The Jupyter kernel the command-line grader runs notebooks in.

By default the grader runs every notebook in a kernel of *this* interpreter
(``sys.executable -m ipykernel_launcher``), whatever kernel name the notebook
asks for and whatever kernelspecs this machine has: the learner's notebook
must see the same course_lib and torch as the grader. ``--kernel NAME``
picks a registered kernelspec instead. Introduced in chapter 00.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import Instance, default

THIS_PYTHON = "course-grader-this-python"


_IPC_FOLDER: str | None = None


def _ipc_folder() -> str:
    """One private folder per grader process for the kernels' IPC sockets, removed at exit."""
    global _IPC_FOLDER
    if _IPC_FOLDER is None:
        _IPC_FOLDER = tempfile.mkdtemp(prefix="course-kernel-")
        atexit.register(shutil.rmtree, _IPC_FOLDER, ignore_errors=True)
    return _IPC_FOLDER


class _ThisPythonSpecManager(KernelSpecManager):
    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == THIS_PYTHON:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python ({sys.executable})",
                language="python",
                resource_dir="",
            )
        return super().get_kernel_spec(kernel_name)


class GraderKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that also knows the ``THIS_PYTHON`` kernel."""

    kernel_spec_manager = Instance(KernelSpecManager)

    @default("transport")
    def _default_transport(self):
        # Local IPC sockets where the OS has them: no TCP port, and no
        # "running over TCP without encryption" warning from the kernel.
        return "ipc" if os.name == "posix" else "tcp"

    @default("ip")
    def _default_ip(self):
        if self.transport != "ipc":
            return "127.0.0.1"
        # IPC socket paths are relative to the working directory unless absolute,
        # and the kernel runs in the notebook's folder: use an absolute prefix.
        return os.path.join(_ipc_folder(), "kernel")

    @default("kernel_spec_manager")
    def _default_ksm(self):
        return _ThisPythonSpecManager(data_dir=self.data_dir)
