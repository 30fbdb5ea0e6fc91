"""The dataset contract: configs, infos, batches, the :class:`Splits` and :class:`DatasetSource` bases, the registry.

Also the process-wide cache behind :func:`load_dataset` and the small checks every source shares.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from kdbench import distributed
from kdbench.errors import ConfigError, DataError
from kdbench.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

DATA_ROOT_ENV = "KDBENCH_DATA"
SPLIT_NAMES = ("train", "val", "test")


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
        return hash(config_key(self, resolve_root=False))


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
        class_names: the class names in label order, where the data names its classes (an image folder's class
            folders: ImageNet's WordNet ids); ``None`` otherwise.
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
    class_names: tuple[str, ...] | None = None


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
    """A loaded dataset: its info and iterators over its train, val and test splits.

    Attributes:
        info: the dataset's description.
        shards_train_batches: under torchrun, ``train_batches`` yields only this process's share of each batch
            (a loader that should not decode the others' images); otherwise the training loop takes the share.
        shards_eval_batches: under torchrun, ``eval_batches`` yields only this process's batches (those
            :func:`kdbench.distributed.mine` accepts, in order); otherwise evaluation skips the others' batches.
    """

    info: DatasetInfo
    shards_train_batches: bool = False
    shards_eval_batches: bool = False

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


class LabelledSplits(Splits):
    """Splits that hold every split's labels as a tensor (``_labels``): batch counts and labels follow from them."""

    _labels: dict[str, Tensor]

    def num_batches(self, split: str, batch_size: int) -> int:
        """See :meth:`Splits.num_batches`."""
        check_split(split)
        check_batch_size(batch_size)
        count = len(self._labels[split])
        return train_batch_count(count, batch_size) if split == "train" else eval_batch_count(count, batch_size)

    def labels(self, split: str) -> Tensor:
        """See :meth:`Splits.labels`."""
        check_split(split)
        return self._labels[split]


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

    def fingerprint(self, config: DataConfig, cached: bool = True) -> str | None:
        """A short hash of the dataset's files that changes when they do; ``None`` for a dataset fixed by its name.

        It enters the run id (``RunSpec.data_fingerprint``), so other data under the same name is another run.
        ``cached=False`` looks at every file again (the engine's check before training), where a source may
        otherwise reuse what it computed earlier in the process.
        """
        return None

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
    """The :class:`DatasetInfo` of ``config.name`` under ``config`` (cheap for the fixed datasets).

    Raises:
        DataError: the data under ``config`` cannot make a classifier (see :func:`check_trainable`).
    """
    info = DATASETS.get(config.name).describe(config)
    check_trainable(info, config.val_fraction)
    return info


def check_trainable(info: DatasetInfo, val_fraction: float) -> None:
    """The rules every dataset meets before a run trains on it, whatever its source; one line for the first broken.

    At least 2 classes; a training split of at least 2 images (one batch that can train); a test split that is not
    empty; and a validation split that is not empty when ``val_fraction`` asks for one.

    Raises:
        DataError: the split sizes of ``info`` cannot make a classifier.
    """
    sizes, classes = info.sizes, info.num_classes
    if classes < 2:
        raise DataError(f"{info.name}: {classes} class only; a classifier needs at least 2 classes")
    if sizes["train"] < 2:
        held = f" after a val fraction {val_fraction:g} held out {sizes['val']}" if val_fraction else ""
        raise DataError(f"{info.name}: {sizes['train']} training image{'s' * (sizes['train'] != 1)} left{held}; "
                        "nothing to train on (a batch needs at least 2)")
    if sizes["test"] == 0:
        raise DataError(f"{info.name}: no test images to measure a run on ({sizes['train'] + sizes['val']} images "
                        "in all); give it more images")
    if val_fraction > 0 and sizes["val"] == 0:
        raise DataError(f"{info.name}: a val fraction {val_fraction:g} holds out no image of its {sizes['train']} "
                        "training images; raise it, or pass --val-fraction 0 for no validation split")


def dataset_fingerprint(config: DataConfig, cached: bool = True) -> str | None:
    """The fingerprint of ``config.name``'s files under ``config`` (see :meth:`DatasetSource.fingerprint`)."""
    return DATASETS.get(config.name).fingerprint(config, cached=cached)


_LOADED: dict[tuple, Splits] = {}
_FILE_CACHES: list[Callable[[], None]] = []


def load_dataset(config: DataConfig) -> Splits:
    """Load ``config.name`` once per process and configuration; later calls return the same :class:`Splits`."""
    key = config_key(config)
    if key not in _LOADED:
        _LOADED[key] = DATASETS.get(config.name).load(config)
    return _LOADED[key]


def clear_dataset_cache() -> None:
    """Forget the datasets :func:`load_dataset` holds (frees their memory once nothing else refers to them)."""
    _LOADED.clear()
    for clear in _FILE_CACHES:
        clear()


def cleared_with_datasets(function: F) -> F:
    """Decorator for an ``lru_cache``-d file reader: :func:`clear_dataset_cache` also clears its cache."""
    _FILE_CACHES.append(function.cache_clear)  # type: ignore[attr-defined]
    return function


def config_key(config: DataConfig, resolve_root: bool = True) -> tuple:
    """The fields of ``config`` as a hashable tuple; with ``resolve_root``, the root ``$KDBENCH_DATA`` gives."""
    root = (config.root or os.environ.get(DATA_ROOT_ENV) or None) if resolve_root else config.root
    options = tuple(sorted((key, repr(value)) for key, value in config.options.items()))
    return (config.name, root, config.download, config.val_fraction, config.split_seed, config.image_size,
            str(config.device), options)


def check_split(split: str) -> None:
    """Raise a :class:`ConfigError` unless ``split`` is one of :data:`SPLIT_NAMES`."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")


def check_normalisation(options: Mapping[str, Any]) -> None:
    """Check the ``mean`` and ``std`` dataset options: ``None`` or three finite numbers each, ``std`` positive.

    Raises:
        ConfigError: the first option that is neither.
    """
    for key in ("mean", "std"):
        value = options.get(key)
        if value is not None and not (isinstance(value, list | tuple) and len(value) == 3 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise ConfigError(f"dataset option {key!r} must be a list of three numbers, got {value!r}")
        if key == "std" and value is not None and min(value) <= 0:
            raise ConfigError(f"dataset option 'std' must be positive, got {value!r}")


def check_batch_size(batch_size: int) -> None:
    """Raise a :class:`ConfigError` unless ``batch_size`` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def train_batch_count(n: int, batch_size: int) -> int:
    """Batches in a training epoch: a last batch of a single image is dropped (BatchNorm cannot train on one).

    Under torchrun (in a collective block) a last batch with fewer images than processes is dropped too: every
    process must get a share.
    """
    smallest = max(2, distributed.world().size if distributed.enabled() else 1)
    return n // batch_size + (1 if n % batch_size >= smallest else 0)


def eval_batch_count(n: int, batch_size: int) -> int:
    """Batches in an evaluation pass: every image, the last batch possibly short."""
    return -(-n // batch_size)


def data_root(config: DataConfig, dataset: str, hint: str) -> Path:
    """The data root from the config or ``$KDBENCH_DATA``; a one-line :class:`DataError` when neither is set."""
    root = config.root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DataError(f"{dataset}: no data folder given (looked in --data-root and ${DATA_ROOT_ENV}); "
                        f"pass --data-root DIR{hint}")
    return Path(root).expanduser()


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
