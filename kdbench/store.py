"""The results store: one object owns the layout of a results folder, its locks and its atomic writes.

A results folder holds::

    runs/<run_id>.json          one record per run (read and checked by :mod:`kdbench.results`)
    runs/<run_id>.student-{last,best}.safetensors   the deployed student, kept with its record
    runs/<run_id>.student-{last,best}.head.pt2      its head, when a method deploys one (torch.export)
    checkpoints/<run_id>.pt     the latest checkpoint of a run still training (removed once its record is written)
    corrupt/                    records that broke the record contract, set aside
    claims/<run_id>.lock        a run being trained (an OS file lock; see :meth:`Store.claim`)
    teachers/                   trained teachers (unless ``--teacher-cache`` puts them elsewhere; :class:`TeacherCache`)
    tuning/<study>.journal      ``kdbench tune``'s Optuna journals, their locks and study summaries
    efficiency/<digest>.json    figures measured once per store and architecture (:meth:`Store.cached`)
    ray/, slurm/                what Ray Train and submitit write for their jobs
    tensorboard/, mlruns/       experiment trackers' files (``--log``)

No other module builds a path inside a store: each asks its :class:`Store`. There is one lock implementation,
:class:`FileLock` (an OS ``flock``: the OS releases it when its process dies, however it dies, so no stale lock
survives a crash), used for claims, the teacher cache and the tuning journals. Every file is written atomically
(:func:`atomic_write_bytes`): a reader sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kdbench.errors import DataError
from kdbench.options import ExecOptions

RECORD_SUFFIX = ".json"


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


class FileLock:
    """An exclusive OS file lock (``flock``) on ``path``, re-entrant within one process.

    The OS releases it when its process dies, however it dies. Its ``acquire`` / ``release`` are the interface of
    Optuna's journal locks, so a study's journal takes it as is.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None
        self._depth = 0

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it when ``blocking``); whether it is held."""
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
            self._handle = handle
        self._depth += 1
        return True

    def release(self, remove: bool = False) -> None:
        """Release the lock (``remove``: delete its file first, while still holding it)."""
        self._depth -= 1
        if self._depth == 0 and self._handle is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock, held for the block (waiting for it)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass(frozen=True)
class TeacherCache:
    """The folder of trained teachers: ``<key>.pt`` (weights), ``<key>.json`` (their hash and history), a lock each."""

    folder: Path

    def weights(self, key: str) -> Path:
        """The weights of the teacher ``key``."""
        return self.folder / f"{key}.pt"

    def meta(self, key: str) -> Path:
        """The metadata (SHA-256 of the weights, training history) of the teacher ``key``."""
        return self.folder / f"{key}.json"

    def lock(self, key: str) -> FileLock:
        """The lock held while the teacher ``key`` is read or trained."""
        return FileLock(self.folder / f".{key}.lock")


@dataclass(frozen=True)
class StudyFiles:
    """The files of one ``kdbench tune`` study: its Optuna journal, the study's lock and the study summary."""

    journal: Path
    lock: FileLock
    summary: Path

    @staticmethod
    def append_lock(journal: Path) -> FileLock:
        """The lock every append to ``journal`` holds (``<journal>.lock``, beside it)."""
        return FileLock(journal.with_name(journal.name + ".lock"))


class Store:
    """A results folder (see the module docstring for its layout).

    Args:
        root: the results folder.
        teacher_cache: where trained teachers are cached (default ``<root>/teachers``).
    """

    RUNS = "runs"
    CORRUPT = "corrupt"
    CLAIMS = "claims"
    TEACHERS = "teachers"
    TUNING = "tuning"
    CHECKPOINTS = "checkpoints"
    EFFICIENCY = "efficiency"

    def __init__(self, root: str | os.PathLike[str], teacher_cache: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        self.teachers = TeacherCache(Path(teacher_cache) if teacher_cache else self.root / self.TEACHERS)

    @classmethod
    def of(cls, options: ExecOptions) -> Store:
        """The store of a set of execution options (``results`` and ``teacher_cache``)."""
        return cls(options.results, options.teacher_cache)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- runs --------------------------------------------------------------------------------------------------

    @property
    def runs_dir(self) -> Path:
        """The folder of the run records."""
        return self.root / self.RUNS

    def record_path(self, run_id: str) -> Path:
        """The record file of ``run_id``."""
        return self.runs_dir / f"{run_id}{RECORD_SUFFIX}"

    def record_paths(self) -> list[Path]:
        """Every record file, in run-id order (temporary files of writes in flight left out)."""
        if not self.runs_dir.is_dir():
            return []
        return [p for p in sorted(self.runs_dir.glob(f"*{RECORD_SUFFIX}")) if not p.name.startswith(".")]

    def record_stamp(self, run_id: str) -> int | None:
        """When the record of ``run_id`` last changed (nanoseconds), or ``None`` without one."""
        try:
            return os.stat(self.record_path(run_id)).st_mtime_ns
        except FileNotFoundError:
            return None

    def corrupt_path(self, record: Path, stamp: str, counter: int = 1) -> Path:
        """Where an invalid record file is set aside (``counter`` > 1 when that name is taken)."""
        suffix = "" if counter == 1 else f"-{counter}"
        return self.root / self.CORRUPT / f"{record.stem}.{stamp}{suffix}{record.suffix}"

    @classmethod
    def of_record(cls, record: Path) -> Store:
        """The store a record file lies in."""
        return cls(Path(record).parent.parent)

    def student_path(self, run_id: str, which: str) -> Path:
        """The saved deployed student of ``run_id`` (``which``: ``last`` or ``best``), beside its record."""
        return self.runs_dir / f"{run_id}.student-{which}.safetensors"

    def student_head_path(self, run_id: str, which: str) -> Path:
        """The head of a saved deployed network that is not the bare student (a ``torch.export`` program)."""
        return self.runs_dir / f"{run_id}.student-{which}.head.pt2"

    # -- checkpoints -------------------------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        """The folder of training checkpoints (of runs not finished yet)."""
        return self.root / self.CHECKPOINTS

    def checkpoint_path(self, run_id: str) -> Path:
        """The latest checkpoint of the run ``run_id``."""
        return self.checkpoints_dir / f"{run_id}.pt"

    # -- claims ------------------------------------------------------------------------------------------------

    def claim_lock(self, run_id: str) -> FileLock:
        """The claim of ``run_id``: held by the one process that trains the run."""
        return FileLock(self.root / self.CLAIMS / f"{run_id}.lock")

    @contextlib.contextmanager
    def claim(self, run_ids: Iterable[str]) -> Iterator[list[str]]:
        """Claim each run without waiting; yield the ids this process got (the others are claimed elsewhere).

        The claims are released (and their files removed) when the block ends; the OS releases them if the
        process dies first.
        """
        held: list[tuple[str, FileLock]] = []
        try:
            for run_id in run_ids:
                lock = self.claim_lock(run_id)
                if lock.acquire(blocking=False):
                    held.append((run_id, lock))
            yield [run_id for run_id, _ in held]
        finally:
            for _, lock in held:
                lock.release(remove=True)

    def check_writable(self) -> None:
        """Check that runs can be recorded here (creating the folders), before any training.

        Raises:
            DataError: the store is a file, or it cannot be written.
        """
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"--results {self.root} is a file, not a folder; give the folder of a results store")
        for folder in (self.runs_dir, self.root / self.CLAIMS):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except NotADirectoryError:
                raise DataError(f"cannot write the results store {self.root}: {folder} is not a folder") from None
            except OSError as err:
                raise DataError(f"cannot write the results store {self.root} ({folder}: {err.strerror or err}); "
                                "give a writable --results folder") from None

    # -- tuning ------------------------------------------------------------------------------------------------

    @property
    def tuning_dir(self) -> Path:
        """The folder of ``kdbench tune``'s studies."""
        return self.root / self.TUNING

    def study(self, name: str) -> StudyFiles:
        """The files of the study ``name``."""
        folder = self.tuning_dir
        return StudyFiles(journal=folder / f"{name}.journal", lock=FileLock(folder / f"{name}.lock"),
                          summary=folder / f"{name}.json")

    def study_summaries(self) -> list[Path]:
        """Every study summary file, in name order."""
        return sorted(self.tuning_dir.glob("*.json")) if self.tuning_dir.is_dir() else []

    # -- caches of measured figures ----------------------------------------------------------------------------

    def cached(self, kind: str, key: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The figures stored for ``key`` under ``<kind>/``, or ``compute()``'s, stored atomically for next time.

        The file holds ``{"key": ..., "figures": ...}`` and is named by a hash of the key; a file whose key differs
        (a hash collision) or that cannot be read is recomputed and replaced. Concurrent writers are safe: each
        writes a whole file and renames it.

        Args:
            kind: the cache (``efficiency``).
            key: what identifies the figures, JSON-serialisable.
            compute: measures the figures (JSON-serialisable; NaN and infinities are stored as ``None``); called only
                on a miss.
        """
        canonical = json.dumps(dict(key), sort_keys=True, separators=(",", ":"), allow_nan=False)
        path = self.cache_path(kind, hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20])
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == json.loads(canonical) and isinstance(stored.get("figures"), dict):
                return stored["figures"]
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
        figures = {name: None if isinstance(value, float) and not math.isfinite(value) else value
                   for name, value in compute().items()}
        atomic_write_text(path, json.dumps({"key": json.loads(canonical), "figures": figures}, indent=1,
                                           sort_keys=True, allow_nan=False) + "\n")
        return figures

    def cache_path(self, kind: str, digest: str) -> Path:
        """The file of one cached entry."""
        return self.root / kind / f"{digest}.json"

    # -- what executors and trackers write -----------------------------------------------------------------------

    def executor_dir(self, name: str) -> Path:
        """Where an executor's framework keeps its job files (``ray``: Ray Train, ``slurm``: submitit's logs)."""
        return self.root / name

    def tracker_dir(self, name: str) -> Path:
        """Where an experiment tracker writes (``tensorboard``, ``mlruns``)."""
        return self.root / name
