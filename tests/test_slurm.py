"""The Slurm executor end to end on `digits`, through submitit's local executor (jobs as local processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from kdbench.plan import expand
from kdbench.results import iter_records
from tests.conftest import TINY_STUDENT, TINY_TEACHER


@pytest.mark.slow
def test_a_sweep_runs_as_jobs_and_resumes(tmp_path):
    spec = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64,
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd"], "seeds": [0]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "kdbench", "sweep", "sweep.yaml", "--results", "results", "--executor", "slurm",
               "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_SLURM_CLUSTER": "local"}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    expected = {s.run_id for s in expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)],
                                         methods={"ce": {}, "kd": {}}, seeds=[0], epochs=1, teacher_epochs=1,
                                         batch_size=64)}
    records = {r["run_id"]: r for r in iter_records(tmp_path / "results")}
    assert set(records) == expected and all(r["status"] == "ok" for r in records.values())
    assert len(list((tmp_path / "results" / "teachers").glob("*.pt"))) == 1
    assert list((tmp_path / "results" / "slurm").iterdir())  # submitit's job folders
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert again.returncode == 0 and "0 to train in 0 cohorts, 2 already done" in again.stderr


def test_the_slurm_executor_without_submitit_is_one_line(tmp_path, capsys, monkeypatch):
    from kdbench.cli import main

    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "digits", "student": TINY_STUDENT, "methods": ["ce"]}))
    code = main(["sweep", str(spec), "--executor", "slurm", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "kdbench: error: the slurm executor needs submitit: pip install 'kdbench[slurm]'"
    assert not (tmp_path / "results").exists()
