"""Loss pieces that several methods share: one definition each, imported by the method files.

Each function is pure (tensors in, a tensor out) and computes in float32 whatever the autocast dtype, so that a
bf16 run and a float32 run differ only by the models' precision.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and averaged over the batch; no T² factor.

    ``temperature`` may be a 0-dim tensor (a learnable temperature, as CTKD's), through which the gradient flows.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Hinton et al.'s soft-target term: T² · KL(p_t || p_s) averaged over the batch, ``p = softmax(z / T)``.

    The T² factor keeps the gradient scale independent of T (Hinton et al., 2015, Sec. 2). It equals the
    reference key ``kd_T4`` of mdistiller's, RepDistiller's and five other codes at T = 4.
    """
    return soft_kl(student_logits, teacher_logits, temperature) * temperature**2


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row of logits: ``(z - mean) / (eps + std)`` with the unbiased (N - 1) standard deviation.

    Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation",
    https://arxiv.org/abs/2403.01427), as its authors' code computes it (``normalize`` in
    sunshangquan/logit-standardization-KD: ``torch.std`` is unbiased and the epsilon is added to the std).
    """
    logits = logits.float()
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def compared_logits(student: Tensor, teacher: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """The logits a logit method compares: as they are, or each z-scored per row (:func:`standardize_logits`)."""
    if standardize:
        return standardize_logits(student), standardize_logits(teacher)
    return student, teacher


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy with the labels, in float32."""
    return F.cross_entropy(logits.float(), labels)


def flatten_embedding(embedding: Tensor) -> Tensor:
    """A (B, D) view of a pre-logits embedding (pooled feature), in float32."""
    return embedding.float().reshape(embedding.shape[0], -1)


__all__ = ["cross_entropy", "flatten_embedding", "kd_loss", "soft_kl", "standardize_logits"]
