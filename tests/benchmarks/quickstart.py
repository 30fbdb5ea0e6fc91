"""Benchmark: the quick start's protocol over several seeds, for the README's quick-start table.

Runs exactly what ``kdbench run`` runs with no arguments (the same pair, dataset, budget and methods), but with
the seeds asked for (3 by default), into a fresh store (or ``--results DIR``, which resumes), then prints per
method the mean and standard deviation of top-1 over seeds and the gain over ``ce`` paired by seed with its 95%
interval, marking the gains the seeds do not support, and the wall time.

Usage (from the project root)::

    python -m tests.benchmarks.quickstart --seeds 0 1 2 [--results DIR] [--json reports/quickstart.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from kdbench.cli import main as kdbench_main
from kdbench.report.aggregate import leaderboard
from kdbench.report.console import format_leaderboard_text
from kdbench.results import load
from tests.benchmarks import save_figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="student seeds (default: 0 1 2)")
    parser.add_argument("--results", type=Path, help="results store (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="also write the per-method figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        store = args.results or Path(scratch) / "results"
        started = time.perf_counter()
        code = kdbench_main(["run", "--seeds", *map(str, args.seeds), "--no-progress", "--results", str(store)])
        wall = time.perf_counter() - started
        if code not in (0, 1):
            return code
        table = leaderboard(load(store))
    print(format_leaderboard_text(table))
    print(f"\nquick-start protocol, seeds {args.seeds}: {wall:.0f} s wall")
    if args.json:
        columns = ["method_label", "n", "top1_mean", "top1_std", "delta_top1", "delta_top1_ci95", "n_paired",
                   "delta_supported"]
        rows = table[columns].to_dict(orient="records")
        save_figures(args.json, {"seeds": args.seeds, "wall_s": wall, "methods": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
