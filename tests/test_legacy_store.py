"""A results store written by an earlier kdbench is read, resumed and completed with the same records.

``tests/fixtures/store_c92940b/runs/`` holds the twelve records that kdbench at commit c92940b (before the scheduler,
the store and the training package) wrote for this command, run from a fresh folder on a 2-core CPU::

    kdbench run --dataset digits --teacher test_resnet --student test_efficientnet \\
        --method ce --method kd --method dkd --method crd --method ab --method fitnets \\
        --set ab.init_epochs=2 --set fitnets.hint_epochs=1 --seeds 0 1 --epochs 2 --teacher-epochs 1 \\
        --batch-size 64 --device cpu --no-progress

(with ``OMP_NUM_THREADS=1``; only the records are kept: the teacher is trained again here, on one torch thread too,
since sums over several threads may round differently). They cover a teacher-free run, logit methods, a
memory-bank method and two methods with an initialisation phase, all trained in one cohort per seed. Today's code
must find every one of them done (same run ids, the record contract still met), and a run whose record is removed
must be trained again to the same figures: the same losses at every epoch, the same accuracies, bit for bit on the
CPU (a change that alters what a run computes must bump a version, which changes the run id instead). The records
of a method whose version was bumped since (``fitnets`` 3: the regressor's ReLU) are left as they are and the run
trains again under its new id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.distiller import get_method
from tests.conftest import strip_timing

FIXTURE = Path(__file__).parent / "fixtures" / "store_c92940b"
ARGS = ["run", "--dataset", "digits", "--teacher", "test_resnet", "--student", "test_efficientnet",
        "--method", "ce", "--method", "kd", "--method", "dkd", "--method", "crd", "--method", "ab",
        "--method", "fitnets", "--set", "ab.init_epochs=2", "--set", "fitnets.hint_epochs=1", "--seeds", "0", "1",
        "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress"]
#: what depends on the machine, the moment or the measurement, not on what the run computed
ENVIRONMENT = {"hostname", "device_name", "python_version", "torch_version", "timm_version", "kdbench_version"}


def computed(record: dict) -> dict:
    """The fields of a record that the run computed (timing, environment and efficiency figures left out)."""
    out = strip_timing(record)
    return {k: v for k, v in out.items()
            if k not in ENVIRONMENT and not k.startswith(("cpu_", "gpu_"))}


def copy_store(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    return results


def version_now(record: dict) -> int:
    """The current version of the record's method."""
    return get_method(record["method"]).version


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


@pytest.mark.slow
def test_an_old_store_is_done_and_a_removed_run_trains_again_to_the_same_record(tmp_path, capsys, one_torch_thread):
    results = copy_store(tmp_path)
    before = {p.name: p.read_bytes() for p in (results / "runs").iterdir()}
    assert len(before) == 12

    bumped = [p for p in before if json.loads(before[p])["method_version"] != version_now(json.loads(before[p]))]
    assert main([*ARGS, "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert f"12 runs: {len(bumped)} to train, {12 - len(bumped)} already done" in err, err
    assert {p: (results / "runs" / p).read_bytes() for p in before} == before  # read, never rewritten
    assert not (results / "corrupt").exists()

    old = records(results)
    removed = [rid for rid, r in old.items() if (r["method"], r["seed"]) in {("kd", 1), ("ab", 0), ("crd", 0)}
               and r["method_version"] == version_now(r)]
    assert len(removed) == 3
    for run_id in removed:
        (results / "runs" / f"{run_id}.json").unlink()
    assert main([*ARGS, "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert "12 runs: 3 to train, 9 already done" in err, err
    new = records(results)
    assert set(new) == set(old)
    for run_id in removed:
        was, now = computed(old[run_id]), computed(new[run_id])
        assert set(was) <= set(now), set(was) - set(now)  # no field of the record is lost
        assert {k: now[k] for k in was} == was, run_id
