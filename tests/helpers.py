"""Helpers several test modules share (fixtures live in conftest.py): data on disk, specs, synthetic stores.

Test modules import from here, never from one another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kdbench.cli import main
from kdbench.options import ExecOptions
from kdbench.results import runs_dir, write_record
from kdbench.store import Store
from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing

# ---------------------------------------------------------------------------------------------------------------
# An image folder on disk (the imagefolder dataset)

FOLDER_CLASSES = ("cat", "dog", "fox")


def folder_colour(number: int) -> tuple[int, int, int]:
    """The solid colour of image ``number`` of :func:`write_image_folder`."""
    return (7 * number + 3, 250 - 5 * number, (31 * number) % 256)


def write_image_folder(root: Path, train_per_class: int = 8, val_per_class: int = 3) -> tuple[list, list]:
    """Solid-colour PNGs (one colour per image) under train/<class>/ and val/<class>/; returns (colour, label)."""
    number = 0
    found: dict[str, list] = {"train": [], "val": []}
    for part, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(FOLDER_CLASSES):
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                colour = folder_colour(number)
                size = (12 + k % 3 * 2, 10 + k % 2 * 4)
                Image.new("RGB", size, colour).save(root / part / name / f"img{k}.png")
                found[part].append((colour, label))
                number += 1
    return found["train"], found["val"]


def write_class_folders(root: Path, classes: tuple[str, ...], per_class: int = 6,
                       val_classes: tuple[str, ...] | None = None, shade: int = 0) -> Path:
    """Solid-colour PNGs under root/train/<class>/ and root/val/<class>/ (two per class)."""
    val = classes if val_classes is None else val_classes
    for part, names, count in (("train", classes, per_class), ("val", val, 2)):
        for label, name in enumerate(names):
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                colour = ((40 * label + shade) % 256, (17 * k + shade) % 256, 90)
                Image.new("RGB", (10, 10), colour).save(root / part / name / f"img{k}.png")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Tune specs and their trials

TUNE_BUDGET = {"epochs": 1, "teacher_epochs": 1, "batch_size": 64}


def tune_data(methods: object = ("ce", "kd"), trials: int = 3, seeds: tuple[int, ...] = (0, 1),
              **extra: object) -> dict:
    """A tune spec on digits with the tiny pair: ``methods``, ``trials`` per study, the final ``seeds``."""
    return {"dataset": "digits", **TUNE_BUDGET, "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}],
            "methods": list(methods) if not isinstance(methods, dict) else methods, "seeds": list(seeds),
            "tune": {"trials": trials}, **extra}


def trial_records(results: Path) -> list[dict]:
    """The records of a store's tuning trials (the runs evaluated on the validation split)."""
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    return [r for r in records if r.get("eval_split") == "val"]


# ---------------------------------------------------------------------------------------------------------------
# The command line, as the bad-input tests drive it

#: the flags of a seconds-long run on the CPU
BUDGET_FLAGS = ["--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress"]
#: the tiny pair on digits
PAIR_FLAGS = ["--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT]
#: a teacher-free method and one with a teacher
METHOD_FLAGS = ["--method", "ce", "--method", "kd"]


def run_args(results: Path, *extra: str) -> list[str]:
    """``kdbench run`` arguments of a seconds-long run of the tiny pair into ``results``, then ``extra``."""
    return ["run", *PAIR_FLAGS, *BUDGET_FLAGS, "--results", str(results), *extra]


def cli(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command line in this process: its exit code, stdout and stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and one error line holding every fragment: no traceback, no colour codes."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def record_files(results: Path) -> dict[str, bytes]:
    """Record file name -> its bytes, of a store (empty if it has no runs folder)."""
    folder = runs_dir(results)
    return {p.name: p.read_bytes() for p in folder.glob("*.json") if p.is_file()} if folder.is_dir() else {}


def kd_record(results: Path) -> Path:
    """The record file of the store's ``kd`` run."""
    return next(p for p in runs_dir(results).glob("*.json") if json.loads(p.read_text())["method"] == "kd")


# ---------------------------------------------------------------------------------------------------------------
# A synthetic results store for the report: 2 CIFAR-100 pairs, one short-budget pair, digits with CE only

P1 = ("cifar_resnet32x4", "cifar_resnet8x4")
P2 = ("cifar_resnet56", "cifar_resnet20")
TEACHER_TOP1 = {P1[0]: 79.42, P2[0]: 72.34}
GPU = "NVIDIA H100 80GB HBM3"
# top-1 per (student, method label) and seed; teacher-free methods (ce, tf_kd) are keyed by student only
TOP1: dict[tuple[str, str], dict[int, float]] = {
    (P1[1], "ce"): {0: 72.41, 1: 72.83, 2: 72.12},
    (P1[1], "kd"): {0: 73.95, 1: 74.40, 2: 73.71},
    (P1[1], "kd(temperature=2)"): {0: 73.10},
    (P1[1], "dkd"): {0: 75.90, 1: 76.35},
    (P1[1], "tf_kd"): {0: 73.00, 1: 73.44},
    (P2[1], "ce"): {0: 69.05, 1: 69.50, 2: 68.80},
    (P2[1], "kd"): {1: 70.90, 2: 70.15, 3: 71.02},
    (P2[1], "dkd"): {0: 71.80, 1: 72.25, 2: 71.60},
    (P2[1], "tf_kd"): {0: 69.70, 1: 69.20},
}
DIGITS_CE = {0: 91.2, 1: 90.4}
SHORT_KD = 60.0  # kd on P1 with a 10-epoch budget: its own pair, without a baseline
TRAIN_TIME = {"ce": 100.0, "kd": 130.0, "kd(temperature=2)": 130.0, "dkd": 160.0, "tf_kd": 110.0}
PARAMS = {P1[1]: 1.23, P2[1]: 0.28, "test_student": 0.01, P1[0]: 7.43}
GMACS = {P1[1]: 0.177, P2[1]: 0.041, "test_student": 0.001, P1[0]: 1.08}
TEACHER_FREE = {"ce", "tf_kd"}


def make_record(run_id: str, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": run_id, "status": "ok", "error": None, "created_at": "2025-01-01T00:00:00+00:00",
        "dataset": "cifar100", "teacher": None, "teacher_source": "none", "teacher_epochs": None,
        "teacher_seed": None, "student": P1[1], "method": "ce", "method_params": {}, "method_label": "ce",
        "seed": 0, "epochs": 240, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "multistep", "milestones": [150, 180, 210], "val_fraction": 0.1, "image_size": 32,
        "top1": 70.0, "top5": 90.0, "agreement": None, "teacher_top1": None, "params_m": 1.0,
        "extra_params_m": 0.0, "gmacs": 0.1, "gflops": 0.2, "cpu_latency_ms_bs1": 2.0, "cpu_samples_per_s": 500.0,
        "cpu_threads": 2, "gpu_name": None, "gpu_latency_ms_bs1": None, "gpu_samples_per_s": None,
        "train_time_s": 100.0, "train_samples_per_s": 1000.0, "device": "cuda", "device_name": GPU,
        "torch_version": "2.4.0", "timm_version": "1.0.9", "kdbench_version": "0.1.0", "git_commit": "0123abc",
        "python_version": "3.11.7", "history": [],
    }
    record.update(fields)
    return record


def _history(top1: float) -> list[dict[str, Any]]:
    return [{"epoch": e, "lr": 0.05, "loss": 2.0 / (e + 1), "train_top1": top1 - 5 + e, "val_top1": top1 - 3 + e,
             "time_s": 1.0} for e in range(4)]


def build_store(path: Path, *, with_gpu: bool = True) -> None:
    """The synthetic store every test reads: 2 CIFAR-100 pairs, one short-budget pair, digits with CE only."""
    count = 0

    def put(**fields: Any) -> None:
        nonlocal count
        count += 1
        write_record(path, make_record(f"run{count:03d}", **fields))

    teacher_of = {P1[1]: P1[0], P2[1]: P2[0]}
    for (student, label), per_seed in TOP1.items():
        method = label.split("(")[0]
        teacher = None if label in TEACHER_FREE else teacher_of[student]
        for seed, top1 in per_seed.items():
            gpu = {"gpu_name": GPU, "gpu_samples_per_s": 20000.0 if student == P1[1] else 50000.0,
                   "gpu_latency_ms_bs1": 1.5} if with_gpu else {"device": "cpu", "device_name": "Test CPU"}
            put(student=student, teacher=teacher, method=method, method_label=label,
                method_params={"temperature": 2.0} if "temperature" in label else {},
                teacher_source="none" if teacher is None else "trained",
                teacher_epochs=None if teacher is None else 240, teacher_seed=None if teacher is None else 0,
                teacher_top1=None if teacher is None else TEACHER_TOP1[teacher],
                agreement=None if teacher is None else 80.0 + seed, seed=seed, top1=top1, top5=top1 + 20,
                params_m=PARAMS[student], gmacs=GMACS[student], train_time_s=TRAIN_TIME[label],
                extra_params_m=0.05 if method == "dkd" else 0.0, history=_history(top1), **gpu)
    # a failed dkd run that still carries a (bogus) accuracy: it must be counted, never averaged
    put(student=P1[1], teacher=P1[0], method="dkd", method_label="dkd", teacher_epochs=240, teacher_top1=79.42,
        seed=2, status="failed", error="RuntimeError: CUDA out of memory", top1=0.0)
    put(student=P1[1], teacher=P1[0], method="kd", method_label="kd", teacher_epochs=240, teacher_top1=79.42,
        seed=0, epochs=10, milestones=[5, 8], top1=SHORT_KD, params_m=PARAMS[P1[1]], gmacs=GMACS[P1[1]])
    # the teacher trained as a plain student: gives the teacher's own cost for the Pareto figure
    put(student=P1[0], method="ce", seed=0, top1=79.0, params_m=PARAMS[P1[0]], gmacs=GMACS[P1[0]], epochs=5,
        milestones=[3])
    for seed, top1 in DIGITS_CE.items():
        put(dataset="digits", student="test_student", seed=seed, top1=top1, epochs=3, batch_size=32, lr=0.1,
            schedule="cosine", milestones=None, val_fraction=0.0, image_size=8, params_m=PARAMS["test_student"],
            gmacs=GMACS["test_student"], device="cpu", device_name="Test CPU", history=_history(top1))


# ---------------------------------------------------------------------------------------------------------------
# Runs interrupted and resumed, records compared, torchrun launched

#: what depends on where a run trained (the machine), not on what it computed
MACHINE = {"hostname", "device_name", "python_version"}


def computed(record: dict, *, measured: bool = False) -> dict:
    """What a run computed: its record without timings and the machine (``measured``: nor the latency and
    throughput figures, ``cpu_*`` / ``gpu_*``, of a run that measured them)."""
    return {k: v for k, v in strip_timing(record).items()
            if k not in MACHINE and not (measured and k.startswith(("cpu_", "gpu_")))}


class Interrupt(BaseException):
    """A stand-in for the process being killed: nothing catches it."""


def interrupt_at(monkeypatch: pytest.MonkeyPatch, target: object, name: str, call: int) -> None:
    """Raise :class:`Interrupt` at the ``call``-th call of ``target.name`` (counted from 1)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def quiet_options(results: Path, teachers: Path, **kw: Any) -> ExecOptions:
    """Execution options of a test: CPU, no progress bar, no efficiency measurement, notes kept to themselves."""
    notes: list[str] = []
    return ExecOptions(results=results, teacher_cache=teachers, device="cpu", progress=False, measure=False,
                       log=notes.append, **kw)


def checkpoints_in(results: Path) -> list[Path]:
    """The checkpoints a store holds, sorted."""
    return sorted(Store(results).checkpoints_dir.glob("*.pt"))


def torchrun(args: list[str], timeout: float, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N -m kdbench ARGS`` on one thread a process, finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_DIST_TIMEOUT": "60"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
               "kdbench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
