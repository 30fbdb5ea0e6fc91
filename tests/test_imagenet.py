"""The ImageNet protocol on small generated ImageNet-layout folders (WordNet-id class names), offline.

Pretrained teachers are timm's tiny ``test_resnet.r160_in1k`` (1,000 ImageNet classes) with a weights file each test
writes itself, loaded through timm's own pretrained-config mechanism (``pretrained_cfg_overlay=dict(file=...)``):
the code path users run, without the weight hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

import kdbench.pretrained as pretrained
from kdbench.cli import main
from kdbench.data import DataConfig, clear_dataset_cache, dataset_fingerprint, describe_dataset, load_dataset
from kdbench.engine import load_splits
from kdbench.errors import ConfigError, DataError
from kdbench.options import ExecOptions
from kdbench.plan import make_spec
from kdbench.report.compare import published_comparison
from kdbench.sweep import expand_sweep, load_sweep_spec

WNIDS = tuple(ImageNetInfo("imagenet-1k").label_names())
CLASSES = (WNIDS[0], WNIDS[1], WNIDS[5], WNIDS[999])  # sorted, like any ImageNet folder
TEACHER = "test_resnet.r160_in1k"  # timm's tiny model with an ImageNet-1k pretrained config (mean 0.5, crop 0.95)


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def make_imagenet(root: Path, classes=CLASSES, train: int = 3, val: int = 2, flat: str | None = None) -> Path:
    """A small ImageNet layout: ``train/<wnid>/``, and ``val/<wnid>/`` or (``flat``) ``val/`` + a ground truth."""
    rng = np.random.default_rng(0)
    truth = []
    for wnid in classes:
        for i in range(train):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", rng)
        for _ in range(val):
            name = f"ILSVRC2012_val_{len(truth) + 1:08d}.JPEG"
            write_image(root / "val" / (name if flat else f"{wnid}/{name}"), rng)
            truth.append((name, wnid))
    if flat == "txt":
        (root / "val_labels.txt").write_text("".join(f"{name} {wnid}\n" for name, wnid in truth))
    elif flat == "csv":  # Kaggle's LOC_val_solution.csv: the id without extension, then the boxes' classes
        boxes = [f"{Path(name).stem},{wnid} 1 2 3 4 {wnid} 5 6 7 8" for name, wnid in truth]
        lines = ["ImageId,PredictionString", *boxes]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    elif flat == "devkit":  # 1-based ILSVRC2012_IDs (not the sorted order) and meta.mat's synsets
        import scipy.io

        ids = {wnid: 1000 - position for position, wnid in enumerate(WNIDS)}
        dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
        synsets = np.array([(ids[w], w, 0) for w in WNIDS] + [(1001, "n00001740", 12)], dtype=dtype)
        scipy.io.savemat(str(root / "meta.mat"), {"synsets": synsets})
        (root / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for _, w in truth))
    return root


def teacher_weights(path: Path, seed: int = 0) -> Path:
    """A weights file of the pretrained teacher in timm's layout (random weights, 1,000 outputs)."""
    torch.manual_seed(seed)
    torch.save(timm.create_model(TEACHER).state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def test_layout_class_names_are_the_sorted_wordnet_ids(tmp_path):
    info = describe_dataset(DataConfig("imagenet", root=str(make_imagenet(tmp_path))))
    assert info.class_names == CLASSES and info.num_classes == 4 and info.image_size == 224


@pytest.mark.parametrize("flat", ["txt", "csv", "devkit"])
def test_the_official_flat_validation_layout_reads_as_the_per_class_one(tmp_path, flat):
    by_class = load_dataset(DataConfig("imagenet", root=str(make_imagenet(tmp_path / "a")), image_size=16,
                                       val_fraction=0, options={"workers": 0}))
    flat_split = load_dataset(DataConfig("imagenet", root=str(make_imagenet(tmp_path / "b", flat=flat)),
                                         image_size=16, val_fraction=0, options={"workers": 0}))
    assert flat_split.labels("test").tolist() == by_class.labels("test").tolist()
    first, second = next(by_class.eval_batches("test", 8)), next(flat_split.eval_batches("test", 8))
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_a_flat_validation_folder_without_its_ground_truth_is_one_line(tmp_path):
    root = make_imagenet(tmp_path, flat="txt")
    (root / "val_labels.txt").unlink()
    with pytest.raises(DataError, match="no ground-truth file") as error:
        describe_dataset(DataConfig("imagenet", root=str(root)))
    assert "\n" not in str(error.value)


def test_the_class_subset_option_keeps_evenly_spaced_classes_and_imagenet_refuses_it(tmp_path):
    root = make_imagenet(tmp_path)
    info = describe_dataset(DataConfig("imagefolder", root=str(root), val_fraction=0, options={"classes": 2}))
    assert info.class_names == (CLASSES[0], CLASSES[2])
    assert info.sizes == {"train": 6, "val": 0, "test": 4}
    with pytest.raises(ConfigError, match="imagefolder --data-option classes"):
        describe_dataset(DataConfig("imagenet", root=str(root), options={"classes": 2}))
    with pytest.raises(DataError, match="between 2 and the folder's 4 classes"):
        describe_dataset(DataConfig("imagefolder", root=str(root), options={"classes": 5}))


def _rewrite_in_place(path: Path) -> None:
    """Other pixels, the same name, size and modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the entropy-coded data, before the end marker
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_the_default_fingerprint_is_the_metadata_one_runs_were_planned_with(tmp_path):
    import hashlib

    root = make_imagenet(tmp_path)
    digest = hashlib.sha256()
    for part in ("train", "val"):
        for label, wnid in enumerate(CLASSES):
            for path in sorted((root / part / wnid).iterdir()):
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    assert dataset_fingerprint(DataConfig("imagenet", root=str(root))) == digest.hexdigest()[:16]


def test_content_fingerprint_sees_an_image_rewritten_with_the_same_name_size_and_time(tmp_path):
    root = make_imagenet(tmp_path)
    metadata = DataConfig("imagenet", root=str(root))
    content = DataConfig("imagenet", root=str(root), options={"fingerprint": "content"})
    before = dataset_fingerprint(metadata), dataset_fingerprint(content)
    assert before[0] != before[1]
    _rewrite_in_place(root / "train" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG")
    assert dataset_fingerprint(metadata, cached=False) == before[0]  # the fast default cannot see it (documented)
    assert dataset_fingerprint(content, cached=False) != before[1]


def test_the_engine_refuses_data_rewritten_in_place_since_planning_in_content_mode(tmp_path):
    root = make_imagenet(tmp_path)
    spec = make_spec(dataset="imagenet", student="test_resnet", method="ce", teacher=None, data_root=str(root),
                     image_size=16, data_options={"fingerprint": "content", "workers": 0})
    _rewrite_in_place(root / "val" / CLASSES[0] / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="not the data the runs were planned on"):
        load_splits(spec, ExecOptions(results=str(tmp_path / "res"), data_root=str(root)), torch.device("cpu"))


def test_device_decoding_crops_the_same_regions_as_the_pil_loader(tmp_path):
    root = str(make_imagenet(tmp_path))
    batches = {}
    for decode in ("pil", "device"):
        splits = load_dataset(DataConfig("imagenet", root=root, image_size=16, val_fraction=0,
                                         options={"workers": 0, "decode": decode}))
        batches[decode] = (next(splits.train_batches(8, torch.Generator().manual_seed(3))),
                           next(splits.eval_batches("test", 8)))
    for pil, device in zip(batches["pil"], batches["device"], strict=True):
        assert torch.equal(pil.labels, device.labels) and torch.equal(pil.indices, device.indices)
        assert (pil.images - device.images).abs().mean() < 0.1  # another decoder and resampler, the same crops
    with pytest.raises(ConfigError, match="'decode' must be one of pil, device"):
        describe_dataset(DataConfig("imagenet", root=root, options={"decode": "gpu"}))


def test_device_decoding_names_a_broken_jpeg(tmp_path):
    root = make_imagenet(tmp_path)
    broken = root / "val" / CLASSES[0] / "ILSVRC2012_val_00000001.JPEG"
    broken.write_bytes(b"\xff\xd8" + b"not a jpeg" * 10)
    splits = load_dataset(DataConfig("imagenet", root=str(root), image_size=16, options={"workers": 0,
                                                                                        "decode": "device"}))
    with pytest.raises(DataError, match="cannot read .*ILSVRC2012_val_00000001.JPEG"):
        next(splits.eval_batches("test", 8))


def test_a_pretrained_teacher_enters_the_run_id_by_its_weights_and_sets_the_preprocessing(tmp_path):
    root = str(make_imagenet(tmp_path / "data"))
    weights = teacher_weights(tmp_path / "teacher.pth")
    spec = make_spec(dataset="imagenet", student="test_resnet", method="kd", teacher=TEACHER, teacher_ckpt=str(weights),
                     teacher_pretrained=True, data_root=root)
    assert spec.teacher_source == "pretrained" and spec.teacher_epochs == 0
    assert spec.teacher_ckpt_sha256 == pretrained.weights_sha256(weights)
    assert dict(spec.data_options) == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                                       "crop_fraction": 0.95}  # test_resnet.r160_in1k's pretrained config
    ce = make_spec(dataset="imagenet", student="test_resnet", method="ce", teacher=TEACHER, teacher_ckpt=str(weights),
                   teacher_pretrained=True, data_root=root)
    assert ce.teacher is None and ce.data_options == spec.data_options  # the pair's baseline sees the same images
    teacher_weights(weights, seed=1)
    other = make_spec(dataset="imagenet", student="test_resnet", method="kd", teacher=TEACHER,
                      teacher_ckpt=str(weights), teacher_pretrained=True, data_root=root)
    assert other.run_id != spec.run_id
    with pytest.raises(ConfigError, match="crop_fraction=0.875 contradicts the pretrained teacher"):
        make_spec(dataset="imagenet", student="test_resnet", method="kd", teacher=TEACHER, teacher_ckpt=str(weights),
                  teacher_pretrained=True, data_root=root, data_options={"crop_fraction": 0.875})


def test_a_pretrained_teacher_keeps_the_outputs_of_the_data_classes_in_their_order(tmp_path):
    root = str(make_imagenet(tmp_path / "data"))
    weights = teacher_weights(tmp_path / "teacher.pth")
    info = describe_dataset(DataConfig("imagenet", root=root, image_size=32))
    teacher = pretrained.load_pretrained(TEACHER, weights, pretrained.weights_sha256(weights), info).eval()
    full = timm.create_model(TEACHER, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        rows = [WNIDS.index(wnid) for wnid in CLASSES]
        assert torch.allclose(teacher(x), full(x)[:, rows], atol=1e-5)
    with pytest.raises(Exception, match="changed since the run was planned"):
        pretrained.load_pretrained(TEACHER, weights, "0" * 64, info)


def test_a_folder_whose_classes_are_not_the_teachers_is_one_line(tmp_path, capsys):
    root = make_imagenet(tmp_path / "data", classes=(*CLASSES[:3], "tabby_cat"))
    weights = teacher_weights(tmp_path / "teacher.pth")
    code = main(["run", "--dataset", "imagenet", "--data-root", str(root), "--teacher", TEACHER, "--teacher-pretrained",
                 "--teacher-ckpt", str(weights), "--student", "test_resnet", "--method", "kd", "--epochs", "1",
                 "--results", str(tmp_path / "res"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'tabby_cat' is not one of its 1000 classes" in err[0] and "WordNet ids" in err[0]
    assert not (tmp_path / "res" / "runs").exists() or not list((tmp_path / "res" / "runs").iterdir())


def test_a_teacher_far_below_its_published_figure_is_a_warning():
    lines: list[str] = []
    pretrained.check_top1("resnet34.tv_in1k", 71.0, 73.31, lines.append)
    assert len(lines) == 1 and "top-1 71.00%" in lines[0]
    pretrained.check_top1("resnet34.tv_in1k", 0.1, 73.31, lines.append)
    assert lines[-1].startswith("kdbench: warning:") and "class" in lines[-1]


@pytest.mark.slow
def test_a_pretrained_teacher_is_evaluated_before_the_students_and_recorded(tmp_path, capsys, monkeypatch):
    root = make_imagenet(tmp_path / "data", flat="txt")
    weights = teacher_weights(tmp_path / "teacher.pth")
    monkeypatch.setattr("kdbench.teachers.published_teacher_top1", lambda dataset, name: 99.0)
    code = main(["run", "--dataset", "imagenet", "--data-root", str(root), "--teacher", TEACHER, "--teacher-pretrained",
                 "--teacher-ckpt", str(weights), "--student", "test_resnet", "--method", "kd", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "6", "--val-fraction", "0", "--data-option", "workers=0",
                 "--results", str(tmp_path / "res"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    text = out.out + out.err
    assert text.index("pretrained teacher test_resnet.r160_in1k: top-1") < text.index("done   kd")
    assert "kdbench: warning: the pretrained teacher" in text  # random weights are far below "99"
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "res" / "runs").glob("*.json")]
    assert record["teacher_source"] == "pretrained" and record["teacher_sha256"] == pretrained.weights_sha256(weights)
    assert record["teacher_top1"] is not None and record["num_classes"] == 4
    assert record["data_options"]["crop_fraction"] == 0.95 and record["data_options"]["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["imagenet_kd", "imagenet100_kd"])
def test_the_shipped_imagenet_specs_expand_offline(tmp_path, monkeypatch, name):
    classes = WNIDS[:100] if name == "imagenet100_kd" else CLASSES
    root = str(make_imagenet(tmp_path / "data", classes=classes, train=1, val=1))
    hub = tmp_path / "hub_weights.safetensors"
    hub.write_bytes(b"stands in for the hub's file: planning hashes it, nothing loads it")
    monkeypatch.setattr(pretrained, "_hub_file", lambda model, cfg: hub)
    spec = load_sweep_spec(name)
    runs = expand_sweep(spec, root)
    assert len(runs) == 2 * 6 * 3 + 2 * 3  # 2 pairs x 6 teacher methods x 3 seeds, plus ce per student and seed
    by_pair = {(r.teacher, r.method): r for r in runs if r.seed == 0}
    assert by_pair[("resnet34.tv_in1k", "dkd")].method_params["beta"] == 0.5
    assert by_pair[("resnet50.tv_in1k", "dkd")].method_params["beta"] == 2
    assert by_pair[("resnet50.tv_in1k", "reviewkd")].method_params["weight"] == 8
    kd = by_pair[("resnet34.tv_in1k", "kd")]
    params = kd.method_params
    assert (params["temperature"], params["ce_weight"], params["kd_weight"]) == (1, 0.5, 0.5)
    assert (kd.epochs, kd.batch_size, kd.lr, kd.weight_decay, kd.milestones) == (100, 512, 0.2, 1e-4, (30, 60, 90))
    assert kd.teacher_source == "pretrained" and kd.teacher_ckpt_sha256 == pretrained.weights_sha256(hub)
    assert kd.data_options["crop_fraction"] == 0.875 and kd.data_options["interpolation"] == "bilinear"
    assert kd.dataset == ("imagefolder" if name == "imagenet100_kd" else "imagenet")
    assert (kd.data_options.get("classes") == 100) == (name == "imagenet100_kd")


def test_report_compares_imagenet_runs_with_the_published_table():
    row = {"dataset": "imagenet", "teacher": "resnet34.tv_in1k", "student": "resnet18", "budget_key": "b",
           "budget": "100 ep", "teacher_top1": 73.2, "n": 3, "method": "kd", "method_label": "kd(temperature=1)",
           "is_baseline": False, "top1_mean": 70.9, "top1_std": 0.1}
    board = pd.DataFrame([row, {**row, "dataset": "imagefolder"}])
    comparison = published_comparison(board)
    assert set(comparison["method"]) == {"teacher", "kd"} and set(comparison["dataset"]) == {"imagenet"}
    kd = comparison[comparison["method"] == "kd"].iloc[0]
    assert kd["published_top1"] == 71.03 and kd["difference"] == pytest.approx(70.9 - 71.03)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decoding_with_nvjpeg_crops_the_same_regions_as_the_pil_loader(tmp_path):
    root = str(make_imagenet(tmp_path, train=8))
    batches = {}
    for decode, device in (("pil", "cpu"), ("device", "cuda")):
        splits = load_dataset(DataConfig("imagenet", root=root, image_size=24, val_fraction=0, device=device,
                                         options={"workers": 2, "decode": decode}))
        batches[decode] = next(splits.train_batches(16, torch.Generator().manual_seed(3)))
    assert batches["device"].images.is_cuda
    assert torch.equal(batches["pil"].labels, batches["device"].labels.cpu())
    assert (batches["pil"].images - batches["device"].images.cpu()).abs().mean() < 0.1


def test_a_sweep_spec_names_local_pretrained_weights_per_pair(tmp_path):
    root = str(make_imagenet(tmp_path / "data"))
    weights = teacher_weights(tmp_path / "teacher.pth")
    spec_file = tmp_path / "offline.yaml"
    spec_file.write_text(f"dataset: imagenet\nteacher_pretrained: true\nepochs: 1\nimage_size: 32\n"
                         f"pairs:\n  - {{teacher: {TEACHER}, student: test_resnet, teacher_ckpt: {weights}}}\n"
                         "methods: [ce, kd]\n")
    runs = {run.method: run for run in expand_sweep(load_sweep_spec(spec_file), root)}
    assert runs["kd"].teacher_source == "pretrained"
    assert runs["kd"].teacher_ckpt_sha256 == pretrained.weights_sha256(weights)
    assert runs["ce"].data_options == runs["kd"].data_options
