"""Leaderboard sweeps: a YAML spec of pairs x methods x parameter grids x seeds, checked, expanded and executed.

A sweep spec is plain data read with ``yaml.safe_load``. Its keys are those of ``kdbench run`` (with underscores),
so a spec and a command line say the same thing and share one results store: a run of the sweep and the same run
asked for by ``kdbench run`` have the same run id, and neither trains it twice. A minimal spec::

    dataset: digits
    epochs: 1
    teacher_epochs: 1
    pairs:
      - {teacher: resnet18, student: mobilenetv3_small_050}
    methods: [ce, kd]
    seeds: [0, 1]

``methods`` may instead map each method to a parameter grid (``{kd: {temperature: [2, 4, 8]}, at: {}}``), and a
pair entry may override any training-budget key for its runs (``lr: 0.01``). Every problem of a spec is reported,
one line each, before anything is written; ``configs/README.md`` describes every key.

The keys, their types and their defaults are the fields of typed dataclasses: :data:`RunBudget` (derived from
:class:`~kdbench.config.RunSpec`: every field that is not the run's identity), :class:`PairEntry`,
:class:`ExecutionSettings` and :class:`SweepKeys`. One checker reads any of them (:meth:`_SpecChecker.section`) and
their own validation says what is out of range, so a field added to ``RunSpec`` is a sweep key at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdbench.config import (
    RunSpec,
    build_params,
    coerce_value,
    dataclass_defaults,
    dataclass_field_types,
    validate_budget,
)
from kdbench.data import DATASETS, DataConfig, describe_dataset
from kdbench.distiller import discover_methods, get_method, load_plugin_file
from kdbench.errors import ConfigError, KDBenchError, ModelError
from kdbench.models import check_model_name, create_model
from kdbench.options import ExecOptions, Resources
from kdbench.plan import expand
from kdbench.teachers import read_state_dict

#: where ``kdbench sweep NAME`` finds the shipped specs
PACKAGED_CONFIGS = ("resources", "configs")


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


@dataclass(frozen=True)
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

    teacher: str | None
    student: str
    teacher_ckpt: str | None = None
    teacher_pretrained: bool = False
    budget: Mapping[str, Any] = field(default_factory=dict)
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``teacher -> student``."""
        return f"{self.teacher or 'none'} -> {self.student}"


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep spec; :meth:`run_specs` expands it.

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

    def run_specs(self) -> list[RunSpec]:
        """The sweep's runs; see :func:`expand_sweep`."""
        return expand_sweep(self)


# ---------------------------------------------------------------------------------------------------------------
# The schema: a spec's keys are the fields of typed dataclasses; their types and defaults are the fields' own

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
#: default. Set at the top level of a spec for every run; a pair may override any of it for its runs.
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
    """

    device: str = _EXEC_DEFAULTS["device"]
    data_root: str | None = _EXEC_DEFAULTS["data_root"]
    download: bool = _EXEC_DEFAULTS["download"]
    cohort: bool = _EXEC_DEFAULTS["cohort"]
    max_cohort: int = _EXEC_DEFAULTS["max_cohort"]
    num_cpus: float = _EXEC_DEFAULTS["num_cpus"]
    num_gpus: float = _EXEC_DEFAULTS["num_gpus"]
    compile: bool = _EXEC_DEFAULTS["compile"]

    def problems(self) -> list[str]:
        """One line per setting out of range."""
        checks = [(self.max_cohort >= 1, f"max_cohort must be >= 1 (got {self.max_cohort})"),
                  (self.num_cpus > 0, f"num_cpus must be > 0 (got {self.num_cpus:g})"),
                  (self.num_gpus >= 0, f"num_gpus must be >= 0 (got {self.num_gpus:g})")]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class SweepKeys:
    """The keys that say what a sweep runs (besides the pair keys, which the top level may give for one pair).

    Attributes:
        dataset: registered dataset name.
        pairs: the pair entries (each a mapping of :data:`PAIR_KEYS` and budget keys).
        methods: method names, or names mapped to parameter grids.
        seeds: the student seeds.
        plugins: method plugin files (relative paths start in the spec's folder).
        tune: read by ``kdbench tune`` (see :mod:`kdbench.tune`); ``kdbench sweep`` trains the default configurations.
    """

    dataset: str
    pairs: list
    methods: dict
    seeds: tuple[int, ...] = (dataclass_defaults(RunSpec)["seed"],)
    plugins: tuple[str, ...] = ()
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


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking a spec


def packaged_configs() -> dict[str, str]:
    """The shipped sweep specs: name -> first comment line (what the spec is)."""
    folder = resources.files("kdbench").joinpath(*PACKAGED_CONFIGS)
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = next((line for line in entry.read_text(encoding="utf-8").splitlines() if line.strip()), "")
            out[entry.name.removesuffix(".yaml")] = first.lstrip("#").strip()
    return out


def _read_spec_text(name: str) -> tuple[str, Path]:
    """The text of spec ``name`` (a file, else a shipped config's name) and the folder its relative paths start in.

    Raises:
        ConfigError: neither a readable file nor a shipped config.
    """
    path = Path(name).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), path.resolve().parent
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read sweep spec {name}: {err}") from None
    shipped = packaged_configs()
    stem = name.removesuffix(".yaml")
    if stem in shipped and "/" not in name:
        entry = resources.files("kdbench").joinpath(*PACKAGED_CONFIGS, f"{stem}.yaml")
        return entry.read_text(encoding="utf-8"), Path.cwd()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise ConfigError(f"sweep spec {name} is a folder, not a file; name a spec file{hint}")
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = (f"; did you mean the shipped spec {close[0]!r}?" if close
            else f"; shipped specs: {', '.join(shipped)}" if shipped else "")
    raise ConfigError(f"sweep spec not found: {name}{hint}")


def load_sweep_spec(name: str | Path, extra_plugins: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep spec file (or a shipped spec by name, e.g. ``quickstart``).

    Relative paths in the spec (``teacher_ckpt``, ``data_root``, ``plugins``) start in the spec file's folder.

    Args:
        name: path of a YAML file, or the name of a shipped spec (see ``kdbench sweep --list-configs``).
        extra_plugins: method plugin files to load besides the spec's ``plugins`` (paths from the working folder).

    Raises:
        SpecError: every problem of the spec, one line each.
        ConfigError: the file cannot be found or read.
    """
    data, base_dir = read_spec_data(name)
    plugins = [str(Path(p).expanduser().resolve()) for p in extra_plugins]
    return parse_sweep_spec(data, source=str(name), base_dir=base_dir, extra_plugins=plugins)


def read_spec_data(name: str | Path) -> tuple[Any, Path]:
    """The YAML document of spec ``name`` (a file, else a shipped config's name) and the folder of its paths.

    Raises:
        SpecError: the text is not valid YAML (with its line and column).
        ConfigError: the file cannot be found or read.
    """
    text, base_dir = _read_spec_text(str(name))
    try:
        return yaml.safe_load(text), base_dir
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(str(name), [f"not valid YAML{where}: {problem}"]) from None


def parse_sweep_spec(data: Any, source: str = "spec", base_dir: Path | None = None,
                     extra_plugins: Sequence[str] = ()) -> SweepSpec:
    """Check sweep-spec data (as loaded from YAML) and return the spec, or raise every problem at once.

    Loads the spec's plugins (they register methods) before looking the methods up.

    Args:
        data: the loaded YAML document.
        source: how messages name the spec.
        base_dir: where relative paths start (default: the working folder).
        extra_plugins: more plugin files (absolute paths).

    Raises:
        SpecError: one line per problem: unknown keys, wrong types, unknown dataset, model or method names, bad
            parameter names or values, bad budgets, missing or unreadable checkpoints.
    """
    checker = _SpecChecker(source, base_dir or Path.cwd())
    spec = checker.check(data, extra_plugins)
    if checker.problems or spec is None:
        raise SpecError(source, checker.problems)
    return spec


def _is_tuple_type(tp: Any) -> bool:
    """Whether ``tp`` is ``tuple[...]`` or an optional one."""
    if typing.get_origin(tp) is tuple:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_tuple_type(arg) for arg in typing.get_args(tp))
    return False


def _type_text(tp: Any) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "a list",
             dict: "a mapping"}
    return names.get(tp, str(tp).replace("typing.", ""))


class _SpecChecker:
    """Walks a loaded spec, collecting every problem as one line."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    # -- helpers -------------------------------------------------------------------------------------------------

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def unknown_keys(self, mapping: Mapping[Any, Any], allowed: Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
                self.problem(f"{where}unknown key {key!r}{hint}")

    def value(self, raw: Any, tp: Any, where: str) -> tuple[bool, Any]:
        """``(True, coerced value)`` or ``(False, None)`` after recording the problem."""
        try:
            if tp is list:
                if not isinstance(raw, list):
                    raise ConfigError(f"{where} must be a list (got {raw!r})")
                return True, raw
            if (isinstance(tp, type) and issubclass(tp, Mapping)) or typing.get_origin(tp) in (Mapping, dict):
                if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
                    raise ConfigError(f"{where} must be a mapping of names to values (got {raw!r})")
                return True, dict(raw)
            if _is_tuple_type(tp) and not isinstance(raw, list | tuple | str) and raw is not None:
                raw = [raw]  # one seed, one milestone, one plugin
            if tp in (str, str | None) and isinstance(raw, int | float) and not isinstance(raw, bool):
                raise ConfigError(f"{where} must be {_type_text(str)} (got {raw!r})")
            return True, coerce_value(raw, tp, where)
        except ConfigError as err:
            self.problem(str(err))
            return False, None

    def path(self, raw: str) -> str:
        """``raw`` as an absolute path, relative ones starting in the spec's folder."""
        path = Path(raw).expanduser()
        return str(path if path.is_absolute() else (self.base_dir / path).resolve())

    def section(self, mapping: Mapping[str, Any], schema: type, where: str) -> dict[str, Any]:
        """The keys of ``mapping`` that schema dataclass ``schema`` declares, each coerced to its field's type.

        ``where`` prefixes the key in messages (``pairs[0].``); a value of the wrong type is a problem and left out.
        """
        out = {}
        for key, tp in schema_types(schema).items():
            if key in mapping:
                ok, value = self.value(mapping[key], tp, f"{where}{key}")
                if ok:
                    out[key] = value
        return out

    def settle(self, schema: type, values: Mapping[str, Any], where: str) -> bool:
        """Build ``schema`` from ``values`` (its defaults where they say nothing) and record its problems.

        Returns:
            whether there were none.
        """
        problems = schema(**values).problems()
        for message in problems:
            self.problem(f"{where}{message}")
        return not problems

    # -- the spec ------------------------------------------------------------------------------------------------

    def check(self, data: Any, extra_plugins: Sequence[str]) -> SweepSpec | None:
        if data is None:
            self.problem("the spec is empty; it needs at least dataset, pairs and methods")
            return None
        if not isinstance(data, dict):
            self.problem(f"a sweep spec is a mapping of keys to values (got {type(data).__name__})")
            return None
        self.unknown_keys(data, [*SWEEP_KEYS, *BUDGET_KEYS, *EXECUTION_KEYS], "")
        plugins = self.plugins(data, extra_plugins)
        dataset = self.dataset(data)
        budget = {**dataclass_defaults(RunBudget), **self.section(data, RunBudget, "")}
        execution = self.execution(data)
        seeds = self.seeds(data)
        methods = self.methods(data.get("methods"))
        pairs = self.pairs(data)
        if self.settle(RunBudget, budget, ""):
            for number, pair in enumerate(pairs):
                if pair.budget:
                    self.settle(RunBudget, {**budget, **pair.budget}, f"pairs[{number}]: ")
        if dataset is None or self.problems:
            return None
        return SweepSpec(source=self.source, dataset=dataset, pairs=tuple(pairs), methods=tuple(methods),
                         seeds=seeds, budget=budget, plugins=tuple(plugins), execution=execution)

    def plugins(self, data: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
        discover_methods()
        paths = list(extra)
        if "plugins" in data:
            ok, values = self.value(data["plugins"], SWEEP_KEYS["plugins"], "plugins")
            paths += [self.path(v) for v in values] if ok else []
        for path in dict.fromkeys(paths):
            try:
                load_plugin_file(path)
            except KDBenchError as err:
                self.problem(f"plugins: {err}")
        return list(dict.fromkeys(paths))

    def dataset(self, data: Mapping[str, Any]) -> str | None:
        if "dataset" not in data:
            self.problem("missing key 'dataset' (a registered dataset, e.g. digits; see `kdbench list datasets`)")
            return None
        ok, name = self.value(data["dataset"], str, "dataset")
        if not ok:
            return None
        try:
            DATASETS.get(name)
        except KDBenchError as err:
            self.problem(f"dataset: {err}")
            return None
        return name

    def execution(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The execution keys the spec sets (``data_root`` made absolute)."""
        out = self.section(data, ExecutionSettings, "")
        if out.get("data_root") is not None:
            out["data_root"] = self.path(out["data_root"])
        self.settle(ExecutionSettings, out, "")
        return out

    def seeds(self, data: Mapping[str, Any]) -> tuple[int, ...]:
        if "seeds" not in data:
            return dataclass_defaults(SweepKeys)["seeds"]
        ok, seeds = self.value(data["seeds"], SWEEP_KEYS["seeds"], "seeds")
        if not ok:
            return ()
        if not seeds:
            self.problem("seeds must list at least one seed, e.g. seeds: [0, 1, 2]")
        elif len(set(seeds)) != len(seeds):
            self.problem(f"seeds lists a seed twice: {list(seeds)}")
        elif any(seed < 0 for seed in seeds):
            self.problem(f"seeds must be >= 0 (got {list(seeds)})")
        return tuple(seeds)

    def methods(self, raw: Any) -> list[tuple[str, dict[str, Any]]]:
        """``methods: [ce, kd]``, ``methods: {kd: {temperature: [2, 4]}, ce: {}}`` or a list mixing both forms."""
        if raw is None:
            self.problem("missing key 'methods' (e.g. methods: [ce, kd]; see `kdbench list methods`)")
            return []
        entries: list[tuple[str, Any, str]] = []
        if isinstance(raw, dict):
            entries = [(name, grid, f"methods.{name}") for name, grid in raw.items()]
        elif isinstance(raw, list):
            for number, item in enumerate(raw):
                if isinstance(item, str):
                    entries.append((item, None, f"methods[{number}]"))
                elif isinstance(item, dict) and len(item) == 1:
                    (name, grid), = item.items()
                    entries.append((name, grid, f"methods[{number}].{name}"))
                else:
                    self.problem(f"methods[{number}] must be a method name or {{name: {{param: values}}}} "
                                 f"(got {item!r})")
        else:
            self.problem(f"methods must be a list of names or a mapping of names to parameter grids (got {raw!r})")
            return []
        if not raw:
            self.problem("methods is empty; list at least one method, e.g. methods: [ce, kd]")
        return [entry for entry in (self.method(*e) for e in entries) if entry is not None]

    def method(self, name: Any, grid: Any, where: str) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(name, str):
            self.problem(f"{where}: a method name must be a string (got {name!r})")
            return None
        try:
            cls = get_method(name)
        except KDBenchError as err:
            self.problem(f"methods: {err}")
            return None
        if grid is None:
            grid = {}
        if not isinstance(grid, dict):
            self.problem(f"{where} must map parameter names to a value or a list of values (got {grid!r})")
            return None
        param_types = dataclass_field_types(cls.Params)
        normalised: dict[str, Any] = {}
        for param, values in grid.items():
            tp = param_types.get(param)
            if tp is not None and _is_tuple_type(tp) and isinstance(values, list) \
                    and not any(isinstance(v, list) for v in values):
                values = [values]  # a list-valued parameter given one list: one value, not a grid axis
            values = values if isinstance(values, list) else [values]
            if not values:
                self.problem(f"{where}.{param}: an empty list of values gives no runs")
                continue
            before = len(self.problems)
            for value in values:
                try:
                    build_params(cls.Params, {param: value}, name)
                except ConfigError as err:
                    self.problem(str(err))
                    break
            if len(self.problems) == before:
                normalised[param] = values
        return name, normalised

    def pairs(self, data: Mapping[str, Any]) -> list[PairEntry]:
        shorthand = [k for k in PAIR_KEYS if k in data]
        if "pairs" in data:
            if [k for k in shorthand if k != "teacher_pretrained"]:
                self.problem("give either pairs or a top-level teacher/student, not both")
                return []
            ok, items = self.value(data["pairs"], list, "pairs")
            if not ok:
                return []
            if not items:
                self.problem("pairs is empty; list at least one {teacher: MODEL, student: MODEL}")
            defaults = {"teacher_pretrained": False}
            if "teacher_pretrained" in data:
                ok, value = self.value(data["teacher_pretrained"], bool, "teacher_pretrained")
                defaults["teacher_pretrained"] = bool(value) if ok else False
            return [p for p in (self.pair(item, f"pairs[{n}]", defaults) for n, item in enumerate(items)) if p]
        if "student" in data:
            pair = self.pair({k: data[k] for k in shorthand}, "", {})
            return [pair] if pair else []
        self.problem("missing key 'pairs' (e.g. pairs: [{teacher: resnet18, student: mobilenetv3_small_050}])")
        return []

    def pair(self, item: Any, where: str, defaults: Mapping[str, Any]) -> PairEntry | None:
        prefix = f"{where}." if where else ""
        if not isinstance(item, dict):
            self.problem(f"{where} must be a mapping like {{teacher: MODEL, student: MODEL}} (got {item!r})")
            return None
        before = len(self.problems)
        if where:
            self.unknown_keys(item, [*PAIR_KEYS, *BUDGET_KEYS, "method_params"], f"{where}: ")
        if "student" not in item:
            self.problem(f"{where or 'the spec'}: missing key 'student'")
        fields: dict[str, Any] = {"teacher": None, "teacher_ckpt": None, "teacher_pretrained": False, **defaults}
        for key, tp in PAIR_KEYS.items():
            if key in item:
                ok, value = self.value(item[key], tp, f"{prefix}{key}")
                if ok:
                    fields[key] = value
        for key in ("teacher", "student"):
            if fields.get(key) is not None:
                try:
                    check_model_name(fields[key])
                except KDBenchError as err:
                    self.problem(f"{prefix}{key}: {err}")
        if fields["teacher_ckpt"] is not None:
            fields["teacher_ckpt"] = self.checkpoint(fields["teacher_ckpt"], f"{prefix}teacher_ckpt")
            if fields["teacher"] is None:
                self.problem(f"{prefix}teacher_ckpt: a checkpoint needs the teacher's model name (teacher: MODEL)")
        budget = self.section(item, RunBudget, prefix) if where else {}
        method_params = self.pair_method_params(item["method_params"], f"{prefix}method_params") \
            if where and "method_params" in item else {}
        if len(self.problems) > before:
            return None
        return PairEntry(teacher=fields["teacher"], student=fields["student"], teacher_ckpt=fields["teacher_ckpt"],
                         teacher_pretrained=bool(fields["teacher_pretrained"]), budget=budget,
                         method_params=method_params)

    def pair_method_params(self, raw: Any, where: str) -> dict[str, dict[str, Any]]:
        """A pair's ``method_params``: method -> {parameter: one value}, checked like the spec's methods."""
        if not isinstance(raw, dict):
            self.problem(f"{where} must map method names to {{parameter: value}} (got {raw!r})")
            return {}
        out: dict[str, dict[str, Any]] = {}
        for name, params in raw.items():
            checked = self.method(name, params, f"{where}.{name}")
            if checked is None:
                continue
            many = [param for param, values in checked[1].items() if len(values) != 1]
            if many:
                self.problem(f"{where}.{name}: a pair sets one value per parameter ({', '.join(many)} has several)")
                continue
            out[name] = {param: values[0] for param, values in checked[1].items()}
        return out

    def checkpoint(self, raw: str, where: str) -> str:
        """The checkpoint's absolute path, after checking it exists and holds a readable state dict."""
        path = self.path(raw)
        if not Path(path).is_file():
            self.problem(f"{where}: teacher checkpoint not found: {raw}")
            return path
        try:
            read_state_dict(Path(path))
        except KDBenchError as err:
            self.problem(f"{where}: {err}")
        return path


# ---------------------------------------------------------------------------------------------------------------
# Expansion


def expand_sweep(spec: SweepSpec, data_root: str | None = None) -> list[RunSpec]:
    """Pairs x methods x parameter grid x seeds as run specs, de-duplicated by run id, in a stable order.

    The run ids are those ``kdbench run`` gives the same runs: a teacher-free method (``ce``) gets one run per
    student and budget, shared by every pair with that student. A dataset read from disk is fingerprinted under
    ``data_root`` (default: the spec's ``data_root``, else ``$KDBENCH_DATA``).

    Raises:
        SpecError: combinations that cannot be run (a method needing a teacher on a teacher-less pair, parameter
            values a method rejects together), one line each.
    """
    specs: dict[str, RunSpec] = {}
    problems: list[str] = []
    swept = {method for method, _ in spec.methods}
    for number, pair in enumerate(spec.pairs):
        ckpts = {pair.teacher: pair.teacher_ckpt} if pair.teacher and pair.teacher_ckpt else None
        problems += [f"pairs[{number}] ({pair.label}): method_params names {name!r}, which is not among the "
                     f"sweep's methods" for name in pair.method_params if name not in swept]
        for method, grid in spec.methods:
            grid = {**grid, **{param: [value] for param, value in pair.method_params.get(method, {}).items()}}
            try:
                expanded = expand(dataset=spec.dataset, pairs=[(pair.teacher, pair.student)], methods={method: grid},
                                  seeds=list(spec.seeds), grid=True, teacher_ckpts=ckpts,
                                  teacher_pretrained=pair.teacher_pretrained,
                                  data_root=data_root or spec.execution.get("data_root"), **spec.pair_budget(pair))
            except KDBenchError as err:
                problems.append(f"pairs[{number}] ({pair.label}), method {method}: {err}")
                continue
            for run in expanded:
                specs.setdefault(run.run_id, run)
    if problems:
        raise SpecError(spec.source, problems)
    return list(specs.values())


def check_sweep_data(spec: SweepSpec, data_root: str | None, download: bool) -> None:
    """Check the dataset and the models: each data setting is readable, and each pair's models can process it.

    The dataset must be found (and read) under every data setting the sweep uses, and every model of every pair
    must be built for, and run on, that data's input (channels and image size). Only the models the runs use are
    checked: a pair's teacher only when one of the methods needs a teacher.

    Raises:
        SpecError: one line per data setting that fails, then one per pair whose model cannot process its input.
    """
    settings: dict[str, tuple[DataConfig, list[tuple[int, PairEntry]]]] = {}
    for number, pair in enumerate(spec.pairs):
        budget = spec.pair_budget(pair)
        config = DataConfig(name=spec.dataset, root=data_root, download=download, val_fraction=budget["val_fraction"],
                            image_size=budget["image_size"], options=dict(budget["data_options"]))
        settings.setdefault(repr(config), (config, []))[1].append((number, pair))
    uses_teacher = any(get_method(method).needs_teacher for method, _ in spec.methods)
    problems = []
    checked: dict[tuple[str, int, int, int], str | None] = {}
    for config, pairs in settings.values():
        try:
            info = describe_dataset(config)
        except KDBenchError as err:
            problems.append(f"dataset: {err}")
            continue
        for number, pair in pairs:
            for role, model in (("teacher", pair.teacher if uses_teacher else None), ("student", pair.student)):
                if model is None:
                    continue
                key = (model, info.in_chans, info.image_size, info.num_classes)
                if key not in checked:
                    checked[key] = _input_problem(model, info.in_chans, info.image_size, info.num_classes)
                if checked[key]:
                    problems.append(f"pairs[{number}] ({pair.label}): {role} {checked[key]}")
    if problems:
        raise SpecError(spec.source, problems)


def _input_problem(model: str, in_chans: int, image_size: int, num_classes: int) -> str | None:
    """Why ``model`` cannot be built for, or run on, ``in_chans`` x ``image_size`` inputs; ``None`` if it can."""
    try:
        create_model(model, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    except ModelError as err:
        return str(err)
    return None
