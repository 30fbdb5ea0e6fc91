"""Checking a sweep spec: every problem, one line each, read off the schema's dataclasses.

A key's type, default, range and checks are its field's (:mod:`kdbench.sweep.schema`); a method parameter's are its
``Params`` field's (:func:`kdbench.config.build_params`). What is written here is the shape of a spec: the
one-pair shorthand, the forms of ``methods``, a pair's ``method_params``, and plugins loaded before methods are named.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.config import build_params, coerce_value, dataclass_defaults, dataclass_field_types
from kdbench.distiller import discover_methods, get_method, load_plugin_file
from kdbench.errors import ConfigError, KDBenchError
from kdbench.sweep.schema import (
    BUDGET_KEYS,
    EXECUTION_KEYS,
    PAIR_KEYS,
    SWEEP_KEYS,
    ExecutionSettings,
    PairEntry,
    RunBudget,
    SpecError,
    SweepKeys,
    SweepSpec,
    is_path_key,
    is_required,
    key_hint,
    schema_types,
    value_problems,
)


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


def _schema_field(schema: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(schema) if f.name == name)


class _SpecChecker:
    """Walks a loaded spec, collecting every problem as one line."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    # -- reading any schema dataclass --------------------------------------------------------------------------

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def unknown_keys(self, mapping: Mapping[Any, Any], allowed: Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
                self.problem(f"{where}unknown key {key!r}{hint}")

    def missing(self, mapping: Mapping[str, Any], schema: type, where: str = "") -> None:
        """Record every key ``schema`` requires (a field without a default) that ``mapping`` lacks."""
        for spec_field in dataclasses.fields(schema):
            if is_required(spec_field) and spec_field.name not in mapping:
                hint = key_hint(spec_field)
                self.problem(f"{f'{where}: ' if where else ''}missing key {spec_field.name!r}"
                             + (f" ({hint})" if hint else ""))

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
            return True, coerce_value(raw, tp, where)
        except ConfigError as err:
            self.problem(str(err))
            return False, None

    def path(self, raw: str) -> str:
        """``raw`` as an absolute path, relative ones starting in the spec's folder."""
        path = Path(raw).expanduser()
        return str(path if path.is_absolute() else (self.base_dir / path).resolve())

    def section(self, mapping: Mapping[str, Any], schema: type, where: str = "",
                keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The keys of ``mapping`` that schema dataclass ``schema`` declares, each coerced and checked.

        Each value is coerced to its field's type (a value of another type is a problem, and left out), made
        absolute if the field names a path, then checked against the field's range and check (a problem, but the
        value stays: what lies between the fields can still be checked).

        Args:
            mapping: the spec's mapping (the top level, or a pair entry).
            schema: the dataclass that declares the keys.
            where: names the mapping in messages (``pairs[0]``; empty at the top level).
            keys: the fields to read (default: every field of ``schema``).
        """
        wanted = set(schema_types(schema) if keys is None else keys)
        types_by_name = schema_types(schema)
        out = {}
        for spec_field in dataclasses.fields(schema):
            if spec_field.name not in wanted or spec_field.name not in mapping:
                continue
            name = f"{where}.{spec_field.name}" if where else spec_field.name
            ok, value = self.value(mapping[spec_field.name], types_by_name[spec_field.name], name)
            if not ok:
                continue
            if is_path_key(spec_field) and value is not None:
                value = tuple(map(self.path, value)) if isinstance(value, tuple) else self.path(value)
            self.problems.extend(value_problems(spec_field, name, value))
            out[spec_field.name] = value
        return out

    def settle(self, instance: Any, prefix: str) -> bool:
        """Record the ``problems()`` of a schema dataclass built from the checked keys (those between its fields).

        Returns:
            whether there were none.
        """
        problems = instance.problems()
        for message in problems:
            self.problem(f"{prefix}{message}")
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
        self.missing(data, SweepKeys)
        plugins = self.plugins(data, extra_plugins)  # first: the methods (and datasets) a spec names may be theirs
        keys = {**dataclass_defaults(SweepKeys), **self.section(data, SweepKeys, keys=("dataset", "seeds"))}
        budget = {**dataclass_defaults(RunBudget), **self.section(data, RunBudget)}
        execution = self.section(data, ExecutionSettings)
        methods = self.methods(data["methods"]) if "methods" in data else []
        pairs = self.pairs(data)
        if self.settle(RunBudget(**budget), ""):
            for number, pair in enumerate(pairs):
                if pair.budget:
                    self.settle(RunBudget(**{**budget, **pair.budget}), f"pairs[{number}]: ")
        if "dataset" not in keys or self.problems:
            return None
        return SweepSpec(source=self.source, dataset=keys["dataset"], pairs=tuple(pairs), methods=tuple(methods),
                         seeds=keys["seeds"], budget=budget, plugins=tuple(plugins), execution=execution)

    def plugins(self, data: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
        """Load the spec's plugin files and ``extra``; their absolute paths."""
        discover_methods()
        paths = list(dict.fromkeys([*extra, *self.section(data, SweepKeys, keys=("plugins",)).get("plugins", ())]))
        for path in paths:
            try:
                load_plugin_file(path)
            except KDBenchError as err:
                self.problem(f"plugins: {err}")
        return paths

    def methods(self, raw: Any) -> list[tuple[str, dict[str, Any]]]:
        """``methods: [ce, kd]``, ``methods: {kd: {temperature: [2, 4]}, ce: {}}`` or a list mixing both forms."""
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
        """One method and its grid, each value checked by the method's ``Params`` (a list is several values)."""
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
        """``pairs: [...]``, or one pair's keys at the top level; a top-level ``teacher_pretrained`` is every pair's."""
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
            defaults = self.section(data, PairEntry, keys=("teacher_pretrained",))
            return [p for p in (self.pair(item, f"pairs[{n}]", defaults) for n, item in enumerate(items)) if p]
        if "student" in data:
            pair = self.pair({k: data[k] for k in shorthand}, "", {})
            return [pair] if pair else []
        self.problem(f"missing key 'pairs' ({key_hint(_schema_field(SweepKeys, 'pairs'))})")
        return []

    def pair(self, item: Any, where: str, defaults: Mapping[str, Any]) -> PairEntry | None:
        """One pair entry (``where`` names it; empty for the top-level shorthand), with its budget keys."""
        prefix = f"{where}." if where else ""
        if not isinstance(item, dict):
            self.problem(f"{where} must be a mapping like {{teacher: MODEL, student: MODEL}} (got {item!r})")
            return None
        before = len(self.problems)
        if where:
            self.unknown_keys(item, [*PAIR_KEYS, *BUDGET_KEYS, "method_params"], f"{where}: ")
        self.missing(item, PairEntry, where or "the spec")
        keys = {**defaults, **self.section(item, PairEntry, where, keys=PAIR_KEYS)}
        budget = self.section(item, RunBudget, where) if where else {}
        method_params = self.pair_method_params(item["method_params"], f"{prefix}method_params") \
            if where and "method_params" in item else {}
        if "student" not in keys:
            return None
        pair = PairEntry(**keys, budget=budget, method_params=method_params)
        self.settle(pair, prefix)
        return pair if len(self.problems) == before else None

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
