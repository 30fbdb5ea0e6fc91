"""Sweeps survive `kill -9` at a random moment and share one store with a concurrent sweep (real subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdbench.plan import expand
from kdbench.results import runs_dir
from tests.conftest import TINY_STUDENT, TINY_TEACHER

pytestmark = pytest.mark.slow

BUDGET = {"epochs": 1, "teacher_epochs": 1, "batch_size": 64}


def start_sweep(spec: Path, results: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kdbench", "sweep", str(spec), "--results", str(results), "--device", "cpu",
               "--no-progress", *extra]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=spec.parent)


def record_files(results: Path) -> list[Path]:
    """What counts as a record: `<run_id>.json`, not the hidden temporary files of writes in flight."""
    folder = runs_dir(results)
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def read_all(results: Path) -> dict[str, dict]:
    records = {}
    for path in record_files(results):
        record = json.loads(path.read_text())  # every record is whole, valid JSON
        assert record["run_id"] == path.stem
        records[path.stem] = record
    return records


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "ctrl-c"])
def test_a_sweep_stopped_at_a_random_moment_resumes_and_runs_everything_exactly_once(tmp_path, stop):
    spec = {"dataset": "digits", **BUDGET, "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}],
            "methods": {"ce": {}, "kd": {"temperature": 2}}, "seeds": [0, 1, 2]}
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    expected = {s.run_id for s in expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)],
                                         methods={"ce": {}, "kd": {"temperature": [2.0]}}, seeds=[0, 1, 2],
                                         batch_size=64, epochs=1, teacher_epochs=1)}
    assert len(expected) == 6
    results = tmp_path / "results"

    rng = random.Random()
    wait_for, delay = rng.randint(1, len(expected) - 1), rng.uniform(0.0, 1.5)
    print(f"sending {stop.name} after {wait_for} records and {delay:.2f} s more")  # shown if the test fails
    first = start_sweep(spec_path, results, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while len(record_files(results)) < wait_for and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    first.send_signal(stop)
    first.wait(timeout=120)
    before = read_all(results)
    print(f"{len(before)} records when stopped (exit {first.returncode})")
    # 0: it had finished already; 130: main() caught the KeyboardInterrupt; -SIGINT: Ctrl-C hit the interpreter's
    # shutdown, after main() had returned
    finished = len(before) == len(expected)
    assert first.returncode in (0, -signal.SIGKILL if stop == signal.SIGKILL else 130) or \
        (stop == signal.SIGINT and first.returncode == -signal.SIGINT and finished)
    if first.returncode == 130:
        assert "interrupted; finished runs are saved" in (tmp_path / "first.log").read_text()
    assert set(before) <= expected
    stamps = {run_id: (path.stat().st_mtime_ns, path.read_bytes()) for run_id, path in
              ((p.stem, p) for p in record_files(results))}

    second = start_sweep(spec_path, results, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    after = read_all(results)
    assert set(after) == expected
    assert all(r["status"] == "ok" for r in after.values())
    for run_id, (mtime, content) in stamps.items():  # finished runs were not trained again
        path = runs_dir(results) / f"{run_id}.json"
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    log = (tmp_path / "second.log").read_text()
    assert f"{len(expected) - len(before)} to train" in log and f"{len(before)} already done" in log
    assert len(list((results / "teachers").glob("*.pt"))) == 1


TAGGED_PLUGIN = '''\
"""A test method: cross-entropy that notes which process trained which run."""
import os
from dataclasses import dataclass

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method


@register_method("tagged")
class Tagged(Distiller):
    """Cross-entropy; appends "<tag> <pid>" to a log file when a run starts training."""

    @dataclass(frozen=True)
    class Params:
        """The tag tells the runs apart."""

        tag: int = 0

    def __init__(self, params, student, teacher, data):
        super().__init__(params, student, teacher, data)
        with open({log!r}, "a") as handle:
            handle.write(f"{{params.tag}} {{os.getpid()}}\\n")

    def losses(self, step):
        """Cross-entropy."""
        return {{"loss_ce": F.cross_entropy(step.student_logits, step.labels)}}
'''


def test_two_concurrent_sweeps_on_one_store_train_each_run_once(tmp_path):
    trained_log = tmp_path / "trained.txt"
    (tmp_path / "tagged.py").write_text(TAGGED_PLUGIN.format(log=str(trained_log)))
    tags = list(range(1, 7))
    spec = {"dataset": "digits", **BUDGET, "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}],
            "methods": {"tagged": {"tag": tags}}, "seeds": [0], "plugins": ["tagged.py"], "cohort": False}
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"

    sweeps = [start_sweep(spec_path, results, tmp_path / f"sweep{n}.log") for n in (1, 2)]
    codes = [p.wait(timeout=300) for p in sweeps]
    logs = [(tmp_path / f"sweep{n}.log").read_text() for n in (1, 2)]
    assert codes == [0, 0], logs

    records = read_all(results)
    assert len(records) == len(tags)
    assert sorted(r["method_params"]["tag"] for r in records.values()) == tags
    assert all(r["status"] == "ok" for r in records.values())
    trained = [line.split() for line in trained_log.read_text().splitlines()]
    assert sorted(int(tag) for tag, _ in trained) == tags  # each run trained by exactly one of the two
    assert {pid for _, pid in trained} <= {str(p.pid) for p in sweeps}
    assert len(list((results / "teachers").glob("*.pt"))) == 1
