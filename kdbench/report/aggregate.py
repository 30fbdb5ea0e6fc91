"""Aggregation of a results store: pairs, the leaderboard, paired gains over the baseline, ranks and costs.

A *pair* is (dataset, teacher, student) under one training budget. Methods that use no separate teacher (the
``ce`` baseline, self-distillation) are recorded with ``teacher = null``; such a run belongs to every pair of its
dataset, student and budget, so one ``ce`` run serves every teacher. Where no teacher-based run exists for its
student, it forms a pair with the teacher ``"none"``. The teacher's own training length (``teacher_epochs``) is
part of a pair's budget; a teacher-free run matches any. So are the teacher's weights' origin (``teacher_origin``:
``trained`` by kdbench, the default of records that do not say; ``checkpoint``, a file such as the authors' released
teachers; ``pretrained``, timm's weights) and the checkpoint's SHA-256: runs distilled from different teachers of
one architecture are never pooled, and tables mark the teachers kdbench did not train. The dataset's identifying
options (the normalisation a spec sets, ...) are part of the student's budget.

Only runs with ``status == "ok"`` are aggregated; failed runs are counted in ``n_failed`` and listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from kdbench.report.formatting import marked_teacher
from kdbench.report.stats import mean_std_ci

NO_TEACHER = "none"
STUDENT_BUDGET_COLUMNS = (  # data_fingerprint: other files under one dataset name are another leaderboard group
    "epochs", "batch_size", "lr", "schedule", "milestones", "weight_decay", "data_fingerprint", "data_identity",
    "val_fraction", "image_size",
)
TEACHER_BUDGET_COLUMNS = ("teacher_epochs", "teacher_origin", "teacher_ckpt_sha256")
#: What a teacher's weights are when a record does not say (records written before ``teacher_source`` existed)
TRAINED = "trained"
#: Teacher sources whose weights kdbench did not train: a checkpoint file or timm's pretrained weights
EXTERNAL_TEACHERS = ("checkpoint", "pretrained")
BUDGET_COLUMNS = STUDENT_BUDGET_COLUMNS[:-2] + TEACHER_BUDGET_COLUMNS + STUDENT_BUDGET_COLUMNS[-2:]
PAIR_KEY = ["dataset", "teacher", "student", "budget_key"]
VARIANT_KEY = ["method", "method_params_json"]
NUMERIC_COLUMNS = (
    "seed", "top1", "top5", "agreement", "teacher_top1", "teacher_seed", "params_m", "extra_params_m", "gmacs",
    "gflops", "cpu_latency_ms_bs1", "cpu_latency_ms_bs1_p90", "cpu_samples_per_s", "cpu_batch_size",
    "cpu_threads", "gpu_latency_ms_bs1", "gpu_latency_ms_bs1_p90", "gpu_samples_per_s", "gpu_batch_size",
    "gpu_peak_mem_mb", "train_time_s", "train_samples_per_s", "teacher_time_s", "teacher_time_share",
)
TEXT_COLUMNS = (
    "run_id", "status", "error", "dataset", "teacher", "student", "method", "method_label", "teacher_source",
    "teacher_ckpt_sha256", "device",
    "device_name", "gpu_name", "hostname", "torch_version", "timm_version", "kdbench_version", "git_commit",
    "python_version", "tuning", "tuned_params",
)
ENVIRONMENT_COLUMNS = (
    "device", "device_name", "gpu_name", "cpu_threads", "torch_version", "timm_version", "kdbench_version",
    "git_commit", "python_version",
)


def _canonical(value: Any) -> Any:
    """A JSON-ready, comparable form of a record value: NaN -> None, 240.0 -> 240, numpy -> Python, tuple -> list."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    if isinstance(value, list | tuple | np.ndarray):
        return [_canonical(v) for v in value]
    return value


def _is_missing(value: Any) -> bool:
    """True for None and float NaN (not for lists or strings)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def budget_label(budget: Mapping[str, Any], differing: bool = False) -> str:
    """A short human-readable form of a budget, e.g. ``240 ep, bs 64, lr 0.05 step@150/180/210, wd 0.0005``.

    A teacher kdbench did not train is named with its checkpoint's digest (``teacher checkpoint 1a2b3c4d5e6f``).
    With ``differing`` (``budget`` holds what tells budgets apart) a teacher kdbench trained is named too, and the
    dataset's identifying options (``data mean=0.5071/0.4867/0.4408 ...``), which a single budget's label leaves out.
    """
    from kdbench.report.formatting import SHA_DIGITS

    parts: list[str] = []
    if budget.get("epochs") is not None:
        parts.append(f"{budget['epochs']} ep")
    if budget.get("batch_size") is not None:
        parts.append(f"bs {budget['batch_size']}")
    lr_text = f"lr {budget['lr']:g}" if budget.get("lr") is not None else ""
    schedule = budget.get("schedule")
    if schedule:
        milestones = budget.get("milestones")
        if schedule == "multistep" and milestones:
            schedule = "step@" + "/".join(str(m) for m in milestones)
        lr_text = f"{lr_text} {schedule}".strip()
    if lr_text:
        parts.append(lr_text)
    if budget.get("weight_decay") is not None:
        parts.append(f"wd {budget['weight_decay']:g}")
    if budget.get("teacher_epochs") is not None:
        parts.append(f"teacher {budget['teacher_epochs']} ep")
    origin, digest = budget.get("teacher_origin"), budget.get("teacher_ckpt_sha256")
    if origin in EXTERNAL_TEACHERS:
        parts.append(f"teacher {origin}" + (f" {digest[:SHA_DIGITS]}" if isinstance(digest, str) else ""))
    elif origin == TRAINED and differing:
        parts.append("teacher trained by kdbench")
    if differing and "data_identity" in budget:
        parts.append("data " + (" ".join(f"{k}={_option_text(v)}" for k, v in sorted(budget["data_identity"].items()))
                                if budget["data_identity"] else "defaults"))
    if budget.get("val_fraction"):
        parts.append(f"val {budget['val_fraction']:g}")
    if budget.get("image_size") is not None:
        parts.append(f"{budget['image_size']}px")
    return ", ".join(parts) if parts else "default budget"


def _option_text(value: Any) -> str:
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) \
        else str(value)


def _teacher_origin(teacher: Any, source: Any) -> str | None:
    """Where a run's teacher weights come from: ``trained`` (by kdbench), ``checkpoint`` or ``pretrained``.

    ``None`` for a teacher-free run. A record without ``teacher_source`` is from before that field existed: kdbench
    trained its teacher.
    """
    if _is_missing(teacher) or teacher == "":
        return None
    return source if isinstance(source, str) and source in EXTERNAL_TEACHERS else TRAINED


def _data_identity(options: Any) -> dict[str, Any] | None:
    """The data options that identify the data (the loader's speed options left out); ``None`` when there are none."""
    from kdbench.config import identity_data_options

    if not isinstance(options, Mapping):
        return None
    return {str(k): _canonical(v) for k, v in sorted(identity_data_options(options).items())} or None


def _budget_part(row: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    return {column: _canonical(row[column]) for column in columns if column in row}


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise a loaded store for aggregation (one row per run, nothing expanded).

    Adds missing contract columns as empty, ``method_label`` / ``method_params_json`` where absent, teacher
    ``None`` for teacher-free runs and the boolean ``uses_teacher``, and the canonical budget keys
    ``student_budget_key`` / ``teacher_budget_key`` (JSON text, hashable).
    """
    prepared = frame.copy().reset_index(drop=True)
    if "eval_split" in prepared:  # tuning trials, measured on the validation split, never enter a test table
        prepared = prepared[prepared["eval_split"].fillna("test") != "val"].reset_index(drop=True)
    prepared = prepared[newest_versions(prepared)].reset_index(drop=True)  # versions are never pooled
    for column in NUMERIC_COLUMNS:
        if column not in prepared:
            prepared[column] = np.nan
        prepared[column] = pd.to_numeric(prepared[column], errors="coerce").astype(float)
    for column in TEXT_COLUMNS:
        if column not in prepared:
            prepared[column] = None
    prepared["status"] = prepared["status"].where(prepared["status"].notna(), "failed")
    if "method_params_json" not in prepared:
        params = prepared["method_params"] if "method_params" in prepared else [None] * len(prepared)
        prepared["method_params_json"] = [json.dumps(p if isinstance(p, dict) else {}, sort_keys=True) for p in params]
    prepared["method_label"] = [
        label if isinstance(label, str) and label else method
        for label, method in zip(prepared["method_label"], prepared["method"], strict=True)
    ]
    teachers = [None if _is_missing(t) or t == "" else str(t) for t in prepared["teacher"]]
    prepared["teacher"] = pd.Series(teachers, index=prepared.index, dtype=object)
    prepared["uses_teacher"] = [t is not None for t in teachers]
    origins = [_teacher_origin(t, s) for t, s in zip(teachers, prepared["teacher_source"], strict=True)]
    prepared["teacher_origin"] = pd.Series(origins, index=prepared.index, dtype=object)
    digests = [d if o in EXTERNAL_TEACHERS and isinstance(d, str) and d else None
               for o, d in zip(origins, prepared["teacher_ckpt_sha256"], strict=True)]
    prepared["teacher_ckpt_sha256"] = pd.Series(digests, index=prepared.index, dtype=object)
    options = prepared["data_options"] if "data_options" in prepared else [None] * len(prepared)
    prepared["data_identity"] = pd.Series([_data_identity(o) for o in options], index=prepared.index, dtype=object)
    records = prepared.to_dict("records")
    prepared["student_budget_key"] = [
        json.dumps(_budget_part(r, STUDENT_BUDGET_COLUMNS), sort_keys=True) for r in records
    ]
    prepared["teacher_budget_key"] = [
        json.dumps(_budget_part(r, TEACHER_BUDGET_COLUMNS), sort_keys=True) for r in records
    ]
    return prepared


def expand_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, pair it belongs to): teacher-free runs are repeated for every matching pair.

    The result has the pair's ``teacher`` (``"none"`` where no teacher-based run exists for that student),
    ``budget_key`` (canonical JSON of the whole budget) and ``budget`` (its readable label). Pairs are taken
    from every teacher-based run, failed ones included, so a pair whose runs all failed still shows.
    """
    prepared = prepare(frame)
    join_key = ["dataset", "student", "student_budget_key"]
    with_teacher = prepared[prepared["uses_teacher"]]
    teacher_free = prepared[~prepared["uses_teacher"]].drop(columns=["teacher", "teacher_budget_key"])
    pairs = with_teacher[[*join_key, "teacher", "teacher_budget_key"]].drop_duplicates()
    joined = teacher_free.merge(pairs, on=join_key, how="left")
    joined["teacher"] = joined["teacher"].where(joined["teacher"].notna(), NO_TEACHER)
    no_teacher_budget = json.dumps({c: None for c in TEACHER_BUDGET_COLUMNS if c in prepared})
    joined["teacher_budget_key"] = joined["teacher_budget_key"].where(
        joined["teacher_budget_key"].notna(), no_teacher_budget
    )
    expanded = pd.concat([with_teacher, joined], ignore_index=True)
    budgets = [
        {**json.loads(student), **json.loads(teacher)}
        for student, teacher in zip(expanded["student_budget_key"], expanded["teacher_budget_key"], strict=True)
    ]
    expanded["budget_key"] = [json.dumps(b, sort_keys=True) for b in budgets]
    expanded["budget"] = [budget_label(b) for b in budgets]
    return expanded


def resolve_baseline(frame: pd.DataFrame, baseline: str) -> str | None:
    """The ``method_label`` that stands for ``baseline``: the label itself, or the only variant of that method."""
    labels = set(frame["method_label"].dropna())
    if baseline in labels:
        return baseline
    variants = set(frame.loc[frame["method"] == baseline, "method_label"].dropna())
    return next(iter(variants)) if len(variants) == 1 else None


def check_baseline(frame: pd.DataFrame, baseline: str) -> None:
    """Check that ``baseline`` names a method (or method label) of the store, or at least a registered method.

    A registered method the store has no runs of is allowed: its gains stay blank.

    Raises:
        ConfigError: ``baseline`` is unknown; the message suggests close names from the store and the registry.
    """
    import difflib

    from kdbench.distiller import list_methods
    from kdbench.errors import ConfigError

    stored = sorted(set(frame.get("method_label", pd.Series(dtype=object)).dropna())
                    | set(frame.get("method", pd.Series(dtype=object)).dropna()))
    registered = list_methods()
    if baseline in stored or baseline in registered:
        return
    close = difflib.get_close_matches(baseline, stored + registered, n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"the store has {', '.join(stored)}"
    raise ConfigError(f"unknown baseline {baseline!r}: no method of that name in the store or registry; {hint}")


def _versions(frame: pd.DataFrame, column: str) -> pd.Series:
    """The ``column`` version of each run as a number; -1 where a record has none (older than any version)."""
    if column not in frame:
        return pd.Series(-1.0, index=frame.index)
    return pd.to_numeric(frame[column], errors="coerce").fillna(-1.0)


def newest_versions(frame: pd.DataFrame) -> pd.Series:
    """Which runs of ``frame`` come from the newest code: the newest protocol version, then each method's newest.

    Runs of different versions are never averaged together or paired: a table holds the newest runs only, and
    :func:`version_warnings` says what it left out.
    """
    protocol = _versions(frame, "protocol_version")
    keep = protocol == protocol.max() if len(frame) else protocol.astype(bool)
    method = _versions(frame, "method_version").where(keep)
    newest = method.groupby(frame["method"].astype(str)).transform("max") if len(frame) else method
    return keep & (method == newest)


def _per_seed_top1(rows: pd.DataFrame) -> pd.Series:
    """Top-1 per seed of the finished runs in ``rows`` (mean if a seed repeats)."""
    ok = rows[(rows["status"] == "ok") & rows["top1"].notna() & rows["seed"].notna()]
    return ok.groupby("seed")["top1"].mean()


def _teacher_top1(pair_rows: pd.DataFrame) -> float:
    """The teacher's accuracy of a pair: mean over its distinct teachers (teacher seeds) of ``teacher_top1``."""
    ok = pair_rows[(pair_rows["status"] == "ok") & pair_rows["uses_teacher"] & pair_rows["teacher_top1"].notna()]
    if ok.empty:
        return math.nan
    per_teacher = ok.groupby(ok["teacher_seed"].fillna(-1.0))["teacher_top1"].mean()
    return float(per_teacher.mean())


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if not values.empty else math.nan


def _first_text(values: pd.Series) -> Any:
    values = values.dropna()
    return values.iloc[0] if not values.empty else None


def _variant_row(rows: pd.DataFrame, baseline_seeds: pd.Series | None, is_baseline: bool) -> dict[str, Any]:
    ok = rows[rows["status"] == "ok"]
    top1_mean, top1_std, top1_ci, n = mean_std_ci(_per_seed_top1(rows))  # a seed counts once
    row: dict[str, Any] = {
        "method_label": rows["method_label"].iloc[0],
        "uses_teacher": bool(rows["uses_teacher"].iloc[0]),
        "teacher_source": _first_text(rows["teacher_source"]) if "teacher_source" in rows else None,
        "is_baseline": is_baseline,
        "n": n,
        "n_failed": int((rows["status"] != "ok").sum()),
        "top1_mean": top1_mean,
        "top1_std": top1_std,
        "top1_ci95": top1_ci,
        "top5_mean": float(ok["top5"].mean()) if ok["top5"].notna().any() else math.nan,
        "agreement_mean": float(ok["agreement"].mean()) if ok["agreement"].notna().any() else math.nan,
        "params_m": _median(ok["params_m"]),
        "extra_params_m": _median(ok["extra_params_m"]),
        "gmacs": _median(ok["gmacs"]),
        "gflops": _median(ok["gflops"]),
        "cpu_latency_ms_bs1": _median(ok["cpu_latency_ms_bs1"]),
        "gpu_samples_per_s": _median(ok["gpu_samples_per_s"]),
        "gpu_name": _first_text(ok["gpu_name"]),
        "train_time_s_mean": float(ok["train_time_s"].mean()) if ok["train_time_s"].notna().any() else math.nan,
        "tuning": _first_text(rows["tuning"]) or "defaults",
        "tuned_params": _first_text(rows["tuned_params"]),
        "delta_top1": math.nan,
        "delta_top1_std": math.nan,
        "delta_top1_ci95": math.nan,
        "n_paired": 0,
        "delta_supported": False,
    }
    if baseline_seeds is not None and not is_baseline:
        mine = _per_seed_top1(rows)
        common = mine.index.intersection(baseline_seeds.index)
        delta_mean, delta_std, delta_ci, n_paired = mean_std_ci(mine[common] - baseline_seeds[common])
        row.update(delta_top1=delta_mean, delta_top1_std=delta_std, delta_top1_ci95=delta_ci, n_paired=n_paired,
                   delta_supported=delta_is_supported(delta_mean, delta_ci, n_paired))
    return row


def delta_is_supported(delta: float, ci95: float, n_paired: int) -> bool:
    """Whether the seeds support a gain or loss: at least two pairs and a paired 95% interval that excludes 0."""
    return n_paired >= 2 and not (math.isnan(delta) or math.isnan(ci95)) and abs(delta) > ci95


LEADERBOARD_COLUMNS = [
    "dataset", "teacher", "student", "budget", "method", "method_label", "uses_teacher", "teacher_source",
    "teacher_origin", "teacher_ckpt_sha256", "is_baseline", "n",
    "n_failed", "top1_mean", "top1_std", "top1_ci95", "top5_mean", "agreement_mean", "delta_top1", "delta_top1_std",
    "delta_top1_ci95", "n_paired", "delta_supported", "teacher_top1", "params_m", "extra_params_m", "gmacs", "gflops",
    "cpu_latency_ms_bs1", "gpu_samples_per_s", "gpu_name", "train_time_s_mean", "tuning", "tuned_params",
    "method_params_json", "budget_key",
]


def leaderboard(frame: pd.DataFrame, baseline: str = "ce") -> pd.DataFrame:
    """One row per (dataset, teacher, student, budget, method variant), best top-1 first within each pair.

    Columns: ``n`` finished runs and ``n_failed``; ``top1_mean``, ``top1_std`` (n-1), ``top1_ci95`` (Student t
    half-width, NaN for n=1); ``top5_mean``, ``agreement_mean``; ``delta_top1`` (mean over seeds present in both of
    this variant's top-1 minus the baseline's in the same pair), ``delta_top1_std``, ``delta_top1_ci95`` and
    ``n_paired`` (NaN / 0 for the baseline itself and where no seed pairs up); ``teacher_top1`` of the pair;
    ``params_m``, ``extra_params_m``, ``gmacs``, ``gflops``, ``cpu_latency_ms_bs1``, ``gpu_samples_per_s``
    (medians); ``train_time_s_mean``; the pair's ``teacher_origin`` (``trained`` by kdbench, ``checkpoint``,
    ``pretrained``; ``None`` without a teacher) and ``teacher_ckpt_sha256``; and the keys ``method_params_json`` and
    ``budget_key``.

    Args:
        frame: a store loaded by :func:`kdbench.results.load`.
        baseline: method label (or method name with a single variant) the gains are measured against.
    """
    if frame.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    expanded = expand_pairs(frame)
    baseline_label = resolve_baseline(expanded, baseline)
    rows: list[dict[str, Any]] = []
    for pair, pair_rows in expanded.groupby(PAIR_KEY, sort=True, dropna=False):
        base_rows = pair_rows[pair_rows["method_label"] == baseline_label]
        baseline_seeds = _per_seed_top1(base_rows) if not base_rows.empty else None
        teacher_top1 = _teacher_top1(pair_rows)
        teacher_budget = json.loads(pair_rows["teacher_budget_key"].iloc[0])
        for variant, variant_rows in pair_rows.groupby(VARIANT_KEY, sort=True, dropna=False):
            is_baseline = variant_rows["method_label"].iloc[0] == baseline_label
            row = dict(zip(PAIR_KEY, pair, strict=True)) | dict(zip(VARIANT_KEY, variant, strict=True))
            row.update(_variant_row(variant_rows, baseline_seeds, is_baseline))
            row["budget"] = variant_rows["budget"].iloc[0]
            row["teacher_top1"] = teacher_top1
            row["teacher_origin"] = teacher_budget.get("teacher_origin")
            row["teacher_ckpt_sha256"] = teacher_budget.get("teacher_ckpt_sha256")
            rows.append(row)
    table = pd.DataFrame(rows)[LEADERBOARD_COLUMNS]
    table = table.sort_values(
        ["dataset", "teacher", "student", "budget_key", "top1_mean", "method_label"],
        ascending=[True, True, True, True, False, True],
        na_position="last",
        kind="mergesort",
    )
    return table.reset_index(drop=True)


def pair_groups(table: pd.DataFrame) -> Iterable[tuple[tuple[Any, ...], pd.DataFrame]]:
    """Iterate a leaderboard by pair, in its order: ``((dataset, teacher, student, budget_key), rows)``."""
    return table.groupby(PAIR_KEY, sort=False, dropna=False)


def budget_differences(budget_keys: Iterable[str]) -> dict[str, str]:
    """Short labels of several budgets: only the fields in which each differs from the others.

    A milestones difference keeps the schedule name, so ``step@5/8`` reads as a schedule. A single budget maps to
    its full label.
    """
    keys = list(dict.fromkeys(budget_keys))
    budgets = {key: json.loads(key) for key in keys}
    if len(keys) == 1:
        return {keys[0]: budget_label(budgets[keys[0]])}
    labels = {}
    for key, budget in budgets.items():
        differing = {f: v for f, v in budget.items() if any(other.get(f) != v for other in budgets.values())}
        if "milestones" in differing and "schedule" not in differing:
            differing["schedule"] = budget.get("schedule")
        labels[key] = budget_label(differing, differing=True) if differing else budget_label(budget)
    return labels


def pair_labels(table: pd.DataFrame, multiline: bool = False) -> dict[tuple[Any, ...], str]:
    """Short labels of the pairs of a leaderboard, ``teacher → student``.

    The dataset is added when there are several datasets, the budget when one (dataset, teacher, student) appears
    under several budgets (only what differs between them). With ``multiline`` each part goes on its own line.
    """
    keys = [tuple(k) for k in table[PAIR_KEY].drop_duplicates().itertuples(index=False)]
    several_datasets = len({k[0] for k in keys}) > 1
    budgets_per_trio: dict[tuple[Any, ...], list[str]] = {}
    for key in keys:
        budgets_per_trio.setdefault(key[:3], []).append(key[3])
    budget_text = {}
    for trio, budget_keys in budgets_per_trio.items():
        for budget_key, text in budget_differences(budget_keys).items():
            budget_text[(*trio, budget_key)] = text
    labels = {}
    for key in keys:
        teacher = marked_teacher(key[1], json.loads(key[3]).get("teacher_origin"))
        parts = [f"{teacher}", f"→ {key[2]}"] if multiline else [f"{teacher} → {key[2]}"]
        if several_datasets:
            parts.insert(0, f"{key[0]}" if multiline else f"{key[0]}:")
        if len(budgets_per_trio[key[:3]]) > 1:
            parts.append(f"[{budget_text[key]}]")
        labels[key] = ("\n" if multiline else " ").join(parts)
    return labels


def method_ranks(frame: pd.DataFrame, baseline: str = "ce") -> pd.DataFrame:
    """Average rank of each method variant across pairs (1 = best top-1 in a pair; ties share the mean rank).

    ``frame`` is a loaded store, or a table already made by :func:`leaderboard`.

    Columns: ``method_label``, ``method``, ``mean_rank``, ``n_pairs`` (pairs it was ranked in), ``n_best`` (pairs
    where it ranked first) and ``mean_delta_top1`` (mean over pairs of its paired gain over the baseline). A
    variant missing from a pair is not ranked there, so compare ``n_pairs`` before comparing ranks.
    """
    table = leaderboard(frame, baseline) if "top1_mean" not in frame else frame
    ranked = table[table["n"] > 0].copy()
    columns = ["method_label", "method", "mean_rank", "n_pairs", "n_best", "mean_delta_top1", "method_params_json"]
    if ranked.empty:
        return pd.DataFrame(columns=columns)
    ranked["rank"] = ranked.groupby(PAIR_KEY, dropna=False)["top1_mean"].rank(ascending=False, method="average")
    grouped = ranked.groupby(VARIANT_KEY, dropna=False)
    ranks = grouped.agg(
        method_label=("method_label", "first"),
        mean_rank=("rank", "mean"),
        n_pairs=("rank", "size"),
        n_best=("rank", lambda r: int((r == 1).sum())),
        mean_delta_top1=("delta_top1", "mean"),
    ).reset_index()
    ranks = ranks.sort_values(["mean_rank", "method_label"], kind="mergesort").reset_index(drop=True)
    return ranks[columns]


def method_costs(frame: pd.DataFrame, baseline: str = "ce") -> pd.DataFrame:
    """Training cost of each method variant, per training device (times from different machines never mix).

    Columns: ``method_label``, ``method``, ``device_name``, ``n_runs``, ``train_time_s`` and
    ``train_samples_per_s`` (means), ``teacher_time_s`` and ``teacher_time_share`` (means; the teacher forward's
    part), ``extra_params_m`` (max), and ``time_vs_baseline``: median over pairs of this variant's mean training
    time divided by the baseline's in the same pair and on the same device (1.0 = as fast as plain CE).
    """
    columns = [
        "method_label", "method", "device_name", "n_runs", "train_time_s", "train_samples_per_s", "teacher_time_s",
        "teacher_time_share", "extra_params_m", "time_vs_baseline", "method_params_json",
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    prepared = prepare(frame)
    ok = prepared[prepared["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(columns=columns)
    ok["device_name"] = ok["device_name"].fillna(ok["device"]).fillna("unknown")
    costs = ok.groupby([*VARIANT_KEY, "device_name"], dropna=False).agg(
        method_label=("method_label", "first"),
        n_runs=("run_id", "size"),
        train_time_s=("train_time_s", "mean"),
        train_samples_per_s=("train_samples_per_s", "mean"),
        teacher_time_s=("teacher_time_s", "mean"),
        teacher_time_share=("teacher_time_share", "mean"),
        extra_params_m=("extra_params_m", "max"),
    ).reset_index()
    costs["time_vs_baseline"] = _time_ratios(frame, costs, baseline)
    costs = costs.sort_values(["device_name", "train_time_s", "method_label"], kind="mergesort")
    return costs.reset_index(drop=True)[columns]


def _time_ratios(frame: pd.DataFrame, costs: pd.DataFrame, baseline: str) -> list[float]:
    """Per row of ``costs``: median over pairs of mean training time relative to the baseline's (same device)."""
    expanded = expand_pairs(frame)
    expanded = expanded[(expanded["status"] == "ok") & expanded["train_time_s"].notna()].copy()
    expanded["device_name"] = expanded["device_name"].fillna(expanded["device"]).fillna("unknown")
    baseline_label = resolve_baseline(expanded, baseline) if not expanded.empty else None
    means = expanded.groupby([*PAIR_KEY, "device_name", "method_label"], dropna=False)["train_time_s"].mean()
    ratios: dict[tuple[str, str], list[float]] = {}
    if baseline_label is not None:
        for key, value in means.items():
            *pair, device, label = key
            base = means.get((*pair, device, baseline_label))
            if base is not None and base > 0:
                ratios.setdefault((label, device), []).append(value / base)
    return [
        float(np.median(ratios[(label, device)])) if (label, device) in ratios else math.nan
        for label, device in zip(costs["method_label"], costs["device_name"], strict=True)
    ]


EFFICIENCY_VALUES = (
    "params_m", "gmacs", "gflops", "cpu_latency_ms_bs1", "cpu_latency_ms_bs1_p90", "cpu_samples_per_s",
    "cpu_batch_size", "gpu_latency_ms_bs1", "gpu_latency_ms_bs1_p90", "gpu_samples_per_s", "gpu_batch_size",
    "gpu_peak_mem_mb",
)


def efficiency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Inference cost of each deployed student: params, MACs, CPU latency, GPU throughput where measured.

    One row per (dataset, model, image size, measuring machine): the machine is ``device_name`` with
    ``cpu_threads`` for CPU figures and ``gpu_name`` (plus AMP / channels-last) for GPU figures. Values are
    medians over the runs; columns that no run measured (e.g. every GPU column on a CPU-only store) are dropped.
    """
    if frame.empty:
        return pd.DataFrame()
    prepared = prepare(frame)
    ok = prepared[prepared["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    for column in ("image_size", "gpu_amp", "gpu_channels_last"):
        if column not in ok:
            ok[column] = None
    ok["device_name"] = ok["device_name"].fillna(ok["device"])
    keys = ["dataset", "student", "image_size", "device_name", "cpu_threads", "gpu_name", "gpu_amp",
            "gpu_channels_last"]
    for key in keys:  # group keys must be hashable and comparable: use text
        ok[key] = [None if _is_missing(v) else str(_canonical(v)) for v in ok[key]]
    table = ok.groupby(keys, dropna=False).agg(
        n_runs=("run_id", "size"), **{v: (v, "median") for v in EFFICIENCY_VALUES}
    ).reset_index()
    table = table.rename(columns={"student": "model"})
    table = table.dropna(axis="columns", how="all")
    sort_by = [c for c in ("dataset", "gmacs", "params_m", "model") if c in table]
    return table.sort_values(sort_by, kind="mergesort").reset_index(drop=True)


def failed_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The failed runs, one row each: run id, dataset, teacher (``"—"`` if none), student, method, seed, error."""
    columns = ["run_id", "dataset", "teacher", "student", "method_label", "seed", "error"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    prepared = prepare(frame)
    failed = prepared[prepared["status"] != "ok"].copy()
    failed["teacher"] = failed["teacher"].fillna("—")
    return failed[columns].sort_values(["dataset", "student", "method_label", "seed"], kind="mergesort").reset_index(
        drop=True
    )


def runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every run as one flat row (scalar fields only; the teacher is ``"—"`` for teacher-free runs)."""
    if frame.empty:
        return pd.DataFrame()
    prepared = prepare(frame)
    scalar = [
        c for c in prepared.columns
        if not prepared[c].map(lambda v: isinstance(v, dict | list)).any()
        and c not in ("student_budget_key", "teacher_budget_key")
    ]
    table = prepared[scalar].copy()
    table["teacher"] = table["teacher"].fillna("—")
    first = [c for c in ("run_id", "status", "dataset", "teacher", "student", "method_label", "seed", "top1")
             if c in table]
    return table[first + [c for c in table.columns if c not in first]].sort_values("run_id").reset_index(drop=True)


def environment_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The distinct environments the runs were measured in, with the number of runs in each."""
    if frame.empty:
        return pd.DataFrame()
    prepared = prepare(frame)
    for column in ENVIRONMENT_COLUMNS:
        if column not in prepared:
            prepared[column] = None
    columns = list(ENVIRONMENT_COLUMNS)
    text = prepared[columns].apply(lambda column: column.map(lambda v: "—" if _is_missing(v) else str(_canonical(v))))
    summary = text.groupby(columns).size().reset_index(name="n_runs")
    return summary.sort_values("n_runs", ascending=False, kind="mergesort").reset_index(drop=True)


def version_warnings(frame: pd.DataFrame) -> list[str]:
    """One line per protocol version and per method version that the tables leave out (see :func:`newest_versions`).

    Runs of an older protocol or method version (its loss, defaults or behaviour changed since) are never pooled
    with the newest ones; ``kdbench report`` prints these lines and adds them to the report's notes.
    """
    if frame.empty:
        return []
    if "eval_split" in frame:
        frame = frame[frame["eval_split"].fillna("test") != "val"]
    protocol = _versions(frame, "protocol_version")
    newest_protocol = protocol.max() if len(frame) else -1.0
    lines = []
    for version, count in sorted(protocol[protocol < newest_protocol].value_counts().items()):
        lines.append(f"warning: left out {_runs(count)} of protocol version {_version_text(version)} (the store's "
                     f"newest is {_version_text(newest_protocol)}): versions are never pooled; kdbench run/sweep "
                     "retrains them")
    current = frame[protocol == newest_protocol]
    method_versions = _versions(current, "method_version")
    for method, versions in method_versions.groupby(current["method"].astype(str), sort=True):
        newest = versions.max()
        for version, count in sorted(versions[versions < newest].value_counts().items()):
            lines.append(f"warning: left out {_runs(count)} of {method!r} from method version "
                         f"{_version_text(version)} (the store's newest is {_version_text(newest)}): versions are "
                         "never pooled; kdbench run/sweep retrains them")
    return lines


def _runs(count: int) -> str:
    return f"{count} run" + "s" * (count != 1)


def _version_text(version: float) -> str:
    return "unknown" if version < 0 else str(int(version))
