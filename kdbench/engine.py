"""Runs run specs: skips what is done, trains cohorts, measures the students, writes one record per run.

``execute`` is what ``kdbench run`` and the sweep executors call. It is safe to interrupt at any moment and to
run in several processes on one results store: a run is claimed with an OS file lock before it trains (released
automatically if the process dies, even by ``kill -9``), its record is written atomically when it ends, and a run
whose record says ``ok`` is never trained again.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from kdbench.config import RunSpec
from kdbench.data import DataConfig, Splits, load_dataset
from kdbench.env import environment, resolve_device
from kdbench.models import count_params_m
from kdbench.plan import plan_cohorts
from kdbench.results import read_record, write_record
from kdbench.teachers import Teacher, prepare_teacher
from kdbench.training import Member, classification_metrics, predict, train_members

CLAIMS_DIR = "claims"


@dataclass
class ExecOptions:
    """Where and how runs execute; nothing here changes what a run computes.

    Attributes:
        results: the results store folder.
        teacher_cache: where trained teachers are cached (default ``<results>/teachers``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: root folder of file-based datasets (else ``$KDBENCH_DATA``).
        download: download CIFAR when missing.
        cohort: train runs that share a teacher together (one teacher pass per batch).
        max_cohort: the most runs in one cohort (a memory cap).
        retry_failed: run again the runs whose record says ``failed``.
        progress: show progress bars.
        measure: measure the student's efficiency (params, MACs, latency, throughput) into each record.
        log: where one-line notes and per-run summaries go.
    """

    results: Path = Path("results")
    teacher_cache: Path | None = None
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    cohort: bool = True
    max_cohort: int = 8
    retry_failed: bool = False
    progress: bool = True
    measure: bool = True
    log: Callable[[str], None] = field(default=lambda line: tqdm.write(line, file=sys.stderr))

    @property
    def teacher_dir(self) -> Path:
        """The teacher cache folder."""
        return Path(self.teacher_cache) if self.teacher_cache else Path(self.results) / "teachers"


@dataclass
class Plan:
    """What ``execute`` would do: runs to train (in cohorts), runs already done, runs skipped as failed."""

    cohorts: list[list[RunSpec]]
    done: list[RunSpec]
    failed: list[RunSpec]

    @property
    def pending(self) -> list[RunSpec]:
        """The runs that would train."""
        return [spec for cohort in self.cohorts for spec in cohort]


def make_plan(specs: Sequence[RunSpec], options: ExecOptions) -> Plan:
    """Split ``specs`` into done, failed (kept unless ``retry_failed``) and pending cohorts."""
    unique = list({spec.run_id: spec for spec in specs}.values())
    done, failed, pending = [], [], []
    for spec in unique:
        record = read_record(options.results, spec.run_id)
        if record is not None and record.get("status") == "ok":
            done.append(spec)
        elif record is not None and not options.retry_failed:
            failed.append(spec)
        else:
            pending.append(spec)
    cohorts = plan_cohorts(pending, cohort=options.cohort, max_size=options.max_cohort)
    return Plan(cohorts=cohorts, done=done, failed=failed)


def execute(specs: Sequence[RunSpec], options: ExecOptions) -> list[dict[str, Any]]:
    """Train every run of ``specs`` that is not done yet and return the records of all of them, in order.

    Records of finished runs are read from the store, so the return value is the whole picture either way.
    """
    plan = make_plan(specs, options)
    device = resolve_device(options.device)
    for number, cohort in enumerate(plan.cohorts, 1):
        run_cohort(cohort, options, device, label=f"[{number}/{len(plan.cohorts)}]")
    records = [read_record(options.results, spec.run_id) for spec in specs]
    return [r for r in records if r is not None]


# ---------------------------------------------------------------------------------------------------------------
# Claims: one process trains a run at a time


@contextlib.contextmanager
def claimed(results: Path, specs: Sequence[RunSpec], retry_failed: bool) -> Iterator[list[RunSpec]]:
    """Lock each run's claim file without waiting; yield the runs this process got and that are still to do."""
    folder = Path(results) / CLAIMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    handles: list[tuple[Path, IO[str]]] = []
    mine: list[RunSpec] = []
    try:
        for spec in specs:
            path = folder / f"{spec.run_id}.lock"
            handle = path.open("a")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handles.append((path, handle))
            record = read_record(results, spec.run_id)  # it may have finished while we planned
            if record is None or (record.get("status") != "ok" and retry_failed):
                mine.append(spec)
        yield mine
    finally:
        for path, handle in handles:
            path.unlink(missing_ok=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


# ---------------------------------------------------------------------------------------------------------------
# One cohort


def progress_bars(enabled: bool) -> Callable[[int, str], contextlib.AbstractContextManager[Any]]:
    """A factory of progress bars over training steps: ``with bars(total, desc) as update: update(1)``."""

    @contextlib.contextmanager
    def bar(total: int, desc: str) -> Iterator[Callable[[int], None]]:
        with tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False,
                  file=sys.stderr, dynamic_ncols=True) as progress:
            yield progress.update

    return bar


def load_splits(spec: RunSpec, options: ExecOptions, device: torch.device) -> Splits:
    """The dataset of ``spec`` on ``device``."""
    return load_dataset(DataConfig(name=spec.dataset, root=options.data_root, download=options.download,
                                   val_fraction=spec.val_fraction, image_size=spec.image_size, device=str(device),
                                   options=dict(spec.data_options)))


def run_cohort(specs: Sequence[RunSpec], options: ExecOptions, device: torch.device, label: str = "") -> None:
    """Claim, train, evaluate, measure and record one cohort of runs."""
    with claimed(Path(options.results), specs, options.retry_failed) as mine:
        if not mine:
            return
        splits = load_splits(mine[0], options, device)
        bar = progress_bars(options.progress)
        teacher: Teacher | None = None
        users = [s for s in mine if s.teacher is not None and s.teacher_source != "self"]
        teacher_costs: dict[str, Any] = {}
        if users:
            teacher = prepare_teacher(users[0], splits, device, options.teacher_dir, progress=bar, log=options.log)
            if options.measure:
                teacher_costs = _teacher_costs(teacher, splits)
        members = []
        for spec in mine:
            try:
                members.append(Member(spec, splits.info, teacher.info if teacher else None, device,
                                      teacher_top1=teacher.top1 if teacher else None))
            except Exception as err:  # noqa: BLE001 - a run that cannot start is recorded as failed
                _write_failed(spec, options, device, err, cohort_size=len(mine))
        if not members:
            return
        cohort_id = members[0].spec.run_id
        names = ", ".join(m.label for m in members)
        total = members[0].generations * members[0].spec.epochs * splits.num_batches("train", mine[0].batch_size)
        pair = f"{teacher.name if teacher else '-'} -> {', '.join(sorted({m.spec.student for m in members}))}"
        started = time.perf_counter()
        with bar(total, f"{label} {pair} [{names}]".strip()) as update:
            train_members(members, splits, teacher.model if teacher else None, progress=update)
        wall = time.perf_counter() - started
        for member in members:
            record = _record(member, splits, teacher, options, device, cohort_id=cohort_id,
                             cohort_size=len(members), cohort_wall_s=wall)
            if member.uses_teacher:
                record.update(teacher_costs)
            write_record(options.results, record)
            options.log(_summary(record))


def _summary(record: dict[str, Any]) -> str:
    """One line per finished run."""
    teacher = record.get("teacher") or ("self" if record.get("teacher_source") == "self" else "none")
    pair = f"{teacher} -> {record['student']}"
    if record["status"] != "ok":
        return f"FAILED {record['method_label']:<14} {pair} seed {record['seed']}: {record['error']}"
    return (f"done   {record['method_label']:<14} {pair} seed {record['seed']}: top-1 {record['top1']:.2f}%  "
            f"({record['train_time_s']:.1f} s)")


def _base_record(spec: RunSpec, device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": spec.run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **spec.as_dict(),
        "eval_split": "test",
        "selection": "last_epoch",
    }
    record.update(environment(device))
    return record


def _write_failed(spec: RunSpec, options: ExecOptions, device: torch.device, err: BaseException,
                  cohort_size: int) -> None:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    record = _base_record(spec, device)
    record.update(status="failed", error=text, method_label=spec.method, history=[], cohort_size=cohort_size)
    write_record(options.results, record)
    options.log(_summary(record))


def _record(member: Member, splits: Splits, teacher: Teacher | None, options: ExecOptions, device: torch.device,
            *, cohort_id: str, cohort_size: int, cohort_wall_s: float) -> dict[str, Any]:
    """The run record of a trained (or failed) member."""
    spec = member.spec
    record = _base_record(spec, device)
    train_time = member.own_time_s + member.shared_time_s
    record.update(
        status=member.status if member.status != "running" else "ok",
        error=member.error,
        method_label=member.label,
        num_classes=splits.info.num_classes,
        in_chans=splits.info.in_chans,
        image_size=splits.info.image_size,
        teacher_sha256=teacher.sha256 if (teacher and member.uses_teacher) else None,
        teacher_top1=member.teacher_top1,
        params_m=count_params_m(member.student),
        extra_params_m=member.extra_params_m,
        train_time_s=train_time,
        train_samples_per_s=member.samples / train_time if train_time > 0 else None,
        teacher_time_s=member.teacher_time_s if member.uses_teacher else None,
        teacher_time_share=(member.teacher_time_s / train_time if member.uses_teacher and train_time > 0
                            else None),
        cohort_id=cohort_id,
        cohort_size=cohort_size,
        cohort_wall_s=cohort_wall_s,
        history=member.history,
    )
    if spec.teacher_source == "checkpoint":
        record["teacher_ckpt_sha256"] = spec.teacher_ckpt_sha256
    vals = [h["val_top1"] for h in member.history if h.get("val_top1") is not None]
    record["val_top1"] = vals[-1] if vals else None
    if vals:
        best = max(range(len(vals)), key=vals.__getitem__)
        record["best_val_top1"], record["best_val_epoch"] = vals[best], best + 1
    else:
        record["best_val_top1"] = record["best_val_epoch"] = None
    if member.generation_top1:
        record["generation_top1"] = member.generation_top1
    if record["status"] != "ok":
        return record
    eval_batch = max(256, spec.batch_size)
    pred = predict(member.student, splits, "test", eval_batch, amp=spec.amp, channels_last=spec.channels_last,
                   method=member.method)
    teacher_logits = teacher.test_logits if (teacher and member.uses_teacher) else None
    record.update(classification_metrics(pred, teacher_logits))
    if pred.extra:
        labels = pred.labels
        record["exit_top1"] = {name: float((logits.argmax(1) == labels).float().mean() * 100)
                               for name, logits in pred.extra.items()}
    if options.measure:
        record.update(_efficiency(member, splits, options, device))
    return record


def _teacher_costs(teacher: Teacher, splits: Splits) -> dict[str, Any]:
    """The teacher's size and MACs, so that reports can place it beside its students."""
    from kdbench import measure

    info = splits.info
    _, gmacs = measure.count_flops(teacher.model, (info.in_chans, info.image_size, info.image_size))
    return {"teacher_params_m": count_params_m(teacher.model), "teacher_gmacs": gmacs}


def _efficiency(member: Member, splits: Splits, options: ExecOptions, device: torch.device) -> dict[str, Any]:
    """Params, MACs and inference speed of the deployed student, measured once per architecture and store."""
    from kdbench import measure

    spec, info = member.spec, splits.info
    input_size = (info.in_chans, info.image_size, info.image_size)
    key = measure.efficiency_key(spec.student, input_size, info.num_classes, device=device, amp=spec.amp,
                                 channels_last=spec.channels_last)
    fields = measure.cached_efficiency(
        options.results, key,
        lambda: measure.efficiency(member.student, input_size, device=device, amp=spec.amp,
                                   channels_last=spec.channels_last))
    fields.pop("params_m", None)  # counted above on the trained student itself
    return fields
