"""Benchmarks: pytest-benchmark tests and scripts that print (and optionally save) measured figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_figures(path: Path | None, figures: Any) -> None:
    """Write a benchmark's figures as JSON to ``path`` (its folder made), when a path is given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1, default=float) + "\n")
