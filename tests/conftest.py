"""Shared fixtures (tiny timm models on `digits`, isolated result stores, a registry sandbox for test methods, a local
Ray instance) and the one hook that skips `gpu` tests without a CUDA device; shared helpers are in helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TINY_TEACHER = "test_resnet"
TINY_STUDENT = "test_efficientnet"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``) each worker computes on one thread, and so do the processes it starts: workers of
    several threads each would oversubscribe the cores and slow each other far more than they gain."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip themselves where no CUDA device is present: the one place that decides it."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_tests:
        item.add_marker(skip)


def as_rank(monkeypatch, rank: int, size: int = 2) -> None:
    """torchrun's variables for one rank of a world of ``size`` (no process group is joined)."""
    monkeypatch.setenv("WORLD_SIZE", str(size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def strip_timing(record: dict) -> dict:
    """A run record without what depends on timing or on the cohort it trained in: what solo and cohort share."""
    drop = {"created_at", "train_time_s", "train_samples_per_s", "teacher_time_s", "teacher_time_share",
            "cohort_id", "cohort_size", "cohort_wall_s", "git_commit"}
    out = {k: v for k, v in record.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in record["history"]]
    return out


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A fresh results store folder."""
    return tmp_path / "results"


@pytest.fixture
def tiny_run_args(results: Path) -> list[str]:
    """`kdbench run` arguments for a seconds-long run on digits with timm's tiny test models."""
    return [
        "run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT,
        "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu",
        "--no-progress", "--results", str(results),
    ]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: many tiny ops run faster without thread hand-offs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def method_sandbox():
    """Lets a test register methods; they are removed afterwards."""
    from kdbench.distiller import METHODS, discover_methods

    discover_methods()
    before = set(METHODS.names())
    yield METHODS
    for name in set(METHODS.names()) - before:
        METHODS.unregister(name)


@pytest.fixture(scope="module")
def ray_cluster(one_torch_thread):
    """A fresh local Ray instance with 2 CPUs (never one that happens to run on this machine); its GCS address."""
    import ray  # part of the dev dependencies

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    temp_dir = tempfile.mkdtemp(prefix="kdray", dir="/tmp")  # short: Ray's socket paths have a length limit
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                       _node_ip_address="127.0.0.1",  # loopback only: nothing leaves this machine
                       _temp_dir=temp_dir)
    yield context.address_info["gcs_address"]
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def done_store(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    """A store where `ce` and `kd` on digits are done (and the teacher cached); tests work on copies of it."""
    from kdbench.cli import main
    from tests.helpers import METHOD_FLAGS, run_args

    results = tmp_path_factory.mktemp("done") / "results"
    assert main(run_args(results, *METHOD_FLAGS)) == 0
    return results


@pytest.fixture
def copied_store(done_store: Path, tmp_path: Path) -> Path:
    """A copy of :func:`done_store` this test may change."""
    results = tmp_path / "results"
    shutil.copytree(done_store, results)
    return results
