"""imagefolder: an ImageNet-style folder streamed from disk through a DataLoader with worker processes."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from kdbench import distributed
from kdbench.data.augment import Normalizer
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
    cleared_with_datasets,
    data_root,
    first_line,
    register_dataset,
    train_batch_count,
)
from kdbench.data.splits import carve_splits, carved_sizes
from kdbench.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def _folder_stamps(root: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of ``train/``, ``val/`` and their class folders: adding or removing an image changes one.

    They key the in-process caches of the listing and the fingerprint, so that neither is read twice per process.
    """
    stamps = []
    for part in ("train", "val"):
        with os.scandir(root / part) as entries:
            stamps += [(entry.path, entry.stat().st_mtime_ns) for entry in entries if entry.is_dir()]
        stamps.append((str(root / part), (root / part).stat().st_mtime_ns))
    return tuple(sorted(stamps))


@cleared_with_datasets
@lru_cache(maxsize=4)
def _scan_image_folder(root: str, stamps: tuple[tuple[str, int], ...]) -> _FolderListing:
    """List ``root/train`` and ``root/val`` (``stamps`` keys the cache on the folders' modification times).

    Raises:
        DataError: no images, fewer than two classes, or a class without images in ``val/`` or in ``train/``.
    """
    del stamps
    train = _list_images(Path(root) / "train")
    classes = tuple(sorted({name for name, _ in train}))
    if not classes:
        raise DataError(f"imagefolder: no images in {Path(root) / 'train'} (expected train/<class>/<image>)")
    if len(classes) < 2:
        raise DataError(f"imagefolder: {Path(root) / 'train'} has images of one class only ({classes[0]!r}); "
                        "a classifier needs at least 2 classes")
    index = {name: label for label, name in enumerate(classes)}
    test = _list_images(Path(root) / "val")
    strangers = sorted({name for name, _ in test} - set(index))
    if strangers:
        raise DataError(f"imagefolder: class {strangers[0]!r} in {Path(root) / 'val'} has no folder in train/")
    missing = sorted(set(index) - {name for name, _ in test})
    if missing:
        raise DataError(f"imagefolder: class {missing[0]!r} has no images in {Path(root) / 'val'}"
                        + (f" (nor {len(missing) - 1} more classes)" if len(missing) > 1 else "")
                        + "; every class of train/ needs test images in val/<class>/")
    return _FolderListing(classes, tuple((path, index[name]) for name, path in train),
                          tuple((path, index[name]) for name, path in test))


@cleared_with_datasets
@lru_cache(maxsize=4)
def _fingerprint(root: str, stamps: tuple[tuple[str, int], ...]) -> str:
    """SHA-256 (16 hex digits) of the image list of ``root``: each file's path under the root, size and mtime."""
    listing = _scan_image_folder(root, stamps)
    digest = hashlib.sha256()
    for path, label in (*listing.train, *listing.test):
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


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
            raise DataError(f"imagefolder: cannot read {path}: {first_line(error)}") from None
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


class _EpochBatches:
    """A batch sampler whose batches are replaced before each pass, so that one DataLoader serves every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FolderSplits(LabelledSplits):
    """An image folder streamed from disk; uint8 crops travel to the device and are normalised there.

    Decoding, cropping and flipping run in the DataLoader's worker processes, off the training loop. Each split
    keeps one DataLoader for training passes and one for evaluation passes, with persistent workers (they start
    once, not every epoch), pinned memory and asynchronous copies when the device is a GPU, and ``prefetch``
    batches in flight per worker. Under torchrun each process loads only its share of each training batch, and only
    its own evaluation batches.

    Args:
        info: the dataset's info.
        samples: per split, (path, label) pairs in eval order.
        workers: DataLoader worker processes (0 loads in the calling process).
        device: the data device.
        prefetch: batches each worker loads ahead.
    """

    shards_train_batches = True
    shards_eval_batches = True

    def __init__(self, info: DatasetInfo, samples: Mapping[str, Sequence[tuple[str, int]]], workers: int,
                 device: torch.device, prefetch: int = 4) -> None:
        self.info = info
        self.device = device
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self._loaders: dict[tuple[str, str], tuple[torch.utils.data.DataLoader, _EpochBatches]] = {}
        self._datasets = {split: _FolderDataset(samples[split], info.image_size) for split in SPLIT_NAMES}
        self._labels = {split: torch.tensor([label for _, label in samples[split]], dtype=torch.int64, device=device)
                        for split in SPLIT_NAMES}
        self._normalize = Normalizer(info, 255.0, device)

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True) -> Iterator[Batch]:
        """See :meth:`Splits.train_batches`; one seed is drawn from ``generator`` per epoch."""
        check_batch_size(batch_size)
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        epoch_generator = torch.Generator().manual_seed(epoch_seed)
        count = len(self._datasets["train"])
        order = torch.randperm(count, generator=epoch_generator).tolist()
        seeds = torch.randint(0, 2**62, (count,), generator=epoch_generator).tolist() if augment else [-1] * count
        keys = list(zip(order, seeds, strict=True))
        batches = [keys[start:start + batch_size] for start in range(0, count, batch_size)]
        shares = [list(distributed.share(batch)) for batch in batches[:train_batch_count(count, batch_size)]]
        yield from self._stream("train", shares, "train")

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """See :meth:`Splits.eval_batches`."""
        check_split(split)
        check_batch_size(batch_size)
        count = len(self._datasets[split])
        batches = [[(position, -1) for position in range(start, min(start + batch_size, count))]
                   for start in range(0, count, batch_size)]
        yield from self._stream(split, [b for index, b in enumerate(batches) if distributed.mine(index)], "eval")

    def _stream(self, split: str, batches: list[list[tuple[int, int]]], purpose: str) -> Iterator[Batch]:
        if not batches:
            return
        key = (split, purpose)
        if key not in self._loaders:
            sampler = _EpochBatches()
            # The loader's own generator keeps its worker base seed off the global RNG (no transform uses it).
            loader = torch.utils.data.DataLoader(
                self._datasets[split], batch_sampler=sampler, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0),
                persistent_workers=self.workers > 0, prefetch_factor=self.prefetch if self.workers else None,
            )
            self._loaders[key] = loader, sampler
        loader, sampler = self._loaders[key]
        sampler.batches = batches
        for pixels, labels, positions in loader:
            pixels = pixels.to(self.device, non_blocking=True)
            yield Batch(self._normalize(pixels), labels.to(self.device, non_blocking=True),
                        positions.to(self.device, non_blocking=True))


@register_dataset("imagefolder")
class ImageFolderSource(DatasetSource):
    """An ImageNet-style folder: ``<root>/train/<class>/*`` for training (and val), ``<root>/val/<class>/*`` for test.

    Training images get RandomResizedCrop(image_size) and a flip; eval images are resized to image_size / 0.875
    and centre-cropped. The default image_size is 224; normalisation uses the ImageNet mean and std. Options:
    ``workers`` (DataLoader worker processes, default min(8, CPU count)) and ``prefetch`` (batches each worker
    loads ahead, default 4).
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {"workers": -1, "prefetch": 4}

    def describe(self, config: DataConfig) -> DatasetInfo:
        """See :meth:`DatasetSource.describe`; lists the folders but reads no image."""
        self._workers(config)
        listing = self._listing(config)
        labels = np.array([label for _, label in listing.train], dtype=np.int64)
        sizes = carved_sizes(np.bincount(labels, minlength=len(listing.classes)), len(listing.test),
                              config.val_fraction)
        return self._info(config, listing, sizes)

    def load(self, config: DataConfig) -> Splits:
        """See :meth:`DatasetSource.load`."""
        workers = self._workers(config)
        listing = self._listing(config)
        labels = np.array([label for _, label in listing.train], dtype=np.int64)
        positions = carve_splits(labels, carve_test=False, config=config)
        samples = {split: [listing.train[position] for position in positions[split]] for split in ("train", "val")}
        samples["test"] = list(listing.test)
        info = self._info(config, listing, {split: len(samples[split]) for split in SPLIT_NAMES})
        return FolderSplits(info, samples, workers, torch.device(config.device),
                            prefetch=self.options(config)["prefetch"])

    def fingerprint(self, config: DataConfig, cached: bool = True) -> str | None:
        """See :meth:`DatasetSource.fingerprint`: a hash of every image's path, size and modification time.

        Cached per process by the folders' modification times, so one plan of many runs stats the images once; an
        image rewritten in place is seen with ``cached=False``.
        """
        root = self._root(config)
        compute = _fingerprint if cached else _fingerprint.__wrapped__
        return compute(str(root.resolve()), _folder_stamps(root))

    def _workers(self, config: DataConfig) -> int:
        workers = self.options(config)["workers"]
        return min(8, os.cpu_count() or 1) if workers == -1 else workers

    def _root(self, config: DataConfig) -> Path:
        root = data_root(config, self.name, " (the folder that holds train/ and val/)")
        for part in ("train", "val"):
            if not (root / part).is_dir():
                raise DataError(f"imagefolder: {root / part} not found; pass --data-root DIR (the folder that holds "
                                "train/<class>/ and val/<class>/)")
        return root

    def _listing(self, config: DataConfig) -> _FolderListing:
        root = self._root(config)
        return _scan_image_folder(str(root.resolve()), _folder_stamps(root))

    def _info(self, config: DataConfig, listing: _FolderListing, sizes: dict[str, int]) -> DatasetInfo:
        size = config.image_size or _IMAGEFOLDER_SIZE
        return DatasetInfo(name=self.name, num_classes=len(listing.classes), in_chans=3, image_size=size,
                           native_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, crop_padding=0,
                           sizes=sizes)


@register_dataset("imagenet")
class ImageNetSource(ImageFolderSource):
    """ImageNet-1k (ILSVRC 2012) in its usual on-disk layout: ``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*``.

    The same streaming code as ``imagefolder``: the official validation images (``val/``, sorted into class
    folders) are the test split, and a validation split is carved from ``train/`` by ``val_fraction`` (stratified,
    fixed by ``split_seed``). Training: RandomResizedCrop to ``image_size`` (8-100% of the area, aspect 3/4-4/3)
    and a horizontal flip; evaluation: resize of the short side to ``image_size / 0.875`` and a centre crop. Default
    size 224; ImageNet mean and std. Options as ``imagefolder``: ``workers``, ``prefetch``.
    """
