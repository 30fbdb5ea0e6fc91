"""The ``kdbench`` command: parses the arguments and dispatches to a subcommand of :mod:`kdbench.commands`.

``kdbench`` with no arguments is ``kdbench run``, the quick start. Every problem the user can fix is reported as one
line, ``kdbench: error: ...``, with exit code 2, before anything is written to the results store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import kdbench
from kdbench import distributed
from kdbench.commands import COMMANDS
from kdbench.commands.common import OneLineParser
from kdbench.errors import ConfigError, KDBenchError

#: commands that train nothing: under torchrun they would run once per process, so they refuse
SINGLE_PROCESS = ("list", "bench", "report", "export")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``kdbench`` argument parser."""
    parser = OneLineParser(prog="kdbench", description="A benchmark suite for knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"kdbench {kdbench.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def reports(err: KDBenchError) -> bool:
    """Whether this process prints ``err``: under torchrun rank 0 speaks for the errors every rank has.

    Those are the errors found before the ranks joined their process group (the checks of the command line and the
    spec, the same on every rank) and rank 0's own that it shared (``from_rank0``); a rank's other errors are its own.
    """
    try:
        rank = distributed.world_from_env().rank
    except KDBenchError:
        return True
    joined = distributed.world().size > 1
    return rank == 0 or (joined and not getattr(err, "from_rank0", False))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdbench`` console script (and of ``python -m kdbench``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # the quick start
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse's own exits (--help, --version, a bad flag), as a return code
        return int(done.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        if args.command in SINGLE_PROCESS and distributed.world_from_env().size > 1:
            raise ConfigError(f"kdbench {args.command} trains nothing and does not run under torchrun: run it in one "
                              "process (torchrun is for kdbench run and kdbench sweep)")
        return int(args.handler(args) or 0)
    except KDBenchError as err:
        if reports(err):
            print(f"kdbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; finished runs are saved, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
