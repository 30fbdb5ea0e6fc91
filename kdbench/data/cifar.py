"""CIFAR-10 / CIFAR-100: torchvision's python format under the data root, read directly (downloaded on request)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kdbench.data.base import (
    DataConfig,
    check_normalisation,
    cleared_with_datasets,
    data_root,
    first_line,
    register_dataset,
)
from kdbench.data.tensors import Arrays, ImageFormat, TensorSource
from kdbench.errors import DataError


@cleared_with_datasets
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
            raise DataError(f"cannot read CIFAR file {path}: {first_line(error)}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(targets) != len(data):
            raise DataError(f"CIFAR file {path} is malformed: data {data.shape}, {len(targets)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return np.concatenate(images), np.concatenate(labels)


class _CifarSource(TensorSource):
    """CIFAR in torchvision's on-disk python format (pickled dicts of channel-major uint8 rows).

    Options: ``mean`` and ``std`` (three numbers each, of pixels scaled to [0, 1]) replace the normalisation
    constants; by default the training set's per-channel statistics. The CIFAR-100 KD code bases (RepDistiller,
    mdistiller) normalise with constants of their own, :data:`CRD_CIFAR100_MEAN` and :data:`CRD_CIFAR100_STD`,
    which the standard protocol's sweep spec sets through these options.
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {"mean": None, "std": None}

    title: ClassVar[str]
    folder_name: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[bytes]
    num_classes: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def options(self, config: DataConfig) -> dict[str, Any]:
        """See :meth:`DatasetSource.options`; ``mean`` and ``std`` are three finite numbers (``std`` positive)."""
        merged = super().options(config)
        check_normalisation(merged)
        return merged

    def image_format(self, config: DataConfig) -> ImageFormat:
        """See :meth:`TensorSource.image_format`."""
        options = self.options(config)
        mean = tuple(float(v) for v in options["mean"]) if options["mean"] is not None else self.mean
        std = tuple(float(v) for v in options["std"]) if options["std"] is not None else self.std
        return ImageFormat(num_classes=self.num_classes, in_chans=3, native_size=32, mean=mean, std=std,
                            flip=True, crop_padding=4, pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`TensorSource.class_counts`."""
        arrays = self.read(config)
        return np.bincount(arrays.labels, minlength=self.num_classes), len(arrays.test_labels)

    def read(self, config: DataConfig) -> Arrays:
        """See :meth:`TensorSource.read`."""
        folder = self._folder(config)
        train = self._read(folder, self.train_files)
        test = self._read(folder, self.test_files)
        for labels in (train[1], test[1]):
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(f"{self.name}: labels in {folder} fall outside 0..{self.num_classes - 1}")
        return Arrays(train[0], train[1], test[0], test[1])

    def _read(self, folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        stamps = tuple((stat.st_mtime_ns, stat.st_size) for stat in ((folder / name).stat() for name in files))
        return _read_cifar_files(str(folder.resolve()), files, self.label_key, stamps)

    def _folder(self, config: DataConfig) -> Path:
        """The CIFAR folder under the data root, downloaded first when asked and missing."""
        root = data_root(config, self.name, f" (the folder that holds {self.folder_name}/), or add --download")
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
            raise DataError(f"{self.name}: cannot download {self.title} into {root}: {first_line(error)}") from None


#: The CIFAR-100 normalisation of RepDistiller's ``dataset/cifar100.py`` and mdistiller's
#: ``mdistiller/dataset/cifar100.py`` (the same constants in both): per-channel mean and std of pixels in [0, 1]
CRD_CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CRD_CIFAR100_STD = (0.2675, 0.2565, 0.2761)


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
