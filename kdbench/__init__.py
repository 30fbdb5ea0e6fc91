"""kdbench: a benchmark suite for knowledge distillation on any timm teacher/student pair."""

from __future__ import annotations

__version__ = "0.1.0"

import kdbench.zoo  # noqa: E402,F401 - registers the CIFAR KD zoo into timm's registry
