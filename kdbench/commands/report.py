"""``kdbench report``: leaderboard tables, paper figures and an HTML page from a results store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdbench.errors import DataError
from kdbench.report.aggregate import check_baseline, version_warnings
from kdbench.report.benchmarks import training_step_table
from kdbench.report.console import console_leaderboard
from kdbench.report.formats import ALL_FORMATS, parse_formats
from kdbench.report.tables import frame_to_display, to_markdown
from kdbench.results import load
from kdbench.store import Store, atomic_write_text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    The parser's default ``handler`` is :func:`run_report` (the convention of :mod:`kdbench.commands`).
    """
    parser = subparsers.add_parser(
        "report",
        help="write leaderboard tables, paper figures and an HTML page from a results store",
        description="Aggregate a results store (mean ± std over seeds, gain over the baseline paired by seed, "
                    "ranks, costs) and write Markdown / LaTeX / CSV tables, PDF / PNG figures and index.html.",
    )
    parser.add_argument("--results", default="results", metavar="DIR", help="results store (default: results)")
    parser.add_argument("--out", default="reports", metavar="DIR", help="output folder (default: reports)")
    parser.add_argument("--baseline", default="ce", metavar="METHOD",
                        help="method the gains are measured against (default: ce)")
    parser.add_argument("--format", default=",".join(ALL_FORMATS), dest="formats", metavar="LIST",
                        help=f"comma-separated outputs (default: {','.join(ALL_FORMATS)})")
    parser.add_argument("--benchmark-json", metavar="FILE",
                        help="instead: the per-method training-cost table from a pytest-benchmark JSON file of "
                             "tests/benchmarks/test_training_step_benchmark.py (written to OUT/training_steps.*)")
    parser.set_defaults(handler=run_report)
    return parser


def run_report(args: argparse.Namespace) -> int:
    """Run ``kdbench report``: print the leaderboard, write the report, list what was written and skipped.

    Raises:
        DataError: the store is missing or holds no runs.
        ConfigError: an unknown format or baseline.
    """
    formats = parse_formats(args.formats)
    if args.benchmark_json:
        return _training_step_report(Path(args.benchmark_json), Path(args.out), args.baseline)
    results = Path(args.results)
    if not Store(results).runs_dir.is_dir():
        raise DataError(f"no results store at {results} (no {Store(results).runs_dir} folder); run `kdbench run` first "
                        "or pass --results DIR")
    from kdbench.report.tuning import with_tuning
    from kdbench.tune import load_summaries

    frame = with_tuning(load(results), load_summaries(results))  # tuned rows of `kdbench tune` studies, if any
    if frame.empty:
        raise DataError(f"the results store {results} holds no run records; run `kdbench run` first")
    check_baseline(frame, args.baseline)
    make_out_dir(Path(args.out))
    warnings = version_warnings(frame)
    for line in warnings:
        print(line, file=sys.stderr)
    print(console_leaderboard(frame, args.baseline))
    from kdbench.report.writer import write_report  # imported on use: matplotlib is slow to import

    report = write_report(frame, args.out, baseline=args.baseline, formats=formats)
    print(f"\nwrote {len(report.files)} files to {report.out_dir}")
    for note in report.notes:
        if f"warning: {note}" not in warnings:  # already said above
            print(f"  note: {note}")
    if "html" in formats:
        print(f"open {report.out_dir / 'index.html'}")
    return 0


def make_out_dir(out: Path) -> None:
    """Create the report's folder ``out``, before anything is written.

    Raises:
        DataError: ``out`` is a file, or the folder cannot be made.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; give the folder to write the report into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot write the report to {out}: {err.strerror or err}; give a writable --out folder") \
            from None


def _training_step_report(path: Path, out: Path, baseline: str) -> int:
    """Print and write (Markdown, CSV) the per-method training-cost table of a benchmark JSON file."""
    table = training_step_table(path, baseline)
    markdown = to_markdown(frame_to_display(table))
    print(markdown)
    atomic_write_text(out / "training_steps.md", markdown)
    atomic_write_text(out / "training_steps.csv", table.to_csv(index=False))
    print(f"wrote {out / 'training_steps.md'} and {out / 'training_steps.csv'}")
    return 0
