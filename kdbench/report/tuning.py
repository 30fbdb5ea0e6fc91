"""Tuned rows, the default-vs-tuned table and the tuning curves, from the study summaries of ``kdbench tune``.

A study's final runs are ordinary test records; :func:`with_tuning` adds a copy of each as a *tuned* row of its
method (label ``kd [tuned, 12 trials]``), counted under the pair's budget (the learning rate and weight decay the
search started from) so that it sits beside the default row in every table and figure, and states its tuning
budget (``tuning``) and chosen hyperparameters (``tuned_params``). Trial records, measured on the validation
split, never enter a test table (:func:`kdbench.report.aggregate.prepare` leaves them out); they only feed the
tuning curves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from kdbench.report.figures import NoFigureData, _grid, _legend_columns, new_figure, styled
from kdbench.report.formatting import DASH, fixed, mean_pm, signed_pm
from kdbench.report.stats import mean_std_ci
from kdbench.report.style import method_colour, method_slots

TUNING_ATTR = "tuning"  # where with_tuning keeps the study summaries on the frame (DataFrame.attrs)


def tuned_label(summary: Mapping[str, Any]) -> str:
    """``kd [tuned, 12 trials]``."""
    used = summary.get("trials_used", 0)
    return f"{summary.get('label') or summary['method']} [tuned, {used} trial{'s' * (used != 1)}]"


def params_text(params: Mapping[str, Any] | None) -> str:
    """``temperature=3.5, lr=0.08, weight_decay=0.001`` (4 significant digits)."""
    if not params:
        return DASH
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def with_tuning(frame: pd.DataFrame, summaries: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``frame`` plus one tuned row per final run of each finished study; ``summaries`` kept in ``attrs``.

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        summaries: the studies (:func:`kdbench.tune.load_summaries`).
    """
    out = frame.copy()
    if "tuning" not in out:
        out["tuning"] = None
    if "tuned_params" not in out:
        out["tuned_params"] = None
    copies = []
    replaced: set[str] = set()
    defaults = {r for s in summaries for r in s.get("default_run_ids") or []}
    by_id = {run_id: index for index, run_id in enumerate(out["run_id"])} if "run_id" in out else {}
    for summary in summaries:
        finals = [by_id[r] for r in summary.get("final_run_ids") or [] if r in by_id]
        if not finals or not summary.get("best"):
            continue
        rows = out.iloc[finals].copy()
        params = dict(summary["best"]["params"] or {})
        budget = summary.get("budget") or {}
        for column in ("lr", "weight_decay"):  # the pair's budget: where the search started
            if column in budget and column in rows:
                rows[column] = budget[column]
        rows["method_label"] = tuned_label(summary)
        rows["method_params_json"] = json.dumps({**params, "tuning_study": summary["study"]}, sort_keys=True)
        rows["tuning"] = f"{summary.get('trials_used', 0)} trials"
        rows["tuned_params"] = params_text(params)
        copies.append(rows)
        replaced.update(r for r in summary["final_run_ids"] if r not in defaults)
    if copies:  # a final run that is not also a default run shows as its tuned row only
        out = pd.concat([out[~out["run_id"].isin(replaced)], *copies], ignore_index=True)
    out.attrs[TUNING_ATTR] = [dict(s) for s in summaries]
    return out


def _top1(frame: pd.DataFrame, run_ids: Sequence[str]) -> pd.Series:
    """Test top-1 per seed of the ok runs among ``run_ids``."""
    if frame.empty or "run_id" not in frame:
        return pd.Series(dtype=float)
    rows = frame[frame["run_id"].isin(list(run_ids)) & (frame["status"] == "ok")]
    return rows.drop_duplicates("run_id").groupby("seed")["top1"].mean()


def tuning_table(frame: pd.DataFrame, summaries: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Default vs tuned, one row per study.

    Columns: test top-1 of both (mean, std, n), the gain paired by seed, the trials used (and how many of them
    were pruned), the best validation top-1, the chosen hyperparameters and the search space.

    Args:
        frame: a store loaded by :func:`kdbench.results.load` (with or without :func:`with_tuning`).
        summaries: the studies; by default those :func:`with_tuning` kept on ``frame``.
    """
    summaries = summaries if summaries is not None else frame.attrs.get(TUNING_ATTR, [])
    rows = []
    for s in summaries:
        default, tuned = _top1(frame, s.get("default_run_ids") or []), _top1(frame, s.get("final_run_ids") or [])
        d_mean, d_std, _, d_n = mean_std_ci(default)
        t_mean, t_std, _, t_n = mean_std_ci(tuned)
        common = default.index.intersection(tuned.index)
        gain, gain_std, _, n_paired = mean_std_ci(tuned[common] - default[common])
        rows.append({
            "dataset": s["dataset"], "teacher": s.get("teacher") or "none", "student": s["student"],
            "method": s["method"], "method_label": s.get("label") or s["method"], "study": s["study"],
            "trials_requested": s.get("trials_requested"), "trials_used": s.get("trials_used"),
            "trials_pruned": s.get("trials_pruned") or 0, "complete": bool(s.get("complete")),
            "best_val_top1": (s.get("best") or {}).get("value", math.nan),
            "default_top1_mean": d_mean, "default_top1_std": d_std, "default_n": d_n,
            "tuned_top1_mean": t_mean, "tuned_top1_std": t_std, "tuned_n": t_n,
            "gain_mean": gain, "gain_std": gain_std, "n_paired": n_paired,
            "chosen": params_text((s.get("best") or {}).get("params")),
            "search_space": "; ".join(_space_text(p) for p in s.get("space") or []),
        })
    columns = ["dataset", "teacher", "student", "method", "method_label", "study", "trials_requested", "trials_used",
               "trials_pruned", "complete", "best_val_top1", "default_top1_mean", "default_top1_std", "default_n",
               "tuned_top1_mean", "tuned_top1_std", "tuned_n", "gain_mean", "gain_std", "n_paired", "chosen",
               "search_space"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["dataset", "teacher", "student", "method_label"], kind="mergesort").reset_index(drop=True)


def _space_text(param: Mapping[str, Any]) -> str:
    if param.get("choices") is not None:
        return f"{param['name']} in {{{', '.join(str(c) for c in param['choices'])}}}"
    return f"{param['name']} in [{param['low']:g}, {param['high']:g}]" + (" log" if param.get("log") else "")


def tuning_display(table: pd.DataFrame) -> Any:
    """The default-vs-tuned table as a paper table (see :mod:`kdbench.report.tables`)."""
    from kdbench.report.tables import DisplayTable

    header = ["Dataset", "Teacher", "Student", "Method", "Trials", "Best val top-1 (%)", "Default top-1 (%)",
              "Tuned top-1 (%)", "Tuned − default", "Chosen hyperparameters"]
    rows, raws = [], []
    for _, r in table.iterrows():
        trials = f"{r['trials_used']}/{r['trials_requested']}" + (f" ({r['trials_pruned']} pruned)"
                                                                 if r["trials_pruned"] else "")
        rows.append([str(r["dataset"]), str(r["teacher"]), str(r["student"]), str(r["method_label"]), trials,
                     fixed(r["best_val_top1"]), f"{mean_pm(r['default_top1_mean'], r['default_top1_std'])} "
                     f"({r['default_n']})", f"{mean_pm(r['tuned_top1_mean'], r['tuned_top1_std'])} ({r['tuned_n']})",
                     DASH if r["n_paired"] == 0 else f"{signed_pm(r['gain_mean'], r['gain_std'])} ({r['n_paired']})",
                     str(r["chosen"])])
        raws.append([r["dataset"], r["teacher"], r["student"], r["method_label"], r["trials_used"],
                     r["best_val_top1"], r["default_top1_mean"], r["tuned_top1_mean"], r["gain_mean"], r["chosen"]])
    raws = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in raws]
    return DisplayTable(header=[header], rows=rows, align=["l"] * 4 + ["r"] * 5 + ["l"], sort_values=raws)


def tuning_note(table: pd.DataFrame) -> str:
    """The table's note: protocol, and each study's chosen hyperparameters and search space."""
    lines = ["Every method gets the same number of trials (Optuna TPE), each trained with the trial seed and "
             "scored on the validation split; the best configuration is then trained with each final seed and "
             "scored on test. Top-1 mean ± std over seeds (n); tuned − default paired by seed."]
    if not table.empty and (table["trials_pruned"] > 0).any():
        lines.append("A pruned trial (stopped early when its validation top-1 trailed the median of the complete "
                     "trials at the same epoch) counts as a trial but trained fewer epochs; only complete trials "
                     "compete for the best configuration.")
    for _, r in table.iterrows():
        lines.append(f"{r['method_label']} ({r['teacher']} → {r['student']}): chosen {r['chosen']}; "
                     f"searched {r['search_space']}.")
    return " ".join(lines)


def _curve(summary: Mapping[str, Any]) -> tuple[list[int], list[float], list[int]]:
    """Best validation top-1 so far against trials used, in the order the trials were asked; and the pruned ones.

    Only complete trials set the best (a pruned trial's value is its last epoch's before it stopped, so it is not
    comparable); a pruned trial still uses one trial, and its position is the third list.
    """
    xs, ys, pruned, best = [], [], [], -math.inf
    for trial in sorted(summary.get("trials") or [], key=lambda t: t["number"]):
        if not trial.get("used"):
            continue
        value = trial.get("value")
        if trial.get("state", "complete") == "complete" and value is not None and value > best:
            best = value
        xs.append(len(xs) + 1)
        ys.append(best if best > -math.inf else math.nan)
        if trial.get("state") == "pruned":
            pruned.append(len(xs))
    return xs, ys, pruned


@styled
def plot_tuning_curves(summaries: Sequence[Mapping[str, Any]], baseline: str = "ce") -> Figure:
    """Per pair, the best validation top-1 reached against the trials used, one line per method (the tuning curve).

    A curve that is still rising at the last trial says the budget was too small for that method; methods whose
    curves flatten after a few trials are cheap to tune. Pruned trials are marked with an ``x`` on their curve.

    Raises:
        NoFigureData: no study has a finished trial.
    """
    curves = [(s, *_curve(s)) for s in summaries]
    curves = [(s, xs, ys, pruned) for s, xs, ys, pruned in curves if xs and any(not math.isnan(y) for y in ys)]
    if not curves:
        raise NoFigureData("no tuning study has a finished trial")
    # one panel per pair; a teacher-free study (ce) is drawn in every panel of its student, or gets its own
    pairs = list(dict.fromkeys((s["dataset"], s["teacher"], s["student"]) for s, *_ in curves if s.get("teacher")))
    covered = {(dataset, student) for dataset, _, student in pairs}
    pairs += list(dict.fromkeys((s["dataset"], "none", s["student"]) for s, *_ in curves
                                if not s.get("teacher") and (s["dataset"], s["student"]) not in covered))
    rows, columns, width = _grid(len(pairs))
    figure = new_figure(width, 0.4 + 1.9 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    slots = method_slots(sorted({s["method"] for s, *_ in curves}), baseline)
    for ax, pair in zip(axes, pairs, strict=False):
        for s, xs, ys, pruned in curves:
            teacher = s.get("teacher") or "none"
            if s["dataset"] != pair[0] or s["student"] != pair[2] or teacher not in (pair[1], "none"):
                continue
            colour = method_colour(s["method"], slots, baseline)
            ax.step(xs, ys, where="post", color=colour, label=s.get("label") or s["method"], marker="o",
                    markersize=2.5, markevery=[i for i, x in enumerate(xs) if x not in pruned])
            if pruned:
                ax.plot(pruned, [ys[x - 1] for x in pruned], linestyle="none", marker="x", markersize=4,
                        color=colour)
        ax.set_xlabel("Trials used")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Best validation top-1 (%)")
        if len(pairs) > 1:
            ax.set_title(f"{pair[1]} → {pair[2]}", loc="left", fontsize=6.5)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    merged: dict[str, Any] = {}
    for ax in axes[:len(pairs)]:
        handles, names = ax.get_legend_handles_labels()
        merged.update(dict(zip(names, handles, strict=True)))
    if any(pruned for *_, pruned in curves):
        merged["pruned trial"] = Line2D([], [], linestyle="none", marker="x", markersize=4, color="0.35")
    figure.legend(list(merged.values()), list(merged.keys()), loc="outside lower center",
                  ncol=_legend_columns(len(merged), width))
    return figure


def write_tuning(writer: Any, frame: pd.DataFrame) -> None:
    """Add the default-vs-tuned table and the tuning curves to a report being written (nothing without studies).

    Args:
        writer: the report writer of :mod:`kdbench.report.writer`.
        frame: the store as given to :func:`kdbench.report.write_report` (after :func:`with_tuning`).
    """
    summaries = frame.attrs.get(TUNING_ATTR) or []
    if not summaries:
        return
    table = tuning_table(frame, summaries)
    writer.table("tuning", "Default vs tuned (equal tuning budget per method)", tuning_display(table), table,
                 sortable=True, note=tuning_note(table))
    writer.figure("tuning_curves", lambda: plot_tuning_curves(summaries))
