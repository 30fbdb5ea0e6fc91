"""Published vs measured: kdbench's CIFAR-100 and ImageNet runs beside the figures the papers report for them."""

from __future__ import annotations

import pandas as pd

from kdbench.errors import KDBenchError
from kdbench.published import load_published, model_name
from kdbench.report.aggregate import PAIR_KEY

COMPARISON_COLUMNS = [
    "dataset", "teacher", "student", "method", "budget", "published_top1", "measured_top1", "measured_std", "n",
    "difference", "reporting", "source", "teacher_origin", "teacher_ckpt_sha256",
]
#: How kdbench's measured figure is taken, for the reader of a comparison (``top1`` of the run record)
MEASURED_AS = ("Measured: the record's top1, test top-1 after the last epoch (as CRD reports; no epoch is selected "
               "on the test set), mean over seeds. `reporting` says how each source took its figure (DKD and logit "
               "standardisation: the best test epoch, which reads higher than the last).")


def load_published_table() -> pd.DataFrame | None:
    """The published table with kdbench's model names, or None when it cannot be read or is empty.

    CIFAR-100 rows name the zoo's models (rows whose model is not in the zoo are dropped: nothing measured can match
    them); ImageNet rows already use timm's names.
    """
    try:
        published = load_published(None)
    except (KDBenchError, OSError, ValueError):
        return None
    if published is None or published.empty:
        return None

    def model_or_none(dataset: object, name: object) -> str | None:
        try:
            return model_name(str(dataset), str(name))
        except KDBenchError:
            return None

    published = published.copy()
    for column in ("teacher", "student"):
        published[column] = [model_or_none(dataset, name)
                             for dataset, name in zip(published["dataset"], published[column], strict=True)]
    return published.dropna(subset=["teacher", "student"]).reset_index(drop=True)


def _measured_rows(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Measured top-1 per pair and method, named as the papers name them.

    A method with one variant in a pair is named by the method (whatever parameters the pair set, as DKD's beta per
    pair); beside its default variant, another is named by its label (``crd(kd_weight=1)``, as the published table
    names the CRD+KD row). The baseline is ``ce`` and the pair's teacher ``teacher``.
    """
    rows = []
    for key, pair_rows in table.groupby(PAIR_KEY, sort=False, dropna=False):
        pair = dict(zip(PAIR_KEY, key, strict=True)) | {"budget": pair_rows["budget"].iloc[0]}
        for column in ("teacher_origin", "teacher_ckpt_sha256"):  # which teacher: kdbench's, or a checkpoint's
            pair[column] = pair_rows[column].iloc[0] if column in pair_rows else None
        teacher_top1 = pair_rows["teacher_top1"].iloc[0]
        if pd.notna(teacher_top1):
            rows.append(pair | {"method": "teacher", "measured_top1": teacher_top1, "measured_std": float("nan"),
                                "n": 1})
        finished = pair_rows[pair_rows["n"] > 0]
        variants = finished.groupby("method")["method_label"].nunique()
        for _, row in finished.iterrows():
            # a method's only variant in the pair is the method (a pair may set its parameters, as DKD's beta);
            # beside its default, another variant is named by its label, as `crd(kd_weight=1)` for CRD+KD
            alone = variants[row["method"]] == 1
            name = row["method"] if alone else row["method_label"]
            method = "ce" if row["is_baseline"] and row["method"] == baseline else name
            rows.append(pair | {"method": method, "measured_top1": row["top1_mean"],
                                "measured_std": row["top1_std"], "n": row["n"]})
    return pd.DataFrame(rows)


def published_comparison(table: pd.DataFrame, baseline: str = "ce",
                         published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measured vs published top-1 for every (pair, method) present in both (the datasets of the published tables).

    Args:
        table: a leaderboard (:func:`kdbench.report.leaderboard`).
        baseline: the baseline's label; it is compared with the papers' ``ce`` (student without distillation).
        published: the published table with zoo model names; loaded from ``kdbench.published`` when None.

    Returns:
        One row per match (columns :data:`COMPARISON_COLUMNS`); empty when nothing matches or no published
        table is available.
    """
    if published is None:
        published = load_published_table()
    if published is None or table.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    measured = _measured_rows(table[table["dataset"].isin(set(published["dataset"]))], baseline)
    if measured.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    published = published.rename(columns={"top1": "published_top1"})
    keep = [c for c in ("dataset", "teacher", "student", "method", "published_top1", "reporting", "source")
            if c in published]
    merged = measured.merge(published[keep], on=["dataset", "teacher", "student", "method"], how="inner")
    for column in ("reporting", "source", "teacher_origin", "teacher_ckpt_sha256"):
        if column not in merged:
            merged[column] = None
    merged["difference"] = merged["measured_top1"] - merged["published_top1"]
    return merged[COMPARISON_COLUMNS].reset_index(drop=True)
