"""Benchmark: our loss scaler against ``torch.amp.GradScaler`` (``python -m course_lib bench scaler``).

What is timed, per training step, on the same scaled gradients for every
contender (``scale(loss)``, ``unscale_`` of the optimizer's gradients and
``update()``; with ``--step``-style rows also the SGD step, skipped on
overflow):

* ``GradScaler`` -- ``torch.amp.GradScaler``: ``scale``, ``unscale_``,
  (``step``,) ``update``;
* ``ours`` -- :class:`course_lib.scaling.DynamicLossScaler` (its
  ``unscale_`` is the fused kernel of
  :func:`course_lib.gradients.unscale_and_check_`, one host
  synchronisation per step);
* ``loop`` -- the same scaler with the readable per-tensor loop
  :func:`course_lib.gradients.unscale_and_check_reference_` instead (one
  synchronisation and one multiplication launch per tensor): what chapter
  04 explains, and what the fused kernel replaces.

Three gradient shapes: a few large tensors (20 x 100,000 elements), many
small ones (200 x 1,000) and very many tiny ones (1,000 x 100), where
per-tensor overhead dominates.

Algorithm: every call starts from the same scaled gradients (restored with
``torch._foreach_copy_`` *outside* the timed region, so each call sees fresh
values, as a training step does, and never drifts into subnormals); each
call is timed alone with :func:`course_lib.bench.measure` (``repeats=1``,
CUDA events on a GPU); the contenders are interleaved call by call (A, B,
C, A, B, C, ...) so a change in machine load hits all of them alike; the
report gives medians and the ratio of medians ``ours / GradScaler`` (and
``loop / GradScaler``) measured in that same run. After the timing, one
more step of each contender is compared: the unscaled gradients must be
bitwise equal and the scales equal, or the benchmark fails.

Each row also gives the *host reads* of one step per contender
(:func:`count_host_reads`): how many values the step copied from a tensor
into Python (``bool(t)``, ``t.item()``, ``float(t)``) -- on a GPU, each one
makes the CPU wait for every queued kernel.

Introduced in chapter 04 (notebooks/04_loss_scaling.ipynb).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib import validate
from course_lib.bench.timer import measure, resolve_device, synchronize
from course_lib.gradients import unscale_and_check_reference_
from course_lib.scaling import DynamicLossScaler

__all__ = ["SHAPES", "count_host_reads", "run", "format_rows", "main"]

#: name -> (number of gradient tensors, elements per tensor)
SHAPES: dict[str, tuple[int, int]] = {
    "20 x 100k": (20, 100_000),
    "200 x 1k": (200, 1_000),
    "1000 x 100": (1000, 100),
}
CONTENDERS = ("GradScaler", "ours", "loop")


class _HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_host_reads(fn: Callable[[], object]) -> tuple[int, object]:
    """Call ``fn()``; return ``(host reads, fn's result)``.

    Algorithm: run ``fn`` under a ``TorchDispatchMode`` that counts the
    calls of ``aten._local_scalar_dense``, the operator behind every copy of
    one tensor value into a Python number (``bool(t)`` -- so ``if t:`` --
    ``t.item()``, ``float(t)``, ``int(t)``). On a GPU each such read is a
    host synchronisation: the CPU waits until every queued kernel has run.
    Whole-tensor copies (``t.cpu()``, ``t.tolist()``) are not counted. The
    count does not depend on the device, so it can be taken on a CPU.

    >>> grads = [torch.ones(3) for _ in range(4)]
    >>> count_host_reads(lambda: [bool(torch.isfinite(g).all()) for g in grads])[0]
    4
    """
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    with _HostReads() as counter:
        result = fn()
    return counter.count, result


def _params(n: int, size: int, src: list[torch.Tensor], device) -> tuple[list[torch.Tensor], torch.optim.SGD]:
    params = [torch.nn.Parameter(torch.zeros(size, device=device)) for _ in range(n)]
    for p, s in zip(params, src):
        p.grad = s.clone()
    return params, torch.optim.SGD(params, lr=1e-3)


def _case(n: int, size: int, with_step: bool, device: torch.device, rounds: int, warmup: int,
          seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    scale = 2.0 ** 16
    # Scaled gradients of magnitude ~1e-3 * S, as a backward pass with loss scaling makes them.
    src = [(torch.randn(size, generator=gen) * 1e-3 * scale).to(device) for _ in range(n)]
    loss = torch.tensor(1.5, device=device)
    kwargs = {"init_scale": scale, "growth_interval": 2000}
    contenders: dict[str, tuple[Callable[[], object], list[torch.Tensor], Callable[[], float]]] = {}

    params, opt = _params(n, size, src, device)
    grad_scaler = torch.amp.GradScaler(device.type, **kwargs)

    def torch_step(grad_scaler=grad_scaler, opt=opt):
        grad_scaler.scale(loss)
        grad_scaler.unscale_(opt)
        if with_step:
            grad_scaler.step(opt)
        grad_scaler.update()

    contenders["GradScaler"] = (torch_step, params, grad_scaler.get_scale)

    params, opt = _params(n, size, src, device)
    ours = DynamicLossScaler(**kwargs)

    def our_step(ours=ours, opt=opt):
        ours.scale(loss)
        found_inf = ours.unscale_(opt)
        if with_step and not found_inf:
            opt.step()
        ours.update()

    contenders["ours"] = (our_step, params, ours.get_scale)

    params, opt = _params(n, size, src, device)
    looped = DynamicLossScaler(**kwargs)

    def loop_step(looped=looped, opt=opt, params=params):
        looped.scale(loss)
        found_inf = unscale_and_check_reference_([p.grad for p in params], looped.get_scale())
        if with_step and not found_inf:
            opt.step()
        looped.update(found_inf)

    contenders["loop"] = (loop_step, params, looped.get_scale)

    def restore(params):
        torch._foreach_copy_([p.grad for p in params], src)
        synchronize(device)

    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(warmup + rounds):
        for name, (fn, params, _) in contenders.items():
            restore(params)
            t = measure(fn, warmup=0, repeats=1, device=device).median_s
            if r >= warmup:
                samples[name].append(t)

    # The contenders must compute the same thing: one more step each (its host reads
    # counted), compared bitwise.
    grads, scales, reads = {}, {}, {}
    for name, (fn, params, get_scale) in contenders.items():
        restore(params)
        reads[name], _ = count_host_reads(fn)
        grads[name] = [p.grad.detach().cpu() for p in params]
        scales[name] = get_scale()
    same = all(torch.equal(a, b) for name in ("ours", "loop")
               for a, b in zip(grads[name], grads["GradScaler"])) and \
        len(set(scales.values())) == 1
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return {"tensors": n, "elements": size, "step": with_step, "median_s": medians,
            "ours_ratio": medians["ours"] / medians["GradScaler"],
            "loop_ratio": medians["loop"] / medians["GradScaler"], "same_result": same,
            "host_reads": reads,
            "rounds": rounds, "device": str(device), "threads": torch.get_num_threads()}


def run(shapes: dict[str, tuple[int, int]] | None = None, steps=(False, True), rounds: int = 40,
        warmup: int = 5, device=None, seed: int = 0,
        progress: Callable[[str], object] | None = None) -> list[dict]:
    """Time the three contenders on each shape, without and with an SGD step; one row per case.

    Args:
        shapes (dict | None, default :data:`SHAPES`): name -> (tensors, elements per tensor).
        steps (tuple of bool, default (False, True)): without / with the optimizer step.
        rounds (int, default 40): timed calls per contender and case (interleaved).
        warmup (int, default 5): untimed rounds first.
        device (str | torch.device | None): ``None`` means ``default_device()``.
        seed (int, default 0): seeds the gradients.
        progress (callable | None): called with a line of text before each case.

    Returns:
        list[dict]: ``tensors``, ``elements``, ``step``, ``median_s`` (per contender),
        ``ours_ratio``, ``loop_ratio``, ``same_result``, ``host_reads`` (per contender, one
        step), ``rounds``, ``device``, ``threads``.

    >>> rows = run({"2 x 10": (2, 10)}, steps=(True,), rounds=2, warmup=1, device="cpu")
    >>> rows[0]["same_result"], sorted(rows[0]["median_s"]), rows[0]["host_reads"]
    (True, ['GradScaler', 'loop', 'ours'], {'GradScaler': 1, 'ours': 1, 'loop': 2})
    """
    shapes = SHAPES if shapes is None else shapes
    rounds = validate.positive_int("rounds", rounds)
    warmup = validate.non_negative_int("warmup", warmup)
    dev = resolve_device(device)
    rows = []
    for name, (n, size) in shapes.items():
        for with_step in steps:
            if progress is not None:
                progress(f"{name}, {'with' if with_step else 'without'} SGD step ...")
            rows.append(_case(n, size, bool(with_step), dev, rounds, warmup, seed))
    return rows


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def format_rows(rows: list[dict]) -> str:
    """The rows as a table: medians in microseconds and the ratios to GradScaler."""
    head = (f"{'gradients':>13}  {'SGD step':>8}  {'GradScaler us':>13}  {'ours us':>9}  {'ours/GS':>7}"
            f"  {'loop us':>9}  {'loop/GS':>7}  {'host reads GS/ours/loop':>23}  same result")
    lines = [head]
    for r in rows:
        m, h = r["median_s"], r["host_reads"]
        reads = f"{h['GradScaler']}/{h['ours']}/{h['loop']}"
        lines.append(f"{r['tensors']:>5} x {r['elements']:<6}  {'yes' if r['step'] else 'no':>8}  "
                     f"{_us(m['GradScaler']):>13}  {_us(m['ours']):>9}  {r['ours_ratio']:>6.2f}x  "
                     f"{_us(m['loop']):>9}  {r['loop_ratio']:>6.2f}x  {reads:>23}  "
                     f"{'yes' if r['same_result'] else 'NO'}")
    if rows:
        lines.append(f"(medians of {rows[0]['rounds']} interleaved calls each, {rows[0]['device']}, "
                     f"{rows[0]['threads']} torch thread(s); host reads: one step)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib bench scaler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per contender and case (40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (5)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on a CPU (1, as the chapters use)")
    parser.add_argument("--target", type=float, default=1.2,
                        help="exit 1 if any ours/GradScaler ratio exceeds this (1.2)")
    args = parser.parse_args(argv)
    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(validate.positive_int("--threads", args.threads))
    rows = run(rounds=args.rounds, warmup=args.warmup, device=dev,
               progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rows))
    worst = max(r["ours_ratio"] for r in rows)
    ok = all(r["same_result"] for r in rows)
    print(f"worst ours/GradScaler ratio: {worst:.2f}x (target <= {args.target:g}x); "
          f"results identical to GradScaler: {'yes' if ok else 'NO'}")
    return 0 if ok and worst <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
