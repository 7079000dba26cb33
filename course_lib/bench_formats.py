"""Benchmark: ``course_lib.formats.round_to_format`` next to torch's native cast (CPU).

Introduced in chapter 01 (notebooks/01_float_formats.ipynb). Run it with
``python -m course_lib bench formats [--n N] [--repeats R] [--formats fp16,bf16]``.

For ``n`` random float32 values (``torch.randn``, fixed seed) it times, as
the median of ``repeats`` runs after one warm-up run (``time.perf_counter``;
the three take turns within each repeat, so a busy machine slows them alike):

- ``native cast``: ``x.to(dtype)`` -- torch's C++ conversion, half the job;
- ``native round trip``: ``x.to(dtype).float()`` -- the fair comparison,
  since ``round_to_format`` returns float32 values (the "fake-quantised"
  tensor), i.e. it does what this pair of casts does;
- ``round_to_format``: the integer-bit implementation.

``ratio`` is round_to_format / native round trip (the median of the ratios
of the repeats), measured in this run (the
course's target: at most 4x); ``identical`` says whether the results were
bit-identical to torch's. Timings depend on the machine and on what else it
is running; nothing asserts on them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_lib.formats import get_format, round_to_format


def _time_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median ms of each function; the functions take turns within each repeat, so a busy
    machine slows them alike. Also the median of the per-repeat ratios (last / second)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time_ms(fn))
    return {name: statistics.median(ts) for name, ts in times.items()} | {
        "ratios": [o / n for o, n in zip(times["ours"], times["roundtrip"])]}


def run(n: int = 16_000_000, repeats: int = 5, formats=("fp16", "bf16"), seed: int = 0) -> list[dict]:
    """Time round_to_format against torch's cast for each format; return one dict per format.

    Arguments: ``n`` (int >= 1, number of float32 values, default 16 million),
    ``repeats`` (int >= 1, timed runs per measurement, default 5; the median
    is reported), ``formats`` (formats with a torch dtype, default fp16 and
    bf16), ``seed`` (for ``torch.randn``). Row keys: ``format``, ``n``,
    ``threads``, ``native_cast_ms``, ``native_roundtrip_ms``,
    ``round_to_format_ms``, ``ratio`` (median over the repeats of
round_to_format / native round trip),
    ``identical`` (bit-identical to ``x.to(dtype).float()``).

    >>> rows = run(n=1000, repeats=1)
    >>> [r["format"] for r in rows], all(r["identical"] for r in rows)
    (['fp16', 'bf16'], True)
    """
    for value, what in ((n, "n"), (repeats, "repeats")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an int >= 1; got {value!r}")
        if value < 1:
            raise ValueError(f"{what} must be >= 1; got {value}")
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    rows = []
    for spec in formats:
        fmt = get_format(spec)
        if fmt.torch_dtype is None:
            raise ValueError(f"{fmt.name} has no torch dtype to compare with; allowed: formats with "
                             "one (fp16, bf16, fp8_e4m3fn, fp8_e5m2, fp8_e4m3fnuz, fp8_e5m2fnuz)")
        dtype = fmt.torch_dtype
        t = _interleaved({"cast": lambda: x.to(dtype), "roundtrip": lambda: x.to(dtype).float(),
                          "ours": lambda: round_to_format(x, fmt)}, repeats)
        same = torch.equal(round_to_format(x, fmt).view(torch.int32),
                           x.to(dtype).float().view(torch.int32))
        rows.append({
            "format": fmt.name, "n": n, "threads": torch.get_num_threads(),
            "native_cast_ms": t["cast"], "native_roundtrip_ms": t["roundtrip"],
            "round_to_format_ms": t["ours"], "ratio": statistics.median(t["ratios"]),
            "identical": same,
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows of :func:`run` as an aligned plain-text table."""
    headers = ["format", "n", "threads", "native cast ms", "native round trip ms",
               "round_to_format ms", "ratio", "identical"]
    cells = [[r["format"], f"{r['n']:,}", str(r["threads"]), f"{r['native_cast_ms']:.1f}",
              f"{r['native_roundtrip_ms']:.1f}", f"{r['round_to_format_ms']:.1f}",
              f"{r['ratio']:.2f}x", "yes" if r["identical"] else "NO"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.append("ratio = round_to_format / native round trip (x.to(dtype).float()): both return "
                 "float32 values; target <= 4x")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: ``--n``, ``--repeats``, ``--formats`` (comma-separated), ``--threads``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib bench formats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16_000_000, help="number of float32 values")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--formats", default="fp16,bf16", help="comma-separated format names")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run(n=args.n, repeats=args.repeats, formats=[f for f in args.formats.split(",") if f])
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
