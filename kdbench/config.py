"""Run specs, their stable ids, and type-checked ``--set`` overrides of method hyperparameters.

A :class:`RunSpec` says *what* is run: dataset, models, method and its hyperparameters, seed and training budget.
Its stable hash is the run id: the same spec always maps to the same id, so resume and de-duplication are a
lookup in the results store. *Where* it runs (device, data root, results folder) is not part of the spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kdbench.errors import ConfigError

SCHEDULES = ("cosine", "multistep")
OPTIMIZERS = ("sgd", "adamw")
EVAL_SPLITS = ("test", "val")
TEACHER_SOURCES = ("trained", "checkpoint", "pretrained", "none", "self")

# Bumped whenever the harness changes what a run computes (training or evaluation semantics). It is part of every
# run id, so records of an older protocol are trained again instead of being reused. History:
#   1: the first release.
#   2: method contract v2 (construction context, initialisation phase, parameter groups, extra views, per-member
#      copies of the teacher's outputs), the optimiser as a run setting, test top-1 at the best validation epoch.
PROTOCOL_VERSION = 2

#: The largest seed: seeds are 32-bit (NumPy's and the data order's generators take no more), so a larger seed
#: would silently wrap onto a smaller one and repeat its run.
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Bounds:
    """The valid values of a number, or of each number of a tuple: an interval whose ends may be open or missing.

    Attributes:
        low: the lower end (``None``: unbounded below).
        high: the upper end (``None``: unbounded above).
        low_open: the lower end itself is left out (``> low`` rather than ``>= low``).
        high_open: the upper end itself is left out.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any) -> bool:
        """Whether ``value`` lies inside (a tuple or list: each of its items).

        ``None`` and non-numbers pass: their type is checked elsewhere.
        """
        if isinstance(value, list | tuple):
            return all(self.holds(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def __str__(self) -> str:
        """``> 0``, ``>= 1``, ``<= 1`` or ``in [0, 1)``."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, where: str, value: Any) -> str | None:
        """The one-line message for ``value`` outside the interval (``None`` when it is inside)."""
        if self.holds(value):
            return None
        if isinstance(value, list | tuple):
            return f"{where} must be a list of values {self}; got {list(value)}"
        return f"{where} must be {self} (got {value!r})"


def valid(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None) -> dict[str, Bounds]:
    """Field metadata that declares a field's valid values once, next to its default.

    Use it as ``kd_weight: float = field(default=0.9, metadata=valid(ge=0))``; with a search space too,
    ``metadata=valid(gt=0) | tunable(1.0, 8.0)``. For a tuple field each item must lie in the range; ``None`` always
    passes. :func:`build_params` (every ``--set``, sweep grid and tune trial) and :func:`check_ranges` read it.

    Args:
        ge: the value must be >= ``ge``.
        gt: the value must be > ``gt``.
        le: the value must be <= ``le``.
        lt: the value must be < ``lt``.

    Raises:
        ValueError: both ends given twice (``ge`` with ``gt``), no end, or an empty interval.
    """
    if (ge is not None and gt is not None) or (le is not None and lt is not None):
        raise ValueError("give at most one lower end (ge or gt) and one upper end (le or lt)")
    low, high = ge if gt is None else gt, le if lt is None else lt
    if low is None and high is None:
        raise ValueError("valid() needs an end: ge, gt, le or lt")
    bounds = Bounds(low, high, low_open=gt is not None, high_open=lt is not None)
    if low is not None and high is not None and not (low < high or (low == high and bounds.holds(low))):
        raise ValueError(f"valid() range {bounds} is empty")
    return {"valid": bounds}


def field_bounds(spec_field: dataclasses.Field) -> Bounds | None:
    """The :class:`Bounds` a dataclass field declares through :func:`valid`, or ``None``."""
    return spec_field.metadata.get("valid") if spec_field.metadata else None


def check_ranges(cls: type, values: Mapping[str, Any], owner: str = "",
                 label: Callable[[str], str] = str) -> None:
    """Check ``values`` (field name -> value; absent fields are skipped) against the ranges ``cls`` declares.

    Args:
        cls: a dataclass whose fields may carry :func:`valid` metadata.
        values: the values to check.
        owner: the method name, for messages (``kd.kd_weight must be >= 0``); empty for no prefix.
        label: how a field name is written in messages (the run settings write ``batch size``).

    Raises:
        ConfigError: the first value outside its range, in one line naming it, its value and the range.
    """
    for spec_field in dataclasses.fields(cls):
        bounds = field_bounds(spec_field)
        if bounds is None or spec_field.name not in values:
            continue
        name = label(spec_field.name)
        problem = bounds.problem(f"{owner}.{name}" if owner else name, values[spec_field.name])
        if problem:
            raise ConfigError(problem)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run: the unit of the results store.

    Attributes:
        dataset: registered dataset name.
        student: timm model name of the student.
        method: registered method name.
        teacher: timm model name of the teacher; ``None`` for a method that uses no separate teacher.
        method_params: every hyperparameter of the method, defaults included.
        seed: seed of the student's initialisation, the data order and augmentation, and the method's randomness.
        epochs: training epochs of the student.
        batch_size: training batch size.
        lr: peak learning rate.
        momentum: SGD momentum (unused by AdamW).
        weight_decay: weight decay (L2 for SGD, decoupled for AdamW).
        schedule: ``cosine`` (per step, to zero) or ``multistep`` (x ``lr_decay`` at each of ``milestones``).
        milestones: epochs at which ``multistep`` decays the learning rate.
        lr_decay: the multistep decay factor.
        warmup_epochs: linear warm-up epochs before the schedule.
        teacher_epochs: epochs a teacher trained by kdbench gets.
        teacher_lr: peak learning rate of a teacher trained by kdbench (its other optimiser settings are the
            student's); ``None`` where no teacher is trained.
        teacher_weight_decay: weight decay of a teacher trained by kdbench (``None``: the student's), so that tuning
            the student's weight decay leaves its teacher unchanged.
        teacher_seed: seed of the teacher's training; one teacher serves every student seed.
        teacher_source: ``trained`` (by kdbench, cached), ``checkpoint``, ``pretrained`` (timm weights), ``none``,
            or ``self`` (the method makes its own teachers from the student, as born-again networks do).
        teacher_ckpt_sha256: content hash of the teacher checkpoint when ``teacher_source == "checkpoint"``, or of the
            pretrained weights file when ``teacher_source == "pretrained"``.
        val_fraction: share of the training split held out for validation (0: none, as the CIFAR protocol).
        image_size: side of the square inputs; ``None`` for the dataset's native size.
        data_options: dataset-specific options (e.g. the shape of ``synthetic``).
        data_fingerprint: what the dataset's files are, for a dataset whose content its name does not fix
            (``imagefolder``: a hash of its file list with sizes and modification times); ``None`` for datasets
            fixed by their name (digits, mnist5k, CIFAR, synthetic). Part of the run id: other data, another run.
        amp: bf16 autocast for teacher and student.
        channels_last: channels-last memory format for teacher and student.
        optimizer: ``sgd`` (with momentum; the CIFAR protocol) or ``adamw`` (as DeiT trains ViTs).
        betas: AdamW's betas (unused by SGD).
        eval_split: the split the record's accuracy is measured on: ``test`` (the reported figure), or ``val`` for
            tuning trials, which then never read the test split.
        method_version: the method's ``version`` when the spec was made (part of the run id).
        protocol_version: the harness's :data:`PROTOCOL_VERSION` when the spec was made (part of the run id).
        teacher_ckpt: where the teacher checkpoint lies; not part of the run id (its sha256 is).
    """

    dataset: str
    student: str
    method: str
    teacher: str | None = None
    method_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int = field(default=5, metadata=valid(gt=0))
    batch_size: int = field(default=128, metadata=valid(gt=0))
    lr: float = field(default=0.05, metadata=valid(gt=0))
    momentum: float = field(default=0.9, metadata=valid(ge=0, lt=1))
    weight_decay: float = field(default=5e-4, metadata=valid(ge=0))
    schedule: str = "cosine"
    milestones: tuple[int, ...] = field(default=(), metadata=valid(gt=0))
    lr_decay: float = field(default=0.1, metadata=valid(gt=0, le=1))
    warmup_epochs: int = field(default=0, metadata=valid(ge=0))
    teacher_epochs: int = 5
    teacher_lr: float | None = field(default=None, metadata=valid(gt=0))
    teacher_weight_decay: float | None = field(default=None, metadata=valid(ge=0))
    teacher_seed: int = 0
    teacher_source: str = "trained"
    teacher_ckpt_sha256: str | None = None
    val_fraction: float = field(default=0.1, metadata=valid(ge=0, lt=1))
    image_size: int | None = field(default=None, metadata=valid(ge=4))
    data_options: Mapping[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    amp: bool = False
    channels_last: bool = False
    optimizer: str = "sgd"
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=valid(ge=0, lt=1))
    eval_split: str = "test"
    method_version: int = 1
    protocol_version: int = PROTOCOL_VERSION
    teacher_ckpt: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        check_seed(self.teacher_seed, "teacher seed")
        validate_budget(self)
        validate_identity(self)

    @property
    def run_id(self) -> str:
        """The stable id: ``<dataset>-<method>-<12 hex digits of the spec's hash>``."""
        return f"{self.dataset}-{self.method}-{spec_hash(self)[:12]}"

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready data."""
        out = dataclasses.asdict(self)
        out["method_params"] = dict(self.method_params)
        out["data_options"] = dict(self.data_options)
        out["milestones"] = list(self.milestones)
        out["betas"] = list(self.betas)
        return out


def check_seed(seed: Any, name: str = "seed") -> None:
    """Check that ``seed`` is an integer in ``[0, SEED_MAX]``: the one range of seeds for run, sweep and tune.

    Raises:
        ConfigError: ``seed`` is not an integer, or outside the range.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{name} must be an integer from 0 to {SEED_MAX} (2^32 - 1) (got {seed!r})")


def validate_budget(spec: Any) -> None:
    """Check the training budget of a spec; raise a one-line :class:`ConfigError` for the first problem.

    The valid range of each setting (``momentum`` in [0, 1), ``lr`` > 0, ...) is declared once, on its
    :class:`RunSpec` field (:func:`valid`); the checks here are those between settings.

    ``spec`` is a :class:`RunSpec`, or any dataclass with its budget fields (the budget part of a sweep spec, see
    :mod:`kdbench.sweep`), which is checked as the budget of a run whose teacher kdbench trains.
    """
    check_finite(spec)
    present = {f.name: getattr(spec, f.name) for f in dataclasses.fields(RunSpec) if hasattr(spec, f.name)}
    check_ranges(RunSpec, present, label=lambda name: name.replace("_", " "))  # the ranges its fields declare
    trains_teacher = getattr(spec, "teacher_source", "trained") == "trained"
    checks = [
        (spec.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)} (got {spec.schedule!r})"),
        (spec.schedule != "multistep" or bool(spec.milestones), "the multistep schedule needs milestones"),
        (spec.warmup_epochs < spec.epochs or spec.warmup_epochs == 0,
         f"warmup epochs must be in [0, epochs) (got {spec.warmup_epochs})"),
        (spec.teacher_epochs > 0 or not trains_teacher,
         f"teacher epochs must be > 0 (got {spec.teacher_epochs})"),
        (spec.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {spec.optimizer!r})"),
        (len(spec.betas) == 2, f"betas must be two numbers in [0, 1) (got {list(spec.betas)})"),
        (spec.eval_split in EVAL_SPLITS,
         f"eval split must be one of {', '.join(EVAL_SPLITS)} (got {spec.eval_split!r})"),
        (spec.eval_split != "val" or spec.val_fraction > 0,
         "eval split 'val' needs a validation split (val fraction > 0)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def validate_identity(spec: RunSpec) -> None:
    """Check the fields that say which run a spec is (its teacher); raise a one-line :class:`ConfigError`."""
    checks = [
        (spec.teacher_source in TEACHER_SOURCES, f"unknown teacher source {spec.teacher_source!r}"),
        (spec.teacher is not None or spec.teacher_source in ("none", "self"),
         f"method {spec.method!r} needs a teacher; pass --teacher MODEL"),
        (spec.teacher_source != "checkpoint" or bool(spec.teacher_ckpt_sha256),
         "a checkpoint teacher needs its checkpoint's sha256"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def check_finite(spec: Any) -> None:
    """Every float of ``spec`` (its settings and its method's hyperparameters) must be finite: no NaN, no inf.

    Raises:
        ConfigError: the first non-finite value, named as the user wrote it (``lr``, ``kd.temperature``).
    """
    named: list[tuple[str, Any]] = [(f.name, getattr(spec, f.name)) for f in dataclasses.fields(spec)
                                    if f.name not in ("method_params", "data_options")]
    named += [(f"{spec.method}.{k}", v) for k, v in getattr(spec, "method_params", {}).items()]
    named += [(f"data option {k}", v) for k, v in spec.data_options.items()]
    for name, value in named:
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{name} must be a finite number (got {value!r})")


NOT_HASHED = ("teacher_ckpt",)

#: Data options that set how fast the data loads, never what it is (the loader's worker processes and read-ahead):
#: kept in the record, left out of the run id and the cohort key, so a store resumes with any values of them.
LOADER_OPTIONS = frozenset({"workers", "prefetch"})


def identity_data_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The data options that identify the data (all but :data:`LOADER_OPTIONS`)."""
    return {k: v for k, v in options.items() if k not in LOADER_OPTIONS}


def spec_hash(spec: RunSpec) -> str:
    """SHA-256 of the spec's canonical JSON (normalised; the checkpoint path and the loader options left out)."""
    data = {k: v for k, v in spec.as_dict().items() if k not in NOT_HASHED}
    data["data_options"] = identity_data_options(data["data_options"])
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cohort_key(spec: RunSpec) -> tuple[Any, ...]:
    """What runs must share to train together on one data stream and one teacher pass.

    The data stream is fixed by the dataset, its options, the seed, batch size and epochs; the teacher by its
    name, source and budget. Students, methods and optimiser settings may differ within a cohort.
    """
    teacher = None
    if spec.teacher_source in ("trained", "checkpoint", "pretrained"):
        teacher = (spec.teacher, spec.teacher_source, spec.teacher_ckpt_sha256, spec.teacher_epochs,
                   spec.teacher_seed, spec.teacher_lr, spec.optimizer, spec.betas, spec.momentum,
                   spec.weight_decay if spec.teacher_weight_decay is None else spec.teacher_weight_decay,
                   spec.schedule, spec.milestones,
                   spec.lr_decay, spec.warmup_epochs)
    options = json.dumps(identity_data_options(spec.data_options), sort_keys=True)
    data = (spec.dataset, spec.val_fraction, spec.image_size, options, spec.seed, spec.batch_size, spec.epochs,
            spec.amp, spec.channels_last)
    return data, teacher


# ---------------------------------------------------------------------------------------------------------------
# Typed values for --set overrides and sweep grids


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a string from the command line, or YAML data) to the annotated type ``tp``.

    Supports ``bool``, ``int``, ``float``, ``str``, ``X | None``, ``Literal[...]`` and ``tuple[X, ...]``
    (from a list or a comma-separated string).

    Raises:
        ConfigError: the value does not fit the type; the message names ``where`` and the expected type.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        for option in args:
            if value == option or (isinstance(value, str) and str(option) == value):
                return option
        raise ConfigError(f"{where} must be one of {', '.join(repr(a) for a in args)} (got {value!r})")
    if origin is tuple:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where} must be a list (got {value!r})")
        item_type = args[0] if args else str
        return tuple(coerce_value(v.strip() if isinstance(v, str) else v, item_type, where) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer (got {value!r})")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer (got {value!r})")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{where} must be a number (got {value!r})")
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number (got {value!r})")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string (got {value!r})")
    raise ConfigError(f"{where}: unsupported parameter type {_type_name(tp)}")


def dataclass_field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a dataclass that has one (default factories are called).

    The command line and the sweep spec read their defaults here, so that the dataclass is their one source.
    """
    out: dict[str, Any] = {}
    for spec_field in dataclasses.fields(cls):
        if spec_field.default is not dataclasses.MISSING:
            out[spec_field.name] = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            out[spec_field.name] = spec_field.default_factory()
    return out


def build_params(params_cls: type, overrides: Mapping[str, Any], owner: str) -> Any:
    """Instantiate a method's frozen ``Params`` dataclass from defaults plus type-checked ``overrides``.

    Args:
        params_cls: the method's ``Params`` dataclass.
        overrides: parameter name -> value (strings are parsed to the field's type).
        owner: the method name, for error messages.

    Raises:
        ConfigError: an unknown parameter (with close matches), a value of the wrong type, or one outside the range
            its field declares (:func:`valid`): ``kd.kd_weight must be >= 0 (got -1.0)``.
    """
    types_by_name = dataclass_field_types(params_cls)
    values = {}
    for name, raw in overrides.items():
        if name not in types_by_name:
            import difflib

            close = difflib.get_close_matches(name, list(types_by_name), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(types_by_name) or 'none'}"
            raise ConfigError(f"method {owner!r} has no parameter {name!r}; {hint}")
        values[name] = coerce_value(raw, types_by_name[name], f"{owner}.{name}")
    check_ranges(params_cls, values, owner)
    try:
        return params_cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid parameters for {owner!r}: {err}") from None


def params_dict(params: Any) -> dict[str, Any]:
    """A method's ``Params`` instance as plain data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(params)))


def method_label(method: str, params: Any, params_cls: type) -> str:
    """``kd`` when every parameter has its default, else ``kd(temperature=2)`` listing what differs."""
    defaults = params_dict(params_cls())
    current = params_dict(params)
    changed = [f"{k}={_short(current[k])}" for k in current if current[k] != defaults.get(k)]
    return f"{method}({','.join(changed)})" if changed else method


def _short(value: Any) -> str:
    """Compact text of a parameter value: ``2`` rather than ``2.0``, ``[1,2]`` for lists."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


def parse_set_overrides(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """Parse ``--set METHOD.PARAM=VALUE`` strings into ``{method: {param: value}}``.

    Raises:
        ConfigError: an item that is not of the form ``METHOD.PARAM=VALUE``.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, param = key.strip().partition(".")
        if not sep or not dot or not method or not param:
            raise ConfigError(f"--set expects METHOD.PARAM=VALUE, e.g. --set kd.temperature=2 (got {item!r})")
        out.setdefault(method, {})[param] = value.strip()
    return out
