"""``kdbench list``: the registered methods, datasets or timm models (the CIFAR zoo included)."""

from __future__ import annotations

import argparse
from typing import Any

import timm

from kdbench.commands.common import first_doc_line
from kdbench.data import DATASETS
from kdbench.distiller import get_method, load_plugin_file, methods_by_family


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``list`` subcommand to ``subparsers``; its handler is :func:`cmd_list`."""
    p = subparsers.add_parser("list", help="list registered methods, datasets or models",
                              description="List registered methods, datasets or timm models (the CIFAR zoo "
                                          "included), optionally filtered by a glob pattern such as '*kd*'.")
    p.add_argument("what", choices=["methods", "datasets", "models"])
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'cifar_*'")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load method plugins first")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="methods: also each method's search space, as `kdbench tune` searches it")
    p.set_defaults(handler=cmd_list)
    return p


def cmd_list(args: argparse.Namespace) -> int:
    """``kdbench list``: one line per name, with the first line of its docstring for methods and datasets.

    Methods come by family (``logit``, ``feature``, ...: :data:`kdbench.distiller.FAMILIES`), then by name.
    """
    if args.what == "methods":
        for plugin in args.plugin:
            load_plugin_file(plugin)
        for name in methods_by_family(args.pattern):
            cls = get_method(name)
            teacher = "no teacher" if not cls.needs_teacher else "teacher"
            if cls.teacher_source == "self":
                teacher = "self-teacher"
            print(f"{name:<12} {cls.family:<12} {teacher:<13} {first_doc_line(cls.__doc__)}")
            if getattr(args, "verbose", False):
                from kdbench.tune import describe_search_space

                print(f"{'':<12} tunes: {describe_search_space(cls)}")
    elif args.what == "datasets":
        for name in DATASETS.names(args.pattern):
            print(f"{name:<12} {first_doc_line(type(DATASETS.get(name)).__doc__)}")
    else:
        for name in timm.list_models(args.pattern or "*"):
            print(name)
    return 0
