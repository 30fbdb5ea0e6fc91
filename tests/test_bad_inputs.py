"""Bad inputs and faults, as a hostile but fair user meets them: one line and exit code 2, or handled with nothing lost.

Each case here was once a traceback, a wrong result or a silent success (issue 18). The store trusts nothing it
reads: an invalid record counts as not done, is moved aside with one warning line and is trained again. Run ids
cover the data of datasets read from disk. Exit codes: 0 every run ok, 1 some run failed, 2 bad input, 130 Ctrl-C.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

import kdbench.store
from kdbench import results as store
from kdbench.cli import main
from kdbench.store import Store
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import (
    BUDGET_FLAGS,
    METHOD_FLAGS,
    assert_one_line_error,
    cli,
    kd_record,
    record_files,
    run_args,
    write_class_folders,
)

# ---------------------------------------------------------------------------------------------------------------
# One line and exit 2, before any training; nothing written


def _ckpt_text(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pt"
    path.write_text("hello, this is not a checkpoint\n")
    return path


def _ckpt_whole_model(tmp_path: Path) -> Path:
    import timm

    path = tmp_path / "teacher.pt"
    torch.save(timm.create_model(TINY_TEACHER, num_classes=10, in_chans=1), path)  # a pickled module, not weights
    return path


def _ckpt_empty(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"")
    return path


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


def _sweep_spec(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"dataset: digits\nepochs: 1\npairs: [{{student: {TINY_STUDENT}}}]\nmethods: [ce]\n"
                    "device: cpu\n")
    return path


def _record_dir(results: Path) -> None:
    first = sorted(store.runs_dir(results).glob("*.json"))[0]
    first.unlink()
    first.mkdir()


def _read_only(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in (results, store.runs_dir(results), results / "claims"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes through file modes: the file system's refusal is simulated

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(kdbench.store.tempfile, "mkstemp", refuse)


Case = Callable[[Path, Path, pytest.MonkeyPatch], list]
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    # 8: every float of a spec and of a method's Params is finite
    "lr inf": (lambda t, r, m: run_args(r, "--method", "ce", "--lr", "inf"), ("lr must be a finite number",)),
    "lr nan": (lambda t, r, m: run_args(r, "--method", "ce", "--lr", "nan"), ("lr must be a finite number",)),
    "momentum -inf": (lambda t, r, m: run_args(r, "--method", "ce", "--momentum=-inf"), ("momentum", "finite")),
    "teacher lr inf": (lambda t, r, m: run_args(r, "--method", "kd", "--teacher-lr", "inf"),
                       ("teacher_lr must be a finite number",)),
    "set nan": (lambda t, r, m: run_args(r, "--method", "kd", "--set", "kd.temperature=nan"),
                ("kd.temperature must be a finite number",)),
    "set inf": (lambda t, r, m: run_args(r, "--method", "kd", "--set", "kd.temperature=inf"),
                ("kd.temperature must be a finite number",)),
    # 6: a checkpoint that is not a state dict says what it is not, in kdbench's words
    "ckpt text": (lambda t, r, m: run_args(r, "--method", "kd", "--teacher-ckpt", _ckpt_text(t)),
                  ("is not a PyTorch checkpoint", "torch.save(model.state_dict(), path)")),
    "ckpt whole model": (lambda t, r, m: run_args(r, "--method", "kd", "--teacher-ckpt", _ckpt_whole_model(t)),
                         ("pickled Python objects", "never arbitrary pickles", "torch.save(model.state_dict(), path)")),
    "ckpt empty": (lambda t, r, m: run_args(r, "--method", "kd", "--teacher-ckpt", _ckpt_empty(t)), ("is empty",)),
    # 5: stores that cannot be read or written
    "results is a file": (lambda t, r, m: run_args(_a_file(t), *METHOD_FLAGS), ("is not a folder",)),
    "read-only store": (lambda t, r, m: _read_only(r, m) or run_args(r, *METHOD_FLAGS),
                        ("cannot write the results store", "Permission denied")),
    "sweep into a file": (lambda t, r, m: ["sweep", _sweep_spec(t), "--results", _a_file(t), "--no-progress"],
                          ("is not a folder",)),
    "sweep into a read-only store": (lambda t, r, m: _read_only(r, m) or ["sweep", _sweep_spec(t), "--results", r,
                                                                          "--no-progress"],
                                     ("cannot write the results store", "Permission denied")),
    # 4: an image folder that cannot make a classifier
    "one class": (lambda t, r, m: ["run", "--dataset", "imagefolder", "--data-root", write_class_folders(t, ("cat",)),
                                   "--method", "ce", "--student", TINY_STUDENT, *BUDGET_FLAGS, "--results", r],
                  ("one class only", "at least 2 classes")),
    "class missing from val": (
        lambda t, r, m: ["run", "--dataset", "imagefolder",
                         "--data-root", write_class_folders(t, ("cat", "dog", "fox"), val_classes=("cat", "dog")),
                         "--method", "ce", "--student", TINY_STUDENT, *BUDGET_FLAGS, "--results", r],
        ("class 'fox' has no images in", "val")),
    # 11: a folder given as a sweep spec
    "sweep spec is a folder": (lambda t, r, m: (t / "specs").mkdir() or ["sweep", t / "specs", "--results", r],
                               ("is a folder, not a file",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_before_any_training(name, tmp_path, capsys, monkeypatch):
    build, fragments = CASES[name]
    results = tmp_path / "results"
    args = build(tmp_path, results, monkeypatch)
    code, out, err = cli(args, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not record_files(results)


@pytest.mark.parametrize(
    ("name", "fragments"),
    [("record path is a folder", ("is a folder, not a file",)),
     ("report --baseline nope", ("unknown baseline 'nope'",)),
     ("report --baseline kdd", ("unknown baseline 'kdd'", "did you mean", "'kd'"))],
)
def test_bad_input_on_a_done_store_is_one_line_exit_2_and_changes_nothing(name, fragments, copied_store, tmp_path,
                                                                         capsys):
    if name == "record path is a folder":
        _record_dir(copied_store)
        args = run_args(copied_store, *METHOD_FLAGS, "--retry-failed")
    else:
        args = ["report", "--results", copied_store, "--out", tmp_path / "reports", "--baseline", name.split()[-1]]
    before = record_files(copied_store)
    code, _, err = cli(args, capsys)
    assert_one_line_error(code, err, *fragments)
    assert record_files(copied_store) == before
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------------------------
# 2, 3, 7: a record that breaks the contract is not done: moved aside with one line, trained again


def _without(*keys: str) -> Callable[[dict], str]:
    return lambda record: json.dumps({k: v for k, v in record.items() if k not in keys})


CORRUPTIONS: dict[str, Callable[[dict], str]] = {
    "ok without figures": lambda record: json.dumps({"run_id": record["run_id"], "status": "ok"}),
    "top1 deleted": _without("top1"),
    "history deleted": _without("history"),
    "a list": lambda record: "[1, 2, 3]",
    "empty object": lambda record: "{}",
    "not JSON": lambda record: json.dumps(record)[:-20],
    "top1 a string": lambda record: json.dumps({**record, "top1": "high"}),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_an_invalid_record_is_moved_aside_with_one_line_and_trained_again(kind, copied_store, capsys, recwarn):
    path = kd_record(copied_store)
    bad = CORRUPTIONS[kind](json.loads(path.read_text()))
    path.write_text(bad)
    code, out, err = cli(run_args(copied_store, *METHOD_FLAGS), capsys)
    assert code == 0, err
    assert "2 runs: 1 to train, 1 already done" in err
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("kdbench: warning: invalid run record"), err
    assert path.name in warnings[0] and "its run counts as not done" in warnings[0]
    assert "Traceback" not in err and not [w for w in recwarn.list if issubclass(w.category, UserWarning)]
    (moved,) = (copied_store / Store.CORRUPT).iterdir()
    assert moved.read_text() == bad  # kept, not overwritten
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["top1"] >= 0 and record["history"]
    assert "nan" not in out


@pytest.mark.slow
def test_a_store_with_one_corrupt_record_of_each_kind_reports_the_valid_runs_and_retrains_only_the_broken(
        tmp_path, capsys, one_torch_thread):
    results = tmp_path / "results"
    args = run_args(results, *METHOD_FLAGS, "--seeds", "0", "1", "2", "3")
    assert main(args) == 0
    paths = sorted(store.runs_dir(results).glob("*.json"))
    assert len(paths) == 8
    broken = dict(zip(paths, CORRUPTIONS.values(), strict=False))
    for path, corrupt in broken.items():
        path.write_text(corrupt(json.loads(path.read_text())))
    valid = {p.name: p.read_bytes() for p in paths if p not in broken}
    assert len(broken) == len(CORRUPTIONS) and len(valid) == 1
    capsys.readouterr()

    code, out, err = cli(["report", "--results", results, "--out", tmp_path / "reports", "--format", "csv"], capsys)
    assert code == 0, err
    assert err.count("kdbench: warning: invalid run record") == len(broken)
    (runs_csv,) = (tmp_path / "reports").rglob("runs.csv")
    import pandas as pd

    assert sorted(pd.read_csv(runs_csv)["run_id"] + ".json") == sorted(valid)  # every valid run, nothing else
    assert "nan" not in out.lower()

    code, out, err = cli(args, capsys)
    assert code == 0, err
    assert f"8 runs: {len(broken)} to train, {len(valid)} already done" in err
    assert {p.name: p.read_bytes() for p in paths if p.name in valid} == valid  # the valid record untouched
    assert {r["status"] for r in store.iter_records(results)} == {"ok"} and len(list(store.iter_records(results))) == 8


# ---------------------------------------------------------------------------------------------------------------
# 1: the run id covers the data of a dataset read from disk


def folder_args(root: Path, results: Path) -> list:
    return ["run", "--dataset", "imagefolder", "--data-root", root, "--image-size", "8", "--data-option", "workers=0",
            "--method", "ce", "--student", TINY_STUDENT, *BUDGET_FLAGS, "--results", results]


def test_two_image_folders_under_one_name_are_two_runs(tmp_path, capsys, one_torch_thread):
    a = write_class_folders(tmp_path / "a", ("cat", "dog"))
    b = write_class_folders(tmp_path / "b", ("owl", "eel", "bat"), shade=60)
    results = tmp_path / "results"
    code, _, err = cli(folder_args(a, results), capsys)
    assert code == 0, err
    code, _, err = cli(folder_args(b, results), capsys)
    assert code == 0, err
    assert "1 to train, 0 already done" in err
    records = list(store.iter_records(results))
    assert len(records) == 2 and len({r["data_fingerprint"] for r in records}) == 2
    assert {r["num_classes"] for r in records} == {2, 3}
    code, _, err = cli(folder_args(a, results), capsys)
    assert code == 0 and "0 to train, 1 already done" in err  # the same folder is the same run


@pytest.mark.slow
def test_the_fingerprint_follows_the_files_and_the_engine_refuses_changed_data(tmp_path):
    from kdbench.data import DataConfig, dataset_fingerprint
    from kdbench.errors import DataError
    from kdbench.options import ExecOptions
    from kdbench.plan import make_spec
    from kdbench.scheduler import execute

    root = write_class_folders(tmp_path / "data", ("cat", "dog"))
    config = DataConfig("imagefolder", root=str(root))
    first = dataset_fingerprint(config)
    assert first == dataset_fingerprint(config)
    assert dataset_fingerprint(DataConfig("digits")) is None  # fixed by its name, as CIFAR: specs need no data
    spec = make_spec(dataset="imagefolder", student=TINY_STUDENT, method="ce", teacher=None, epochs=1,
                     image_size=8, data_options={"workers": 0}, data_root=str(root))
    assert spec.data_fingerprint == first
    Image.new("RGB", (10, 10), (1, 2, 3)).save(root / "train" / "cat" / "new.png")  # one more image
    second = dataset_fingerprint(config)
    assert second != first
    (root / "train" / "cat" / "new.png").write_bytes((root / "train" / "cat" / "img0.png").read_bytes())  # edited
    os.utime(root / "train" / "cat" / "new.png", ns=(1, 1))
    assert dataset_fingerprint(config, cached=False) not in (first, second)
    with pytest.raises(DataError, match="not the data the runs were planned on"):
        execute([spec], ExecOptions(results=tmp_path / "results", data_root=str(root), progress=False,
                                    measure=False, log=lambda line: None))


# ---------------------------------------------------------------------------------------------------------------
# 9 and 12: a run that cannot start is recorded with its whole spec; exit codes say what happened

BROKEN_PLUGIN = textwrap.dedent('''
    """A method whose constructor fails."""
    from dataclasses import dataclass

    from kdbench.distiller import Distiller, register_method


    @register_method("broken")
    class Broken(Distiller):
        """Fails when built."""

        needs_teacher = False

        @dataclass(frozen=True)
        class Params:
            weight: float = 1.0

        def __init__(self, *args, **kwargs):
            raise RuntimeError("this method cannot be built")

        def losses(self, step):
            raise AssertionError("never trained")
''')


def test_a_failed_run_carries_its_whole_spec_and_makes_exit_code_1(copied_store, tmp_path, capsys, method_sandbox):
    from kdbench.report.aggregate import leaderboard

    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PLUGIN)
    code, out, err = cli(run_args(copied_store, "--method", "ce", "--method", "broken", "--plugin", plugin,
                                  "--set", "broken.weight=2"), capsys)
    assert code == 1, err
    assert "FAILED broken(weight=2)" in err and "this method cannot be built" in err
    records = {r["method"]: r for r in store.iter_records(copied_store)}
    broken, ce = records["broken"], records["ce"]
    assert broken["status"] == "failed" and broken["method_label"] == "broken(weight=2)"
    for key in ("image_size", "num_classes", "in_chans", "epochs", "batch_size", "lr", "data_fingerprint"):
        assert broken[key] == ce[key], key
    board = leaderboard(store.load(copied_store))
    assert board["budget_key"].nunique() == 1  # in the group of its pair, not a group of its own
    code, _, err = cli(run_args(copied_store, "--method", "ce", "--method", "broken", "--plugin", plugin,
                                "--set", "broken.weight=2"), capsys)
    assert code == 1 and "1 failed before" in err  # a failure stays visible in the exit code until retried


def test_exit_codes_ok_and_interrupted(copied_store, capsys, monkeypatch):
    code, _, err = cli(run_args(copied_store, *METHOD_FLAGS), capsys)
    assert code == 0 and "0 to train, 2 already done" in err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdbench.commands.run.schedule", interrupted)
    code, _, err = cli(run_args(copied_store, *METHOD_FLAGS, "--seeds", "5"), capsys)
    assert code == 130 and "interrupted" in err


# ---------------------------------------------------------------------------------------------------------------
# Issue 28 item 5: hyperparameters outside their meaning (each method's Params and the run settings declare their
# valid ranges once; --set, sweep specs and tune trials are checked against them before anything runs)


def _sweep_with(tmp_path: Path, methods: str) -> Path:
    path = tmp_path / "ranges.yaml"
    path.write_text(f"dataset: digits\nepochs: 1\nteacher_epochs: 1\npairs: [{{teacher: {TINY_TEACHER}, "
                    f"student: {TINY_STUDENT}}}]\nmethods: {methods}\ndevice: cpu\n")
    return path


RANGE_CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "negative kd weight": (lambda t, r, m: run_args(r, "--method", "kd", "--set", "kd.kd_weight=-1"),
                           ("kd.kd_weight must be >= 0 (got -1.0)",)),
    "zero temperature": (lambda t, r, m: run_args(r, "--method", "dkd", "--set", "dkd.temperature=0"),
                         ("dkd.temperature must be > 0 (got 0.0)",)),
    "probability above 1": (lambda t, r, m: run_args(r, "--method", "tfkd", "--set", "tfkd.correct_prob=1.5"),
                            ("tfkd.correct_prob must be in (0, 1] (got 1.5)",)),
    "depth outside [0, 1]": (lambda t, r, m: run_args(r, "--method", "at", "--set", "at.depths=0.5,2"),
                             ("at.depths must be a list of values in [0, 1]", "[0.5, 2.0]")),
    "momentum 1.5": (lambda t, r, m: run_args(r, "--method", "ce", "--momentum", "1.5"),
                     ("momentum must be in [0, 1) (got 1.5)",)),
    "momentum 1": (lambda t, r, m: run_args(r, "--method", "ce", "--momentum", "1"),
                   ("momentum must be in [0, 1)",)),
    "negative weight decay": (lambda t, r, m: run_args(r, "--method", "ce", "--weight-decay=-0.1"),
                              ("weight decay must be >= 0 (got -0.1)",)),
    "sweep grid value out of range": (
        lambda t, r, m: ["sweep", _sweep_with(t, "{kd: {kd_weight: [0.9, -1]}}"), "--results", r, "--no-progress"],
        ("kd.kd_weight must be >= 0 (got -1.0)",)),
    "sweep method param out of range": (
        lambda t, r, m: ["sweep", _sweep_with(t, "{crd: {momentum: 1.0}}"), "--results", r, "--no-progress"],
        ("crd.momentum must be in [0, 1) (got 1.0)",)),
}


@pytest.mark.parametrize("name", list(RANGE_CASES))
def test_a_value_outside_its_declared_range_is_one_line_exit_2_before_any_training(name, tmp_path, capsys,
                                                                                  monkeypatch):
    build, fragments = RANGE_CASES[name]
    results = tmp_path / "results"
    code, out, err = cli(build(tmp_path, results, monkeypatch), capsys)
    assert_one_line_error(code, err, *fragments)
    assert not record_files(results)
