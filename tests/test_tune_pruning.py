"""Pruning in `kdbench tune`: settings, the epoch hook, pruned records, and a search that prunes end to end."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdbench.distiller import discover_methods
from kdbench.engine import claimed
from kdbench.executors import worker_fields
from kdbench.options import ExecOptions
from kdbench.plan import make_plan
from kdbench.results import read_record, record_problem, write_record
from kdbench.sweep import SpecError
from kdbench.training import Member, RunPruned
from kdbench.tune import PruningHook, TrialRef, TuneSettings, intermediate_values, parse_tune_spec, plan_studies
from tests.conftest import TINY_STUDENT
from tests.helpers import trial_records, tune_data

discover_methods()


def prune_data(**tune: object) -> dict:
    data = tune_data(methods=("ce", "kd"), trials=4, seeds=(0,))
    return {**data, "epochs": 3, "tune": {"trials": 4, "prune": True, **tune}}


# ---------------------------------------------------------------------------------------------------------------
# Settings


def test_pruning_is_off_by_default_and_on_from_the_spec_or_the_flag():
    assert not parse_tune_spec(prune_data(prune=False)).settings.prune
    assert not parse_tune_spec(tune_data()).settings.prune
    settings = parse_tune_spec(prune_data()).settings
    assert settings.prune and settings.prune_warmup == 1  # the first decision comes after the second epoch
    assert parse_tune_spec(prune_data(prune=False), prune=True).settings.prune  # --prune wins over the spec
    assert not parse_tune_spec(prune_data(), prune=False).settings.prune  # and so does --no-prune


@pytest.mark.parametrize(("change", "message"), [
    ({"tune": {"prune": True, "prune_warmup": -1}}, "tune.prune_warmup must be >= 0 epochs (got -1)"),
    ({"tune": {"prune": "often"}}, "tune.prune"),
    ({"epochs": 2, "tune": {"prune": True}}, "with 2 epochs no trial can be pruned"),
    ({"epochs": 3, "tune": {"prune": True, "prune_warmup": 2}}, "with 3 epochs no trial can be pruned"),
    ({"tune": {"prune": True, "prune_warmpu": 1}}, "did you mean 'prune_warmup'"),
])
def test_pruning_problems_are_one_line_each(change, message):
    with pytest.raises(SpecError) as caught:
        parse_tune_spec({**prune_data(), **change})
    assert any(message in line for line in caught.value.lines), caught.value.lines
    assert all("\n" not in line for line in caught.value.lines)


def test_a_study_that_prunes_is_another_study_and_one_that_does_not_keeps_its_name():
    def names(data: dict) -> list[str]:
        return [plan.name for plan in plan_studies(parse_tune_spec(data))]

    plain = names(prune_data(prune=False))
    assert names({**prune_data(), "tune": {"trials": 4}}) == plain  # prune: false is the study it always was
    pruned = names(prune_data())
    assert set(pruned).isdisjoint(plain)
    assert set(names(prune_data(prune_warmup=0))).isdisjoint(pruned)  # the pruner's settings are its identity
    assert set(names(prune_data(startup_trials=1))).isdisjoint(pruned)


# ---------------------------------------------------------------------------------------------------------------
# Steps, the hook, the pruned status


def test_steps_count_main_phase_epochs_from_zero_across_generations():
    history = [{"phase": "init", "epoch": 1, "val_top1": None},
               {"phase": "train", "epoch": 1, "val_top1": 20.0, "generation": 0},
               {"phase": "train", "epoch": 2, "val_top1": 30.0, "generation": 0},
               {"phase": "train", "epoch": 1, "val_top1": None, "generation": 1},
               {"phase": "train", "epoch": 2, "val_top1": 45.5, "generation": 1}]
    assert intermediate_values(history) == {0: 20.0, 1: 30.0, 3: 45.5}


def test_the_hook_pickles_for_workers_and_gives_listeners_to_its_trials_only(tmp_path):
    plan = plan_studies(parse_tune_spec(prune_data()))[0]
    spec = plan.run_spec(plan.default_params(), 0, "val")
    hook = PruningHook({spec.run_id: TrialRef(str(tmp_path / "s.journal"), plan.name, 0, plan.settings)})
    options = ExecOptions(results=tmp_path, epoch_hook=hook)
    fields = worker_fields(options)
    rebuilt = ExecOptions(**pickle.loads(pickle.dumps(fields)), progress=False, log=print)
    assert rebuilt.epoch_hook.trials == hook.trials
    assert rebuilt.epoch_hook(spec) is not None
    other = plan.run_spec(plan.default_params(), 1, "val")
    assert rebuilt.epoch_hook(other) is None  # not a trial of this batch: no listener
    off = PruningHook({spec.run_id: TrialRef("j", plan.name, 0, TuneSettings(prune=False))})
    assert off(spec) is None


def test_a_pruned_member_stops_with_status_pruned_and_a_failure_stays_failed():
    member = types.SimpleNamespace(status="running", error=None)
    Member.fail(member, RunPruned("pruned after epoch 2 of 5: best validation top-1 31.5% below the median"))
    assert member.status == "pruned" and member.error.startswith("pruned after epoch 2 of 5")
    Member.fail(member, ValueError("boom"))
    assert member.status == "failed" and member.error == "ValueError: boom"


def _record(status: str, **extra: object) -> dict:
    return {"run_id": "r1", "status": status, "dataset": "digits", "student": TINY_STUDENT, "method": "ce",
            "seed": 0, "method_params": {}, "eval_split": "val", **extra}


def test_the_record_contract_accepts_a_pruned_record_and_rejects_an_unknown_status():
    pruned = _record("pruned", error="pruned after epoch 1 of 3", history=[{"phase": "train", "val_top1": 10.0}])
    assert record_problem(pruned, "r1") is None  # no test figures: it stopped early
    assert record_problem({**pruned, "history": None}) == "it has no history"
    assert "not one of ok, failed, pruned" in record_problem({**pruned, "status": "stopped"})
    assert record_problem(_record("failed", error="x")) is None


def test_a_pruned_run_is_finished_even_when_failed_runs_are_retried(tmp_path):
    plan = plan_studies(parse_tune_spec(prune_data()))[0]
    specs = [plan.run_spec(plan.default_params(), seed, "val") for seed in (0, 1)]
    write_record(tmp_path, {**_record("pruned", history=[]), **specs[0].as_dict(), "run_id": specs[0].run_id})
    write_record(tmp_path, {**_record("failed", error="x"), **specs[1].as_dict(), "run_id": specs[1].run_id})
    retry = ExecOptions(results=tmp_path, retry_failed=True)
    plan_retry = make_plan(specs, retry)
    assert [s.run_id for s in plan_retry.done] == [specs[0].run_id]
    assert [s.run_id for s in plan_retry.pending] == [specs[1].run_id]
    with claimed(tmp_path, specs, retry_failed=True) as mine:
        assert [s.run_id for s in mine] == [specs[1].run_id]


# ---------------------------------------------------------------------------------------------------------------
# End to end: a knob whose every value but the default learns the wrong labels


WRONG_LABELS = '''\
"""A test method: cross-entropy on the labels, shifted by one class whenever its knob is not 0."""
from dataclasses import dataclass, field

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method, tunable


@register_method("wrong_labels")
class WrongLabels(Distiller):
    """A search space with one good configuration: the default (shift = 0); any other learns wrong labels."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        """Attributes: shift: train on the labels shifted by one class when not 0."""

        shift: float = field(default=0.0, metadata=tunable(0.0, 1.0))

    def losses(self, step):
        """Cross-entropy."""
        labels = step.labels if self.params.shift == 0 else (step.labels + 1) % step.student_logits.shape[1]
        return {"loss_ce": F.cross_entropy(step.student_logits, labels)}
'''


def _prune_spec(tmp_path: Path) -> Path:
    """A study of ``wrong_labels`` whose trials after the first (its default) all trail it: they are pruned."""
    (tmp_path / "wrong_labels.py").write_text(WRONG_LABELS)
    data = {**tune_data(methods=("wrong_labels",), trials=3, seeds=(0,)), "epochs": 3, "lr": 0.1,
            "plugins": ["wrong_labels.py"],
            "tune": {"trials": 3, "startup_trials": 1, "lr": [0.09, 0.11], "weight_decay": [4e-4, 6e-4],
                     "defaults": False}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_kdbench_tune_prunes_trials_that_trail_and_counts_them_against_the_budget(tmp_path, method_sandbox,
                                                                                   one_torch_thread, capsys):
    import optuna

    from kdbench.cli import main
    from kdbench.tune import load_summaries

    results = tmp_path / "results"
    spec = _prune_spec(tmp_path)
    args = ["tune", str(spec), "--prune", "--results", str(results), "--device", "cpu", "--no-progress"]
    assert main(args) == 0  # pruned trials are no failure
    trials = sorted(trial_records(results), key=lambda r: r["created_at"])
    assert len(trials) == 3
    by_status = {r["run_id"]: r["status"] for r in trials}
    default = next(r for r in trials if r["method_params"]["shift"] == 0)
    assert default["status"] == "ok" and len(default["history"]) == 3
    pruned = [r for r in trials if r["status"] == "pruned"]
    assert len(pruned) == 2  # every other configuration learns the wrong labels and trails the default
    for record in pruned:
        assert len(record["history"]) == 2 and record.get("top1") is None  # stopped after its second epoch
        assert record["error"].startswith("pruned after epoch 2 of 3: best validation top-1")
    (summary,) = load_summaries(results)
    assert summary["trials_used"] == 3 and summary["trials_pruned"] == 2 and summary["complete"]
    assert summary["pruner"] == {"kind": "median", "startup_trials": 1, "warmup_epochs": 1}
    assert summary["best"]["number"] == 0 and summary["best"]["params"]["shift"] == 0
    study = optuna.load_study(study_name=summary["study"],
                              storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                                  str(results / "tuning" / f"{summary['study']}.journal"))))
    states = {t.number: t.state for t in study.trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.PRUNED,
                      2: optuna.trial.TrialState.PRUNED}
    assert sorted(study.trials[0].intermediate_values) == [0, 1, 2]
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials[1:])
    assert all(t.value == t.intermediate_values[1] for t in study.trials[1:])  # a pruned trial's last value
    (final,) = [read_record(results, run_id) for run_id in summary["final_run_ids"]]
    assert final["status"] == "ok" and final["eval_split"] == "test" and final["method_params"]["shift"] == 0
    assert "(2 pruned)" in capsys.readouterr().out

    stamps = {r["run_id"]: r["created_at"] for r in trial_records(results)}
    assert main(args) == 0  # again: nothing new, nothing retrained
    assert main([*args, "--retry-failed"]) == 0  # and a pruned trial is not a failure to retry
    assert {r["run_id"]: r["created_at"] for r in trial_records(results)} == stamps
    assert {r["run_id"]: r["status"] for r in trial_records(results)} == by_status
    assert json.loads((results / "tuning" / f"{summary['study']}.json").read_text())["trials_used"] == 3


def test_tuning_curves_take_the_best_of_complete_trials_only_and_mark_the_pruned_ones():
    from kdbench.report.tuning import _curve, plot_tuning_curves, tuning_display, tuning_note, tuning_table

    trials = [{"number": 0, "state": "complete", "value": 50.0, "used": True},
              {"number": 1, "state": "pruned", "value": 70.0, "used": True},  # an early epoch's value: not a result
              {"number": 2, "state": "running", "value": None, "used": False},
              {"number": 3, "state": "complete", "value": 60.0, "used": True}]
    summary = {"study": "s", "dataset": "digits", "teacher": None, "student": TINY_STUDENT, "method": "ce",
               "label": "ce", "trials": trials, "trials_used": 3, "trials_requested": 4, "trials_pruned": 1,
               "best": {"number": 3, "value": 60.0, "params": {"lr": 0.1}}, "space": []}
    assert _curve(summary) == ([1, 2, 3], [50.0, 50.0, 60.0], [2])
    figure = plot_tuning_curves([summary])
    assert "pruned trial" in [t.get_text() for t in figure.legends[0].get_texts()]
    table = tuning_table(pd.DataFrame(), [summary])
    assert table["trials_pruned"].tolist() == [1]
    assert tuning_display(table).rows[0][4] == "3/4 (1 pruned)"
    assert "pruned trial" in tuning_note(table).lower()


@pytest.mark.slow
def test_trials_are_pruned_in_ray_workers_too(ray_cluster, tmp_path):
    spec = _prune_spec(tmp_path)
    command = [sys.executable, "-m", "kdbench", "tune", spec.name, "--prune", "--results", "results", "--executor",
               "ray", "--ray-address", ray_cluster, "--num-cpus", "1", "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    trials = trial_records(tmp_path / "results")
    assert sorted(r["status"] for r in trials) == ["ok", "pruned", "pruned"]  # the hook travelled to the workers
    assert all(len(r["history"]) == 2 for r in trials if r["status"] == "pruned")
    assert done.stderr.count("PRUNED wrong_labels") == 2
