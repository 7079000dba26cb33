"""Command line: ``python -m course_lib COMMAND`` (also installed as ``course-lib``).

Commands:
  grade PATH...        run notebooks in fresh kernels, print a table, write JSON
  build SRC DST        make learner notebooks from solution notebooks
  execute PATH...      execute solution notebooks in place (refresh outputs)
  env                  print the environment report of chapter 00
  bench [--device cpu|cuda] [--json PATH] [--plot PATH]
                       the benchmark sweep of chapter 09: matmuls by dtype, layout and
                       size; training steps by precision recipe; CPU threads
  bench NAME [ARGS]    a named benchmark: formats, grading, scaler
"""
from __future__ import annotations

import argparse
import sys


def _grade(args) -> int:
    from .grading.report import GradingError, grade_paths

    try:
        report = grade_paths(args.paths, cell_timeout=args.cell_timeout,
                             notebook_timeout=args.notebook_timeout, kernel=args.kernel,
                             output_limit=args.output_limit, executed_dir=args.save_executed,
                             jobs=args.jobs,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (GradingError, ValueError) as exc:
        print(f"grade: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        report.write_json(args.json)
        print(f"\nJSON report written to {args.json}")
    if report.grading_failed:
        print("grade: grading failed for at least one notebook (see GRADING FAILED above)",
              file=sys.stderr)
        return 1
    return 0


def _build(args) -> int:
    from .grading.builder import BuildError, build

    try:
        changed = build(args.solutions, args.notebooks)
    except BuildError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 2
    print(f"build: {len(changed)} notebook(s) written" + "".join(f"\n  {p}" for p in changed))
    return 0


def _execute(args) -> int:
    from .grading.execute import execute_paths

    execute_paths(args.paths, timeout=args.timeout)
    return 0


def _env(args) -> int:
    from .env import environment_report

    print(environment_report())
    return 0


BENCHMARKS = {"formats": "course_lib.bench_formats", "grading": "course_lib.bench.grading",
              "scaler": "course_lib.bench.scaler"}


def _bench(args) -> int:
    import importlib

    if args.name is None:  # the main sweep (course_lib.bench.sweep): matmuls, training steps, threads
        from .bench.sweep import cli

        return cli(device=args.device, json_path=args.json, plot_path=args.plot, progress=not args.no_progress)
    if args.name not in BENCHMARKS:
        print(f"bench: unknown benchmark {args.name!r}; available: {', '.join(BENCHMARKS)} "
              "(or no name for the main sweep)", file=sys.stderr)
        return 2
    if args.device is not None or args.json != "bench_report.json" or args.plot is not None or args.no_progress:
        print(f"bench: --device/--json/--plot/--no-progress belong to the main sweep; put options "
              f"for {args.name!r} after its name", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[args.name]).main(args.rest) or 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade notebooks (files or folders)")
    g.add_argument("paths", nargs="+")
    g.add_argument("--json", default="grade_report.json", help="JSON report path ('' for none)")
    g.add_argument("--cell-timeout", type=float, default=120, help="seconds per cell (120)")
    g.add_argument("--notebook-timeout", type=float, default=900, help="seconds per notebook (900)")
    g.add_argument("--kernel", default=None, help="kernelspec name (default: this Python)")
    g.add_argument("--output-limit", type=int, default=1_000_000,
                   help="characters of output kept per cell (1,000,000)")
    g.add_argument("--save-executed", default=None, help="folder for the executed notebooks")
    g.add_argument("--jobs", type=int, default=None,
                   help="notebooks graded at the same time, each in its own kernel "
                        "(default: the number of CPU cores)")
    g.set_defaults(func=_grade)

    b = sub.add_parser("build", help="make learner notebooks from solutions")
    b.add_argument("solutions", nargs="?", default="solutions")
    b.add_argument("notebooks", nargs="?", default="notebooks")
    b.set_defaults(func=_build)

    e = sub.add_parser("execute", help="execute solution notebooks in place")
    e.add_argument("paths", nargs="+")
    e.add_argument("--timeout", type=float, default=600, help="seconds per cell (600)")
    e.set_defaults(func=_execute)

    v = sub.add_parser("env", help="print the environment report")
    v.set_defaults(func=_env)

    n = sub.add_parser("bench", help="run the benchmark sweep, or a named benchmark",
                       description="With no NAME: the main sweep (matmul by precision, layout and size; "
                                   "training step by precision recipe; CPU threads), printed as tables "
                                   "and saved as JSON and a plot. With a NAME: that benchmark, with its "
                                   "own options after the name.")
    n.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="main sweep: device (default: cuda if available, else cpu)")
    n.add_argument("--json", default="bench_report.json",
                   help="main sweep: JSON report path ('' for none; default bench_report.json)")
    n.add_argument("--plot", default=None,
                   help="main sweep: plot path (default: the JSON path with .png; '' for none)")
    n.add_argument("--no-progress", action="store_true", help="main sweep: no progress bar")
    n.add_argument("name", nargs="?", default=None, help=f"a named benchmark: {', '.join(BENCHMARKS)}")
    n.add_argument("rest", nargs=argparse.REMAINDER, help="options of the named benchmark")
    n.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
