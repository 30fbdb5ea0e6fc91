"""``kdbench run``: one teacher/student pair, several methods and seeds; with no arguments, the quick start.

The training-budget flags take their defaults from :class:`kdbench.config.RunSpec`'s fields, the execution flags
from :class:`kdbench.options.ExecOptions`'s, so a run asked for on the command line, in a sweep spec or in code
means the same thing where it leaves a setting out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdbench.commands.common import (
    add_execution_flags,
    add_store_flags,
    exec_options_from,
    execution_flags,
    key_values,
)
from kdbench.config import OPTIMIZERS, SCHEDULES, RunSpec, dataclass_defaults, parse_set_overrides
from kdbench.data import DATASETS, DataConfig, describe_dataset
from kdbench.distiller import get_method, list_methods, load_plugin_file
from kdbench.distributed import check_batch_sizes, world_from_env
from kdbench.env import resolve_device
from kdbench.errors import ConfigError, KDBenchError
from kdbench.options import ExecOptions
from kdbench.plan import expand, make_plan
from kdbench.report.console import console_leaderboard
from kdbench.results import check_writable, records_frame
from kdbench.scheduler import schedule
from kdbench.store import Store
from kdbench.teachers import read_state_dict
from kdbench.trackers import check_trackers

#: the defaults of a run's settings: :class:`RunSpec`'s fields
RUN_DEFAULTS = dataclass_defaults(RunSpec)

#: the quick start: what ``kdbench run`` trains with no arguments. Its pair, methods and seeds are the defaults of
#: ``--teacher``, ``--student``, ``--method`` and ``--seeds``; its budget applies when ``--dataset`` is not given
#: (a flag given explicitly wins), and RunSpec's defaults otherwise.
QUICKSTART: dict[str, Any] = {
    "dataset": "mnist5k",
    "teacher": "cifar_resnet20",
    "student": "cifar_resnet8",
    "methods": ("ce", "kd", "dkd"),
    "seeds": (0, 1, 2),
    "budget": {"image_size": 16, "epochs": 8, "batch_size": 64, "lr": 0.1, "warmup_epochs": 1,
               "teacher_epochs": 10},
}
ALL_METHODS = "all"


def apply_quickstart(args: argparse.Namespace) -> None:
    """Fill the settings left unset: the quick start's budget without ``--dataset``, RunSpec's defaults with it."""
    quick = args.dataset is None
    if quick:
        args.dataset = QUICKSTART["dataset"]
    for name, value in QUICKSTART["budget"].items():
        if getattr(args, name) is None:
            setattr(args, name, value if quick else RUN_DEFAULTS[name])
    if args.seeds is None:
        args.seeds = list(QUICKSTART["seeds"]) if quick else [RUN_DEFAULTS["seed"]]


def requested_methods(args: argparse.Namespace) -> list[str]:
    """The methods to run: those named with ``--method`` (``all``: every registered one), else the quick start's."""
    if not args.methods:
        return list(QUICKSTART["methods"])
    if ALL_METHODS in args.methods:
        return list_methods()
    return list(args.methods)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to ``subparsers``; its handler is :func:`cmd_run`."""
    q, d, b = QUICKSTART, RUN_DEFAULTS, QUICKSTART["budget"]

    def default(name: str) -> str:
        return f"the quick start's {b[name]} without --dataset, else {d[name]}"

    p = subparsers.add_parser(
        "run", help="train and evaluate methods on one teacher/student pair (no arguments: the quick start)",
        description="Train the asked-for methods on one teacher/student pair for each seed, record each run in the "
                    "results store and print a leaderboard. Runs already in the store are not trained again. With "
                    f"no arguments this is the quick start: {q['dataset']} at {b['image_size']} px, {q['teacher']} "
                    f"-> {q['student']}, methods {', '.join(q['methods'])}, seeds {', '.join(map(str, q['seeds']))}.",
    )
    p.add_argument("--dataset", default=None, help=f"registered dataset (default: {q['dataset']}, the quick start)")
    p.add_argument("--teacher", default=q["teacher"], help="teacher: any timm model name (default: %(default)s)")
    p.add_argument("--student", default=q["student"], help="student: any timm model name (default: %(default)s)")
    p.add_argument("--method", action="append", dest="methods", metavar="NAME",
                   help=f"method to run; repeatable; 'all' for every registered method (default: the quick start's "
                        f"{', '.join(q['methods'])})")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                   help=f"student seeds (default: {' '.join(map(str, q['seeds']))} without --dataset, else "
                        f"{d['seed']})")
    p.add_argument("--epochs", type=int, default=None, help=f"student epochs (default: {default('epochs')})")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help=f"epochs of a teacher kdbench trains (default: {default('teacher_epochs')})")
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default: {default('batch_size')})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"],
                   help="optimiser: SGD with momentum, or AdamW (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {default('lr')})")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum (default: %(default)s)")
    p.add_argument("--betas", type=float, nargs=2, default=list(d["betas"]), metavar=("B1", "B2"),
                   help="AdamW's betas (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="weight decay (default: %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"],
                   help="learning-rate schedule (default: %(default)s)")
    p.add_argument("--milestones", nargs="+", type=int, default=list(d["milestones"]), metavar="EPOCH",
                   help="multistep: epochs at which the learning rate decays")
    p.add_argument("--lr-decay", type=float, default=d["lr_decay"],
                   help="multistep decay factor (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"linear warm-up epochs (default: {default('warmup_epochs')})")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"],
                   help="share of the training split held out for validation; 0 for none (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"resize inputs to this square size (default: {b['image_size']} without --dataset, else the "
                        "dataset's own)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --data-option size=32 for synthetic; repeatable")
    p.add_argument("--teacher-lr", type=float, default=d["teacher_lr"],
                   help="peak learning rate of a teacher kdbench trains (default: --lr)")
    p.add_argument("--teacher-seed", type=int, default=d["teacher_seed"],
                   help="seed of a teacher kdbench trains (default: %(default)s)")
    p.add_argument("--teacher-ckpt", metavar="PATH", help="load the teacher from this checkpoint (weights only)")
    p.add_argument("--teacher-pretrained", action="store_true",
                   help="use timm's pretrained weights for the teacher: from its hub, or from the weights file "
                        "--teacher-ckpt names")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="METHOD.PARAM=VALUE",
                   help="override a method hyperparameter, e.g. --set kd.temperature=2; repeatable")
    p.add_argument("--amp", action="store_true", default=d["amp"], help="bf16 autocast for teacher and students")
    p.add_argument("--channels-last", action="store_true", default=d["channels_last"],
                   help="channels-last memory format")
    add_store_flags(p)
    add_execution_flags(p)
    p.set_defaults(handler=cmd_run)
    return p


def build_run_specs(args: argparse.Namespace) -> list[RunSpec]:
    """The run specs an invocation of ``kdbench run`` asks for, fully validated."""
    apply_quickstart(args)
    for plugin in args.plugin:
        load_plugin_file(plugin)
    DATASETS.get(args.dataset)
    data_options = parse_data_options(args.data_option)
    describe_dataset(DataConfig(name=args.dataset, root=args.data_root, download=args.download,
                                val_fraction=args.val_fraction, image_size=args.image_size,
                                options=data_options))
    methods = requested_methods(args)
    for name in methods:
        get_method(name)
    overrides = parse_set_overrides(args.overrides)
    for name in overrides:
        if name not in methods:
            get_method(name)
            raise ConfigError(f"--set names method {name!r}, which is not among the methods run "
                              f"({', '.join(methods)})")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds lists a seed twice: {args.seeds}")
    specs = expand(
        dataset=args.dataset, pairs=[(args.teacher, args.student)],
        methods={name: overrides.get(name, {}) for name in dict.fromkeys(methods)}, seeds=args.seeds, grid=False,
        teacher_ckpts={args.teacher: args.teacher_ckpt} if args.teacher_ckpt else None,
        teacher_pretrained=args.teacher_pretrained,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, betas=tuple(args.betas), weight_decay=args.weight_decay, schedule=args.schedule,
        milestones=tuple(args.milestones), lr_decay=args.lr_decay, warmup_epochs=args.warmup_epochs,
        teacher_epochs=args.teacher_epochs, teacher_lr=args.teacher_lr, teacher_seed=args.teacher_seed,
        val_fraction=args.val_fraction, image_size=args.image_size, data_options=data_options, amp=args.amp,
        channels_last=args.channels_last, data_root=args.data_root,
    )
    if any(spec.teacher_source == "checkpoint" for spec in specs):
        read_state_dict(Path(args.teacher_ckpt))  # a file that is no state dict is one line now, not mid-run
    return specs


def check_named_methods_build(specs: Sequence[RunSpec], options: ExecOptions) -> None:
    """Build the student and the method of each run once on the CPU, before any training.

    For the methods named with ``--method``: a model that the method cannot use (a student without feature taps,
    or without DeiT's distillation token) is then the command's one-line error (exit code 2) rather than a failed
    record after the teacher trained. Teachers are built untrained, for their shapes; the RNG state is restored.
    Errors that are not the user's (:class:`~kdbench.errors.KDBenchError`) are left to the run to record.

    Raises:
        KDBenchError: a run cannot be built (the message names the model and the method).
    """
    import torch

    from kdbench.features import describe_model
    from kdbench.models import create_model
    from kdbench.training import Member

    built: set[tuple[Any, ...]] = set()
    with torch.random.fork_rng(devices=[]):
        for spec in specs:
            key = (spec.dataset, spec.image_size, spec.student, spec.teacher, spec.method, repr(spec.method_params))
            if key in built:
                continue
            built.add(key)
            try:
                info = describe_dataset(DataConfig(name=spec.dataset, root=options.data_root, download=options.download,
                                                   val_fraction=spec.val_fraction, image_size=spec.image_size,
                                                   options=dict(spec.data_options)))
                teacher_info = None
                if spec.teacher is not None and spec.teacher_source != "self":
                    teacher = create_model(spec.teacher, num_classes=info.num_classes, in_chans=info.in_chans,
                                           image_size=info.image_size)
                    teacher_info = describe_model(teacher, spec.teacher, info.in_chans, info.image_size)
                # a stand-in training set of a few samples of every class: memory banks stay small here
                small = dataclasses.replace(info, sizes={**info.sizes, "train": 2 * info.num_classes})
                labels = torch.arange(2 * info.num_classes) % info.num_classes
                Member(spec, small, teacher_info, torch.device("cpu"), train_labels=labels)
            except KDBenchError:
                raise
            except Exception:  # noqa: BLE001, S112 - not a user error: the run itself records it
                continue


def parse_data_options(items: Sequence[str]) -> dict[str, Any]:
    """``--data-option KEY=VALUE`` items as a mapping; each value is read as YAML (``32`` is an integer)."""
    return {k: yaml.safe_load(v) for k, v in key_values(items, "--data-option").items()}


def exec_options(args: argparse.Namespace) -> ExecOptions:
    """The execution options of ``kdbench run``.

    Raises:
        ConfigError: a tracker of ``--log`` whose package is missing.
    """
    check_trackers(args.trackers)
    return exec_options_from(execution_flags(args), args)


def cmd_run(args: argparse.Namespace) -> int:
    """``kdbench run``: a one-pair local sweep. Plan, train what is not done, print the leaderboard.

    Returns:
        0 when every run is ``ok``; 1 when a run failed or a teacher could not be prepared (as ``kdbench sweep``).
    """
    specs = build_run_specs(args)
    check_batch_sizes([spec.batch_size for spec in specs])
    options = exec_options(args)
    resolve_device(options.device)
    plan = make_plan(specs, options)
    if plan.pending:
        check_writable(options.results)  # before any training: a store that cannot take the records is one line
        check_named_methods_build([spec for spec in plan.pending if spec.method in (args.methods or ())], options)
    main = world_from_env().rank == 0  # under torchrun, rank 0 speaks for all
    if main:
        print(f"kdbench: {len(specs)} runs: {len(plan.pending)} to train, {len(plan.done)} already done"
              + (f", {len(plan.failed)} failed before (use --retry-failed to run them again)" if plan.failed else ""),
              file=sys.stderr)
    outcome = schedule(specs, options, plan=plan, run_bar=False)
    if main:
        for problem in outcome.problems:
            print(f"kdbench: error: {problem}", file=sys.stderr)
        if outcome.records:
            print(console_leaderboard(records_frame(outcome.records)))
        with Store(options.results).claim([spec.run_id for spec in outcome.missing]) as free:
            busy = len(outcome.missing) - len(free)  # claimed by another process on the store, which trains them
        if busy:
            print(f"kdbench: {busy} of {len(specs)} runs are being trained by another process on {options.results} "
                  f"and are not in this leaderboard; run `kdbench report --results {options.results}` when it "
                  "finishes", file=sys.stderr)
    failed = any(r["status"] == "failed" for r in outcome.records)
    return 1 if failed or outcome.problems else 0  # as a sweep: a failed run is exit code 1
