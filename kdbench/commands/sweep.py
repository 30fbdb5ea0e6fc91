"""``kdbench sweep``: check a sweep spec, print its plan (``--dry-run``) or train what is not done; the leaderboard.

The spec itself (its keys, checks and expansion into runs) is :mod:`kdbench.sweep`; this module is the command: its
flags, the execution settings (a flag wins over the spec, the spec over the defaults) and the plan in words.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench import distributed
from kdbench.commands.common import add_execution_flags, add_store_flags, exec_options_from, execution_flags
from kdbench.config import RunSpec, build_params, method_label
from kdbench.distiller import get_method
from kdbench.distributed import world_from_env
from kdbench.env import resolve_device
from kdbench.errors import ConfigError
from kdbench.executors import EXECUTORS, import_ray, import_submitit
from kdbench.options import ExecOptions, Resources
from kdbench.plan import Plan, make_plan
from kdbench.report.console import console_leaderboard
from kdbench.results import check_writable, records_frame
from kdbench.scheduler import Placement, schedule
from kdbench.store import Store
from kdbench.sweep import (
    EXECUTION_DEFAULTS,
    EXECUTION_KEYS,
    ExecutionSettings,
    SpecError,
    SweepSpec,
    check_sweep_data,
    expand_sweep,
    load_sweep_spec,
    packaged_configs,
)
from kdbench.teachers import teacher_cached, teacher_key
from kdbench.trackers import check_trackers

# ---------------------------------------------------------------------------------------------------------------
# The plan, in words


def teacher_status(specs: Sequence[RunSpec], plan: Plan, teacher_dir: Path) -> list[dict[str, Any]]:
    """Every teacher kdbench trains for ``specs``: its key, model, budget, state and how many runs need it.

    ``state`` is ``cached`` (a complete cache entry whose hash matches), ``to train`` (pending runs need it) or
    ``not needed`` (its runs are done).
    """
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
    cache = Store.of(options).teachers.folder
    teachers = teacher_status(specs, plan, cache)
    counts = {state: sum(t["state"] == state for t in teachers) for state in ("to train", "cached", "not needed")}
    lines.append(f"teachers (cache {cache}): {counts['to train']} to train, {counts['cached']} cached"
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
    cls = get_method(run.method)
    name = method_label(run.method, build_params(cls.Params, run.method_params, run.method), cls.Params)
    return f"{name:<16} {run.teacher or 'none'} -> {run.student}  seed {run.seed}"


# ---------------------------------------------------------------------------------------------------------------
# kdbench sweep


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``subparsers``; its handler is :func:`cmd_sweep`."""
    p = subparsers.add_parser(
        "sweep", help="run a leaderboard sweep from a YAML spec (pairs x methods x grids x seeds); resumable",
        description="Expand a sweep spec (plain YAML; keys as the flags of `kdbench run`) into runs, train every "
                    "run that is not in the results store yet, and print the leaderboard. Interrupt it at any "
                    "moment and run the same command again to continue. SPEC is a YAML file or the name of a "
                    "shipped spec (see --list-configs).",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec: a YAML file or a shipped spec's name")
    p.add_argument("--executor", choices=EXECUTORS.names(), default="local",
                   help="where runs execute: this process, or tasks on a Ray cluster (default: %(default)s)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to connect to (default: $RAY_ADDRESS, else the cluster started on this "
                        "machine, else a new local one)")
    p.add_argument("--num-cpus", type=float, metavar="N",
                   help=f"CPUs per Ray task (default: the spec's, else {EXECUTION_DEFAULTS['num_cpus']:g})")
    p.add_argument("--num-gpus", type=float, metavar="N",
                   help=f"GPUs per Ray task (default: the spec's, else {EXECUTION_DEFAULTS['num_gpus']:g})")
    p.add_argument("--gpus-per-run", type=int, default=1, metavar="N",
                   help="--executor ray: train each cohort data-parallel on N Ray Train workers, one GPU each "
                        "(CPU workers with --device cpu) (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, teachers to train, what is done) and train nothing")
    add_store_flags(p, from_spec=True)
    add_execution_flags(p, from_spec=True)
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
    gpus_per_run: int = 1


def execution_settings(spec: SweepSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The execution keys: a command-line flag wins over the spec, the spec over the defaults of ``kdbench run``."""
    settings = {key: spec.execution.get(key, EXECUTION_DEFAULTS[key]) for key in EXECUTION_KEYS}
    flags = {**execution_flags(args), "cohort": False if args.no_cohort else None, "num_cpus": args.num_cpus,
             "num_gpus": args.num_gpus}
    settings.update({key: flags[key] for key in EXECUTION_KEYS if flags.get(key) is not None})
    if settings["data_root"] is not None and args.data_root is not None:
        settings["data_root"] = str(Path(args.data_root).expanduser().resolve())
    problems = ExecutionSettings(**settings).problems()
    if problems:
        raise ConfigError(problems[0])
    return settings


def prepare_sweep(args: argparse.Namespace) -> SweepSetup:
    """Read, check and expand the spec; build the execution options. Writes nothing.

    Raises:
        SpecError: the spec's problems (all of them) or its data's.
        ConfigError: a bad flag.
    """
    if world_from_env().size > 1 and args.executor != "local":
        hint = " (--gpus-per-run N trains each cohort data-parallel on N Ray workers)" if args.executor == "ray" else ""
        raise ConfigError(f"--executor {args.executor} does not run under torchrun: launch `kdbench sweep --executor "
                          f"{args.executor}` once, without torchrun{hint}; under torchrun only the local executor "
                          "runs (every rank trains each cohort data-parallel)")
    spec = load_sweep_spec(args.spec, extra_plugins=args.plugin)
    settings = execution_settings(spec, args)
    check_trackers(args.trackers)
    check_sweep_data(spec, settings["data_root"], settings["download"])
    runs = expand_sweep(spec, settings["data_root"])
    distributed.check_batch_sizes([run.batch_size for run in runs])
    if args.executor == "local":
        resolve_device(settings["device"])
    elif args.executor == "ray":
        import_ray()
    elif args.executor == "slurm":
        import_submitit()
    if args.gpus_per_run < 1 or (args.gpus_per_run > 1 and args.executor != "ray"):
        raise ConfigError(f"--gpus-per-run must be >= 1 and needs --executor ray above 1 (got {args.gpus_per_run})")
    distributed.check_batch_sizes([run.batch_size for run in runs], args.gpus_per_run, "--gpus-per-run asks for")
    options = exec_options_from({**settings, "trackers": tuple(dict.fromkeys(args.trackers))}, args)
    return SweepSetup(spec=spec, runs=runs, options=options, executor=args.executor, num_cpus=settings["num_cpus"],
                      num_gpus=settings["num_gpus"], ray_address=args.ray_address, gpus_per_run=args.gpus_per_run)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``kdbench sweep``: check the spec, print the plan, execute what is not done, print the leaderboard.

    Under torchrun every rank runs it and returns the same exit code; rank 0 alone prints (see
    :class:`~kdbench.executors.LocalExecutor`).
    """
    main = world_from_env().rank == 0
    if args.list_configs:
        for name, description in packaged_configs().items() if main else ():
            print(f"{name:<16} {description}")
        return 0
    if not args.spec:
        raise ConfigError("name a sweep spec: kdbench sweep SPEC.yaml (or a shipped spec, see --list-configs)")
    try:
        setup = prepare_sweep(args)
    except SpecError as err:
        for line in err.lines if main else ():
            print(f"kdbench: error: {line}", file=sys.stderr)
        return 2
    plan = make_plan(setup.runs, setup.options)
    if args.dry_run:
        if main:
            print("\n".join(describe_plan(setup.spec, setup.runs, plan, setup.options)))
        return 0
    if plan.pending:
        check_writable(setup.options.results)  # before any training: a store that cannot take the records
    return execute_sweep(setup, plan)


def execute_sweep(setup: SweepSetup, plan: Plan, write: Callable[[str], None] | None = None) -> int:
    """Train the plan's pending cohorts with the chosen executor; print the outcome and the leaderboard.

    Under torchrun (the local executor) rank 0 alone prints, and every rank returns the same code.

    Returns:
        0 when every run of the sweep is ``ok`` (or still being trained by another process), else 1.
    """
    main = world_from_env().rank == 0
    note = (write or (lambda line: print(f"kdbench: {line}", file=sys.stderr))) if main else (lambda line: None)
    teachers = teacher_status(setup.runs, plan, Store.of(setup.options).teachers.folder)
    to_train = [t for t in teachers if t["state"] == "to train"]
    note(plan_headline(setup.spec, setup.runs, plan)
         + (f"; {len(to_train)} teacher{'s' * (len(to_train) != 1)} to train" if to_train else ""))
    placement = Placement(executor=setup.executor, plugins=tuple(setup.spec.plugins),
                          resources=Resources(num_cpus=setup.num_cpus, num_gpus=setup.num_gpus,
                                              ray_address=setup.ray_address, gpus_per_run=setup.gpus_per_run))
    outcome = schedule(setup.runs, setup.options, placement, plan=plan)
    records = outcome.records
    ok = sum(r.get("status") == "ok" for r in records)
    pruned = sum(r.get("status") == "pruned" for r in records)  # a tuning trial's record, stopped early: finished
    failed = len(records) - ok - pruned
    missing = len(setup.runs) - len(records)
    summary = f"sweep {setup.spec.source}: {ok} of {len(setup.runs)} runs ok"
    if failed:
        summary += f", {failed} failed (kdbench sweep --retry-failed runs them again)"
    if pruned:
        summary += f", {pruned} pruned by kdbench tune (stopped early, never trained again)"
    if missing:
        summary += (f", {missing} not finished (claimed by another process, or skipped after a teacher failed; "
                    "run the same command again to continue)")
    for problem in outcome.problems:
        note(f"error: {problem}")
    note(summary)
    if records and main:
        print(console_leaderboard(records_frame(records)))
    return 1 if failed or outcome.problems else 0
