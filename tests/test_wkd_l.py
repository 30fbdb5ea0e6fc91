"""WKD-L through its class: the authors' values (v2 keys), the cost matrix of the teacher pass, runs and resumes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import Tensor

from kdbench.cli import main
from kdbench.config import RunSpec
from kdbench.data import DataConfig, load_dataset
from kdbench.distiller import RunContext, TeacherBatch, construct_method, get_method
from kdbench.errors import ConfigError
from kdbench.features import describe_model
from kdbench.methods.wkd_l import class_samples, linear_cka
from kdbench.models import create_model
from kdbench.training import Member
from kdbench.training.forward import teacher_pass_before_training
from tests.conftest import TINY_TEACHER
from tests.golden.cases import DATA
from tests.reference.part2 import STUDENT, TEACHER, check, linear, step, x

#: the key's class features (10 classes x 12 rows x 16 dims) as 3 samples a class of 16-channel 2x2 final maps
SAMPLES_PER_CLASS = 3


def wkdl(context_labels: Tensor | None = None, **overrides: Any):
    labels = torch.arange(10).repeat(SAMPLES_PER_CLASS) if context_labels is None else context_labels
    context = RunContext(epochs=240, steps_per_epoch=10, batch_size=8, num_train=len(labels), num_classes=10,
                         train_labels=labels)
    cls = get_method("wkd_l")
    return construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, context)


def key_pass() -> list[TeacherBatch]:
    """The key's class features as teacher-pass batches: sample ``s`` of class ``c`` has index ``10 s + c``.

    Sample s's map holds rows 4s..4s+3 of its class at its positions (row-major), the authors' row order.
    """
    feats = x("wkd_class_feats")
    maps = feats.reshape(10, SAMPLES_PER_CLASS, 2, 2, 16).permute(1, 0, 4, 2, 3).reshape(-1, 16, 2, 2)
    indices = torch.arange(30)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(3))  # not in index order
    return [TeacherBatch(indices[part] % 10, indices[part], torch.randn(len(part), 10), None, maps[part])
            for part in order.chunk(2)]


def passed(method, batches: list[TeacherBatch]):
    for batch in batches:
        method.observe_teacher(batch)
    method.finish_teacher_pass()
    return method


@pytest.mark.parametrize(("key", "overrides"), [
    ("wkdl_cka_T8_w600_cifar", {}),
    ("wkdl_cka_T2_w30_imagenet", {"temperature": 2.0, "weight": 30.0}),
    ("wkdl_cka_T2_w25_sharpen2_imagenet", {"temperature": 2.0, "weight": 25.0, "sharpen": 2.0}),
])
def test_the_cka_cost_of_the_teacher_pass_and_the_loss_match_the_authors_code(key, overrides):
    m = passed(wkdl(**overrides), key_pass())
    if not overrides:
        check("wkdl_cost_cka_sharpen1", m.cost)
    terms = m.losses(step(m, net=True, epoch=149))  # epoch 150 of 240: not decayed yet
    check(key, terms["loss_target"] + terms["loss_wkd"])
    assert "cost" in m.state_dict()


@pytest.mark.parametrize(("key", "weight"), [("wkdl_target_term", 0.0), ("wkdl_fc_T8_w1", 1.0)])
def test_the_classifier_cost_and_the_loss_match_the_authors_code(key, weight):
    m = wkdl(cost="classifier", weight=weight)
    assert m.classifiers and not m.teacher_pass
    terms = m.losses(step(m, net=True, teacher_classifier=linear(x("fc_t_weight"), x("fc_t_bias"))))
    check("wkdl_cost_fc_sharpen1", m.cost)
    check(key, terms["loss_target"] + terms["loss_wkd"])


def test_the_weight_decays_on_a_cosine_after_epoch_150_and_only_the_distance_is_weighted():
    m = passed(wkdl(), key_pass())
    full = m.losses(step(m, net=True, epoch=149))
    for epoch, factor in ((194, 0.5), (239, 0.0)):  # epoch 195 of 240: half way; the last epoch: 0
        terms = m.losses(step(m, net=True, epoch=epoch))
        assert torch.allclose(terms["loss_wkd"], factor * full["loss_wkd"], atol=1e-6)
        assert torch.equal(terms["loss_target"], full["loss_target"])


def test_the_cost_is_the_same_however_the_samples_are_shared_between_processes():
    batches = key_pass()
    alone = passed(wkdl(), batches).cost
    first, second = wkdl(), wkdl()  # two processes, each observing its share; gather concatenates in rank order
    first.observe_teacher(batches[1])
    second.observe_teacher(batches[0])
    shares = [[t.clone() for t in (batches[i].indices, batches[i].labels)] for i in (1, 0)]
    rows = [batches[i].teacher_final_map.flatten(2).transpose(1, 2) for i in (1, 0)]

    def gather(*tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.cat(parts) for parts in zip(*[(*s, r) for s, r in zip(shares, rows, strict=True)],
                                                        strict=True))

    object.__setattr__(first.context, "gather", gather)
    first.finish_teacher_pass()
    assert torch.equal(first.cost, alone)


def test_a_class_keeps_its_first_samples_by_index_and_cost_samples_is_checked():
    indices, labels = torch.tensor([5, 1, 4, 0, 3, 2]), torch.tensor([1, 0, 1, 0, 1, 0])
    rows = indices.float().reshape(-1, 1, 1)
    assert class_samples(indices, labels, rows, 2, 2).flatten().tolist() == [0, 1, 3, 4]
    with pytest.raises(ConfigError, match="cost_samples"):
        wkdl(cost_samples=4)
    with pytest.raises(ConfigError, match="cost must be one of"):
        wkdl(cost="fc")
    m = passed(wkdl(cost_samples=2), key_pass())  # the first 2 samples = the first 8 rows of each class
    expected = torch.stack([torch.stack([1 - linear_cka(a[:8], b[:8]) for b in x("wkd_class_feats")])
                            for a in x("wkd_class_feats")])
    assert torch.allclose(m.cost, 1 - torch.exp(-expected), atol=1e-6)


@pytest.mark.parametrize("cost", ["cka", "cka_logits"])
def test_the_harness_teacher_pass_gives_the_cost_of_a_direct_computation(cost):
    splits = load_dataset(DataConfig(name="digits", image_size=32))
    torch.manual_seed(0)
    teacher = create_model(TINY_TEACHER, num_classes=10, in_chans=1, image_size=32).eval().requires_grad_(False)
    spec = RunSpec(dataset="digits", student="test_efficientnet", teacher=TINY_TEACHER, method="wkd_l",
                   image_size=32, epochs=1, method_params={"cost": cost, "cost_samples": 20})
    m = Member(spec, splits.info, describe_model(teacher, TINY_TEACHER, 1, 32), torch.device("cpu"),
               teacher_model=teacher, train_labels=splits.labels("train"))
    teacher_pass_before_training(teacher, splits, [m], batch_size=256, amp=False)
    assert m.active
    rows, labels = [], []
    with torch.no_grad():
        for batch in splits.eval_batches("train", 256):
            out = teacher.forward_features(batch.images)
            rows.append(teacher.forward_head(out)[:, None] if cost == "cka_logits" else out.flatten(2).transpose(1, 2))
            labels.append(batch.labels)
    rows, labels = torch.cat(rows).double(), torch.cat(labels)  # eval_batches: the split in index order
    per_class = [rows[labels == c][:20].reshape(-1, rows.shape[-1]) for c in range(10)]
    expected = torch.stack([torch.stack([1 - linear_cka(a, b) for b in per_class]) for a in per_class])
    assert torch.allclose(m.method.cost.double(), 1 - torch.exp(-expected), atol=1e-5)
    assert m.method.cost.diagonal().abs().max() < 1e-5 and m.method.cost.min() > -1e-6


def run_args(results, teachers, student: str, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", student, "--method", "wkd_l",
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), "--teacher-cache", str(teachers), *extra]


@pytest.mark.slow
@pytest.mark.parametrize(("student", "extra"), [
    ("test_efficientnet", ()),  # a CNN, the CKA cost of the teacher's final maps
    ("test_efficientnet", ("--set", "wkd_l.cost=classifier")),
    ("test_vit", ("--image-size", "32")),  # a ViT
])
def test_kdbench_run_trains_wkd_l(tmp_path, student, extra):
    assert main(run_args(tmp_path / "results", tmp_path / "teachers", student, *extra)) == 0
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["method"] == "wkd_l"
    assert record["extra_buffers_m"] > 0  # the cost matrix
    losses = record["history"][-1]
    assert all(torch.isfinite(torch.tensor(losses[k])) for k in ("loss_ce", "loss_target", "loss_wkd"))
    assert losses["loss_wkd"] > 0


@pytest.mark.slow
def test_a_resumed_run_reads_the_cost_matrix_from_its_checkpoint(tmp_path, monkeypatch):
    """Interrupted mid-epoch and resumed with a teacher pass that computes nothing: the record is unchanged."""
    from kdbench.methods.wkd_l import WassersteinLogitKD
    from kdbench.options import ExecOptions
    from kdbench.plan import expand
    from kdbench.scheduler import execute
    from kdbench.store import Store
    from tests.conftest import TINY_STUDENT
    from tests.helpers import Interrupt, computed, interrupt_at

    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"wkd_l": {}}, seeds=[0],
                   epochs=2, teacher_epochs=1, batch_size=64, lr=0.05)

    def options(folder: str) -> ExecOptions:
        return ExecOptions(results=tmp_path / folder, teacher_cache=tmp_path / "teachers", device="cpu",
                           progress=False, measure=False, log=lambda _: None, checkpoint_minutes=1e-9)

    reference = [computed(r) for r in execute(specs, options("reference"))]
    with monkeypatch.context() as patch:
        interrupt_at(patch, Member, "train_step", 30)
        with pytest.raises(Interrupt):
            execute(specs, options("resumed"))
    (saved,) = Store(tmp_path / "resumed").checkpoints_dir.glob("*.pt")
    cost = torch.load(saved, map_location="cpu", weights_only=True)["method"]["cost"]
    assert torch.equal(cost, cost.t()) and cost.diagonal().abs().max() < 1e-5 and cost.max() > 0
    monkeypatch.setattr(WassersteinLogitKD, "finish_teacher_pass", lambda self: None)  # the cost stays zero
    assert [computed(r) for r in execute(specs, options("resumed"))] == reference


COST_DUMP = '''
import os
from pathlib import Path

import torch

from kdbench.distiller import register_method
from kdbench.methods.wkd_l import WassersteinLogitKD


@register_method("wkd_l_dump")
class CostDump(WassersteinLogitKD):
    """WKD-L that writes its cost matrix after the teacher pass, one file per process (test)."""

    def finish_teacher_pass(self):
        super().finish_teacher_pass()
        name = f"{os.environ.get('WORLD_SIZE', '1')}_{os.environ.get('RANK', '0')}.pt"
        torch.save(self.cost.cpu(), Path(os.environ["COST_DIR"]) / name)
'''


@pytest.mark.slow
def test_the_cost_matrix_is_the_same_under_torchrun_as_in_one_process(tmp_path, monkeypatch):
    """Two processes, each passing the teacher over its share of the batches, gather one matrix: the single one."""
    import subprocess
    import sys

    from tests.helpers import torchrun

    plugin = tmp_path / "cost_dump.py"
    plugin.write_text(COST_DUMP)
    monkeypatch.setenv("COST_DIR", str(tmp_path))
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", "test_efficientnet", "--method",
            "wkd_l_dump", "--plugin", str(plugin), "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64",
            "--device", "cpu", "--no-progress", "--teacher-cache", str(tmp_path / "teachers")]
    single = subprocess.run([sys.executable, "-m", "kdbench", *args, "--results", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=900, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    done = torchrun([*args, "--results", str(tmp_path / "two")], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    one, *two = (torch.load(tmp_path / name, weights_only=True) for name in ("1_0.pt", "2_0.pt", "2_1.pt"))
    assert one.abs().sum() > 0
    for cost in two:
        assert torch.allclose(cost, one, atol=1e-6)
