"""The Ray executor end to end on `digits`, against a real local Ray cluster that the test starts and stops."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import yaml

from kdbench.cli import main
from kdbench.plan import expand
from kdbench.results import iter_records
from tests.conftest import TINY_STUDENT, TINY_TEACHER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PID_PLUGIN = '''\
"""A test method: cross-entropy that notes the process it trains in."""
import os
from dataclasses import dataclass

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method


@register_method("pidlog")
class PidLog(Distiller):
    """Cross-entropy; appends the pid of the training process to a log file."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        """None."""

    def __init__(self, params, student, teacher, data):
        super().__init__(params, student, teacher, data)
        with open({log!r}, "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")

    def losses(self, step):
        """Cross-entropy."""
        return {{"loss_ce": F.cross_entropy(step.student_logits, step.labels)}}
'''


def test_a_sweep_runs_on_a_ray_cluster_and_gives_the_local_records(ray_cluster, tmp_path, capsys):
    pids = tmp_path / "pids.txt"
    (tmp_path / "pidlog.py").write_text(PID_PLUGIN.format(log=str(pids)))
    spec = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64,
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd", "pidlog"],
            "seeds": [0, 1], "plugins": ["pidlog.py"]}
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    results = tmp_path / "on ray"  # relative on the command line, absolute for the workers
    command = [sys.executable, "-m", "kdbench", "sweep", "sweep.yaml", "--results", results.name, "--executor", "ray",
               "--ray-address", ray_cluster, "--num-cpus", "1", "--no-progress"]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, stderr = driver.communicate(timeout=400)
    assert driver.returncode == 0, stderr[-4000:]
    assert "ray: 1 node(s), 2 CPUs" in stderr

    expected = {s.run_id for s in expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)],
                                         methods={"ce": {}, "kd": {}}, seeds=[0, 1], epochs=1, teacher_epochs=1,
                                         batch_size=64)}
    records = {r["run_id"]: r for r in iter_records(results)}
    assert expected <= set(records) and len(records) == 6
    assert all(r["status"] == "ok" for r in records.values())
    (weights,) = (results / "teachers").glob("*.pt")  # trained once, by the teacher task
    assert {r["teacher_sha256"] for r in records.values() if r["method"] == "kd"} == \
        {hashlib.sha256(weights.read_bytes()).hexdigest()}
    trained_in = pids.read_text().split()
    assert len(trained_in) == 2  # one pidlog run per seed, each trained once
    assert not set(trained_in) & {str(os.getpid()), str(driver.pid)}  # trained in Ray workers

    # the same sweep on the local executor finds every run done; a fresh local store gives the same accuracies
    code = main(["sweep", str(spec_path), "--results", str(results), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "0 to train in 0 cohorts, 6 already done" in err
    local = tmp_path / "local"
    assert main(["sweep", str(spec_path), "--results", str(local), "--device", "cpu", "--no-progress",
                 "--teacher-cache", str(results / "teachers")]) == 0
    capsys.readouterr()
    local_top1 = {r["run_id"]: r["top1"] for r in iter_records(local)}
    assert local_top1 == {run_id: r["top1"] for run_id, r in records.items()}


def test_the_ray_executor_without_ray_installed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "digits", "student": TINY_STUDENT, "methods": ["ce"]}))
    code = main(["sweep", str(spec), "--executor", "ray", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "kdbench: error: the ray executor needs Ray: pip install 'kdbench[ray]'"
    assert not (tmp_path / "results").exists()


def test_workers_pick_the_gpu_ray_gives_them_else_the_cpu():
    from kdbench.executors import worker_device

    assert worker_device("auto", 0).type == "cpu"
    assert worker_device("cpu", 1).type == "cpu"
    import torch

    assert worker_device("auto", 1).type == ("cuda" if torch.cuda.is_available() else "cpu")
