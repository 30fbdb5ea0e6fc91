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
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.config import RunSpec, coerce_value, dataclass_field_types
from kdbench.errors import ConfigError, KDBenchError

if TYPE_CHECKING:
    from kdbench.engine import ExecOptions, Plan

#: RunSpec fields that say which run it is rather than its training budget; a spec sets them through
#: ``dataset``, ``pairs``, ``methods`` and ``seeds``
_RUN_IDENTITY = ("dataset", "student", "method", "teacher", "method_params", "seed", "teacher_source",
                 "teacher_ckpt_sha256", "teacher_ckpt")

#: the training-budget keys: every other RunSpec field. Set at the top level for every run; a pair may override them.
BUDGET_KEYS: tuple[str, ...] = tuple(name for name in dataclass_field_types(RunSpec) if name not in _RUN_IDENTITY)

#: keys of a pair entry besides the budget keys
PAIR_KEYS: dict[str, Any] = {"teacher": str | None, "student": str, "teacher_ckpt": str | None,
                             "teacher_pretrained": bool}

#: keys that say where and how runs execute; they change no run id
EXECUTION_KEYS: dict[str, Any] = {"device": str, "data_root": str | None, "download": bool, "cohort": bool,
                                  "max_cohort": int, "num_cpus": float, "num_gpus": float}

#: the other top-level keys (``teacher``, ``student`` and ``teacher_ckpt`` at the top level are a one-pair shorthand)
SWEEP_KEYS: dict[str, Any] = {"dataset": str, "pairs": list, "methods": dict, "seeds": tuple[int, ...],
                              "plugins": tuple[str, ...], **PAIR_KEYS}

#: where ``kdbench sweep NAME`` finds the shipped specs
PACKAGED_CONFIGS = ("resources", "configs")

#: execution defaults of the keys that ``kdbench run`` has no flag for
_EXECUTION_DEFAULTS = {"num_cpus": 1.0, "num_gpus": 0.0}


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
    """

    teacher: str | None
    student: str
    teacher_ckpt: str | None = None
    teacher_pretrained: bool = False
    budget: Mapping[str, Any] = field(default_factory=dict)

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
# Defaults: those of `kdbench run`, so that a spec and a command line that leave a key out mean the same thing


def run_command_defaults() -> dict[str, Any]:
    """The defaults of ``kdbench run``'s flags, keyed by the spec keys they correspond to."""
    from kdbench.cli import OneLineParser, add_run_parser

    parser = OneLineParser(prog="kdbench")
    add_run_parser(parser.add_subparsers(dest="command"))
    args = vars(parser.parse_args(["run"]))
    fields = {f.name: f for f in dataclasses.fields(RunSpec)}
    defaults: dict[str, Any] = {}
    for key in BUDGET_KEYS:
        if key == "data_options":
            defaults[key] = {}
        elif key in args:
            defaults[key] = tuple(args[key]) if isinstance(args[key], list) else args[key]
        else:  # a RunSpec field `kdbench run` has no flag for
            spec_field = fields[key]
            has_factory = spec_field.default_factory is not dataclasses.MISSING
            defaults[key] = spec_field.default_factory() if has_factory else spec_field.default
    defaults["seeds"] = tuple(args["seeds"])
    defaults["teacher_pretrained"] = bool(args["teacher_pretrained"])
    defaults.update(device=args["device"], data_root=args["data_root"], download=bool(args["download"]),
                    cohort=not args["no_cohort"], max_cohort=args["max_cohort"], **_EXECUTION_DEFAULTS)
    return defaults


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
    import yaml

    text, base_dir = _read_spec_text(str(name))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(str(name), [f"not valid YAML{where}: {problem}"]) from None
    plugins = [str(Path(p).expanduser().resolve()) for p in extra_plugins]
    return parse_sweep_spec(data, source=str(name), base_dir=base_dir, extra_plugins=plugins)


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
        self.defaults = run_command_defaults()
        self.budget_types = {k: t for k, t in dataclass_field_types(RunSpec).items() if k in BUDGET_KEYS}

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

    def budget(self, mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = {}
        for key in BUDGET_KEYS:
            if key in mapping:
                ok, value = self.value(mapping[key], self.budget_types[key], f"{where}{key}")
                if ok:
                    out[key] = value
        return out

    def probe_budget(self, budget: Mapping[str, Any], where: str) -> bool:
        """Check the budget's numbers with RunSpec's own validation; whether they pass."""
        try:
            RunSpec(dataset="probe", student="probe", method="ce", teacher="probe", **budget)
        except (ConfigError, TypeError) as err:
            self.problem(f"{where}{err}")
            return False
        return True

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
        budget = {**{k: self.defaults[k] for k in BUDGET_KEYS}, **self.budget(data, "")}
        execution = self.execution(data)
        seeds = self.seeds(data)
        methods = self.methods(data.get("methods"))
        pairs = self.pairs(data)
        if self.probe_budget(budget, ""):
            for number, pair in enumerate(pairs):
                if pair.budget:
                    self.probe_budget({**budget, **pair.budget}, f"pairs[{number}]: ")
        if dataset is None or self.problems:
            return None
        return SweepSpec(source=self.source, dataset=dataset, pairs=tuple(pairs), methods=tuple(methods),
                         seeds=seeds, budget=budget, plugins=tuple(plugins), execution=execution)

    def plugins(self, data: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
        from kdbench.distiller import discover_methods, load_plugin_file

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
        from kdbench.data import DATASETS

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
        out = {}
        for key, tp in EXECUTION_KEYS.items():
            if key in data:
                ok, value = self.value(data[key], tp, key)
                if not ok:
                    continue
                if key == "data_root" and value is not None:
                    value = self.path(value)
                if key == "max_cohort" and value < 1:
                    self.problem(f"max_cohort must be >= 1 (got {value})")
                elif key in ("num_cpus", "num_gpus") and (value < 0 or (key == "num_cpus" and value == 0)):
                    self.problem(f"{key} must be {'> 0' if key == 'num_cpus' else '>= 0'} (got {value:g})")
                else:
                    out[key] = value
        return out

    def seeds(self, data: Mapping[str, Any]) -> tuple[int, ...]:
        if "seeds" not in data:
            return tuple(self.defaults["seeds"])
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
        from kdbench.config import build_params
        from kdbench.distiller import get_method

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
        from kdbench.models import check_model_name

        prefix = f"{where}." if where else ""
        if not isinstance(item, dict):
            self.problem(f"{where} must be a mapping like {{teacher: MODEL, student: MODEL}} (got {item!r})")
            return None
        before = len(self.problems)
        if where:
            self.unknown_keys(item, [*PAIR_KEYS, *BUDGET_KEYS], f"{where}: ")
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
        budget = self.budget(item, prefix) if where else {}
        if len(self.problems) > before:
            return None
        return PairEntry(teacher=fields["teacher"], student=fields["student"], teacher_ckpt=fields["teacher_ckpt"],
                         teacher_pretrained=bool(fields["teacher_pretrained"]), budget=budget)

    def checkpoint(self, raw: str, where: str) -> str:
        """The checkpoint's absolute path, after checking it exists and holds a readable state dict."""
        from kdbench.teachers import read_state_dict

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


def expand_sweep(spec: SweepSpec) -> list[RunSpec]:
    """Pairs x methods x parameter grid x seeds as run specs, de-duplicated by run id, in a stable order.

    The run ids are those ``kdbench run`` gives the same runs: a teacher-free method (``ce``) gets one run per
    student and budget, shared by every pair with that student.

    Raises:
        SpecError: combinations that cannot be run (a method needing a teacher on a teacher-less pair, parameter
            values a method rejects together), one line each.
    """
    from kdbench.plan import expand

    specs: dict[str, RunSpec] = {}
    problems: list[str] = []
    for number, pair in enumerate(spec.pairs):
        ckpts = {pair.teacher: pair.teacher_ckpt} if pair.teacher and pair.teacher_ckpt else None
        for method, grid in spec.methods:
            try:
                expanded = expand(dataset=spec.dataset, pairs=[(pair.teacher, pair.student)], methods={method: grid},
                                  seeds=list(spec.seeds), grid=True, teacher_ckpts=ckpts,
                                  teacher_pretrained=pair.teacher_pretrained, **spec.pair_budget(pair))
            except KDBenchError as err:
                problems.append(f"pairs[{number}] ({pair.label}), method {method}: {err}")
                continue
            for run in expanded:
                specs.setdefault(run.run_id, run)
    if problems:
        raise SpecError(spec.source, problems)
    return list(specs.values())


def check_sweep_data(spec: SweepSpec, data_root: str | None, download: bool) -> None:
    """Check that the dataset can be found (and read) under every data setting the sweep uses.

    Raises:
        SpecError: one line per data setting that fails.
    """
    from kdbench.data import DataConfig, describe_dataset

    settings = {}
    for pair in spec.pairs:
        budget = spec.pair_budget(pair)
        config = DataConfig(name=spec.dataset, root=data_root, download=download, val_fraction=budget["val_fraction"],
                            image_size=budget["image_size"], options=dict(budget["data_options"]))
        settings.setdefault(repr(config), config)
    problems = []
    for config in settings.values():
        try:
            describe_dataset(config)
        except KDBenchError as err:
            problems.append(f"dataset: {err}")
    if problems:
        raise SpecError(spec.source, problems)


# ---------------------------------------------------------------------------------------------------------------
# The plan, in words


def teacher_status(specs: Sequence[RunSpec], plan: Plan, teacher_dir: Path) -> list[dict[str, Any]]:
    """Every teacher kdbench trains for ``specs``: its key, model, budget, state and how many runs need it.

    ``state`` is ``cached`` (a complete cache entry whose hash matches), ``to train`` (pending runs need it) or
    ``not needed`` (its runs are done).
    """
    from kdbench.teachers import teacher_key

    pending = {s.run_id for s in plan.pending}
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.teacher is None or spec.teacher_source != "trained":
            continue
        key = teacher_key(spec)
        row = rows.setdefault(key, {"key": key, "teacher": spec.teacher, "dataset": spec.dataset,
                                    "epochs": spec.teacher_epochs, "seed": spec.teacher_seed, "runs": 0,
                                    "pending_runs": 0})
        row["runs"] += 1
        row["pending_runs"] += spec.run_id in pending
    for row in rows.values():
        if teacher_cached(teacher_dir, row["key"]):
            row["state"] = "cached"
        else:
            row["state"] = "to train" if row["pending_runs"] else "not needed"
    return list(rows.values())


def teacher_cached(teacher_dir: Path, key: str) -> bool:
    """Whether the teacher cache holds a complete entry for ``key`` whose weights match the recorded hash."""
    from kdbench.teachers import verified_cache_sha256

    return verified_cache_sha256(teacher_dir, key) is not None


def plan_headline(spec: SweepSpec, specs: Sequence[RunSpec], plan: Plan) -> str:
    """One line: how many runs, how many to train, done and failed."""
    text = (f"sweep {spec.source}: {len(specs)} runs: {len(plan.pending)} to train in {len(plan.cohorts)} "
            f"cohort{'s' * (len(plan.cohorts) != 1)}, {len(plan.done)} already done")
    if plan.failed:
        text += f", {len(plan.failed)} failed before (--retry-failed runs them again)"
    return text


def describe_plan(spec: SweepSpec, specs: Sequence[RunSpec], plan: Plan, options: ExecOptions) -> list[str]:
    """The ``--dry-run`` report: the headline, the teachers and every run with its state."""
    lines = [plan_headline(spec, specs, plan)]
    teachers = teacher_status(specs, plan, options.teacher_dir)
    counts = {state: sum(t["state"] == state for t in teachers) for state in ("to train", "cached", "not needed")}
    lines.append(f"teachers (cache {options.teacher_dir}): {counts['to train']} to train, {counts['cached']} cached"
                 + (f", {counts['not needed']} not needed" if counts["not needed"] else ""))
    for row in teachers:
        lines.append(f"  {row['state']:<10} {row['teacher']} on {row['dataset']}, {row['epochs']} epochs, "
                     f"seed {row['seed']}: {row['runs']} run{'s' * (row['runs'] != 1)} [{row['key']}]")
    state = {s.run_id: "done" for s in plan.done} | {s.run_id: "failed" for s in plan.failed}
    cohort_of = {s.run_id: n for n, cohort in enumerate(plan.cohorts, 1) for s in cohort}
    lines.append("runs:")
    for run in specs:
        where = f"cohort {cohort_of[run.run_id]}" if run.run_id in cohort_of else state.get(run.run_id, "")
        label = _run_label(run)
        lines.append(f"  {where:<10} {run.run_id:<32} {label}")
    return lines


def _run_label(run: RunSpec) -> str:
    from kdbench.config import build_params, method_label
    from kdbench.distiller import get_method

    cls = get_method(run.method)
    name = method_label(run.method, build_params(cls.Params, run.method_params, run.method), cls.Params)
    return f"{name:<16} {run.teacher or 'none'} -> {run.student}  seed {run.seed}"


# ---------------------------------------------------------------------------------------------------------------
# kdbench sweep


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``sweep`` subcommand."""
    from kdbench.executors import EXECUTORS

    p = subparsers.add_parser(
        "sweep", help="run a leaderboard sweep from a YAML spec (pairs x methods x grids x seeds); resumable",
        description="Expand a sweep spec (plain YAML; keys as the flags of `kdbench run`) into runs, train every "
                    "run that is not in the results store yet, and print the leaderboard. Interrupt it at any "
                    "moment and run the same command again to continue. SPEC is a YAML file or the name of a "
                    "shipped spec (see --list-configs).",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec: a YAML file or a shipped spec's name")
    p.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                   help="results store (default: %(default)s)")
    p.add_argument("--teacher-cache", type=Path, metavar="DIR",
                   help="where trained teachers are cached; share one between stores (default: RESULTS/teachers)")
    p.add_argument("--executor", choices=EXECUTORS.names(), default="local",
                   help="where runs execute: this process, or tasks on a Ray cluster (default: %(default)s)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to connect to (default: $RAY_ADDRESS, else the cluster started on this "
                        "machine, else a new local one)")
    p.add_argument("--num-cpus", type=float, metavar="N", help="CPUs per Ray task (default: the spec's, else 1)")
    p.add_argument("--num-gpus", type=float, metavar="N", help="GPUs per Ray task (default: the spec's, else 0)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, teachers to train, what is done) and train nothing")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs whose record says failed")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's, else auto)")
    p.add_argument("--data-root", metavar="DIR", help="root of file-based datasets (default: the spec's, "
                                                      "else $KDBENCH_DATA)")
    p.add_argument("--download", action="store_true", default=None, help="download CIFAR when it is missing")
    p.add_argument("--no-cohort", action="store_true", default=None,
                   help="train runs one at a time instead of sharing each teacher pass")
    p.add_argument("--max-cohort", type=int, metavar="N",
                   help="the most runs trained together on one teacher pass (default: the spec's, else 8)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load method plugins from a Python file; repeatable (besides the spec's plugins)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-configs", action="store_true", help="list the shipped sweep specs and exit")
    p.set_defaults(handler=cmd_sweep)
    return p


@dataclass(frozen=True)
class SweepSetup:
    """Everything ``kdbench sweep`` decided before training: the spec, its runs, options and resources."""

    spec: SweepSpec
    runs: list[RunSpec]
    options: ExecOptions
    executor: str
    num_cpus: float
    num_gpus: float
    ray_address: str | None


def execution_settings(spec: SweepSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The execution keys: a command-line flag wins over the spec, the spec over the defaults of ``kdbench run``."""
    defaults = run_command_defaults()
    settings = {key: spec.execution.get(key, defaults[key]) for key in EXECUTION_KEYS}
    flags = {"device": args.device, "data_root": args.data_root, "download": args.download,
             "cohort": False if args.no_cohort else None, "max_cohort": args.max_cohort, "num_cpus": args.num_cpus,
             "num_gpus": args.num_gpus}
    settings.update({key: value for key, value in flags.items() if value is not None})
    if settings["data_root"] is not None and args.data_root is not None:
        settings["data_root"] = str(Path(args.data_root).expanduser().resolve())
    if settings["max_cohort"] < 1:
        raise ConfigError(f"--max-cohort must be >= 1 (got {settings['max_cohort']})")
    if settings["num_cpus"] <= 0 or settings["num_gpus"] < 0:
        raise ConfigError(f"CPUs per task must be > 0 and GPUs >= 0 (got {settings['num_cpus']:g}, "
                          f"{settings['num_gpus']:g})")
    return settings


def prepare_sweep(args: argparse.Namespace) -> SweepSetup:
    """Read, check and expand the spec; build the execution options. Writes nothing.

    Raises:
        SpecError: the spec's problems (all of them) or its data's.
        ConfigError: a bad flag.
    """
    from kdbench.engine import ExecOptions
    from kdbench.env import resolve_device

    spec = load_sweep_spec(args.spec, extra_plugins=args.plugin)
    runs = expand_sweep(spec)
    settings = execution_settings(spec, args)
    check_sweep_data(spec, settings["data_root"], settings["download"])
    if args.executor == "local":
        resolve_device(settings["device"])
    elif args.executor == "ray":
        from kdbench.executors import import_ray

        import_ray()
    options = ExecOptions(
        results=args.results.expanduser().resolve(),
        teacher_cache=args.teacher_cache.expanduser().resolve() if args.teacher_cache else None,
        device=settings["device"], data_root=settings["data_root"], download=settings["download"],
        cohort=settings["cohort"], max_cohort=settings["max_cohort"], retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    return SweepSetup(spec=spec, runs=runs, options=options, executor=args.executor, num_cpus=settings["num_cpus"],
                      num_gpus=settings["num_gpus"], ray_address=args.ray_address)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``kdbench sweep``: check the spec, print the plan, execute what is not done, print the leaderboard."""
    if args.list_configs:
        for name, description in packaged_configs().items():
            print(f"{name:<16} {description}")
        return 0
    if not args.spec:
        raise ConfigError("name a sweep spec: kdbench sweep SPEC.yaml (or a shipped spec, see --list-configs)")
    try:
        setup = prepare_sweep(args)
    except SpecError as err:
        for line in err.lines:
            print(f"kdbench: error: {line}", file=sys.stderr)
        return 2
    from kdbench.engine import make_plan

    plan = make_plan(setup.runs, setup.options)
    if args.dry_run:
        print("\n".join(describe_plan(setup.spec, setup.runs, plan, setup.options)))
        return 0
    return execute_sweep(setup, plan)


def execute_sweep(setup: SweepSetup, plan: Plan, write: Callable[[str], None] | None = None) -> int:
    """Train the plan's pending cohorts with the chosen executor; print the outcome and the leaderboard.

    Returns:
        0 when every run of the sweep is ``ok`` (or still being trained by another process), else 1.
    """
    from kdbench.executors import EXECUTORS, RunBar, SweepJob
    from kdbench.results import read_record, records_frame

    note = write or (lambda line: print(f"kdbench: {line}", file=sys.stderr))
    teachers = teacher_status(setup.runs, plan, setup.options.teacher_dir)
    to_train = [t for t in teachers if t["state"] == "to train"]
    note(plan_headline(setup.spec, setup.runs, plan)
         + (f"; {len(to_train)} teacher{'s' * (len(to_train) != 1)} to train" if to_train else ""))
    job = SweepJob(cohorts=plan.cohorts, options=setup.options, plugins=setup.spec.plugins, num_cpus=setup.num_cpus,
                   num_gpus=setup.num_gpus, ray_address=setup.ray_address)
    executor = EXECUTORS.get(setup.executor)()
    with RunBar(total=len(plan.pending), enabled=setup.options.progress) as bar:
        outcome = executor.run(job, bar)
    records = [r for r in (read_record(setup.options.results, s.run_id) for s in setup.runs) if r is not None]
    ok = sum(r.get("status") == "ok" for r in records)
    failed = len(records) - ok
    missing = len(setup.runs) - len(records)
    summary = f"sweep {setup.spec.source}: {ok} of {len(setup.runs)} runs ok"
    if failed:
        summary += f", {failed} failed (kdbench sweep --retry-failed runs them again)"
    if missing:
        summary += (f", {missing} not finished (claimed by another process, or skipped after a teacher failed; "
                    "run the same command again to continue)")
    for problem in outcome.problems:
        note(f"error: {problem}")
    note(summary)
    if records:
        from kdbench.report import console_leaderboard

        print(console_leaderboard(records_frame(records)))
    return 1 if failed or outcome.problems else 0
