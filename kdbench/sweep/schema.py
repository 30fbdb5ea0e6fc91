"""The sweep spec's schema: its keys are the fields of typed dataclasses, each with its type, default and checks.

A field declares what a spec may say about it: its type and default (the dataclass's own), its range
(:func:`kdbench.config.valid`) and, through :func:`spec_key`, a hint for a missing required key, whether it names a
path (relative paths start in the spec's folder) and a check of its value. A dataclass's ``problems()`` checks what
lies between its fields. :mod:`kdbench.sweep.checking` reads any of them the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.config import (
    RunSpec,
    check_seed,
    dataclass_defaults,
    dataclass_field_types,
    field_bounds,
    valid,
    validate_budget,
)
from kdbench.data import DATASETS
from kdbench.errors import ConfigError, KDBenchError
from kdbench.models import check_model_name
from kdbench.options import SAVE_STUDENTS, ExecOptions, Resources
from kdbench.teachers import read_state_dict

#: checks one value of a key: ``(where, value) -> one-line problem or None`` (``where`` names the key)
ValueCheck = Callable[[str, Any], str | None]


class SpecError(ConfigError):
    """A sweep spec with one or more problems; each is one line of :attr:`lines`.

    Args:
        source: the spec as the user named it (a path or a shipped config's name).
        problems: one message per problem, without the source.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(dict.fromkeys(problems))  # the same message twice is one problem
        super().__init__(self.lines[0] if self.problems else f"{source}: invalid sweep spec")

    @property
    def lines(self) -> list[str]:
        """``<source>: <problem>`` for every problem."""
        return [f"{self.source}: {problem}" for problem in self.problems]

    def __str__(self) -> str:
        more = len(self.problems) - 1
        return self.lines[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else "")


# ---------------------------------------------------------------------------------------------------------------
# What a field declares


def spec_key(*, hint: str = "", path: bool = False, check: ValueCheck | None = None) -> dict[str, Any]:
    """Field metadata of a spec key, beside its type, default and :func:`~kdbench.config.valid` range.

    Use it as ``dataset: str = field(metadata=spec_key(hint="e.g. digits", check=registered_dataset))``.

    Args:
        hint: what to write, for a required key (a field without a default) the spec leaves out.
        path: the value is a path, or a list of them; relative ones start in the spec's folder.
        check: checks a value of the right type (a path already made absolute).
    """
    return {"spec_hint": hint, "spec_path": path, "spec_check": check}


def is_required(spec_field: dataclasses.Field) -> bool:
    """Whether a spec must give the key: its field has no default."""
    return spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING


def key_hint(spec_field: dataclasses.Field) -> str:
    """The :func:`spec_key` hint of a field (``""`` if none)."""
    return spec_field.metadata.get("spec_hint", "")


def is_path_key(spec_field: dataclasses.Field) -> bool:
    """Whether a field's value is a path (or a list of them) that starts in the spec's folder when relative."""
    return bool(spec_field.metadata.get("spec_path"))


def value_problems(spec_field: dataclasses.Field, where: str, value: Any) -> list[str]:
    """The problems of one value of the right type: outside the field's range, or refused by its check."""
    bounds = field_bounds(spec_field)
    check = spec_field.metadata.get("spec_check")
    found = [bounds.problem(where, value) if bounds is not None else None, check(where, value) if check else None]
    return [problem for problem in found if problem]


def field_problems(instance: Any) -> list[str]:
    """One line per field of a schema dataclass whose value is out of its range or refused by its check."""
    return [problem for spec_field in dataclasses.fields(instance)
            for problem in value_problems(spec_field, spec_field.name, getattr(instance, spec_field.name))]


def registered_dataset(where: str, name: str) -> str | None:
    """Why ``name`` is not a registered dataset (``None`` if it is)."""
    try:
        DATASETS.get(name)
    except KDBenchError as err:
        return f"{where}: {err}"
    return None


def known_model(where: str, name: str | None) -> str | None:
    """Why ``name`` is not a timm (or kdbench zoo) model (``None`` if it is, or if no model is named)."""
    if name is None:
        return None
    try:
        check_model_name(name)
    except KDBenchError as err:
        return f"{where}: {err}"
    return None


def readable_checkpoint(where: str, path: str | None) -> str | None:
    """Why ``path`` is not a readable teacher checkpoint (``None`` if it is, or if none is named)."""
    if path is None:
        return None
    if not Path(path).is_file():
        return f"{where}: teacher checkpoint not found: {path}"
    try:
        read_state_dict(Path(path))
    except KDBenchError as err:
        return f"{where}: {err}"
    return None


def one_of(choices: Sequence[str]) -> ValueCheck:
    """A check that a value is one of ``choices``."""

    def check(where: str, value: Any) -> str | None:
        return None if value in choices else f"{where} must be one of {', '.join(choices)} (got {value!r})"

    return check


def seed_list(where: str, seeds: Sequence[int]) -> str | None:
    """Why ``seeds`` is not a list of different seeds, each a run's seed (``None`` if it is)."""
    if not seeds:
        return f"{where} must list at least one seed, e.g. {where}: [0, 1, 2]"
    if len(set(seeds)) != len(seeds):
        return f"{where} lists a seed twice: {list(seeds)}"
    try:
        for seed in seeds:
            check_seed(seed, where)
    except ConfigError as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------------------------------------------
# The keys


@dataclass(frozen=True, kw_only=True)
class PairEntry:
    """One teacher/student pair of a sweep, with the budget keys it overrides for its runs.

    Attributes:
        teacher: teacher model name; ``None`` for a pair that only runs teacher-free methods.
        student: student model name.
        teacher_ckpt: absolute path of a checkpoint the teacher is loaded from, instead of being trained.
        teacher_pretrained: take the teacher from timm's pretrained weights.
        budget: budget keys this pair sets differently from the top level (e.g. ``{"lr": 0.01}``).
        method_params: method -> {parameter: value} this pair sets for its runs of that method, over the
            spec's grid (e.g. DKD's per-pair beta: ``{"dkd": {"beta": 2}}``).
    """

    teacher: str | None = field(default=None, metadata=spec_key(check=known_model))
    student: str = field(metadata=spec_key(check=known_model))
    teacher_ckpt: str | None = field(default=None, metadata=spec_key(path=True, check=readable_checkpoint))
    teacher_pretrained: bool = False
    budget: Mapping[str, Any] = field(default_factory=dict)
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``teacher -> student``."""
        return f"{self.teacher or 'none'} -> {self.student}"

    def problems(self) -> list[str]:
        """One line per problem between the pair's keys."""
        if self.teacher_ckpt is not None and self.teacher is None:
            return ["teacher_ckpt: a checkpoint needs the teacher's model name (teacher: MODEL)"]
        return []


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep spec; :func:`kdbench.sweep.expand_sweep` expands it into runs.

    Attributes:
        source: the spec as the user named it, for messages.
        dataset: registered dataset name.
        pairs: the teacher/student pairs.
        methods: ``(method, grid)`` entries; a grid maps a parameter to its values (one value or a list of them).
        seeds: the student seeds.
        budget: every budget key, with the defaults of ``kdbench run`` where the spec says nothing.
        plugins: absolute paths of method plugin files, loaded before the methods are looked up (and in workers).
        execution: the execution keys the spec sets (``device``, ``cohort``, ``num_gpus``, ...).
    """

    source: str
    dataset: str
    pairs: tuple[PairEntry, ...]
    methods: tuple[tuple[str, Mapping[str, Any]], ...]
    seeds: tuple[int, ...]
    budget: Mapping[str, Any]
    plugins: tuple[str, ...] = ()
    execution: Mapping[str, Any] = field(default_factory=dict)

    def pair_budget(self, pair: PairEntry) -> dict[str, Any]:
        """The budget of ``pair``'s runs: the top level's, with the pair's own keys on top."""
        return {**self.budget, **pair.budget}


#: RunSpec fields that say which run it is (or follow from it) rather than how it trains; a spec sets them through
#: ``dataset``, ``pairs``, ``methods`` and ``seeds``
RUN_IDENTITY = ("dataset", "student", "method", "teacher", "method_params", "seed", "teacher_source",
                "teacher_ckpt_sha256", "teacher_ckpt", "data_fingerprint", "method_version", "protocol_version")


def _budget_field(spec_field: dataclasses.Field) -> Any:
    if spec_field.default_factory is not dataclasses.MISSING:
        return field(default_factory=spec_field.default_factory)
    return field(default=spec_field.default)


def _budget_problems(self: Any) -> list[str]:
    """The first problem of the budget's numbers (:func:`kdbench.config.validate_budget`), or none."""
    try:
        validate_budget(self)
    except ConfigError as err:
        return [str(err)]
    return []


#: The training budget of a run: every :class:`RunSpec` field outside :data:`RUN_IDENTITY`, with its type and
#: default. Set at the top level of a spec for every run; a pair may override any of it for its runs. Its ranges
#: are RunSpec's, checked by :func:`kdbench.config.validate_budget` (its ``problems()``).
RunBudget = dataclasses.make_dataclass(
    "RunBudget",
    [(f.name, dataclass_field_types(RunSpec)[f.name], _budget_field(f))
     for f in dataclasses.fields(RunSpec) if f.name not in RUN_IDENTITY],
    frozen=True, namespace={"problems": _budget_problems, "__module__": __name__,
                            "__doc__": "The training budget of a run: RunSpec's fields that are not its identity."},
)

_EXEC_DEFAULTS = {**dataclass_defaults(ExecOptions), **dataclass_defaults(Resources)}


@dataclass(frozen=True)
class ExecutionSettings:
    """Where and how a sweep's runs execute; they change no run id. Defaults: the execution options' and the job's.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: root folder of file-based datasets (else ``$KDBENCH_DATA``).
        download: download CIFAR when missing.
        cohort: train runs that share a teacher together.
        max_cohort: the most runs in one cohort.
        num_cpus: CPUs per Ray task.
        num_gpus: GPUs per Ray task.
        compile: ``torch.compile`` the training forward passes (recorded, not part of the run id).
        save_students: which trained students each run keeps beside its record (``none``, ``last``, ``best``,
            ``both``; see :mod:`kdbench.artifacts`).
        checkpoint_every: write each run's checkpoint every this many epochs (0: not at epoch ends).
        checkpoint_minutes: also write one between steps every this many minutes (long epochs).
        keep_checkpoints: keep a run's checkpoint after its record is written.
    """

    device: str = _EXEC_DEFAULTS["device"]
    data_root: str | None = field(default=_EXEC_DEFAULTS["data_root"], metadata=spec_key(path=True))
    download: bool = _EXEC_DEFAULTS["download"]
    cohort: bool = _EXEC_DEFAULTS["cohort"]
    max_cohort: int = field(default=_EXEC_DEFAULTS["max_cohort"], metadata=valid(ge=1))
    num_cpus: float = field(default=_EXEC_DEFAULTS["num_cpus"], metadata=valid(gt=0))
    num_gpus: float = field(default=_EXEC_DEFAULTS["num_gpus"], metadata=valid(ge=0))
    compile: bool = _EXEC_DEFAULTS["compile"]
    save_students: str = field(default=_EXEC_DEFAULTS["save_students"], metadata=spec_key(check=one_of(SAVE_STUDENTS)))
    checkpoint_every: int = field(default=_EXEC_DEFAULTS["checkpoint_every"], metadata=valid(ge=0))
    checkpoint_minutes: float | None = field(default=_EXEC_DEFAULTS["checkpoint_minutes"], metadata=valid(gt=0))
    keep_checkpoints: bool = _EXEC_DEFAULTS["keep_checkpoints"]

    def problems(self) -> list[str]:
        """One line per setting out of its range."""
        return field_problems(self)


@dataclass(frozen=True)
class SweepKeys:
    """The keys that say what a sweep runs (besides the pair keys, which the top level may give for one pair).

    Attributes:
        dataset: registered dataset name.
        pairs: the pair entries (each a mapping of :data:`PAIR_KEYS` and budget keys); a spec without them gives
            one pair's keys at the top level.
        methods: method names, or names mapped to parameter grids.
        seeds: the student seeds (each in a run seed's range, :func:`kdbench.config.check_seed`).
        plugins: method plugin files (relative paths start in the spec's folder).
        tune: read by ``kdbench tune`` (see :mod:`kdbench.tune`); ``kdbench sweep`` trains the default configurations.
    """

    dataset: str = field(metadata=spec_key(hint="a registered dataset, e.g. digits; see `kdbench list datasets`",
                                           check=registered_dataset))
    methods: list | dict = field(metadata=spec_key(hint="e.g. methods: [ce, kd]; see `kdbench list methods`"))
    pairs: list = field(default_factory=list, metadata=spec_key(
        hint="e.g. pairs: [{teacher: resnet18, student: mobilenetv3_small_050}]"))
    seeds: tuple[int, ...] = field(default=(dataclass_defaults(RunSpec)["seed"],), metadata=spec_key(check=seed_list))
    plugins: tuple[str, ...] = field(default=(), metadata=spec_key(path=True))
    tune: dict = field(default_factory=dict)


def schema_types(cls: type, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The keys a schema dataclass declares, with their types."""
    return {name: tp for name, tp in dataclass_field_types(cls).items() if name not in leave_out}


#: the training-budget keys
BUDGET_KEYS: tuple[str, ...] = tuple(schema_types(RunBudget))
#: keys of a pair entry besides the budget keys
PAIR_KEYS: dict[str, Any] = schema_types(PairEntry, leave_out=("budget", "method_params"))
#: keys that say where and how runs execute
EXECUTION_KEYS: dict[str, Any] = schema_types(ExecutionSettings)
#: the other top-level keys (``teacher``, ``student`` and ``teacher_ckpt`` there are a one-pair shorthand)
SWEEP_KEYS: dict[str, Any] = {**schema_types(SweepKeys), **PAIR_KEYS}
#: the defaults of the execution keys
EXECUTION_DEFAULTS: dict[str, Any] = dataclass_defaults(ExecutionSettings)
