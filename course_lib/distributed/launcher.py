"""Run a function as an N-process distributed job and get every rank's return value.

``launch(fn, nprocs=2)`` is the notebook-friendly launcher: it starts N
worker processes with ``torch.multiprocessing.start_processes``, each joins
the process group (gloo on CPU, NCCL on CUDA; a free port chosen
automatically), calls ``fn(*args, **kwargs)``, tears down in order, and the
caller gets ``[result_of_rank_0, result_of_rank_1, ...]``. Scripts go through
``torchrun`` instead (:mod:`course_lib.distributed.torchrun`).

Why ``torch.multiprocessing`` for functions (and ``torchrun`` for scripts):
the caller needs return values, the failing rank's own traceback, a time
limit and no leftover processes; ``start_processes`` gives per-rank
processes whose exit codes and tracebacks it collects (``torchrun`` only
runs files and reports exit codes). Its *forkserver* start method starts
one server process per session that imports torch (and the modules
``DistributedDataParallel`` pulls in, ~1 s) once; every later worker is a
fork of it, so a launch costs tens of milliseconds instead of a fresh
interpreter importing torch per rank (1.5-3 s each on a small CPU).
*spawn* is available (and the only choice on Windows).

Algorithm of ``launch``:

1. Resolve ``fn`` to an import path ``"package.module:qualified.name"``
   and import it here first. A function defined in a notebook lives in
   ``__main__``, which a worker process cannot import (Lightning issue
   #10511); that is refused up front with :class:`NotImportableError`
   telling you to move it into a ``.py`` file. Pickle ``args``/``kwargs``
   here too, so an unpicklable argument fails before any process starts.
2. Pick the device (``course_lib.device.default_device``), the backend
   (``backend_for``) and a free port; start N workers. Each worker sets
   ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
   (as ``torchrun`` would), the caller's current environment, ``sys.path``
   and working directory, sends its stdout/stderr to a file, imports
   ``fn`` by name and runs it inside
   :func:`~course_lib.distributed.process.distributed_process` (which
   tears down in order), moves tensors in the result to the CPU and
   pickles it to a file the caller reads; the caller then prints each
   rank's output prefixed ``[rank N]``.
3. Wait with a deadline. The first rank to fail decides the error:
   a traceback -> :class:`RankRaisedError`; a signal or ``os._exit`` ->
   :class:`RankDiedError`; the deadline -> the Python stacks of the ranks
   still running are dumped (``faulthandler`` on SIGUSR1) and they are
   killed -> :class:`LaunchTimeoutError`. In every case (and on Ctrl-C)
   every worker is killed and reaped before the call returns.

Two details. Each worker calls ``gc.freeze()`` before running ``fn``: the
~300,000 objects torch creates at import move to the garbage collector's
permanent generation, so the teardown's ``gc.collect()`` and its search for
live DDP modules take milliseconds instead of ~0.4 s per rank. And, as with
any ``multiprocessing`` program, a *script* that calls ``launch`` must do so
under ``if __name__ == "__main__":`` (each worker re-imports the caller's
main script); notebooks need no guard.

Introduced in chapter 07 (notebooks/07_ddp_gradient_accumulation.ipynb).

Example:
    >>> from course_lib.device import default_device
    >>> target_name(default_device)
    'course_lib.device:default_device'
    >>> target_name(lambda: 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    course_lib.distributed.errors.NotImportableError: cannot launch <lambda>: ... move it to module level in a .py file
"""
from __future__ import annotations

import faulthandler
import gc
import importlib
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.multiprocessing import start_processes
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from course_lib import validate
from course_lib.device import default_device
from course_lib.distributed.backend import LOOPBACK, backend_for, free_port
from course_lib.distributed.errors import (LaunchError, LaunchTimeoutError, NotImportableError,
                                           RankDiedError, RankRaisedError)
from course_lib.distributed.process import distributed_process

__all__ = ["launch", "target_name", "START_METHODS", "DEFAULT_START_METHOD", "PRELOAD"]

#: Start methods ``launch`` accepts (``fork`` is left out: forking a process
#: that already runs torch threads, or a Jupyter kernel, is unsafe).
START_METHODS = ("forkserver", "spawn")
DEFAULT_START_METHOD = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                        else "spawn")
#: Imported once by the forkserver so that workers start with them loaded
#: (``DistributedDataParallel`` imports ``torch._dynamo`` on first use: ~1 s).
PRELOAD = ("torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo",
           "course_lib.distributed.launcher")

_preload_set = False
_stack_file = None  # kept open in the worker for faulthandler


def target_name(fn: Callable | str) -> str:
    """Return ``"module:qualname"`` for ``fn`` after checking a worker could import it.

    Args:
        fn (callable or str): a module-level function (or other importable
            callable), or a string ``"package.module:function"``.

    Raises:
        NotImportableError: ``fn`` lives in ``__main__`` (a notebook or the
            script being run), is a lambda or nested function, or the name
            does not import / resolve to it.
    """
    if isinstance(fn, str):
        module, sep, qualname = fn.partition(":")
        if not sep or not module or not qualname:
            raise NotImportableError(f"target {fn!r} must look like 'package.module:function'")
        _import_target(fn)
        return fn
    if not callable(fn):
        raise TypeError(f"fn must be a callable or a 'module:function' string, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    label = qualname or repr(fn)
    if module in (None, "__main__", "__mp_main__"):
        raise NotImportableError(
            f"cannot launch {label}: it is defined in __main__ (a notebook cell or the running "
            "script), and worker processes cannot import __main__ (functions are sent to them "
            "by name; Lightning issue #10511). Put the function in a .py file, e.g. "
            f"my_workers.py, then `from my_workers import {getattr(fn, '__name__', 'fn')}` "
            "and launch that (or pass 'my_workers:function_name').")
    if qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        raise NotImportableError(
            f"cannot launch {label}: lambdas and functions defined inside other functions have "
            "no importable name; move it to module level in a .py file")
    ref = f"{module}:{qualname}"
    try:
        found = _import_target(ref)
    except NotImportableError as err:
        raise NotImportableError(f"cannot launch {label}: {err}") from None
    if found is not fn and getattr(found, "__wrapped__", None) is not fn:
        raise NotImportableError(f"cannot launch {label}: {ref} names a different object "
                                 "(was the function redefined or decorated?)")
    return ref


def _import_target(ref: str):
    module_name, _, qualname = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise NotImportableError(f"module {module_name!r} does not import ({err}); is it on "
                                 "sys.path, or in the current directory?") from err
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise NotImportableError(f"module {module_name!r} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise NotImportableError(f"{ref} is a {type(obj).__name__}, not a callable")
    return obj


def _to_cpu(value):
    """Move tensors (also inside lists, tuples and dicts) to the CPU, detached."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return type(value)((k, _to_cpu(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


@dataclass(frozen=True)
class _RankSpec:
    """What every worker needs (picklable)."""

    target: str
    payload: bytes
    world_size: int
    port: int
    device: str
    folder: str
    sys_path: tuple[str, ...]
    cwd: str
    environ: tuple[tuple[str, str], ...]
    threads: int
    teardown: bool


def _result_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"result-rank{rank}.pkl")


def _stack_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"stack-rank{rank}.txt")


def _output_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"output-rank{rank}.txt")


def _read_outputs(folder: str, nprocs: int) -> dict[int, str]:
    outputs = {}
    for rank in range(nprocs):
        path = _output_path(folder, rank)
        if os.path.exists(path):
            with open(path, errors="replace") as fh:
                outputs[rank] = fh.read()
    return outputs


def _echo(outputs: dict[int, str]) -> None:
    for rank, text in sorted(outputs.items()):
        for line in text.splitlines():
            print(f"[rank {rank}] {line}")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run_rank(rank: int, spec: _RankSpec) -> None:
    """Worker entry point: environment, import, run inside distributed_process, save result."""
    global _stack_file
    # The caller's environment *now* (a forkserver holds the one from when it started).
    os.environ.clear()
    os.environ.update(dict(spec.environ))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(spec.world_size),
                      LOCAL_WORLD_SIZE=str(spec.world_size), MASTER_ADDR=LOOPBACK,
                      MASTER_PORT=str(spec.port))
    sys.path[:] = list(spec.sys_path)
    os.chdir(spec.cwd)
    # Everything this rank prints (Python, C++ logs, crash messages) goes to a
    # file the caller shows: a notebook never sees a child process's terminal.
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.open(_output_path(spec.folder, rank), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    faulthandler.enable(all_threads=True)  # a segfault or abort prints the Python stack there
    if hasattr(signal, "SIGUSR1"):
        _stack_file = open(_stack_path(spec.folder, rank), "w")
        faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True)
    if spec.device == "cpu":
        torch.set_num_threads(spec.threads)
    fn = _import_target(spec.target)
    for name in PRELOAD:  # already loaded under forkserver; spawn pays for them here
        importlib.import_module(name)
    # Everything alive now was made by imports. gc.freeze() moves it to the
    # collector's permanent generation, so the teardown's gc.collect() and
    # scan for live DDP modules look at the job's own objects only (~0.4 s
    # per rank otherwise, for the ~300,000 objects torch creates at import).
    gc.freeze()
    args, kwargs = pickle.loads(spec.payload)
    with distributed_process(spec.device, teardown=spec.teardown):
        result = _to_cpu(fn(*args, **kwargs))
        del fn, args, kwargs
    try:
        data = pickle.dumps(result)
    except Exception as err:
        raise TypeError(f"rank {rank}'s return value ({type(result).__name__}) cannot be pickled: "
                        f"{err}; return plain Python values and tensors") from err
    partial = _result_path(spec.folder, rank) + ".part"
    with open(partial, "wb") as fh:
        fh.write(data)
    os.replace(partial, _result_path(spec.folder, rank))


def _set_preload(method: str) -> None:
    global _preload_set
    if method == "forkserver" and not _preload_set:
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
        _preload_set = True


def _dump_stacks(processes, folder: str) -> dict[int, str]:
    """SIGUSR1 the live ranks (faulthandler writes their stacks), wait briefly, read."""
    alive = {rank: p for rank, p in enumerate(processes) if p.is_alive()}
    if not hasattr(signal, "SIGUSR1"):
        return {rank: "" for rank in alive}
    for p in alive.values():
        try:
            os.kill(p.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    stacks: dict[int, str] = {}
    deadline = time.monotonic() + 1.0
    for rank in alive:
        path = _stack_path(folder, rank)
        text = ""
        while time.monotonic() < deadline:
            text = open(path).read() if os.path.exists(path) else ""
            if "File" in text and text.endswith("\n"):
                time.sleep(0.05)  # let the other threads' stacks finish
                text = open(path).read()
                break
            time.sleep(0.02)
        stacks[rank] = text
    return stacks


def _kill_all(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join()


def launch(fn: Callable | str, nprocs: int = 2, *, args: Sequence = (), kwargs: dict | None = None,
           device: str | None = None, timeout: float | None = 300.0,
           start_method: str | None = None, threads: int = 1, teardown: bool = True,
           echo: bool = True) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``nprocs`` ranks; return their results ordered by rank.

    Inside ``fn`` the process group is initialized: use ``torch.distributed``
    directly, and :func:`~course_lib.distributed.process.current_worker`
    for the rank, device and backend.

    Args:
        fn (callable or str): a function defined at module level in an
            importable ``.py`` file (not in a notebook), or
            ``"package.module:function"``.
        nprocs (int, default 2): number of ranks; on CUDA at most the number
            of GPUs (one per rank).
        args (sequence, default ()): positional arguments (picklable).
        kwargs (dict or None, default None): keyword arguments (picklable).
        device (str or None, default None): ``"cpu"`` (gloo) or ``"cuda"``
            (NCCL); ``None``: :func:`course_lib.device.default_device`.
        timeout (float or None, default 300.0): seconds from the start until
            the job is declared hung and killed; ``None`` waits forever.
        start_method (str or None, default None): ``"forkserver"`` (default
            where available: fast) or ``"spawn"`` (a fresh interpreter per
            rank; the only method on Windows).
        threads (int, default 1): torch CPU threads per rank (CPU runs; N
            ranks with many threads each would oversubscribe the cores).
        teardown (bool, default True): run the orderly teardown in each rank;
            ``False`` only to demonstrate the pitfall it prevents.
        echo (bool, default True): after the job, print what each rank wrote
            to stdout/stderr, each line prefixed ``[rank N]`` (a worker's own
            terminal is invisible from a notebook). Errors carry the outputs
            as ``.outputs`` (and a dead rank's last lines in the message).

    Returns:
        list: ``[result of rank 0, ..., result of rank nprocs-1]``; tensors
        in a result are moved to the CPU.

    Raises:
        NotImportableError: ``fn`` cannot be imported by a worker.
        RankRaisedError, RankDiedError, LaunchTimeoutError: see
            :mod:`course_lib.distributed.errors`. No worker outlives the call.
    """
    target = target_name(fn)
    nprocs = validate.positive_int("nprocs", nprocs)
    kind = validate.one_of("device", default_device() if device is None else device, ("cpu", "cuda"))
    timeout = validate.positive_float("timeout", timeout, allow_none=True)
    method = validate.one_of("start_method", start_method or DEFAULT_START_METHOD,
                             [m for m in START_METHODS if m in multiprocessing.get_all_start_methods()])
    threads = validate.positive_int("threads", threads)
    echo = validate.instance_of("echo", echo, bool)
    backend_for(kind)  # fails early on a build without the backend
    if kind == "cuda" and nprocs > torch.cuda.device_count():
        raise ValueError(f"nprocs={nprocs} but only {torch.cuda.device_count()} CUDA device(s): "
                         "NCCL needs one GPU per rank")
    try:
        payload = pickle.dumps((tuple(args), dict(kwargs or {})))
    except Exception as err:
        raise TypeError(f"args/kwargs cannot be pickled for the worker processes: {err}") from err

    folder = tempfile.mkdtemp(prefix="course-launch-")
    try:
        return _run_job(target, payload, nprocs, kind, timeout, method, threads, teardown, folder,
                        echo)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_job(target, payload, nprocs, kind, timeout, method, threads, teardown, folder,
             echo) -> list:
    spec = _RankSpec(target=target, payload=payload, world_size=nprocs, port=free_port(),
                     device=kind, folder=folder, sys_path=tuple(sys.path), cwd=os.getcwd(),
                     environ=tuple(os.environ.items()), threads=threads, teardown=teardown)
    _set_preload(method)
    start = time.monotonic()
    context = start_processes(_run_rank, args=(spec,), nprocs=nprocs, join=False,
                              start_method=method)
    pids = context.pids()
    try:
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            if remaining is not None and remaining <= 0:
                stacks = _dump_stacks(context.processes, folder)
                _kill_all(context.processes)
                raise LaunchTimeoutError(timeout, sorted(stacks), stacks, pids=pids)
            if context.join(timeout=None if remaining is None else min(remaining, 1.0)):
                break
    except ProcessRaisedException as err:
        trace = err.msg.split("terminated with the following error:\n", 1)[-1]
        error: LaunchError = RankRaisedError(err.error_index, err.error_pid, trace, pids=pids)
    except ProcessExitedException as err:
        rank = err.error_index
        output = _read_outputs(folder, nprocs).get(rank, "")
        error = RankDiedError(rank, err.error_pid, err.exit_code, err.signal_name, pids=pids,
                              returned=os.path.exists(_result_path(folder, rank)),
                              output_tail=_tail(output))
    except LaunchTimeoutError as err:
        error = err
    else:
        error = None
    finally:
        _kill_all(context.processes)  # also on Ctrl-C: no worker outlives the call
        for path in context.error_files:
            if path and os.path.exists(path):
                os.unlink(path)
    outputs = _read_outputs(folder, nprocs)
    if error is not None:
        error.outputs = outputs
        raise error
    if echo:
        _echo(outputs)
    results = []
    for rank in range(nprocs):
        path = _result_path(folder, rank)
        if not os.path.exists(path):
            raise LaunchError(f"rank {rank} exited normally without a result (did the function "
                              "call sys.exit(0)?)", pids=pids)
        with open(path, "rb") as fh:
            results.append(pickle.load(fh))
    return results
