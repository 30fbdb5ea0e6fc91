"""The output formats of ``kdbench report`` (apart from the writer, so that naming them imports no matplotlib)."""

from __future__ import annotations

from collections.abc import Iterable

from kdbench.errors import ConfigError

ALL_FORMATS = ("md", "tex", "csv", "pdf", "png", "html")


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """Check a format list (``"md,tex"`` or a sequence) against :data:`ALL_FORMATS`."""
    items = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    unknown = [f for f in items if f not in ALL_FORMATS]
    if unknown or not items:
        raise ConfigError(f"unknown report format {', '.join(unknown) or '(none)'}; choose from "
                          f"{','.join(ALL_FORMATS)}")
    return tuple(dict.fromkeys(items))
