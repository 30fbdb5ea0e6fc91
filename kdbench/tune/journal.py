"""Study storage: an Optuna journal per study, safe for several processes and for kill -9.

Appends to a journal hold an OS file lock (:class:`kdbench.store.FileLock`, released by the OS when a process
dies however it dies), and a torn last line (a writer killed mid-append) is cut when the journal is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.errors import ConfigError
from kdbench.store import StudyFiles

if TYPE_CHECKING:
    import optuna

    from kdbench.tune.spec import TuneSettings


def repair_journal(path: Path) -> bool:
    """Cut a torn last line (a writer killed mid-append) off an Optuna journal; whether anything was cut.

    Call it holding the journal's lock: complete lines end with a newline, so the tail after the last newline can
    only be an append that never finished.
    """
    if not path.is_file():
        return False
    with path.open("rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return False
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def import_optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        ConfigError: Optuna is not installed (one line that says how to install it).
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError("kdbench tune needs Optuna: pip install 'kdbench[tune]' (or pip install optuna)") from None
    return optuna


def pruner_settings(settings: TuneSettings) -> dict[str, Any] | None:
    """The pruner of a study as plain data (``None`` without pruning): it enters the study's name and summary."""
    if not settings.prune:
        return None
    return {"kind": "median", "startup_trials": settings.startup, "warmup_epochs": settings.prune_warmup}


def make_pruner(settings: TuneSettings) -> Any:
    """Optuna's ``MedianPruner`` for ``settings`` (a ``NopPruner`` without pruning).

    It prunes once ``startup`` trials are complete (as TPE models the results after ``startup`` trials), and not
    before step ``prune_warmup``; a step is a main-phase epoch counted from 0 (see :func:`intermediate_values`).
    """
    from optuna.pruners import MedianPruner, NopPruner

    if not settings.prune:
        return NopPruner()
    return MedianPruner(n_startup_trials=settings.startup, n_warmup_steps=settings.prune_warmup)


def open_study(journal: Path, name: str, settings: TuneSettings, create: bool = False) -> optuna.Study:
    """The study ``name`` in the Optuna journal ``journal``, with the pruner of ``settings``: the one way to open one.

    The journal's appends hold an OS file lock (``<journal>.lock``), and a torn last line (a writer killed
    mid-append) is cut first. ``create`` creates the study if it does not exist (call it holding the study lock).
    """
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    append_lock = StudyFiles.append_lock(journal)
    with append_lock.held():
        repair_journal(journal)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=append_lock))
    if create:
        return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                   pruner=make_pruner(settings))
    return optuna.load_study(storage=storage, study_name=name, pruner=make_pruner(settings))
