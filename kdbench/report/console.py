"""The compact text leaderboard ``kdbench run`` prints after training."""

from __future__ import annotations

import pandas as pd

from kdbench.report.aggregate import leaderboard, pair_groups
from kdbench.report.formatting import (
    DASH,
    NOT_SUPPORTED,
    NOT_SUPPORTED_NOTE,
    fixed,
    is_missing,
    marked_teacher,
    mean_pm,
    signed_pm,
    significant,
    teacher_footnotes,
)

_HEADERS = ("method", "teacher", "top-1 (%)", "Δ vs {baseline}", "agree (%)", "params (M)", "extra (M)")
_RIGHT_ALIGNED = (False, False, True, True, True, True, True)


def _top1_cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return f"failed ({row['n_failed']})"
    return f"{mean_pm(row['top1_mean'], row['top1_std'])} ({row['n']})"


def _delta_cell(row: pd.Series) -> str:
    if row["is_baseline"] or row["n_paired"] == 0:
        return DASH
    mark = "" if row.get("delta_supported", False) else f" {NOT_SUPPORTED}"
    return f"{signed_pm(row['delta_top1'], row['delta_top1_std'])} ({row['n_paired']}){mark}"


def _extra_cell(value: float) -> str:
    return DASH if is_missing(value) or value == 0 else significant(value)


def _teacher_cell(row: pd.Series) -> str:
    """Which teacher the method learned from: the pair's, none, or itself (born-again generations)."""
    if row["uses_teacher"]:
        return marked_teacher(row["teacher"], row.get("teacher_origin"))
    return "self" if row.get("teacher_source") == "self" else "none"


def _row_cells(row: pd.Series) -> list[str]:
    return [
        str(row["method_label"]),
        _teacher_cell(row),
        _top1_cell(row),
        _delta_cell(row),
        fixed(row["agreement_mean"], 1),
        significant(row["params_m"]),
        _extra_cell(row["extra_params_m"]),
    ]


def _pair_header(dataset: str, teacher: str, student: str, budget: str, teacher_top1: float) -> str:
    teacher_text = teacher if is_missing(teacher_top1) else f"{teacher} ({fixed(teacher_top1)}%)"
    return f"{dataset}: {teacher_text} -> {student}  [{budget}]"


def _failure_note(rows: pd.DataFrame) -> str | None:
    failing = rows[rows["n_failed"] > 0]
    if failing.empty:
        return None
    total = int(failing["n_failed"].sum())
    which = ", ".join(f"{label} ({count})" for label, count in zip(failing["method_label"], failing["n_failed"],
                                                                     strict=True))
    return f"{total} failed run{'s' if total != 1 else ''}: {which}"


def format_leaderboard_text(table: pd.DataFrame, baseline: str = "ce") -> str:
    """Render a table made by :func:`kdbench.report.leaderboard` as aligned plain text, one block per pair."""
    if table.empty:
        return "no runs to report"
    headers = [h.format(baseline=baseline) for h in _HEADERS]
    blocks: list[tuple[str, list[list[str]], str | None]] = []
    for (dataset, teacher, student, _), rows in pair_groups(table):
        first = rows.iloc[0]
        header = _pair_header(dataset, marked_teacher(teacher, first.get("teacher_origin")), student, first["budget"],
                              first["teacher_top1"])
        blocks.append((header, [_row_cells(row) for _, row in rows.iterrows()], _failure_note(rows)))
    widths = [len(h) for h in headers]
    for _, cells, _ in blocks:
        for line in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]

    def render(cells: list[str]) -> str:
        padded = [c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, _RIGHT_ALIGNED,
                                                                               strict=True)]
        return ("  " + "  ".join(padded)).rstrip()

    lines: list[str] = []
    for header, cells, note in blocks:
        if lines:
            lines.append("")
        lines.append(header)
        lines.append(render(headers))
        lines.extend(render(line) for line in cells)
        if note:
            lines.append(f"  {note}")
    lines.append("")
    lines.append(f"± = std over seeds (n); Δ = top-1 minus {baseline}'s, paired by seed (n pairs)")
    lines.append(NOT_SUPPORTED_NOTE)
    if "teacher_origin" in table:
        lines.extend(teacher_footnotes(zip(table["teacher"], table["teacher_origin"], table["teacher_ckpt_sha256"],
                                           strict=True)))
    return "\n".join(lines)


def console_leaderboard(frame: pd.DataFrame, baseline: str = "ce") -> str:
    """The compact leaderboard of a loaded store as text: per pair a header line, then methods by top-1.

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        baseline: the method label gains are measured against.
    """
    return format_leaderboard_text(leaderboard(frame, baseline), baseline)
