"""The results store: one JSON record per run under ``<results>/runs/<run_id>.json``.

Records are written atomically (temporary file in the same folder, ``fsync``, ``os.replace``), so a crash at any
moment leaves either the complete old state or the complete new record, never half a file. Several processes may
write one store at once: each run has its own file and ``os.replace`` is atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

RUNS_DIR = "runs"
RECORD_SUFFIX = ".json"


def runs_dir(results: str | os.PathLike[str]) -> Path:
    """The folder that holds the run records of the store at ``results``."""
    return Path(results) / RUNS_DIR


def record_path(results: str | os.PathLike[str], run_id: str) -> Path:
    """Path of the record of ``run_id`` in the store at ``results``."""
    return runs_dir(results) / f"{run_id}{RECORD_SUFFIX}"


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (JSON has no NaN) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk (``fsync``), and the file is renamed
    over ``path``; the folder is synced too, so the rename survives a power cut. Mode 0644.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide files from the other users of a shared store
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_record(results: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write one run record atomically and return its path. The record must have a ``run_id``."""
    path = record_path(results, str(record["run_id"]))
    atomic_write_text(path, json.dumps(_json_safe(record), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_record(results: str | os.PathLike[str], run_id: str) -> dict[str, Any] | None:
    """The record of ``run_id``, or ``None`` if there is none (or it is not valid JSON)."""
    path = record_path(results, run_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(f"ignoring unreadable record {path}", stacklevel=2)
        return None


def iter_records(results: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every readable record in the store, in run-id order. Temporary files of writes in flight are skipped."""
    folder = runs_dir(results)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
            warnings.warn(f"ignoring unreadable record {path}", stacklevel=2)


def run_statuses(results: str | os.PathLike[str]) -> dict[str, str]:
    """Map of run id to status (``ok`` / ``failed``) for every record in the store."""
    return {rec["run_id"]: rec.get("status", "failed") for rec in iter_records(results)}


def load(path: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """Load a results store into a DataFrame, one row per run.

    Nested fields stay as Python objects (``method_params`` a dict, ``history`` a list of per-epoch dicts);
    ``method_params_json`` is added as a hashable, canonical form for grouping.

    Args:
        path: the results folder (the one given to ``kdbench run --results``).
    """
    return records_frame(iter_records(path))


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame, one row each, with ``method_params_json`` added for grouping."""
    frame = pd.DataFrame(list(records))
    if not frame.empty and "method_params" in frame:
        frame["method_params_json"] = [json.dumps(p or {}, sort_keys=True) for p in frame["method_params"]]
    return frame
