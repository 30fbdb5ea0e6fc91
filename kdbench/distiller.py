"""The method plugin contract: :class:`Distiller`, :class:`Step`, :func:`register_method` and plugin discovery.

A method is one class: its paper in the docstring, its hyperparameters as a frozen ``Params`` dataclass, and a
``losses(step)`` that returns already-weighted named loss terms. The harness owns everything else (training loop,
teacher, precision, optimiser, schedule); it sums the terms, logs each one, and computes only the features a
method declares it needs (``student_stages`` / ``teacher_stages``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from kdbench.errors import KDBenchError
from kdbench.registry import Registry

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo
    from kdbench.features import ModelInfo

ENTRY_POINT_GROUP = "kdbench.methods"


@dataclass
class Step:
    """What a method sees at one training step. Tensors are on the training device.

    Attributes:
        images: the (augmented, normalised) input batch.
        labels: class labels, int64.
        indices: positions of the samples in the training split (for memory-bank methods).
        student_logits: the student's logits, with gradient.
        student_features: stage index -> student feature map (only the stages the method asked for).
        teacher_logits: the teacher's logits (no gradient), or ``None`` for a method without a teacher.
        teacher_features: stage index -> teacher feature map (only the stages the method asked for).
        epoch: the current epoch, from 0.
        epochs: the number of training epochs.
        iteration: the step within the epoch, from 0.
        iterations: steps per epoch.
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

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return (self.epoch + self.iteration / max(1, self.iterations)) / max(1, self.epochs)


class Distiller(nn.Module):
    """Base class of every distillation method.

    Subclasses define ``Params`` (a frozen dataclass whose defaults are the paper's), implement :meth:`losses`,
    and in ``__init__`` set ``student_stages`` / ``teacher_stages`` to the stage indices they need. Trainable
    modules they create (adapters, auxiliary heads) are optimised with the student, counted as
    ``extra_params_m`` and never part of the deployed student. A method never calls the models itself: it is
    handed their outputs in a :class:`Step`.

    Args:
        params: an instance of the subclass's ``Params``.
        student: shape information about the student.
        teacher: shape information about the teacher; ``None`` when ``needs_teacher`` is false.
        data: the dataset's description (classes, image size, split sizes).

    Class attributes:
        name: the registered name (set by :func:`register_method`).
        needs_teacher: ``False`` for methods with no separate teacher (the engine then trains, loads and runs
            none, and the record's ``teacher`` is null).
        teacher_source: ``"self"`` for methods that make their own teacher from the student (born-again
            networks); ``None`` otherwise.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    teacher_source: ClassVar[str | None] = None

    @dataclass(frozen=True)
    class Params:
        """No hyperparameters."""

    def __init__(self, params: Any, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo) -> None:
        super().__init__()
        self.params = params
        self.student_stages: tuple[int, ...] = ()
        self.teacher_stages: tuple[int, ...] = ()
        self.eval_student_stages: tuple[int, ...] = ()

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Return the named, already-weighted loss terms of one step, e.g. ``{"loss_ce": ..., "loss_kd": ...}``."""
        raise NotImplementedError

    def eval_logits(self, student_logits: Tensor, student_features: dict[int, Tensor]) -> dict[str, Tensor]:
        """Extra named predictions to evaluate on the test split (e.g. early exits); none by default.

        The engine calls it with the student and the method in eval mode, under ``inference_mode``, and restores
        their modes afterwards.
        """
        return {}

    # Methods that train several generations (born-again networks) override these two.
    @classmethod
    def num_generations(cls, params: Any) -> int:
        """How many times the student is trained from scratch in this run (1 for almost every method)."""
        return 1

    def start_generation(self, generation: int, previous: nn.Module | None) -> None:
        """Called before each generation with the previous generation's trained student (frozen, eval mode)."""


METHODS: Registry[type[Distiller]] = Registry("method")


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator that registers a :class:`Distiller` subclass under ``name``.

    Raises:
        TypeError: the class is not a Distiller, has no docstring, or its ``Params`` is not a frozen dataclass.
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
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return decorate


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
    try:
        spec.loader.exec_module(module)
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


def check_params_overrides(method: str, overrides: dict[str, Any]) -> None:
    """Validate overrides of ``method`` against its ``Params`` without building anything."""
    from kdbench.config import build_params

    build_params(get_method(method).Params, overrides, method)


__all__ = [
    "Distiller",
    "METHODS",
    "Step",
    "check_params_overrides",
    "discover_methods",
    "get_method",
    "list_methods",
    "load_plugin_file",
    "register_method",
]
