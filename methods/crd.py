"""Contrastive representation distillation: NCE between student and teacher embeddings with memory banks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.errors import ConfigError
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, flatten_embedding, kd_loss

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo

# Up to this many random keys per step (batch x training samples) negatives are drawn without replacement, as the
# CRD code does; beyond it (ImageNet-size sets, where duplicates are rare) with replacement, at O(B K) cost.
EXACT_SAMPLING_LIMIT = 1 << 24


def sample_contrast_indices(order: Tensor, class_start: Tensor, class_count: Tensor, labels: Tensor, indices: Tensor,
                            k: int, exact: bool | None = None) -> Tensor:
    """``(B, k + 1)`` sample positions: column 0 the positive (``indices``), then ``k`` negatives of other classes.

    Negatives are drawn uniformly from the samples whose class differs from the row's label (the CRD code's
    ``mode='exact'``), on the labels' device, from the class-sorted sample order: ``order`` lists the training
    samples sorted by class, class ``c`` occupying ``order[class_start[c] : class_start[c] + class_count[c]]``.
    ``exact`` (default: when B x N <= EXACT_SAMPLING_LIMIT) draws without replacement, else with replacement.
    """
    n, batch = order.numel(), labels.numel()
    start, count = class_start[labels].unsqueeze(1), class_count[labels].unsqueeze(1)
    if exact is None:
        exact = batch * n <= EXACT_SAMPLING_LIMIT
    if exact:
        keys = torch.rand(batch, n, device=order.device)
        positions = torch.arange(n, device=order.device).unsqueeze(0)
        keys = keys.masked_fill((positions >= start) & (positions < start + count), 2.0)
        picked = keys.topk(k, dim=1, largest=False, sorted=False).indices
    else:
        picked = (torch.rand(batch, k, device=order.device) * (n - count)).long().clamp_(max=n - 1 - count)
        picked = picked + count * (picked >= start)
    return torch.cat([indices.reshape(-1, 1).to(order.device), order[picked]], dim=1)


def _nce(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """The NCE loss of one side: column 0 of ``scores`` is the positive, the others the noise samples."""
    noise = (scores.shape[1] - 1) / num_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps)).sum()
    negative = torch.log(noise / (scores[:, 1:] + noise + eps)).sum()
    return -(positive + negative) / scores.shape[0]


def crd_loss(v_s: Tensor, v_t: Tensor, memory_s: Tensor, memory_t: Tensor, contrast_idx: Tensor,
             z_s: Tensor | float | None = None, z_t: Tensor | float | None = None,
             temperature: float = 0.07) -> tuple[Tensor, Tensor, Tensor]:
    """CRD's two-sided NCE loss on a given memory state; returns ``(loss, z_s, z_t)``.

    The student side scores the teacher bank's rows ``memory_t[contrast_idx]`` against ``v_s``, the teacher side
    the student bank's rows against ``v_t``: ``exp(<m, v> / T) / Z``. A ``None`` Z is set, as the CRD code does
    on its first batch, to N times the mean of that side's exponentiated scores (reference key
    ``crd_nce_Zinit``); given Zs give the key ``crd_nce``. ``v_s``, ``v_t`` are the projected, L2-normalised
    embeddings (B, D); the banks (N, D) are read, not changed.
    """
    with torch.autocast(v_s.device.type, enabled=False):
        rows_t, rows_s = memory_t[contrast_idx].float(), memory_s[contrast_idx].float()
        scores_s = torch.exp(torch.einsum("bkd,bd->bk", rows_t, v_s.float()) / temperature)
        scores_t = torch.exp(torch.einsum("bkd,bd->bk", rows_s, v_t.float()) / temperature)
    num_data = memory_s.shape[0]
    z_s = (scores_s.detach().mean() * num_data) if z_s is None else torch.as_tensor(z_s, device=v_s.device)
    z_t = (scores_t.detach().mean() * num_data) if z_t is None else torch.as_tensor(z_t, device=v_s.device)
    loss = _nce(scores_s / z_s, num_data) + _nce(scores_t / z_t, num_data)
    return loss, z_s, z_t


@register_method("crd")
class CRD(Distiller):
    """Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020).

    Paper: https://arxiv.org/abs/1910.10699
    loss = ce_weight * CE(z_s, y) + kd_weight * T² KL(p_t || p_s) + weight * (NCE_s + NCE_t). The pre-logits
    embeddings are projected to ``dim`` features by trainable linear maps and L2-normalised (v_s, v_t); each
    side's NCE tells its positive (the same sample's row in the other model's memory bank) from ``nce_k``
    negatives (rows of samples of other classes), with scores exp(<m, v> / nce_t) / Z and the noise
    probability 1/N; Z is fixed on the first batch. After each step the positives' bank rows move towards the new
    embeddings (momentum 0.5) and are renormalised. Defaults as the authors' CIFAR-100 runs (CE 1, CRD 0.8, no
    KD: ``-a 0 -b 0.8``; their "CRD+KD" row sets ``kd_weight = 1``). ``nce_k`` is capped at the number of
    other-class samples the smallest pool offers.

    Memory: two banks of N x ``dim`` float32 (1 KiB per training sample at dim 128: 51 MB for CIFAR-100,
    1.3 GB for ImageNet-1k) plus the class-sorted sample order (8 bytes per sample), all registered buffers
    (``extra_buffers_m``); each step gathers B x (nce_k + 1) bank rows per side (537 MB at B = 64). Under torchrun
    every rank updates its banks with the whole global batch's rows, and Z is fixed on the whole first batch.
    """

    family = "relation"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of CRD.

        Attributes:
            weight: weight of the CRD (two-sided NCE) term.
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of a KD term added to CRD (0: CRD alone; 1: the paper's CRD+KD).
            temperature: the KD temperature (with ``kd_weight`` > 0).
            nce_k: negatives per positive (capped at what the training set allows).
            nce_t: temperature of the NCE scores.
            momentum: momentum of the memory-bank update.
            dim: width of the projections and of the memory banks.
        """

        weight: float = field(default=0.8, metadata=valid(ge=0) | tunable(0.1, 2.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=0.0, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        nce_k: int = field(default=16384, metadata=valid(ge=1) | tunable(choices=(4096, 16384)))
        nce_t: float = field(default=0.07, metadata=valid(gt=0) | tunable(0.02, 0.3, log=True))
        momentum: float = field(default=0.5, metadata=valid(ge=0, lt=1))
        dim: int = field(default=128, metadata=valid(ge=1))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        if context is None or context.train_labels.numel() != context.num_train:
            raise ConfigError("crd needs the run's training labels (a RunContext) for its memory banks")
        self.embeddings = True
        self.embed_s = nn.Linear(student.embedding_dim, params.dim)
        self.embed_t = nn.Linear(teacher.embedding_dim, params.dim)
        labels, device = context.train_labels.long().cpu(), context.device
        counts = torch.bincount(labels, minlength=context.num_classes)
        # 0 when the labels hold one class (also the placeholder labels of a dry construction): losses() says so
        self.num_negatives = max(0, min(params.nce_k, context.num_train - int(counts.max())))
        self.register_buffer("sample_order", torch.argsort(labels, stable=True).to(device))
        self.register_buffer("class_start", (torch.cumsum(counts, 0) - counts).to(device))
        self.register_buffer("class_count", counts.to(device))
        bound = 1.0 / math.sqrt(params.dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(context.num_train, params.dim, device=device) * 2 * bound - bound)
        self.register_buffer("nce_z", torch.full((2,), -1.0, device=device))
        self._z_fixed = False

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, CRD and (optionally) KD terms; then the positives' bank rows are updated."""
        p = self.params
        if not self.num_negatives:
            raise ConfigError("crd needs training samples of at least two classes for its negatives")
        v_s = F.normalize(self.embed_s(flatten_embedding(step.student_embedding)).float(), dim=1)
        v_t = F.normalize(self.embed_t(flatten_embedding(step.teacher_embedding)).float(), dim=1)
        indices = step.indices.to(self.memory_s.device)
        contrast_idx = sample_contrast_indices(self.sample_order, self.class_start, self.class_count,
                                               step.labels.to(self.memory_s.device), indices, self.num_negatives)
        first = not self._z_fixed and bool(self.nce_z[0] < 0)  # a loaded state may hold them already
        self._z_fixed = True
        gather = self.context.gather
        if first and self.context.processes > 1:  # under torchrun, Z from the whole global batch, as one process would
            with torch.no_grad():
                _, z_s, z_t = crd_loss(v_s, v_t, self.memory_s, self.memory_t, contrast_idx, None, None, p.nce_t)
                (shares,) = gather(torch.stack([z_s, z_t, torch.ones_like(z_s)])[None] * len(indices))
                self.nce_z.copy_(shares[:, :2].sum(0) / shares[:, 2].sum())
            first = False
        loss, z_s, z_t = crd_loss(v_s, v_t, self.memory_s, self.memory_t, contrast_idx,
                                  None if first else self.nce_z[0], None if first else self.nce_z[1], p.nce_t)
        with torch.no_grad():
            if first:
                self.nce_z.copy_(torch.stack([z_s, z_t]))
            # under torchrun, every rank's rows: the banks stay the same on every rank
            indices, v_s, v_t = gather(indices, v_s, v_t)
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                memory.index_copy_(0, indices, F.normalize(memory[indices] * p.momentum + v * (1 - p.momentum), dim=1))
        terms = {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels), "loss_crd": p.weight * loss}
        if p.kd_weight:
            terms["loss_kd"] = p.kd_weight * kd_loss(step.student_logits, step.teacher_logits, p.temperature)
        return terms
