"""Equal-budget tuning: every method of a spec gets the same number of trials, selected on the validation split.

A tune spec is a sweep spec (:mod:`kdbench.sweep`) with a ``tune:`` section::

    dataset: mnist5k
    epochs: 5
    pairs:
      - {teacher: resnet18, student: mobilenetv3_small_050}
    methods: [ce, kd, at]
    seeds: [0, 1, 2]          # the final seeds: the best configuration is retrained with each, on test
    tune:
      trials: 12              # per (pair, method): the same for every method
      seed: 0                 # the sampler's seed
      trial_seed: 0           # the student seed of every trial
      prune: false            # stop trials early whose validation top-1 trails (Optuna's MedianPruner)

For each (pair, method) a *study* searches the method's declared search space (``Params`` fields with
:func:`kdbench.distiller.tunable` metadata) together with the harness's learning rate and weight decay, with
Optuna's TPE sampler. Each trial is an ordinary kdbench run (a :class:`~kdbench.config.RunSpec` with
``eval_split="val"``: its accuracy is measured on the validation split and the test split is never read),
executed by :func:`kdbench.engine.execute`, so trials are records of the results store like any other run: they
resume, de-duplicate, and train in cohorts that share one teacher pass. When a study has used its trials, the best
configuration (highest validation top-1) is trained again with the final seeds and evaluated on test; with
``defaults: true`` (the default) the method's default configuration is trained with the same seeds, so the report
can put default and tuned side by side.

Study state lives in ``<results>/tuning/``: one Optuna journal per study (appends guarded by an OS file lock, which
the OS releases when a process dies, and a torn last line repaired on open), one lock file that makes "count the
trials and ask for the next" atomic across processes, and a JSON summary the report reads. Records are the truth:
a trial whose run has a record is told its value from the record, never trained again; a trial left running by a
process that died is trained by the next process that finds it unclaimed.

With ``prune: true`` each trial reports its validation top-1 after every epoch (an epoch hook of the engine,
:class:`PruningHook`), and Optuna's median pruner stops a trial whose best value so far trails the median of the
finished trials at the same epoch. The run is then recorded with status ``pruned``: finished, never trained again,
and counted against the budget like a complete trial; only complete trials compete for the best configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import json
import math
import os
import statistics
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.config import RunSpec, build_params, coerce_value, dataclass_field_types, method_label, params_dict
from kdbench.distiller import get_method
from kdbench.engine import execute
from kdbench.errors import ConfigError, KDBenchError
from kdbench.options import ExecOptions
from kdbench.plan import checkpoint_sha256, make_spec
from kdbench.results import atomic_write_text, read_record
from kdbench.sweep import PairEntry, SpecError, SweepSpec, parse_sweep_spec, read_spec_data

if TYPE_CHECKING:
    import optuna


TUNING_DIR = "tuning"
HARNESS_PARAMS = ("lr", "weight_decay")
#: how far the default search range of the learning rate and the weight decay reaches either side of the budget's
#: value (log scale)
HARNESS_RANGE_FACTOR = 10.0
#: the weight-decay range when the budget's weight decay is 0
ZERO_WEIGHT_DECAY_RANGE = (1e-5, 1e-3)
SIGNIFICANT_DIGITS = 4

#: keys of a spec's ``tune:`` section and their types
TUNE_KEYS: dict[str, Any] = {"trials": int, "seed": int, "trial_seed": int, "lr": tuple[float, ...],
                             "weight_decay": tuple[float, ...], "startup_trials": int | None,
                             "defaults_first": bool, "defaults": bool, "parallel": int, "prune": bool,
                             "prune_warmup": int}


# ---------------------------------------------------------------------------------------------------------------
# Search spaces


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter.

    Attributes:
        name: the ``Params`` field, or ``lr`` / ``weight_decay`` for the harness's own.
        kind: ``float``, ``int`` or ``categorical``.
        low: lower end of a range.
        high: upper end of a range.
        log: sample the range on a log scale.
        choices: the values of a categorical parameter.
        source: ``method`` (declared in the method file) or ``harness``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    source: str = "method"

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def normalise(self, value: Any) -> Any:
        """A sampled value as it goes into a run: floats rounded to 4 significant digits and kept in range."""
        if self.kind != "float":
            return value
        rounded = float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")
        return min(max(rounded, float(self.low)), float(self.high))

    def describe(self) -> str:
        """``temperature in [1, 8]``, ``lr in [0.005, 0.5] (log)``, ``mode in {a, b}``."""
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(str(c) for c in self.choices or ())}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the study summary."""
        out = dataclasses.asdict(self)
        out["choices"] = list(self.choices) if self.choices is not None else None
        return out


def method_search_space(cls: type, fixed: Mapping[str, Any] = ()) -> list[SearchParam]:
    """The search space a method declares on its ``Params`` fields (those in ``fixed`` left out).

    Args:
        cls: a registered method class.
        fixed: parameters the spec sets to one value; they are not searched.
    """
    types_by_name = dataclass_field_types(cls.Params)
    space = []
    for f in dataclasses.fields(cls.Params):
        search = f.metadata.get("search") if f.metadata else None
        if not search or f.name in fixed:
            continue
        if "choices" in search:
            space.append(SearchParam(f.name, "categorical", choices=tuple(search["choices"])))
        else:
            kind = "int" if types_by_name[f.name] is int else "float"
            space.append(SearchParam(f.name, kind, low=search["low"], high=search["high"], log=bool(search["log"])))
    return space


def harness_search_space(budget: Mapping[str, Any], lr: Sequence[float] | None = None,
                         weight_decay: Sequence[float] | None = None) -> list[SearchParam]:
    """The learning rate and weight decay, searched for every method (``ce`` included) on a log scale.

    By default each spans a factor of :data:`HARNESS_RANGE_FACTOR` either side of the budget's value (a weight
    decay of 0 searches :data:`ZERO_WEIGHT_DECAY_RANGE`); ``lr`` / ``weight_decay`` give explicit ``[low, high]``.
    """
    base_lr, base_wd = float(budget["lr"]), float(budget["weight_decay"])
    lr_range = tuple(lr) if lr else (base_lr / HARNESS_RANGE_FACTOR, base_lr * HARNESS_RANGE_FACTOR)
    if weight_decay:
        wd_range = tuple(weight_decay)
    elif base_wd > 0:
        wd_range = (base_wd / HARNESS_RANGE_FACTOR, base_wd * HARNESS_RANGE_FACTOR)
    else:
        wd_range = ZERO_WEIGHT_DECAY_RANGE
    return [SearchParam("lr", "float", low=lr_range[0], high=lr_range[1], log=True, source="harness"),
            SearchParam("weight_decay", "float", low=wd_range[0], high=wd_range[1], log=True, source="harness")]


def describe_search_space(cls: type) -> str:
    """One line: the method's declared search space plus the harness's (for ``kdbench list methods --verbose``)."""
    own = [p.describe() for p in method_search_space(cls)]
    harness = "lr and weight decay (log, x1/10 to x10 of the budget's)"
    return ", ".join(own + [harness]) if own else f"{harness} only"


# ---------------------------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune:`` section of a spec.

    Attributes:
        trials: trials per (pair, method); every method gets the same number.
        seed: seed of the sampler (each study's sampler is seeded from it, its name and its trial count).
        trial_seed: the student seed of every trial.
        lr: explicit ``(low, high)`` of the learning rate, else x1/10 to x10 of the budget's.
        weight_decay: explicit ``(low, high)`` of the weight decay, else x1/10 to x10 of the budget's.
        startup_trials: random trials before TPE models the results (default: a third of ``trials``, 2 to 10).
        defaults_first: the first trial of each study is the method's default configuration.
        defaults: also train each method's default configuration with the final seeds, for the side-by-side report.
        parallel: trials each study asks for at once (TPE's constant liar keeps them apart); more keep more
            workers busy (``--executor ray``, or a larger cohort) at the cost of a less informed search.
        prune: stop unpromising trials early with Optuna's ``MedianPruner``: after each epoch a trial whose best
            validation top-1 so far is below the median of the complete trials at that epoch stops, recorded as
            ``pruned``. It prunes only once ``startup`` trials are complete, never at a run's last epoch.
        prune_warmup: epochs every trial trains before it may be pruned. The default 1 makes the first decision
            after the second epoch: after one epoch the ranking says little (a larger learning rate, or a method
            that ramps its loss in, starts behind and catches up), while one more epoch is cheap beside a budget
            where pruning pays (5 epochs or more).
    """

    trials: int = 12
    seed: int = 0
    trial_seed: int = 0
    lr: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None
    startup_trials: int | None = None
    defaults_first: bool = True
    defaults: bool = True
    parallel: int = 1
    prune: bool = False
    prune_warmup: int = 1

    @property
    def startup(self) -> int:
        """Random trials before TPE takes over."""
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.trials // 3))


@dataclass(frozen=True)
class TuneSpec:
    """A checked tune spec: the sweep it extends and its ``tune:`` settings."""

    sweep: SweepSpec
    settings: TuneSettings


def _check_settings(raw: Any, trials: int | None, prune: bool | None = None) -> tuple[TuneSettings | None, list[str]]:
    """The ``tune:`` section as settings, or every problem in it."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"tune must be a mapping of settings, e.g. tune: {{trials: 12}} (got {raw!r})"]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in TUNE_KEYS:
            close = difflib.get_close_matches(str(key), list(TUNE_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(TUNE_KEYS)}"
            problems.append(f"tune: unknown key {key!r}{hint}")
            continue
        try:
            values[key] = coerce_value(value, TUNE_KEYS[key], f"tune.{key}")
        except ConfigError as err:
            problems.append(str(err))
    if trials is not None:
        values["trials"] = trials
    if prune is not None:
        values["prune"] = prune
    for key in ("lr", "weight_decay"):
        bounds = values.get(key)
        if bounds is not None and (len(bounds) != 2 or not 0 < bounds[0] < bounds[1]):
            problems.append(f"tune.{key} must be [low, high] with 0 < low < high (got {list(bounds)})")
    if values.get("trials", 1) < 1:
        problems.append(f"tune.trials must be >= 1 (got {values['trials']})")
    if values.get("parallel", 1) < 1:
        problems.append(f"tune.parallel must be >= 1 (got {values['parallel']})")
    if (values.get("startup_trials") or 0) < 0:
        problems.append(f"tune.startup_trials must be >= 0 (got {values['startup_trials']})")
    if values.get("prune_warmup", 0) < 0:
        problems.append(f"tune.prune_warmup must be >= 0 epochs (got {values['prune_warmup']})")
    if problems:
        return None, problems
    return TuneSettings(**values), []


def load_tune_spec(name: str | Path, extra_plugins: Sequence[str] = (), trials: int | None = None,
                   prune: bool | None = None) -> TuneSpec:
    """Read and check a tune spec (a sweep spec with a ``tune:`` section).

    ``trials`` overrides ``tune.trials`` and ``prune`` (when not ``None``) ``tune.prune``.

    Raises:
        SpecError: every problem of the spec, one line each.
        ConfigError: the file cannot be found or read.
    """
    data, base_dir = read_spec_data(name)
    plugins = [str(Path(p).expanduser().resolve()) for p in extra_plugins]
    return parse_tune_spec(data, source=str(name), base_dir=base_dir, extra_plugins=plugins, trials=trials,
                           prune=prune)


def parse_tune_spec(data: Any, source: str = "spec", base_dir: Path | None = None,
                    extra_plugins: Sequence[str] = (), trials: int | None = None,
                    prune: bool | None = None) -> TuneSpec:
    """Check tune-spec data: the sweep keys as :func:`kdbench.sweep.parse_sweep_spec` does, plus ``tune:``.

    A method's mapping fixes parameters to one value each (they are then not searched); a list of several values
    is a problem, since the search, not a grid, chooses values here.

    Raises:
        SpecError: every problem, one line each.
    """
    problems: list[str] = []
    sweep: SweepSpec | None = None
    try:
        sweep = parse_sweep_spec(data, source=source, base_dir=base_dir, extra_plugins=extra_plugins)
    except SpecError as err:
        problems.extend(err.problems)
    settings, more = _check_settings(data.get("tune") if isinstance(data, dict) else None, trials, prune)
    problems.extend(more)
    if sweep is not None:
        problems += [f"pairs[{n}].method_params: a tune spec fixes parameters in methods, not per pair"
                     for n, pair in enumerate(sweep.pairs) if pair.method_params]
        for method, grid in sweep.methods:
            for param, values in grid.items():
                if len(values) != 1:
                    problems.append(f"methods.{method}.{param}: a tune spec fixes one value per parameter (got "
                                    f"{len(values)}); the search chooses the values within the method's declared "
                                    "range")
        budget_problems = [f"val_fraction must be > 0: tuning selects on the validation split (got {b['val_fraction']})"
                           for b in [sweep.budget, *(sweep.pair_budget(p) for p in sweep.pairs)]
                           if not b["val_fraction"] > 0]
        problems.extend(budget_problems[:1])
        budgets = [sweep.budget, *(sweep.pair_budget(p) for p in sweep.pairs)]
        if settings is not None and settings.prune and all(b["epochs"] < settings.prune_warmup + 2 for b in budgets):
            epochs = max(b["epochs"] for b in budgets)
            problems.append(f"tune.prune: with {epochs} epoch{'s' * (epochs != 1)} no trial can be pruned (decisions "
                            f"come after epoch {settings.prune_warmup + 1} (tune.prune_warmup + 1) and before the "
                            "last); train more epochs or lower tune.prune_warmup")
    if problems or sweep is None or settings is None:
        raise SpecError(source, problems)
    return TuneSpec(sweep=sweep, settings=settings)


# ---------------------------------------------------------------------------------------------------------------
# Studies: one per (pair, method entry)


@dataclass(frozen=True)
class StudyPlan:
    """One study: a method on a pair under one budget, with its search space.

    Attributes:
        name: stable name, ``<dataset>-<method>-<12 hex digits>`` (a hash of everything that defines the study).
        dataset: the dataset.
        pair: the teacher/student pair.
        method: the method.
        fixed: parameters the spec fixes.
        budget: the pair's training budget (the learning rate and weight decay are the search's starting point).
        space: the searched parameters.
        settings: the tune settings.
        seeds: the final seeds.
        data_root: where a dataset read from disk lies (its fingerprint enters the runs' ids and the study's name).
    """

    name: str
    dataset: str
    pair: PairEntry
    method: str
    fixed: Mapping[str, Any]
    budget: Mapping[str, Any]
    space: tuple[SearchParam, ...]
    settings: TuneSettings
    seeds: tuple[int, ...]
    data_root: str | None = None

    @property
    def label(self) -> str:
        """The method's label with its fixed parameters: ``kd`` or ``kd(standardize=True)``."""
        cls = get_method(self.method)
        return method_label(self.method, build_params(cls.Params, dict(self.fixed), self.method), cls.Params)

    def default_params(self) -> dict[str, Any]:
        """The default configuration in the space's terms: the method's defaults and the budget's lr and wd."""
        cls = get_method(self.method)
        defaults = params_dict(build_params(cls.Params, dict(self.fixed), self.method))
        out = {}
        for param in self.space:
            out[param.name] = self.budget[param.name] if param.source == "harness" else defaults[param.name]
        return out

    def run_spec(self, params: Mapping[str, Any], seed: int, eval_split: str) -> RunSpec:
        """The run of configuration ``params`` with ``seed``, evaluated on ``eval_split``.

        The teacher keeps the budget's learning rate and weight decay, so every trial distils the same teacher.
        """
        method_params = {p.name: params[p.name] for p in self.space if p.source == "method"}
        budget = dict(self.budget)
        budget.update(
            lr=params.get("lr", budget["lr"]), weight_decay=params.get("weight_decay", budget["weight_decay"]),
            teacher_lr=budget.get("teacher_lr") or budget["lr"],
            teacher_weight_decay=(budget["weight_decay"] if budget.get("teacher_weight_decay") is None
                                  else budget["teacher_weight_decay"]),
            eval_split=eval_split,
        )
        return make_spec(dataset=self.dataset, student=self.pair.student, method=self.method,
                         teacher=self.pair.teacher, method_overrides={**self.fixed, **method_params},
                         teacher_ckpt=self.pair.teacher_ckpt, teacher_pretrained=self.pair.teacher_pretrained,
                         seed=seed, data_root=self.data_root, **budget)

    def default_run_specs(self) -> list[RunSpec]:
        """The default configuration with the final seeds, on test: the runs ``kdbench sweep`` makes of the spec."""
        budget = {**self.budget, "eval_split": "test"}
        return [make_spec(dataset=self.dataset, student=self.pair.student, method=self.method,
                          teacher=self.pair.teacher, method_overrides=dict(self.fixed),
                          teacher_ckpt=self.pair.teacher_ckpt, teacher_pretrained=self.pair.teacher_pretrained,
                          seed=seed, data_root=self.data_root, **budget) for seed in self.seeds]


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def plan_studies(spec: TuneSpec, data_root: str | None = None) -> list[StudyPlan]:
    """One study per (pair, method entry) of the spec, in the spec's order.

    A teacher-free method whose pairs share a student and budget gets one study, as it gets one run in a sweep.

    Raises:
        SpecError: combinations that cannot run (e.g. a method needing a teacher on a teacher-less pair).
    """
    sweep, settings = spec.sweep, spec.settings
    studies: dict[str, StudyPlan] = {}
    problems: list[str] = []
    for number, pair in enumerate(sweep.pairs):
        budget = sweep.pair_budget(pair)
        for method, grid in sweep.methods:
            cls = get_method(method)
            fixed = {param: values[0] for param, values in grid.items()}
            space = (*method_search_space(cls, fixed),
                     *harness_search_space(budget, settings.lr, settings.weight_decay))
            plan_pair = pair if cls.needs_teacher else dataclasses.replace(pair, teacher=None, teacher_ckpt=None,
                                                                           teacher_pretrained=False)
            identity = {
                "dataset": sweep.dataset, "method": method, "fixed": fixed,
                "teacher": plan_pair.teacher, "student": plan_pair.student, "teacher_pretrained":
                plan_pair.teacher_pretrained,
                "budget": {k: v for k, v in budget.items() if cls.needs_teacher or not k.startswith("teacher_")},
                "space": [p.as_dict() for p in space], "trial_seed": settings.trial_seed, "seed": settings.seed,
                "defaults_first": settings.defaults_first, "startup": settings.startup,
            }
            if settings.prune:  # a study without pruning keeps the name it had before pruning existed
                identity["pruner"] = pruner_settings(settings)
            if plan_pair.teacher_ckpt:

                identity["teacher_ckpt_sha256"] = checkpoint_sha256(plan_pair.teacher_ckpt)
            study = StudyPlan(name="", dataset=sweep.dataset, pair=plan_pair, method=method, fixed=fixed,
                              budget=budget, space=tuple(space), settings=settings, seeds=tuple(sweep.seeds),
                              data_root=data_root or sweep.execution.get("data_root"))
            try:
                probe = study.run_spec(study.default_params(), settings.trial_seed, "val")
            except KDBenchError as err:
                problems.append(f"pairs[{number}] ({pair.label}), method {method}: {err}")
                continue
            if probe.data_fingerprint is not None:  # other data under the same dataset name is another study
                identity["data_fingerprint"] = probe.data_fingerprint
            digest = hashlib.sha256(_json_text(identity).encode()).hexdigest()[:12]
            name = f"{sweep.dataset}-{method}-{digest}"
            studies.setdefault(name, dataclasses.replace(study, name=name))
    if problems:
        raise SpecError(sweep.source, problems)
    return list(studies.values())


# ---------------------------------------------------------------------------------------------------------------
# Study storage: an Optuna journal per study, safe for several processes and for kill -9


class FlockLock:
    """An exclusive OS file lock (``flock``) on ``path``, with the interface of Optuna's journal locks.

    The OS releases it when the process dies however it dies, so a killed process never leaves a stale lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._depth = 0

    def acquire(self) -> bool:
        """Block until the lock is held (re-entrant within one process)."""
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._handle = handle
        self._depth += 1
        return True

    def release(self) -> None:
        """Release the lock."""
        self._depth -= 1
        if self._depth == 0 and self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock, held for the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


def repair_journal(path: Path) -> bool:
    """Cut a torn last line (a writer killed mid-append) off an Optuna journal; whether anything was cut.

    Call it holding the journal's lock: complete lines end with a newline, so the tail after the last newline can
    only be an append that never finished.
    """
    if not path.is_file():
        return False
    with path.open("rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return False
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def import_optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        ConfigError: Optuna is not installed (one line that says how to install it).
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError("kdbench tune needs Optuna: pip install 'kdbench[tune]' (or pip install optuna)") from None
    return optuna


def pruner_settings(settings: TuneSettings) -> dict[str, Any] | None:
    """The pruner of a study as plain data (``None`` without pruning): it enters the study's name and summary."""
    if not settings.prune:
        return None
    return {"kind": "median", "startup_trials": settings.startup, "warmup_epochs": settings.prune_warmup}


def make_pruner(settings: TuneSettings) -> Any:
    """Optuna's ``MedianPruner`` for ``settings`` (a ``NopPruner`` without pruning).

    It prunes once ``startup`` trials are complete (as TPE models the results after ``startup`` trials), and not
    before step ``prune_warmup``; a step is a main-phase epoch counted from 0 (see :func:`intermediate_values`).
    """
    from optuna.pruners import MedianPruner, NopPruner

    if not settings.prune:
        return NopPruner()
    return MedianPruner(n_startup_trials=settings.startup, n_warmup_steps=settings.prune_warmup)


def open_study(journal: Path, name: str, settings: TuneSettings, create: bool = False) -> optuna.Study:
    """The study ``name`` in the Optuna journal ``journal``, with the pruner of ``settings``: the one way to open one.

    The journal's appends hold an OS file lock (``<journal>.lock``), and a torn last line (a writer killed
    mid-append) is cut first. ``create`` creates the study if it does not exist (call it holding the study lock).
    """
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    append_lock = FlockLock(journal.with_name(journal.name + ".lock"))
    with append_lock.held():
        repair_journal(journal)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=append_lock))
    if create:
        return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                   pruner=make_pruner(settings))
    return optuna.load_study(storage=storage, study_name=name, pruner=make_pruner(settings))


class StudyStore:
    """The Optuna study of one :class:`StudyPlan` in ``<results>/tuning/``.

    Args:
        results: the results store.
        plan: the study.
    """

    def __init__(self, results: Path, plan: StudyPlan) -> None:
        self.plan = plan
        folder = Path(results) / TUNING_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = folder / f"{plan.name}.journal"
        self.summary_path = folder / f"{plan.name}.json"
        self.lock = FlockLock(folder / f"{plan.name}.lock")
        with self.lock.held():
            self.study = open_study(self.journal, plan.name, plan.settings, create=True)
            trials = self.study.get_trials(deepcopy=False)
            if plan.settings.defaults_first and not trials:
                self.study.enqueue_trial(plan.default_params())

    def distributions(self) -> dict[str, Any]:
        """Parameter name -> Optuna distribution."""
        return {p.name: p.distribution() for p in self.plan.space}

    def params_of(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The run configuration of a trial's ``params`` (normalised values); ``None`` if some are missing."""
        if any(p.name not in values for p in self.plan.space):
            return None
        return {p.name: p.normalise(values[p.name]) for p in self.plan.space}

    def spec_of(self, values: Mapping[str, Any]) -> RunSpec | None:
        """The trial run (``eval_split="val"``) of a trial's ``params``; ``None`` if some are missing."""
        params = self.params_of(values)
        return None if params is None else self.plan.run_spec(params, self.plan.settings.trial_seed, "val")

    def sampler(self, used: int) -> Any:
        """A TPE sampler seeded from the settings, the study and the trial count.

        The sequence of suggestions then depends on the history only, not on where a process was interrupted.
        """
        from optuna.samplers import TPESampler

        seed = zlib.crc32(f"{self.plan.settings.seed}:{self.plan.name}:{used}".encode()) & 0x7FFFFFFF
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate / constant_liar are flagged experimental
            return TPESampler(seed=seed, n_startup_trials=self.plan.settings.startup, multivariate=True,
                              constant_liar=True)


def _used(trial: optuna.trial.FrozenTrial, space: Sequence[SearchParam]) -> bool:
    """Whether a trial counts against the budget: finished (complete, pruned or failed), with a run.

    A trial abandoned by a process that died before all its parameters were written is failed without a run and
    is not counted.
    """
    from optuna.trial import TrialState

    complete_params = all(p.name in trial.params for p in space)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and complete_params)


def trial_value(record: Mapping[str, Any]) -> float | None:
    """The objective of a trial's record: its top-1 on the validation split (``None`` for a failed run)."""
    if record.get("status") != "ok" or record.get("eval_split") != "val":
        return None
    value = record.get("top1")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------
# Pruning: intermediate values from the training loop


def intermediate_values(history: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Step -> validation top-1 of a run's history: what a trial reports to its pruner.

    A step is a main-phase epoch counted from 0 (Optuna's convention); the epochs of an initialisation phase are
    not steps, and a method that trains several generations keeps counting, so each step is one more epoch of
    training. Epochs without a validation top-1 report nothing.
    """
    values: dict[int, float] = {}
    step = -1
    for entry in history:
        if entry.get("phase") == "init":
            continue
        step += 1
        value = entry.get("val_top1")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values[step] = float(value)
    return values


def _trial_id(study: optuna.Study, number: int) -> int:
    """The storage id of trial ``number`` of ``study``."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def _record_steps(study: optuna.Study, number: int, history: Sequence[Mapping[str, Any]]) -> None:
    """Report the steps of ``history`` that trial ``number`` lacks: the study's intermediate values are the records'.

    A trial lacks them when its run was trained without its hook: the same configuration asked by two trials, or
    by a study that does not prune.
    """
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    missing = {step: v for step, v in intermediate_values(history).items() if step not in trial.intermediate_values}
    if missing:
        trial_id = _trial_id(study, number)
        for step, value in sorted(missing.items()):
            study._storage.set_trial_intermediate_value(trial_id, step, value)


@dataclass(frozen=True)
class TrialRef:
    """Where a trial lives: its study's journal and name, its number, and the settings of its pruner."""

    journal: str
    study: str
    number: int
    settings: TuneSettings


class PruningHook:
    """The engine's epoch hook (:attr:`kdbench.options.ExecOptions.epoch_hook`) for a batch of trials.

    For a run of ``trials`` it returns a listener that reports each epoch's validation top-1 to the run's trial
    and raises :class:`~kdbench.training.RunPruned` when the study's pruner says stop (never at the run's last
    epoch, which would save nothing); other runs get no listener. It pickles for Ray and Slurm workers: the
    studies are opened lazily, once per process, from the journals (on the results store the workers share).

    Args:
        trials: run id -> its trial.
    """

    def __init__(self, trials: Mapping[str, TrialRef]) -> None:
        self.trials = dict(trials)
        self._studies: dict[tuple[str, str], optuna.Study] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"trials": self.trials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.trials, self._studies = state["trials"], {}

    def __call__(self, spec: RunSpec) -> Callable[[dict[str, Any]], None] | None:
        """The listener of run ``spec`` (``None`` if it is not one of the trials)."""
        ref = self.trials.get(spec.run_id)
        if ref is None or not ref.settings.prune:
            return None
        cls = get_method(spec.method)
        steps = spec.epochs * cls.num_generations(build_params(cls.Params, spec.method_params, spec.method))
        return _TrialReporter(self, ref, steps)

    def study(self, ref: TrialRef) -> optuna.Study:
        """The study of ``ref``, opened once per process."""
        key = (ref.journal, ref.study)
        if key not in self._studies:
            self._studies[key] = open_study(Path(ref.journal), ref.study, ref.settings)
        return self._studies[key]


class _TrialReporter:
    """One trial's epoch listener (see :class:`PruningHook`)."""

    def __init__(self, hook: PruningHook, ref: TrialRef, steps: int) -> None:
        self.hook, self.ref, self.steps = hook, ref, steps
        self.history: list[dict[str, Any]] = []

    def __call__(self, entry: dict[str, Any]) -> None:
        import optuna

        from kdbench.training import RunPruned

        self.history.append(entry)
        values = intermediate_values(self.history)
        step = sum(e.get("phase") != "init" for e in self.history) - 1  # this entry's step, if it is one
        if entry.get("phase") == "init" or step not in values:
            return  # an initialisation epoch, or an epoch without a validation top-1
        study = self.hook.study(self.ref)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step reported by a process that died and left the run to us
                trial = optuna.trial.Trial(study, _trial_id(study, self.ref.number))
                trial.report(values[step], step)
                prune = step < self.steps - 1 and trial.should_prune()
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # told meanwhile from a record of the same configuration: nothing to decide
        if prune:
            raise RunPruned(f"pruned after epoch {step + 1} of {self.steps}: {_pruned_reason(study, values, step)}")


def _pruned_reason(study: optuna.Study, values: Mapping[int, float], step: int) -> str:
    """Why the median pruner stopped a trial at ``step``, in words."""
    from optuna.trial import TrialState

    others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if step in t.intermediate_values]
    best = max(v for s, v in values.items() if s <= step)
    median = statistics.median(others) if others else math.nan
    return (f"best validation top-1 {best:.1f}% below the median of the complete trials at that epoch "
            f"({median:.1f}%)")


# ---------------------------------------------------------------------------------------------------------------
# The search


def _counts(store: StudyStore) -> tuple[int, int]:
    """``(used, running)`` trials of a study."""
    from optuna.trial import TrialState

    trials = store.study.get_trials(deepcopy=False)
    return (sum(_used(t, store.plan.space) for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials))


def _tell(store: StudyStore, number: int, record: Mapping[str, Any]) -> None:
    """Tell trial ``number`` the outcome of its run's record: complete with its value, pruned, or failed."""
    from optuna.trial import TrialState

    if isinstance(record.get("history"), list):
        _record_steps(store.study, number, record["history"])
    value = trial_value(record)
    if record.get("status") == "pruned":
        store.study.tell(number, state=TrialState.PRUNED)  # Optuna keeps its last intermediate value as its value
    elif value is None:
        store.study.tell(number, state=TrialState.FAIL)
    else:
        store.study.tell(number, value)


def _sync(store: StudyStore, results: Path, ask: int) -> dict[str, tuple[RunSpec, int]]:
    """Under the study lock: tell trials whose records exist, adopt trials nobody finished, ask ``ask`` new ones.

    Returns the runs this process should execute, by run id, each with its trial's number: every running trial
    without a record (the engine skips a run another process has claimed, and trains one whose process died) and
    up to ``ask`` new trials while the budget allows. A new trial whose run is already recorded (the same
    configuration suggested twice) is told at once and counts against the budget like any other.
    """
    from optuna.trial import TrialState

    study, plan = store.study, store.plan
    todo: list[tuple[RunSpec, int]] = []
    with store.lock.held():
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            spec = store.spec_of(trial.params)
            if spec is None:  # asked by a process that died before all its parameters were written
                study.tell(trial.number, state=TrialState.FAIL)
                continue
            record = read_record(results, spec.run_id)
            if record is None:
                todo.append((spec, trial.number))
            else:
                _tell(store, trial.number, record)
        asked = 0
        while asked < ask:
            used, running = _counts(store)
            if used + running >= plan.settings.trials:
                break
            study.sampler = store.sampler(used + running)
            trial = study.ask(store.distributions())
            spec = store.spec_of(trial.params)
            assert spec is not None
            record = read_record(results, spec.run_id)
            if record is None:
                todo.append((spec, trial.number))
                asked += 1
            else:
                _tell(store, trial.number, record)
    out: dict[str, tuple[RunSpec, int]] = {}
    for spec, number in todo:
        out.setdefault(spec.run_id, (spec, number))
    return out


@dataclass
class StudyState:
    """Where one study stands: trials used and trials still running (here or in another process)."""

    store: StudyStore
    used: int = 0
    running: int = 0

    @property
    def done(self) -> bool:
        """Whether every trial of the budget has a result."""
        return self.used >= self.store.plan.settings.trials


def _state(store: StudyStore) -> StudyState:
    used, running = _counts(store)
    return StudyState(store=store, used=used, running=running)


#: trains a batch of runs, with the epoch hook of its trials (``None``: no hook)
BatchRunner = Callable[[Sequence[RunSpec], PruningHook | None], Any]


def search(stores: Sequence[StudyStore], options: ExecOptions, log: Callable[[str], None],
           execute_batch: BatchRunner | None = None) -> list[StudyState]:
    """Run trials until every study has used its budget, or what is left is being trained by other processes.

    Each round asks every unfinished study for ``parallel`` trials (see :class:`TuneSettings`) and executes them
    together, so trials of studies on one pair train in one cohort on one teacher pass, and an executor with
    several workers trains the cohorts at once. The trials of studies that prune go with a :class:`PruningHook`.

    Args:
        stores: the studies.
        options: where and how runs execute.
        log: where one-line notes go.
        execute_batch: trains a batch of runs with an epoch hook (default: :func:`kdbench.engine.execute` in this
            process).
    """
    results = Path(options.results)
    run_batch = execute_batch or _local_executor(options)
    while True:
        batch: list[RunSpec] = []
        refs: dict[str, TrialRef] = {}
        for store in stores:
            for run_id, (spec, number) in _sync(store, results, ask=store.plan.settings.parallel).items():
                batch.append(spec)
                if store.plan.settings.prune:
                    refs[run_id] = TrialRef(str(store.journal), store.plan.name, number, store.plan.settings)
        if not batch:
            break
        run_batch(batch, PruningHook(refs) if refs else None)
        if not any(read_record(results, s.run_id) is not None for s in batch):
            log("tune: the remaining trials are being trained by other processes; leaving them to those")
            break
    for store in stores:
        _sync(store, results, ask=0)
    return [_state(store) for store in stores]


def _local_executor(options: ExecOptions) -> BatchRunner:
    """A batch runner that trains in this process (:func:`kdbench.engine.execute`)."""

    def run(specs: Sequence[RunSpec], hook: PruningHook | None) -> Any:
        return execute(specs, dataclasses.replace(options, epoch_hook=hook))

    return run


# ---------------------------------------------------------------------------------------------------------------
# Best configuration, final runs and the study summary


def best_trial(store: StudyStore) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the highest validation top-1 (the earliest among equals)."""
    from optuna.trial import TrialState

    done = [t for t in store.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]
    if not done:
        return None
    return max(done, key=lambda t: (t.value, -t.number))


def final_specs(store: StudyStore) -> tuple[list[RunSpec], list[RunSpec]]:
    """The best configuration with the final seeds on test, and the default configuration's runs (if asked)."""
    best = best_trial(store)
    plan = store.plan
    tuned = []
    if best is not None:
        params = store.params_of(best.params)
        assert params is not None
        tuned = [plan.run_spec(params, seed, "test") for seed in plan.seeds]
    defaults = plan.default_run_specs() if plan.settings.defaults else []
    return tuned, defaults


def study_summary(store: StudyStore, results: Path) -> dict[str, Any]:
    """Everything the report needs about a study: space, budget, trials in order, best, final and default runs."""
    plan = store.plan
    trials = []
    for trial in sorted(store.study.get_trials(deepcopy=False), key=lambda t: t.number):
        spec = store.spec_of(trial.params)
        record = read_record(results, spec.run_id) if spec is not None else None
        trials.append({"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
                       "params": store.params_of(trial.params), "run_id": spec.run_id if spec else None,
                       "used": _used(trial, plan.space), "finished_at": record.get("created_at") if record else None,
                       "epochs": None if trial.last_step is None else trial.last_step + 1})
    best = best_trial(store)
    tuned, defaults = final_specs(store)
    state = _state(store)
    return {
        "study": plan.name, "dataset": plan.dataset, "teacher": plan.pair.teacher, "student": plan.pair.student,
        "method": plan.method, "label": plan.label, "fixed": dict(plan.fixed),
        "budget": json.loads(_json_text(plan.budget)), "space": [p.as_dict() for p in plan.space],
        "sampler": "optuna TPE (multivariate)", "sampler_seed": plan.settings.seed,
        "startup_trials": plan.settings.startup, "trial_seed": plan.settings.trial_seed,
        "pruner": pruner_settings(plan.settings), "trials_pruned": sum(t["state"] == "pruned" for t in trials),
        "trials_requested": plan.settings.trials, "trials_used": state.used, "trials_running": state.running,
        "complete": state.done, "trials": trials,
        "best": None if best is None else {"number": best.number, "value": best.value,
                                           "params": store.params_of(best.params)},
        "seeds": list(plan.seeds), "final_run_ids": [s.run_id for s in tuned] if state.done else [],
        "default_run_ids": [s.run_id for s in defaults],
    }


def write_summary(store: StudyStore, results: Path) -> dict[str, Any]:
    """Write ``<results>/tuning/<study>.json`` atomically and return it."""
    summary = study_summary(store, results)
    atomic_write_text(store.summary_path, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return summary


def load_summaries(results: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The study summaries of a results store (``[]`` when it has none)."""
    folder = Path(results) / TUNING_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "study" in data:
            out.append(data)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole command


@dataclass
class TuneOutcome:
    """What :func:`run_tune` did: the study summaries and the runs that are not finished."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def all_trial_specs(stores: Sequence[StudyStore]) -> list[RunSpec]:
    """Every trial run the studies have asked for so far (for the plan)."""
    specs = {}
    for store in stores:
        for trial in store.study.get_trials(deepcopy=False):
            spec = store.spec_of(trial.params)
            if spec is not None:
                specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def run_tune(plans: Sequence[StudyPlan], options: ExecOptions, log: Callable[[str], None] = lambda line: None,
             execute_batch: BatchRunner | None = None) -> TuneOutcome:
    """Search every study, then train the best and default configurations with the final seeds, on test.

    The final runs of a study start only when all its trials are finished, and only after this process's search
    is over, so no run of this process reads the test split while it is still choosing configurations.

    Args:
        plans: the studies.
        options: where and how runs execute.
        log: where one-line notes go.
        execute_batch: trains a batch of runs with an epoch hook (default: :func:`kdbench.engine.execute` in this
            process; the command passes the Ray executor's for ``--executor ray``).
    """
    results = Path(options.results)
    run_batch = execute_batch or _local_executor(options)
    stores = [StudyStore(results, plan) for plan in plans]
    states = search(stores, options, log, run_batch)
    for store in stores:
        write_summary(store, results)
    finals: list[RunSpec] = []
    outcome = TuneOutcome()
    for state in states:
        if not state.done:
            outcome.unfinished.append(f"{state.store.plan.name}: {state.used} of {state.store.plan.settings.trials} "
                                      f"trials finished, {state.running} running in another process")
            continue
        tuned, defaults = final_specs(state.store)
        finals.extend(tuned + defaults)
    if finals:
        run_batch(list({s.run_id: s for s in finals}.values()), None)  # final runs are never pruned
    outcome.summaries = [write_summary(store, results) for store in stores]
    return outcome
