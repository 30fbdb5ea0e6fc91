"""The subcommands of ``kdbench``, one module each.

Every command module has ``add_parser(subparsers)``, which adds its subcommand and sets the parser's ``handler``
default to the function that runs it (it returns the exit code). :data:`COMMANDS` is the order of ``kdbench --help``;
``kdbench.cli`` only dispatches.
"""

from __future__ import annotations

from kdbench.commands import bench, export, report, run, sweep, tune
from kdbench.commands import list as list_command

#: the command modules, in the order ``kdbench --help`` lists them
COMMANDS = (run, list_command, bench, report, sweep, tune, export)
