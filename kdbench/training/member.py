"""One run inside a cohort: its student, method, optimiser, private RNG, timings and history."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdbench import distributed
from kdbench.config import RunSpec, build_params, method_label
from kdbench.data import DatasetInfo, Splits
from kdbench.data.base import train_batch_count
from kdbench.distiller import (
    Distiller,
    RunContext,
    Step,
    TeacherParts,
    View,
    construct_method,
    generations_of,
    get_method,
    init_phase_parameters,
)
from kdbench.features import ModelInfo, classifier_of, describe_model, forward_outputs
from kdbench.models import count_params_m, create_model
from kdbench.training.evaluation import autocast, predict, top1
from kdbench.training.forward import MAIN_VIEW, TeacherOutput, compiled_forward
from kdbench.training.optim import backward_groups, learning_rate, make_optimizer, set_learning_rate
from kdbench.training.rng import RNGState, ensure_mode, host_rngs_preserved
from kdbench.views import VIEW_AUGMENTATIONS


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops as ``failed`` and the others go on."""


class RunPruned(Exception):
    """Raised by an epoch listener to stop a run early on purpose (a tuner pruning an unpromising trial).

    Not a failure and not a user error: the run stops with status ``pruned`` and the exception's message as its
    one-line ``error``; its record keeps the history up to that epoch, has no test figures, and is not trained
    again. The other members of its cohort go on.
    """


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
        teacher_model: the cohort's teacher, whose classifier a method with ``classifiers`` reads (a frozen copy).
    """

    def __init__(self, spec: RunSpec, info: DatasetInfo, teacher_info: ModelInfo | None, device: torch.device,
                 teacher_top1: float | None = None, train_labels: Tensor | None = None,
                 teacher_model: nn.Module | None = None) -> None:
        self.spec = spec
        self.teacher_model = teacher_model
        self.info = info
        self.device = device
        num_train = int(info.sizes.get("train", 0))
        self.context = RunContext(
            epochs=spec.epochs, steps_per_epoch=train_batch_count(num_train, spec.batch_size),
            batch_size=spec.batch_size, num_train=num_train, num_classes=info.num_classes,
            train_labels=(train_labels.detach().to("cpu", torch.long) if train_labels is not None
                          else torch.zeros(num_train, dtype=torch.long)),
            device=device, seed=spec.seed, gather=distributed.gather,
            processes=distributed.world().size if distributed.enabled() else 1)
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
        #: the frozen previous generation (a method that trains several generations distils from it)
        self.previous_student: nn.Module | None = None
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
        return generations_of(self.method_cls, self.params)

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
        self.student = self.method.training_student(self.student)
        self._take_classifiers()
        self.method.start_generation(self.generation, previous)
        distributed.sync_batchnorm(self.student, self.method)  # under torchrun: global-batch statistics
        distributed.broadcast_state(self.student, self.method)  # and rank 0's initial weights on every rank
        self.optimizer = make_optimizer(spec, [{"params": list(self.student.parameters())},
                                               *self.method.param_groups()], self.method)
        self.best_val = self.best_val_epoch = self.best_state = None

    def _take_classifiers(self) -> None:
        """For a method with ``classifiers``: check the student's classifier, freeze a copy of the teacher's."""
        self.teacher_classifier: nn.Linear | None = None
        if not getattr(self.method, "classifiers", False):
            return
        classifier_of(self.student, self.student_info, self.spec.method, "student")
        if self.uses_teacher and self.teacher_model is not None and self.teacher_info is not None:
            own = classifier_of(self.teacher_model, self.teacher_info, self.spec.method, "teacher")
            self.teacher_classifier = copy.deepcopy(own).requires_grad_(False).to(self.device)

    def teacher_parts(self) -> TeacherParts:
        """What the method's deployed network may borrow from the teacher (frozen copies)."""
        return TeacherParts(classifier=self.teacher_classifier)

    def deployed(self) -> nn.Module:
        """The network this run deploys, at the current weights: the method's ``deployed_student`` (the student)."""
        return self.method.deployed_student(self.student, self.teacher_parts())

    def next_generation(self) -> None:
        """Freeze the trained student as the next generation's teacher and start a fresh student."""
        previous = self.student.eval().requires_grad_(False)
        self.previous_student = previous
        self.generation += 1
        with host_rngs_preserved(), self.rng.active():
            self._build(previous=previous)

    @property
    def takes_teacher(self) -> bool:
        """Whether its steps get teacher outputs: a method with a teacher, or a later generation of its own."""
        return self.uses_teacher or self.previous_student is not None

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
        if not self.takes_teacher:
            outputs = {}
        stages, embedding = method.teacher_stages, method.embeddings
        final_map = getattr(method, "final_maps", False)

        def teacher_of(view: str) -> TeacherOutput | None:
            out = outputs.get(view)
            return out.copy_for(stages, embedding, final_map and view == MAIN_VIEW) if out is not None else None

        if final_map:
            student = self.forward(self.student, images, method.student_stages, method.embeddings, True)
        else:
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
            phase=phase, student_final_map=student.final_map, teacher_final_map=main.final_map if main else None,
            student_classifier=self.student.get_classifier() if getattr(method, "classifiers", False) else None,
            teacher_classifier=self.teacher_classifier)

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
                ``init_losses``, the optimiser over what its ``init_trains`` names).
            optimizer: the initialisation phase's optimiser.
            weight: the factor of the loss's gradient (under torchrun, :func:`kdbench.distributed.share_weight`).
        """
        spec = self.spec
        init = phase == "init"
        optimizer = optimizer if optimizer is not None else self.optimizer
        lr = self.init_lr() if init else learning_rate(spec, epoch + iteration / iterations)
        set_learning_rate(optimizer, lr)
        ensure_mode(self.student, not init or self._init_trains_student)
        ensure_mode(self.method, True)
        epochs = self.method.init_epochs if init else spec.epochs
        with self.rng.active():
            with autocast(self.device, spec.amp):
                step = self._step(images, labels, indices, teacher, views or {}, epoch, epochs, iteration,
                                  iterations, phase)
                terms = self.method.init_losses(step) if init else self.method.losses(step)
            check_loss_terms(terms, spec.method, "init_losses" if init else "losses")
            loss = torch.stack([t.float() for t in terms.values()]).sum()
            if self.device.type == "cpu" and not distributed.enabled() and not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                where = "initialisation epoch" if init else "epoch"
                raise NonFiniteLoss(f"non-finite loss at {where} {epoch + 1}, step {iteration + 1} ({values})")
            groups = None if init else getattr(self.method, "gradient_groups", None)
            if groups:  # the method's own optimiser takes each group's gradients apart
                optimizer.step_groups(backward_groups(optimizer, terms, groups, spec.method, weight))
            else:
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
        """The initialisation phase's optimiser (the run's kind) over what the method's ``init_trains`` names."""
        params = init_phase_parameters(self.method, self.student)
        student_ids = {id(p) for p in self.student.parameters()}
        self._init_trains_student = any(id(p) in student_ids for p in params)
        return make_optimizer(self.spec, [{"params": params}])

    _init_trains_student = True

    def init_lr(self) -> float:
        """The initialisation phase's constant learning rate: the method's ``init_lr``, else the run's."""
        lr = getattr(self.method, "init_lr", None)
        return self.spec.lr if lr is None else lr

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
                                 "lr": self.init_lr() if init else learning_rate(self.spec, epoch)}
        if self.generations > 1:
            entry["generation"] = self.generation
        entry.update({k: v / steps for k, v in sorted(sums.items())})
        # the student's own predictions on the training batches: a method that deploys a network of its own (SimKD's
        # reused teacher classifier) does not deploy them, so none is recorded
        own = type(self.method).deployed_student is Distiller.deployed_student
        entry["train_top1"] = (float(stats.correct) / max(1, stats.seen) * 100
                               if stats.correct is not None and own else None)
        val_top1 = None
        if not init and splits.info.sizes.get("val", 0):
            network = self.deployed()
            pred = predict(network, splits, "val", eval_batch_size, amp=self.spec.amp,
                           channels_last=self.spec.channels_last)
            val_top1 = top1(pred.logits, pred.labels)
            if self.best_val is None or val_top1 > self.best_val:
                self.best_val, self.best_val_epoch = val_top1, epoch + 1
                self.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
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


def check_loss_terms(terms: Any, method: str, hook: str = "losses") -> None:
    """Check what a method's ``losses()`` returned against the contract: a non-empty dict of scalar tensors.

    Raises:
        RuntimeError: one line naming the method, the term and what was wrong (the run is recorded failed).
    """
    contract = f"method {method!r}: {hook}() must return a dict of scalar tensors, e.g. {{'loss_kd': loss}}"
    if not isinstance(terms, dict) or not terms:
        got = "an empty dict" if isinstance(terms, dict) else type(terms).__name__
        raise RuntimeError(f"{contract} (got {got})")
    for name, value in terms.items():
        if not isinstance(value, Tensor):
            raise RuntimeError(f"{contract}; its term {name!r} is a {type(value).__name__}, not a tensor")
        if value.dim() != 0:
            raise RuntimeError(f"{contract}; its term {name!r} has shape {tuple(value.shape)} (reduce it to one "
                               "number, e.g. with .mean())")
