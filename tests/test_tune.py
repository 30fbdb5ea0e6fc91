"""Equal-budget tuning: search spaces, tune specs, studies, resume after kill -9, and a search that never reads test."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdbench.distiller import discover_methods, get_method, list_methods
from kdbench.options import ExecOptions
from kdbench.sweep import SpecError, parse_sweep_spec
from kdbench.tune import (
    harness_search_space,
    load_summaries,
    method_search_space,
    parse_tune_spec,
    plan_studies,
    repair_journal,
    run_tune,
)
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import trial_records, tune_data

discover_methods()

# ---------------------------------------------------------------------------------------------------------------
# Search spaces


@pytest.mark.parametrize("name", list_methods())
def test_every_declared_search_space_is_valid_and_holds_the_default(name):
    cls = get_method(name)
    defaults = cls.Params()
    for param in method_search_space(cls):
        default = getattr(defaults, param.name)
        if param.kind == "categorical":
            assert default in param.choices, f"{name}.{param.name}: default {default!r} not among the choices"
        else:
            assert param.low <= default <= param.high, f"{name}.{param.name}: default {default} outside the range"
        param.distribution()  # Optuna accepts it
        overrides = {param.name: param.normalise(param.low if param.kind != "categorical" else param.choices[0])}
        cls.Params(**overrides)  # the method accepts the end of its own range


def test_builtins_declare_their_papers_knobs():
    declared = {name: {p.name for p in method_search_space(get_method(name))} for name in list_methods()}
    assert {"temperature", "kd_weight"} <= declared["kd"]
    assert "beta" in declared["at"] and "hint_weight" in declared["fitnets"]
    assert declared["ce"] == set()  # the baseline is tuned through lr and weight decay only


def test_harness_space_spans_a_decade_either_side_of_the_budget_on_a_log_scale():
    lr, wd = harness_search_space({"lr": 0.05, "weight_decay": 5e-4})
    assert (lr.low, lr.high, lr.log) == pytest.approx((0.005, 0.5, True))
    assert (wd.low, wd.high, wd.log) == pytest.approx((5e-5, 5e-3, True))
    _, wd = harness_search_space({"lr": 0.05, "weight_decay": 0.0})
    assert wd.low > 0
    lr, _ = harness_search_space({"lr": 0.05, "weight_decay": 5e-4}, lr=(0.01, 0.1))
    assert (lr.low, lr.high) == (0.01, 0.1)


def test_fixed_parameters_are_not_searched():
    names = {p.name for p in method_search_space(get_method("kd"), fixed={"temperature": 2.0})}
    assert "temperature" not in names and "kd_weight" in names


# ---------------------------------------------------------------------------------------------------------------
# Specs and studies


def test_a_tune_spec_is_a_sweep_spec_with_a_tune_section():
    data = tune_data()
    spec = parse_tune_spec(data)
    assert spec.settings.trials == 3 and spec.sweep.seeds == (0, 1)
    assert parse_sweep_spec(data).dataset == "digits"  # `kdbench sweep` reads the same file (its defaults)
    assert parse_tune_spec(data, trials=7).settings.trials == 7  # --trials wins


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": {"kd": {"temperature": [2, 4]}}}, "fixes one value per parameter"),
    ({"val_fraction": 0.0}, "validation split"),
    ({"tune": {"trails": 3}}, "did you mean 'trials'"),
    ({"tune": {"lr": [0.1, 0.01]}}, "0 < low < high"),
    ({"tune": {"trials": 0}}, "trials must be >= 1"),
    ({"pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT, "method_params": {"kd": {"temperature": 2}}}]},
     "fixes parameters in methods, not per pair"),
])
def test_tune_spec_problems_are_one_line_each(change, message):
    with pytest.raises(SpecError) as caught:
        parse_tune_spec({**tune_data(), **change})
    assert any(message in line for line in caught.value.lines), caught.value.lines


def test_one_study_per_pair_and_method_and_one_baseline_study_per_student():
    data = tune_data()
    data["pairs"] = [{"teacher": TINY_TEACHER, "student": TINY_STUDENT},
                     {"teacher": "test_vit", "student": TINY_STUDENT}]
    plans = plan_studies(parse_tune_spec(data))
    assert sorted(p.method for p in plans) == ["ce", "kd", "kd"]  # ce has no teacher: one study serves both pairs
    assert len({p.name for p in plans}) == 3
    assert plan_studies(parse_tune_spec(data)) == plans  # names are stable


def test_trials_keep_the_teacher_and_never_share_a_run_id_with_final_runs():
    from kdbench.config import cohort_key
    from kdbench.teachers import teacher_key

    kd = next(p for p in plan_studies(parse_tune_spec(tune_data())) if p.method == "kd")
    base = kd.default_params()
    other = {**base, "lr": 0.2, "weight_decay": 1e-3, "temperature": 2.0}
    trial_a, trial_b = kd.run_spec(base, 0, "val"), kd.run_spec(other, 0, "val")
    assert trial_a.eval_split == trial_b.eval_split == "val"
    assert teacher_key(trial_a) == teacher_key(trial_b)  # tuning lr / weight decay does not retrain the teacher
    assert cohort_key(trial_a) == cohort_key(trial_b)  # so trials train together on one teacher pass
    final = kd.run_spec(base, 0, "test")
    assert final.run_id != trial_a.run_id
    assert final.run_id == kd.default_run_specs()[0].run_id  # the default configuration is the sweep's own run


def test_a_torn_journal_line_is_cut_and_complete_lines_stay(tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"op":1}\n{"op":2}\n{"op":3,"wor')
    assert repair_journal(journal)
    assert journal.read_bytes() == b'{"op":1}\n{"op":2}\n'
    assert not repair_journal(journal)


# ---------------------------------------------------------------------------------------------------------------
# Search and final runs


def _options(results: Path) -> ExecOptions:
    return ExecOptions(results=results, device="cpu", progress=False, measure=False)


@pytest.mark.slow
def test_every_method_gets_the_same_budget_and_the_best_trial_is_retrained_on_test(tmp_path, one_torch_thread):
    results = tmp_path / "results"
    plans = plan_studies(parse_tune_spec(tune_data(methods=("ce", "kd", "tfkd"), trials=3, seeds=(0,))))
    outcome = run_tune(plans, _options(results))
    assert not outcome.unfinished
    trials = trial_records(results)
    per_method = {m: sum(r["method"] == m for r in trials) for m in ("ce", "kd", "tfkd")}
    assert per_method == {"ce": 3, "kd": 3, "tfkd": 3}  # equal budget, in records
    for summary in outcome.summaries:
        assert summary["trials_used"] == 3 and summary["complete"]
        values = [t["value"] for t in summary["trials"] if t["value"] is not None]
        assert summary["best"]["value"] == max(values)
        final = json.loads((results / "runs" / f"{summary['final_run_ids'][0]}.json").read_text())
        assert final["eval_split"] == "test" and final["status"] == "ok"
        best = summary["best"]["params"]
        assert final["lr"] == best["lr"] and final["weight_decay"] == best["weight_decay"]
        assert all(final["method_params"][k] == v for k, v in best.items() if k not in ("lr", "weight_decay"))
    first = {s["study"]: s["trials"][0]["params"] for s in outcome.summaries}
    for plan in plans:  # the first trial of each study is the method's default configuration
        assert first[plan.name] == plan.default_params()
    again = run_tune(plans, _options(results))  # nothing left to do: no new trial, no new record
    assert len(trial_records(results)) == 9
    assert [s["trials_used"] for s in again.summaries] == [3, 3, 3]


# ---------------------------------------------------------------------------------------------------------------
# The search never reads the test split


class _Guard:
    armed = False
    reads: list[str] = []


@pytest.fixture
def guarded_digits():
    """``digits_guarded``: digits whose test split raises when it is touched while the guard is armed."""
    from kdbench.data.base import DATASETS, DataConfig, DatasetSource, Splits, register_dataset

    class GuardedSplits(Splits):
        def __init__(self, inner: Splits) -> None:
            self.inner, self.info = inner, inner.info

        def _touch(self, split: str) -> None:
            if split == "test":
                _Guard.reads.append(split)
                if _Guard.armed:
                    raise AssertionError("the test split was read during the search")

        def train_batches(self, batch_size, generator, augment=True):
            return self.inner.train_batches(batch_size, generator, augment)

        def eval_batches(self, split, batch_size):
            self._touch(split)
            return self.inner.eval_batches(split, batch_size)

        def num_batches(self, split, batch_size):
            if split != "train":
                self._touch(split)
            return self.inner.num_batches(split, batch_size)

        def labels(self, split):
            self._touch(split)
            return self.inner.labels(split)

    @register_dataset("digits_guarded")
    class GuardedDigits(DatasetSource):
        """digits whose test split raises while the guard is armed (for tests)."""

        def describe(self, config: DataConfig):
            return DATASETS.get("digits").describe(dataclasses.replace(config, name="digits"))

        def load(self, config: DataConfig):
            return GuardedSplits(DATASETS.get("digits").load(dataclasses.replace(config, name="digits")))

    _Guard.armed, _Guard.reads = False, []
    yield _Guard
    _Guard.armed = False
    DATASETS.unregister("digits_guarded")


@pytest.mark.slow
def test_the_search_never_reads_the_test_split(tmp_path, guarded_digits, one_torch_thread):
    from kdbench.scheduler import execute
    from kdbench.tune import StudyStore, search

    results = tmp_path / "results"
    spec = parse_tune_spec({**tune_data(methods=("ce", "kd"), trials=2, seeds=(0,)), "dataset": "digits_guarded"})
    plans = plan_studies(spec)
    guarded_digits.armed = True
    with contextlib.suppress(AssertionError):  # the guard is live: a run evaluated on test trips it
        execute(plans[0].default_run_specs(), _options(tmp_path / "probe"))
    probe_reads = len(guarded_digits.reads)
    assert probe_reads >= 1
    states = search([StudyStore(results, plan) for plan in plans], _options(results), log=lambda line: None)
    assert all(state.done for state in states)
    assert len(guarded_digits.reads) == probe_reads  # the search itself never touched the test split
    trials = trial_records(results)
    assert len(trials) == 4 and all(r["teacher_top1"] is not None for r in trials if r["method"] == "kd")
    guarded_digits.armed = False
    outcome = run_tune(plans, _options(results))  # now the final runs read test, and only they do
    assert all(s["complete"] and len(s["final_run_ids"]) == 1 for s in outcome.summaries)
    assert len(trial_records(results)) == 4


# ---------------------------------------------------------------------------------------------------------------
# The command: end to end, report, and resume after kill -9


def _write_spec(tmp_path: Path, **kwargs: object) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(tune_data(**kwargs)))
    return path


@pytest.mark.slow
def test_kdbench_tune_end_to_end_and_its_report(tmp_path, one_torch_thread, capsys):
    from kdbench.cli import main

    results, out = tmp_path / "results", tmp_path / "reports"
    spec = _write_spec(tmp_path, methods=("ce", "kd"), trials=3, seeds=(0, 1))
    args = ["--results", str(results), "--device", "cpu", "--no-progress"]
    assert main(["tune", str(spec), "--dry-run", *args]) == 0
    assert "0 of 3 trials done" in capsys.readouterr().out
    assert main(["tune", str(spec), *args]) == 0
    printed = capsys.readouterr().out
    assert "kd [tuned, 3 trials]" in printed and "ce [tuned, 3 trials]" in printed
    assert len(load_summaries(results)) == 2
    assert main(["report", "--results", str(results), "--out", str(out), "--format", "md,csv,png"]) == 0
    board = (out / "leaderboard.md").read_text()
    assert "| Tuning |" in board and "3 trials" in board and "defaults" in board
    tuning = (out / "tuning.md").read_text()
    assert "kd" in tuning and "3/3" in tuning and "lr=" in tuning
    assert (out / "tuning_curves.png").stat().st_size > 0
    rows = (out / "leaderboard.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 4  # ce, kd, and their tuned rows: no trial record (scored on val) mixed into the table


@pytest.mark.slow
def test_kdbench_tune_resumes_after_kill_9_without_recomputing_finished_trials(tmp_path):
    results = tmp_path / "results"
    spec = _write_spec(tmp_path, methods=("ce", "kd"), trials=4, seeds=(0,))
    command = [sys.executable, "-m", "kdbench", "tune", str(spec), "--results", str(results), "--device", "cpu",
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(trial_records(results)) < 3 and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {r["run_id"]: r["created_at"] for r in trial_records(results)}
    assert 0 < len(before) < 8, "the kill should land in the middle of the search"
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    after = {r["run_id"]: r["created_at"] for r in trial_records(results)}
    assert all(after[run_id] == created for run_id, created in before.items())  # never trained again
    summaries = load_summaries(results)
    assert sorted(s["trials_used"] for s in summaries) == [4, 4]  # the studies continued to their budget
    assert len(after) == 8 and all(s["complete"] and s["final_run_ids"] for s in summaries)


def test_kdbench_tune_reports_every_spec_problem_in_one_line_each(tmp_path, capsys):
    from kdbench.cli import main

    data = {**tune_data(), "methods": {"kd": {"temperature": [2, 4]}}, "tune": {"trails": 3}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["tune", str(path), "--results", str(tmp_path / "results")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("kdbench: error: ") for line in errors)
    assert not (tmp_path / "results").exists()  # nothing written


def test_list_methods_verbose_shows_each_search_space(capsys):
    from kdbench.cli import main

    assert main(["list", "methods", "kd", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "temperature in [1, 8]" in out and "lr and weight decay" in out


@pytest.mark.slow
def test_two_tune_processes_on_one_store_share_the_studies_without_exceeding_the_budget(tmp_path):
    results = tmp_path / "results"
    spec = _write_spec(tmp_path, methods=("ce", "kd"), trials=4, seeds=(0,))
    command = [sys.executable, "-m", "kdbench", "tune", str(spec), "--results", str(results), "--device", "cpu",
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    errors = [worker.communicate(timeout=600)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    # the one that finished first may have left the other's last trials (and so the final runs) to it
    assert subprocess.run(command, capture_output=True, env=env, timeout=600).returncode == 0
    trials = trial_records(results)
    assert {m: sum(r["method"] == m for r in trials) for m in ("ce", "kd")} == {"ce": 4, "kd": 4}
    summaries = load_summaries(results)
    assert sorted(s["trials_used"] for s in summaries) == [4, 4]  # asked under a lock: never more than the budget
    assert all(s["complete"] and s["final_run_ids"] for s in summaries)
