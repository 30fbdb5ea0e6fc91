"""Trainer parity outside the training step: augmentation, normalisation, evaluation and the reported figure.

The CIFAR-100 KD code bases (RepDistiller, commit b84f547: ``dataset/cifar100.py``, ``train_student.py``,
``helper/loops.py``; mdistiller, commit a08d46f: ``mdistiller/dataset/cifar100.py``, ``mdistiller/engine``) read
torchvision's CIFAR100 dataset class and transform each image on the CPU: ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` for training, ``ToTensor()`` and the same
``Normalize`` for the test set. kdbench reads the same files itself and crops, flips and normalises whole batches on
the training device. These tests give both the same files and the same random choices (each image's crop offset and
flip) and compare the tensors the networks see, using torchvision's own dataset class and transform objects; they
compare the accuracies each code base reports from the same logits.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torchvision = pytest.importorskip("torchvision")
from torchvision import datasets, transforms  # noqa: E402

from kdbench.data import DataConfig, clear_dataset_cache, load_dataset, random_crop_flip  # noqa: E402
from kdbench.data.cifar import CRD_CIFAR100_MEAN, CRD_CIFAR100_STD, Cifar100Source  # noqa: E402
from kdbench.errors import ConfigError  # noqa: E402
from kdbench.training.evaluation import Predictions, classification_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The normalisation both code bases write in their CIFAR-100 transforms (the same literals in each repository).
AUTHORS_MEAN = (0.5071, 0.4867, 0.4408)
AUTHORS_STD = (0.2675, 0.2565, 0.2761)
AUTHORS_OPTIONS = {"mean": list(AUTHORS_MEAN), "std": list(AUTHORS_STD)}
# ToTensor divides by 255 and Normalize subtracts and divides in float32; kdbench multiplies by 1 / (255 std) and
# subtracts mean / std (both rounded to float32 once): the two orders of the same arithmetic differ by float rounding.
FLOAT_ROUNDING = 2e-6
# Both compute accuracies in float32 (kdbench: the mean of the hits; the authors: per-batch percentages, averaged)
FLOAT32_PERCENT = 1e-4


class _Py2Str(bytes):
    """A key pickled as Python 2 wrote CIFAR's files: bytes when read with ``encoding="bytes"``, str with latin1."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can take one more type
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: _Py2Str) -> None:
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2_str


def _write(path: Path, entry: dict) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump({_Py2Str(key): value for key, value in entry.items()})
    path.write_bytes(buffer.getvalue())


def write_cifar100(root: Path, train: int = 64, test: int = 24, seed: int = 0) -> None:
    """A small CIFAR-100 in the original files' format, which kdbench's reader and torchvision's class both read."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", train), ("test", test)):
        _write(folder / name, {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                               b"fine_labels": rng.integers(0, 100, count).tolist(),
                               b"coarse_labels": [0] * count})
    _write(folder / "meta", {b"fine_label_names": [f"class{k}" for k in range(100)]})


def authors_dataset(root: Path, train: bool, monkeypatch: pytest.MonkeyPatch) -> datasets.CIFAR100:
    """torchvision's CIFAR100 over the small files (its checksums are those of the real files: not checked here)."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    return datasets.CIFAR100(root=str(root), train=train, download=False)


def authors_train_transform(top: int, left: int, flip: bool, monkeypatch: pytest.MonkeyPatch) -> transforms.Compose:
    """The authors' training transform with its random choices fixed: crop offset ``(top, left)``, ``flip``."""
    monkeypatch.setattr(transforms.RandomCrop, "get_params", staticmethod(lambda image, size: (top, left, *size)))
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(p=1.0 if flip else 0.0),  # torch.rand(1) < 1 always, < 0 never
        transforms.ToTensor(),
        transforms.Normalize(AUTHORS_MEAN, AUTHORS_STD),
    ])


def authors_test_transform() -> transforms.Compose:
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(AUTHORS_MEAN, AUTHORS_STD)])


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    write_cifar100(tmp_path)
    yield tmp_path
    clear_dataset_cache()


def _splits(root: Path, options: dict | None = None):
    return load_dataset(DataConfig("cifar100", root=str(root), val_fraction=0.0,
                                   options=AUTHORS_OPTIONS if options is None else options))


# ---------------------------------------------------------------------------------------------- normalisation

def test_the_authors_normalisation_constants_are_kdbenchs_crd_constants():
    assert CRD_CIFAR100_MEAN == AUTHORS_MEAN
    assert CRD_CIFAR100_STD == AUTHORS_STD
    # kdbench's default is the training set's own statistics: close to the authors' literals, not equal to them
    assert Cifar100Source.mean != AUTHORS_MEAN and Cifar100Source.std != AUTHORS_STD
    assert max(abs(a - b) for a, b in zip(Cifar100Source.mean + Cifar100Source.std,
                                          AUTHORS_MEAN + AUTHORS_STD, strict=True)) < 5e-4


def test_the_cifar100_protocol_spec_normalises_as_the_authors():
    spec = yaml.safe_load((ROOT / "configs" / "cifar100_crd.yaml").read_text())
    assert spec["dataset"] == "cifar100"
    assert tuple(spec["data_options"]["mean"]) == AUTHORS_MEAN
    assert tuple(spec["data_options"]["std"]) == AUTHORS_STD
    assert spec["val_fraction"] == 0  # all 50,000 training images, as the authors train


def test_the_normalisation_options_reach_the_dataset_info(cifar_root: Path):
    info = _splits(cifar_root).info
    assert info.mean == AUTHORS_MEAN and info.std == AUTHORS_STD
    default = _splits(cifar_root, {}).info
    assert default.mean == Cifar100Source.mean and default.std == Cifar100Source.std


@pytest.mark.parametrize("options", [{"mean": [0.5, 0.5]}, {"std": [0.2, 0.0, 0.2]}, {"mean": "crd"},
                                     {"std": [0.2, float("nan"), 0.2]}, {"normalise": True}])
def test_bad_normalisation_options_are_one_line_errors(cifar_root: Path, options: dict):
    with pytest.raises(ConfigError):
        _splits(cifar_root, options)


# ------------------------------------------------------------------------------------------------ augmentation

def _replayed_draws(seed: int, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The positions, crop offsets (top, left) and flips of each training batch kdbench draws from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    draws = []
    for start in range(0, count - count % batch_size, batch_size):  # kdbench drops the last partial batch
        positions = order[start:start + batch_size]
        offsets = torch.randint(0, 9, (2, len(positions)), generator=generator)
        flips = torch.rand(len(positions), generator=generator) < 0.5
        draws.append((positions, offsets, flips))
    return draws


def test_training_batches_equal_the_authors_transform_given_the_same_crops_and_flips(
        cifar_root: Path, monkeypatch: pytest.MonkeyPatch):
    splits = _splits(cifar_root)
    authors = authors_dataset(cifar_root, train=True, monkeypatch=monkeypatch)
    assert splits.info.sizes["train"] == len(authors) == 64  # no validation split: every training image
    batches = list(splits.train_batches(16, torch.Generator().manual_seed(3)))
    draws = _replayed_draws(3, 64, 16)
    assert len(batches) == len(draws) == 4
    seen_offsets, seen_flips, largest = set(), set(), 0.0
    for batch, (positions, offsets, flips) in zip(batches, draws, strict=True):
        assert torch.equal(batch.indices, positions)
        expected, labels = [], []
        for k, position in enumerate(positions.tolist()):
            image, label = authors[position]
            top, left, flip = int(offsets[0, k]), int(offsets[1, k]), bool(flips[k])
            expected.append(authors_train_transform(top, left, flip, monkeypatch)(image))
            labels.append(label)
            seen_offsets.add((top, left))
            seen_flips.add(flip)
        expected_batch = torch.stack(expected)
        assert batch.images.dtype == expected_batch.dtype == torch.float32
        assert batch.images.shape == expected_batch.shape == (16, 3, 32, 32)
        largest = max(largest, float((batch.images - expected_batch).abs().max()))
        assert torch.equal(batch.labels, torch.tensor(labels))
    assert largest <= FLOAT_ROUNDING
    assert seen_flips == {True, False} and len(seen_offsets) > 20  # the comparison covered many crops, both flips


def _offsets_and_flips(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read back each crop's (top, left) and flip from images whose channels 0 and 1 hold row and column + 1."""
    top = images[:, 0, 16, 16].long() - 13  # output row 16 shows input row 16 + top - 4, stored as that + 1
    flipped = images[:, 1, 16, 10] > images[:, 1, 16, 20]
    column_at_10 = images[:, 1, 16, 10].long() - 1  # input column: 10 + left - 4, or 31 - 10 + left - 4 if flipped
    left = torch.where(flipped, column_at_10 - 17, column_at_10 - 6)
    return top, left, flipped


def test_crop_offsets_and_flips_are_drawn_as_torchvision_draws_them():
    """Offsets uniform on 0..8 in each direction and flips with probability 1/2, in kdbench and in torchvision."""
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    marker = torch.stack([rows + 1, cols + 1, torch.zeros_like(rows)]).to(torch.uint8)  # 0 only in the padding
    count = 4000
    ours = random_crop_flip(marker.expand(count, -1, -1, -1).contiguous(), 4, True, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pipeline = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.PILToTensor()])
    image = transforms.functional.to_pil_image(marker)
    theirs = torch.stack([pipeline(image) for _ in range(count)])
    for images in (ours, theirs):
        top, left, flipped = _offsets_and_flips(images)
        for offsets in (top, left):
            assert offsets.min() == 0 and offsets.max() == 8
            share = torch.bincount(offsets, minlength=9).double() / count
            assert float((share - 1 / 9).abs().max()) < 0.025  # ~5 standard errors of a share of 1/9 in 4,000
        assert abs(float(flipped.double().mean()) - 0.5) < 0.04
        rebuilt = torch.stack([
            torch.nn.functional.pad(marker, (4, 4, 4, 4))[:, t:t + 32, c:c + 32].flip(2) if f
            else torch.nn.functional.pad(marker, (4, 4, 4, 4))[:, t:t + 32, c:c + 32]
            for t, c, f in zip(top[:200].tolist(), left[:200].tolist(), flipped[:200].tolist(), strict=True)])
        assert torch.equal(rebuilt, images[:200])  # the read-back offsets and flips explain the images exactly


# -------------------------------------------------------------------------------------------------- evaluation

def test_test_batches_equal_the_authors_test_transform(cifar_root: Path, monkeypatch: pytest.MonkeyPatch):
    splits = _splits(cifar_root)
    authors = authors_dataset(cifar_root, train=False, monkeypatch=monkeypatch)
    transform = authors_test_transform()
    expected = torch.stack([transform(authors[k][0]) for k in range(len(authors))])
    labels = torch.tensor([authors[k][1] for k in range(len(authors))])
    batches = list(splits.eval_batches("test", 10))  # the authors' test loaders keep the files' order too
    images = torch.cat([b.images for b in batches])
    assert images.shape == expected.shape == (24, 3, 32, 32)
    assert float((images - expected).abs().max()) <= FLOAT_ROUNDING
    assert torch.equal(torch.cat([b.labels for b in batches]), labels)
    again = torch.cat([b.images for b in splits.eval_batches("test", 7)])  # no randomness, any batch size
    assert torch.equal(again, images)


# ------------------------------------------------------------------------------------------- the reported figure

class _Meter:
    """The authors' running average (``AverageMeter``): a sum of values weighted by batch size, over the count."""

    def __init__(self) -> None:
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int) -> None:
        self.sum += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count


def authors_validate(logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Top-1 and top-5 as the authors' ``validate`` computes them: per batch ``topk`` hits in percent, averaged."""
    top1, top5 = _Meter(), _Meter()
    for start in range(0, len(labels), batch_size):
        out, target = logits[start:start + batch_size], labels[start:start + batch_size]
        predicted = out.topk(5, 1, True, True).indices.t()
        correct = predicted.eq(target.view(1, -1).expand_as(predicted))
        top1.update(float(correct[:1].reshape(-1).float().sum() * 100.0 / len(target)), len(target))
        top5.update(float(correct[:5].reshape(-1).float().sum() * 100.0 / len(target)), len(target))
    return top1.avg, top5.avg


def _epoch_logits(epochs: int = 6, count: int = 1000, classes: int = 100) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Test logits after each epoch of a student that improves, then drops a little at the end."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (count,), generator=generator)
    signal = [0.5, 1.5, 2.5, 3.2, 3.4, 3.0]
    logits = []
    for epoch in range(epochs):
        noise = torch.randn(count, classes, generator=generator, dtype=torch.float64)
        logits.append(noise + signal[epoch] * torch.nn.functional.one_hot(labels, classes))
    return logits, labels


def test_kdbenchs_top1_is_repdistillers_reported_figure_the_last_epochs():
    """RepDistiller reports the last epoch (``train_student.py``: best accuracy "only for printing purpose")."""
    per_epoch, labels = _epoch_logits()
    last = per_epoch[-1]
    metrics = classification_metrics(Predictions(last, labels))
    for batch_size in (32, 64, 100):  # RepDistiller's test loader takes half the batch; mdistiller its own size
        top1, top5 = authors_validate(last, labels, batch_size)
        assert math.isclose(metrics["top1"], top1, abs_tol=FLOAT32_PERCENT)
        assert math.isclose(metrics["top5"], top5, abs_tol=FLOAT32_PERCENT)


def test_mdistillers_reported_figure_is_the_best_test_epoch_which_kdbench_does_not_select():
    """mdistiller reports ``best_acc``: the largest test accuracy of any epoch, i.e. the test set selects the epoch."""
    per_epoch, labels = _epoch_logits()
    by_epoch = [authors_validate(logits, labels, 64)[0] for logits in per_epoch]
    best = -1.0
    for accuracy in by_epoch:  # BaseTrainer.log: best_acc starts at -1 and takes every larger test accuracy
        best = max(best, accuracy)
    ours = classification_metrics(Predictions(per_epoch[-1], labels))["top1"]
    assert math.isclose(ours, by_epoch[-1], abs_tol=FLOAT32_PERCENT)  # the record's top1: the last epoch
    assert best > ours  # the best-epoch figure is higher here: the two reportings are not the same number


def test_the_published_table_says_how_each_source_reports():
    """The report sets kdbench's last-epoch figures beside the published ones with each source's reporting."""
    from kdbench.published import load_published

    published = load_published(None)
    cifar = published[published["dataset"] == "cifar100"]
    crd = cifar[cifar["source"].str.contains("CRD|Contrastive", regex=True) & (cifar["method"] == "crd")]
    dkd = cifar[cifar["source"].str.contains("Decoupled") & (cifar["method"] == "dkd")]
    assert not crd.empty and crd["reporting"].str.startswith("last epoch").all()
    assert not dkd.empty and dkd["reporting"].str.startswith("best epoch").all()
