"""The authors' reference loss values on fixed inputs (see README.md beside this file)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
RTOL = 1e-5


@functools.cache
def inputs() -> dict[str, Any]:
    """The fixed input tensors (float32, CPU)."""
    return torch.load(HERE / "inputs.pt", weights_only=True)


@functools.cache
def values() -> dict[str, Any]:
    """Every reference key with its value, source and notes."""
    return json.loads((HERE / "values.json").read_text())


def expected(key: str) -> float:
    """The primary reference value of ``key`` (the authors' own implementation)."""
    return float(values()[key]["value"])
