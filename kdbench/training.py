"""The training loop: a cohort of students trained on one data stream with one teacher pass per batch.

A run trained alone is a cohort of one, so there is one code path. Each member keeps its own RNG state and swaps
it in around its own work, so its result does not depend on who else is in the cohort: a run's record on CPU is
identical whether it trained alone or with others. Every member sees the same batches in the same order with the
same augmentation, which makes method comparisons paired by construction.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.config import RunSpec, build_params, method_label
from kdbench.data import DatasetInfo, Splits
from kdbench.distiller import Distiller, Step, get_method
from kdbench.features import ModelInfo, describe_model, forward_with_features
from kdbench.models import count_params_m, create_model

ECE_BINS = 15


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops as ``failed`` and the others go on."""


# ---------------------------------------------------------------------------------------------------------------
# RNG isolation


class RNGState:
    """A private copy of every global RNG (torch CPU and CUDA, Python, NumPy), swapped in around a member's work.

    Args:
        seed: the seed the private state starts from.
        device: the training device (its CUDA generator is included when it is a GPU).
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self._cuda = device if device.type == "cuda" else None
        outer = self._capture()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self._state = self._capture()
        self._restore(outer)

    def _capture(self) -> tuple[Any, ...]:
        cuda_state = torch.cuda.get_rng_state(self._cuda) if self._cuda is not None else None
        return torch.get_rng_state(), cuda_state, random.getstate(), np.random.get_state()

    def _restore(self, state: tuple[Any, ...]) -> None:
        cpu, cuda_state, py, npy = state
        torch.set_rng_state(cpu)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self._cuda)
        random.setstate(py)
        np.random.set_state(npy)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this state the global RNG state for the block; keep what the block drew."""
        outer = self._capture()
        self._restore(self._state)
        try:
            yield
        finally:
            self._state = self._capture()
            self._restore(outer)


# ---------------------------------------------------------------------------------------------------------------
# Schedule


def learning_rate(spec: RunSpec, epoch_progress: float) -> float:
    """Learning rate at fractional epoch ``epoch_progress`` (0 = start of training).

    Linear warm-up over ``warmup_epochs``, then ``cosine`` (per step, from ``lr`` to 0 over the remaining epochs)
    or ``multistep`` (``lr`` times ``lr_decay`` for each milestone epoch reached, changing at epoch boundaries).
    """
    if spec.warmup_epochs and epoch_progress < spec.warmup_epochs:
        return spec.lr * (epoch_progress + 1e-8) / spec.warmup_epochs
    if spec.schedule == "multistep":
        reached = sum(1 for m in spec.milestones if math.floor(epoch_progress) >= m)
        return spec.lr * spec.lr_decay**reached
    span = max(1e-8, spec.epochs - spec.warmup_epochs)
    t = min(1.0, (epoch_progress - spec.warmup_epochs) / span)
    return 0.5 * spec.lr * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


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
    try:
        for batch in splits.eval_batches(split, batch_size):
            with autocast(device, amp):
                out, feats = forward_with_features(model, to_memory_format(batch.images, channels_last), stages)
                heads = method.eval_logits(out, feats) if method is not None else {}
            logits.append(out.float())
            labels.append(batch.labels)
            for name, value in heads.items():
                extra.setdefault(name, []).append(value.float())
    finally:
        model.train(was_training)
        if method is not None:
            method.train(method_was_training)
    if not logits:
        return Predictions(torch.empty(0), torch.empty(0, dtype=torch.long))
    return Predictions(torch.cat(logits), torch.cat(labels), {k: torch.cat(v) for k, v in extra.items()})


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


# ---------------------------------------------------------------------------------------------------------------
# Teacher outputs shared by a cohort


@dataclass
class TeacherOutput:
    """The teacher's logits and the union of the stage features any member asked for, for one batch."""

    logits: Tensor
    features: dict[int, Tensor]


def teacher_forward(teacher: nn.Module, images: Tensor, stages: Sequence[int], amp: bool) -> TeacherOutput:
    """Run the teacher once under ``inference_mode`` in eval mode; outputs are cloned into normal tensors.

    The clone lets the outputs take part in the students' autograd graphs (inference tensors cannot be saved
    for backward); it copies only the logits and the requested maps.
    """
    device = images.device
    with torch.inference_mode(), autocast(device, amp):
        logits, feats = forward_with_features(teacher, images, stages)
    return TeacherOutput(logits.clone(), {i: f.clone() for i, f in feats.items()})


# ---------------------------------------------------------------------------------------------------------------
# Members


@dataclass
class EpochStats:
    """Running sums of one epoch of one member."""

    loss_sums: dict[str, Tensor] = field(default_factory=dict)
    correct: Tensor | None = None
    seen: int = 0
    steps: int = 0


class Member:
    """One run inside a cohort: its student, method, optimiser, RNG state, timings and history.

    Args:
        spec: the run.
        info: the dataset's description.
        teacher_info: shape information about the cohort's teacher (``None`` without one).
        device: the training device.
    """

    def __init__(self, spec: RunSpec, info: DatasetInfo, teacher_info: ModelInfo | None, device: torch.device,
                 teacher_top1: float | None = None) -> None:
        self.spec = spec
        self.info = info
        self.device = device
        self.method_cls = get_method(spec.method)
        self.params = build_params(self.method_cls.Params, spec.method_params, spec.method)
        self.label = method_label(spec.method, self.params, self.method_cls.Params)
        self.uses_teacher = self.method_cls.needs_teacher
        self.teacher_info = teacher_info if self.uses_teacher else None
        self.teacher_top1 = teacher_top1 if self.uses_teacher else None
        self.rng = RNGState(spec.seed, device)
        self.status = "running"
        self.error: str | None = None
        self.history: list[dict[str, Any]] = []
        self.generation_top1: list[float] = []
        self.own_time_s = 0.0
        self.shared_time_s = 0.0
        self.teacher_time_s = 0.0
        self.samples = 0
        self.stats = EpochStats()
        self.generation = 0
        self.student: nn.Module
        self.method: Distiller
        self.optimizer: torch.optim.Optimizer
        with self.rng.active():
            self._build(previous=None)

    @property
    def generations(self) -> int:
        """How many times this member's student is trained from scratch."""
        return self.method_cls.num_generations(self.params)

    def _build(self, previous: nn.Module | None) -> None:
        """Create (or re-create, for a new generation) the student, the method and the optimiser."""
        info, spec = self.info, self.spec
        self.student = create_model(spec.student, num_classes=info.num_classes, in_chans=info.in_chans,
                                    image_size=info.image_size).to(self.device)
        if spec.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.student_info = describe_model(self.student, spec.student, info.in_chans, info.image_size)
        self.method = self.method_cls(self.params, self.student_info, self.teacher_info, info).to(self.device)
        self.method.start_generation(self.generation, previous)
        params = list(self.student.parameters()) + [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)

    def next_generation(self) -> None:
        """Freeze the trained student as the next generation's teacher and start a fresh student."""
        previous = self.student.eval().requires_grad_(False)
        self.generation += 1
        with self.rng.active():
            self._build(previous=previous)

    @property
    def active(self) -> bool:
        """Still training (not failed)."""
        return self.status == "running"

    def fail(self, error: BaseException | str) -> None:
        """Stop this member with a one-line reason."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.status = "failed"
        self.error = text if isinstance(error, str | NonFiniteLoss) else f"{type(error).__name__}: {text}"

    def train_step(self, images: Tensor, labels: Tensor, indices: Tensor, teacher: TeacherOutput | None,
                   epoch: int, iteration: int, iterations: int) -> None:
        """One optimisation step of this member on a shared batch."""
        spec = self.spec
        lr = learning_rate(spec, epoch + iteration / iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.student.train()
        self.method.train()
        with self.rng.active():
            with autocast(self.device, spec.amp):
                logits, feats = forward_with_features(self.student, images, self.method.student_stages)
                step = Step(
                    images=images, labels=labels, indices=indices, student_logits=logits, student_features=feats,
                    teacher_logits=teacher.logits if (teacher is not None and self.uses_teacher) else None,
                    teacher_features=teacher.features if (teacher is not None and self.uses_teacher) else {},
                    epoch=epoch, epochs=spec.epochs, iteration=iteration, iterations=iterations,
                )
                terms = self.method.losses(step)
            if not terms:
                raise RuntimeError(f"method {spec.method!r} returned no loss terms")
            loss = torch.stack([t.float() for t in terms.values()]).sum()
            if self.device.type == "cpu" and not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {iteration + 1} ({values})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        stats = self.stats
        for name, value in terms.items():
            stats.loss_sums[name] = stats.loss_sums.get(name, 0.0) + value.detach().float()
        stats.loss_sums["loss"] = stats.loss_sums.get("loss", 0.0) + loss.detach()
        correct = (logits.detach().argmax(1) == labels).sum()
        stats.correct = correct if stats.correct is None else stats.correct + correct
        stats.seen += len(labels)
        stats.steps += 1

    def end_epoch(self, epoch: int, splits: Splits, eval_batch_size: int, epoch_time_s: float) -> None:
        """Close the epoch: check the losses, evaluate on val, append to the history."""
        stats, self.stats = self.stats, EpochStats()
        sums = {k: float(v) for k, v in stats.loss_sums.items()}
        if not all(math.isfinite(v) for v in sums.values()):
            raise NonFiniteLoss(f"non-finite loss in epoch {epoch + 1}")
        steps = max(1, stats.steps)
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": learning_rate(self.spec, epoch)}
        if self.generations > 1:
            entry["generation"] = self.generation
        entry.update({k: v / steps for k, v in sorted(sums.items())})
        entry["train_top1"] = float(stats.correct) / max(1, stats.seen) * 100 if stats.correct is not None else None
        val_top1 = None
        if splits.info.sizes.get("val", 0):
            pred = predict(self.student, splits, "val", eval_batch_size, amp=self.spec.amp,
                           channels_last=self.spec.channels_last)
            val_top1 = top1(pred.logits, pred.labels)
        entry["val_top1"] = val_top1
        entry["time_s"] = epoch_time_s
        self.history.append(entry)

    @property
    def extra_params_m(self) -> float:
        """Trainable parameters the method adds (adapters, heads), in millions; not part of the student."""
        return count_params_m(self.method)


# ---------------------------------------------------------------------------------------------------------------
# The cohort loop


ProgressHook = Callable[[int], None]


def train_members(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, *,
                  progress: ProgressHook | None = None) -> None:
    """Train every member for its budget on one shared data stream.

    All members share the dataset, seed, batch size and epochs (see :func:`kdbench.config.cohort_key`); each
    batch is drawn and augmented once, the teacher runs once on it (logits plus the union of the stages any
    member asked for), and each active member takes its own step. A member whose loss turns non-finite, or whose
    method raises, is marked failed and the others go on.

    Args:
        members: the cohort; members with several generations must train alone.
        splits: the dataset.
        teacher: the teacher in eval mode, or ``None`` when no member needs one.
        progress: called with the number of steps done, for a progress bar.
    """
    if not members:
        return
    first = members[0].spec
    device = members[0].device
    generations = members[0].generations
    if generations > 1 and len(members) > 1:
        raise ValueError("a member with several generations trains alone")
    eval_batch_size = max(256, first.batch_size)
    iterations = splits.num_batches("train", first.batch_size)
    for generation in range(generations):
        if generation:
            members[0].next_generation()
        generator = torch.Generator(device=device)
        generator.manual_seed(first.seed)
        teacher_stages = sorted({s for m in members if m.uses_teacher for s in m.method.teacher_stages})
        for epoch in range(first.epochs):
            shared_before = {id(m): m.shared_time_s + m.own_time_s for m in members}
            batches = splits.train_batches(first.batch_size, generator)
            for iteration in range(iterations):
                tick = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                images = to_memory_format(batch.images, first.channels_last)
                active = [m for m in members if m.active]
                if not active:
                    return
                data_time = time.perf_counter() - tick
                users = [m for m in active if m.uses_teacher]
                out = None
                if teacher is not None and users:
                    tick = time.perf_counter()
                    out = teacher_forward(teacher, images, teacher_stages, first.amp)
                    _sync(device)
                    teacher_time = time.perf_counter() - tick
                    for m in users:
                        m.teacher_time_s += teacher_time / len(users)
                        m.shared_time_s += teacher_time / len(users)
                for m in active:
                    m.shared_time_s += data_time / len(active)
                    tick = time.perf_counter()
                    try:
                        m.train_step(images, batch.labels, batch.indices, out, epoch, iteration, iterations)
                        _sync(device)
                    except Exception as err:  # noqa: BLE001 - one member's failure must not stop the others
                        m.fail(err)
                    m.own_time_s += time.perf_counter() - tick
                    m.samples += len(batch.labels)
                if progress is not None:
                    progress(1)
            for m in members:
                if not m.active:
                    continue
                try:
                    spent = m.shared_time_s + m.own_time_s - shared_before[id(m)]
                    m.end_epoch(epoch, splits, eval_batch_size, spent)
                except Exception as err:  # noqa: BLE001 - as above
                    m.fail(err)
        if generations > 1 and members[0].active:
            pred = predict(members[0].student, splits, "test", eval_batch_size, amp=first.amp,
                           channels_last=first.channels_last)
            members[0].generation_top1.append(top1(pred.logits, pred.labels))


def _sync(device: torch.device) -> None:
    """Wait for the GPU so that wall-clock timings are true (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
