"""VID, NST, KD-SVD and ReviewKD: stage pairing, modules, schedules and invariances on hand-built steps.

The loss values themselves are checked against the authors' code in tests/test_reference_parity_featuremaps.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from kdbench.cli import main
from kdbench.distiller import Step, construct_method, get_method
from kdbench.errors import ConfigError, ModelError
from kdbench.features import ModelInfo, StageShape
from kdbench.methods.kdsvd import kdsvd_loss
from kdbench.methods.nst import nst_loss
from kdbench.methods.reviewkd import hcl_loss
from kdbench.methods.vid import vid_loss
from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER, build, step_for

METHODS = ["vid", "nst", "kdsvd", "reviewkd"]


def make(name: str, student: ModelInfo = STUDENT, teacher: ModelInfo = TEACHER, **overrides):
    cls = get_method(name)
    torch.manual_seed(0)
    return construct_method(cls, cls.Params(**overrides), student, teacher, DATA, CONTEXT)


def extra_params(method) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", METHODS)
def test_default_stages_are_every_stage_but_the_first_of_the_shallower_model_by_relative_depth(name):
    method = build(name)
    # student 4 stages, teacher 5: depths 1/3, 2/3, 1 -> student 1, 2, 3 and teacher 1, 3, 4
    assert method.pairs == ((1, 1), (2, 3), (3, 4))
    assert method.student_stages == (1, 2, 3) and method.teacher_stages == (1, 3, 4)


@pytest.mark.parametrize("name", METHODS)
def test_explicit_indices_win_and_out_of_range_ones_fail_in_one_line(name):
    method = make(name, student_indices=(0, -1), teacher_indices=(1, -1))
    assert method.pairs == ((0, 1), (3, 4))
    with pytest.raises(ConfigError, match=f"{name}.student_indices=7 is out of range"):
        make(name, student_indices=(0, 7), teacher_indices=(1, 2))
    with pytest.raises(ConfigError, match="pairs 2 student stage"):
        make(name, student_indices=(0, 1), teacher_indices=(1,))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_model_without_taps_fails_at_construction_naming_it(name, side):
    bare = ModelInfo("my_mlp", 10, 64, stages=())
    student, teacher = (bare, TEACHER) if side == "student" else (STUDENT, bare)
    with pytest.raises(ModelError, match="'my_mlp'"):
        make(name, student, teacher)


@pytest.mark.parametrize(("name", "overrides"), [
    ("vid", {"weight": -1.0}), ("vid", {"eps": 0.0}), ("vid", {"init_pred_var": 1e-6}), ("nst", {"depths": (1.5,)}),
    ("kdsvd", {"k": 0}), ("reviewkd", {"warmup_epochs": -1}), ("reviewkd", {"max_mid_channels": 0}),
])
def test_invalid_params_are_rejected(name, overrides):
    with pytest.raises(ValueError):
        get_method(name).Params(**overrides)


def test_vid_starts_at_the_initial_variance_and_pools_the_larger_map_before_the_regressor():
    method = make("vid", student_indices=(0,), teacher_indices=(2,))  # student 16x16, teacher 4x4
    (log_scale,) = method.log_scales
    assert torch.allclose(torch.nn.functional.softplus(log_scale) + 1e-5, torch.full_like(log_scale, 5.0))
    step = step_for(method)
    f_s, f_t = step.student_features[0], step.teacher_features[2]
    mean = method.regressors[0](torch.nn.functional.adaptive_avg_pool2d(f_s, 4))
    expected = float(vid_loss(mean, f_t, log_scale).detach())
    assert float(method.losses(step)["loss_vid"].detach()) == pytest.approx(expected, rel=1e-6)
    # the regressor's three 1x1 convolutions (student -> teacher -> teacher channels) and one variance per channel
    assert extra_params(method) == 8 * 64 + 64 * 64 + 64 * 64 + 64


def test_vid_variance_gets_a_gradient():
    method = build("vid")
    sum(method.losses(step_for(method)).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.log_scales)


def test_nst_is_zero_for_the_same_maps_and_ignores_the_scale_of_each_channel():
    torch.manual_seed(1)
    f = torch.randn(4, 6, 5, 5)
    assert float(nst_loss([f], [f])) == pytest.approx(0.0, abs=1e-6)
    g = torch.randn(4, 9, 5, 5)
    scale = torch.rand(1, 9, 1, 1) + 0.5
    assert float(nst_loss([f], [g * scale])) == pytest.approx(float(nst_loss([f], [g])), rel=1e-5)
    assert float(nst_loss([f], [g])) > 0
    assert extra_params(build("nst")) == 0


def test_kdsvd_is_zero_when_the_student_has_the_teachers_maps_and_needs_two_pairs():
    torch.manual_seed(2)
    chain = [torch.randn(4, 6, 8, 8), torch.randn(4, 12, 4, 4), torch.randn(4, 24, 2, 2)]
    assert float(kdsvd_loss(chain, chain)) == pytest.approx(0.0, abs=1e-10)
    assert float(kdsvd_loss(chain, [torch.randn_like(f) for f in chain])) > 0
    with pytest.raises(ConfigError, match="at least 2"):
        make("kdsvd", depths=(1.0,))


def test_kdsvd_gives_finite_gradients_where_singular_values_repeat():
    torch.manual_seed(3)
    student = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)]
    student[1][0, :, :, 2:] = 0  # sample 0: rank 2 over a width of 6, four zero singular values
    for f in student:
        f.requires_grad_(True)
    kdsvd_loss(student, [torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)]).backward()
    assert all(torch.isfinite(f.grad).all() for f in student)
    assert student[1].grad[1].abs().sum() > 0  # the other sample keeps its gradient


def test_reviewkd_fuses_deep_to_shallow_into_the_teacher_shapes_and_adds_the_pooled_level():
    method = build("reviewkd")
    assert method.embeddings
    assert [abf.out_size for abf in method.abfs] == [(8, 8), (2, 2), (1, 1), (1, 1)]
    assert [abf.attention is not None for abf in method.abfs] == [True, True, True, False]
    assert method.abfs[0].reduce[0].out_channels == min(512, STUDENT.embedding_dim)
    plain = make("reviewkd", pooled_level=False)
    assert not plain.embeddings and len(plain.abfs) == 3 and plain.abfs[-1].attention is None
    assert extra_params(method) > extra_params(plain) > 0
    assert float(hcl_loss([torch.ones(2, 3, 4, 4)], [torch.ones(2, 3, 4, 4)])) == 0.0


def test_reviewkd_warms_up_over_20_one_based_epochs():
    method = build("reviewkd")
    step = step_for(method)

    def review_at(epoch: int) -> float:
        return float(method.losses(dataclasses.replace(step, epoch=epoch))["loss_review"].detach())

    full = review_at(19)
    assert review_at(0) == pytest.approx(full / 20, rel=1e-5)
    assert review_at(9) == pytest.approx(full / 2, rel=1e-5)
    assert review_at(30) == pytest.approx(full, rel=1e-6)
    no_warmup = make("reviewkd", warmup_epochs=0).losses(step)["loss_review"].detach()
    assert float(no_warmup) == pytest.approx(full, rel=1e-6)


def test_reviewkd_works_on_a_vit_shaped_teacher():
    vit = ModelInfo("vit", 10, 32, stages=tuple(StageShape(32, 2, 2, 16) for _ in range(6)))
    method = make("reviewkd", STUDENT, vit)
    assert method.pairs == ((1, 2), (2, 3), (3, 5))  # ViT blocks at the depths 1/3, 2/3, 1 of 4 stages
    g = torch.Generator().manual_seed(5)
    step = Step(images=torch.randn(8, 3, 32, 32, generator=g), labels=torch.arange(8), indices=torch.arange(8),
                student_logits=torch.randn(8, 10, generator=g, requires_grad=True),
                student_features={i: torch.randn(8, s.channels, s.height, s.width, generator=g, requires_grad=True)
                                  for i, s in enumerate(STUDENT.stages)},
                teacher_features={i: torch.randn(8, 32, 2, 2, generator=g) for i in range(6)},
                student_embedding=torch.randn(8, STUDENT.embedding_dim, generator=g, requires_grad=True),
                teacher_embedding=torch.randn(8, vit.embedding_dim, generator=g), epoch=19, epochs=20)
    terms = method.losses(step)
    terms["loss_review"].backward()
    assert torch.isfinite(terms["loss_review"]) and step.student_features[1].grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# End to end: `kdbench run` on digits, CNN -> CNN of other widths and strides, and CNN -> ViT


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "student", "image_size"), [
    ("test_resnet", "test_efficientnet", 8),
    ("test_resnet", "test_vit", 32),
])
def test_kdbench_run_trains_every_featuremap_method_end_to_end(results, teacher, student, image_size):
    args = ["run", "--dataset", "digits", "--image-size", str(image_size), "--teacher", teacher, "--student", student,
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results)]
    assert main(args + [arg for name in METHODS for arg in ("--method", name)]) == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (results / "runs").glob("*.json"))}
    assert set(records) == set(METHODS)
    for name, record in records.items():
        assert record["status"] == "ok", record["error"]
        term = {"vid": "loss_vid", "nst": "loss_nst", "kdsvd": "loss_svd", "reviewkd": "loss_review"}[name]
        assert math.isfinite(record["history"][0][term]) and record["history"][0][term] > 0
        assert (record["extra_params_m"] or 0) > 0 if name in ("vid", "reviewkd") else not record["extra_params_m"]
