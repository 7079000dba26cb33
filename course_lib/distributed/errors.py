"""What can go wrong in a multi-process job, as exceptions that say which rank and why.

* :class:`NotImportableError` -- the function cannot be sent to another
  process (defined in a notebook, a lambda, a nested function).
* :class:`RankRaisedError` -- a rank raised; carries the rank's own
  traceback text (``remote_traceback``).
* :class:`RankDiedError` -- a rank ended without a Python traceback: killed
  by a signal (SIGKILL from the out-of-memory killer, SIGSEGV, SIGABRT) or
  ``os._exit(code)``; carries ``exitcode`` (negative: ``-signal``) and
  ``signal_name``.
* :class:`LaunchTimeoutError` -- the job did not finish in time (typically
  one rank never reached a collective the others wait in); carries the
  ranks still running and their Python stacks at the moment of the timeout.

All but the first derive from :class:`LaunchError`, which records ``pids``
(every worker of the job, all ended when the error is raised).

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> err = RankDiedError(1, 4242, -9, "SIGKILL", pids=[4241, 4242])
    >>> print(err)
    rank 1 (pid 4242) died: killed by signal SIGKILL (exit code -9) before it returned; no Python traceback exists (killed from outside, out of memory, os._exit or a crash in native code)
"""
from __future__ import annotations

__all__ = ["LaunchError", "NotImportableError", "RankRaisedError", "RankDiedError",
           "LaunchTimeoutError"]


class NotImportableError(TypeError):
    """The target cannot be imported by name in a fresh process."""


class LaunchError(RuntimeError):
    """A launched job failed; ``pids`` lists all its worker processes (all ended).

    ``outputs`` maps rank -> what that rank printed (filled in by the launcher).
    """

    def __init__(self, message: str, *, pids: list[int] | None = None):
        super().__init__(message)
        self.pids = list(pids or [])
        self.outputs: dict[int, str] = {}


class RankRaisedError(LaunchError):
    """Rank ``rank`` raised; ``remote_traceback`` is its traceback as text."""

    def __init__(self, rank: int, pid: int, remote_traceback: str, *, pids=None):
        self.rank, self.pid, self.remote_traceback = rank, pid, remote_traceback.rstrip()
        lines = self.remote_traceback.splitlines()
        last = lines[-1] if lines else "an exception"
        super().__init__(f"rank {rank} (pid {pid}) raised {last}\n\n"
                         f"Traceback of rank {rank}:\n{self.remote_traceback}", pids=pids)


class RankDiedError(LaunchError):
    """Rank ``rank`` ended without a traceback: a signal or ``os._exit``."""

    def __init__(self, rank: int, pid: int, exitcode: int, signal_name: str | None = None, *,
                 returned: bool = False, pids=None, output_tail: str = ""):
        self.rank, self.pid, self.exitcode, self.signal_name = rank, pid, exitcode, signal_name
        how = (f"killed by signal {signal_name} (exit code {exitcode})" if signal_name
               else f"exited with code {exitcode}")
        when = ("after it returned its result (during teardown or interpreter shutdown)"
                if returned else "before it returned")
        message = (f"rank {rank} (pid {pid}) died: {how} {when}; no Python traceback exists "
                   "(killed from outside, out of memory, os._exit or a crash in native code)")
        if exitcode == 1 and not returned:
            message += ("; exit code 1 without a traceback means the function called "
                        "sys.exit(1), or the worker failed while starting: multiprocessing "
                        "re-imports the caller's main script in each worker, so guard the launch "
                        "with `if __name__ == \"__main__\":` (and do not feed the caller on stdin)")
        if output_tail:
            message += f"\n\nLast lines rank {rank} printed:\n{output_tail}"
        super().__init__(message, pids=pids)


class LaunchTimeoutError(LaunchError, TimeoutError):
    """The job ran past its time limit; ``running`` ranks were killed; ``stacks[rank]`` is text."""

    def __init__(self, timeout: float, running: list[int], stacks: dict[int, str], *, pids=None,
                 detail: str = ""):
        self.timeout, self.running, self.stacks = timeout, list(running), dict(stacks)
        parts = [f"the job did not finish within {timeout:g} s: rank(s) "
                 f"{', '.join(map(str, running)) or '(unknown)'} still running and were killed. "
                 "A rank that never reaches a collective the others wait in (a skipped "
                 "all_reduce, a rank-dependent branch, different numbers of batches) looks "
                 "like this."]
        for rank in running:
            if rank in stacks:
                stack = stacks[rank].strip() or "(no stack dump: the rank did not answer)"
                parts.append(f"--- Python stack of rank {rank} at the timeout ---\n{stack}")
        if detail:
            parts.append(detail)
        super().__init__("\n\n".join(parts), pids=pids)
