"""Evaluation: a model's predictions over a split, a run's deployed network and variants, the classification metrics."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import distributed
from kdbench.data import Batch, Splits
from kdbench.distiller import Distiller
from kdbench.features import forward_with_features

if TYPE_CHECKING:
    from kdbench.training.member import Member

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


def predict_deployed(member: Member, splits: Splits, split: str, batch_size: int, *,
                     network: nn.Module | None = None) -> Predictions:
    """The run's deployed network over ``split``, with each of the method's deployed variants in ``extra``.

    ``network`` defaults to ``member.deployed()``. A method of the older contract that overrides ``eval_logits`` is
    evaluated the old way: one pass of the student with its ``eval_student_stages``, the hook's outputs in ``extra``.
    Variants are evaluated one by one, the student and the method put back in the modes they had.
    """
    spec, method = member.spec, member.method
    network = member.deployed() if network is None else network
    options = {"amp": spec.amp, "channels_last": spec.channels_last}
    if method.uses_eval_logits():
        return predict(network, splits, split, batch_size, method=method, **options)
    pred = predict(network, splits, split, batch_size, **options)
    variants = method.deployed_variants(member.student, member.teacher_parts())
    if variants:
        modes = [(m, m.training) for m in (member.student, *member.student.modules(), method, *method.modules())]
        method.eval()
        try:
            for name, variant in variants.items():
                pred.extra[name] = predict(variant, splits, split, batch_size, **options).logits
        finally:
            for module, training in modes:
                module.training = training
    return pred


@contextlib.contextmanager
def deployed_at_best_val(member: Member) -> Iterator[nn.Module]:
    """The run's deployed network holding its weights of the best validation epoch (``member.best_state``).

    A deployed network that is the student itself gets the best weights for the block and its last ones back
    after; a network of its own (a copy) is loaded with them, the student left untouched.
    """
    network = member.deployed()
    if network is not member.student:
        network = copy.deepcopy(network)  # a plugin's network may share modules with the student or the method
        network.load_state_dict(member.best_state)
        yield network
        return
    last = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(member.best_state)
    try:
        yield network
    finally:
        network.load_state_dict(last)


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
