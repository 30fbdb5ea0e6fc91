"""WKD-L: logit distillation by a discrete Wasserstein distance (Sinkhorn) over the non-target classes.

Loss pieces only: the method class needs a class cost matrix computed from the teacher before training (its
classifier weights, or class features over the training set), which the harness does not offer yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sharpened_cost(distance: Tensor, sharpen: float) -> Tensor:
    """``1 - exp(-sharpen * distance)`` (no change for ``sharpen`` 0)."""
    return distance if sharpen == 0 else 1 - torch.exp(-sharpen * distance)


def classifier_cost(classifier_weight: Tensor, sharpen: float = 1.0) -> Tensor:
    """(K, K) cost from the cosine distance of the classifier's class rows (``COST_MATRIX: fc``)."""
    w = F.normalize(classifier_weight.float(), dim=1)
    return sharpened_cost(1 - w @ w.t(), sharpen)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two (n, d) sample sets, each centred over its samples."""
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    return (y.t() @ x).norm().pow(2) / ((x.t() @ x).norm() * (y.t() @ y).norm())


def cka_cost(class_features: Tensor, sharpen: float = 1.0) -> Tensor:
    """(K, K) cost ``1 - linear CKA`` between the classes' (n, d) teacher feature samples (the released configs)."""
    k = class_features.shape[0]
    feats = class_features.float()
    similarity = torch.stack([torch.stack([linear_cka(feats[i], feats[j]) for j in range(k)]) for i in range(k)])
    return sharpened_cost(1 - similarity, sharpen)


def sinkhorn_distance(p: Tensor, q: Tensor, cost: Tensor, reg: float = 0.05, iterations: int = 10) -> Tensor:
    """Mean over the batch of the entropic transport cost between rows of ``p`` and ``q`` under (B, n, n) ``cost``.

    ``cost`` is clamped to relu(cost) + 1e-8; K = exp(-cost / reg); ``iterations`` Sinkhorn rounds from
    u = 1/n: v = q / (Kᵀu + 1e-8), u = p / (Kv + 1e-8); the plan u_i K_ij v_j is summed against the cost.
    """
    cost = F.relu(cost) + 1e-8
    kernel = torch.exp(-cost / reg)
    u = torch.full_like(p, 1.0 / p.shape[1]).unsqueeze(2)
    p, q = p.unsqueeze(2), q.unsqueeze(2)
    for _ in range(iterations):
        v = q / (kernel.transpose(1, 2) @ u + 1e-8)
        u = p / (kernel @ v + 1e-8)
    plan = u * kernel * v.transpose(1, 2)
    return (plan * cost).sum(dim=(1, 2)).mean()


def wkd_logit_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cost: Tensor, temperature: float,
                   gamma: float, reg: float = 0.05, iterations: int = 10) -> Tensor:
    """WKD-L as the authors' code computes it: a target term plus ``gamma`` times the non-target transport cost.

    target = -mean_b p_t[y] · log p_s[y] at T = 1 (unweighted); the Wasserstein part compares softmax(z / T) of the
    K - 1 non-target logits, under the cost matrix with the target's row and column removed.
    """
    s, t = student_logits.float(), teacher_logits.float()
    batch, classes = s.shape
    index = labels.reshape(-1, 1)
    target = -(F.softmax(t, dim=1).gather(1, index) * F.log_softmax(s, dim=1).gather(1, index)).mean()
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, index, False)
    s, t = s[keep].reshape(batch, -1), t[keep].reshape(batch, -1)
    pair = keep.unsqueeze(1) & keep.unsqueeze(2)
    sub_cost = cost.float().expand(batch, classes, classes)[pair].reshape(batch, classes - 1, classes - 1)
    wd = sinkhorn_distance(F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), sub_cost, reg,
                           iterations)
    return target + gamma * wd
