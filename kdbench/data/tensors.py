"""Tensor datasets: held on the device as uint8, augmented and normalised there in whole batches."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdbench.data.augment import Normalizer, random_crop_flip
from kdbench.data.base import (
    SPLIT_NAMES,
    Batch,
    DataConfig,
    DatasetInfo,
    DatasetSource,
    LabelledSplits,
    Splits,
    check_batch_size,
    check_split,
    train_batch_count,
)
from kdbench.data.splits import carve_splits, carved_sizes


class TensorSplits(LabelledSplits):
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
        self._normalize = Normalizer(info, pixel_max, self.device)

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[Batch]:
        """See :meth:`Splits.train_batches`."""
        check_batch_size(batch_size)
        count = len(self._labels["train"])
        order = torch.randperm(count, generator=generator, device=generator.device).to(self.device)
        for number in range(train_batch_count(count, batch_size)):
            positions = order[number * batch_size:(number + 1) * batch_size]
            pixels = self._images["train"][positions]
            if augment:
                pixels = random_crop_flip(pixels, self.info.crop_padding, self.info.flip, generator)
            yield Batch(self._normalize(pixels), self._labels["train"][positions], positions)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """See :meth:`Splits.eval_batches`."""
        check_split(split)
        check_batch_size(batch_size)
        images, labels = self._images[split], self._labels[split]
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            positions = torch.arange(start, stop, device=self.device)
            yield Batch(self._normalize(images[start:stop]), labels[start:stop], positions)


@dataclass(frozen=True)
class ImageFormat:
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
class Arrays:
    """A tensor dataset as read: the training pool and, where the dataset has one, the official test set."""

    images: np.ndarray  # uint8 NCHW
    labels: np.ndarray  # int64
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None


class TensorSource(DatasetSource):
    """A dataset small enough to be held as tensors on the training device."""

    @abstractmethod
    def image_format(self, config: DataConfig) -> ImageFormat:
        """Classes, channels, size, normalisation and augmentation of this dataset."""

    @abstractmethod
    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """Per-class counts of the training pool and the official test size (None: test is carved)."""

    @abstractmethod
    def read(self, config: DataConfig) -> Arrays:
        """The images and labels, as numpy arrays."""

    def describe(self, config: DataConfig) -> DatasetInfo:
        """See :meth:`DatasetSource.describe`."""
        self.options(config)
        counts, test_size = self.class_counts(config)
        return self._info(config, carved_sizes(counts, test_size, config.val_fraction))

    def load(self, config: DataConfig) -> Splits:
        """See :meth:`DatasetSource.load`."""
        self.options(config)
        arrays = self.read(config)
        official_test = arrays.test_images is not None
        positions = carve_splits(arrays.labels, carve_test=not official_test, config=config)
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
