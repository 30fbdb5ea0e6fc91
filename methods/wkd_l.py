"""WKD-L: logit distillation by a discrete Wasserstein distance (Sinkhorn) over the non-target classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, TeacherBatch, register_method, tunable, valid
from kdbench.errors import ConfigError
from kdbench.losses import cross_entropy
from kdbench.methods.wkd_f import cosine_decayed

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo
    from kdbench.features import ModelInfo

#: the cost matrices WKD-L offers: name -> the teacher output its class samples are drawn from
COSTS = {"cka": "final_map", "cka_logits": "logits", "classifier": None}


def sharpened_cost(distance: Tensor, sharpen: float) -> Tensor:
    """``1 - exp(-sharpen * distance)`` (no change for ``sharpen`` 0)."""
    return distance if sharpen == 0 else 1 - torch.exp(-sharpen * distance)


def classifier_cost(classifier_weight: Tensor, sharpen: float = 1.0) -> Tensor:
    """(K, K) cost from the cosine distance of the classifier's class rows (``COST_MATRIX: fc``)."""
    w = F.normalize(classifier_weight.float(), dim=1)
    return sharpened_cost(1 - w @ w.t(), sharpen)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA ``|yᵀx|² / (|xᵀx| |yᵀy|)`` (Frobenius norms) of two (n, d) sample sets, each centred."""
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    return (y.t() @ x).norm().pow(2) / ((x.t() @ x).norm() * (y.t() @ y).norm())


def cka_cost(class_features: Tensor, sharpen: float = 1.0) -> Tensor:
    """(K, K) cost ``1 - linear CKA`` between the classes' (n, d) teacher feature samples (the released configs).

    :func:`linear_cka` of every pair, the d x d cross products in blocks of classes (row ``r`` of one class is
    paired with row ``r`` of the other, as in the authors' ``generate_cost_matrix.py``).
    """
    feats = class_features.float()
    feats = feats - feats.mean(1, keepdim=True)
    k, _, d = feats.shape
    own = torch.linalg.matrix_norm(feats.transpose(1, 2) @ feats)
    similarity = feats.new_zeros(k, k)
    block = max(1, 2**24 // (d * d))
    for i in range(k):
        for j in range(i, k, block):
            cross = torch.linalg.matrix_norm(feats[j:j + block].transpose(1, 2) @ feats[i]).pow(2)
            similarity[i, j:j + block] = similarity[j:j + block, i] = cross / (own[i] * own[j:j + block])
    return sharpened_cost(1 - similarity, sharpen)


def class_samples(indices: Tensor, labels: Tensor, rows: Tensor, per_class: int, classes: int) -> Tensor:
    """(K, per_class · r, d) samples of each class: its first ``per_class`` samples by index, each (r, d) rows."""
    order = torch.argsort(indices)
    labels, rows = labels[order], rows[order]
    picked = [rows[labels == c][:per_class] for c in range(classes)]
    return torch.stack([p.reshape(-1, p.shape[-1]) for p in picked])


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


def wkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cost: Tensor, temperature: float,
              reg: float = 0.05, iterations: int = 10) -> tuple[Tensor, Tensor]:
    """The target term ``-mean_b p_t[y] · log p_s[y]`` (T 1) and the Wasserstein distance of the non-target classes.

    The distance compares softmax(z / T) of the K - 1 non-target logits under the cost with the target's row and
    column removed.
    """
    s, t = student_logits.float(), teacher_logits.float()
    batch, classes = s.shape
    index = labels.reshape(-1, 1)
    target = -(F.softmax(t, dim=1).gather(1, index) * F.log_softmax(s, dim=1).gather(1, index)).mean()
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, index, False)
    s, t = s[keep].reshape(batch, -1), t[keep].reshape(batch, -1)
    pair = keep.unsqueeze(1) & keep.unsqueeze(2)
    sub_cost = cost.float().expand(batch, classes, classes)[pair].reshape(batch, classes - 1, classes - 1)
    return target, sinkhorn_distance(F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1),
                                     sub_cost, reg, iterations)


def wkd_logit_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cost: Tensor, temperature: float,
                   gamma: float, reg: float = 0.05, iterations: int = 10) -> Tensor:
    """WKD-L as the authors' code computes it: the (unweighted) target term plus ``gamma`` times the distance."""
    target, distance = wkd_terms(student_logits, teacher_logits, labels, cost, temperature, reg, iterations)
    return target + gamma * distance


@register_method("wkd_l")
class WassersteinLogitKD(Distiller):
    """Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge Distillation (NeurIPS 2024): WKD-L.

    Paper: https://arxiv.org/abs/2412.08139 (Lv, Yang, Li; code: JiamingLv/WKD)
    ``loss = ce_weight * CE + target + w(epoch) * WD``: target = -mean p_t[y] log p_s[y] at T 1 (unweighted, as the
    code), WD the entropic (Sinkhorn) transport cost between softmax(z / T) of the non-target classes under a class
    cost matrix, w cosine-decayed to 0 over the epochs after ``decay_epoch`` (counted from 1, as in WKD-F).
    The cost ``1 - exp(-sharpen * (1 - similarity))`` is computed from the teacher before training (teacher pass,
    eval mode, no augmentation; kept as the buffer ``cost``): ``cka`` is 1 - linear CKA between the classes'
    final-map positions (every position of each sample a row, the authors' CIFAR-100 matrices), ``cka_logits`` the
    same over the teacher's logits (their ImageNet matrices), ``classifier`` the cosine distance of the teacher's
    classifier rows (their ``fc`` option). A class's samples are its first ``cost_samples`` training samples by
    index (0: as many as the smallest class has), so the matrix does not depend on the process count; the authors'
    CIFAR-100 loader is unshuffled (the same samples) and their ImageNet one takes the first of a seeded shuffle.
    Defaults: the authors' CIFAR-100 resnet32x4 -> resnet8x4 config (weight 600, T 8, decay after epoch 150).
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of WKD-L.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels (``CE_WEIGHT``).
            weight: weight of the Wasserstein distance (``WKD_LOGIT_WEIGHT``).
            temperature: softmax temperature of the distance (``TEMPERATURE``).
            sharpen: cost sharpening (``COST_MATRIX_SHARPEN``; 0 keeps the distance).
            reg: entropic regularisation (``SINKHORN.LAMBDA``).
            iterations: Sinkhorn iterations (``SINKHORN.ITER``).
            decay_epoch: the epoch (counted from 1) after which the weight decays (``COSINE_DECAY_EPOCH``).
            cost: ``cka``, ``cka_logits`` or ``classifier`` (see the class).
            cost_samples: samples per class for the CKA costs (0: the smallest class's count).
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        weight: float = field(default=600.0, metadata=valid(ge=0) | tunable(10.0, 1000.0, log=True))
        temperature: float = field(default=8.0, metadata=valid(gt=0) | tunable(2.0, 8.0))
        sharpen: float = field(default=1.0, metadata=valid(ge=0))
        reg: float = field(default=0.05, metadata=valid(gt=0))
        iterations: int = field(default=10, metadata=valid(ge=1))
        decay_epoch: float = field(default=150.0, metadata=valid(ge=0))
        cost: str = "cka"
        cost_samples: int = field(default=0, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        if params.cost not in COSTS:
            raise ConfigError(f"wkd_l: cost must be one of {', '.join(COSTS)}, not {params.cost!r}")
        self.register_buffer("cost", torch.zeros(data.num_classes, data.num_classes))
        if params.cost == "classifier":
            self.classifiers = True  # the cost comes from the teacher's classifier at the first step
            self._cost_ready = False
            return
        self.teacher_pass = (COSTS[params.cost],)
        self._cost_ready = True
        self._seen: list[tuple[Tensor, Tensor, Tensor]] = []
        labels = context.train_labels if context is not None else torch.zeros(0, dtype=torch.long)
        smallest = int(torch.bincount(labels, minlength=data.num_classes).min()) if len(labels) else 0
        if params.cost_samples > smallest > 0:
            raise ConfigError(f"wkd_l: cost_samples {params.cost_samples} exceeds the smallest class's "
                              f"{smallest} training samples")
        # each sample's rank within its class by index: a process keeps only the rows that can be chosen
        order = torch.argsort(labels * len(labels) + torch.arange(len(labels)))
        starts = torch.cumsum(torch.bincount(labels, minlength=data.num_classes), 0) - torch.bincount(
            labels, minlength=data.num_classes)
        self._rank = torch.empty_like(labels).scatter_(0, order, torch.arange(len(labels)) - starts[labels[order]])
        self._keep = (params.cost_samples or smallest) if smallest > 0 else None

    def observe_teacher(self, batch: TeacherBatch) -> None:
        """Keep the batch's rows: each sample's final-map positions (channels last) or its logits."""
        rows = (batch.teacher_logits[:, None] if self.params.cost == "cka_logits"
                else batch.teacher_final_map.flatten(2).transpose(1, 2))
        indices, labels = batch.indices.cpu(), batch.labels.cpu()
        if self._keep is not None and len(indices) and int(indices.max()) < len(self._rank):
            chosen = self._rank[indices] < self._keep
            indices, labels, rows = indices[chosen], labels[chosen], rows[chosen.to(rows.device)]
        self._seen.append((indices, labels, rows.float().cpu()))

    def finish_teacher_pass(self) -> None:
        """Every process's rows, each class's first samples by index, and the CKA cost from them."""
        device, classes = self.cost.device, self.cost.shape[0]
        indices, labels, rows = (torch.cat(parts) for parts in zip(*self._seen, strict=True))
        self._seen = []
        indices, labels, rows = self.context.gather(indices.to(device), labels.to(device), rows.to(device))
        smallest = int(torch.bincount(labels, minlength=classes).min())
        per_class = min(self.params.cost_samples or smallest, smallest)
        if per_class == 0:
            raise ConfigError("wkd_l: the CKA cost needs training samples of every class; a class has none")
        samples = class_samples(indices, labels, rows, per_class, classes)
        self.cost.copy_(cka_cost(samples, self.params.sharpen))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, the target term and the (decayed) Wasserstein distance."""
        p = self.params
        if not self._cost_ready:  # the teacher is frozen: the same matrix in every process and after a resume
            self.cost.copy_(classifier_cost(step.teacher_classifier.weight.detach(), p.sharpen))
            self._cost_ready = True
        target, distance = wkd_terms(step.student_logits, step.teacher_logits, step.labels, self.cost,
                                     p.temperature, p.reg, p.iterations)
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_target": target,
            "loss_wkd": cosine_decayed(p.weight, step.epoch + 1, step.epochs, p.decay_epoch) * distance,
        }
