"""``kdbench export``: a run's saved student as a folder timm loads as it loads its own pretrained weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdbench.artifacts import WHICH, RunFilter, choose_run, export_student, ranking_figure
from kdbench.distiller import load_plugin_file
from kdbench.errors import ConfigError, DataError
from kdbench.results import iter_records
from kdbench.store import Store


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers``; its handler is :func:`cmd_export`."""
    p = subparsers.add_parser(
        "export", help="write a run's saved student as a folder timm loads (config.json, model.safetensors, card)",
        description="Write the student a run saved (--save-students) as the folder timm's hub push writes: "
                    "config.json, model.safetensors and a model card README.md with the run's figures. Name the "
                    "run by its id, or give a filter (--dataset, --teacher, --student, --method) to export its "
                    "best ok run: the highest test top-1 for --which last, the highest best-validation top-1 for "
                    "--which best (ties: the smallest run id). Load it with "
                    "timm.create_model('local-dir:OUT', pretrained=True).",
    )
    p.add_argument("run_id", nargs="?", default=None, help="the run to export (default: the best run of the filter)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the folder to write (it must not exist, or be empty, unless --force)")
    p.add_argument("--which", choices=WHICH, default="last",
                   help="the weights after the last epoch, or at the best validation epoch (default: %(default)s)")
    p.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                   help="results store (default: %(default)s)")
    p.add_argument("--dataset", help="choose among the runs on this dataset")
    p.add_argument("--teacher", help="choose among the runs with this teacher")
    p.add_argument("--student", help="choose among the runs with this student")
    p.add_argument("--method", help="choose among the runs of this method (its name or its label, e.g. kd(T=2))")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a Python file first (one that registers the student's architecture in timm)")
    p.add_argument("--force", action="store_true", help="replace an --out folder that is not empty")
    p.set_defaults(handler=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """``kdbench export``: find the run, check its saved student, write the folder, say where it is.

    Raises:
        ConfigError: a run id together with a filter, or a filter that matches no ok run.
        DataError: no store, an unknown run id, no saved student, or an output folder in the way.
    """
    for plugin in args.plugin:
        load_plugin_file(plugin)
    store = Store(args.results)
    if not store.runs_dir.is_dir():
        raise DataError(f"no results store at {args.results} (no {store.runs_dir} folder)")
    run_filter = RunFilter(dataset=args.dataset, teacher=args.teacher, student=args.student, method=args.method)
    records = list(iter_records(args.results))
    if args.run_id is not None:
        if run_filter != RunFilter():
            raise ConfigError("give a run id or a filter (--dataset, --teacher, --student, --method), not both")
        record = next((r for r in records if r["run_id"] == args.run_id), None)
        if record is None:
            raise DataError(f"no run {args.run_id!r} in {args.results}")
        if record.get("status") != "ok":
            raise DataError(f"run {args.run_id} ended {record.get('status')!r}; only ok runs have a student")
        chosen = ""
    else:
        record = choose_run(records, run_filter, args.which)
        figure = ranking_figure(args.which)
        chosen = f" (the best of {run_filter.describe()} by {figure}: {record[figure]:.2f}%)"
    out = export_student(store, record, args.which, args.out, force=args.force, records=records)
    print(f"kdbench: exported the {args.which} student of {record['run_id']}{chosen} to {out}; load it with "
          f"timm.create_model('local-dir:{out}', pretrained=True)")
    return 0
