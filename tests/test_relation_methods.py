"""The relation and contrastive methods (crd, rkd, pkt, sp, cc): construction, stage choice, CRD's memory state."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.distiller import RunContext, Step, construct_method, get_method
from kdbench.errors import ConfigError
from tests.golden.cases import DATA, STUDENT, TEACHER

NUM_TRAIN, NUM_CLASSES, BATCH = 40, 4, 6
LABELS = torch.arange(NUM_TRAIN) % NUM_CLASSES
CONTEXT = RunContext(epochs=2, steps_per_epoch=6, batch_size=BATCH, num_train=NUM_TRAIN, num_classes=NUM_CLASSES,
                     train_labels=LABELS)


def build(name: str, context: RunContext | None = CONTEXT, **overrides):
    cls = get_method(name)
    torch.manual_seed(0)
    return construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, context)


def step_for(method, indices: torch.Tensor, seed: int = 0) -> Step:
    g = torch.Generator().manual_seed(seed)
    b = len(indices)
    return Step(
        images=torch.zeros(b, 3, 32, 32), labels=LABELS[indices], indices=indices,
        student_logits=torch.randn(b, 10, generator=g, requires_grad=True),
        teacher_logits=torch.randn(b, 10, generator=g),
        student_features={i: torch.randn(b, s.channels, s.height, s.width, generator=g)
                          for i, s in enumerate(STUDENT.stages) if i in method.student_stages},
        teacher_features={i: torch.randn(b, s.channels, s.height, s.width, generator=g)
                          for i, s in enumerate(TEACHER.stages) if i in method.teacher_stages},
        student_embedding=torch.randn(b, STUDENT.embedding_dim, generator=g, requires_grad=True),
        teacher_embedding=torch.randn(b, TEACHER.embedding_dim, generator=g),
    )


def test_crd_memory_banks_are_buffers_over_the_training_set():
    crd = build("crd")
    assert crd.embeddings
    assert crd.memory_s.shape == crd.memory_t.shape == (NUM_TRAIN, 128)
    assert {"memory_s", "memory_t", "nce_z"} <= dict(crd.named_buffers()).keys()
    assert not any(b.requires_grad for b in crd.buffers())
    bound = 1 / (128 / 3) ** 0.5  # the CRD code's uniform initialisation
    assert crd.memory_s.abs().max() <= bound and crd.memory_s.std() > bound / 3
    assert crd.num_negatives == NUM_TRAIN - NUM_TRAIN // NUM_CLASSES  # 16384 capped at the other-class pool


def test_crd_fixes_z_on_the_first_step_and_updates_only_the_positives_rows():
    crd = build("crd")
    first = torch.tensor([3, 7, 11, 20, 21, 39])
    before_s, before_t = crd.memory_s.clone(), crd.memory_t.clone()
    step = step_for(crd, first)
    terms = crd.losses(step)
    z = crd.nce_z.clone()
    assert (z > 0).all()
    rest = torch.ones(NUM_TRAIN, dtype=torch.bool)
    rest[first] = False
    assert torch.equal(crd.memory_s[rest], before_s[rest]) and torch.equal(crd.memory_t[rest], before_t[rest])
    assert torch.allclose(crd.memory_s[first].norm(dim=1), torch.ones(len(first)))
    assert not torch.allclose(crd.memory_s[first], before_s[first])
    sum(terms.values()).backward()
    assert step.student_embedding.grad.abs().sum() > 0
    assert crd.embed_t.weight.grad.abs().sum() > 0  # the teacher's projection trains too
    crd.losses(step_for(crd, torch.tensor([0, 1, 2, 4, 5, 6]), seed=1))
    assert torch.equal(crd.nce_z, z)


def test_crd_adds_kd_for_the_crd_plus_kd_row():
    assert "loss_kd" not in build("crd").losses(step_for(build("crd"), torch.arange(BATCH)))
    crd = build("crd", kd_weight=1.0)
    assert set(crd.losses(step_for(crd, torch.arange(BATCH)))) == {"loss_ce", "loss_crd", "loss_kd"}


def test_crd_needs_the_run_context():
    with pytest.raises(ConfigError, match="training labels"):
        build("crd", context=None)
    one_class = RunContext(epochs=1, steps_per_epoch=1, batch_size=2, num_train=4, num_classes=1,
                           train_labels=torch.zeros(4, dtype=torch.long))
    crd = build("crd", context=one_class)  # builds (a dry construction passes placeholder labels) but cannot train
    with pytest.raises(ConfigError, match="two classes"):
        crd.losses(step_for(crd, torch.arange(2)))


def test_sp_defaults_to_the_last_stage_of_each_model():
    sp = build("sp")
    assert sp.student_stages == (STUDENT.num_stages - 1,) and sp.teacher_stages == (TEACHER.num_stages - 1,)
    three = build("sp", depths=(0.5, 0.75, 1.0))
    assert len(three.pairs) == 3
    with pytest.raises(ConfigError, match="pairs"):
        build("sp", student_indices=(1, 2))


def test_rkd_angle_term_can_be_dropped():
    rkd = build("rkd", angle_weight=0.0)
    assert set(rkd.losses(step_for(rkd, torch.arange(BATCH)))) == {"loss_ce", "loss_rkd_distance"}


@pytest.mark.parametrize("correlation", ["adjacent", "gaussian"])
def test_cc_projections_and_correlations(correlation):
    cc = build("cc", correlation=correlation)
    assert cc.embed_s.in_features == STUDENT.embedding_dim and cc.embed_t.in_features == TEACHER.embedding_dim
    step = step_for(cc, torch.arange(BATCH))
    cc.losses(step)["loss_cc"].backward()
    assert step.student_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "overrides"), [
    ("crd", {"nce_k": 0}), ("crd", {"momentum": 1.0}), ("rkd", {"angle_weight": -1.0}),
    ("pkt", {"eps": 0.0}), ("sp", {"depths": (1.5,)}), ("cc", {"correlation": "bilinear"}),
])
def test_invalid_params_are_rejected(name, overrides):
    with pytest.raises(ValueError):
        get_method(name).Params(**overrides)


RELATION_METHODS = ("crd", "rkd", "pkt", "sp", "cc")


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "student", "extra"), [
    ("test_resnet", "test_efficientnet", []),  # CNN -> CNN
    ("test_resnet", "test_vit", ["--image-size", "16"]),  # CNN -> ViT student (patch 16: inputs of 16 pixels)
])
def test_kdbench_run_relation_methods_end_to_end_on_digits(teacher, student, extra, results):
    from kdbench.cli import main

    args = ["run", "--dataset", "digits", "--teacher", teacher, "--student", student, "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), *extra]
    for name in RELATION_METHODS:
        args += ["--method", name]
    assert main(args) == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (results / "runs").glob("*.json"))}
    assert set(records) == set(RELATION_METHODS)
    assert all(r["status"] == "ok" for r in records.values()), {k: r.get("error") for k, r in records.items()}
    assert records["crd"]["extra_buffers_m"] > 0  # the two memory banks over the training split
    assert records["crd"]["extra_params_m"] > 0 and records["cc"]["extra_params_m"] > 0  # the projections
    assert all(records[name]["extra_params_m"] == 0 for name in ("rkd", "pkt", "sp"))
    assert {"loss_ce", "loss_crd"} <= set(records["crd"]["history"][0])
