"""The method plugin contract: :class:`Distiller`, :class:`Step`, :class:`RunContext`, :func:`register_method`.

A method is one class: its paper in the docstring, its hyperparameters as a frozen ``Params`` dataclass, and a
``losses(step)`` that returns already-weighted named loss terms. The harness owns everything else (training loop,
teacher, precision, optimiser, schedule); it sums the terms, logs each one, and computes only what a method
declares it needs: stage maps (``student_stages`` / ``teacher_stages``), pre-logits embeddings
(``embeddings``), extra augmented views of the batch (``extra_views``). A method is built knowing its run
(:class:`RunContext`), may train some modules in an initialisation phase before the main training
(``init_epochs`` / ``init_losses`` / ``init_trains``), may train several generations of the student
(``teacher_source = "self"``) and may give its modules their own optimiser groups (``param_groups``).
It may also adapt the student it trains (``training_student``) and define the network deployed after training
(``deployed_student``; ``deployed_variants``: further networks evaluated beside it, such as early exits).

Epochs. ``Step.epoch`` counts from 0, as Python does; papers and mdistiller count from 1. A schedule written
in a paper's epochs uses :meth:`Step.ramp` (mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch),
so the first epoch of a 20-epoch ramp has weight 1/20 and epoch 20 (``step.epoch == 19``) has weight 1.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from kdbench.config import Bounds, build_params, check_ranges, field_bounds, valid
from kdbench.errors import KDBenchError
from kdbench.features import match_stages
from kdbench.losses import cross_entropy
from kdbench.registry import Registry

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo
    from kdbench.features import ModelInfo

ENTRY_POINT_GROUP = "kdbench.methods"

#: The method families, in the order `kdbench list methods`, the README's methods table and the report's colours
#: follow, each with its heading in the README. A method declares one as its ``family`` class attribute; a plugin
#: that declares none is ``other``.
FAMILIES: dict[str, str] = {
    "baseline": "baseline",
    "logit": "logit methods",
    "feature": "feature-map methods",
    "relation": "relation methods",
    "init_phase": "initialisation-phase methods",
    "self": "self-distillation and teacher-free",
    "architecture": "heterogeneous architectures and ViT students",
    "other": "other methods",
}


def tunable(low: float | None = None, high: float | None = None, *, log: bool = False,
            choices: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """Field metadata that declares a ``Params`` field's search space, next to its default.

    Use it as ``temperature: float = field(default=4.0, metadata=tunable(1.0, 8.0))``; ``kdbench tune`` samples
    the declared fields (uniformly, or log-uniformly with ``log=True``, or from ``choices``).

    Raises:
        ValueError: neither a range nor choices, or an empty / reversed range.
    """
    if choices is not None:
        if low is not None or high is not None or not choices:
            raise ValueError("a search space is either a (low, high) range or a non-empty tuple of choices")
        return {"search": {"choices": tuple(choices)}}
    if low is None or high is None or not low < high or (log and low <= 0):
        raise ValueError(f"a search range needs low < high (and low > 0 on a log scale); got {low}, {high}")
    return {"search": {"low": low, "high": high, "log": log}}


#: Each registered method's ``Params`` class -> the method's name (the first to register it), for messages.
PARAMS_OWNERS: dict[type, str] = {}


@dataclass(frozen=True)
class MethodParams:
    """Base of a method's ``Params``: constructing one checks every field against the range it declares.

    A field declares its valid values once with ``metadata=valid(...)`` (:func:`kdbench.config.valid`); a
    ``Params`` with a ``__post_init__`` of its own (checks between fields) calls ``super().__post_init__()`` first.
    ``--set``, sweep grids and tune trials are checked against the same ranges before anything runs, in one line
    naming the method (:func:`kdbench.config.build_params`), whether or not a plugin's ``Params`` derives from it.

    Raises:
        ConfigError: (a ``ValueError``) a value outside its field's range.
    """

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_ranges(type(self), values, PARAMS_OWNERS.get(type(self), ""))


@dataclass(frozen=True)
class StageSelection(MethodParams):
    """The stage selection of a method that pairs student stages with teacher stages (a ``Params`` base).

    :meth:`Distiller.tap_stage_pairs` reads it. A method may declare ``depths`` again with its own default.

    Attributes:
        depths: relative depths in [0, 1] of the matched stages in both models (``None``: the default pairing).
        student_indices: explicit student stage indices (negative: from the end); win over ``depths``.
        teacher_indices: explicit teacher stage indices (negative: from the end); win over ``depths``.
    """

    depths: tuple[float, ...] | None = field(default=None, metadata=valid(ge=0, le=1))
    student_indices: tuple[int, ...] | None = None
    teacher_indices: tuple[int, ...] | None = None


def same_range(params_cls: type, name: str, default: Any) -> Any:
    """A field for a preset's ``Params`` that re-declares ``name`` of ``params_cls`` with a new default.

    It keeps the parent field's valid range (:func:`kdbench.config.valid`), not its search space: a preset tunes
    nothing it does not declare. ``temperature: float = same_range(LogitKD.Params, "temperature", 2.0)``.
    """
    parent = next(f for f in dataclasses.fields(params_cls) if f.name == name)
    bounds = field_bounds(parent)
    return field(default=default, metadata={"valid": bounds} if bounds else {})


def gather_here(*tensors: Tensor) -> tuple[Tensor, ...]:
    """:attr:`RunContext.gather` in one process: every row is already here, so the tensors themselves."""
    return tensors


@dataclass(frozen=True)
class RunContext:
    """What a method may know about its run when it is built.

    Attributes:
        epochs: training epochs of the main phase (the initialisation phase has its own, ``init_epochs``).
        steps_per_epoch: optimisation steps per epoch (``Splits.num_batches("train", ...)``: a last batch of
            a single image is dropped, a larger partial one kept).
        batch_size: training batch size.
        num_train: samples in the training split (the size of a memory bank over it).
        num_classes: classes of the dataset.
        train_labels: int64 labels of the training split in sample order (``Step.indices`` index it), on the CPU.
        device: the training device.
        seed: the run's seed.
        gather: every process's rows of per-sample tensors (``indices, v = context.gather(indices, v)``),
            concatenated in process order and detached: under torchrun the whole global batch, in one process the
            tensors themselves (:func:`gather_here`). The only way a method reaches the other processes.
        processes: how many processes train the run together (torchrun); 1 in one process.
    """

    epochs: int
    steps_per_epoch: int
    batch_size: int
    num_train: int
    num_classes: int
    train_labels: Tensor
    device: torch.device = torch.device("cpu")
    seed: int = 0
    gather: Callable[..., tuple[Tensor, ...]] = gather_here
    processes: int = 1


@dataclass
class View:
    """The models' outputs on one extra augmented view of the batch (see ``Distiller.extra_views``).

    Attributes:
        images: the view's inputs (the same samples as the main view, in the same order).
        student_logits: the student's logits on the view, with gradient.
        teacher_logits: the teacher's logits on the view, or ``None`` without a teacher.
        student_features: student stage maps on the view (the stages the method asked for).
        teacher_features: teacher stage maps on the view.
        student_embedding: the student's pre-logits embedding on the view, when the method asked for embeddings.
        teacher_embedding: the teacher's pre-logits embedding on the view.
    """

    images: Tensor
    student_logits: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[int, Tensor] = field(default_factory=dict)
    teacher_features: dict[int, Tensor] = field(default_factory=dict)
    student_embedding: Tensor | None = None
    teacher_embedding: Tensor | None = None


@dataclass
class Step:
    """What a method sees at one training step. Tensors are on the training device.

    Teacher tensors are the method's own copies: a method may change them in place without changing what other
    members of a cohort see.

    Attributes:
        images: the (augmented, normalised) input batch.
        labels: class labels, int64.
        indices: positions of the samples in the training split (for memory-bank methods).
        student_logits: the student's logits, with gradient (the first head's, for a student with several).
        student_features: stage index -> student feature map (only the stages the method asked for).
        teacher_logits: the teacher's logits (no gradient), or ``None`` for a method without a teacher.
        teacher_features: stage index -> teacher feature map (only the stages the method asked for).
        epoch: the current epoch, from 0 (``-init_epochs .. -1`` in the initialisation phase).
        epochs: the number of training epochs.
        iteration: the step within the epoch, from 0.
        iterations: steps per epoch.
        student_embedding: the student's pre-logits embedding ``forward_head(x, pre_logits=True)``, (B, D), with
            gradient; ``None`` unless the method set ``embeddings = True``.
        teacher_embedding: the teacher's pre-logits embedding, (B, D_t); ``None`` unless asked for.
        student_heads: every head's output when the student's training forward returns several (a distilled
            DeiT returns the class-token and the distillation-token logits); ``(student_logits,)`` otherwise.
        views: extra view name -> :class:`View`, for the names in the method's ``extra_views``.
        phase: ``"train"``, or ``"init"`` in the initialisation phase.
        student_final_map: the student's final features before pooling as an NCHW map (a ViT's patch tokens on
            their grid), with gradient; ``None`` unless the method set ``final_maps = True``.
        teacher_final_map: the teacher's, from the cohort's shared teacher pass; ``None`` unless asked for.
        student_classifier: the student's live classifier (timm's ``get_classifier()``, one ``nn.Linear`` over
            the pooled final map; its weight and bias have gradient); ``None`` unless ``classifiers = True``.
        teacher_classifier: a frozen copy of the teacher's classifier; ``None`` unless asked for.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor
    student_logits: Tensor
    student_features: dict[int, Tensor] = field(default_factory=dict)
    teacher_logits: Tensor | None = None
    teacher_features: dict[int, Tensor] = field(default_factory=dict)
    epoch: int = 0
    epochs: int = 1
    iteration: int = 0
    iterations: int = 1
    student_embedding: Tensor | None = None
    teacher_embedding: Tensor | None = None
    student_heads: tuple[Tensor, ...] = ()
    views: dict[str, View] = field(default_factory=dict)
    phase: str = "train"
    student_final_map: Tensor | None = None
    teacher_final_map: Tensor | None = None
    student_classifier: nn.Linear | None = None
    teacher_classifier: nn.Linear | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return (self.epoch + self.iteration / max(1, self.iterations)) / max(1, self.epochs)

    def ramp(self, epochs: float) -> float:
        """A linear warm-up weight written in a paper's (1-based) epochs: ``min((epoch + 1) / epochs, 1)``.

        It is mdistiller's ``min(epoch / warmup, 1)`` with its epochs counted from 1, constant within an epoch:
        1/``epochs`` during the first epoch, 1 from epoch ``epochs`` on (0 or less: always 1).
        """
        if epochs <= 0:
            return 1.0
        return min(1.0, (self.epoch + 1) / epochs)


@dataclass
class TeacherBatch:
    """One batch of the teacher's pass over the training split before training (see ``Distiller.teacher_pass``).

    The tensors are the method's own copies, without gradient, on the training device.

    Attributes:
        labels: class labels, int64.
        indices: positions of the samples in the training split.
        teacher_logits: the teacher's logits.
        teacher_embedding: its pre-logits embedding, (B, D_t), when ``"embedding"`` is in ``teacher_pass``.
        teacher_final_map: its final map before pooling, NCHW, when ``"final_map"`` is in ``teacher_pass``.
        teacher_classifier: a frozen copy of its classifier, when the method declares ``classifiers``.
    """

    labels: Tensor
    indices: Tensor
    teacher_logits: Tensor
    teacher_embedding: Tensor | None = None
    teacher_final_map: Tensor | None = None
    teacher_classifier: nn.Linear | None = None


@dataclass
class TeacherParts:
    """What a deployed network may borrow from the teacher: frozen copies, made when the run's member is built.

    Attributes:
        classifier: the teacher's classifier (one ``nn.Linear``), for a method that declares ``classifiers``.
    """

    classifier: nn.Linear | None = None


class FinalMap(nn.Module):
    """The layout step of :func:`kdbench.features.final_feature_map` as a module, fixed for one model.

    A CNN's NCHW map passes through (an NHWC one is permuted); a ViT's tokens lose their ``prefix_tokens`` and
    are laid out on ``grid``. It is the first module of a deployed head, so an exported head needs only torch.
    """

    def __init__(self, layout: str, prefix_tokens: int = 0, grid: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.layout, self.prefix_tokens, self.grid = layout, int(prefix_tokens), (int(grid[0]), int(grid[1]))

    @classmethod
    def of(cls, model: nn.Module, features: Tensor) -> FinalMap:
        """The layout of ``features``, an output of ``model.forward_features``."""
        from kdbench.features import final_feature_map

        if features.ndim == 4:
            return cls("nhwc" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "nchw")
        grid = tuple(final_feature_map(model, features).shape[2:])  # tokens on a grid, or one error line
        return cls("tokens", int(getattr(model, "num_prefix_tokens", 0) or 0), (grid[0], grid[1]))

    def forward(self, features: Tensor) -> Tensor:
        """The NCHW map."""
        if self.layout == "nchw":
            return features
        if self.layout == "nhwc":
            return features.permute(0, 3, 1, 2)
        tokens = features[:, self.prefix_tokens:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.grid[0], self.grid[1])

    def extra_repr(self) -> str:
        """The layout, for ``repr``."""
        return f"layout={self.layout}, prefix_tokens={self.prefix_tokens}, grid={self.grid}"


class DeployedNetwork(nn.Module):
    """A deployed network that is not the bare student: a method's head on the student's final map.

    ``logits = head(backbone.forward_features(images))``: ``backbone`` is a copy of the trained timm student without
    its classifier (``reset_classifier(0)``; a method that predicts through a head of its own never uses it), and
    ``head`` is :class:`FinalMap` (the features laid out as the NCHW map ``Step.student_final_map`` is) followed by
    a copy of the method's head. Both are copies, frozen and in eval mode, holding the weights of the moment the
    network was built. ``kdbench export`` writes the backbone as the folder timm loads and the head as a
    ``torch.export`` program beside it.

    Args:
        student: the trained timm student.
        head: the method's head: NCHW final map -> logits.
        input_size: ``(channels, height, width)`` of the run's images (to lay out the backbone's features).
    """

    def __init__(self, student: nn.Module, head: nn.Module, input_size: tuple[int, int, int]) -> None:
        super().__init__()
        backbone = copy.deepcopy(student)
        backbone.reset_classifier(0)
        for param in [*backbone.parameters()]:
            param.grad = None
        self.backbone = backbone.requires_grad_(False).eval()
        param = next(backbone.parameters())
        with torch.no_grad():
            features = backbone.forward_features(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
        self.head = nn.Sequential(FinalMap.of(backbone, features), copy.deepcopy(head)).requires_grad_(False).eval()

    def forward(self, images: Tensor) -> Tensor:
        """The logits."""
        return self.head(self.backbone.forward_features(images))


class Distiller(nn.Module):
    """Base class of every distillation method.

    Subclasses define ``Params`` (a frozen dataclass whose defaults are the paper's), implement :meth:`losses`,
    and in ``__init__`` declare what they need (all optional):

    - ``student_stages`` / ``teacher_stages``: the stage indices whose maps they read;
    - ``embeddings = True``: the pre-logits embeddings of student and teacher;
    - ``final_maps = True``: the final feature maps before pooling of student and teacher;
    - ``classifiers = True``: the student's live classifier and a frozen copy of the teacher's (each model's
      classifier must be one ``nn.Linear`` over its pooled final map, else the run fails in one line);
    - ``teacher_pass``: teacher statistics gathered before the main training: the outputs wanted besides the
      logits (``"embedding"``, ``"final_map"``); the harness runs the teacher once over the training split (eval
      mode, no augmentation, fixed order; once per cohort for all members that ask), hands each batch to
      :meth:`observe_teacher` and then calls :meth:`finish_teacher_pass`; a method keeps what it computes in
      registered buffers, which checkpoints save;
    - ``extra_views``: names of extra augmented views of each batch (see :data:`VIEW_AUGMENTATIONS` in
      :mod:`kdbench.training`; e.g. ``("strong",)``), each run through the student and, once per cohort, the
      teacher;
    - ``init_epochs`` > 0: an initialisation phase of that many epochs before the main training, which keeps
      its full budget; in it the engine calls :meth:`init_losses` and trains what ``init_trains`` names
      (``"all"``, the default: the student and the method's modules; ``"method"``: only the method's modules,
      the student staying in eval mode), at the constant learning rate ``init_lr`` (``None``, the default: the
      run's ``lr``); a parameter the initialisation losses do not reach is left as it is;
    - generations (``teacher_source = "self"`` with ``needs_teacher = False``): the student is trained
      ``params.generations`` times from scratch (a ``generations`` field of its ``Params``; 1 without one);
      generation 0 has no teacher (``Step.teacher_logits`` is ``None``) and generation k is distilled from
      generation k - 1, frozen in eval mode, whose outputs the harness hands the step as the teacher's.
    - ``gradient_groups``: loss terms whose gradients the method's own optimiser keeps apart, as group name ->
      term names (e.g. ``{"task": ("loss_ce",), "kd": ("loss_kd",)}``; every term in exactly one group); in the
      main phase the harness runs one backward pass per group (each averaged over the processes under torchrun)
      and hands the gradients to the optimiser :meth:`make_optimizer` returns, whose ``step_groups(grads)``
      updates the parameters (an initialisation phase keeps the run's optimiser).

    Trainable modules a method creates (adapters, auxiliary heads, projections) are optimised with the student
    (in the groups :meth:`param_groups` gives), counted as ``extra_params_m`` and part of the deployed network
    only where :meth:`deployed_student` puts them (SimKD's projector); buffers it keeps (memory banks) are counted
    as ``extra_buffers_m``. A method never calls the models itself: it is handed their outputs in a :class:`Step`.

    Args:
        params: an instance of the subclass's ``Params``.
        student: shape information about the student.
        teacher: shape information about the teacher; ``None`` when ``needs_teacher`` is false.
        data: the dataset's description (classes, image size, split sizes).
        context: the run (epochs, steps per epoch, training labels, device); the engine passes it when the
            subclass's ``__init__`` takes a ``context`` argument and otherwise sets ``self.context`` right after
            construction, so plugins written before it existed keep working.

    Class attributes:
        name: the registered name (set by :func:`register_method`).
        family: what the method distils, one of :data:`FAMILIES` (``logit``, ``feature``, ``relation``, ...);
            ``other`` when a plugin says nothing.
        version: bumped whenever the method's loss, defaults or behaviour change; part of the run id, so runs
            of an older version are trained again instead of being reused.
        needs_teacher: ``False`` for methods with no separate teacher (the engine then trains, loads and runs
            none, and the record's ``teacher`` is null).
        teacher_source: ``"self"`` for methods that make their own teacher from the student (born-again
            networks); ``None`` otherwise.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "other"
    version: ClassVar[int] = 1
    needs_teacher: ClassVar[bool] = True
    teacher_source: ClassVar[str | None] = None

    @dataclass(frozen=True)
    class Params:
        """No hyperparameters."""

    def __init__(self, params: Any, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__()
        self.params = params
        self.context = context
        self.student_stages: tuple[int, ...] = ()
        self.teacher_stages: tuple[int, ...] = ()
        self.eval_student_stages: tuple[int, ...] = ()
        self.embeddings: bool = False
        self.final_maps: bool = False
        self.classifiers: bool = False
        self.teacher_pass: tuple[str, ...] = ()
        self.extra_views: tuple[str, ...] = ()
        self.init_epochs: int = 0
        self.init_lr: float | None = None
        self.gradient_groups: dict[str, tuple[str, ...]] = {}
        self.init_trains: str = "all"
        self.pairs: tuple[tuple[int, int], ...] = ()

    def tap_stage_pairs(self, student: ModelInfo, teacher: ModelInfo, **options: Any) -> tuple[tuple[int, int], ...]:
        """Pair the student's stages with the teacher's and read their maps; return the pairs, in order.

        The pairing is :func:`kdbench.features.match_stages` from the ``depths``, ``student_indices`` and
        ``teacher_indices`` of :attr:`params` (``options``: its ``skip_first``, ``at_least``); the paired stages
        become :attr:`student_stages` and :attr:`teacher_stages`.
        """
        p = self.params
        stages = match_stages(student, teacher, self.name, p.depths, p.student_indices, p.teacher_indices, **options)
        self.student_stages, self.teacher_stages = stages.student, stages.teacher
        self.pairs = stages.pairs
        return stages.pairs

    def paired_maps(self, step: Step) -> tuple[list[Tensor], list[Tensor]]:
        """The student's and the teacher's maps of the stage pairs (:attr:`pairs`), in pair order."""
        return ([step.student_features[s] for s, _ in self.pairs], [step.teacher_features[t] for _, t in self.pairs])

    def sum_over_pairs(self, step: Step, loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``sum(loss(student map, teacher map) for each stage pair)``, in pair order."""
        return sum(loss(step.student_features[s], step.teacher_features[t]) for s, t in self.pairs)

    def with_ce(self, step: Step, **terms: Tensor) -> dict[str, Tensor]:
        """``{"loss_ce": ce_weight * CE(z_s, y), **terms}``, e.g. ``self.with_ce(step, loss_nst=p.weight * nst)``.

        The labels' term of a ``Params`` with a ``ce_weight``, then the method's own (already weighted) terms.
        """
        return {"loss_ce": self.params.ce_weight * cross_entropy(step.student_logits, step.labels), **terms}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Return the named, already-weighted loss terms of one step, e.g. ``{"loss_ce": ..., "loss_kd": ...}``."""
        raise NotImplementedError

    def observe_teacher(self, batch: TeacherBatch) -> None:
        """One batch of the teacher pass before training (methods with a ``teacher_pass`` implement it)."""
        raise NotImplementedError(f"{type(self).__name__} sets teacher_pass but does not implement observe_teacher")

    def finish_teacher_pass(self) -> None:
        """Called once after the teacher pass; under torchrun reduce over the processes with ``context.gather``."""

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """The loss terms of one step of the initialisation phase (``step.phase == "init"``).

        Only methods with ``init_epochs > 0`` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} sets init_epochs but does not implement init_losses")

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The parameters the initialisation phase's optimiser holds, as ``init_trains`` names them.

        Kept for plugins written before ``init_trains``: one that overrides this hook is trained on what it returns
        (see :func:`init_phase_parameters`); built-in methods declare ``init_trains`` instead.
        """
        own = [p for p in self.parameters() if p.requires_grad]
        return own if self.init_trains == "method" else own + list(student.parameters())

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of the method's trainable parameters (the student's form a group of their own).

        Each group is a dict with ``params`` and optionally ``lr_scale`` (a multiplier of the run's learning
        rate) and ``weight_decay`` (e.g. 0 for a learnable temperature). By default one group of all of them.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def make_optimizer(self, groups: list[dict[str, Any]], *, kind: str, lr: float, momentum: float,
                       weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
        """The main phase's optimiser of a method with ``gradient_groups``, over the run's parameter groups.

        ``groups`` are the student's group and :meth:`param_groups` (each with ``params``, ``lr_scale`` and maybe
        ``weight_decay``); the keywords are the run's optimiser settings (``kind``: ``sgd`` or ``adamw``). The
        optimiser's ``step_groups(grads)`` gets group name -> one gradient per parameter (``None`` where the group
        does not reach it), in the order of its ``param_groups``' parameters; the schedule sets each group's
        ``lr``, and checkpoints save its ``state_dict()``. Raise a :class:`~kdbench.errors.ConfigError` for
        settings it cannot train with.
        """
        raise NotImplementedError(f"{type(self).__name__} sets gradient_groups but does not implement make_optimizer")

    def training_student(self, student: nn.Module) -> nn.Module:
        """The module trained as the student, from the freshly created timm student; by default the student itself.

        A method may change the student here (turn on a distillation head: its training forward then returns every
        head, each in ``step.student_heads``) and return it. Raise a :class:`~kdbench.errors.ModelError` for a
        student the method cannot use. The default calls the older ``prepare_student`` hook, so plugins written
        against it keep working.
        """
        self.prepare_student(student)
        return student

    def deployed_student(self, student: nn.Module, teacher: TeacherParts) -> nn.Module:
        """The network deployed after training; by default the trained student itself.

        The harness evaluates it (each epoch's validation top-1, the record's test figures), counts it
        (``params_m``, MACs), measures its speed, saves it (``--save-students``) and exports it (``kdbench
        export``). A method whose predictions go through modules of its own returns a :class:`DeployedNetwork`
        (the student's final features, then a head), which holds copies: later training does not change it.
        ``teacher`` holds frozen copies of what the network may borrow from the teacher (its classifier, for a
        method that declares ``classifiers``). Called whenever the network is needed at the current weights.
        """
        return student

    def deployed_variants(self, student: nn.Module, teacher: TeacherParts) -> dict[str, nn.Module]:
        """Further networks evaluated on the test split after training, their top-1 recorded by name (``exit_top1``).

        Early exits, or an ensemble of them; none by default. Each maps images to logits; the harness puts them,
        the student and the method in eval mode and evaluates them under ``inference_mode`` right away.
        """
        return {}

    def prepare_student(self, student: nn.Module) -> None:
        """Older hook, kept for plugins written against it: :meth:`training_student` calls it; a no-op by default."""

    def eval_logits(self, student_logits: Tensor, student_features: dict[int, Tensor]) -> dict[str, Tensor]:
        """Older hook, kept for plugins written against it: extra named predictions from one evaluation pass.

        New methods define :meth:`deployed_variants`. A method that overrides this one is evaluated the old way:
        one pass of the student with the stages in ``eval_student_stages``, this hook's outputs recorded by name in
        ``exit_top1`` (student and method in eval mode, under ``inference_mode``).
        """
        return {}

    @classmethod
    def uses_eval_logits(cls) -> bool:
        """Whether the method overrides the older :meth:`eval_logits` (then evaluated the old way)."""
        return cls.eval_logits is not Distiller.eval_logits

    # The contract before generations were declared by ``teacher_source = "self"``: plugins that override these two
    # keep working (see :func:`generations_of`); built-in methods do not use them.
    @classmethod
    def num_generations(cls, params: Any) -> int:
        """How many times the student is trained from scratch (overridden only by plugins of the older contract)."""
        return int(getattr(params, "generations", 1)) if cls.teacher_source == "self" else 1

    def start_generation(self, generation: int, previous: nn.Module | None) -> None:
        """Called before each generation with the previous generation (frozen, eval mode); a no-op by default."""


def generations_of(cls: type[Distiller], params: Any) -> int:
    """How many generations a run of ``cls`` with ``params`` trains.

    ``params.generations`` for a method whose ``teacher_source`` is ``"self"`` (1 without the field), 1 for every
    other method; a plugin of the older contract that overrides ``num_generations`` is asked.
    """
    return int(cls.num_generations(params))


def init_phase_parameters(method: Distiller, student: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``method``'s initialisation phase, each once.

    What ``init_trains`` names; a plugin that overrides ``init_parameters``, the hook of the older contract, is
    asked instead.
    """
    return list({id(p): p for p in method.init_parameters(student)}.values())


METHODS: Registry[type[Distiller]] = Registry("method")


def construct_method(cls: type[Distiller], params: Any, student: ModelInfo, teacher: ModelInfo | None,
                     data: DatasetInfo, context: RunContext) -> Distiller:
    """Build a method for a run: ``context`` goes to ``__init__`` when it takes one, else onto the instance."""
    try:
        accepts = "context" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        accepts = False
    method = cls(params, student, teacher, data, context=context) if accepts else cls(params, student, teacher, data)
    method.context = context
    return method


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator that registers a :class:`Distiller` subclass under ``name``.

    Raises:
        TypeError: the class is not a Distiller, has no docstring, its ``family`` is not one of :data:`FAMILIES`,
            its ``Params`` is not a frozen dataclass, a default lies outside its field's range, or a search space
            (:func:`tunable`) reaches outside it (declare the space inside the valid range; it is never clipped).
        ValueError: the name is taken.
    """

    def decorate(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"@register_method({name!r}) must decorate a Distiller subclass")
        params_cls = cls.Params
        if not dataclasses.is_dataclass(params_cls) or not params_cls.__dataclass_params__.frozen:
            raise TypeError(f"{cls.__name__}.Params must be a frozen dataclass")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"{cls.__name__} needs a docstring that opens with its paper's title and link")
        if cls.losses is Distiller.losses:
            raise TypeError(f"{cls.__name__} must implement losses(step)")
        if cls.family not in FAMILIES:
            raise TypeError(f"{cls.__name__}.family {cls.family!r} is not a method family; use one of "
                            f"{', '.join(FAMILIES)}")
        check_declared_ranges(name, params_cls)
        PARAMS_OWNERS.setdefault(params_cls, name)
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return decorate


def check_declared_ranges(method: str, params_cls: type) -> None:
    """Every default of ``params_cls`` lies in its field's valid range, and so does every declared search space.

    Raises:
        TypeError: the first default or search space outside its range, naming the method and the field.
    """
    for spec_field in dataclasses.fields(params_cls):
        bounds = field_bounds(spec_field)
        if bounds is not None and not isinstance(bounds, Bounds):
            raise TypeError(f"{method}.{spec_field.name}: declare its range with valid(...)")
        if bounds is None:
            continue
        default = spec_field.default
        if default is dataclasses.MISSING and spec_field.default_factory is not dataclasses.MISSING:
            default = spec_field.default_factory()
        if default is not dataclasses.MISSING and not bounds.holds(default):
            raise TypeError(f"{method}.{spec_field.name}: its default {default!r} is outside its valid range {bounds}")
        search = spec_field.metadata.get("search") or {}
        ends = search.get("choices", ()) or [search[k] for k in ("low", "high") if k in search]
        if not all(bounds.holds(v) for v in ends):
            raise TypeError(f"{method}.{spec_field.name}: its search space {list(ends)} reaches outside its valid "
                            f"range {bounds}")


_discovered = False


def discover_methods() -> None:
    """Register the built-in methods and those of installed packages (entry-point group ``kdbench.methods``).

    Raises:
        KDBenchError: an installed plugin fails to import.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("kdbench.methods")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - any import failure of third-party code is reported in one line
            raise KDBenchError(f"cannot load method plugin {entry.name!r} ({entry.value}): "
                               f"{type(err).__name__}: {err}") from None


_loaded_files: dict[str, str] = {}


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a method plugin from a Python file; return the names of the methods it registered.

    Loading the same file twice in one process is a no-op.

    Raises:
        KDBenchError: the file is missing or fails to import (one line with the reason).
    """
    discover_methods()
    file = Path(path).expanduser().resolve()
    if str(file) in _loaded_files:
        return []
    if not file.is_file():
        raise KDBenchError(f"plugin file not found: {path}")
    module_name = f"kdbench_plugin_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}_{file.stem}"
    before = set(METHODS.names())
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise KDBenchError(f"cannot import plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    captured = io.StringIO()  # what the file prints on stderr while it fails (argparse's usage) goes into the line
    try:
        with contextlib.redirect_stderr(captured):
            spec.loader.exec_module(module)
    except SystemExit as exit_:  # sys.exit() or argparse on import: a script, not a plugin
        sys.modules.pop(module_name, None)
        for name in set(METHODS.names()) - before:
            METHODS.unregister(name)
        said = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
        detail = f": {said[-1]}" if said else ""
        raise KDBenchError(f"cannot import plugin {path}: it exits on import (sys.exit({exit_.code!r}){detail}); a "
                           "plugin file registers methods and runs nothing at import (a training script?)") from None
    except Exception as err:  # noqa: BLE001 - report any failure of user code in one line
        sys.modules.pop(module_name, None)
        for name in set(METHODS.names()) - before:
            METHODS.unregister(name)
        where = ""
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(file):
                where = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        raise KDBenchError(f"cannot import plugin {path}{where}: {type(err).__name__}: {err}") from None
    sys.stderr.write(captured.getvalue())  # a plugin that imports fine keeps what it printed
    _loaded_files[str(file)] = module_name
    return sorted(set(METHODS.names()) - before)


def get_method(name: str) -> type[Distiller]:
    """The registered method class ``name`` (built-ins and installed plugins are discovered first)."""
    discover_methods()
    return METHODS.get(name)


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names, optionally filtered by a glob such as ``"*kd*"``."""
    discover_methods()
    return METHODS.names(pattern)


def family_order(name: str) -> tuple[int, str]:
    """The sort key of a registered method: its family's place in :data:`FAMILIES`, then its name."""
    return list(FAMILIES).index(get_method(name).family), name


def methods_by_family(pattern: str | None = None, builtin_only: bool = False) -> list[str]:
    """Registered method names ordered by family (as :data:`FAMILIES` lists them), then by name.

    Args:
        pattern: a glob such as ``"*kd*"``.
        builtin_only: only the methods that ship in ``methods/`` (no plugins).
    """
    names = list_methods(pattern)
    if builtin_only:
        names = [n for n in names if is_builtin(n)]
    return sorted(names, key=family_order)


def is_builtin(name: str) -> bool:
    """Whether the registered method ``name`` ships with kdbench (its class lives in ``kdbench.methods``)."""
    return get_method(name).__module__.startswith("kdbench.methods.")


def check_params_overrides(method: str, overrides: dict[str, Any]) -> None:
    """Validate overrides of ``method`` against its ``Params`` without building anything."""
    build_params(get_method(method).Params, overrides, method)


__all__ = [
    "FAMILIES",
    "DeployedNetwork",
    "Distiller",
    "FinalMap",
    "METHODS",
    "MethodParams",
    "RunContext",
    "StageSelection",
    "Step",
    "TeacherBatch",
    "TeacherParts",
    "View",
    "check_declared_ranges",
    "check_params_overrides",
    "construct_method",
    "discover_methods",
    "gather_here",
    "get_method",
    "is_builtin",
    "list_methods",
    "load_plugin_file",
    "methods_by_family",
    "register_method",
    "same_range",
    "tunable",
    "valid",
]
