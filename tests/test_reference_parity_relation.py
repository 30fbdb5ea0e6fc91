"""CRD, RKD, PKT, SP and CC against the authors' reference values (tests/reference), and CRD's negative sampling.

The learned projections are not run: the reference's inputs are already projected (``proj_s/t`` for CC,
``crd_v_s/t`` for CRD, L2-normalised), and the pure loss functions take them. CRD is checked on the given memory
banks and contrast indices of the reference.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.methods.cc import cc_adjacent_loss, cc_gaussian_loss
from kdbench.methods.crd import crd_loss, sample_contrast_indices
from kdbench.methods.pkt import pkt_loss
from kdbench.methods.rkd import rkd_angle, rkd_distance
from kdbench.methods.sp import sp_loss
from tests.reference import RTOL, expected, inputs


def _crd_inputs() -> tuple[torch.Tensor, ...]:
    x = inputs()
    return x["crd_v_s"], x["crd_v_t"], x["crd_memory_s"], x["crd_memory_t"], x["crd_contrast_idx"]


def test_crd_nce_given_z():
    # Key crd_nce: HobbitLong/RepDistiller crd/memory.py ContrastMemory + crd/criterion.py ContrastLoss (mdistiller,
    # torchdistill and AberHu agree), K = 16 negatives, N = 50, T = 0.07, Z_s and Z_t given.
    x = inputs()
    loss, z_s, z_t = crd_loss(*_crd_inputs(), z_s=x["crd_Z_s"], z_t=x["crd_Z_t"], temperature=0.07)
    assert loss.item() == pytest.approx(expected("crd_nce"), rel=RTOL)
    assert (z_s.item(), z_t.item()) == (x["crd_Z_s"].item(), x["crd_Z_t"].item())


def test_crd_nce_z_fixed_on_the_first_batch():
    # Key crd_nce_Zinit: the same code on its first call, where Z = N * mean of that side's exp-scores of the batch.
    loss, z_s, z_t = crd_loss(*_crd_inputs(), temperature=0.07)
    assert loss.item() == pytest.approx(expected("crd_nce_Zinit"), rel=RTOL)
    again, _, _ = crd_loss(*_crd_inputs(), z_s=z_s, z_t=z_t, temperature=0.07)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_crd_loss_leaves_the_banks_unchanged():
    v_s, v_t, mem_s, mem_t, idx = _crd_inputs()
    before = mem_s.clone(), mem_t.clone()
    crd_loss(v_s, v_t, mem_s, mem_t, idx)
    assert torch.equal(before[0], mem_s) and torch.equal(before[1], mem_t)


@pytest.mark.parametrize("exact", [True, False])
def test_crd_negatives_are_of_other_classes(exact):
    # The CRD code's mode='exact' (RepDistiller dataset/cifar100.py CIFAR100InstanceSample): column 0 is the
    # sample itself, the k others are drawn from the samples of the other classes.
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 2, 1, 0, 2])
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    indices = torch.tensor([0, 1, 2, 5, 8, 11])
    k = len(labels) - int(counts.max())  # 7: every other-class sample of the largest class
    torch.manual_seed(0)
    for _ in range(20):
        idx = sample_contrast_indices(order, start, counts, labels[indices], indices, k, exact=exact)
        assert idx.shape == (len(indices), k + 1) and idx.dtype == torch.int64
        assert torch.equal(idx[:, 0], indices)
        assert (labels[idx[:, 1:]] != labels[indices].unsqueeze(1)).all()
        if exact:  # without replacement: k distinct negatives per row
            assert all(len(set(row.tolist())) == k for row in idx[:, 1:])


def test_crd_negatives_cover_the_other_classes_uniformly():
    labels = torch.tensor([0] * 3 + [1] * 5 + [2] * 2)
    order, counts = torch.argsort(labels, stable=True), torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    torch.manual_seed(1)
    idx = sample_contrast_indices(order, start, counts, torch.zeros(4000, dtype=torch.long),
                                  torch.zeros(4000, dtype=torch.long), 3, exact=False)
    hits = torch.bincount(idx[:, 1:].reshape(-1), minlength=10).float()
    assert hits[:3].sum() == 0
    assert torch.allclose(hits[3:] / hits[3:].mean(), torch.ones(7), atol=0.1)


def test_rkd_d25_a50():
    # Key rkd_d25_a50: megvii-research/mdistiller distillers/RKD.py rkd_loss (= RepDistiller RKDLoss), 25 D + 50 A.
    x = inputs()
    got = 25 * rkd_distance(x["emb_s"], x["emb_t"]) + 50 * rkd_angle(x["emb_s"], x["emb_t"])
    assert got.item() == pytest.approx(expected("rkd_d25_a50"), rel=RTOL)


def test_rkd_distance():
    # Key rkd_distance: mdistiller rkd_loss(distance_weight=1, angle_weight=0).
    x = inputs()
    assert rkd_distance(x["emb_s"], x["emb_t"]).item() == pytest.approx(expected("rkd_distance"), rel=RTOL)


def test_rkd_angle():
    # Key rkd_angle: mdistiller rkd_loss(distance_weight=0, angle_weight=1).
    x = inputs()
    assert rkd_angle(x["emb_s"], x["emb_t"]).item() == pytest.approx(expected("rkd_angle"), rel=RTOL)


def test_pkt():
    # Key pkt: mdistiller distillers/PKT.py pkt_loss (= RepDistiller distiller_zoo/PKT.py PKT), eps 1e-7.
    x = inputs()
    assert pkt_loss(x["emb_s"], x["emb_t"]).item() == pytest.approx(expected("pkt"), rel=RTOL)


def test_sp_last_stage():
    # Key sp_last_stage: mdistiller distillers/SP.py sp_loss (= RepDistiller Similarity) on the last stage maps.
    x = inputs()
    got = sp_loss(x["feats_s"][-1:], x["feats_t"][-1:])
    assert got.item() == pytest.approx(expected("sp_last_stage"), rel=RTOL)


def test_sp_3stages():
    # Key sp_3stages: the same, summed over the three stage pairs.
    x = inputs()
    assert sp_loss(x["feats_s"], x["feats_t"]).item() == pytest.approx(expected("sp_3stages"), rel=RTOL)


def test_cc_adjacent_repdistiller():
    # Key cc_repdistiller: HobbitLong/RepDistiller distiller_zoo/CC.py Correlation, the code whose protocol (weight
    # 0.02 on LinearEmbed projections) kdbench's `cc` reproduces by default (correlation="adjacent").
    x = inputs()
    assert cc_adjacent_loss(x["proj_s"], x["proj_t"]).item() == pytest.approx(expected("cc_repdistiller"), rel=RTOL)


def test_cc_gaussian_p2_g04():
    # Key cc_gaussian_p2_g0.4: AberHu/Knowledge-Distillation-Zoo kd_losses/cc.py CC(gamma=0.4, P_order=2), kdbench's
    # correlation="gaussian".
    x = inputs()
    got = cc_gaussian_loss(x["proj_s"], x["proj_t"], gamma=0.4, order=2)
    assert got.item() == pytest.approx(expected("cc_gaussian_p2_g0.4"), rel=RTOL)
