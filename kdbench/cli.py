"""The ``kdbench`` command: ``run`` (the quick start with no arguments), ``list``, and the other subcommands.

Every problem the user can fix is reported as one line, ``kdbench: error: ...``, with exit code 2, before
anything is written to the results store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from kdbench.errors import ConfigError, KDBenchError

# The quick start: what `kdbench run` does with no arguments.
QUICKSTART = {
    "dataset": "mnist5k",
    "teacher": "resnet18",
    "student": "mobilenetv3_small_050",
    "seeds": [0],
    "epochs": 5,
    "teacher_epochs": 5,
    "batch_size": 128,
    "lr": 0.05,
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``kdbench <cmd>: error: <message>`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def _key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (got {item!r})")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------------------------
# kdbench run


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``run`` subcommand: one teacher/student pair, several methods and seeds."""
    q = QUICKSTART
    p = subparsers.add_parser(
        "run", help="train and evaluate methods on one teacher/student pair (no arguments: the quick start)",
        description="Train every asked-for method (default: every registered method) on one teacher/student pair "
                    "for each seed, record each run in the results store and print a leaderboard. Runs already in "
                    "the store are not trained again. With no arguments this is the quick start: "
                    f"{q['dataset']}, {q['teacher']} -> {q['student']}.",
    )
    p.add_argument("--dataset", default=q["dataset"], help="registered dataset (default: %(default)s)")
    p.add_argument("--teacher", default=q["teacher"], help="teacher: any timm model name (default: %(default)s)")
    p.add_argument("--student", default=q["student"], help="student: any timm model name (default: %(default)s)")
    p.add_argument("--method", action="append", dest="methods", metavar="NAME",
                   help="method to run; repeatable (default: every registered method)")
    p.add_argument("--seeds", nargs="+", type=int, default=q["seeds"], metavar="N",
                   help="student seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=q["epochs"], help="student epochs (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=q["teacher_epochs"],
                   help="epochs of a teacher kdbench trains (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=q["batch_size"], help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=q["lr"], help="peak learning rate of SGD (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default: %(default)s)")
    p.add_argument("--schedule", choices=["cosine", "multistep"], default="cosine",
                   help="learning-rate schedule (default: %(default)s)")
    p.add_argument("--milestones", nargs="+", type=int, default=[], metavar="EPOCH",
                   help="multistep: epochs at which the learning rate decays")
    p.add_argument("--lr-decay", type=float, default=0.1, help="multistep decay factor (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training split held out for validation; 0 for none (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize inputs to this square size (default: the dataset's own)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --data-option size=32 for synthetic; repeatable")
    p.add_argument("--teacher-lr", type=float, default=None,
                   help="peak learning rate of a teacher kdbench trains (default: --lr)")
    p.add_argument("--teacher-seed", type=int, default=0, help="seed of a teacher kdbench trains (default: 0)")
    p.add_argument("--teacher-ckpt", metavar="PATH", help="load the teacher from this checkpoint (weights only)")
    p.add_argument("--teacher-pretrained", action="store_true",
                   help="use timm's pretrained weights for the teacher (needs the weight hub)")
    p.add_argument("--teacher-cache", type=Path, metavar="DIR",
                   help="where trained teachers are cached (default: RESULTS/teachers)")
    p.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                   help="results store (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="METHOD.PARAM=VALUE",
                   help="override a method hyperparameter, e.g. --set kd.temperature=2; repeatable")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load method plugins from a Python file; repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--data-root", metavar="DIR", help="root of file-based datasets (default: $KDBENCH_DATA)")
    p.add_argument("--download", action="store_true", help="download CIFAR when it is missing")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for teacher and students")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--no-cohort", action="store_true",
                   help="train runs one at a time instead of sharing each teacher pass")
    p.add_argument("--max-cohort", type=_positive_int, default=8,
                   help="the most runs trained together on one teacher pass (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs whose record says failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)
    return p


def build_run_specs(args: argparse.Namespace) -> list[Any]:
    """The run specs an invocation of ``kdbench run`` asks for, fully validated."""
    from kdbench.config import parse_set_overrides
    from kdbench.data import DATASETS, DataConfig, describe_dataset
    from kdbench.distiller import get_method, list_methods, load_plugin_file
    from kdbench.plan import expand

    for plugin in args.plugin:
        load_plugin_file(plugin)
    DATASETS.get(args.dataset)
    data_options = _parse_data_options(args.data_option)
    describe_dataset(DataConfig(name=args.dataset, root=args.data_root, download=args.download,
                                val_fraction=args.val_fraction, image_size=args.image_size,
                                options=data_options))
    methods = args.methods or list_methods()
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
    return expand(
        dataset=args.dataset, pairs=[(args.teacher, args.student)],
        methods={name: overrides.get(name, {}) for name in dict.fromkeys(methods)}, seeds=args.seeds, grid=False,
        teacher_ckpts={args.teacher: args.teacher_ckpt} if args.teacher_ckpt else None,
        teacher_pretrained=args.teacher_pretrained,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, milestones=tuple(args.milestones),
        lr_decay=args.lr_decay, warmup_epochs=args.warmup_epochs, teacher_epochs=args.teacher_epochs,
        teacher_lr=args.teacher_lr,
        teacher_seed=args.teacher_seed, val_fraction=args.val_fraction, image_size=args.image_size,
        data_options=data_options, amp=args.amp, channels_last=args.channels_last,
    )


def _parse_data_options(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    return {k: yaml.safe_load(v) for k, v in _key_values(items, "--data-option").items()}


def exec_options(args: argparse.Namespace) -> Any:
    """Execution options shared by ``run`` and ``sweep``."""
    from kdbench.engine import ExecOptions

    return ExecOptions(results=args.results, teacher_cache=args.teacher_cache, device=args.device,
                       data_root=args.data_root, download=args.download, cohort=not args.no_cohort,
                       max_cohort=args.max_cohort, retry_failed=args.retry_failed, progress=not args.no_progress)


def cmd_run(args: argparse.Namespace) -> int:
    """``kdbench run``: plan, train what is not done, print the leaderboard."""
    from kdbench.engine import execute, make_plan
    from kdbench.env import resolve_device
    from kdbench.report import console_leaderboard
    from kdbench.results import records_frame

    specs = build_run_specs(args)
    options = exec_options(args)
    resolve_device(options.device)
    plan = make_plan(specs, options)
    print(f"kdbench: {len(specs)} runs: {len(plan.pending)} to train, {len(plan.done)} already done"
          + (f", {len(plan.failed)} failed before (use --retry-failed to run them again)" if plan.failed else ""),
          file=sys.stderr)
    records = execute(specs, options)
    print(console_leaderboard(records_frame(records)))
    failed = [r for r in records if r.get("status") != "ok"]
    return 1 if failed and len(failed) == len(records) else 0


# ---------------------------------------------------------------------------------------------------------------
# kdbench list


def add_list_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``list`` subcommand."""
    p = subparsers.add_parser("list", help="list registered methods, datasets or models",
                              description="List registered methods, datasets or timm models (the CIFAR zoo "
                                          "included), optionally filtered by a glob pattern such as '*kd*'.")
    p.add_argument("what", choices=["methods", "datasets", "models"])
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'cifar_*'")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load method plugins first")
    p.set_defaults(handler=cmd_list)
    return p


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def cmd_list(args: argparse.Namespace) -> int:
    """``kdbench list``."""
    if args.what == "methods":
        from kdbench.distiller import get_method, list_methods, load_plugin_file

        for plugin in args.plugin:
            load_plugin_file(plugin)
        for name in list_methods(args.pattern):
            cls = get_method(name)
            teacher = "no teacher" if not cls.needs_teacher else "teacher"
            if cls.teacher_source == "self":
                teacher = "self-teacher"
            print(f"{name:<12} {teacher:<13} {_first_line(cls.__doc__)}")
    elif args.what == "datasets":
        from kdbench.data import DATASETS

        for name in DATASETS.names(args.pattern):
            print(f"{name:<12} {_first_line(type(DATASETS.get(name)).__doc__)}")
    else:
        import timm

        for name in timm.list_models(args.pattern or "*"):
            print(name)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# main


def _add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    from kdbench.bench import add_bench_parser

    return add_bench_parser(subparsers)


def _add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    from kdbench.report.command import add_report_parser

    return add_report_parser(subparsers)


def _add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    from kdbench.sweep import add_sweep_parser

    return add_sweep_parser(subparsers)


SUBCOMMANDS: list[Callable[[Any], argparse.ArgumentParser]] = [
    add_run_parser, add_list_parser, _add_bench_parser, _add_report_parser, _add_sweep_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``kdbench`` argument parser."""
    import kdbench

    parser = OneLineParser(prog="kdbench", description="A benchmark suite for knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"kdbench {kdbench.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdbench`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # the quick start
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse's own exits (--help, --version, a bad flag), as a return code
        return int(done.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KDBenchError as err:
        print(f"kdbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; finished runs are saved, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
