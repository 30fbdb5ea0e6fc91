"""Run records: one JSON record per run in the store's ``runs/`` folder (see :class:`kdbench.store.Store`).

Records are written atomically (temporary file in the same folder, ``fsync``, ``os.replace``), so a crash at any
moment leaves either the complete old state or the complete new record, never half a file. Several processes may
write one store at once: each run has its own file and ``os.replace`` is atomic on POSIX file systems.

Nothing read from the store is trusted: every record is checked against the record contract
(:func:`record_problem`) as it is read. A record that fails (not JSON, not an object, a wrong type, an ``ok``
record without its figures) counts as not done: it is moved aside to ``<results>/corrupt/`` (never overwritten
silently), one warning line names it, and its run is trained again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.errors import DataError
from kdbench.store import Store, atomic_write_text

#: ``ok``: trained to the end; ``failed``: stopped by an error (trained again with ``--retry-failed``); ``pruned``:
#: stopped early on purpose by a tuner (``kdbench tune`` with ``tune.prune``), finished and never trained again
STATUSES = ("ok", "failed", "pruned")
#: the statuses of a finished run, which is never trained again
FINISHED_STATUSES = ("ok", "pruned")


def runs_dir(results: str | os.PathLike[str]) -> Path:
    """The folder that holds the run records of the store at ``results``."""
    return Store(results).runs_dir


def record_path(results: str | os.PathLike[str], run_id: str) -> Path:
    """Path of the record of ``run_id`` in the store at ``results``."""
    return Store(results).record_path(run_id)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (JSON has no NaN) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_record(results: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write one run record atomically and return its path. The record must have a ``run_id``."""
    path = record_path(results, str(record["run_id"]))
    atomic_write_text(path, json.dumps(_json_safe(record), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The record contract, checked on every read

_NUMBER = "a number"
_INTEGER = "an integer"
_TEXT = "a string"
_OBJECT = "an object"
_LIST = "a list"
# Fields every record has, and their types.
REQUIRED_FIELDS = {"run_id": _TEXT, "status": _TEXT, "dataset": _TEXT, "student": _TEXT, "method": _TEXT,
                   "seed": _INTEGER, "method_params": _OBJECT}
# Fields an ``ok`` record has besides: its figures.
REQUIRED_OK_FIELDS = {"top1": _NUMBER, "history": _LIST}
# Fields a ``pruned`` record has besides: the epochs it trained (no test figures: it stopped early).
REQUIRED_PRUNED_FIELDS = {"history": _LIST}
# Fields that may be absent or null, but when present have this type (what reports compute with).
OPTIONAL_FIELDS = {
    "error": _TEXT, "teacher": _TEXT, "method_label": _TEXT, "teacher_source": _TEXT, "created_at": _TEXT,
    "epochs": _INTEGER, "batch_size": _INTEGER, "teacher_epochs": _INTEGER, "teacher_seed": _INTEGER,
    "image_size": _INTEGER, "num_classes": _INTEGER, "cohort_size": _INTEGER,
    "lr": _NUMBER, "top5": _NUMBER, "nll": _NUMBER, "ece": _NUMBER, "agreement": _NUMBER, "teacher_top1": _NUMBER,
    "val_top1": _NUMBER, "best_val_top1": _NUMBER, "params_m": _NUMBER, "extra_params_m": _NUMBER,
    "gmacs": _NUMBER, "gflops": _NUMBER, "cpu_latency_ms_bs1": _NUMBER, "cpu_samples_per_s": _NUMBER,
    "gpu_latency_ms_bs1": _NUMBER, "gpu_samples_per_s": _NUMBER, "train_time_s": _NUMBER,
    "train_samples_per_s": _NUMBER, "data_options": _OBJECT,
    # the budget and the versions, which reports format and group by
    "momentum": _NUMBER, "weight_decay": _NUMBER, "lr_decay": _NUMBER, "val_fraction": _NUMBER,
    "teacher_lr": _NUMBER, "teacher_weight_decay": _NUMBER, "method_version": _INTEGER, "protocol_version": _INTEGER,
    "schedule": _TEXT, "milestones": _LIST, "data_fingerprint": _TEXT,
    # the SHA-256 of the students saved beside the record (kdbench.artifacts; null when not saved)
    "student_last_sha256": _TEXT, "student_best_sha256": _TEXT,
}


def _type_problem(value: Any, kind: str) -> str | None:
    """How ``value`` is not of the contract type ``kind`` (bools are not numbers; numbers are finite), or ``None``."""
    if kind == _TEXT:
        wrong = not isinstance(value, str)
    elif kind == _OBJECT:
        wrong = not isinstance(value, dict)
    elif kind == _LIST:
        wrong = not isinstance(value, list)
    else:
        wrong = isinstance(value, bool) or not isinstance(value, int | float) or (
            kind == _INTEGER and not isinstance(value, int))
        if not wrong and not math.isfinite(value):
            return "not finite"
    return f"{_json_kind(value)}, not {kind}" if wrong else None


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def record_problem(record: Any, run_id: str | None = None) -> str | None:
    """What makes ``record`` break the run-record contract (one short phrase), or ``None`` if it is valid.

    Every record is a JSON object with the identity and spec fields of :data:`REQUIRED_FIELDS`; an ``ok`` record
    also has its figures (:data:`REQUIRED_OK_FIELDS`), a ``pruned`` one its history; the fields of
    :data:`OPTIONAL_FIELDS` are null or of their type. ``run_id``, when given (the record's file name), must be the
    record's own.
    """
    if not isinstance(record, dict):
        return f"it is {_json_kind(record)}, not a JSON object"
    if record.get("status") not in STATUSES and "status" in record:
        return f"its status is {record['status']!r}, not one of {', '.join(STATUSES)}"
    required = dict(REQUIRED_FIELDS)
    if record.get("status") == "ok":
        required.update(REQUIRED_OK_FIELDS)
    elif record.get("status") == "pruned":
        required.update(REQUIRED_PRUNED_FIELDS)
    for name, kind in required.items():
        if name not in record or record[name] is None:
            figures = name in REQUIRED_OK_FIELDS and record.get("status") == "ok"
            return f"it has no {name}" + (" (an ok record without its figures)" if figures else "")
        if (wrong := _type_problem(record[name], kind)) is not None:
            return f"its {name} is {wrong}"
    for name, kind in OPTIONAL_FIELDS.items():
        if record.get(name) is not None and (wrong := _type_problem(record[name], kind)) is not None:
            return f"its {name} is {wrong}"
    if run_id is not None and record["run_id"] != run_id:
        return f"its run_id {record['run_id']!r} is not its file name's"
    return None


def record_spec_mismatch(record: Mapping[str, Any], spec_fields: Mapping[str, Any]) -> str | None:
    """How a record disagrees with the spec that asked for its run (one short phrase), or ``None`` if it agrees.

    ``spec_fields`` is the spec as plain data (``RunSpec.as_dict()``). Every field of the spec that identifies the
    run and that the record stores must be the same in both: a record whose ``method_version`` or ``lr`` was edited
    under the same run id is not that run. Fields a record lacks, where the checkpoint lies, the loader's options
    and an image size the spec leaves to the dataset (the record has the size used) are not compared.
    """
    from kdbench.config import NOT_HASHED, identity_data_options

    for name, wanted in spec_fields.items():
        if name in NOT_HASHED or name not in record or (name == "image_size" and wanted is None):
            continue
        stored = record[name]
        if name == "data_options" and isinstance(stored, Mapping):
            stored, wanted = identity_data_options(stored), identity_data_options(wanted)
        if _plain(stored) != _plain(wanted):
            return f"its {name} is {json.dumps(_plain(stored))}, not the run's {json.dumps(_plain(wanted))}"
    return None


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, non-finite floats as null)."""
    return json.loads(json.dumps(_json_safe(value), default=str))


_warned: set[str] = set()


def _warn(line: str) -> None:
    """One kdbench warning line on stderr, printed once per process (progress bars stay intact)."""
    if line in _warned:
        return
    _warned.add(line)
    from tqdm.auto import tqdm

    tqdm.write(f"kdbench: warning: {line}", file=sys.stderr)


def _set_aside(path: Path, data: bytes, problem: str) -> None:
    """Move the invalid record at ``path`` to ``<results>/corrupt/`` and say so in one line.

    If another process replaced the file meanwhile with a valid record, that record is put back.
    """
    store = Store.of_record(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    counter = 1
    target = store.corrupt_path(path, stamp)
    while target.exists():
        counter += 1
        target = store.corrupt_path(path, stamp, counter)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    except FileNotFoundError:
        return  # another reader moved it first, and said so
    except OSError as err:
        _warn(f"ignoring invalid run record {path}: {problem}; its run counts as not done (could not move it "
              f"aside: {err.strerror or err})")
        return
    moved = target.read_bytes()
    if moved != data and _parse(moved, path.stem)[1] is None:  # a valid record written since we read the file
        with contextlib.suppress(OSError):
            os.link(target, path)  # put it back unless yet another record took its place
            target.unlink()
        return
    _warn(f"invalid run record {path}: {problem}; moved it to {target}; its run counts as not done")


def set_aside_record(results: str | os.PathLike[str], run_id: str, problem: str) -> None:
    """Move the record of ``run_id`` aside to ``<results>/corrupt/`` with one warning line naming ``problem``.

    For a record that is valid on its own but not the run it claims to be (see :func:`record_spec_mismatch`): its
    run counts as not done and is trained again.
    """
    path = record_path(results, run_id)
    with contextlib.suppress(FileNotFoundError):
        _set_aside(path, path.read_bytes(), problem)


def _parse(data: bytes, run_id: str) -> tuple[Any, str | None]:
    """The decoded record and its contract problem (``None`` when valid)."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "it is not valid JSON"
    return record, record_problem(record, run_id)


def _read_path(path: Path) -> dict[str, Any] | None:
    """The valid record at ``path``; ``None`` if there is none or it is invalid (then it is set aside).

    Raises:
        DataError: the path is a folder, the store is not a folder, or the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DataError(f"run record {path} is a folder, not a file; move it out of the results store") from None
    except NotADirectoryError:
        raise DataError(f"the results store {path.parent.parent} is not a folder (is --results a file?)") from None
    except OSError as err:
        raise DataError(f"cannot read run record {path}: {err.strerror or err}") from None
    record, problem = _parse(data, path.stem)
    if problem is not None:
        _set_aside(path, data, problem)
        return None
    return record


def read_record(results: str | os.PathLike[str], run_id: str) -> dict[str, Any] | None:
    """The record of ``run_id``; ``None`` if there is none, or it breaks the record contract.

    An invalid record is moved aside to ``<results>/corrupt/`` with one warning line, so its run counts as not
    done and is trained again.

    Raises:
        DataError: the record path is a folder, the store is not a folder, or the record cannot be read.
    """
    return _read_path(record_path(results, run_id))


def iter_records(results: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every valid record in the store, in run-id order (invalid ones are set aside, as by :func:`read_record`).

    Temporary files of writes in flight are skipped.
    """
    for path in Store(results).record_paths():
        record = _read_path(path)
        if record is not None:
            yield record


def check_writable(results: str | os.PathLike[str]) -> None:
    """Check that runs can be recorded in the store at ``results`` (creating its folders), before any training.

    Raises:
        DataError: ``results`` is a file, or the store cannot be written.
    """
    Store(results).check_writable()


def run_statuses(results: str | os.PathLike[str]) -> dict[str, str]:
    """Map of run id to status (``ok`` / ``failed`` / ``pruned``) for every record in the store."""
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
