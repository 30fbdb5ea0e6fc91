"""``kdbench sweep`` under torchrun (the local executor, CPU, gloo, 2 processes): every rank trains the same cohorts,
rank 0 decides and speaks; a failing teacher ends every rank at once; what does not run under torchrun is one line.

The refusals and the printing rules are checked in process with torchrun's environment variables (the code path
before any process group is joined); the sweeps themselves under torchrun.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdbench import cli, distributed
from kdbench.engine import shared_error
from kdbench.errors import DataError, KDBenchError, ModelError
from tests.conftest import TINY_STUDENT, TINY_TEACHER, as_rank

#: the collectives' timeout in the torchrun tests; each launch must end well before it (a hang cannot pass)
DIST_TIMEOUT = 300
LAUNCH_TIMEOUT = 240


def write_spec(folder: Path, **overrides) -> Path:
    spec = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64,
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd"], "seeds": [0]}
    spec.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def torchrun(args: list[str], nproc: int = 2) -> tuple[subprocess.CompletedProcess[str], float]:
    """``torchrun --standalone --nproc-per-node N -m kdbench ARGS``: the finished process and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: str(DIST_TIMEOUT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
               "kdbench", *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env, check=False)
    return done, time.perf_counter() - started


def kdbench_traceback(text: str) -> bool:
    """A Python traceback through kdbench's own code (torchrun's report of a failed child goes through torch's)."""
    return re.search(r'File "[^"]*kdbench[/\\](?!__main__)', text) is not None


# ---------------------------------------------------------------------------------------------------------------
# In process: refusals and who prints


@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_ray_and_slurm_executors_are_refused_under_torchrun_in_one_line(tmp_path, capsys, monkeypatch, executor):
    spec = write_spec(tmp_path)
    results = tmp_path / "results"
    as_rank(monkeypatch, 0)
    assert cli.main(["sweep", str(spec), "--executor", executor, "--results", str(results), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"kdbench: error: --executor {executor} does not run under torchrun" in err
    as_rank(monkeypatch, 1)  # the same error on every rank; rank 0 prints it
    assert cli.main(["sweep", str(spec), "--executor", executor, "--results", str(results), "--device", "cpu"]) == 2
    assert capsys.readouterr() == ("", "")
    assert not results.exists()


def test_a_bad_flag_under_torchrun_is_printed_by_rank_0_only(capsys, monkeypatch):
    for rank, printed in ((1, False), (0, True)):
        as_rank(monkeypatch, rank)
        assert cli.main(["run", "--epochs", "zero"]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert (len(err.strip().splitlines()) == 1 and "error:" in err) if printed else err == ""


def test_other_ranks_read_the_teacher_and_never_train_one(tmp_path):
    """Under torchrun only rank 0 trains a teacher; a rank that cannot find it (a cache that is not shared) says so."""
    from kdbench.data import DataConfig, load_dataset
    from kdbench.plan import expand
    from kdbench.teachers import prepare_teacher

    (spec,) = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"kd": {}}, seeds=[0],
                     epochs=1, teacher_epochs=1)
    splits = load_dataset(DataConfig("digits"))
    with pytest.raises(KDBenchError, match="not in the teacher cache .* file system every node shares"):
        prepare_teacher(spec, splits, torch.device("cpu"), tmp_path / "teachers", log=lambda _: None, train=False)
    assert not list((tmp_path / "teachers").glob("*.pt"))
    trained = prepare_teacher(spec, splits, torch.device("cpu"), tmp_path / "teachers", log=lambda _: None)
    read = prepare_teacher(spec, splits, torch.device("cpu"), tmp_path / "teachers", log=lambda _: None, train=False)
    assert read.sha256 == trained.sha256


def test_tune_is_refused_under_torchrun_in_one_line(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, tune={"trials": 2})
    as_rank(monkeypatch, 0)
    assert cli.main(["tune", str(spec), "--results", str(tmp_path / "results"), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "kdbench: error: kdbench tune does not run under torchrun" in err and "without torchrun" in err
    assert not (tmp_path / "results").exists()


def test_a_dry_run_under_torchrun_prints_on_rank_0_only(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    args = ["sweep", str(spec), "--dry-run", "--results", str(tmp_path / "results"), "--device", "cpu"]
    as_rank(monkeypatch, 1)
    assert cli.main(args) == 0
    assert capsys.readouterr() == ("", "")
    as_rank(monkeypatch, 0)
    assert cli.main(args) == 0
    out, _ = capsys.readouterr()
    assert "2 runs: 2 to train in 1 cohort" in out and "1 to train" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("error", [ModelError("the teacher ran out of memory\nsecond line"), DataError("gone"),
                                   KDBenchError("plain"), RuntimeError("CUDA error: device-side assert")])
def test_rank_0s_error_reaches_the_others_as_one_line_of_the_same_kind(error):
    copy = pickle.loads(pickle.dumps(shared_error(error)))  # what broadcast_object_list does to it
    first = str(error).splitlines()[0]
    if isinstance(error, KDBenchError):
        assert type(copy) is type(error) and str(copy) == first
    else:
        assert type(copy) is KDBenchError and str(copy) == f"RuntimeError: {first}"
    assert copy.from_rank0


def test_rank_0_prints_the_errors_every_rank_has_and_a_rank_its_own(monkeypatch):
    shared, own = shared_error(ModelError("teacher failed")), DataError("this rank's disk is full")
    as_rank(monkeypatch, 1)
    assert not cli.reports(own)  # before the process group: a check every rank made alike
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(2, 1, 1))  # joined
    assert not cli.reports(shared) and cli.reports(own)
    as_rank(monkeypatch, 0)
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(2, 0, 0))
    assert cli.reports(shared) and cli.reports(own)


# ---------------------------------------------------------------------------------------------------------------
# Under torchrun


def records(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((results / "runs").glob("*.json"))}


@pytest.mark.slow
def test_a_two_process_sweep_writes_each_record_once_and_a_second_launch_trains_nothing(tmp_path):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    args = ["sweep", str(spec), "--results", str(results), "--device", "cpu", "--no-progress"]
    done, _ = torchrun(args)
    assert done.returncode == 0, done.stderr[-3000:]
    first = records(results)
    assert len(first) == 2
    for text in first.values():
        record = json.loads(text)
        assert record["status"] == "ok", record["error"]
        assert record["world_size"] == 2 and record["batch_size"] == 64
    assert sorted(json.loads(t)["method"] for t in first.values()) == ["ce", "kd"]
    assert len(list((results / "teachers").glob("*.pt"))) == 1
    # rank 0 alone speaks: one headline, one line per finished run, one leaderboard
    assert done.stderr.count("2 runs: 2 to train in 1 cohort") == 1, done.stderr[-3000:]
    assert len(re.findall(r"^done +", done.stderr, flags=re.MULTILINE)) == 2, done.stderr[-3000:]
    assert done.stderr.count("2 of 2 runs ok") == 1
    assert done.stdout.count(f"-> {TINY_STUDENT}") == 1, done.stdout  # one leaderboard, with its two rows
    assert re.findall(r"^ *(ce|kd) ", done.stdout, flags=re.MULTILINE) == ["ce", "kd"], done.stdout

    again, _ = torchrun(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert records(results) == first  # resumed: nothing trained, no record rewritten
    assert again.stderr.count("0 to train in 0 cohorts, 2 already done") == 1, again.stderr[-3000:]
    assert not re.search(r"^done +", again.stderr, flags=re.MULTILINE)


@pytest.mark.slow
def test_a_failing_teacher_ends_a_torchrun_sweep_at_once_with_one_error_line(tmp_path):
    # a teacher learning rate that makes its loss NaN at its second step: its training fails on rank 0
    spec = write_spec(tmp_path, methods=["kd"], seeds=[0, 1], teacher_lr=1.0e30)
    results = tmp_path / "results"
    done, wall = torchrun(["sweep", str(spec), "--results", str(results), "--device", "cpu", "--no-progress"])
    assert done.returncode != 0 and wall < DIST_TIMEOUT
    err = done.stderr
    assert err.count("kdbench: error: teacher test_resnet (digits, 1 epochs): training the teacher") == 1, err[-3000:]
    assert err.count("FAILED teacher") == 1 and err.count("its teacher failed") == 1, err[-3000:]
    assert "0 of 2 runs ok" in err and not kdbench_traceback(err), err[-3000:]
    assert records(results) == {}


@pytest.mark.slow
def test_a_failing_teacher_fails_every_rank_of_kdbench_run_with_one_error_line(tmp_path):
    results = tmp_path / "results"
    done, wall = torchrun(["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT,
                           "--method", "kd", "--epochs", "1", "--teacher-epochs", "1", "--teacher-lr", "1e30",
                           "--batch-size", "64", "--device", "cpu", "--no-progress", "--results", str(results)])
    assert done.returncode != 0 and wall < DIST_TIMEOUT
    err = done.stderr
    assert err.count("kdbench: error: teacher test_resnet (digits, 1 epochs): training the teacher 'test_resnet' "
                     "failed: non-finite loss") == 1, err[-3000:]  # as a sweep says it: kdbench run is one
    assert not kdbench_traceback(err), err[-3000:]  # rank 1 raised rank 0's error instead of waiting at a barrier
    assert records(results) == {}
