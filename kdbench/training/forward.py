"""The training forward passes: the teacher's outputs shared by a cohort, and the compiled forward."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdbench import distributed
from kdbench.distiller import TeacherBatch
from kdbench.features import forward_outputs
from kdbench.training.evaluation import autocast, to_memory_format

if TYPE_CHECKING:
    from kdbench.data import Splits
    from kdbench.training.member import Member


MAIN_VIEW = "main"


@dataclass
class TeacherOutput:
    """The teacher's logits, the union of the stage maps, the embedding and final map any member asked for.

    The tensors are inference tensors, which nothing can change in place; each member gets its own copy of
    what it asked for (:meth:`copy_for`), so a method that edits its teacher tensors in place cannot change what
    the next member of a cohort sees.
    """

    logits: Tensor
    features: dict[int, Tensor]
    embedding: Tensor | None = None
    final_map: Tensor | None = None

    def copy_for(self, stages: Sequence[int], embedding: bool, final_map: bool = False) -> TeacherOutput:
        """Normal (autograd-usable) copies of the logits, the given stages and, if asked, embedding and final map."""
        return TeacherOutput(self.logits.clone(), {i: self.features[i].clone() for i in stages},
                             self.embedding.clone() if (embedding and self.embedding is not None) else None,
                             self.final_map.clone() if (final_map and self.final_map is not None) else None)


def teacher_forward(teacher: nn.Module, images: Tensor, stages: Sequence[int], amp: bool,
                    embedding: bool = False, forward: Callable[..., Any] = forward_outputs,
                    final_map: bool = False) -> TeacherOutput:
    """Run the teacher once under ``inference_mode`` in eval mode (logits, the stages, embedding, final map).

    ``forward`` is :func:`~kdbench.features.forward_outputs` or its compiled form (:func:`compiled_forward`).
    """
    device = images.device
    with torch.inference_mode(), autocast(device, amp):
        out = forward(teacher, images, stages, embedding, final_map) if final_map else forward(
            teacher, images, stages, embedding)
    return TeacherOutput(out.logits, out.features, out.embedding, out.final_map)


def teacher_outputs(teacher: nn.Module, images: Tensor, views: dict[str, Tensor], users: Sequence[Member],
                     amp: bool) -> dict[str, TeacherOutput]:
    """One teacher pass per view that some user needs: the union of their stages, an embedding or final map if asked.

    The final map (``final_maps``) is computed on the main view only.
    """
    stages = sorted({s for m in users for s in m.method.teacher_stages})
    embedding = any(m.method.embeddings for m in users)
    final_map = any(getattr(m.method, "final_maps", False) for m in users)
    forward = users[0].forward  # compiled when the cohort's members are (one setting per cohort)
    out = {MAIN_VIEW: teacher_forward(teacher, images, stages, amp, embedding, forward, final_map)}
    for name, view in views.items():
        if any(name in m.method.extra_views for m in users):
            out[name] = teacher_forward(teacher, view, stages, amp, embedding, forward)
    return out


def teacher_pass_before_training(teacher: nn.Module, splits: Splits, users: Sequence[Member], batch_size: int,
                                 amp: bool, channels_last: bool = False) -> None:
    """Run the teacher once over the training split for every member whose method declares a ``teacher_pass``.

    Eval mode, no augmentation, the split's fixed order (under torchrun each process its share of the batches);
    one teacher forward per batch serves every member, each getting its own copies (:class:`TeacherBatch`), then
    each method's ``finish_teacher_pass``. A member whose hooks fail stops alone. The time is teacher time.
    """
    users = [m for m in users if m.active and m.uses_teacher and m.method.teacher_pass]
    if not users:
        return
    embedding = any("embedding" in m.method.teacher_pass for m in users)
    final_map = any("final_map" in m.method.teacher_pass for m in users)
    started = time.perf_counter()
    for index, batch in enumerate(splits.eval_batches("train", batch_size)):
        if not splits.shards_eval_batches and not distributed.mine(index):
            continue
        images = to_memory_format(batch.images, channels_last)
        out = teacher_forward(teacher, images, (), amp, embedding, forward_outputs, final_map)
        for m in users:
            if not m.active:
                continue
            wants = m.method.teacher_pass
            try:
                with torch.no_grad():
                    m.method.observe_teacher(TeacherBatch(
                        batch.labels.clone(), batch.indices.clone(), out.logits.clone(),
                        out.embedding.clone() if "embedding" in wants else None,
                        out.final_map.clone() if "final_map" in wants else None, m.teacher_classifier))
            except Exception as err:  # noqa: BLE001 - one member's failure must not stop the others
                m.fail(err)
    for m in users:
        if m.active:
            try:
                with torch.no_grad():
                    m.method.finish_teacher_pass()
            except Exception as err:  # noqa: BLE001 - as above
                m.fail(err)
    share = (time.perf_counter() - started) / len(users)
    for m in users:
        m.teacher_time_s += share
        m.shared_time_s += share


@functools.cache
def compiled_forward() -> Callable[..., Any]:
    """:func:`~kdbench.features.forward_outputs` under ``torch.compile`` (one wrapper per process).

    The function is compiled rather than the models, so that the models stay plain modules: evaluation, state
    dicts, deep copies and the efficiency measurement see them as they are, and a feature method's
    ``forward_intermediates`` pass is compiled as much as a plain forward.
    """
    return torch.compile(forward_outputs)
