"""``torch.compile``: compile time is paid once, steady-state time on every call.

Algorithm of :func:`measure_compiled`: wrap ``fn`` with
``torch.compile(fn, backend=..., mode=...)``; time the *first* call alone
(synchronised: it traces the Python code with TorchDynamo, lowers it and,
with the default ``"inductor"`` backend, generates and compiles C++/Triton
code -- seconds, not milliseconds); then time the compiled function with
:func:`course_lib.bench.measure` (warm-up discarded) and, for comparison,
the eager ``fn``. Reporting one number that mixes the two is the error this
separates: a benchmark of a few calls is dominated by compilation, a long
training run is not.

The inductor backend on CPU needs a C++ compiler (gcc/clang); if compiling
fails (no compiler, unsupported op, unknown backend) the result says so in
``error`` instead of raising, so a chapter can print it. A function whose
code was compiled earlier in the process may hit TorchDynamo's cache; pass
``cold=True`` to call ``torch._dynamo.reset()`` first (it discards all
compiled code in the process).

Introduced in chapter 09 (notebooks/09_benchmarking.ipynb).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import validate
from .timer import Timing, _fmt, measure, resolve_device, synchronize

__all__ = ["CompiledTiming", "measure_compiled"]


@dataclass(frozen=True)
class CompiledTiming:
    """First-call (compile + run) time, steady-state and eager timings, or the error.

    ``ok`` is False when compilation failed; then ``error`` says why and the
    timings of the compiled function are ``None``.
    """

    backend: str
    first_call_s: float | None
    steady: Timing | None
    eager: Timing | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def compile_overhead_s(self) -> float | None:
        """First call minus one steady-state call: roughly the compilation cost."""
        if not self.ok:
            return None
        return self.first_call_s - self.steady.median_s

    def __str__(self) -> str:
        lines = [f"torch.compile(backend={self.backend!r})"]
        if not self.ok:
            lines.append(f"could not compile here: {self.error}")
        else:
            lines += [f"first call (compile + run): {_fmt(self.first_call_s)}",
                      f"steady state: {self.steady}"]
        if self.eager is not None:
            lines.append(f"eager: {self.eager}")
        return "\n".join(lines)


def measure_compiled(fn: Callable[[], object], *, backend: str = "inductor", mode: str | None = None,
                     warmup: int = 3, repeats: int = 10, device=None, compare_eager: bool = True,
                     cold: bool = False) -> CompiledTiming:
    """Time ``torch.compile(fn)``: the first call separately from the steady state.

    Args:
        fn (callable): zero-argument callable (a closure over model and inputs).
        backend (str, default "inductor"): ``torch.compile`` backend
            (``"eager"`` only traces: fast, useful to test the plumbing).
        mode (str | None, default None): ``torch.compile`` mode
            (``"reduce-overhead"``, ``"max-autotune"``, ...).
        warmup, repeats, device: as in :func:`course_lib.bench.measure`, for
            the steady-state and eager timings.
        compare_eager (bool, default True): also time ``fn`` uncompiled.
        cold (bool, default False): ``torch._dynamo.reset()`` first.

    Returns:
        CompiledTiming: ``first_call_s``, ``steady``, ``eager``, or ``error``.

    >>> r = measure_compiled(lambda: torch.ones(8).sum(), backend="no-such-backend",
    ...                      compare_eager=False, device="cpu")
    >>> r.ok, "no-such-backend" in r.error
    (False, True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    validate.instance_of("backend", backend, str)
    if mode is not None:
        validate.instance_of("mode", mode, str)
    dev = resolve_device(device)
    eager = measure(fn, warmup=warmup, repeats=repeats, device=dev) if compare_eager else None
    if cold:
        torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, backend=backend, mode=mode)
        synchronize(dev)
        t0 = time.perf_counter()
        compiled()
        synchronize(dev)
        first = time.perf_counter() - t0
    except Exception as exc:  # report, do not crash the chapter
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return CompiledTiming(backend, None, None, eager, f"{type(exc).__name__}: {first_line}")
    steady = measure(compiled, warmup=warmup, repeats=repeats, device=dev)
    return CompiledTiming(backend, first, steady, eager)
