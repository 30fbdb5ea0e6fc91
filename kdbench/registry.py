"""One small generic registry, used for methods, datasets and executors.

Modelled on fvcore's ``Registry`` and timm's ``list_models``: a name maps to one object; registering a name twice
is an error; looking up an unknown name raises an error that suggests the closest registered names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdbench.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry. Its message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to objects of one kind (a method class, a dataset builder, an executor).

    Args:
        kind: what the registry holds, in the singular ("method", "dataset"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Raises:
            ValueError: the name is already registered or is not a valid name.
        """

        def add(item: T) -> T:
            if not name or not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
                raise ValueError(f"invalid {self.kind} name {name!r}: use lower-case letters, digits, '_' and '-'")
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: nothing is registered under that name; the message suggests close matches.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line message for an unknown name, with the closest registered names."""
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(self.names())}"
        return f"unknown {self.kind} {name!r}; {hint} (see `kdbench list {self.kind}s`)"

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a glob ``pattern`` such as ``"*kd*"``."""
        names = sorted(self._items)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugins reloaded in one process)."""
        self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
