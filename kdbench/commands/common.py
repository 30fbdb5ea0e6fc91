"""What the subcommands share: the one-line parser, the flags of ``run`` and ``sweep`` (declared once), and helpers.

The defaults of the execution flags are the fields of :class:`kdbench.options.ExecOptions`; a sweep's flags default
to ``None`` instead, so that the spec's setting (and then those same defaults) applies where a flag is not given.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from kdbench.config import dataclass_defaults
from kdbench.errors import ConfigError
from kdbench.options import SAVE_STUDENTS, ExecOptions
from kdbench.trackers import TRACKERS

#: the defaults of the execution options, the one source for ``run``'s flags and a sweep spec's execution keys
EXEC_DEFAULTS = dataclass_defaults(ExecOptions)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``kdbench <cmd>: error: <message>`` and exit 2 (under torchrun, rank 0 alone prints it)."""
        if os.environ.get("RANK", "0") != "0":
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``.

    Raises:
        ConfigError: an item without ``=`` or without a key.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (got {item!r})")
        out[key.strip()] = value.strip()
    return out


def first_doc_line(doc: str | None) -> str:
    """The first line of a docstring, or ``""``."""
    text = (doc or "").strip()
    return text.splitlines()[0] if text else ""


def add_store_flags(parser: argparse.ArgumentParser, from_spec: bool = False) -> None:
    """``--results``, ``--teacher-cache``, ``--plugin``, ``--retry-failed``, ``--no-progress`` and ``--log``.

    Args:
        parser: the subcommand's parser.
        from_spec: the command reads a sweep spec (whose plugins are loaded besides those of ``--plugin``).
    """
    parser.add_argument("--results", type=Path, default=Path(EXEC_DEFAULTS["results"]), metavar="DIR",
                        help="results store (default: %(default)s)")
    parser.add_argument("--teacher-cache", type=Path, metavar="DIR",
                        help="where trained teachers are cached; share one between stores (default: RESULTS/teachers)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="load method plugins from a Python file; repeatable"
                             + (" (besides the spec's plugins)" if from_spec else ""))
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs whose record says failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--log", action="append", default=[], choices=list(TRACKERS), dest="trackers",
                        metavar="TRACKER", help="also stream each run's per-epoch history to an experiment tracker: "
                                                f"{', '.join(TRACKERS)}; repeatable (see kdbench.trackers)")


def add_execution_flags(parser: argparse.ArgumentParser, from_spec: bool = False) -> None:
    """``--device``, ``--data-root``, ``--download``, ``--no-cohort`` and ``--max-cohort``.

    Also ``--compile`` and ``--save-students`` (which trained students each run keeps).

    Args:
        parser: the subcommand's parser.
        from_spec: the flags override a sweep spec's keys: they default to ``None`` (not given), and the spec's
            value, else :data:`EXEC_DEFAULTS`, applies.
    """
    defaults = EXEC_DEFAULTS
    where = "the spec's, else " if from_spec else ""
    parser.add_argument("--device", default=None if from_spec else defaults["device"],
                        help=f"auto, cpu, cuda or cuda:N (default: {where}{defaults['device']})")
    parser.add_argument("--data-root", metavar="DIR",
                        help=f"root of file-based datasets (default: {where}$KDBENCH_DATA)")
    parser.add_argument("--download", action="store_true", default=None if from_spec else defaults["download"],
                        help="download CIFAR when it is missing")
    parser.add_argument("--no-cohort", action="store_true", default=None if from_spec else not defaults["cohort"],
                        help="train runs one at a time instead of sharing each teacher pass")
    parser.add_argument("--max-cohort", type=positive_int, metavar="N",
                        default=None if from_spec else defaults["max_cohort"],
                        help=f"the most runs trained together on one teacher pass (default: {where}"
                             f"{defaults['max_cohort']})")
    parser.add_argument("--compile", action="store_true", default=None if from_spec else defaults["compile"],
                        help="torch.compile the training forward passes of students and teacher (not part of the "
                             "run id; recorded)")
    parser.add_argument("--save-students", choices=SAVE_STUDENTS, default=None if from_spec else
                        defaults["save_students"], help="keep each ok run's trained student beside its record as "
                        "safetensors: the last epoch's weights, the best validation epoch's, both or none; `kdbench "
                        f"export` makes a timm folder of one (not part of the run id) (default: {where}"
                        f"{defaults['save_students']})")
    parser.add_argument("--checkpoint-every", type=non_negative_int, metavar="EPOCHS",
                        default=None if from_spec else defaults["checkpoint_every"],
                        help="write each run's checkpoint every EPOCHS epochs; an interrupted run resumes from it "
                             f"with the record it would have had (0: not at epoch ends) (default: {where}"
                             f"{defaults['checkpoint_every']})")
    parser.add_argument("--checkpoint-minutes", type=positive_float, metavar="M",
                        default=None if from_spec else defaults["checkpoint_minutes"],
                        help="also write a checkpoint between two steps every M minutes, for long epochs "
                             "(default: only at epoch ends)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        default=None if from_spec else defaults["keep_checkpoints"],
                        help="keep a run's checkpoint after its record is written (default: removed)")


def execution_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The execution settings the command line gave, by the name of their :class:`ExecOptions` field.

    A sweep's flags that were not given are ``None`` (the spec's value, else the default, applies).
    """
    values = {name: getattr(args, name) for name in EXEC_DEFAULTS if hasattr(args, name)}
    if hasattr(args, "no_cohort"):
        values["cohort"] = None if args.no_cohort is None else not args.no_cohort
    if getattr(args, "trackers", None) is not None:
        values["trackers"] = tuple(dict.fromkeys(args.trackers))
    return values


def exec_options_from(settings: dict[str, Any], args: argparse.Namespace) -> ExecOptions:
    """The execution options of a command: its store flags, plus every setting that is an option's field."""
    fields = {k: v for k, v in settings.items() if k in EXEC_DEFAULTS and k not in ("results", "teacher_cache")}
    teacher_cache = args.teacher_cache.expanduser().resolve() if args.teacher_cache else None
    return ExecOptions(**{**fields, "results": args.results.expanduser().resolve(), "teacher_cache": teacher_cache,
                          "retry_failed": args.retry_failed, "progress": not args.no_progress})


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value
