"""Students as artifacts: ``--save-students`` keeps them beside their records, ``kdbench export`` hands them to timm.

The round trip the end-to-end tests check: a run trained by ``kdbench run`` on digits, exported, loaded through timm
alone (``local-dir:`` and ``pretrained_cfg_overlay=dict(file=...)``), gives on the test split the record's top-1
exactly (the last weights) and its ``test_top1_at_best_val`` exactly (the best-validation weights), for a CNN, a ViT
and a distilled DeiT student.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import timm
import torch

from kdbench import store
from kdbench.artifacts import RunFilter, choose_run, read_student, save_students, seed_summary, student_file
from kdbench.cli import build_parser, main
from kdbench.config import RunSpec
from kdbench.data import DataConfig, describe_dataset, load_dataset
from kdbench.errors import ConfigError
from kdbench.models import create_model
from kdbench.options import ExecOptions
from kdbench.results import write_record
from kdbench.store import Store
from kdbench.training import top1
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.tiny_models import TINY_DEIT

DIGITS = describe_dataset(DataConfig(name="digits"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_like(name: str = TINY_STUDENT, image_size: int = 8, seed: int = 0) -> torch.nn.Module:
    """A student with weights no fresh model has (so that a dropped or re-initialised tensor shows)."""
    model = create_model(name, num_classes=10, in_chans=1, image_size=image_size)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.1
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)
    return model.eval()


def fake_member(spec: RunSpec, model: torch.nn.Module, best: torch.nn.Module | None, status: str = "running"):
    """What :func:`save_students` reads of a trained member."""
    return SimpleNamespace(spec=spec, student=model, best_state=best.state_dict() if best is not None else None,
                           best_val_epoch=1 if best is not None else None, status=status, active=status == "running",
                           deployed=lambda: model)  # a method that deploys its student itself


SPEC = RunSpec(dataset="digits", student=TINY_STUDENT, method="kd", teacher=TINY_TEACHER, epochs=2)


def options(results: Path, save: str = "both", log=None) -> ExecOptions:
    return ExecOptions(results=results, save_students=save, log=log or (lambda line: None))


# ---------------------------------------------------------------------------------------------------------------
# Saving beside the record


def test_both_students_are_saved_with_their_sha256_and_the_last_one_stays_in_the_model(results):
    last, best = trained_like(seed=1), trained_like(seed=2)
    before = {k: v.clone() for k, v in last.state_dict().items()}
    fields = save_students(fake_member(SPEC, last, best), DIGITS, options(results))
    for which, model in (("last", last), ("best", best)):
        path = Store(results).student_path(SPEC.run_id, which)
        assert fields[f"student_{which}_sha256"] == sha256(path)
        tensors, header = read_student(path)
        assert tensors.keys() == model.state_dict().keys()
        assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
        assert header["architecture"] == TINY_STUDENT and header["which"] == which and header["run_id"] == SPEC.run_id
        assert (header["num_classes"], header["in_chans"], header["image_size"]) == (10, 1, 8)
        assert header["mean"] == list(DIGITS.mean) and header["std"] == list(DIGITS.std)
    assert all(torch.equal(last.state_dict()[k], v) for k, v in before.items())  # best was swapped in and out


@pytest.mark.parametrize(("save", "kept"), [("none", ()), ("last", ("last",)), ("best", ("best",)),
                                            ("both", ("last", "best"))])
def test_save_students_keeps_what_it_is_asked_for(results, save, kept):
    fields = save_students(fake_member(SPEC, trained_like(), trained_like(seed=3)), DIGITS, options(results, save))
    for which in ("last", "best"):
        path = Store(results).student_path(SPEC.run_id, which)
        assert path.exists() == (which in kept)
        assert (fields[f"student_{which}_sha256"] is not None) == (which in kept)
    if save == "none":
        assert not (results / "runs").exists()


def test_without_a_validation_split_best_is_skipped_with_a_note_never_replaced_by_last(results):
    notes = []
    fields = save_students(fake_member(SPEC, trained_like(), None), DIGITS, options(results, "both", notes.append))
    assert fields["student_best_sha256"] is None and fields["student_last_sha256"] is not None
    assert not Store(results).student_path(SPEC.run_id, "best").exists()
    assert len(notes) == 1 and "no validation split" in notes[0] and "\n" not in notes[0]


@pytest.mark.parametrize("status", ["failed", "pruned"])
def test_a_run_that_did_not_end_ok_saves_nothing(results, status):
    fields = save_students(fake_member(SPEC, trained_like(), trained_like(), status), DIGITS, options(results))
    assert fields == {"student_last_sha256": None, "student_best_sha256": None}
    assert not (results / "runs").exists()


def test_under_torchrun_only_rank_0_writes(results, monkeypatch):
    monkeypatch.setattr("kdbench.distributed.is_main", lambda: False)
    fields = save_students(fake_member(SPEC, trained_like(), trained_like()), DIGITS, options(results))
    assert set(fields.values()) == {None} and not (results / "runs").exists()


def test_channels_last_and_shared_weights_save_and_load_back():
    model = trained_like().to(memory_format=torch.channels_last)
    weights = dict(model.state_dict())
    weights["alias"] = weights["conv_stem.weight"]  # two names of one tensor (tied weights)
    tensors = safetensors.torch.load(student_file(weights, {}))
    assert torch.equal(tensors["alias"], tensors["conv_stem.weight"])
    assert all(torch.equal(tensors[k], v) for k, v in weights.items())


@pytest.mark.slow
def test_the_same_student_is_the_same_bytes_in_every_process():
    """Records are compared bit for bit (resume, cohorts, parity): a student's SHA-256 must not vary by process."""
    import subprocess
    import sys

    code = ("import hashlib, torch; from kdbench.artifacts import student_file; torch.manual_seed(0); "
            "t = {f'layer{i}.weight': torch.randn(3, 3) for i in range(30)}; "
            "print(hashlib.sha256(student_file(t, {'run_id': 'r', 'b': 1, 'a': [0.5], 'z': None})).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(3)}
    assert len(digests) == 1


def test_a_student_file_is_never_left_half_written(results, monkeypatch):
    path = Store(results).student_path(SPEC.run_id, "last")
    save_students(fake_member(SPEC, trained_like(seed=1), None), DIGITS, options(results, "last"))
    whole = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", crash)  # the write dies after the bytes, before the rename
    with pytest.raises(OSError, match="disk full"):
        save_students(fake_member(SPEC, trained_like(seed=2), None), DIGITS, options(results, "last"))
    assert path.read_bytes() == whole  # the old file, whole; no part of the new one
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind


def test_the_record_contract_takes_the_student_fields():
    from kdbench.results import record_problem

    record = {"run_id": "r", "status": "ok", "dataset": "digits", "student": "s", "method": "ce", "seed": 0,
              "method_params": {}, "top1": 50.0, "history": [], "student_last_sha256": "ab" * 32,
              "student_best_sha256": None}
    assert record_problem(record) is None
    assert "student_last_sha256" in record_problem({**record, "student_last_sha256": 3})


# ---------------------------------------------------------------------------------------------------------------
# The execution option: flags and the sweep spec's key


def test_save_students_is_an_execution_option_not_part_of_the_run_id(tmp_path):
    from kdbench.commands.run import exec_options
    from kdbench.commands.sweep import prepare_sweep

    parser = build_parser()
    assert exec_options(parser.parse_args(["run"])).save_students == "last"
    assert exec_options(parser.parse_args(["run", "--save-students", "none"])).save_students == "none"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset: digits\nteacher: {TINY_TEACHER}\nstudent: {TINY_STUDENT}\nmethods: [kd]\n"
                    "save_students: best\n")
    setup = prepare_sweep(parser.parse_args(["sweep", str(spec), "--device", "cpu"]))
    assert setup.options.save_students == "best"
    flagged = prepare_sweep(parser.parse_args(["sweep", str(spec), "--device", "cpu", "--save-students", "none"]))
    assert flagged.options.save_students == "none"
    assert [r.run_id for r in flagged.runs] == [r.run_id for r in setup.runs]


def test_a_bad_save_students_value_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset: digits\nteacher: {TINY_TEACHER}\nstudent: {TINY_STUDENT}\nmethods: [kd]\n"
                    "save_students: all\n")
    assert main(["sweep", str(spec), "--dry-run", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "save_students must be one of none, last, best, both" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--save-students", "all"]) == 2
    assert "--save-students" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Choosing the run to export


def record(run_id: str, top1: float | None, seed: int = 0, method: str = "kd", status: str = "ok", **extra):
    return {**SPEC.as_dict(), "run_id": run_id, "status": status, "method": method, "method_label": method,
            "seed": seed, "top1": top1, "best_val_top1": extra.pop("best_val_top1", None), **extra}


def test_the_best_run_of_a_filter_is_chosen_by_its_figure_and_ties_by_run_id():
    runs = [record("b", 80.0), record("a", 80.0), record("c", 70.0, best_val_top1=99.0),
            record("d", 95.0, status="failed"), record("e", 90.0, method="dkd")]
    assert choose_run(runs, RunFilter(method="kd"), "last")["run_id"] == "a"
    assert choose_run(runs, RunFilter(dataset="digits"), "last")["run_id"] == "e"
    assert choose_run(runs, RunFilter(), "best")["run_id"] == "c"  # the best weights rank by validation
    with pytest.raises(ConfigError, match="no ok run of method ce matches"):
        choose_run(runs, RunFilter(method="ce"), "last")
    with pytest.raises(ConfigError, match="has best_val_top1"):
        choose_run(runs, RunFilter(method="dkd"), "best")


def test_the_seeds_of_a_configuration_are_the_runs_that_differ_in_the_seed_alone():
    runs = [record("a", 70.0, seed=0), record("b", 74.0, seed=1), record("c", 10.0, seed=2, lr=0.5),
            record("d", 99.0, seed=3, status="failed")]
    summary = seed_summary(runs[0], runs)
    assert summary["seeds"] == [0, 1] and summary["n"] == 2 and summary["mean"] == pytest.approx(72.0)
    assert summary["std"] == pytest.approx(2 ** 0.5 * 2)
    assert seed_summary(runs[2], runs) == {"seeds": [2], "n": 1, "mean": 10.0, "std": None}


# ---------------------------------------------------------------------------------------------------------------
# Export of a stored student (no training): the folder timm loads


def stored_run(results: Path, model: torch.nn.Module, name: str = TINY_STUDENT, image_size: int = 8,
               seed: int = 0, top1: float = 50.0) -> dict:
    """A record in ``results`` whose last student is ``model``, as a finished run leaves them."""
    spec = RunSpec(dataset="digits", student=name, method="kd", teacher=TINY_TEACHER, seed=seed,
                   image_size=image_size)
    info = describe_dataset(DataConfig(name="digits", image_size=image_size))
    fields = save_students(fake_member(spec, model, None), info, options(results, "last"))
    rec = {**spec.as_dict(), "run_id": spec.run_id, "status": "ok", "method_label": "kd", "top1": top1,
           "history": [], "num_classes": 10, "in_chans": 1, "params_m": 0.1, "gmacs": 0.002, **fields}
    write_record(results, rec)
    return rec


@pytest.mark.parametrize(("name", "size"), [(TINY_STUDENT, 8), ("test_vit", 32), (TINY_DEIT, 8),
                                            ("cifar_resnet8", 16)])
def test_an_exported_folder_loads_in_timm_alone_to_the_same_outputs(results, tmp_path, name, size, capsys):
    model = trained_like(name, size)
    rec = stored_run(results, model, name, size)
    out = tmp_path / "export"
    assert main(["export", rec["run_id"], "--results", str(results), "--out", str(out)]) == 0
    assert "exported the last student" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sha256(out / "model.safetensors") == rec["student_last_sha256"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 10
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [1, size, size] and cfg["mean"] == list(DIGITS.mean) and cfg["std"] == list(DIGITS.std)
    assert "tag" not in cfg and "license" not in cfg  # the architecture's published weights are not these
    images = torch.randn(6, 1, size, size)
    with torch.no_grad():
        expected = model(images)
        folder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert torch.equal(folder(images), expected)
        img_size = {"img_size": size} if "img_size" in config["model_args"] else {}
        overlay = dict(file=str(out / "model.safetensors"), num_classes=10, input_size=(1, size, size))
        named = timm.create_model(name, pretrained=True, num_classes=10, in_chans=1, pretrained_cfg_overlay=overlay,
                                  **img_size).eval()
        assert torch.equal(named(images), expected)
    data = timm.data.resolve_data_config({}, model=folder)
    assert data["input_size"] == (1, size, size) and tuple(data["mean"]) == DIGITS.mean
    card = (out / "README.md").read_text()
    assert f"`{name}`" in card and "library_name: timm" in card and rec["run_id"] in card
    assert ("import kdbench" in card) == name.startswith("cifar_")  # the zoo registers on import kdbench


def test_the_model_card_gives_the_figures_and_the_seeds_of_the_configuration(results, tmp_path):
    for seed, top in ((0, 60.0), (1, 64.0)):
        rec = stored_run(results, trained_like(seed=seed), seed=seed, top1=top)
    out = tmp_path / "card"
    assert main(["export", "--results", str(results), "--out", str(out), "--student", TINY_STUDENT]) == 0
    card = (out / "README.md").read_text()
    assert "64.00% (seed 1)" in card and "62.00% ± 2.83 (mean ± sample std over 2 seeds: 0, 1)" in card
    assert "2 M" in card and "kd" in card and rec["student_last_sha256"] in card


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-run"], "no run 'no-such-run' in"),
    (["--method", "ce"], "no ok run of method ce matches"),
    (["--which", "best", "--method", "kd"], "has best_val_top1"),
])
def test_bad_exports_are_one_line_and_exit_2(results, tmp_path, capsys, args, message):
    stored_run(results, trained_like())
    out = tmp_path / "out"
    assert main(["export", *args, "--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_run_without_a_saved_student_cannot_be_exported(results, tmp_path, capsys):
    rec = stored_run(results, trained_like())
    write_record(results, {**rec, "student_last_sha256": None})
    assert main(["export", rec["run_id"], "--results", str(results), "--out", str(tmp_path / "o")]) == 2
    assert "has no saved 'last' student" in capsys.readouterr().err
    assert main(["export", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_an_export_never_overwrites_a_folder_without_force(results, tmp_path, capsys):
    rec = stored_run(results, trained_like())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["export", rec["run_id"], "--results", str(results), "--out", str(out)]
    assert main(args) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_a_student_file_changed_since_its_record_is_refused(results, tmp_path, capsys):
    rec = stored_run(results, trained_like())
    path = Store(results).student_path(rec["run_id"], "last")
    path.write_bytes(path.read_bytes()[:-8])
    assert main(["export", rec["run_id"], "--results", str(results), "--out", str(tmp_path / "o")]) == 2
    assert "changed since its run saved it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# End to end: kdbench run on digits, export, timm alone reproduces the record


def test_top1(model: torch.nn.Module, record: dict) -> float:
    """The test top-1 of ``model`` on the record's test split, batched and normalised as the record's evaluation."""
    splits = load_dataset(DataConfig(name=record["dataset"], val_fraction=record["val_fraction"],
                                     image_size=record["image_size"], device="cpu"))
    logits, labels = [], []
    with torch.no_grad():
        for batch in splits.eval_batches("test", max(256, record["batch_size"])):
            logits.append(model(batch.images))
            labels.append(batch.labels)
    return top1(torch.cat(logits), torch.cat(labels))


test_top1.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def shared_teachers(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.slow
@pytest.mark.parametrize(("student", "method", "extra"), [
    (TINY_STUDENT, "kd", ()),  # a CNN
    ("test_vit", "ce", ("--image-size", "32")),  # a ViT
    (TINY_DEIT, "deit", ()),  # a distilled DeiT: its deployed logits are the mean of its two heads
])
def test_kdbench_run_then_export_then_timm_alone_reproduces_the_record(
        results, tmp_path, shared_teachers, one_torch_thread, student, method, extra):
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", student, "--method", method,
            "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), "--teacher-cache", str(shared_teachers), "--save-students", "both", *extra]
    assert main(args) == 0
    (path,) = (results / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["best_val_epoch"] is not None
    for which, figure in (("last", "top1"), ("best", "test_top1_at_best_val")):
        student_path = Store(results).student_path(rec["run_id"], which)
        assert rec[f"student_{which}_sha256"] == sha256(student_path)
        out = tmp_path / which
        assert main(["export", rec["run_id"], "--which", which, "--results", str(results), "--out", str(out)]) == 0
        model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert test_top1(model, rec) == rec[figure], which  # exactly: same weights, same images, same batches
    fresh = create_model(student, num_classes=10, in_chans=1, image_size=rec["image_size"])
    assert set(read_student(Store(results).student_path(rec["run_id"], "last"))[0]) == set(fresh.state_dict())


@pytest.mark.slow
def test_save_students_none_writes_no_student_and_records_null(results, one_torch_thread):
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "ce",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress", "--results", str(results),
            "--save-students", "none"]
    assert main(args) == 0
    assert [p.suffix for p in (results / "runs").iterdir()] == [".json"]
    (rec,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert rec["student_last_sha256"] is None and rec["student_best_sha256"] is None
    assert main([*args[:-1], "last"]) == 0  # not part of the run id: the run is done, nothing trains again
    assert [p.suffix for p in (results / "runs").iterdir()] == [".json"]


@pytest.mark.slow
def test_best_is_the_students_weights_at_the_best_validation_epoch(results, tmp_path, monkeypatch, one_torch_thread):
    """A validation curve that peaks at epoch 1 of 2: ``best`` holds epoch 1's weights, ``last`` epoch 2's."""
    epochs = iter(range(100))
    monkeypatch.setattr("kdbench.training.member.top1", lambda logits, labels: 90.0 - 10 * next(epochs))
    args = ["run", "--dataset", "digits", "--student", TINY_STUDENT, "--method", "ce", "--epochs", "2",
            "--batch-size", "64", "--device", "cpu", "--no-progress", "--results", str(results),
            "--save-students", "both"]
    assert main(args) == 0
    (rec,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert rec["best_val_epoch"] == 1 and rec["student_best_sha256"] != rec["student_last_sha256"]
    for which, figure in (("last", "top1"), ("best", "test_top1_at_best_val")):
        out = tmp_path / which
        assert main(["export", rec["run_id"], "--which", which, "--results", str(results), "--out", str(out)]) == 0
        assert read_student(out / "model.safetensors")[1]["epoch"] == (1 if which == "best" else 2)
        model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert test_top1(model, rec) == rec[figure], which
