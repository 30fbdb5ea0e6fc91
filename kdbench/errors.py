"""The one exception type users see: a clear, single-line message and exit code 2 from the CLI."""

from __future__ import annotations


class KDBenchError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    The CLI catches it, prints ``kdbench: error: <message>`` and exits with code 2. Library code raises it (or a
    subclass) for anything the user can fix: an unknown name, a wrong type, a missing file.
    """


class ConfigError(KDBenchError, ValueError):
    """A run spec, sweep spec or ``--set`` override is invalid."""


class DataError(KDBenchError):
    """A dataset cannot be found or read."""


class ModelError(KDBenchError):
    """A model cannot be created, or lacks a feature a method needs."""
