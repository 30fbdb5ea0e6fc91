"""MLKD, OFA and DeiT against the authors' reference values (tests/reference).

Each key is checked twice: on the pure loss function, and through the method's ``losses(step)`` on a Step built
from the reference inputs (``logits_s``/``logits_t`` as the main (weak) view, ``logits_s_aug``/``logits_t_aug`` as
the strong view, ``target`` as labels), with the protocol weights divided out or set to 1.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.data import DatasetInfo
from kdbench.distiller import RunContext, Step, View, construct_method
from kdbench.features import ModelInfo, StageShape
from kdbench.methods.deit import DeiT, deit_distillation_loss
from kdbench.methods.mlkd import MLKD, mlkd_loss
from kdbench.methods.ofa import OFA, ofa_loss
from tests.reference import RTOL, expected, inputs

NUM_CLASSES = 10
DATA = DatasetInfo(name="reference", num_classes=NUM_CLASSES, in_chans=3, image_size=32, native_size=32,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), flip=False, crop_padding=0,
                   sizes={"train": 8, "val": 0, "test": 8})
CONTEXT = RunContext(epochs=1, steps_per_epoch=1, batch_size=8, num_train=8, num_classes=NUM_CLASSES,
                     train_labels=torch.zeros(8, dtype=torch.int64))
STUDENT = ModelInfo("student", NUM_CLASSES, 32, stages=(
    StageShape(8, 8, 8, 2), StageShape(16, 4, 4, 4), StageShape(32, 2, 2, 8), StageShape(32, 1, 1, 16)))
TEACHER = ModelInfo("teacher", NUM_CLASSES, 64, stages=())


def reference_step(heads: tuple[torch.Tensor, ...] | None = None) -> Step:
    """The reference inputs as one training step: weak view in the main fields, strong view in views["strong"]."""
    x = inputs()
    strong = View(images=torch.zeros(8, 3, 32, 32), student_logits=x["logits_s_aug"], teacher_logits=x["logits_t_aug"])
    return Step(images=torch.zeros(8, 3, 32, 32), labels=x["target"], indices=torch.arange(8),
                student_logits=x["logits_s"], teacher_logits=x["logits_t"], student_heads=heads or (x["logits_s"],),
                views={"strong": strong})


def build(cls, **overrides):
    return construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, CONTEXT)


# ---------------------------------------------------------------------------------------------------------------
# MLKD: Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py KD_ours.forward_train (the
# logit-standardization-KD repo's MLKD.py gives the same values), KD_WEIGHT = 1, T = 4 plus {3, 5, 2, 6}.


def _mlkd_terms(temperature: float = 4.0, standardize: bool = False) -> tuple[torch.Tensor, ...]:
    x = inputs()
    return mlkd_loss(x["logits_s"], x["logits_t"], x["logits_s_aug"], x["logits_t_aug"],
                     (temperature, 3.0, 5.0, 2.0, 6.0), standardize=standardize)


@pytest.mark.parametrize(("key", "index"), [("mlkd_T4_kd", 0), ("mlkd_T4_cc", 1), ("mlkd_T4_bc", 2)])
def test_mlkd_terms(key, index):
    # Keys mlkd_T4_kd / mlkd_T4_cc / mlkd_T4_bc: the loss_kd, loss_cc and loss_bc that KD_ours.forward_train
    # returns (masked weak-view sums, strong-view kd at T 4, 3, 5 and weak-view kd at T 2, 6).
    assert _mlkd_terms()[index].item() == pytest.approx(expected(key), rel=RTOL)


def test_mlkd_total():
    # Key mlkd_T4_total: loss_kd + loss_cc + loss_bc of KD_ours.forward_train.
    assert sum(_mlkd_terms()).item() == pytest.approx(expected("mlkd_T4_total"), rel=RTOL)


def test_logit_standardised_mlkd_total():
    # Key logit_std_mlkd_T2_total: sunshangquan/logit-standardization-KD mdistiller/distillers/MLKD.py with
    # LOGIT_STAND, base T = 2: z-scored logits in the kd terms only, raw logits in the masks, cc and bc.
    assert sum(_mlkd_terms(2.0, standardize=True)).item() == pytest.approx(expected("logit_std_mlkd_T2_total"),
                                                                            rel=RTOL)


@pytest.mark.parametrize(("overrides", "total_key"), [({}, "mlkd_T4_total"),
                                                      ({"temperature": 2.0, "standardize": True},
                                                       "logit_std_mlkd_T2_total")])
def test_mlkd_method_losses_on_the_reference_step(overrides, total_key):
    # Keys mlkd_T4_* (and logit_std_mlkd_T2_total) through MLKD.losses: the kd weight divided out of each term.
    method = build(MLKD, **overrides)
    assert method.extra_views == ("strong",)
    terms = method.losses(reference_step())
    kd_weight = method.params.kd_weight
    distill = (terms["loss_kd"] + terms["loss_cc"] + terms["loss_bc"]) / kd_weight
    assert distill.item() == pytest.approx(expected(total_key), rel=RTOL)
    if not overrides:
        for term, key in [("loss_kd", "mlkd_T4_kd"), ("loss_cc", "mlkd_T4_cc"), ("loss_bc", "mlkd_T4_bc")]:
            assert (terms[term] / kd_weight).item() == pytest.approx(expected(key), rel=RTOL)
    x = inputs()
    ce = torch.nn.functional.cross_entropy
    two_views = ce(x["logits_s"], x["target"]) + ce(x["logits_s_aug"], x["target"])
    assert terms["loss_ce"].item() == pytest.approx(0.1 * two_views.item(), rel=RTOL)


def test_mlkd_defaults_follow_the_code():
    p = MLKD.Params()
    assert (p.temperature, p.extra_temperatures, p.ce_weight, p.kd_weight, p.standardize) == (
        4.0, (3.0, 5.0, 2.0, 6.0), 0.1, 0.9, False)


# ---------------------------------------------------------------------------------------------------------------
# OFA: Hao840/OFAKD distillers/ofa.py ofa_loss, T = 1, on the final logits (the method's loss_kd).


@pytest.mark.parametrize(("eps", "key"), [(1.0, "ofa_eps1_T1"), (1.5, "ofa_eps1.5_T1")])
def test_ofa_loss(eps, key):
    # Keys ofa_eps1_T1 / ofa_eps1.5_T1: mean_b sum_c -((p_t + onehot)^eps - onehot) log p_s.
    x = inputs()
    assert ofa_loss(x["logits_s"], x["logits_t"], x["target"], eps, 1.0).item() == pytest.approx(expected(key),
                                                                                                  rel=RTOL)


@pytest.mark.parametrize(("eps", "key"), [(1.0, "ofa_eps1_T1"), (1.5, "ofa_eps1.5_T1")])
def test_ofa_method_final_logit_term_on_the_reference_step(eps, key):
    # Keys ofa_eps1_T1 / ofa_eps1.5_T1 through OFA.losses (kd weight 1, the code's default).
    method = build(OFA, eps=eps)
    step = reference_step()
    torch.manual_seed(0)
    step.student_features = {s: torch.randn(8, STUDENT.stages[s].channels, STUDENT.stages[s].height,
                                            STUDENT.stages[s].width) for s in method.student_stages}
    terms = method.losses(step)
    assert terms["loss_kd"].item() == pytest.approx(expected(key), rel=RTOL)
    branches = sum(ofa_loss(head(step.student_features[int(s)]), step.teacher_logits, step.labels, eps)
                   for s, head in method.branches.items())
    assert terms["loss_ofa"].item() == pytest.approx(branches.item(), rel=RTOL)


# ---------------------------------------------------------------------------------------------------------------
# DeiT: facebookresearch/deit losses.py DistillationLoss, alpha mixing not included in the keys.


@pytest.mark.parametrize(("kind", "key"), [("soft", "deit_soft_T1"), ("hard", "deit_hard")])
def test_deit_distillation_loss(kind, key):
    # Keys deit_soft_T1 (T² sum KL / (B*C)) and deit_hard (CE to the teacher's argmax); logits_s is the
    # distillation-token output.
    x = inputs()
    loss = deit_distillation_loss(x["logits_s"], x["logits_t"], kind, 1.0)
    assert loss.item() == pytest.approx(expected(key), rel=RTOL)


@pytest.mark.parametrize(("kind", "key"), [("soft", "deit_soft_T1"), ("hard", "deit_hard")])
def test_deit_method_losses_on_the_reference_step(kind, key):
    # Keys deit_soft_T1 / deit_hard through DeiT.losses: the distillation-token head is the second head; alpha
    # divided out; the class-token head (here logits_s_aug, any tensor) gets (1 - alpha) CE.
    x = inputs()
    method = build(DeiT, distillation_type=kind)
    terms = method.losses(reference_step(heads=(x["logits_s_aug"], x["logits_s"])))
    alpha = method.params.alpha
    assert (terms["loss_kd"] / alpha).item() == pytest.approx(expected(key), rel=RTOL)
    ce = torch.nn.functional.cross_entropy(x["logits_s_aug"], x["target"])
    assert terms["loss_ce"].item() == pytest.approx((1 - alpha) * ce.item(), rel=RTOL)


def test_deit_defaults_follow_the_code_and_paper():
    p = DeiT.Params()
    assert (p.distillation_type, p.alpha, p.tau) == ("hard", 0.5, 1.0)
