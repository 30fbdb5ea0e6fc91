"""``kdbench tune``: every method of a spec tuned with the same number of trials on the validation split.

The spec (a sweep spec with a ``tune:`` section), the studies and the search are :mod:`kdbench.tune`; this module
is the command: its flags, the plan in words (``--dry-run``) and the leaderboard of default and tuned rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdbench.commands.common import add_execution_flags, add_store_flags, exec_options_from, positive_int
from kdbench.errors import ConfigError
from kdbench.executors import EXECUTORS
from kdbench.sweep import EXECUTION_DEFAULTS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to ``subparsers``; its handler is :func:`cmd_tune`."""
    p = subparsers.add_parser(
        "tune", help="tune every method of a spec with the same number of trials on the validation split; "
                     "resumable",
        description="For each pair and method of the spec, run the same number of trials (Optuna TPE over the "
                    "method's declared search space plus lr and weight decay), each an ordinary run scored on the "
                    "validation split; then train the best configuration (and the default one) with the spec's "
                    "seeds and report both on test. SPEC is a sweep spec with a `tune:` section. Interrupt it at "
                    "any moment and run the same command again to continue.",
    )
    p.add_argument("spec", metavar="SPEC", help="tune spec: a YAML file (a sweep spec with a tune: section)")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="trials per pair and method (default: the spec's tune.trials, else 12)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                   help="stop trials early whose validation top-1 trails the median of the complete trials at the "
                        "same epoch (Optuna's MedianPruner; a pruned trial counts as one trial); a study with "
                        "pruning is another study than one without (default: the spec's tune.prune, else off)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the studies, their search spaces, trials done and the runs still to train; "
                        "train nothing")
    p.add_argument("--executor", choices=EXECUTORS.names(), default="local",
                   help="where each round of trials (and the final runs) trains: this process, or tasks on a Ray "
                        "cluster (default: %(default)s)")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to connect to (as for kdbench sweep)")
    p.add_argument("--num-cpus", type=float, metavar="N",
                   help=f"CPUs per Ray task (default: the spec's, else {EXECUTION_DEFAULTS['num_cpus']:g})")
    p.add_argument("--num-gpus", type=float, metavar="N",
                   help=f"GPUs per Ray task (default: the spec's, else {EXECUTION_DEFAULTS['num_gpus']:g})")
    add_store_flags(p, from_spec=True)
    add_execution_flags(p, from_spec=True)
    p.set_defaults(handler=cmd_tune)
    return p


def _setup(spec: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The execution options and settings (a flag wins over the spec, the spec over the defaults)."""
    from kdbench.commands.sweep import execution_settings
    from kdbench.env import resolve_device
    from kdbench.executors import import_ray
    from kdbench.sweep import check_sweep_data

    settings = execution_settings(spec.sweep, args)
    check_sweep_data(spec.sweep, settings["data_root"], settings["download"])
    if args.executor == "ray":
        import_ray()
    else:
        resolve_device(settings["device"])
    options = exec_options_from(settings, args)
    return options, settings


def describe_studies(plans: list[Any], results: Path) -> list[str]:
    """The ``--dry-run`` report: per study its search space, trials used so far and what remains, and the cost."""
    from kdbench.tune import load_summaries

    done = {s["study"]: s for s in load_summaries(results)}
    lines = []
    total_trials = total_finals = 0
    for plan in plans:
        settings = plan.settings
        summary = done.get(plan.name, {})
        used = summary.get("trials_used", 0)
        finals = len(plan.seeds) * (2 if settings.defaults else 1)
        total_trials += max(0, settings.trials - used)
        total_finals += finals
        teacher = plan.pair.teacher or "none"
        lines.append(f"{plan.name}: {plan.label} on {teacher} -> {plan.pair.student}: {used} of {settings.trials} "
                     f"trials done; then {len(plan.seeds)} final seed{'s' * (len(plan.seeds) != 1)}"
                     + (" (best and default configurations)" if settings.defaults else ""))
        lines.append("  searches " + ", ".join(p.describe() for p in plan.space))
        if settings.prune:
            lines.append(f"  prunes (median rule) after epoch {settings.prune_warmup + 1} at the earliest, with "
                         f"at least {settings.startup} complete trial{'s' * (settings.startup != 1)} to compare with "
                         f"({summary.get('trials_pruned', 0)} pruned so far)")
    lines.insert(0, f"tune: {len(plans)} stud{'ies' if len(plans) != 1 else 'y'}; at most {total_trials} trial "
                    f"runs and {total_finals} final runs still to train (runs already in the store are reused)")
    return lines


def _note(line: str) -> None:
    print(f"kdbench: {line}", file=sys.stderr)


def cmd_tune(args: argparse.Namespace) -> int:
    """``kdbench tune``: check the spec, search every study, train the final runs, print the leaderboard."""
    from kdbench.distributed import world_from_env
    from kdbench.options import Resources
    from kdbench.scheduler import Placement
    from kdbench.sweep import SpecError
    from kdbench.tune import import_optuna, load_tune_spec, plan_studies, run_tune

    if world_from_env().size > 1:
        raise ConfigError("kdbench tune does not run under torchrun (its trials are many small runs): run it without "
                          "torchrun, in one process (--executor ray spreads the trials over a cluster's GPUs)")
    import_optuna()
    try:
        spec = load_tune_spec(args.spec, extra_plugins=args.plugin, trials=args.trials, prune=args.prune)
        options, settings = _setup(spec, args)  # checks the data first: its fingerprint enters the studies
        plans = plan_studies(spec, settings["data_root"])
    except SpecError as err:
        for line in err.lines:
            print(f"kdbench: error: {line}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(describe_studies(plans, options.results)))
        return 0
    if not plans:
        raise ConfigError(f"{args.spec}: no study to run")
    from kdbench.results import check_writable

    check_writable(options.results)
    placement = Placement(executor=args.executor, plugins=tuple(spec.sweep.plugins),
                          resources=Resources(num_cpus=settings["num_cpus"], num_gpus=settings["num_gpus"],
                                              ray_address=args.ray_address))
    outcome = run_tune(plans, options, log=_note, placement=placement)
    for line in outcome.unfinished:
        _note(f"not finished: {line}; run the same command again to continue")
    return _print_leaderboard(outcome.summaries, options.results)


def _print_leaderboard(summaries: list[dict[str, Any]], results: Path) -> int:
    """Print the default and tuned rows of the studies and each study's best configuration.

    Returns:
        1 when a final run failed, else 0 (as for ``kdbench sweep``, trials or final runs still being trained by
        another process are not a failure: run the command again after it).
    """
    from kdbench.report.console import console_leaderboard
    from kdbench.report.tuning import with_tuning
    from kdbench.results import read_record, records_frame

    ids = [r for s in summaries for r in (s.get("default_run_ids") or []) + (s.get("final_run_ids") or [])]
    records = [r for r in (read_record(results, run_id) for run_id in dict.fromkeys(ids)) if r is not None]
    failed = sum(r.get("status") != "ok" for r in records)
    if records:
        print(console_leaderboard(with_tuning(records_frame(records), summaries)))
    for s in summaries:
        best = s.get("best") or {}
        value = best.get("value")
        pruned = f" ({s['trials_pruned']} pruned)" if s.get("trials_pruned") else ""
        print(f"{s['label']} on {s.get('teacher') or 'none'} -> {s['student']}: {s['trials_used']} of "
              f"{s['trials_requested']} trials{pruned}, best validation top-1 "
              + (f"{value:.2f}%" if value is not None else "—") + f" with {_params(best.get('params'))}")
    return 1 if failed else 0


def _params(params: dict[str, Any] | None) -> str:
    from kdbench.report.tuning import params_text

    return params_text(params)
