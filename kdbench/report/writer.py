"""``write_report``: every table and figure of a store written to a folder, plus the HTML page.

Files are written atomically (temporary file in the same folder, then rename), so a reader never sees half a
figure. A figure without data is skipped with a note (returned, and listed in the HTML page), never drawn empty.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kdbench.errors import DataError
from kdbench.report import aggregate, figures, tables
from kdbench.report.compare import MEASURED_AS, published_comparison
from kdbench.report.formats import ALL_FORMATS, parse_formats
from kdbench.report.formatting import NOT_SUPPORTED_NOTE
from kdbench.report.html import HtmlFigure, HtmlSection, render_page
from kdbench.store import atomic_write_bytes

HTML_PNG_DPI = 150
CSV_FLOAT_FORMAT = "%.10g"  # full precision without the float noise of means (72.29999999999998 -> 72.3)


@dataclass
class ReportFiles:
    """What :func:`write_report` produced: the files written and the notes on what was skipped."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def file_stem(text: str) -> str:
    """A safe file-name part for a dataset or pair name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "unnamed"


class _Writer:
    """Collects files and notes while one report is written."""

    def __init__(self, out_dir: Path, formats: tuple[str, ...]) -> None:
        self.out_dir = out_dir
        self.formats = formats
        self.result = ReportFiles(out_dir=out_dir)
        self.html_sections: list[HtmlSection] = []
        self.html_figures: list[HtmlFigure] = []

    def text(self, name: str, content: str) -> None:
        path = self.out_dir / name
        atomic_write_bytes(path, content.encode("utf-8"))
        self.result.files.append(path)

    def table(self, stem: str, title: str, display: tables.DisplayTable, csv: pd.DataFrame | None,
              *, sortable: bool = False, note: str | None = None) -> None:
        if "md" in self.formats:
            self.text(f"{stem}.md", tables.to_markdown(display))
        if "tex" in self.formats:
            self.text(f"{stem}.tex", tables.to_latex(display, comment=title))
        if "csv" in self.formats and csv is not None:
            self.text(f"{stem}.csv", csv.to_csv(index=False, float_format=CSV_FLOAT_FORMAT))
        self.html_sections.append(HtmlSection(title=title, table=display, table_id=file_stem(stem),
                                              sortable=sortable, note=note))

    def figure(self, stem: str, make: Callable[[], Figure]) -> None:
        wants = [f for f in ("pdf", "png") if f in self.formats]
        if not wants and "html" not in self.formats:
            return
        try:
            figure = make()
        except figures.NoFigureData as skipped:
            self.result.notes.append(f"figure {stem} skipped: {skipped}")
            return
        png = None
        for fmt in wants:
            data = figures.figure_bytes(figure, fmt, dpi=300)
            path = self.out_dir / f"{stem}.{fmt}"
            atomic_write_bytes(path, data)
            self.result.files.append(path)
            png = data if fmt == "png" else png
        if "html" in self.formats:
            png = png or figures.figure_bytes(figure, "png", dpi=HTML_PNG_DPI)
            self.html_figures.append(HtmlFigure(name=stem, png=png, width_in=float(figure.get_figwidth())))


def _crd_csv(display: tables.DisplayTable) -> pd.DataFrame:
    """The numbers of a CRD-layout table: one row per method, one column per pair (``teacher -> student``)."""
    columns = ["method"] + [f"{t} -> {s}" for t, s in zip(display.header[0][1:], display.header[1][1:], strict=True)]
    raw = display.sort_values or []
    return pd.DataFrame([[row[0], *row[1:]] for row in raw], columns=columns)


def tuned_rows_note(board: pd.DataFrame) -> str:
    """`` Tuned rows (chosen hyperparameters): ...`` for a leaderboard with tuned rows, else ``""``."""
    if "tuned_params" not in board:
        return ""
    tuned = board[board["tuned_params"].notna()].drop_duplicates(["method_label", "teacher", "student"])
    if tuned.empty:
        return ""
    return " Tuned rows (chosen hyperparameters): " + "; ".join(
        f"{row.method_label} ({row.teacher} → {row.student}): {row.tuned_params}" for row in tuned.itertuples()) + "."


def _write_tables(writer: _Writer, frame: pd.DataFrame, board: pd.DataFrame, baseline: str) -> None:
    writer.table("leaderboard", "Leaderboard", tables.leaderboard_display(board, baseline), board, sortable=True,
                 note=f"Top-1 mean ± std over seeds (n runs); Δ vs {baseline} paired by seed, ± 95% CI; best per "
                      f"pair in bold; {NOT_SUPPORTED_NOTE}. Click a header to sort." + tuned_rows_note(board))
    for name, display in tables.crd_tables(board, baseline):
        writer.table(f"table_{file_stem(name)}", f"{name}: top-1 (%) by pair", display, _crd_csv(display),
                     note="Teacher: the teacher's own accuracy; Student: trained with "
                          f"{baseline} only. Mean ± std over seeds; best per column in bold.")
    ranks = aggregate.method_ranks(board, baseline)
    if not ranks.empty:
        writer.table("method_ranks", "Average rank across pairs", tables.ranks_display(ranks, baseline), ranks,
                     sortable=True)
    costs = aggregate.method_costs(frame, baseline)
    if not costs.empty:
        writer.table("method_cost", "Training cost per method", tables.costs_display(costs, baseline), costs,
                     sortable=True, note="Means per training device; time vs baseline: median over pairs.")
    efficiency = aggregate.efficiency_table(frame)
    if not efficiency.empty:
        writer.table("efficiency", "Inference cost of the students", tables.efficiency_display(efficiency),
                     efficiency, sortable=True, note="Medians over runs, per measuring machine.")
    failed = aggregate.failed_runs(frame)
    if not failed.empty:
        writer.table("failed_runs", "Failed runs (counted, never averaged)", tables.failed_display(failed), failed)
    comparison = published_comparison(board, baseline)
    if not comparison.empty:
        display = tables.published_display(comparison)
        display.footnotes.insert(0, MEASURED_AS)
        writer.table("published_vs_measured", "Published vs measured (CIFAR-100, ImageNet)", display, comparison,
                     sortable=True)
    if "csv" in writer.formats:
        writer.text("runs.csv", aggregate.runs_table(frame).to_csv(index=False, float_format=CSV_FLOAT_FORMAT))


_COST_FIGURES = {
    "gmacs": "accuracy_vs_gmacs",
    "params_m": "accuracy_vs_params",
    "cpu_latency_ms_bs1": "accuracy_vs_cpu_latency",
    "gpu_samples_per_s": "accuracy_vs_gpu_throughput",
}


def _write_figures(writer: _Writer, frame: pd.DataFrame, baseline: str) -> None:
    prepared = aggregate.prepare(frame)
    for dataset in sorted(prepared["dataset"].dropna().astype(str).unique()):
        subset = frame[frame["dataset"].astype(str).to_numpy() == dataset]
        for cost, stem in _COST_FIGURES.items():
            writer.figure(f"{stem}_{file_stem(dataset)}",
                          lambda subset=subset, cost=cost: figures.plot_accuracy_vs_cost(subset, cost, baseline))
    writer.figure("delta_top1", lambda: figures.plot_delta_top1(frame, baseline))
    writer.figure("delta_heatmap", lambda: figures.plot_delta_heatmap(frame, baseline))
    writer.figure("training_curves", lambda: figures.plot_training_curves(frame, baseline=baseline))
    writer.figure("published_vs_measured", lambda: figures.plot_published_vs_measured(frame, baseline))


def _meta_line(frame: pd.DataFrame) -> str:
    status = frame["status"] if "status" in frame else pd.Series(["failed"] * len(frame))
    ok, pruned = int((status == "ok").sum()), int((status == "pruned").sum())
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = f"{ok} ok, {len(frame) - ok - pruned} failed" + (f", {pruned} pruned tuning trials" if pruned else "")
    return f"{len(frame)} runs ({counts}); generated {when} by kdbench report"


def write_report(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    baseline: str = "ce",
    formats: str | Iterable[str] = ALL_FORMATS,
) -> ReportFiles:
    """Write the tables, figures and HTML page of a loaded store into ``out_dir``.

    Tables: ``leaderboard``, ``table_<dataset>`` (CRD layout), ``method_ranks``, ``method_cost``, ``efficiency``,
    ``failed_runs`` (if any), ``published_vs_measured`` (if any) as ``.md`` / ``.tex`` / ``.csv``, and
    ``runs.csv``. Figures: ``accuracy_vs_{gmacs,params,cpu_latency,gpu_throughput}_<dataset>``, ``delta_top1``,
    ``delta_heatmap``, ``training_curves``, ``published_vs_measured`` as ``.pdf`` / ``.png`` (300 dpi). Page:
    ``index.html``.

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        out_dir: the folder to write into (created if missing).
        baseline: the method label gains are measured against.
        formats: any of ``md, tex, csv, pdf, png, html`` (a sequence or comma-separated text).

    Returns:
        The files written and notes on what was skipped.

    Raises:
        DataError: the store holds no runs.
        ConfigError: an unknown format.
    """
    chosen = parse_formats(formats)
    if frame.empty:
        raise DataError("the results store holds no runs; run `kdbench run` first")
    writer = _Writer(Path(out_dir), chosen)
    writer.out_dir.mkdir(parents=True, exist_ok=True)
    board = aggregate.leaderboard(frame, baseline)
    writer.result.notes.extend(line.removeprefix("warning: ") for line in aggregate.version_warnings(frame))
    if aggregate.resolve_baseline(aggregate.prepare(frame), baseline) is None:
        writer.result.notes.append(f"baseline {baseline!r} has no runs in the store: Δ columns are empty")
    _write_tables(writer, frame, board, baseline)
    _write_figures(writer, frame, baseline)
    from kdbench.report.tuning import write_tuning

    write_tuning(writer, frame)
    if "html" in chosen:
        environment = aggregate.environment_summary(frame)
        environment_section = HtmlSection(
            title="Environment", table=tables.frame_to_display(environment), table_id="environment",
            note="Machines and versions the numbers were measured with (training device; CPU threads and GPU of "
                 "the speed measurements).",
        ) if not environment.empty else None
        page = render_page("kdbench report", _meta_line(frame), writer.html_sections, writer.html_figures,
                           writer.result.notes, environment_section)
        writer.text("index.html", page)
    return writer.result
