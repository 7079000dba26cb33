"""Run a script as an N-process job with ``torchrun`` (``python -m torch.distributed.run``).

A script cannot hand a return value back, and it is what a real cluster
job runs, so scripts go through torch's own launcher: ``torchrun
--standalone --nproc_per_node=N script.py ARGS`` starts N copies with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` set (``--standalone``: a rendezvous on a free local port).
Inside, the script uses
:func:`~course_lib.distributed.process.distributed_process`.

Algorithm of :func:`launch_script`: run the command with its output
captured and a deadline. On success return the output. On failure read
torchrun's "Root Cause" summary (rank, exit code, pid): a positive exit
code with a Python traceback in the output -> :class:`RankRaisedError`; a
signal or a bare exit code -> :class:`RankDiedError` (torchrun prefixes
each line a worker writes to stderr with ``[rankN]:``, which is how the
failing rank's own traceback is found). At the deadline:
find torchrun's worker processes (Linux ``/proc``) and their ranks, send
torchrun SIGTERM (it stops its workers), SIGKILL whatever is left ->
:class:`LaunchTimeoutError`. No worker outlives the call.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> torchrun_command("train.py", 2, ["--epochs", "1"])[1:]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py', '--epochs', '1']
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from course_lib import validate
from course_lib.device import DEVICE_ENV
from course_lib.distributed.errors import LaunchTimeoutError, RankDiedError, RankRaisedError

__all__ = ["launch_script", "torchrun_command", "ScriptRun"]

_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)",
                         re.S)


@dataclass(frozen=True)
class ScriptRun:
    """A finished torchrun job: its combined output and the wall-clock seconds it took."""

    command: list[str]
    output: str
    seconds: float


def torchrun_command(script: str | os.PathLike, nprocs: int, args: Sequence[str] = ()) -> list[str]:
    """The command line ``launch_script`` runs (this Python's ``torch.distributed.run``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nprocs}", str(script), *map(str, args)]


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (Linux /proc; elsewhere an empty list)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():  # a zombie is dead, just not reaped by its parent yet
        text = stat.read_text()
        return text[text.rindex(")") + 2] != "Z"
    return True


def launch_script(script: str | os.PathLike, nprocs: int = 2, *, args: Sequence[str] = (),
                  timeout: float | None = 300.0, device: str | None = None) -> ScriptRun:
    """Run ``script`` with ``torchrun`` on ``nprocs`` local processes.

    Args:
        script (str or PathLike): a ``.py`` file.
        nprocs (int, default 2): processes (``--nproc_per_node``).
        args (sequence of str, default ()): the script's own arguments.
        timeout (float or None, default 300.0): seconds before the job is
            declared hung and killed; ``None`` waits forever.
        device (str or None, default None): sets ``COURSE_DEVICE`` for the
            workers (``"cpu"`` or ``"cuda"``); ``None`` leaves it alone.

    Returns:
        ScriptRun: the command, its output (stdout and stderr) and duration.

    Raises:
        FileNotFoundError: no such script.
        RankRaisedError, RankDiedError, LaunchTimeoutError: the job failed
            (the first two carry the job's whole output as ``.output``).
    """
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"script {str(script)!r} does not exist")
    nprocs = validate.positive_int("nprocs", nprocs)
    timeout = validate.positive_float("timeout", timeout, allow_none=True)
    env = dict(os.environ)
    if device is not None:
        env[DEVICE_ENV] = validate.one_of("device", device, ("cpu", "cuda"))
    command = torchrun_command(path, nprocs, args)
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        workers = _children(proc.pid)
        ranks = {pid: _rank_of(pid) for pid in workers}
        proc.send_signal(signal.SIGTERM)          # torchrun closes its workers
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        running = sorted(r for r in ranks.values() if r is not None)
        detail = f"torchrun's output (last 2000 characters):\n{output[-2000:]}"
        error = LaunchTimeoutError(timeout, running, {}, pids=workers, detail=detail)
        error.output = output
        raise error from None
    except BaseException:                          # Ctrl-C: stop torchrun and its workers
        workers = _children(proc.pid)
        proc.kill()
        proc.communicate()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        raise
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return ScriptRun(command, output, seconds)
    match = _ROOT_CAUSE.search(output)
    rank, code, pid = (int(g) for g in match.groups()) if match else (-1, proc.returncode, proc.pid)
    prefix = f"[rank{rank}]: "                     # torchrun prefixes workers' stderr lines
    trace = "\n".join(line[len(prefix):] for line in output.splitlines() if line.startswith(prefix))
    if code > 0 and "Traceback (most recent call last)" in trace:
        error: Exception = RankRaisedError(rank, pid, trace, pids=[pid])
    else:
        name = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None
        error = RankDiedError(rank, pid, code, name, pids=[pid])
    error.output = output                          # the whole job's output, for the curious
    raise error
