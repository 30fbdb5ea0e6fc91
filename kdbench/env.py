"""The environment a figure was measured in: versions, commit, device. Every record carries it."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import timm
import torch

import kdbench
from kdbench.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is checked and returned.

    Raises:
        kdbench.errors.ConfigError: CUDA asked for but not available, or an unknown device string.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return resolved


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human-readable name of the device: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


@functools.cache
def git_commit() -> str | None:
    """The commit of the kdbench source tree when it is a git checkout (``+dirty`` if modified), else ``None``."""
    root = Path(kdbench.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def environment(device: torch.device) -> dict[str, Any]:
    """The environment fields of a run record."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "kdbench_version": kdbench.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
    }
