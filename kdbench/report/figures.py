"""Paper figures: accuracy vs cost, gain over the baseline, the gain heatmap, training curves, published vs measured.

Every function takes a store loaded by :func:`kdbench.results.load` and returns a
:class:`matplotlib.figure.Figure` sized for a one-column (3.3 in) or two-column (7 in) paper, with 8 pt text and
no title (the caption carries it). Figures are made without pyplot, so no GUI backend is touched and nothing is
left open. A figure without data raises :class:`NoFigureData` (a one-line reason) instead of coming out empty.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter

from kdbench.errors import KDBenchError
from kdbench.report.aggregate import (
    PAIR_KEY,
    TEACHER_BUDGET_COLUMNS,
    budget_differences,
    expand_pairs,
    leaderboard,
    pair_labels,
    prepare,
)
from kdbench.report.compare import published_comparison
from kdbench.report.style import (
    ONE_COLUMN_IN,
    STYLE,
    TEACHER_COLOUR,
    TWO_COLUMN_IN,
    method_colour,
    method_marker,
    method_slots,
)

COSTS: dict[str, tuple[str, bool]] = {  # column -> (axis label, lower is better)
    "gmacs": ("GMACs (batch 1)", True),
    "params_m": ("Parameters (M)", True),
    "cpu_latency_ms_bs1": ("Latency, batch 1 (ms)", True),
    "gpu_samples_per_s": ("GPU throughput (images/s)", False),
}
# Paul Tol's / ColorBrewer's diverging blue-red, safe for colour-blind readers: red = loss, blue = gain.
_DIVERGING = LinearSegmentedColormap.from_list(
    "kdbench_diverging",
    ["#B2182B", "#D6604D", "#F4A582", "#FDDBC7", "#F7F7F7", "#D1E5F0", "#92C5DE", "#4393C3", "#2166AC"],
)
_HATCHES = ["", "///", "\\\\\\", "...", "xxx", "---"]


class NoFigureData(KDBenchError):
    """The store holds nothing this figure could show (the message says what is missing)."""


@contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib settings of kdbench figures (small fonts, embedded TrueType in PDF), for a ``with`` block."""
    with matplotlib.rc_context(STYLE):
        yield


FigureFunction = TypeVar("FigureFunction", bound=Callable[..., Figure])


def styled(function: FigureFunction) -> FigureFunction:
    """Run a figure function inside :func:`paper_style`: text sizes are fixed when artists are created."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with paper_style():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure with constrained layout, so legends and labels stay inside its paper size."""
    with paper_style():
        return Figure(figsize=(width_in, height_in), layout="constrained")


def figure_bytes(figure: Figure, fmt: str, dpi: int = 300) -> bytes:
    """The figure encoded as ``fmt`` (``pdf``, ``png``, ``svg``); PNGs at ``dpi`` with the resolution recorded."""
    buffer = io.BytesIO()
    metadata = {"Creator": "kdbench"} if fmt in ("pdf", "png", "svg") else None
    with paper_style():
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------- helpers

def _as_table(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    if frame.empty:
        raise NoFigureData("the store holds no runs")
    return leaderboard(frame, baseline)


def _slots(methods: Iterable[str], baseline: str) -> dict[str, int]:
    return method_slots(methods, baseline)


def _method_handles(methods: list[str], slots: dict[str, int], baseline: str, *, marker: bool) -> list[Any]:
    handles: list[Any] = []
    for method in methods:
        colour = method_colour(method, slots, baseline)
        if marker:
            handles.append(Line2D([], [], color=colour, marker=method_marker(method, slots, baseline),
                                  linestyle="none", label=method))
        else:
            handles.append(Patch(facecolor=colour, edgecolor="none", label=method))
    return handles


def _ordered_methods(methods: Iterable[str], slots: dict[str, int], baseline: str) -> list[str]:
    """Methods in palette order, baseline first: the legend order is the same in every figure."""
    unique = set(methods)
    return sorted(unique, key=lambda m: (m != baseline, slots.get(m, -1), m))


def _legend_columns(count: int, width_in: float) -> int:
    return max(1, min(count, int(width_in / 0.9)))


def _grid(panels: int, max_columns: int = 3) -> tuple[int, int, float]:
    """(rows, columns, width) of a panel grid: one panel fits one column, more span two."""
    if panels == 1:
        return 1, 1, ONE_COLUMN_IN
    columns = min(max_columns, panels)
    return math.ceil(panels / columns), columns, TWO_COLUMN_IN


# ----------------------------------------------------------------------------------------------- accuracy vs cost

def _measurement_machine(ok: pd.DataFrame, cost: str) -> tuple[pd.DataFrame, str]:
    """Restrict CPU/GPU speed figures to the machine that measured most runs (speeds from several never mix)."""
    if cost == "cpu_latency_ms_bs1":
        host = ok["hostname"].fillna(ok["device_name"]).fillna("?").astype(str)
        threads = ok["cpu_threads"].map(lambda t: "? threads" if pd.isna(t) else f"{int(t)} threads").astype(str)
        machine, label = host + "|" + threads, "CPU, " + threads
    elif cost == "gpu_samples_per_s":
        machine = label = ok["gpu_name"].fillna("?").astype(str)
    else:
        return ok, ""
    measured = machine[ok[cost].notna()]
    if measured.empty:
        return ok.iloc[0:0], ""
    chosen = measured.value_counts().index[0]
    return ok[machine == chosen], str(label[machine == chosen].iloc[0])


def _model_costs(frame: pd.DataFrame, cost: str) -> tuple[dict[tuple[str, str], float], str]:
    """Median ``cost`` per (dataset, model) over the finished runs that trained it as the student."""
    prepared = prepare(frame)
    ok = prepared[(prepared["status"] == "ok")]
    ok, machine = _measurement_machine(ok, cost)
    medians = ok.dropna(subset=[cost]).groupby(["dataset", "student"])[cost].median()
    costs = {(str(d), str(m)): float(v) for (d, m), v in medians.items()}
    teacher_cost = f"teacher_{cost}"  # size and MACs of teachers are in the records of the runs that used them
    if teacher_cost in ok:
        teachers = ok.dropna(subset=["teacher", teacher_cost]).groupby(["dataset", "teacher"])[teacher_cost].median()
        for (d, m), v in teachers.items():
            costs.setdefault((str(d), str(m)), float(v))
    return costs, machine


def _pareto_front(points: list[tuple[float, float]], lower_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both cost and accuracy, in order of cost."""
    ordered = sorted(points, key=lambda p: (p[0] if lower_is_better else -p[0], -p[1]))
    front: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in ordered:
        if y > best:
            front.append((x, y))
            best = y
    return front


@styled
def plot_accuracy_vs_cost(frame: pd.DataFrame, cost: str = "gmacs", baseline: str = "ce") -> Figure:
    """Top-1 of every (pair, method) against the student's cost, with the Pareto front; teachers as black stars.

    One panel per dataset and budget. A teacher's params and MACs come from the records of the runs that used it;
    a teacher whose cost is unknown (latency: never trained as a student in the store) is drawn as a dotted line
    at its accuracy.

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        cost: ``gmacs``, ``params_m``, ``cpu_latency_ms_bs1`` or ``gpu_samples_per_s``.
        baseline: the method drawn in grey.

    Raises:
        NoFigureData: no finished run has this cost measured.
    """
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; choose one of {', '.join(COSTS)}")
    table = _as_table(frame, baseline)
    costs, machine = _model_costs(frame, cost)
    table = table[table["n"] > 0].copy()
    table["cost"] = [costs.get((str(d), str(s)), math.nan) for d, s in zip(table["dataset"], table["student"],
                                                                            strict=True)]
    table = table[table["cost"].notna()]
    if table.empty:
        raise NoFigureData(f"no finished run has {cost} measured")
    label, lower_is_better = COSTS[cost]
    if machine:
        label = f"{label}\n{machine}"
    table["panel_key"] = [  # one panel per dataset and student budget; the teacher's budget only names pairs
        json.dumps({k: v for k, v in json.loads(key).items() if k not in TEACHER_BUDGET_COLUMNS}, sort_keys=True)
        for key in table["budget_key"]
    ]
    panels = list(table.groupby(["dataset", "panel_key"], sort=True))
    panel_names = _panel_names([key for key, _ in panels])
    slots = _slots(table["method"], baseline)
    methods = _ordered_methods(table["method"], slots, baseline)
    handles = _method_handles(methods, slots, baseline, marker=True)
    handles.append(Line2D([], [], color=TEACHER_COLOUR, marker="*", markersize=7, linestyle="none", label="teacher"))
    handles.append(Line2D([], [], color="#999999", linestyle="--", label="Pareto front"))
    rows, columns, width = _grid(len(panels))
    legend_columns = _legend_columns(len(handles), width)
    figure = new_figure(width, 0.4 + 2.2 * rows + 0.18 * math.ceil(len(handles) / legend_columns))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, ((dataset, budget_key), panel) in zip(axes, panels, strict=False):
        _draw_cost_panel(ax, panel, costs, str(dataset), slots, baseline, lower_is_better)
        ax.set_xlabel(label)
        ax.set_ylabel("Top-1 (%)")
        if len(panels) > 1:  # a panel label, not a title: which dataset (and budget) the panel shows
            ax.set_title(panel_names[(dataset, budget_key)], loc="left", fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.legend(handles=handles, loc="outside lower center", ncol=legend_columns)
    return figure


def _panel_names(keys: list[tuple[Any, str]]) -> dict[tuple[Any, str], str]:
    """Panel labels: the dataset, plus the budget fields that differ between that dataset's budgets."""
    names = {}
    for dataset in dict.fromkeys(d for d, _ in keys):
        budget_keys = [k for d, k in keys if d == dataset]
        differences = budget_differences(budget_keys) if len(budget_keys) > 1 else {}
        for budget_key in budget_keys:
            names[(dataset, budget_key)] = f"{dataset}, {differences[budget_key]}" if differences else str(dataset)
    return names


def _draw_cost_panel(ax: Any, panel: pd.DataFrame, costs: dict[tuple[str, str], float], dataset: str,
                     slots: dict[str, int], baseline: str, lower_is_better: bool) -> None:
    points = list(zip(panel["cost"], panel["top1_mean"], strict=True))
    front = _pareto_front(points, lower_is_better)
    ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="#999999", linewidth=0.8, zorder=1)
    for _, row in panel.iterrows():
        ax.errorbar(row["cost"], row["top1_mean"], yerr=None if pd.isna(row["top1_std"]) else row["top1_std"],
                    color=method_colour(row["method"], slots, baseline),
                    marker=method_marker(row["method"], slots, baseline), linestyle="none", elinewidth=0.6,
                    capsize=1.5, alpha=0.9, zorder=3)
    teachers = panel[["teacher", "teacher_top1"]].drop_duplicates().dropna()
    teacher_costs = []
    for teacher, teacher_top1 in teachers.itertuples(index=False):
        teacher_cost = costs.get((dataset, str(teacher)))
        teacher_costs.append(teacher_cost)
        if teacher_cost is not None:
            ax.plot(teacher_cost, teacher_top1, marker="*", markersize=8, color=TEACHER_COLOUR, linestyle="none",
                    zorder=4)
            ax.annotate(str(teacher), (teacher_cost, teacher_top1), textcoords="offset points", xytext=(4, -2),
                        fontsize=6)
        else:
            ax.axhline(teacher_top1, color=TEACHER_COLOUR, linestyle=":", linewidth=0.8, zorder=2)
            ax.annotate(f"teacher {teacher}", (0.99, teacher_top1), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=6)
    tops = panel.groupby(["student", "cost"])["top1_mean"].max()
    if len(tops) <= 8:
        for (student, student_cost), top in tops.items():
            ax.annotate(str(student), (student_cost, top), xytext=(0, 5), textcoords="offset points", ha="center",
                        va="bottom", fontsize=5.5, color="#555555")
    xs = np.append(panel["cost"].unique(), [v for v in teacher_costs if v is not None])
    if len(xs) > 1 and xs.max() / max(xs.min(), 1e-12) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4))
        if xs.max() == xs.min():
            ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)


# ------------------------------------------------------------------------------------------------- Δ over baseline

UNSUPPORTED_ALPHA = 0.35  # a Δ bar the seeds do not support is drawn pale


def _delta_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[~table["is_baseline"] & (table["n_paired"] > 0)]
    if rows.empty:
        raise NoFigureData("no method has a seed in common with the baseline in any pair")
    return rows


@styled
def plot_delta_top1(frame: pd.DataFrame, baseline: str = "ce") -> Figure:
    """Gain in top-1 over the baseline per method (paired by seed), grouped by pair, with 95% CI error bars.

    Raises:
        NoFigureData: no method shares a seed with the baseline in any pair.
    """
    table = _as_table(frame, baseline)
    rows = _delta_rows(table)
    labels = pair_labels(table, multiline=True)
    pairs = [key for key in labels if key in set(map(tuple, rows[PAIR_KEY].itertuples(index=False)))]
    slots = _slots(rows["method"], baseline)
    variants = sorted(
        rows[["method", "method_label"]].drop_duplicates().itertuples(index=False),
        key=lambda v: (slots.get(v.method, -1), v.method_label),
    )
    hatch_of: dict[str, str] = {}
    variants_seen: dict[str, int] = {}
    for variant in variants:  # variants of one method share its colour and differ by hatching
        hatch_of[variant.method_label] = _HATCHES[variants_seen.get(variant.method, 0) % len(_HATCHES)]
        variants_seen[variant.method] = variants_seen.get(variant.method, 0) + 1
    width = ONE_COLUMN_IN if len(pairs) * len(variants) <= 8 else TWO_COLUMN_IN
    figure = new_figure(width, 2.4)
    ax = figure.subplots()
    bar_width = 0.8 / len(variants)
    unsupported = 0
    by_cell = {(row["method_label"], tuple(row[k] for k in PAIR_KEY)): row for _, row in rows.iterrows()}
    for v_index, variant in enumerate(variants):
        for p_index, pair in enumerate(pairs):
            found = by_cell.get((variant.method_label, pair))
            if found is None:
                continue
            x = p_index - 0.4 + bar_width * (v_index + 0.5)
            ci = found["delta_top1_ci95"]
            supported = bool(found.get("delta_supported", False))
            ax.bar(x, found["delta_top1"], width=bar_width * 0.9, color=method_colour(variant.method, slots, baseline),
                   hatch=hatch_of[variant.method_label], edgecolor="white", linewidth=0.3,
                   alpha=1.0 if supported else UNSUPPORTED_ALPHA,
                   yerr=None if pd.isna(ci) else ci, error_kw={"elinewidth": 0.6, "capsize": 1.5})
            if not supported:
                unsupported += 1
    ax.axhline(0.0, color="#444444", linewidth=0.6)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([labels[p] for p in pairs], fontsize=6)
    ax.set_ylabel(f"Δ top-1 vs {baseline} (pp)")
    handles = [Patch(facecolor=method_colour(v.method, slots, baseline), hatch=hatch_of[v.method_label],
                     edgecolor="white", label=v.method_label) for v in variants]
    if unsupported:  # pale bars: gaps whose paired 95% interval contains 0, or with fewer than 2 paired seeds
        handles.append(Patch(facecolor="#888888", alpha=UNSUPPORTED_ALPHA, label="pale: not supported by the seeds"))
    figure.legend(handles=handles, loc="outside lower center", ncol=_legend_columns(len(handles), width))
    return figure


@styled
def plot_delta_heatmap(frame: pd.DataFrame, baseline: str = "ce") -> Figure:
    """Method x pair grid of the mean paired gain over the baseline, diverging colours centred on zero.

    Raises:
        NoFigureData: fewer than two pairs have a gain to show (the bar chart covers one pair).
    """
    table = _as_table(frame, baseline)
    rows = _delta_rows(table)
    labels = pair_labels(table, multiline=True)
    rows = rows.assign(pair=[labels[tuple(k)] for k in rows[PAIR_KEY].itertuples(index=False)])
    grid = rows.pivot_table(index="method_label", columns="pair", values="delta_top1", aggfunc="mean")
    if grid.shape[1] < 2:
        raise NoFigureData("the Δ heatmap needs at least two pairs with gains over the baseline")
    grid = grid[[label for label in labels.values() if label in grid.columns]]
    grid = grid.loc[grid.mean(axis=1).sort_values(ascending=False).index]
    width = ONE_COLUMN_IN if grid.shape[1] <= 4 else TWO_COLUMN_IN
    label_lines = max(str(c).count("\n") + 1 for c in grid.columns)
    figure = new_figure(width, 0.5 + 0.12 * label_lines + 0.2 * grid.shape[0])
    ax = figure.subplots()
    values = grid.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(values))) or 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap=_DIVERGING, aspect="auto",
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit))
    for (r, c), value in np.ndenumerate(values):
        text = "—" if math.isnan(value) else f"{value:+.1f}"
        colour = "white" if not math.isnan(value) and abs(value) > 0.6 * limit else "black"
        ax.text(c, r, text, ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels(grid.columns, fontsize=6)
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels(grid.index)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    colourbar = figure.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    colourbar.set_label(f"Δ top-1 vs {baseline} (pp)")
    colourbar.outline.set_linewidth(0.4)
    return figure


# ------------------------------------------------------------------------------------------------ training curves

def _history_frame(expanded: pd.DataFrame, metric: str | None) -> tuple[pd.DataFrame, str]:
    """Long table (pair, method, seed, epoch, value) of the per-epoch histories of finished runs."""
    ok = expanded[(expanded["status"] == "ok")]
    if "history" not in ok:
        raise NoFigureData("no run has a per-epoch history")
    records = []
    for _, run in ok.iterrows():
        history = run["history"]
        if not isinstance(history, list):
            continue
        for entry in history:
            if isinstance(entry, dict) and entry.get("epoch") is not None:
                records.append({
                    **{k: run[k] for k in PAIR_KEY}, "method": run["method"], "method_label": run["method_label"],
                    "seed": run["seed"], "epoch": entry["epoch"], "val_top1": entry.get("val_top1"),
                    "loss": entry.get("loss"),
                })
    long = pd.DataFrame(records)
    if long.empty:
        raise NoFigureData("no run has a per-epoch history")
    if metric is None:
        metric = "val_top1" if long["val_top1"].notna().any() else "loss"
    long["value"] = pd.to_numeric(long[metric], errors="coerce")
    long = long.dropna(subset=["value"])
    if long.empty:
        raise NoFigureData(f"no history records {metric}")
    return long, metric


@styled
def plot_training_curves(frame: pd.DataFrame, metric: str | None = None, baseline: str = "ce") -> Figure:
    """Per pair, one line per method variant of a per-epoch metric (mean over seeds, band = min..max).

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        metric: ``val_top1`` or ``loss``; by default ``val_top1`` where the runs had a validation split, else the
            training loss.
        baseline: the method drawn in grey.

    Raises:
        NoFigureData: no finished run has a history with that metric.
    """
    if frame.empty:
        raise NoFigureData("the store holds no runs")
    expanded = expand_pairs(frame)
    long, metric = _history_frame(expanded, metric)
    table = leaderboard(frame, baseline)
    labels = pair_labels(table, multiline=True)
    pairs = [key for key in labels if key in set(map(tuple, long[PAIR_KEY].itertuples(index=False)))]
    rows, columns, width = _grid(len(pairs))
    figure = new_figure(width, 0.4 + 1.9 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    slots = _slots(long["method"], baseline)
    styles = ["-", "--", ":", "-."]
    long_pairs = [tuple(k) for k in long[PAIR_KEY].itertuples(index=False)]
    for ax, pair in zip(axes, pairs, strict=False):
        pair_long = long[[key == pair for key in long_pairs]]
        seen: dict[str, int] = {}
        for label, runs in pair_long.groupby("method_label", sort=True):
            method = runs["method"].iloc[0]
            line_style = styles[seen.get(method, 0) % len(styles)]
            seen[method] = seen.get(method, 0) + 1
            by_epoch = runs.groupby("epoch")["value"]
            mean, low, high = by_epoch.mean(), by_epoch.min(), by_epoch.max()
            colour = method_colour(method, slots, baseline)
            ax.plot(mean.index, mean.to_numpy(), color=colour, linestyle=line_style, label=label)
            if runs["seed"].nunique() > 1:
                ax.fill_between(mean.index, low.to_numpy(), high.to_numpy(), color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Validation top-1 (%)" if metric == "val_top1" else "Training loss")
        if len(pairs) > 1:
            ax.set_title(labels[pair], loc="left", fontsize=6.5)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    merged = dict(zip(names, handles, strict=True))
    for ax in axes[1:len(pairs)]:
        merged.update(dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True)))
    figure.legend(list(merged.values()), list(merged.keys()), loc="outside lower center",
                  ncol=_legend_columns(len(merged), width))
    return figure


# ---------------------------------------------------------------------------------------- published vs measured

@styled
def plot_published_vs_measured(frame: pd.DataFrame, baseline: str = "ce",
                               published: pd.DataFrame | None = None) -> Figure:
    """Measured top-1 (mean, std bars) against the published figure for the same pair and method (CIFAR-100, ImageNet).

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        baseline: the baseline label, compared with the papers' ``ce`` rows.
        published: the published table with zoo model names; by default from ``kdbench.published``.

    Raises:
        NoFigureData: the published table is not available, or no run matches a published pair and method.
    """
    table = _as_table(frame, baseline)
    comparison = published_comparison(table, baseline, published)
    if comparison.empty:
        raise NoFigureData("no CIFAR-100 or ImageNet run matches a published pair and method")
    figure = new_figure(ONE_COLUMN_IN, 3.3)
    ax = figure.subplots()
    slots = _slots([m for m in comparison["method"] if m != "teacher"], baseline)
    for _, row in comparison.iterrows():
        is_teacher = row["method"] == "teacher"
        colour = TEACHER_COLOUR if is_teacher else method_colour(row["method"], slots, baseline)
        marker = "*" if is_teacher else method_marker(row["method"], slots, baseline)
        ax.errorbar(row["published_top1"], row["measured_top1"],
                    yerr=None if pd.isna(row["measured_std"]) else row["measured_std"], color=colour, marker=marker,
                    linestyle="none", elinewidth=0.6, capsize=1.5)
    low = float(np.nanmin(comparison[["published_top1", "measured_top1"]].to_numpy())) - 1.0
    high = float(np.nanmax(comparison[["published_top1", "measured_top1"]].to_numpy())) + 1.0
    ax.plot([low, high], [low, high], color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("Published top-1 (%)")
    ax.set_ylabel("Measured top-1 (%)")
    methods = _ordered_methods([m for m in comparison["method"] if m != "teacher"], slots, baseline)
    handles = _method_handles(methods, slots, baseline, marker=True)
    if (comparison["method"] == "teacher").any():
        handles.append(Line2D([], [], color=TEACHER_COLOUR, marker="*", linestyle="none", label="teacher"))
    figure.legend(handles=handles, loc="outside lower center", ncol=_legend_columns(len(handles), ONE_COLUMN_IN))
    return figure
