"""Evaluation: a model's predictions over a split (with a method's extra heads) and the classification metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import distributed
from kdbench.data import Batch, Splits
from kdbench.distiller import Distiller
from kdbench.features import forward_with_features

ECE_BINS = 15


@dataclass
class Predictions:
    """Logits of a model (and any extra heads) over one split, with the labels."""

    logits: Tensor
    labels: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``enabled``; a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_memory_format(images: Tensor, channels_last: bool) -> Tensor:
    """Inputs in channels-last layout when asked for."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.inference_mode()
def predict(model: nn.Module, splits: Splits, split: str, batch_size: int, *, amp: bool = False,
            channels_last: bool = False, method: Distiller | None = None) -> Predictions:
    """Logits of ``model`` over a whole split (eval mode, no augmentation), plus a method's extra heads."""
    was_training = model.training
    method_was_training = method.training if method is not None else False
    model.eval()
    if method is not None:
        method.eval()  # heads with BatchNorm must use their running statistics, and not update them
    device = next(model.parameters()).device
    stages = method.eval_student_stages if method is not None else ()
    logits, labels, extra = [], [], {}
    parts = []
    try:
        batches: Iterable[tuple[int, Batch]]
        if splits.shards_eval_batches:  # the loader yields (and loads) only this rank's batches
            batches = zip(filter(distributed.mine, range(splits.num_batches(split, batch_size))),
                          splits.eval_batches(split, batch_size), strict=True)
        else:
            batches = enumerate(splits.eval_batches(split, batch_size))
        for index, batch in batches:
            if not distributed.mine(index):  # under torchrun each rank evaluates its share of the batches
                continue
            with autocast(device, amp):
                out, feats = forward_with_features(model, to_memory_format(batch.images, channels_last), stages)
                heads = method.eval_logits(out, feats) if method is not None else {}
            parts.append((index, (out.float(), batch.labels, {k: v.float() for k, v in heads.items()})))
    finally:
        model.train(was_training)
        if method is not None:
            method.train(method_was_training)
    if distributed.enabled():
        parts = [(i, tuple(_to(x, "cpu") for x in part)) for i, part in parts]
        ordered = [tuple(_to(x, device) for x in part) for part in distributed.gather_batches(parts)]
    else:
        ordered = [part for _, part in parts]
    for out, batch_labels, heads in ordered:
        logits.append(out)
        labels.append(batch_labels)
        for name, value in heads.items():
            extra.setdefault(name, []).append(value)
    if not logits:
        return Predictions(torch.empty(0), torch.empty(0, dtype=torch.long))
    return Predictions(torch.cat(logits), torch.cat(labels), {k: torch.cat(v) for k, v in extra.items()})


def _to(value: Any, device: torch.device | str) -> Any:
    """A tensor, or a dict of tensors, moved to ``device``."""
    if isinstance(value, dict):
        return {k: v.to(device) for k, v in value.items()}
    return value.to(device)


def top1(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).float().mean() * 100) if len(labels) else float("nan")


def classification_metrics(pred: Predictions, teacher_logits: Tensor | None = None) -> dict[str, Any]:
    """``top1``, ``top5``, ``nll``, ``ece`` (15 bins, percent) and ``agreement`` with the teacher (percent)."""
    logits, labels = pred.logits, pred.labels
    k = min(5, logits.shape[1])
    top5 = float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean() * 100)
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    bins = torch.clamp((confidence * ECE_BINS).long(), max=ECE_BINS - 1)
    ece = logits.new_zeros(())
    for b in range(ECE_BINS):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    agreement = None
    if teacher_logits is not None:
        agreement = float((teacher_logits.argmax(1) == predicted).float().mean() * 100)
    return {
        "top1": top1(logits, labels),
        "top5": top5,
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": float(ece * 100),
        "agreement": agreement,
    }
