"""Studies: one per (pair, method entry) of a tune spec, planned, stored in ``<results>/tuning/``, and counted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.config import RunSpec, build_params, method_label, params_dict
from kdbench.distiller import get_method
from kdbench.errors import KDBenchError
from kdbench.plan import checkpoint_sha256, make_spec
from kdbench.store import Store
from kdbench.sweep import PairEntry, SpecError
from kdbench.tune.journal import open_study, pruner_settings
from kdbench.tune.space import SearchParam, harness_search_space, method_search_space
from kdbench.tune.spec import TuneSettings, TuneSpec

if TYPE_CHECKING:
    import optuna




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


class StudyStore:
    """The Optuna study of one :class:`StudyPlan` in ``<results>/tuning/``.

    Args:
        results: the results store.
        plan: the study.
    """

    def __init__(self, results: Path, plan: StudyPlan) -> None:
        self.plan = plan
        files = Store(results).study(plan.name)
        files.journal.parent.mkdir(parents=True, exist_ok=True)
        self.journal, self.summary_path, self.lock = files.journal, files.summary, files.lock
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


def _counts(store: StudyStore) -> tuple[int, int]:
    """``(used, running)`` trials of a study."""
    from optuna.trial import TrialState

    trials = store.study.get_trials(deepcopy=False)
    return (sum(_used(t, store.plan.space) for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials))


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
