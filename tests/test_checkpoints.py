"""Checkpoints inside a run: an interrupted and resumed run gives the record of an uninterrupted one.

Each test interrupts a cohort at a chosen point (a step of the initialisation phase, a step in the middle of an
epoch, the validation at an epoch's end, a checkpoint being written), runs the same runs again, and compares every
record with the records of the same runs trained without interruption: the same history (every loss at every
epoch), the same accuracies, bit for bit on the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import kdbench.training.checkpoint as checkpoint_module
from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute
from kdbench.store import Store
from kdbench.training.member import Member
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import Interrupt, checkpoints_in, computed, interrupt_at, quiet_options

#: a cohort with an initialisation phase (ab, fitnets' hints), a memory bank (crd), logits (kd) and no teacher (ce)
METHODS = {"ce": {}, "kd": {}, "crd": {}, "ab": {"init_epochs": [2]}, "fitnets": {"hint_epochs": [1]}}
BUDGET = dict(epochs=2, teacher_epochs=1, batch_size=64, lr=0.05)  # 21 steps an epoch


def specs_for(methods=METHODS, seeds=(0,)):
    return expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods=methods, seeds=list(seeds),
                  **BUDGET)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The cohort trained without interruption (its teacher cache is shared by the tests)."""
    root = tmp_path_factory.mktemp("reference")
    records = execute(specs_for(), quiet_options(root / "results", root / "teachers"))
    assert all(r["status"] == "ok" for r in records)
    return root / "teachers", {r["run_id"]: computed(r) for r in records}


def resume_and_compare(tmp_path: Path, reference, monkeypatch, undo: bool = True, **kw) -> list[str]:
    """Run again after the interruption and check every record against the reference; the notes printed."""
    teachers, expected = reference
    if undo:
        monkeypatch.undo()
    notes: list[str] = []
    opts = quiet_options(tmp_path / "results", teachers, **kw)
    records = execute(specs_for(), ExecOptions(**{**opts.__dict__, "log": notes.append}))
    assert {r["run_id"]: computed(r) for r in records} == expected
    assert not list(Store(tmp_path / "results").checkpoints_dir.glob("*.pt"))  # removed with the records
    return notes


def interrupted(tmp_path: Path, reference, monkeypatch, step: int, **kw) -> list[Path]:
    """The cohort interrupted at its ``step``-th member step; the checkpoints it left."""
    teachers, _ = reference
    interrupt_at(monkeypatch, Member, "train_step", step)
    with pytest.raises(Interrupt):
        execute(specs_for(), quiet_options(tmp_path / "results", teachers, **kw))
    return checkpoints_in(tmp_path / "results")


@pytest.mark.slow
@pytest.mark.parametrize("step", [9, 60, 250], ids=["init-phase-start", "init-phase-mid-epoch", "main-phase-mid-epoch"])
def test_a_run_interrupted_at_a_step_resumes_to_the_same_record(tmp_path, reference, monkeypatch, step):
    left = interrupted(tmp_path, reference, monkeypatch, step, checkpoint_minutes=1e-9)
    assert left or step < 16  # a checkpoint every 16 steps at most, and at each epoch end
    resume_and_compare(tmp_path, reference, monkeypatch, checkpoint_minutes=1e-9)


@pytest.mark.slow
def test_a_run_interrupted_during_validation_or_a_checkpoint_write_resumes_to_the_same_record(
        tmp_path, reference, monkeypatch):
    teachers, _ = reference
    interrupt_at(monkeypatch, Member, "end_epoch", 7)  # the validation of a main-phase epoch
    with pytest.raises(Interrupt):
        execute(specs_for(), quiet_options(tmp_path / "results", teachers))
    assert checkpoints_in(tmp_path / "results")
    monkeypatch.undo()
    interrupt_at(monkeypatch, checkpoint_module, "atomic_write_bytes", 3)  # killed while writing a checkpoint
    with pytest.raises(Interrupt):
        execute(specs_for(), quiet_options(tmp_path / "results", teachers))
    assert not list(Store(tmp_path / "results").checkpoints_dir.glob(".*.tmp"))  # no half-written file
    resume_and_compare(tmp_path, reference, monkeypatch)


@pytest.mark.slow
def test_untrusted_checkpoints_are_one_line_and_a_fresh_start(tmp_path, reference, monkeypatch):
    files = interrupted(tmp_path, reference, monkeypatch, 120)
    assert len(files) >= 3
    truncated, garbage, foreign = files[:3]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"not a checkpoint at all")
    shutil.copyfile(files[-1], foreign)  # another run's checkpoint under this run's name
    notes = resume_and_compare(tmp_path, reference, monkeypatch)
    warnings = [n for n in notes if n.startswith("warning: checkpoint")]
    assert len(warnings) == 3, notes
    assert all("the run starts from its beginning" in n for n in warnings)
    assert any("cannot be read" in n for n in warnings) and any("its run_id is" in n for n in warnings)


@pytest.mark.slow
def test_a_checkpoint_of_another_format_is_not_trusted(tmp_path, reference, monkeypatch):
    for path in interrupted(tmp_path, reference, monkeypatch, 120):
        state = torch.load(path, weights_only=True)
        state["format"] = checkpoint_module.CHECKPOINT_FORMAT + 1
        torch.save(state, path)
    notes = resume_and_compare(tmp_path, reference, monkeypatch)
    assert sum("its format is" in n for n in notes) == len(METHODS)


@pytest.mark.slow
def test_a_cohort_whose_composition_changed_loses_no_finished_epoch(tmp_path, reference, monkeypatch):
    teachers, expected = reference
    first = {"kd": {}, "crd": {}}
    interrupt_at(monkeypatch, Member, "train_step", 60)  # in the second epoch of kd and crd
    with pytest.raises(Interrupt):
        execute(specs_for(first), quiet_options(tmp_path / "results", teachers))
    assert len(checkpoints_in(tmp_path / "results")) == 2
    monkeypatch.undo()
    steps: dict[str, int] = {}
    real = Member.train_step

    def counted(self, *args, **kwargs):
        if kwargs.get("phase", "train") == "train":
            steps[self.spec.method] = steps.get(self.spec.method, 0) + 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Member, "train_step", counted)
    resume_and_compare(tmp_path, reference, monkeypatch, undo=False)  # the whole cohort now: three are new
    per_epoch = steps["ce"] // BUDGET["epochs"]
    # kd and crd went on from their last epoch's checkpoint, the new members from the start
    assert steps["kd"] == steps["crd"] == steps["ce"] - per_epoch, steps


@pytest.mark.slow
def test_keep_checkpoints_keeps_them_and_no_checkpoints_writes_none(tmp_path, reference):
    teachers, _ = reference
    specs = specs_for({"kd": {}})
    execute(specs, quiet_options(tmp_path / "kept", teachers, keep_checkpoints=True))
    (kept,) = Store(tmp_path / "kept").checkpoints_dir.glob("*.pt")
    assert kept.stem == specs[0].run_id
    state = torch.load(kept, weights_only=True)
    assert state["position"] == {"generation": 0, "phase": "train", "epoch": 2, "step": 0}
    execute(specs, quiet_options(tmp_path / "none", teachers, checkpoint_every=0))
    assert not Store(tmp_path / "none").checkpoints_dir.exists()


@pytest.mark.slow
def test_a_later_generation_interrupted_mid_epoch_resumes_to_the_same_record(tmp_path, monkeypatch):
    """ban's generation 1, distilled from generation 0 (restored from the checkpoint), resumes bit for bit."""
    ban = {"ban": {}}
    reference = execute(specs_for(ban), quiet_options(tmp_path / "ref", tmp_path / "t"))
    expected = {r["run_id"]: computed(r) for r in reference}
    interrupt_at(monkeypatch, Member, "train_step", 2 * 21 + 21 + 5)  # generation 1, epoch 1, step 6
    with pytest.raises(Interrupt):
        execute(specs_for(ban), quiet_options(tmp_path / "results", tmp_path / "t", checkpoint_minutes=1e-9))
    (left,) = checkpoints_in(tmp_path / "results")
    assert torch.load(left, weights_only=True)["position"]["generation"] == 1
    monkeypatch.undo()
    records = execute(specs_for(ban), quiet_options(tmp_path / "results", tmp_path / "t", checkpoint_minutes=1e-9))
    assert {r["run_id"]: computed(r) for r in records} == expected
