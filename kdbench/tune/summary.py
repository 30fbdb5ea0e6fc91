"""Best configuration, final runs and the study summary (``<results>/tuning/<study>.json``, read by the report)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.config import RunSpec
from kdbench.results import read_record
from kdbench.store import Store, atomic_write_text
from kdbench.tune.journal import pruner_settings
from kdbench.tune.studies import StudyStore, _json_text, _state, _used

if TYPE_CHECKING:
    import optuna


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
    """Write the study's summary file atomically and return it."""
    summary = study_summary(store, results)
    atomic_write_text(store.summary_path, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return summary


def load_summaries(results: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The study summaries of a results store (``[]`` when it has none)."""
    out = []
    for path in Store(results).study_summaries():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "study" in data:
            out.append(data)
    return out
