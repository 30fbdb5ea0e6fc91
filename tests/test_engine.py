"""The engine: determinism, resume, cohorts vs solo, failures, teacher cache, teacher-free runs, claims."""

from __future__ import annotations

import dataclasses
import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

import kdbench.training as training
from kdbench.distiller import Distiller, Step, register_method
from kdbench.options import ExecOptions
from kdbench.plan import expand, make_plan
from kdbench.results import read_record, write_record
from kdbench.scheduler import execute
from kdbench.store import Store
from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing

BUDGET = dict(epochs=2, teacher_epochs=1, batch_size=64, lr=0.05)


def specs_for(methods, seeds=(0,), **kw):
    return expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods=methods, seeds=list(seeds),
                  **{**BUDGET, **kw})


def options(results: Path, **kw) -> ExecOptions:
    notes: list[str] = []
    return ExecOptions(results=results, device="cpu", progress=False, measure=False, log=notes.append, **kw)


@pytest.mark.slow
def test_records_have_the_contract_fields(results):
    (record,) = execute(specs_for({"kd": {}}), options(results))
    contract = [
        "run_id", "status", "error", "dataset", "teacher", "student", "method", "method_params", "seed", "epochs",
        "batch_size", "lr", "top1", "top5", "nll", "ece", "agreement", "teacher_top1", "val_top1", "params_m",
        "extra_params_m", "train_time_s", "train_samples_per_s", "device", "torch_version", "timm_version",
        "kdbench_version", "git_commit", "created_at", "history",
    ]
    assert [f for f in contract if f not in record] == []
    assert record["status"] == "ok" and record["error"] is None
    assert 0 <= record["top1"] <= 100 and 0 <= record["agreement"] <= 100 and 0 <= record["teacher_top1"] <= 100
    assert record["top5"] >= record["top1"]
    assert record["params_m"] > 0 and record["extra_params_m"] == 0
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert {"loss", "loss_ce", "loss_kd", "lr", "train_top1", "val_top1", "time_s"} <= set(record["history"][0])
    assert record["teacher_source"] == "trained" and len(record["teacher_sha256"]) == 64


@pytest.mark.slow
def test_same_spec_gives_the_same_record_twice(tmp_path):
    specs = specs_for({"ce": {}, "kd": {}})
    first = execute(specs, options(tmp_path / "a"))
    second = execute(specs, options(tmp_path / "b"))
    assert [strip_timing(r) for r in first] == [strip_timing(r) for r in second]


@pytest.mark.slow
def test_cohort_and_solo_training_give_identical_records(tmp_path):
    specs = specs_for({"ce": {}, "kd": {"temperature": [2.0, 4.0]}})
    cohort = execute(specs, options(tmp_path / "a", teacher_cache=tmp_path / "teachers"))
    solo = execute(specs, options(tmp_path / "b", teacher_cache=tmp_path / "teachers", cohort=False))
    assert [r["cohort_size"] for r in cohort] == [3, 3, 3]
    assert [r["cohort_size"] for r in solo] == [1, 1, 1]
    assert [strip_timing(r) for r in cohort] == [strip_timing(r) for r in solo]


@pytest.mark.slow
def test_resume_trains_nothing_the_second_time(results, monkeypatch):
    specs = specs_for({"ce": {}, "kd": {}})
    execute(specs, options(results))
    assert len(make_plan(specs, options(results)).pending) == 0

    def boom(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("kdbench.engine.train_members", boom)
    monkeypatch.setattr("kdbench.engine.prepare_teacher", boom)
    records = execute(specs, options(results))
    assert [r["status"] for r in records] == ["ok", "ok"]


@register_method("nan_after_first_step")
class NanAfterFirstStep(Distiller):
    """A broken method for tests: its loss is NaN from the second step on."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        """None."""

    def losses(self, step: Step) -> dict[str, Tensor]:
        loss = torch.nn.functional.cross_entropy(step.student_logits, step.labels)
        return {"loss_ce": loss * (float("nan") if step.iteration > 0 else 1.0)}


@pytest.mark.slow
def test_non_finite_loss_fails_that_run_only(results):
    specs = specs_for({"ce": {}, "nan_after_first_step": {}, "kd": {}})
    records = {r["method"]: r for r in execute(specs, options(results))}
    bad = records["nan_after_first_step"]
    assert bad["status"] == "failed" and "non-finite loss at epoch 1, step 2" in bad["error"]
    assert bad.get("top1") is None  # a failed run reports no accuracy
    assert records["ce"]["status"] == records["kd"]["status"] == "ok"
    # failed runs are retried only when asked
    assert [s.method for s in make_plan(specs, options(results)).failed] == ["nan_after_first_step"]
    assert [s.method for s in make_plan(specs, options(results, retry_failed=True)).pending] == [
        "nan_after_first_step"]


@pytest.mark.slow
def test_teacher_is_trained_once_and_shared(tmp_path, monkeypatch):
    calls = []
    real = training.train_members

    def counting(members, *args, **kwargs):
        calls.append([m.spec.method for m in members])
        return real(members, *args, **kwargs)

    monkeypatch.setattr("kdbench.teachers.train_members", counting)
    cache = tmp_path / "teachers"
    execute(specs_for({"kd": {}}, seeds=(0, 1)), options(tmp_path / "a", teacher_cache=cache))
    execute(specs_for({"kd": {"temperature": [2.0]}}), options(tmp_path / "b", teacher_cache=cache))
    assert calls == [["ce"]]  # one teacher training for three runs in two stores
    assert len(list(cache.glob("*.pt"))) == 1 and len(list(cache.glob("*.json"))) == 1


@pytest.mark.slow
def test_corrupt_cached_teacher_is_retrained(results):
    notes: list[str] = []
    opts = dataclasses.replace(options(results), log=notes.append)
    (first,) = execute(specs_for({"kd": {}}), opts)
    (weights,) = (results / "teachers").glob("*.pt")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    (second,) = execute(specs_for({"kd": {}}, seeds=(1,)), opts)
    assert any("corrupt" in n for n in notes)
    assert second["status"] == "ok"
    assert second["teacher_sha256"] == first["teacher_sha256"]  # retrained to the same weights (deterministic)


@pytest.mark.slow
def test_teacher_free_methods_never_touch_a_teacher(results, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher was used")

    monkeypatch.setattr("kdbench.engine.prepare_teacher", no_teacher)
    monkeypatch.setattr(training.forward, "teacher_forward", no_teacher)
    (record,) = execute(specs_for({"ce": {}}), options(results))
    assert record["status"] == "ok" and record["teacher"] is None and record["teacher_source"] == "none"
    assert record["agreement"] is None and record["teacher_top1"] is None
    assert not (results / "teachers").exists()


@pytest.mark.slow
def test_a_run_claimed_by_another_process_is_skipped(results):
    (spec,) = specs_for({"ce": {}})
    claims = results / Store.CLAIMS
    claims.mkdir(parents=True)
    with (claims / f"{spec.run_id}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # another process holds it (flock is per open file)
        assert execute([spec], options(results)) == []
    assert read_record(results, spec.run_id) is None
    assert execute([spec], options(results))[0]["status"] == "ok"  # released: it runs


@pytest.mark.slow
def test_a_run_finished_elsewhere_while_planning_is_not_rerun(results, monkeypatch):
    (spec,) = specs_for({"ce": {}})
    done = {**spec.as_dict(), "run_id": spec.run_id, "status": "ok", "top1": 50.0, "history": [], "marker": 1}

    real_read = read_record

    def finished_meanwhile(path, run_id):
        write_record(path, done)  # another process finished it after this one planned
        return real_read(path, run_id)

    monkeypatch.setattr("kdbench.plan.read_record", lambda path, run_id: None)  # planning: not done yet
    monkeypatch.setattr("kdbench.engine.read_record", finished_meanwhile)  # the check under the claim
    execute([spec], options(results))
    assert json.loads((results / "runs" / f"{spec.run_id}.json").read_text())["marker"] == 1


def test_learning_rate_schedules():
    (spec,) = specs_for({"ce": {}}, epochs=10)
    assert training.learning_rate(spec, 0) == pytest.approx(0.05)
    assert training.learning_rate(spec, 5) == pytest.approx(0.025)
    assert training.learning_rate(spec, 10) == pytest.approx(0.0, abs=1e-12)
    ms = dataclasses.replace(spec, schedule="multistep", milestones=(3, 6), lr_decay=0.1)
    assert [round(training.learning_rate(ms, e), 6) for e in (0, 2.9, 3, 5.5, 6, 9)] == [
        0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005]
    warm = dataclasses.replace(spec, warmup_epochs=2)
    assert training.learning_rate(warm, 1) == pytest.approx(0.025, rel=1e-6)
    assert training.learning_rate(warm, 2) == pytest.approx(0.05)
