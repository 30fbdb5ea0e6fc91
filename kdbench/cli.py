"""The ``kdbench`` command: parses the arguments and dispatches to a subcommand of :mod:`kdbench.commands`.

``kdbench`` with no arguments is ``kdbench run``, the quick start. Every problem the user can fix is reported as one
line, ``kdbench: error: ...``, with exit code 2, before anything is written to the results store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import kdbench
from kdbench.commands import COMMANDS
from kdbench.commands.common import OneLineParser
from kdbench.errors import KDBenchError


def build_parser() -> argparse.ArgumentParser:
    """The whole ``kdbench`` argument parser."""
    parser = OneLineParser(prog="kdbench", description="A benchmark suite for knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"kdbench {kdbench.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


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
        return int(args.handler(args) or 0)
    except KDBenchError as err:
        print(f"kdbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; finished runs are saved, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
