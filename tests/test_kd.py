"""The KD loss against values computed independently (NumPy, from the formula in Hinton et al.)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.losses import kd_loss
from kdbench.methods.kd import LogitKD
from tests.golden.cases import DATA, STUDENT, TEACHER


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference_kd(zs: np.ndarray, zt: np.ndarray, t: float) -> float:
    ps, pt = softmax(zs / t), softmax(zt / t)
    return float((pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean() * t * t)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_loss_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(16, 100)) * 3, rng.normal(size=(16, 100)) * 5
    got = kd_loss(torch.tensor(zs), torch.tensor(zt), temperature).item()
    # the shared loss computes in float32 whatever the input dtype
    assert got == pytest.approx(reference_kd(zs, zt, temperature), rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, z + torch.randn(4, 10), 4.0).item() > 0


def test_hand_computed_two_class_case():
    # p_t = softmax([ln 3, 0]) = (0.75, 0.25); p_s = (0.5, 0.5); T = 1
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    got = kd_loss(torch.zeros(1, 2), torch.tensor([[np.log(3.0), 0.0]]), 1.0).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_weights_and_defaults_follow_the_crd_protocol():
    p = LogitKD.Params()
    assert (p.temperature, p.ce_weight, p.kd_weight) == (4.0, 0.1, 0.9)
    method = LogitKD(p, STUDENT, TEACHER, DATA)
    from tests.golden.cases import step_for

    step = step_for(method)
    terms = method.losses(step)
    ce = torch.nn.functional.cross_entropy(step.student_logits, step.labels).item()
    assert terms["loss_ce"].item() == pytest.approx(0.1 * ce, rel=1e-6)
    ref = reference_kd(step.student_logits.numpy().astype(np.float64), step.teacher_logits.numpy().astype(np.float64),
                       4.0)
    assert terms["loss_kd"].item() == pytest.approx(0.9 * ref, rel=1e-5)


def test_old_plugin_import_path_is_the_shared_loss():
    import kdbench.methods.kd

    assert kdbench.methods.kd.kd_loss is kd_loss


def test_non_positive_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        LogitKD.Params(temperature=0)
