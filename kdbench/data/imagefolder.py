"""imagefolder: an ImageNet-style folder streamed from disk through a DataLoader with worker processes."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    check_normalisation,
    check_split,
    cleared_with_datasets,
    data_root,
    first_line,
    register_dataset,
    train_batch_count,
)
from kdbench.data.device_decode import decode_crops, read_bytes
from kdbench.data.splits import carve_splits, carved_sizes
from kdbench.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGEFOLDER_SIZE = 224
_EVAL_CROP_FRACTION = 0.875  # eval: resize the short side to size / 0.875, then take the centre crop
_CROP_SCALE = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
INTERPOLATIONS = ("bilinear", "bicubic")
FINGERPRINTS = ("metadata", "content")
DECODERS = ("pil", "device")
#: ground-truth files of a flat ``val/`` folder, looked for in the data root: the Kaggle listing
#: (``ImageId,PredictionString``) and a plain ``<file name> <WordNet id>`` list
_VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")
#: the ILSVRC 2012 development kit's ground truth (1-based ILSVRC2012_IDs, one line per validation image in file
#: name order) and the ``meta.mat`` that maps those ids to WordNet ids
_DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
_DEVKIT_META = "meta.mat"


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs: the normalisation and the resampling of the crops.

    Attributes:
        mean: per-channel mean of images scaled to [0, 1].
        std: per-channel standard deviation.
        interpolation: ``bilinear`` or ``bicubic`` resampling for the crops and the evaluation resize.
        crop_fraction: evaluation resizes the short side to ``image_size / crop_fraction``, then centre-crops.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_fraction: float = _EVAL_CROP_FRACTION


@dataclass(frozen=True)
class _FolderListing:
    """An image folder as listed: class names, and (path, label) pairs of ``train/`` and ``val/``."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _list_images(folder: Path) -> list[tuple[str, str]]:
    """(class name, path) of every image file under ``folder/<class>/``, sorted (class folders may nest).

    One ``scandir`` per class folder and no ``stat`` per file (the entry types come with the listing), so that
    listing ImageNet's 1.28 M files takes seconds.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    extensions = frozenset(IMG_EXTENSIONS)
    found: list[tuple[str, str]] = []
    with os.scandir(folder) as entries:
        class_dirs = sorted(entry.name for entry in entries if entry.is_dir())
    for name in class_dirs:
        class_dir = os.path.join(folder, name)
        files, nested = [], False
        with os.scandir(class_dir) as entries:
            for entry in entries:
                file = entry.name
                dot = file.rfind(".")
                if entry.is_dir():
                    nested = True
                elif dot > 0 and file[dot:].lower() in extensions and entry.is_file():
                    files.append(file)
        if nested:  # sorted as paths (by their parts), as a recursive listing of Path objects sorts them
            paths = sorted(p for p in Path(class_dir).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            found += [(name, str(path)) for path in paths]
        else:  # one level: sorting the names sorts the paths (the common case, and the fast one)
            prefix = os.path.join(class_dir, "")
            found += [(name, prefix + file) for file in sorted(files)]
    return found


def _is_flat(folder: Path) -> bool:
    """Whether ``folder`` holds its images directly (the official validation layout) rather than class folders."""
    with os.scandir(folder) as entries:
        kinds = [entry.is_dir() for entry in entries]
    return bool(kinds) and not any(kinds)


def _ground_truth_file(root: Path) -> Path:
    """The ground-truth file of a flat ``val/`` folder in ``root`` (or in ``root/val``).

    Raises:
        DataError: none of the known files is there.
    """
    for folder in (root, root / "val"):
        for name in (*_VAL_LABEL_FILES, _DEVKIT_GROUND_TRUTH):
            if (folder / name).is_file():
                return folder / name
    known = ", ".join((*_VAL_LABEL_FILES, _DEVKIT_GROUND_TRUTH))
    raise DataError(f"imagefolder: {root / 'val'} holds images but no class folders, and no ground-truth file was "
                    f"found beside it (one of {known}, in {root}); sort val/ into val/<class>/ or add one")


def _devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id of the 1,000 leaf classes, from the development kit's ``meta.mat``."""
    import scipy.io  # only for the development kit's ground truth

    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"imagefolder: cannot read {meta}: {first_line(error)}") from None
    return {int(row["ILSVRC2012_ID"]): str(row["WNID"]) for row in synsets if int(row["num_children"]) == 0}


def _flat_val_labels(root: Path) -> dict[str, str]:
    """File name -> class (WordNet id) of every image of a flat ``val/``, read from its ground-truth file.

    Raises:
        DataError: a ground-truth file that is missing or cannot be read.
    """
    truth = _ground_truth_file(root)
    lines = [line.strip() for line in truth.read_text(encoding="utf-8").splitlines() if line.strip()]
    if truth.name == _DEVKIT_GROUND_TRUTH:
        meta = next((p for p in (truth.parent / _DEVKIT_META, root / _DEVKIT_META) if p.is_file()), None)
        if meta is None:
            raise DataError(f"imagefolder: {truth} numbers the classes by ILSVRC2012_ID; put the development kit's "
                            f"{_DEVKIT_META} beside it to map them to WordNet ids")
        wnids = _devkit_wnids(meta)
        names = sorted(entry.name for entry in os.scandir(root / "val") if entry.is_file())
        if len(names) != len(lines):
            raise DataError(f"imagefolder: {truth} has {len(lines)} labels for {len(names)} images in "
                            f"{root / 'val'}")
        try:
            return {name: wnids[int(line)] for name, line in zip(names, lines, strict=True)}
        except (KeyError, ValueError):
            raise DataError(f"imagefolder: {truth} holds a label that is not an ILSVRC2012_ID of {meta}") from None
    labels = {}
    for line in lines[1:] if truth.suffix == ".csv" else lines:
        name, _, rest = line.replace(",", " ", 1).partition(" ")
        if not rest.split():
            raise DataError(f"imagefolder: cannot read the line {line[:60]!r} of {truth} (expected: file class)")
        stem = Path(name).stem
        labels[stem] = rest.split()[0]
    return labels


def _list_flat_val(root: Path) -> list[tuple[str, str]]:
    """(class name, path) of every image of a flat ``val/``, by its ground-truth file, sorted by path."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    labels = _flat_val_labels(root)
    found = []
    for path in sorted((root / "val").iterdir()):
        if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
            label = labels.get(path.name, labels.get(path.stem))
            if label is None:
                raise DataError(f"imagefolder: {path.name} in {root / 'val'} has no label in its ground-truth file")
            found.append((label, str(path)))
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
    flat = _is_flat(root / "val")
    for name in (*_VAL_LABEL_FILES, _DEVKIT_GROUND_TRUTH, _DEVKIT_META) if flat else ():
        for folder in (root, root / "val"):
            if (folder / name).is_file():
                stamps.append((str(folder / name), (folder / name).stat().st_mtime_ns))
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
    val = Path(root) / "val"
    test = _list_flat_val(Path(root)) if _is_flat(val) else _list_images(val)
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


def _subset(listing: _FolderListing, count: int) -> _FolderListing:
    """``count`` classes of ``listing``, evenly spaced over its sorted class list, relabelled 0..count-1.

    Raises:
        DataError: ``count`` exceeds the folder's classes or is below 2.
    """
    total = len(listing.classes)
    if not 2 <= count <= total:
        raise DataError(f"imagefolder: the classes option must be between 2 and the folder's {total} classes "
                        f"(got {count})")
    kept = [(position * total) // count for position in range(count)]
    relabel = {old: new for new, old in enumerate(kept)}
    return _FolderListing(tuple(listing.classes[old] for old in kept),
                          tuple((path, relabel[label]) for path, label in listing.train if label in relabel),
                          tuple((path, relabel[label]) for path, label in listing.test if label in relabel))


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@cleared_with_datasets
@lru_cache(maxsize=8)
def _fingerprint(root: str, stamps: tuple[tuple[str, int], ...], classes: int = 0, mode: str = "metadata") -> str:
    """SHA-256 (16 hex digits) of the image list of ``root`` (``classes``: the subset the runs read).

    ``metadata`` hashes each file's path under the root, label, size and modification time (fast: one ``stat`` per
    file); ``content`` hashes each file's bytes instead of its size and time, so an image rewritten in place with the
    same name, size and modification time is seen too (it reads the whole data set). A flat validation folder's
    ground-truth file is hashed by content in both modes.
    """
    listing = _scan_image_folder(root, stamps)
    if classes:
        listing = _subset(listing, classes)
    digest = hashlib.sha256()
    if mode == "content":
        digest.update(b"content\n")
    prefix = len(os.path.join(root, ""))  # the listing's paths are joined onto the resolved root: no relpath needed
    lines = []
    for path, label in (*listing.train, *listing.test):
        if mode == "content":
            lines.append(f"{path[prefix:]}\t{label}\t{_file_sha256(path)}\n")
        else:
            stat = os.stat(path)
            lines.append(f"{path[prefix:]}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
        if len(lines) >= 4096:
            digest.update("".join(lines).encode())
            lines.clear()
    digest.update("".join(lines).encode())
    for name, _ in stamps:
        if Path(name).name in (*_VAL_LABEL_FILES, _DEVKIT_GROUND_TRUTH, _DEVKIT_META):
            digest.update(f"{os.path.relpath(name, root)}\t{_file_sha256(name)}\n".encode())
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
    workers load it, and no process's global RNG is used. With ``raw`` the item is the file's bytes (decoded, cropped
    and flipped later on the data device, :mod:`kdbench.data.device_decode`), else the PIL-decoded crop.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: int, preprocessing: Preprocessing,
                 raw: bool = False) -> None:
        self.samples = samples
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.raw = raw

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int, int]:
        import torchvision.transforms.functional as TF
        from torchvision.datasets.folder import pil_loader
        from torchvision.transforms import InterpolationMode

        position, seed = key
        path, label = self.samples[position]
        if self.raw:
            return read_bytes(path), label, position, seed
        try:
            image = pil_loader(path)
        except OSError as error:
            raise DataError(f"imagefolder: cannot read {path}: {first_line(error)}") from None
        size = self.image_size
        mode = InterpolationMode(self.preprocessing.interpolation)
        if seed >= 0:
            rng = random.Random(seed)
            top, left, height, width = _resized_crop_box(image.width, image.height, rng)
            image = TF.resized_crop(image, top, left, height, width, [size, size], interpolation=mode)
            if rng.random() < 0.5:
                image = TF.hflip(image)
        else:
            image = TF.center_crop(TF.resize(image, int(size / self.preprocessing.crop_fraction), interpolation=mode),
                                   [size, size])
        return TF.pil_to_tensor(image), label, position, seed


def _collate_raw(items: list[tuple[Tensor, int, int, int]]) -> tuple[list[Tensor], Tensor, Tensor, list[int]]:
    """A batch of undecoded files: their bytes as a list (sizes differ), labels, positions and seeds."""
    raw, labels, positions, seeds = zip(*items, strict=True)
    return list(raw), torch.tensor(labels), torch.tensor(positions), list(seeds)


class _EpochBatches:
    """A batch sampler whose batches are replaced before each pass, so that one DataLoader serves every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _one_line_errors(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's items; a :class:`DataError` of a worker process keeps its own line, not the worker's traceback."""
    try:
        yield from loader
    except DataError as error:  # from a worker, its message is "Caught DataError in ...", a traceback, the line
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise DataError(lines[-1].removeprefix(f"{DataError.__module__}.DataError: ") if lines else str(error)) \
            from None


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
                 device: torch.device, prefetch: int = 4, preprocessing: Preprocessing | None = None,
                 decode: str = "pil") -> None:
        self.info = info
        self.device = device
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.preprocessing = preprocessing or Preprocessing()
        self.decode = decode
        self._loaders: dict[tuple[str, str], tuple[torch.utils.data.DataLoader, _EpochBatches]] = {}
        self._datasets = {split: _FolderDataset(samples[split], info.image_size, self.preprocessing,
                                                raw=decode == "device") for split in SPLIT_NAMES}
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
                collate_fn=_collate_raw if self.decode == "device" else None,
            )
            self._loaders[key] = loader, sampler
        loader, sampler = self._loaders[key]
        sampler.batches = batches
        for items in _one_line_errors(loader):
            if self.decode == "device":
                raw, labels, positions, seeds = items
                paths = [self._datasets[split].samples[int(p)][0] for p in positions]
                pixels = decode_crops(raw, seeds, paths, self.info.image_size, self.preprocessing, self.device,
                                      _resized_crop_box)
            else:
                pixels, labels, positions, _ = items
                pixels = pixels.to(self.device, non_blocking=True)
            yield Batch(self._normalize(pixels), labels.to(self.device, non_blocking=True),
                        positions.to(self.device, non_blocking=True))


@register_dataset("imagefolder")
class ImageFolderSource(DatasetSource):
    """An ImageNet-style folder: ``<root>/train/<class>/*`` for training (and val), ``<root>/val/<class>/*`` for test.

    ``val/`` may also be flat, as the official ILSVRC 2012 validation set is distributed: the images directly in
    ``val/`` and their classes in a ground-truth file in the root (``LOC_val_solution.csv``, ``val_labels.txt`` with
    ``<file> <class>`` lines, or the development kit's ``ILSVRC2012_validation_ground_truth.txt`` with its
    ``meta.mat``). Classes are the sorted folder names of ``train/`` (ImageNet's sorted WordNet ids: the class order
    of torchvision's and timm's pretrained models).

    Training images get RandomResizedCrop(image_size) and a flip; eval images are resized to image_size /
    crop_fraction and centre-cropped. The default image_size is 224. Options: ``workers`` (DataLoader worker
    processes, default min(8, CPU count)), ``prefetch`` (batches each worker loads ahead, default 4), ``classes``
    (keep this many classes, evenly spaced over the sorted list; 0: all), ``fingerprint`` (``metadata``: paths,
    sizes and modification times, the default; ``content``: every file's bytes), ``decode`` (``pil`` in the loader's
    workers, or ``device``: the workers read the files and the JPEGs are decoded, cropped and flipped on the data
    device), and the preprocessing: ``mean``, ``std`` (three numbers each; default ImageNet's), ``interpolation``
    (``bilinear`` or ``bicubic``) and ``crop_fraction`` (default 0.875).
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {
        "workers": -1, "prefetch": 4, "classes": 0, "fingerprint": "metadata", "decode": "pil",
        "mean": None, "std": None, "interpolation": "bilinear", "crop_fraction": _EVAL_CROP_FRACTION,
    }

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
        options = self.options(config)
        return FolderSplits(info, samples, workers, torch.device(config.device), prefetch=options["prefetch"],
                            preprocessing=self.preprocessing(config), decode=options["decode"])

    def options(self, config: DataConfig) -> dict[str, Any]:
        """See :meth:`DatasetSource.options`; also checks the values of the text and preprocessing options."""
        merged = super().options(config)
        choices = {"fingerprint": FINGERPRINTS, "decode": DECODERS, "interpolation": INTERPOLATIONS}
        for key, allowed in choices.items():
            if merged[key] not in allowed:
                raise ConfigError(f"dataset option {key!r} must be one of {', '.join(allowed)}, got {merged[key]!r}")
        fraction = merged["crop_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ConfigError(f"dataset option 'crop_fraction' must be a number in (0, 1], got {fraction!r}")
        check_normalisation(merged)
        return merged

    def preprocessing(self, config: DataConfig) -> Preprocessing:
        """The normalisation and resampling the options set (ImageNet's mean and std, bilinear, 0.875 by default)."""
        options = self.options(config)
        return Preprocessing(mean=tuple(float(v) for v in options["mean"] or IMAGENET_MEAN),
                             std=tuple(float(v) for v in options["std"] or IMAGENET_STD),
                             interpolation=options["interpolation"], crop_fraction=float(options["crop_fraction"]))

    def class_names(self, config: DataConfig) -> tuple[str, ...]:
        """The class names in label order (the sorted folder names of ``train/``, after the ``classes`` option)."""
        return self._listing(config).classes

    def fingerprint(self, config: DataConfig, cached: bool = True) -> str | None:
        """See :meth:`DatasetSource.fingerprint`: a hash of every image's path and size and modification time.

        With the ``fingerprint=content`` option, of every image's bytes instead (an image rewritten in place with the
        same size and time is then seen too, at the price of reading every file). Cached per process by the
        folders' modification times, so one plan of many runs stats the images once; ``cached=False`` looks again.
        """
        root = self._root(config)
        options = self.options(config)
        compute = _fingerprint if cached else _fingerprint.__wrapped__
        if options["classes"] == 0 and options["fingerprint"] == "metadata":
            return compute(str(root.resolve()), _folder_stamps(root))  # the key runs planned before had
        return compute(str(root.resolve()), _folder_stamps(root), options["classes"], options["fingerprint"])

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
        listing = _scan_image_folder(str(root.resolve()), _folder_stamps(root))
        classes = self.options(config)["classes"]
        return _subset(listing, classes) if classes else listing

    def _info(self, config: DataConfig, listing: _FolderListing, sizes: dict[str, int]) -> DatasetInfo:
        size = config.image_size or _IMAGEFOLDER_SIZE
        preprocessing = self.preprocessing(config)
        return DatasetInfo(name=self.name, num_classes=len(listing.classes), in_chans=3, image_size=size,
                           native_size=size, mean=preprocessing.mean, std=preprocessing.std, flip=True,
                           crop_padding=0, sizes=sizes, class_names=listing.classes)


@register_dataset("imagenet")
class ImageNetSource(ImageFolderSource):
    """ImageNet-1k (ILSVRC 2012) in its usual on-disk layout: ``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*``.

    The same streaming code as ``imagefolder``: the official validation images (``val/``, sorted into class
    folders) are the test split, and a validation split is carved from ``train/`` by ``val_fraction`` (stratified,
    fixed by ``split_seed``). Training: RandomResizedCrop to ``image_size`` (8-100% of the area, aspect 3/4-4/3)
    and a horizontal flip; evaluation: resize of the short side to ``image_size / 0.875`` and a centre crop. Default
    size 224; ImageNet mean and std. Options as ``imagefolder``, but for ``classes``: ``imagenet`` is ImageNet-1k,
    whose published figures the reports compare against, so a class subset is read as ``imagefolder`` (``--dataset
    imagefolder --data-option classes=100``). The official validation layout (flat ``val/`` plus the ground-truth
    file) is read as well as ``val/<wnid>/``.
    """

    def options(self, config: DataConfig) -> dict[str, Any]:
        """See :meth:`ImageFolderSource.options`; refuses ``classes``."""
        merged = super().options(config)
        if merged["classes"]:
            raise ConfigError("dataset 'imagenet' is ImageNet-1k with all its classes (its published figures are "
                              "for those); for a class subset use --dataset imagefolder --data-option classes=N")
        return merged
