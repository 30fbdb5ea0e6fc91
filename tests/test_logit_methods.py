"""Logit-family methods (dkd, dist, nkd, ctkd, kd_ls, dkd_ls): what is special about each, checked against
independent computations; the authors' values are in ``test_reference_parity_logit.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.distiller import Step, construct_method, get_method
from kdbench.losses import kd_loss
from kdbench.methods.ctkd import cosine_curriculum
from kdbench.methods.dist import dist_loss
from kdbench.methods.dkd import dkd_terms
from kdbench.methods.nkd import nkd_terms
from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER

LOGIT_METHODS = ["dkd", "dkd_ls", "dist", "nkd", "ctkd", "ctkd_ls", "kd_ls"]


def make(name: str, **overrides):
    cls = get_method(name)
    return construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, CONTEXT)


def random_step(epoch: int = 0, seed: int = 0, batch: int = 16, classes: int = 10) -> Step:
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(batch, classes, generator=g)
    t = 3 * torch.randn(batch, classes, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return Step(images=torch.zeros(batch, 3, 8, 8), labels=y, indices=torch.arange(batch), student_logits=s,
                teacher_logits=t, epoch=epoch, epochs=240, student_heads=(s,))


# ---------------------------------------------------------------------------------------------------------------
# DKD


@pytest.mark.parametrize(("epoch", "ramp"), [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (20, 1.0), (239, 1.0)])
def test_dkd_warmup_ramps_over_the_first_twenty_paper_epochs(epoch, ramp):
    method = make("dkd")
    step = random_step(epoch)
    tckd, nckd = dkd_terms(step.student_logits, step.teacher_logits, step.labels, 4.0)
    terms = method.losses(step)
    assert terms["loss_tckd"].item() == pytest.approx(ramp * 1.0 * tckd.item(), rel=1e-6)
    assert terms["loss_nckd"].item() == pytest.approx(ramp * 8.0 * nckd.item(), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(step.student_logits, step.labels).item()
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-6)  # the CE is not ramped


def test_dkd_decomposes_kd_per_sample():
    # DKD's Eq. 7: KD = TCKD + (1 - p_t[target]) NCKD for each sample (at any temperature).
    step = random_step(seed=3)
    for temperature in (1.0, 4.0):
        for i in range(len(step.labels)):
            s, t, y = step.student_logits[i:i + 1], step.teacher_logits[i:i + 1], step.labels[i:i + 1]
            tckd, nckd = dkd_terms(s, t, y, temperature)
            p_target = torch.softmax(t / temperature, dim=1)[0, y].item()
            assert kd_loss(s, t, temperature).item() == pytest.approx(tckd.item() + (1 - p_target) * nckd.item(),
                                                                      rel=1e-4, abs=1e-6)


def test_dkd_ls_is_dkd_on_standardised_logits_with_the_kd_weight_folded_in():
    step = random_step(epoch=30)
    ls = make("dkd_ls").losses(step)
    plain = make("dkd", alpha=9.0, beta=72.0, temperature=2.0, standardize=True).losses(step)
    for term in ("loss_ce", "loss_tckd", "loss_nckd"):
        assert ls[term].item() == pytest.approx(plain[term].item(), rel=1e-6)
    p = get_method("dkd_ls").Params()
    assert (p.alpha, p.beta, p.temperature, p.warmup, p.standardize) == (9.0, 72.0, 2.0, 20.0, True)


# ---------------------------------------------------------------------------------------------------------------
# Logit standardisation


@pytest.mark.parametrize("name", ["kd_ls", "dkd_ls", "ctkd_ls"])
def test_standardised_losses_ignore_each_samples_logit_scale_and_shift(name):
    method = make(name)
    step = random_step(epoch=30)
    scale = torch.rand(len(step.labels), 1) * 3 + 0.5
    shifted = random_step(epoch=30)
    shifted.student_logits = step.student_logits * scale + 7.0
    shifted.teacher_logits = step.teacher_logits * scale.flip(0) - 2.0
    before, after = method.losses(step), method.losses(shifted)
    for term in before:
        if term != "loss_ce":
            assert after[term].item() == pytest.approx(before[term].item(), rel=1e-4)


def test_kd_ls_defaults_are_the_papers_kd_setting():
    p = get_method("kd_ls").Params()
    assert (p.temperature, p.ce_weight, p.kd_weight, p.standardize) == (2.0, 0.1, 9.0, True)
    assert get_method("kd").Params().standardize is False


def test_ctkd_ls_is_ctkd_on_standardised_logits_with_the_papers_weights():
    p = get_method("ctkd_ls").Params()
    assert (p.ce_weight, p.kd_weight, p.standardize) == (0.1, 9.0, True)
    step = random_step(epoch=3)
    ls = make("ctkd_ls").losses(step)
    plain = make("ctkd", kd_weight=9.0, standardize=True).losses(step)
    assert ls["loss_kd"].item() == pytest.approx(plain["loss_kd"].item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# DIST


def test_dist_matches_numpy_pearson_and_is_zero_for_identical_predictions():
    step = random_step(seed=5)
    s, t = step.student_logits.double().numpy(), step.teacher_logits.double().numpy()

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    y_s, y_t = softmax(s / 4), softmax(t / 4)
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(len(y_s))])
    intra = 1 - np.mean([np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(y_s.shape[1])])
    got = dist_loss(step.student_logits, step.teacher_logits, 1.0, 2.0, 4.0).item()
    assert got == pytest.approx(16 * (inter + 2 * intra), rel=1e-4)
    assert dist_loss(step.teacher_logits, step.teacher_logits, 1.0, 1.0, 4.0).item() == pytest.approx(0, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# NKD


def test_nkd_normalises_the_non_target_distributions():
    step = random_step(seed=7)
    s, t, y = step.student_logits, step.teacher_logits, step.labels
    target, non_target = nkd_terms(s, t, y, 3.0, 2.0)
    # the non-target term: the full softmax at T restricted to the other classes and renormalised to sum to 1
    p_s, p_t = torch.softmax(s.double() / 3, dim=1), torch.softmax(t.double() / 3, dim=1)
    others = torch.nn.functional.one_hot(y, 10) == 0
    q_s = (p_s * others) / (p_s * others).sum(1, keepdim=True)
    q_t = (p_t * others) / (p_t * others).sum(1, keepdim=True)
    reference = -2.0 * 9 * (q_t * torch.where(others, q_s.log(), 0)).sum(1).mean()
    assert non_target.item() == pytest.approx(reference.item(), rel=1e-5)
    # ... so it ignores the target logits; the target term uses T = 1 and the unnormalised teacher probability
    moved_s, moved_t = s.clone(), t.clone()
    moved_s[torch.arange(len(y)), y] += 5.0
    moved_t[torch.arange(len(y)), y] -= 3.0
    assert nkd_terms(moved_s, moved_t, y, 3.0, 2.0)[1].item() == pytest.approx(non_target.item(), rel=1e-5)
    p1_s, p1_t = torch.softmax(s.double(), dim=1), torch.softmax(t.double(), dim=1)
    rows = torch.arange(len(y))
    assert target.item() == pytest.approx(-(p1_t[rows, y] * p1_s[rows, y].log()).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# CTKD


@pytest.mark.parametrize(("epoch", "value"), [(0, 0.0), (1, (1 - math.cos(math.pi / 10)) / 2), (5, 0.5), (10, 1.0),
                                              (11, 1.0), (240, 1.0)])
def test_ctkd_curriculum_is_a_cosine_ramp_over_ten_epochs(epoch, value):
    assert cosine_curriculum(epoch, 10) == pytest.approx(value, abs=1e-12)


def test_ctkd_step_uses_the_papers_one_based_epoch():
    method = make("ctkd")
    assert method.reversal_strength(random_step(epoch=0)) == pytest.approx(cosine_curriculum(1, 10))
    assert method.reversal_strength(random_step(epoch=4)) == pytest.approx(0.5)
    assert method.reversal_strength(random_step(epoch=9)) == pytest.approx(1.0)


def test_ctkd_temperature_starts_inside_its_bounds_and_is_the_only_extra_parameter():
    method = make("ctkd")
    assert method.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    params = [p for group in method.param_groups() for p in group["params"]]
    assert len(params) == 1 and params[0] is method.raw_temperature


@pytest.mark.parametrize("epoch", [0, 4, 20])
def test_ctkd_reverses_the_temperatures_gradient_and_leaves_the_students_alone(epoch):
    method = make("ctkd")
    step = random_step(epoch=epoch)
    step.student_logits.requires_grad_(True)
    method.losses(step)["loss_kd"].backward()
    reversed_grad, student_grad = method.raw_temperature.grad.clone(), step.student_logits.grad.clone()
    # the same loss without the reversal layer
    raw = method.raw_temperature.detach().clone().requires_grad_(True)
    student = step.student_logits.detach().clone().requires_grad_(True)
    temperature = 1 + 20 * torch.sigmoid(raw[0])
    (0.9 * kd_loss(student, step.teacher_logits, temperature)).backward()
    strength = cosine_curriculum(epoch + 1, 10)
    assert reversed_grad.item() == pytest.approx(-strength * raw.grad.item(), rel=1e-5)
    assert abs(raw.grad.item()) > 0
    torch.testing.assert_close(student_grad, student.grad)


# ---------------------------------------------------------------------------------------------------------------
# All of them


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_invalid_params_are_rejected(name):
    cls = get_method(name)
    field = "min_temperature" if name.startswith("ctkd") else "temperature"
    with pytest.raises(ValueError, match="temperature"):
        cls.Params(**{field: 0.0})


@pytest.mark.slow
@pytest.mark.parametrize(("student", "size"), [("test_efficientnet", []), ("test_vit", ["--image-size", "16"])])
def test_kdbench_run_logit_methods_end_to_end_on_digits(student, size, results: Path, one_torch_thread):
    args = ["run", "--dataset", "digits", "--teacher", "test_resnet", "--student", student, *size, "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress", "--results",
            str(results)]
    for name in LOGIT_METHODS:
        args += ["--method", name]
    assert main(args) == 0
    records = {r["method"]: r for r in (json.loads(f.read_text()) for f in (results / "runs").glob("*.json"))}
    assert set(records) == set(LOGIT_METHODS)
    for name, record in records.items():
        assert record["status"] == "ok", name
        assert 0 <= record["top1"] <= 100
    assert records["ctkd"]["extra_params_m"] == pytest.approx(1e-6)  # the learnable temperature
    assert records["dkd"]["extra_params_m"] == 0
    assert {"loss_ce", "loss_tckd", "loss_nckd"} <= set(records["dkd"]["history"][0])
