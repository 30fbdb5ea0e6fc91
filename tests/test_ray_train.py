"""``kdbench sweep --executor ray --gpus-per-run N``: each cohort trains data-parallel on N Ray Train workers.

On a local Ray cluster of CPUs (gloo): the records say ``world_size`` 2 and are written once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from kdbench.results import iter_records
from tests.conftest import TINY_STUDENT, TINY_TEACHER


@pytest.mark.slow
def test_a_cohort_trains_on_two_ray_train_workers(tmp_path):
    import ray  # the dev dependencies hold ray[train]
    temp_dir = tempfile.mkdtemp(prefix="kdrt", dir="/tmp")
    context = ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False,
                       _node_ip_address="127.0.0.1",  # loopback only: nothing leaves this machine
                       _temp_dir=temp_dir)
    try:
        spec = {"dataset": "digits", "epochs": 3, "teacher_epochs": 2, "batch_size": 64,
                "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd"], "seeds": [0]}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
        command = [sys.executable, "-m", "kdbench", "sweep", "sweep.yaml", "--results", "results", "--executor",
                   "ray", "--ray-address", context.address_info["gcs_address"], "--gpus-per-run", "2",
                   "--num-cpus", "1", "--device", "cpu", "--no-progress"]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-4000:]
        records = list(iter_records(tmp_path / "results"))
        assert len(records) == 2
        assert all(r["status"] == "ok" and r["world_size"] == 2 for r in records), records
        assert all(r["top1"] > 30.0 for r in records), [r["top1"] for r in records]  # chance: 10%
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_gpus_per_run_above_one_needs_the_ray_executor(tmp_path, capsys):
    from kdbench.cli import main

    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "digits", "student": TINY_STUDENT, "methods": ["ce"]}))
    assert main(["sweep", str(spec), "--gpus-per-run", "2", "--results", str(tmp_path / "r")]) == 2
    assert "--gpus-per-run must be >= 1 and needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_batch_smaller_than_the_gpus_per_run_is_one_line(tmp_path, capsys):
    from kdbench.cli import main

    pytest.importorskip("ray")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "digits", "student": TINY_STUDENT, "methods": ["ce"],
                                    "batch_size": 2}))
    assert main(["sweep", str(spec), "--executor", "ray", "--gpus-per-run", "4", "--results",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--batch-size 2 is smaller than the 4 processes" in err
    assert not (tmp_path / "r").exists()
