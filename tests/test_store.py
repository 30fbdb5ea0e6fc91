from __future__ import annotations

import json
import math
import os

import pytest

from kdbench import results as store
from kdbench.errors import DataError
from kdbench.store import Store


def record(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "status": "ok", "dataset": "digits", "student": "s", "method": "kd", "seed": 0,
            "top1": 50.0, "history": [], "method_params": {"t": 4}, **extra}


def test_write_then_load_round_trip(tmp_path):
    store.write_record(tmp_path, record("a", history=[{"epoch": 1}]))
    store.write_record(tmp_path, record("b", top5=float("nan")))
    frame = store.load(tmp_path)
    assert sorted(frame["run_id"]) == ["a", "b"]
    row_b = frame.set_index("run_id").loc["b"]
    assert row_b["top5"] is None or math.isnan(row_b["top5"])
    assert json.loads(frame.loc[0, "method_params_json"]) == {"t": 4}
    assert store.run_statuses(tmp_path) == {"a": "ok", "b": "ok"}


def test_records_are_strict_json(tmp_path):
    path = store.write_record(tmp_path, record("a", top5=float("inf")))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["top5"] is None


def test_interrupted_write_leaves_no_record(tmp_path, monkeypatch):
    def crash(src, dst):
        raise KeyboardInterrupt  # the process is stopped between fsync and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_record(tmp_path, record("a"))
    monkeypatch.undo()
    assert store.read_record(tmp_path, "a") is None
    assert list(store.runs_dir(tmp_path).iterdir()) == []  # no temporary file left behind
    assert store.load(tmp_path).empty


def test_overwrite_is_atomic_and_complete(tmp_path):
    store.write_record(tmp_path, record("a", status="failed"))
    store.write_record(tmp_path, record("a", status="ok"))
    assert store.read_record(tmp_path, "a")["status"] == "ok"
    assert len(list(store.runs_dir(tmp_path).glob("*.json"))) == 1


def test_unreadable_record_is_set_aside_with_one_kdbench_warning_line(tmp_path, capsys, recwarn):
    store.write_record(tmp_path, record("a"))
    (store.runs_dir(tmp_path) / "broken.json").write_text("{not json")
    assert list(store.load(tmp_path)["run_id"]) == ["a"]
    assert list(store.load(tmp_path)["run_id"]) == ["a"]  # read twice: still one line
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: warning: invalid run record") and "broken.json" in lines[0]
    assert "not valid JSON" in lines[0] and "moved it to" in lines[0]
    assert not recwarn.list  # kdbench's own line, not a Python UserWarning
    (moved,) = (tmp_path / Store.CORRUPT).iterdir()
    assert moved.read_text() == "{not json" and not (store.runs_dir(tmp_path) / "broken.json").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2, 3]", "a list, not a JSON object"),
        ("{}", "no run_id"),
        ('{"run_id": "x", "status": "ok"}', "no dataset"),
        ("NaN", "a number, not a JSON object"),
        (json.dumps(record("x", top1=None)), "no top1"),
        (json.dumps({k: v for k, v in record("x").items() if k != "history"}), "no history"),
        (json.dumps(record("x", top1="high")), "top1 is a string"),
        (json.dumps(record("x", top1=float("nan"))), "top1 is not finite"),
        (json.dumps(record("x", seed=True)), "seed is a boolean"),
        (json.dumps(record("x", status="done")), "status is 'done'"),
        (json.dumps(record("y")), "run_id 'y' is not its file name's"),
        (json.dumps(record("x", params_m="1M")), "params_m is a string"),
    ],
)
def test_a_record_that_breaks_the_contract_counts_as_not_done(tmp_path, capsys, content, problem):
    path = store.record_path(tmp_path, "x")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert store.read_record(tmp_path, "x") is None
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1, err
    assert not path.exists() and len(list((tmp_path / Store.CORRUPT).iterdir())) == 1


def test_valid_records_pass_the_contract():
    assert store.record_problem(record("a")) is None
    assert store.record_problem(record("a", status="failed", top1=None, history=None, error="boom")) is None
    assert store.record_problem(record("a"), run_id="a") is None


def test_a_record_that_cannot_be_moved_aside_is_skipped_with_one_line(tmp_path, capsys, monkeypatch):
    path = store.record_path(tmp_path, "x")
    path.parent.mkdir(parents=True)
    path.write_text("{}")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)  # a read-only store
    assert store.read_record(tmp_path, "x") is None
    assert store.read_record(tmp_path, "x") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "could not move it aside: Permission denied" in lines[0]
    assert path.exists()


def test_a_record_path_that_is_a_folder_is_one_error(tmp_path):
    store.record_path(tmp_path, "x").mkdir(parents=True)
    with pytest.raises(DataError, match="is a folder, not a file"):
        store.read_record(tmp_path, "x")
    with pytest.raises(DataError, match="is a folder, not a file"):
        store.load(tmp_path)


def test_a_store_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        store.read_record(tmp_path / "file", "x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        store.check_writable(tmp_path / "file")


def test_missing_store_loads_empty(tmp_path):
    assert store.load(tmp_path / "nowhere").empty
