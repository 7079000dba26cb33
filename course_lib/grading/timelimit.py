"""Run a function with a time limit, without killing the notebook.

In the main thread of a Unix process (a Jupyter kernel runs cells there) the
limit is a ``SIGALRM`` timer: when it fires, :class:`CheckTimeout` is raised
inside the running Python code, and re-raised every 0.5 s after that, so even
a learner's ``while True: try: ... except: pass`` is stopped. ``CheckTimeout``
derives from ``BaseException`` so ``except Exception`` in learner code does
not swallow it. A long call inside C (one huge matmul) is interrupted when it
returns to Python. What cannot be stopped from inside the process is a loop
that catches *every* exception (``except BaseException`` or a bare
``except:``) and goes on: in a notebook, interrupt the kernel; the
command-line grader does that itself, and restarts the kernel if needed.

Elsewhere (Windows, or a worker thread) the function runs in a daemon thread
that is abandoned, still running, when the limit passes. Introduced in
chapter 00.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable


class CheckTimeout(BaseException):
    """Raised inside code that ran past its time limit."""


def _alarm_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def call_with_time_limit(fn: Callable[..., Any], seconds: float, *args, **kwargs) -> Any:
    """Return ``fn(*args, **kwargs)``; raise :class:`CheckTimeout` after ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if _alarm_usable():
        def on_alarm(signum, frame):
            raise CheckTimeout(f"still running after {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckTimeout(f"still running after {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")
