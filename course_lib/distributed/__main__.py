"""Command line: ``python -m course_lib.distributed [--nprocs N] TARGET [ARGS...]``.

* ``TARGET`` = ``package.module:function``: run it on N ranks with
  :func:`~course_lib.distributed.launcher.launch` (``ARGS`` are passed as
  strings) and print each rank's return value, one line per rank.
* ``TARGET`` = ``path/to/script.py``: run it with ``torchrun``
  (:func:`~course_lib.distributed.torchrun.launch_script`, ``ARGS`` go to
  the script) and print its output.

Exit status 0 on success; 1 with the error (rank, traceback or signal) on
stderr otherwise. Introduced in chapter 07
(notebooks/07_ddp_gradient_accumulation.ipynb).

Example (a target that does not import: refused before any process starts):
    >>> main(["--device", "cpu", "no_such_module:train"])
    1
"""
from __future__ import annotations

import argparse
import sys

from course_lib.distributed.errors import LaunchError, NotImportableError
from course_lib.distributed.launcher import launch
from course_lib.distributed.torchrun import launch_script

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, launch, print; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.distributed",
                                     description="Run a function or a script on N processes "
                                                 "(gloo on CPU, NCCL on CUDA).")
    parser.add_argument("--nprocs", type=int, default=2, help="number of ranks (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds before a hung job is killed (default 300)")
    parser.add_argument("target", help="package.module:function, or a script.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the target")
    opts = parser.parse_args(argv)
    try:
        if opts.target.endswith(".py"):
            run = launch_script(opts.target, opts.nprocs, args=opts.args, timeout=opts.timeout,
                                device=opts.device)
            print(run.output, end="")
        else:
            results = launch(opts.target, opts.nprocs, args=opts.args, device=opts.device,
                             timeout=opts.timeout)
            for rank, value in enumerate(results):
                print(f"rank {rank}: {value!r}")
    except (LaunchError, NotImportableError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
