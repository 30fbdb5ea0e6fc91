"""--log: each run's per-epoch history streamed to TensorBoard event files and MLflow's file store, offline."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.errors import ConfigError
from kdbench.plan import make_spec
from kdbench.trackers import attach_trackers, check_trackers, epoch_metrics, finish_trackers
from tests.conftest import TINY_STUDENT

HISTORY = [
    {"phase": "init", "epoch": 1, "lr": 0.05, "loss_init": 0.7, "train_top1": None, "val_top1": None, "time_s": 0.5},
    {"phase": "train", "epoch": 1, "lr": 0.05, "loss_ce": 2.0, "train_top1": 30.0, "val_top1": 40.0, "time_s": 1.0},
    {"phase": "train", "epoch": 2, "lr": 0.0, "loss_ce": 1.5, "train_top1": 50.0, "val_top1": 60.0, "time_s": 1.0},
]
RECORD = {"run_id": "x", "status": "ok", "top1": 61.5, "best_val_top1": 60.0, "error": None}


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("kdbench").experiment_id])
    return client, run


def fake_member(tmp_path: Path) -> types.SimpleNamespace:
    spec = make_spec(dataset="digits", student=TINY_STUDENT, method="ce", teacher=None, epochs=2)
    return types.SimpleNamespace(spec=spec, label="ce", history=[], epoch_listeners=[])


def train_fake(member: types.SimpleNamespace) -> None:
    """What Member.end_epoch does with each entry: append it, then tell the listeners."""
    for entry in HISTORY:
        member.history.append(entry)
        for listener in member.epoch_listeners:
            listener(entry)


def test_epoch_metrics_are_the_numbers_of_an_entry():
    assert epoch_metrics(HISTORY[0]) == {"init/lr": 0.05, "init/loss_init": 0.7, "init/time_s": 0.5}
    assert epoch_metrics(HISTORY[1]) == {"lr": 0.05, "loss_ce": 2.0, "train_top1": 30.0, "val_top1": 40.0,
                                         "time_s": 1.0}


def test_unknown_and_missing_trackers_are_one_line(monkeypatch, tiny_run_args, results, capsys):
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        check_trackers(["neptune"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--log mlflow needs the mlflow package: pip install 'kdbench\[mlflow\]'"):
        check_trackers(["tensorboard", "mlflow"])
    assert main([*tiny_run_args, "--method", "ce", "--log", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kdbench: error: --log mlflow needs the mlflow package: pip install 'kdbench[mlflow]'"
    assert not (results / "runs").exists()


def test_tensorboard_gets_every_history_entry_and_the_summary(tmp_path):
    pytest.importorskip("tensorboard")
    member = fake_member(tmp_path)
    notes: list[str] = []
    trackers = attach_trackers(["tensorboard"], member, tmp_path, notes.append)
    train_fake(member)
    finish_trackers(trackers, RECORD, notes.append)
    assert notes == [] and all(t.closed for t in trackers)
    scalars = tensorboard_scalars(tmp_path / "tensorboard" / member.spec.run_id)
    assert scalars["init/loss_init"] == [(1, pytest.approx(0.7))]
    assert scalars["loss_ce"] == [(2, pytest.approx(2.0)), (3, pytest.approx(1.5))]
    assert scalars["val_top1"] == [(2, 40.0), (3, 60.0)]
    assert scalars["final/top1"] == [(0, 61.5)]


def test_mlflow_gets_params_every_history_entry_and_the_outcome(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    member = fake_member(tmp_path)
    notes: list[str] = []
    trackers = attach_trackers(["mlflow"], member, tmp_path, notes.append)
    train_fake(member)
    finish_trackers(trackers, {**RECORD, "status": "failed"}, notes.append)
    assert notes == []
    client, run = mlflow_run(tmp_path / "mlruns")
    assert run.info.run_name == member.spec.run_id and run.info.status == "FAILED"
    assert run.data.params["epochs"] == "2" and run.data.params["method"] == "ce"
    history = client.get_metric_history(run.info.run_id, "loss_ce")
    assert sorted((m.step, m.value) for m in history) == [(2, 2.0), (3, 1.5)]
    assert run.data.metrics["final_top1"] == 61.5


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path):
    pytest.importorskip("tensorboard")
    member = fake_member(tmp_path)
    notes: list[str] = []
    (tracker,) = attach_trackers(["tensorboard"], member, tmp_path, notes.append)

    def broken(metrics, step):
        raise OSError("disk full")

    tracker.log_epoch = broken
    train_fake(member)  # no exception
    assert len(notes) == 1 and "dropped TensorBoardTracker" in notes[0] and "disk full" in notes[0]
    tracker.close()


@pytest.mark.slow
def test_run_streams_its_history_to_tensorboard_and_mlflow(tiny_run_args, results, monkeypatch, one_torch_thread):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = [*tiny_run_args, "--method", "ce", "--epochs", "2", "--log", "tensorboard", "--log", "mlflow"]
    assert main(args) == 0
    import json

    (path,) = (results / "runs").glob("*.json")
    record = json.loads(path.read_text())
    history = record["history"]
    scalars = tensorboard_scalars(results / "tensorboard" / record["run_id"])
    assert scalars["train_top1"] == [(step, pytest.approx(e["train_top1"])) for step, e in enumerate(history, 1)]
    assert scalars["final/top1"] == [(0, pytest.approx(record["top1"]))]
    client, run = mlflow_run(results / "mlruns")
    assert run.info.run_name == record["run_id"] and run.info.status == "FINISHED"
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss_ce"))
    assert losses == [(step, pytest.approx(e["loss_ce"])) for step, e in enumerate(history, 1)]
