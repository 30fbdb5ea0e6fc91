"""The training loop: a cohort of students trained on one data stream with one teacher pass per batch.

A run trained alone is a cohort of one, so there is one code path. Each member keeps its own RNG state and swaps
it in around its own work, so its result does not depend on who else is in the cohort: a run's record on CPU is
identical whether it trained alone or with others. Every member sees the same batches in the same order with the
same augmentation, which makes method comparisons paired by construction.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import distributed
from kdbench.config import RunSpec, build_params, method_label
from kdbench.data import Batch, DatasetInfo, Splits
from kdbench.data.base import train_batch_count
from kdbench.distiller import Distiller, RunContext, Step, View, construct_method, get_method
from kdbench.errors import ConfigError
from kdbench.features import ModelInfo, describe_model, forward_outputs, forward_with_features
from kdbench.models import count_params_m, create_model
from kdbench.views import VIEW_AUGMENTATIONS, view_seed

ECE_BINS = 15


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops as ``failed`` and the others go on."""


class RunPruned(Exception):
    """Raised by an epoch listener to stop a run early on purpose (a tuner pruning an unpromising trial).

    Not a failure and not a user error: the run stops with status ``pruned`` and the exception's message as its
    one-line ``error``; its record keeps the history up to that epoch, has no test figures, and is not trained
    again. The other members of its cohort go on.
    """


# ---------------------------------------------------------------------------------------------------------------
# RNG isolation


class RNGState:
    """A member's private random state, made the global one around the member's work.

    torch's CPU and CUDA generators are private copies, swapped in and out (a few microseconds; no device
    synchronisation). Python's and NumPy's global RNGs cost ~100 times more to save and restore, so instead they are
    seeded afresh each time the state is made active, from the member's seed and a count of its activations: a
    member's draws from them are still a function of its own seed and history alone, whoever else is in the
    cohort. Their global state is therefore changed by :meth:`active`; :func:`host_rngs_preserved` saves and
    restores it around a whole training.

    Args:
        seed: the seed the private state starts from.
        device: the training device (its CUDA generator is included when it is a GPU).
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self._cuda = device if device.type == "cuda" else None
        self._seed = seed
        self._activations = 0
        outer = self._capture()
        torch.manual_seed(seed)
        self._state = self._capture()
        self._restore(outer)

    def _capture(self) -> tuple[Tensor, Tensor | None]:
        cuda_state = torch.cuda.get_rng_state(self._cuda) if self._cuda is not None else None
        return torch.get_rng_state(), cuda_state

    def _restore(self, state: tuple[Tensor, Tensor | None]) -> None:
        cpu, cuda_state = state
        torch.set_rng_state(cpu)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self._cuda)

    def _seed_host_rngs(self) -> None:
        """Seed Python's and NumPy's global RNGs from (seed, activation count) with a splitmix64 mix."""
        z = (self._seed * 0x9E3779B97F4A7C15 + self._activations + 1) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
        self._activations += 1
        random.seed(z)
        np.random.seed(z & 0xFFFFFFFF)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this state the global RNG state for the block; keep what the block drew."""
        outer = self._capture()
        self._restore(self._state)
        self._seed_host_rngs()
        try:
            yield
        finally:
            self._state = self._capture()
            self._restore(outer)


@contextlib.contextmanager
def host_rngs_preserved() -> Iterator[None]:
    """Save Python's and NumPy's global RNG states for the block and restore them after it."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def ensure_mode(module: nn.Module, training: bool) -> None:
    """Put ``module`` in training (or eval) mode unless its root already is.

    ``Module.train`` walks the whole tree (milliseconds for a ResNet-50), too slow for every step. The root's flag
    stands for the tree: everything in kdbench that changes a model's mode does it from the root and restores it
    from the root (:func:`predict`).
    """
    if module.training != training:
        module.train(training)


# ---------------------------------------------------------------------------------------------------------------
# Schedule


def make_optimizer(spec: RunSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The run's optimiser over parameter groups: SGD with momentum (the default) or AdamW.

    A group may carry ``lr_scale`` (a multiplier of the scheduled learning rate) and ``weight_decay``.

    Raises:
        ConfigError: a group has a key other than ``params``, ``lr_scale`` and ``weight_decay``.
    """
    for group in groups:
        unknown = set(group) - {"params", "lr_scale", "weight_decay"}
        if unknown:
            raise ConfigError(f"a parameter group may set params, lr_scale and weight_decay (got {sorted(unknown)})")
        group.setdefault("lr_scale", 1.0)
    groups = [g for g in groups if list(g["params"])]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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


# ---------------------------------------------------------------------------------------------------------------
# Teacher outputs shared by a cohort


MAIN_VIEW = "main"


@dataclass
class TeacherOutput:
    """The teacher's logits, the union of the stage maps and the embedding any member asked for, for one batch.

    The tensors are inference tensors, which nothing can change in place; each member gets its own copy of
    what it asked for (:meth:`copy_for`), so a method that edits its teacher tensors in place cannot change what
    the next member of a cohort sees.
    """

    logits: Tensor
    features: dict[int, Tensor]
    embedding: Tensor | None = None

    def copy_for(self, stages: Sequence[int], embedding: bool) -> TeacherOutput:
        """Normal (autograd-usable) copies of the logits, the given stages and, if asked, the embedding."""
        return TeacherOutput(self.logits.clone(), {i: self.features[i].clone() for i in stages},
                             self.embedding.clone() if (embedding and self.embedding is not None) else None)


def teacher_forward(teacher: nn.Module, images: Tensor, stages: Sequence[int], amp: bool,
                    embedding: bool = False, forward: Callable[..., Any] = forward_outputs) -> TeacherOutput:
    """Run the teacher once under ``inference_mode`` in eval mode (logits, the given stages, the embedding).

    ``forward`` is :func:`~kdbench.features.forward_outputs` or its compiled form (:func:`compiled_forward`).
    """
    device = images.device
    with torch.inference_mode(), autocast(device, amp):
        out = forward(teacher, images, stages, embedding)
    return TeacherOutput(out.logits, out.features, out.embedding)


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
                 teacher_top1: float | None = None, train_labels: Tensor | None = None) -> None:
        self.spec = spec
        self.info = info
        self.device = device
        num_train = int(info.sizes.get("train", 0))
        self.context = RunContext(
            epochs=spec.epochs, steps_per_epoch=train_batch_count(num_train, spec.batch_size),
            batch_size=spec.batch_size, num_train=num_train, num_classes=info.num_classes,
            train_labels=(train_labels.detach().to("cpu", torch.long) if train_labels is not None
                          else torch.zeros(num_train, dtype=torch.long)),
            device=device, seed=spec.seed)
        self.method_cls = get_method(spec.method)
        self.params = build_params(self.method_cls.Params, spec.method_params, spec.method)
        self.label = method_label(spec.method, self.params, self.method_cls.Params)
        self.uses_teacher = self.method_cls.needs_teacher
        self.teacher_info = teacher_info if self.uses_teacher else None
        self.teacher_top1 = teacher_top1 if self.uses_teacher else None
        self.rng = RNGState(distributed.rank_seed(spec.seed), device)  # under torchrun, each rank's own noise
        self.status = "running"
        self.error: str | None = None
        self.history: list[dict[str, Any]] = []
        #: the training forward pass of the student (and of the cohort's teacher): compiled after :meth:`compile`
        self.forward: Callable[..., Any] = forward_outputs
        #: called with each history entry as it is appended (experiment trackers, see kdbench.trackers)
        self.epoch_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.generation_top1: list[float] = []
        self.own_time_s = 0.0
        self.shared_time_s = 0.0
        self.teacher_time_s = 0.0
        self.samples = 0
        self.stats = EpochStats()
        self.generation = 0
        self.best_val: float | None = None
        self.best_val_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.student: nn.Module
        self.method: Distiller
        self.optimizer: torch.optim.Optimizer
        with host_rngs_preserved(), self.rng.active():
            self._build(previous=None)

    def compile(self) -> None:
        """Run the training forward passes (this member's student, the cohort's teacher) under ``torch.compile``.

        Nothing computed changes in principle (compiled kernels may round differently); evaluation stays eager.
        """
        self.forward = compiled_forward()

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
        self.method = construct_method(self.method_cls, self.params, self.student_info, self.teacher_info, info,
                                       self.context).to(self.device)
        for view in self.method.extra_views:
            VIEW_AUGMENTATIONS.get(view)  # an unknown view fails here, with the names there are
        self.method.prepare_student(self.student)
        self.method.start_generation(self.generation, previous)
        distributed.sync_batchnorm(self.student, self.method)  # under torchrun: global-batch statistics
        distributed.broadcast_state(self.student, self.method)  # and rank 0's initial weights on every rank
        self.optimizer = make_optimizer(spec, [{"params": list(self.student.parameters())},
                                               *self.method.param_groups()])
        self.best_val = self.best_val_epoch = self.best_state = None

    def next_generation(self) -> None:
        """Freeze the trained student as the next generation's teacher and start a fresh student."""
        previous = self.student.eval().requires_grad_(False)
        self.generation += 1
        with host_rngs_preserved(), self.rng.active():
            self._build(previous=previous)

    @property
    def active(self) -> bool:
        """Still training (not failed)."""
        return self.status == "running"

    def fail(self, error: BaseException | str) -> None:
        """Stop this member with a one-line reason (status ``pruned`` for :class:`RunPruned`, else ``failed``)."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, RunPruned):
            self.status, self.error = "pruned", text
            return
        self.status = "failed"
        self.error = text if isinstance(error, str | NonFiniteLoss) else f"{type(error).__name__}: {text}"

    def _step(self, images: Tensor, labels: Tensor, indices: Tensor,
              teacher: TeacherOutput | dict[str, TeacherOutput] | None, views: dict[str, Tensor],
              epoch: int, epochs: int, iteration: int, iterations: int, phase: str) -> Step:
        """Run the student (on every view the method asked for) and assemble the method's :class:`Step`."""
        method = self.method
        outputs = teacher if isinstance(teacher, dict) else ({MAIN_VIEW: teacher} if teacher is not None else {})
        if not self.uses_teacher:
            outputs = {}
        stages, embedding = method.teacher_stages, method.embeddings

        def teacher_of(view: str) -> TeacherOutput | None:
            out = outputs.get(view)
            return out.copy_for(stages, embedding) if out is not None else None

        student = self.forward(self.student, images, method.student_stages, method.embeddings)
        extra = {}
        for name in method.extra_views:
            s_out = self.forward(self.student, views[name], method.student_stages, method.embeddings)
            t_out = teacher_of(name)
            extra[name] = View(images=views[name], student_logits=s_out.logits,
                               teacher_logits=t_out.logits if t_out else None, student_features=s_out.features,
                               teacher_features=t_out.features if t_out else {}, student_embedding=s_out.embedding,
                               teacher_embedding=t_out.embedding if t_out else None)
        main = teacher_of(MAIN_VIEW)
        return Step(
            images=images, labels=labels, indices=indices, student_logits=student.logits,
            student_features=student.features, teacher_logits=main.logits if main else None,
            teacher_features=main.features if main else {}, epoch=epoch, epochs=epochs, iteration=iteration,
            iterations=iterations, student_embedding=student.embedding,
            teacher_embedding=main.embedding if main else None, student_heads=student.heads, views=extra,
            phase=phase)

    def train_step(self, images: Tensor, labels: Tensor, indices: Tensor,
                   teacher: TeacherOutput | dict[str, TeacherOutput] | None, epoch: int, iteration: int,
                   iterations: int, *, views: dict[str, Tensor] | None = None, phase: str = "train",
                   optimizer: torch.optim.Optimizer | None = None, weight: float = 1.0) -> None:
        """One optimisation step of this member on a shared batch.

        Args:
            images: the main view of the batch.
            labels: its labels.
            indices: the samples' positions in the training split.
            teacher: the teacher's outputs on the main view, or view name -> outputs (``"main"`` for the main
                view), or ``None``.
            epoch: the epoch within the phase, from 0.
            iteration: the step within the epoch, from 0.
            iterations: steps per epoch.
            views: extra view name -> images, for the views the method asked for.
            phase: ``"train"``, or ``"init"`` for the initialisation phase (constant learning rate, the method's
                ``init_losses``, the optimiser over its ``init_parameters``).
            optimizer: the initialisation phase's optimiser.
            weight: the factor of the loss's gradient (under torchrun, :func:`kdbench.distributed.share_weight`).
        """
        spec = self.spec
        init = phase == "init"
        optimizer = optimizer if optimizer is not None else self.optimizer
        lr = spec.lr if init else learning_rate(spec, epoch + iteration / iterations)
        set_learning_rate(optimizer, lr)
        ensure_mode(self.student, not init or self._init_trains_student)
        ensure_mode(self.method, True)
        epochs = self.method.init_epochs if init else spec.epochs
        with self.rng.active():
            with autocast(self.device, spec.amp):
                step = self._step(images, labels, indices, teacher, views or {}, epoch, epochs, iteration,
                                  iterations, phase)
                terms = self.method.init_losses(step) if init else self.method.losses(step)
            if not terms:
                raise RuntimeError(f"method {spec.method!r} returned no loss terms")
            loss = torch.stack([t.float() for t in terms.values()]).sum()
            if self.device.type == "cpu" and not distributed.enabled() and not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                where = "initialisation epoch" if init else "epoch"
                raise NonFiniteLoss(f"non-finite loss at {where} {epoch + 1}, step {iteration + 1} ({values})")
            optimizer.zero_grad(set_to_none=True)
            (loss * weight if weight != 1.0 else loss).backward()
            distributed.average_gradients(optimizer)
            optimizer.step()
        logits = step.student_logits
        stats = self.stats
        for name, value in terms.items():  # weighted as the gradient, so the ranks' mean is the whole batch's
            stats.loss_sums[name] = stats.loss_sums.get(name, 0.0) + value.detach().float() * weight
        stats.loss_sums["loss"] = stats.loss_sums.get("loss", 0.0) + loss.detach() * weight
        correct = (logits.detach().argmax(1) == labels).sum()
        stats.correct = correct if stats.correct is None else stats.correct + correct
        stats.seen += len(labels)
        stats.steps += 1

    def init_optimizer(self) -> torch.optim.Optimizer:
        """The initialisation phase's optimiser over the method's ``init_parameters`` (the run's optimiser kind)."""
        params = list(self.method.init_parameters(self.student))
        student_ids = {id(p) for p in self.student.parameters()}
        self._init_trains_student = any(id(p) in student_ids for p in params)
        unique = list({id(p): p for p in params}.values())
        return make_optimizer(self.spec, [{"params": unique}])

    _init_trains_student = True

    def end_init_phase(self) -> None:
        """Drop the gradients the initialisation phase left, before the main training starts."""
        for param in [*self.student.parameters(), *self.method.parameters()]:
            param.grad = None

    def end_epoch(self, epoch: int, splits: Splits, eval_batch_size: int, epoch_time_s: float,
                  phase: str = "train") -> None:
        """Close the epoch: check the losses, evaluate on val (main phase), append to the history.

        In the main phase it also keeps a copy of the student's weights at the best validation top-1 so far (the
        first epoch of the best value), for ``test_top1_at_best_val``.
        """
        stats, self.stats = self.stats, EpochStats()
        if distributed.enabled():  # every rank's share of the epoch, and rank 0's BatchNorm statistics
            names = sorted(stats.loss_sums)
            size = distributed.world().size
            *totals, correct, seen = distributed.sum_tensors(
                [torch.as_tensor(stats.loss_sums[k], device=self.device) for k in names]
                + [torch.as_tensor(stats.correct if stats.correct is not None else 0, device=self.device),
                   torch.as_tensor(stats.seen, device=self.device)])
            stats.loss_sums = {k: v / size for k, v in zip(names, totals, strict=True)}
            stats.correct, stats.seen = (correct if stats.correct is not None else None), int(seen)
            distributed.broadcast_buffers(self.student)
        sums = {k: float(v) for k, v in stats.loss_sums.items()}
        init = phase == "init"
        if not all(math.isfinite(v) for v in sums.values()):
            where = "initialisation epoch" if init else "epoch"
            raise NonFiniteLoss(f"non-finite loss in {where} {epoch + 1}")
        steps = max(1, stats.steps)
        entry: dict[str, Any] = {"phase": phase, "epoch": epoch + 1,
                                 "lr": self.spec.lr if init else learning_rate(self.spec, epoch)}
        if self.generations > 1:
            entry["generation"] = self.generation
        entry.update({k: v / steps for k, v in sorted(sums.items())})
        entry["train_top1"] = float(stats.correct) / max(1, stats.seen) * 100 if stats.correct is not None else None
        val_top1 = None
        if not init and splits.info.sizes.get("val", 0):
            pred = predict(self.student, splits, "val", eval_batch_size, amp=self.spec.amp,
                           channels_last=self.spec.channels_last)
            val_top1 = top1(pred.logits, pred.labels)
            if self.best_val is None or val_top1 > self.best_val:
                self.best_val, self.best_val_epoch = val_top1, epoch + 1
                self.best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        entry["val_top1"] = val_top1
        entry["time_s"] = epoch_time_s
        self.history.append(entry)
        for listener in self.epoch_listeners:
            listener(entry)

    @property
    def extra_params_m(self) -> float:
        """Trainable parameters the method adds (adapters, heads), in millions; not part of the student."""
        return count_params_m(self.method)

    @property
    def extra_buffers_m(self) -> float:
        """Buffers the method keeps (memory banks, normalisation statistics), in millions of elements."""
        return sum(b.numel() for b in self.method.buffers()) / 1e6


# ---------------------------------------------------------------------------------------------------------------
# The cohort loop


ProgressHook = Callable[[int], None]


def train_members(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, *,
                  progress: ProgressHook | None = None) -> None:
    """Train every member for its budget on one shared data stream.

    All members share the dataset, seed, batch size and epochs (see :func:`kdbench.config.cohort_key`); each
    batch is drawn and augmented once (and each extra view any member asked for made once), the teacher runs once
    on it (logits plus the union of the stages and the embedding any member asked for), and each active member
    takes its own step. A member whose loss turns non-finite, or whose method raises, is marked failed and the
    others go on. A member whose method has an initialisation phase runs it first, alone, on a data stream of its
    own (so the shared stream, and the other members' results, do not depend on it).

    Args:
        members: the cohort; members with several generations must train alone.
        splits: the dataset.
        teacher: the teacher in eval mode, or ``None`` when no member needs one.
        progress: called with the number of steps done, for a progress bar.
    """
    if not members:
        return
    first = members[0].spec
    generations = members[0].generations
    if generations > 1 and len(members) > 1:
        raise ValueError("a member with several generations trains alone")
    eval_batch_size = max(256, first.batch_size)
    iterations = splits.num_batches("train", first.batch_size)
    with host_rngs_preserved():
        for generation in range(generations):
            if generation:
                members[0].next_generation()
            for member in members:
                if member.active and member.method.init_epochs > 0:
                    _init_phase(member, splits, teacher, eval_batch_size, iterations, progress)
            _train_epochs([m for m in members if m.active], splits, teacher, first.seed, first.epochs, iterations,
                          eval_batch_size, progress, phase="train")
            if generations > 1 and members[0].active:
                pred = predict(members[0].student, splits, first.eval_split, eval_batch_size, amp=first.amp,
                               channels_last=first.channels_last)
                members[0].generation_top1.append(top1(pred.logits, pred.labels))


INIT_STREAM = "init"


def _init_phase(member: Member, splits: Splits, teacher: nn.Module | None, eval_batch_size: int,
                iterations: int, progress: ProgressHook | None) -> None:
    """Run ``member``'s initialisation phase alone, on a data stream seeded apart from the shared one."""
    try:
        optimizer = member.init_optimizer()
    except Exception as err:  # noqa: BLE001 - a method's failure is its run's failure
        member.fail(err)
        return
    _train_epochs([member], splits, teacher, view_seed(member.spec.seed, INIT_STREAM), member.method.init_epochs,
                  iterations, eval_batch_size, progress, phase="init", optimizer=optimizer)
    if member.active:
        member.end_init_phase()


def _train_epochs(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, seed: int, epochs: int,
                  iterations: int, eval_batch_size: int, progress: ProgressHook | None, *, phase: str,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
    """``epochs`` epochs of the members on one data stream seeded ``seed`` (the shared loop of both phases)."""
    if not members:
        return
    first = members[0].spec
    device = members[0].device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    view_names = sorted({v for m in members for v in m.method.extra_views})
    view_generators = {}
    for name in view_names:
        view_generators[name] = torch.Generator(device=device)
        view_generators[name].manual_seed(distributed.rank_seed(view_seed(seed, name)))
    clock = StepClock(device)
    num_train = int(splits.info.sizes.get("train", 0))
    for epoch in range(epochs):
        shared_before = {id(m): m.shared_time_s + m.own_time_s for m in members}
        batches = splits.train_batches(first.batch_size, generator)
        for iteration in range(iterations):
            tick = clock.mark()
            try:
                batch = next(batches)
            except StopIteration:
                break
            if not splits.shards_train_batches:
                batch = Batch(*distributed.shard(batch.images, batch.labels, batch.indices))
            # under torchrun, this rank's share of the global batch (the epoch's last batch may be short)
            whole = min(first.batch_size, num_train - iteration * first.batch_size)
            weight = distributed.share_weight(len(batch.labels), whole)
            active = [m for m in members if m.active]
            if not active:
                clock.settle()
                return
            images = to_memory_format(batch.images, first.channels_last)
            wanted = sorted({v for m in active for v in m.method.extra_views})
            views = {name: to_memory_format(VIEW_AUGMENTATIONS.get(name)(batch.images, splits.info,
                                                                         view_generators[name]),
                                            first.channels_last)
                     for name in wanted}
            tock = clock.mark()
            clock.charge(tick, tock, [(m, "shared_time_s", 1 / len(active)) for m in active])
            users = [m for m in active if m.uses_teacher]
            out = None
            if teacher is not None and users:
                tick = tock
                out = teacher_outputs(teacher, images, views, users, first.amp)
                tock = clock.mark()
                clock.charge(tick, tock, [(m, name, 1 / len(users)) for m in users
                                          for name in ("teacher_time_s", "shared_time_s")])
            for m in active:
                tick = tock
                try:
                    m.train_step(images, batch.labels, batch.indices, out, epoch, iteration, iterations,
                                 views={v: views[v] for v in m.method.extra_views}, phase=phase,
                                 optimizer=optimizer, weight=weight)
                except Exception as err:  # noqa: BLE001 - one member's failure must not stop the others
                    m.fail(err)
                tock = clock.mark()
                clock.charge(tick, tock, [(m, "own_time_s", 1.0)])
                m.samples += len(batch.labels)
            if progress is not None:
                progress(1)
        clock.settle()
        for m in members:
            if not m.active:
                continue
            try:
                spent = m.shared_time_s + m.own_time_s - shared_before[id(m)]
                m.end_epoch(epoch, splits, eval_batch_size, spent, phase=phase)
            except Exception as err:  # noqa: BLE001 - as above
                m.fail(err)


def teacher_outputs(teacher: nn.Module, images: Tensor, views: dict[str, Tensor], users: Sequence[Member],
                     amp: bool) -> dict[str, TeacherOutput]:
    """One teacher pass per view that some user needs: the union of their stages, the embedding if any asks."""
    stages = sorted({s for m in users for s in m.method.teacher_stages})
    embedding = any(m.method.embeddings for m in users)
    forward = users[0].forward  # compiled when the cohort's members are (one setting per cohort)
    out = {MAIN_VIEW: teacher_forward(teacher, images, stages, amp, embedding, forward)}
    for name, view in views.items():
        if any(name in m.method.extra_views for m in users):
            out[name] = teacher_forward(teacher, view, stages, amp, embedding, forward)
    return out


@functools.cache
def compiled_forward() -> Callable[..., Any]:
    """:func:`~kdbench.features.forward_outputs` under ``torch.compile`` (one wrapper per process).

    The function is compiled rather than the models, so that the models stay plain modules: evaluation, state
    dicts, deep copies and the efficiency measurement see them as they are, and a feature method's
    ``forward_intermediates`` pass is compiled as much as a plain forward.
    """
    return torch.compile(forward_outputs)


class StepClock:
    """Timings of the training loop without a host synchronisation per step.

    A mark is the wall clock on the CPU. On a GPU it is a CUDA event recorded on the current stream, so a span
    between two marks is the device time between them (including any time the device sat idle waiting for the
    host, e.g. for the data loader, which is charged to the span in which the host was late). Spans on a GPU are
    resolved in one synchronisation at :meth:`settle` (the cohort loop calls it at each epoch's end, and it runs by
    itself every :attr:`SETTLE_EVERY` spans so that the events of a long epoch do not pile up).

    Args:
        device: the training device.
    """

    SETTLE_EVERY = 4096

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._spans: list[tuple[Any, Any, list[tuple[Any, str, float]]]] = []

    def mark(self) -> Any:
        """A point in time: ``time.perf_counter()`` on the CPU, a recorded CUDA event on a GPU."""
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def charge(self, start: Any, end: Any, targets: list[tuple[Any, str, float]]) -> None:
        """Add ``weight`` times the span from ``start`` to ``end`` (seconds) to ``target.<attribute>``, for each."""
        if not self._cuda:
            _add_time(end - start, targets)
            return
        self._spans.append((start, end, targets))
        if len(self._spans) >= self.SETTLE_EVERY:
            self.settle()

    def settle(self) -> None:
        """Resolve the pending spans (on a GPU: wait for the last event once)."""
        if not self._spans:
            return
        self._spans[-1][1].synchronize()
        for start, end, targets in self._spans:
            _add_time(start.elapsed_time(end) / 1000.0, targets)
        self._spans.clear()


def _add_time(seconds: float, targets: list[tuple[Any, str, float]]) -> None:
    for target, attribute, weight in targets:
        setattr(target, attribute, getattr(target, attribute) + seconds * weight)
