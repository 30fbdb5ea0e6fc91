"""Split carving: stratified hold-outs seeded by ``split_seed`` only, identical in every process.

Each image's place in the carving comes from an integer hash of (``split_seed``, stage, index), so the split is the
same in every process, call and library version; no random number generator is involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kdbench.data.base import DataConfig

TEST_FRACTION = 0.2  # carved for test where a dataset has no official test split

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_TEST_STAGE = 1
_VAL_STAGE = 2


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a fixed, well-spread integer hash."""
    z = values.astype(np.uint64) + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _placement_keys(count: int, seed: int, stage: int) -> np.ndarray:
    """One pseudo-random uint64 per index, a pure function of (seed, stage, index)."""
    base = _mix64(_mix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(stage))
    return _mix64(np.arange(count, dtype=np.uint64) ^ base)


def holdout_counts(class_counts: Sequence[int] | np.ndarray, fraction: float) -> np.ndarray:
    """How many images of each class a stratified hold-out of ``fraction`` takes.

    Each class gets ``floor(fraction * count)``; the classes with the largest remainders (ties: lower class first)
    get one more until the total is ``round(fraction * sum(counts))`` (halves round up).

    Args:
        class_counts: number of images per class.
        fraction: share to hold out, in [0, 1).

    Returns:
        int64 array of per-class hold-out counts.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    quotas = fraction * counts.astype(np.float64)
    held = np.floor(quotas).astype(np.int64)
    target = int(math.floor(fraction * int(counts.sum()) + 0.5))
    deficit = max(0, min(target - int(held.sum()), len(counts)))
    if deficit:
        order = np.lexsort((np.arange(len(counts)), -(quotas - held)))  # largest remainder first, then class
        held[order[:deficit]] += 1
    return np.minimum(held, counts)


def carve_holdout(labels: np.ndarray, fraction: float, seed: int, stage: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into a kept and a stratified held-out part.

    Within each class, images are ordered by a hash of (``seed``, ``stage``, position) and the first
    :func:`holdout_counts` of them are held out. No random number generator is involved.

    Args:
        labels: int class labels.
        fraction: share to hold out, in [0, 1).
        seed: the split seed.
        stage: distinguishes independent carvings with the same seed (test, then val).

    Returns:
        ``(kept, held)``: sorted int64 position arrays, disjoint, together covering all positions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or fraction == 0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, dtype=np.int64)
    counts = np.bincount(labels)
    per_class = holdout_counts(counts, fraction)
    keys = _placement_keys(len(labels), seed, stage)
    order = np.lexsort((keys, labels))  # grouped by class, hash order within a class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    held = np.concatenate([order[start:start + take] for start, take in zip(starts, per_class, strict=True)])
    is_held = np.zeros(len(labels), dtype=bool)
    is_held[held] = True
    return np.flatnonzero(~is_held).astype(np.int64), np.flatnonzero(is_held).astype(np.int64)


def carve_splits(pool_labels: np.ndarray, carve_test: bool, config: DataConfig) -> dict[str, np.ndarray]:
    """Positions into the training pool for "train" and "val" (and "test" when ``carve_test``)."""
    positions: dict[str, np.ndarray] = {}
    pool = np.arange(len(pool_labels), dtype=np.int64)
    if carve_test:
        pool, positions["test"] = carve_holdout(pool_labels, TEST_FRACTION, config.split_seed, _TEST_STAGE)
    kept, held = carve_holdout(pool_labels[pool], config.val_fraction, config.split_seed, _VAL_STAGE)
    positions["train"], positions["val"] = pool[kept], pool[held]
    return positions


def carved_sizes(class_counts: np.ndarray, official_test_size: int | None, val_fraction: float) -> dict[str, int]:
    """Split sizes :func:`carve_splits` gives for these per-class counts, without the data."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if official_test_size is None:
        test_counts = holdout_counts(counts, TEST_FRACTION)
        counts = counts - test_counts
        test_size = int(test_counts.sum())
    else:
        test_size = official_test_size
    val_size = int(holdout_counts(counts, val_fraction).sum()) if val_fraction else 0
    return {"train": int(counts.sum()) - val_size, "val": val_size, "test": test_size}
