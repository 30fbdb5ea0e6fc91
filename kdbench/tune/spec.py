"""The tune spec: a sweep spec (:mod:`kdbench.sweep`) with a ``tune:`` section, read and checked."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.config import coerce_value
from kdbench.errors import ConfigError
from kdbench.sweep import SpecError, SweepSpec, parse_sweep_spec, read_spec_data

#: keys of a spec's ``tune:`` section and their types
TUNE_KEYS: dict[str, Any] = {"trials": int, "seed": int, "trial_seed": int, "lr": tuple[float, ...],
                             "weight_decay": tuple[float, ...], "startup_trials": int | None,
                             "defaults_first": bool, "defaults": bool, "parallel": int, "prune": bool,
                             "prune_warmup": int}


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
