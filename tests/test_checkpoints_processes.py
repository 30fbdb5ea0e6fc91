"""Checkpoints across real process deaths: SIGKILL at random moments, and a Slurm job preempted and requeued.

The in-process interruption tests (``tests/test_checkpoints.py``) choose their points exactly; these kill real
processes wherever they happen to be (a step, the validation, a checkpoint being written, the record being
written), several times over, and then let the run finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.store import Store
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import computed

ARGS = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "kd",
        "--method", "ab", "--method", "crd", "--set", "ab.init_epochs=1", "--epochs", "2", "--teacher-epochs", "1",
        "--batch-size", "64", "--device", "cpu", "--no-progress", "--checkpoint-minutes", "0.0001"]
def kdbench(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), read from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def records(results: Path) -> dict[str, dict]:
    out = {}
    for path in Store(results).record_paths():
        record = json.loads(path.read_text())
        out[record["run_id"]] = computed(record, measured=True)
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_records(tmp_path):
    teachers = tmp_path / "teachers"
    reference = kdbench(*ARGS, "--results", str(tmp_path / "reference"), "--teacher-cache", str(teachers))
    out, err = reference.communicate(timeout=1500)
    assert reference.returncode == 0, err[-2000:]
    expected = records(tmp_path / "reference")
    assert len(expected) == 3

    results = tmp_path / "results"
    store = Store(results)
    chance = random.Random(20261206)
    kills = 0
    for _ in range(3):
        proc = kdbench(*ARGS, "--results", str(results), "--teacher-cache", str(teachers))
        started = time.monotonic()
        while proc.poll() is None and not list(store.checkpoints_dir.glob("*.pt")):
            if time.monotonic() - started > 600:
                break
            time.sleep(0.2)
        time.sleep(chance.uniform(0.2, 3.0))  # somewhere after the first checkpoint
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 2  # the runs did not all finish before being killed
    final = kdbench(*ARGS, "--results", str(results), "--teacher-cache", str(teachers))
    out, err = final.communicate(timeout=1500)
    assert final.returncode == 0, err[-2000:]
    got = records(results)
    differences = {rid: sorted(k for k in set(got[rid]) | set(expected[rid]) if got[rid].get(k) != expected[rid].get(k))
                   for rid in expected}
    assert got == expected, differences
    assert not list(store.checkpoints_dir.glob("*.pt"))


@pytest.mark.slow
def test_a_preempted_slurm_job_is_requeued_and_resumes_from_its_checkpoints(tmp_path):
    submitit = pytest.importorskip("submitit")
    from kdbench.executors.tasks import RequeueableCohort, worker_fields
    from kdbench.options import ExecOptions
    from kdbench.plan import expand
    from kdbench.scheduler import execute

    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"kd": {}, "crd": {}},
                   seeds=[0], epochs=2, teacher_epochs=1, batch_size=64, lr=0.05)
    teachers = tmp_path / "teachers"

    def options(results: Path) -> ExecOptions:
        return ExecOptions(results=results, teacher_cache=teachers, device="cpu", progress=False, measure=False,
                           log=lambda line: None)

    expected = {r["run_id"]: computed(r, measured=True) for r in execute(specs, options(tmp_path / "reference"))}
    results = tmp_path / "results"
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=30)
    job = executor.submit(RequeueableCohort(), specs, worker_fields(options(results)), [], 0.0, "[1/1]")
    store = Store(results)
    started = time.monotonic()
    while not list(store.checkpoints_dir.glob("*.pt")) and time.monotonic() - started < 900:
        assert not job.done(), job.stderr()
        time.sleep(0.2)
    # what Slurm does before preempting a job: the preemption signal to the job's task (submitit's local controller
    # runs the task as its child; the controller itself only forwards SIGTERM)
    (task,) = [pid for pid in descendants(job._process.pid)
               if "submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    os.kill(task, signal.SIGUSR2)
    result = job.result()
    assert result["error"] is None and sorted(result["finished"]) == sorted(expected)
    log = (job.stderr() or "") + (job.stdout() or "")
    assert "Requeued" in log or "requeue" in log.lower(), log[-2000:]
    assert records(results) == expected


@pytest.mark.slow
def test_a_torchrun_cohort_killed_mid_run_resumes_from_rank_0s_checkpoint(tmp_path):
    from kdbench import distributed

    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "300"}
    teachers = tmp_path / "teachers"
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "kd",
            "--method", "crd", "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu",
            "--no-progress", "--teacher-cache", str(teachers)]

    def launch(results: Path) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                   "kdbench", *args, "--results", str(results)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    reference = launch(tmp_path / "reference")
    _, err = reference.communicate(timeout=1200)
    assert reference.returncode == 0, err[-2000:]
    expected = records(tmp_path / "reference")

    results = tmp_path / "results"
    store = Store(results)
    first = launch(results)
    started = time.monotonic()
    while first.poll() is None and not list(store.checkpoints_dir.glob("*.pt")) and time.monotonic() - started < 900:
        time.sleep(0.2)
    assert first.poll() is None, "the runs finished before a checkpoint could be interrupted"
    for pid in [first.pid, *descendants(first.pid)]:  # torchrun and both ranks (in process groups of their own)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert not store.runs_dir.exists() or not list(store.record_paths())
    second = launch(results)
    _, err = second.communicate(timeout=1200)
    assert second.returncode == 0, err[-2000:]
    got = records(results)
    for rec in (*got.values(), *expected.values()):
        rec.pop("world_size", None)
    assert got == expected
