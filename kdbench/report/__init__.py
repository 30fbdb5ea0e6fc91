"""Reporting: leaderboard aggregation, the console table, paper tables and figures, and the HTML page.

Notebook use::

    from kdbench.results import load
    from kdbench import report

    runs = load("results")
    report.leaderboard(runs)              # one row per pair and method variant
    report.method_ranks(runs)             # average rank across pairs
    report.plot_delta_top1(runs)          # a matplotlib Figure
    report.write_report(runs, "reports")  # every table and figure, and index.html

Names are loaded on first use, so ``from kdbench.report import console_leaderboard`` (what ``kdbench run`` needs)
does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "leaderboard": "aggregate",
    "method_ranks": "aggregate",
    "method_costs": "aggregate",
    "efficiency_table": "aggregate",
    "environment_summary": "aggregate",
    "expand_pairs": "aggregate",
    "failed_runs": "aggregate",
    "runs_table": "aggregate",
    "console_leaderboard": "console",
    "format_leaderboard_text": "console",
    "published_comparison": "compare",
    "NoFigureData": "figures",
    "plot_accuracy_vs_cost": "figures",
    "plot_delta_heatmap": "figures",
    "plot_delta_top1": "figures",
    "plot_published_vs_measured": "figures",
    "plot_training_curves": "figures",
    "ALL_FORMATS": "writer",
    "ReportFiles": "writer",
    "write_report": "writer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
