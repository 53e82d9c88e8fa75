"""The ``fastloss`` command (also ``python -m fastloss``).

``fastloss bench [options]`` measures every loss on this machine; see :mod:`fastloss.bench` and
``fastloss bench --help``. Bad arguments print a message and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, bench

    parser = argparse.ArgumentParser(prog="fastloss", description="fastloss command-line tools")
    parser.add_argument("--version", action="version", version=f"fastloss {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench",
        help="time every loss against the memory bandwidth, the float64 reference and PyTorch",
        description="Measure the memory bandwidth, then time every loss (value, and value and "
                    "gradient) beside its float64 NumPy reference and PyTorch CPU, and print a table. "
                    "With --device cuda: every loss on CuPy arrays on the GPU, against the GPU's "
                    "device-to-device copy bandwidth, PyTorch CUDA and Liger-Kernel's cross entropy "
                    "(when importable), errors against the float64 reference (needs CuPy and a GPU).",
    )
    bench.add_arguments(bench_parser)
    bench_parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cpu (default): NumPy arrays, Numba/Cython kernels; cuda: CuPy arrays on the current GPU "
             "(pip install 'fastloss[cuda12]'); timed in batches of calls, launch overhead included")
    bench_parser.set_defaults(run=_bench, parser=bench_parser)
    return parser


#: Exit status after the reader of our output went away (``fastloss bench | head``): what a shell
#: reports for a process ended by SIGPIPE, 128 + 13, as ``cat`` or ``yes`` would end.
BROKEN_PIPE_STATUS = 141


def _bench(args, parser) -> int:
    if getattr(args, "device", "cpu") == "cuda":
        from . import bench_cuda  # imports CuPy and numba.cuda only when asked for

        return bench_cuda.main(args, parser)
    from . import bench

    return bench.main(args, parser)


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit status.

    A closed standard output (the reader of a pipe exited) ends the command quietly with
    :data:`BROKEN_PIPE_STATUS`, the Unix convention, instead of a ``BrokenPipeError`` traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args, args.parser)
    except BrokenPipeError:
        # Python flushes stdout again at exit and would complain once more: point it at devnull.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout replaced by an object without a descriptor (tests)
            pass
        return BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
