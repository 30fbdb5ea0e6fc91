from __future__ import annotations

import json
import math
import os

import pytest

from kdbench import results as store


def record(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "status": "ok", "top1": 50.0, "method_params": {"t": 4}, **extra}


def test_write_then_load_round_trip(tmp_path):
    store.write_record(tmp_path, record("a", history=[{"epoch": 1}]))
    store.write_record(tmp_path, record("b", top1=float("nan")))
    frame = store.load(tmp_path)
    assert sorted(frame["run_id"]) == ["a", "b"]
    row_b = frame.set_index("run_id").loc["b"]
    assert row_b["top1"] is None or math.isnan(row_b["top1"])
    assert json.loads(frame.loc[0, "method_params_json"]) == {"t": 4}
    assert store.run_statuses(tmp_path) == {"a": "ok", "b": "ok"}


def test_records_are_strict_json(tmp_path):
    path = store.write_record(tmp_path, record("a", top1=float("inf")))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["top1"] is None


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


def test_unreadable_record_is_skipped_with_a_warning(tmp_path):
    store.write_record(tmp_path, record("a"))
    (store.runs_dir(tmp_path) / "broken.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        frame = store.load(tmp_path)
    assert list(frame["run_id"]) == ["a"]


def test_missing_store_loads_empty(tmp_path):
    assert store.load(tmp_path / "nowhere").empty
