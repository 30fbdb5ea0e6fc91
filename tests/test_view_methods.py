"""MLKD (a second, strong view), OFA (logit branches on student stages) and DeiT (a distillation-token head):
the code's quirks on hand-built steps, branch layouts on CNN and ViT shapes, the distilled student's heads, and
`kdbench run` end to end on digits.

The distilled DeiT student is ``test_deit_distilled`` (tests/tiny_models.py): timm has no tiny distilled model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.distiller import TeacherParts, construct_method
from kdbench.errors import ModelError
from kdbench.features import ModelInfo, StageShape, describe_model
from kdbench.losses import kd_loss
from kdbench.methods.deit import DeiT
from kdbench.methods.mlkd import MLKD, low_confidence_fractions
from kdbench.methods.ofa import OFA
from kdbench.models import count_params_m, create_model
from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER, build, step_for
from tests.tiny_models import TINY_DEIT

# ---------------------------------------------------------------------------------------------------------------
# MLKD


def test_mlkd_asks_for_the_strong_view():
    assert build("mlkd").extra_views == ("strong",)


def test_mlkd_strong_view_enters_only_the_ce_and_the_kd_at_the_first_three_temperatures():
    # KD_ours.forward_train: strong-view kd at T = 4, 3, 5; its "strong" kd at T = 2, 6 reads the weak logits, and
    # the strong-view cc and bc are computed but not returned.
    method = build("mlkd")
    step = step_for(method)
    before = method.losses(step)
    strong = step.views["strong"]
    old = strong.student_logits
    strong.student_logits = old + torch.randn_like(old)
    after = method.losses(step)
    assert after["loss_cc"] == before["loss_cc"] and after["loss_bc"] == before["loss_bc"]
    change = sum(kd_loss(strong.student_logits, strong.teacher_logits, t) - kd_loss(old, strong.teacher_logits, t)
                 for t in (4.0, 3.0, 5.0))
    assert (after["loss_kd"] - before["loss_kd"]).item() == pytest.approx(0.9 * change.item(), rel=1e-4)


def test_mlkd_masks_keep_half_of_the_batch_and_of_the_classes():
    logits = torch.tensor([[3.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.5, 0.0], [2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    samples, classes = low_confidence_fractions(logits)
    assert samples.item() == 0.5 and classes.item() == 0.5
    samples, classes = low_confidence_fractions(torch.zeros(5, 3))  # ties: every sample and class at the median
    assert samples.item() == 1.0 and classes.item() == 1.0


def test_standardised_mlkd_kd_ignores_the_scale_and_shift_of_the_student_logits():
    method = construct_method(MLKD, MLKD.Params(standardize=True), STUDENT, TEACHER, DATA, CONTEXT)
    step = step_for(method)
    before = method.losses(step)["loss_kd"]
    step.student_logits = 3 * step.student_logits + 5
    step.views["strong"].student_logits = 0.5 * step.views["strong"].student_logits - 2
    assert method.losses(step)["loss_kd"].item() == pytest.approx(before.item(), rel=1e-5)


@pytest.mark.parametrize("overrides", [{"temperature": 0}, {"extra_temperatures": (3.0, -1.0)}, {"kd_weight": -1}])
def test_mlkd_rejects_bad_params(overrides):
    with pytest.raises(ValueError, match="mlkd"):
        MLKD.Params(**overrides)


# ---------------------------------------------------------------------------------------------------------------
# OFA

RESNET_LIKE = ModelInfo("resnet", 10, 64, stages=(StageShape(16, 16, 16, 2), StageShape(16, 8, 8, 4),
                                                  StageShape(32, 4, 4, 8), StageShape(48, 2, 2, 16),
                                                  StageShape(64, 1, 1, 32)))
VIT_LIKE = ModelInfo("vit", 10, 64, stages=tuple(StageShape(64, 14, 14, 16) for _ in range(12)))


def test_ofa_branches_follow_the_four_stage_layout_on_a_cnn_student():
    method = construct_method(OFA, OFA.Params(), RESNET_LIKE, TEACHER, DATA, CONTEXT)
    assert method.student_stages == (1, 2, 3, 4)
    width = max(RESNET_LIKE.num_features, TEACHER.num_features)
    for stage, downsamples in [(1, 3), (2, 2), (3, 1)]:
        body = method.branches[str(stage)]
        assert len(body) == downsamples + 3  # SepConvs, pool, flatten, linear
        assert body[downsamples - 1][-3].out_channels == width
    assert isinstance(method.branches["4"][0], torch.nn.Conv2d)
    for stage in method.student_stages:
        s = RESNET_LIKE.stages[stage]
        assert method.branches[str(stage)](torch.randn(2, s.channels, s.height, s.width)).shape == (2, 10)


def test_ofa_branches_on_a_vit_student_merge_patches_and_run_transformer_blocks():
    method = construct_method(OFA, OFA.Params(), VIT_LIKE, TEACHER, DATA, CONTEXT)
    assert method.student_stages == (3, 6, 8, 11)
    layout = {s: (len(b.merges), len(b.blocks)) for s, b in method.branches.items()}
    assert layout == {"3": (1, 3), "6": (1, 2), "8": (1, 1), "11": (1, 1)}  # 14x14 -> 7x7 as the code's DeiT-T
    assert method.branches["3"](torch.randn(2, 64, 14, 14)).shape == (2, 10)


def test_ofa_needs_student_taps_but_not_teacher_taps():
    bare = ModelInfo("my_mlp", 10, 64, stages=())
    construct_method(OFA, OFA.Params(), STUDENT, bare, DATA, CONTEXT)
    with pytest.raises(ModelError) as err:
        construct_method(OFA, OFA.Params(), bare, TEACHER, DATA, CONTEXT)
    assert "\n" not in str(err.value) and "'my_mlp'" in str(err.value)


def test_ofa_final_logit_term_is_cross_entropy_with_the_teacher_at_eps_1():
    method = build("ofa")
    step = step_for(method)
    p_t = torch.softmax(step.teacher_logits, dim=1)
    expected = -(p_t * torch.log_softmax(step.student_logits, dim=1)).sum(1).mean()
    assert method.losses(step)["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("overrides", [{"eps": 0}, {"temperature": -1}, {"depths": (0.5, 1.5)}])
def test_ofa_rejects_bad_params(overrides):
    with pytest.raises(ValueError, match="ofa"):
        OFA.Params(**overrides)


# ---------------------------------------------------------------------------------------------------------------
# DeiT


def test_deit_prepares_a_distilled_student_with_two_training_heads_and_one_eval_output():
    student = create_model(TINY_DEIT, num_classes=10, in_chans=1, image_size=8)
    info = describe_model(student, TINY_DEIT, 1, 8)
    method = construct_method(DeiT, DeiT.Params(), info, TEACHER, DATA, CONTEXT)
    assert method.training_student(student) is student
    assert method.deployed_student(student, TeacherParts()) is student  # deployed: the student in eval mode
    images = torch.randn(4, 1, 8, 8)
    cls_logits, dist_logits = student.train()(images)
    student.eval()
    with torch.no_grad():
        deployed = student(images)
        final = student.forward_features(images)
    assert deployed.shape == (4, 10)
    head, head_dist = student.get_classifier()
    assert torch.allclose(deployed, (head(final[:, 0]) + head_dist(final[:, 1])) / 2, atol=1e-6)
    assert cls_logits.shape == dist_logits.shape == (4, 10)


def test_deit_rejects_a_student_without_a_distillation_token_in_one_line():
    student = create_model("test_efficientnet", num_classes=10, in_chans=1, image_size=8)
    info = describe_model(student, "test_efficientnet", 1, 8)
    method = construct_method(DeiT, DeiT.Params(), info, TEACHER, DATA, CONTEXT)
    with pytest.raises(ModelError) as err:
        method.training_student(student)
    assert "\n" not in str(err.value) and "'test_efficientnet'" in str(err.value)


def test_deit_losses_need_two_heads():
    method = build("deit")
    step = dataclasses.replace(step_for(method), student_heads=())
    with pytest.raises(ModelError, match="distillation-token"):
        method.losses(step)


@pytest.mark.parametrize("overrides", [{"distillation_type": "none"}, {"alpha": 1.5}, {"tau": 0}])
def test_deit_rejects_bad_params(overrides):
    with pytest.raises(ValueError):
        DeiT.Params(**overrides)


# ---------------------------------------------------------------------------------------------------------------
# End to end: `kdbench run` on digits


def run_args(results: Path, method: str, teacher: str, student: str, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--teacher", teacher, "--student", student, "--method", method,
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), *extra]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "teacher", "student", "extra", "terms"), [
    ("mlkd", "test_resnet", "test_efficientnet", (), {"loss_ce", "loss_kd", "loss_cc", "loss_bc"}),
    ("ofa", "test_resnet", "test_efficientnet", (), {"loss_ce", "loss_kd", "loss_ofa"}),
    ("ofa", "test_resnet", "test_vit", ("--image-size", "32"), {"loss_ce", "loss_kd", "loss_ofa"}),  # ViT student
    ("ofa", "test_vit", "test_efficientnet", ("--image-size", "32"), {"loss_ce", "loss_kd", "loss_ofa"}),
    ("deit", "test_resnet", TINY_DEIT, (), {"loss_ce", "loss_kd"}),
])
def test_kdbench_run_end_to_end_on_digits(method, teacher, student, extra, terms, results, one_torch_thread):
    assert main(run_args(results, method, teacher, student, *extra)) == 0
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "ok" and record["method"] == method
    assert terms <= set(record["history"][0]) and all(math.isfinite(record["history"][0][t]) for t in terms)
    size = int(extra[1]) if extra else 8
    fresh = create_model(student, num_classes=10, in_chans=1, image_size=size)
    assert record["params_m"] == pytest.approx(count_params_m(fresh))  # branches are not deployed
    assert (record["extra_params_m"] > 0) == (method == "ofa")


def test_kdbench_run_deit_without_a_distillation_token_fails_in_one_line(results, capsys):
    assert main(run_args(results, "deit", "test_resnet", "test_efficientnet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distillation token" in err[0] and "'test_efficientnet'" in err[0]
