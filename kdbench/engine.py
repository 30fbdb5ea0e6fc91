"""One cohort, start to end: claim its runs, make its teacher ready, train, evaluate, measure, write the records.

:func:`run_cohort` is the unit of work every executor places (:mod:`kdbench.executors`), wherever it runs; the
scheduler (:mod:`kdbench.scheduler`) decides which cohorts there are. It is safe to interrupt at any moment and to
run in several processes on one results store: a run is claimed in the store before it trains (an OS file lock,
released automatically if the process dies, even by ``kill -9``), its record is written atomically when it ends,
and a run whose record says ``ok`` is never trained again.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kdbench import distributed, measure
from kdbench.artifacts import save_students
from kdbench.config import RunSpec
from kdbench.data import DATA_ROOT_ENV, DataConfig, Splits, dataset_fingerprint, load_dataset
from kdbench.env import environment
from kdbench.errors import ConfigError, DataError, KDBenchError, ModelError
from kdbench.models import count_params_m
from kdbench.options import ExecOptions
from kdbench.results import FINISHED_STATUSES, read_record, write_record
from kdbench.store import Store
from kdbench.teachers import Teacher, prepare_teacher
from kdbench.trackers import attach_trackers, finish_trackers
from kdbench.training import Member, classification_metrics, predict, top1, train_members
from kdbench.training.checkpoint import Checkpoints, Resume
from kdbench.training.evaluation import deployed_at_best_val, predict_deployed
from kdbench.training.forward import teacher_pass_before_training

# ---------------------------------------------------------------------------------------------------------------
# Claims: one process trains a run at a time


@contextlib.contextmanager
def claimed(results: Path, specs: Sequence[RunSpec], retry_failed: bool) -> Iterator[list[RunSpec]]:
    """Claim each run in the store without waiting; yield the runs this process got and that are still to do."""
    by_id = {spec.run_id: spec for spec in specs}
    with Store(results).claim(by_id) as ids:
        mine = []
        for run_id in ids:
            record = read_record(results, run_id)  # it may have finished while we planned
            if record is None or (record.get("status") not in FINISHED_STATUSES and retry_failed):
                mine.append(by_id[run_id])
        yield mine


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
    """The dataset of ``spec`` on ``device``.

    Raises:
        DataError: the data on disk is not the data the run was planned on (its fingerprint differs).
    """
    config = DataConfig(name=spec.dataset, root=options.data_root, download=options.download,
                        val_fraction=spec.val_fraction, image_size=spec.image_size, device=str(device),
                        options=dict(spec.data_options))
    if spec.data_fingerprint is not None and dataset_fingerprint(config, cached=False) != spec.data_fingerprint:
        raise DataError(f"the {spec.dataset} data under {config.root or '$' + DATA_ROOT_ENV} is not the data the runs "
                        "were planned on (its files changed); run the command again to plan them anew")
    return load_dataset(config)


@contextlib.contextmanager
def claimed_by_rank0(results: Path, specs: Sequence[RunSpec], retry_failed: bool) -> Iterator[list[RunSpec]]:
    """:func:`claimed` in rank 0 alone, whose runs every rank then trains (plain :func:`claimed` without torchrun)."""
    if distributed.world().size == 1:
        with claimed(results, specs, retry_failed) as mine:
            yield mine
    elif distributed.is_main():
        with claimed(results, specs, retry_failed) as mine:
            distributed.broadcast([spec.run_id for spec in mine])
            yield mine
    else:
        ids = set(distributed.broadcast(None))
        yield [spec for spec in specs if spec.run_id in ids]


def shared_error(err: BaseException) -> KDBenchError:
    """Rank 0's failure as the other ranks raise it under torchrun.

    The same :mod:`kdbench.errors` type (``KDBenchError`` for any other) with the first line of the message, marked
    ``from_rank0``: every rank has it, so the CLI leaves it to rank 0 to print.
    """
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    if type(err) in (KDBenchError, ConfigError, DataError, ModelError):
        copy = type(err)(text)
    else:
        copy = KDBenchError(f"{type(err).__name__}: {text}")
    copy.from_rank0 = True  # type: ignore[attr-defined]
    return copy


def run_cohort(specs: Sequence[RunSpec], options: ExecOptions, device: torch.device, label: str = "") -> None:
    """Claim, train, evaluate, measure and record one cohort of runs.

    Under torchrun every rank calls it: rank 0 claims the runs, prepares (trains) a missing teacher while the others
    wait, and writes the records; the training and the evaluation are shared by all ranks. A teacher that rank 0
    cannot prepare fails every rank at once with the same one-line error (see :func:`shared_error`).
    """
    main = distributed.is_main()
    with claimed_by_rank0(Path(options.results), specs, options.retry_failed) as mine:
        if not mine:
            return
        splits = load_splits(mine[0], options, device)
        bar = progress_bars(options.progress and main)
        teacher: Teacher | None = None
        users = [s for s in mine if s.teacher is not None and s.teacher_source != "self"]
        teacher_costs: dict[str, Any] = {}
        if users:
            try:
                if main:
                    teacher = prepare_teacher(users[0], splits, device, Store.of(options).teachers.folder,
                                              progress=bar, log=options.log)
            except Exception as err:
                distributed.broadcast(shared_error(err))  # the others fail at once, with the same line
                raise
            failure = distributed.broadcast(None)  # rank 0's outcome; once it is None, the teacher is cached
            if failure is not None:
                raise failure
            if not main:  # rank 0 cached it: the others read it, and never train one of their own
                teacher = prepare_teacher(users[0], splits, device, Store.of(options).teachers.folder,
                                          progress=bar, log=lambda _: None, train=False)
            if options.measure:
                teacher_costs = _teacher_costs(teacher, splits)
        members = []
        for spec in mine:
            try:
                with distributed.collective():  # every rank starts from rank 0's initial weights
                    members.append(Member(spec, splits.info, teacher.info if teacher else None, device,
                                          teacher_top1=teacher.top1_on(spec.eval_split) if teacher else None,
                                          train_labels=splits.labels("train"),
                                          teacher_model=teacher.model if teacher else None))
            except Exception as err:  # noqa: BLE001 - a run that cannot start is recorded as failed
                if main:
                    _write_failed(spec, options, device, err, cohort_size=len(mine), splits=splits)
        if not members:
            return
        if teacher is not None:  # teacher statistics some methods gather before training, one pass for all
            with distributed.collective():
                teacher_pass_before_training(teacher.model, splits, members, max(256, mine[0].batch_size),
                                             mine[0].amp, mine[0].channels_last)
        if options.compile:
            for member in members:
                member.compile()
        trackers = {m.spec.run_id: attach_trackers(options.trackers if main else (), m, options.results, options.log)
                    for m in members}
        if options.epoch_hook is not None:
            for member in members:
                listener = options.epoch_hook(member.spec)
                if listener is not None:
                    member.epoch_listeners.append(listener)
        cohort_id = members[0].spec.run_id
        checkpoints = Checkpoints(Store.of(options), options.checkpoint_every, options.checkpoint_minutes,
                                  log=options.log)
        resumes = {id(m): checkpoints.restore(m) for m in members}
        steps = splits.num_batches("train", mine[0].batch_size)
        pair = f"{teacher.name if teacher else '-'} -> {', '.join(sorted({m.spec.student for m in members}))}"
        started = time.perf_counter()
        for group in _by_position(members, resumes):  # resumed members continue together from where they stand
            names = ", ".join(m.label for m in group)
            epochs = group[0].spec.epochs + max((m.method.init_epochs for m in group), default=0)
            total = group[0].generations * epochs * steps
            with bar(total, f"{label} {pair} [{names}]".strip()) as update, distributed.collective():
                train_members(group, splits, teacher.model if teacher else None, progress=update,
                              checkpoints=checkpoints if checkpoints.enabled else None, resume=resumes[id(group[0])])
        wall = time.perf_counter() - started
        for member in members:
            with distributed.collective():  # every rank evaluates its share
                record = _record(member, splits, teacher, options, device, cohort_id=cohort_id,
                                 cohort_size=len(members), cohort_wall_s=wall)
            if not main:
                continue
            if member.uses_teacher:
                record.update(teacher_costs)
            record.update(save_students(member, splits.info, options))  # before the record that names the files
            write_record(options.results, record)
            if not options.keep_checkpoints:
                checkpoints.remove(member.spec.run_id)
            finish_trackers(trackers[member.spec.run_id], record, options.log)
            options.log(_summary(record))


def _by_position(members: Sequence[Member], resumes: dict[int, Resume]) -> list[list[Member]]:
    """The members grouped by where their checkpoints left them (one group at the start when none resumed).

    The members of a group share the data stream from their position on; a member added to a cohort after the
    others were interrupted trains in a group of its own, so no member loses a finished epoch.
    """
    groups: dict[tuple[int, int, int, int], list[Member]] = {}
    for member in members:
        groups.setdefault(resumes[id(member)].position.key(), []).append(member)
    return [groups[key] for key in sorted(groups, reverse=True)]


def _summary(record: dict[str, Any]) -> str:
    """One line per finished run."""
    teacher = record.get("teacher") or ("self" if record.get("teacher_source") == "self" else "none")
    pair = f"{teacher} -> {record['student']}"
    if record["status"] != "ok":
        word = "PRUNED" if record["status"] == "pruned" else "FAILED"
        return f"{word} {record['method_label']:<14} {pair} seed {record['seed']}: {record['error']}"
    return (f"done   {record['method_label']:<14} {pair} seed {record['seed']}: top-1 {record['top1']:.2f}%  "
            f"({record['train_time_s']:.1f} s)")


def _base_record(spec: RunSpec, device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": spec.run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **spec.as_dict(),
        "selection": "last_epoch",
    }
    record.update(environment(device))
    return record


def _write_failed(spec: RunSpec, options: ExecOptions, device: torch.device, err: BaseException,
                  cohort_size: int, splits: Splits) -> None:
    """Record a run that could not start, with the full spec (the data's shape, its label) like any record."""
    from kdbench.config import build_params, method_label
    from kdbench.distiller import get_method

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    record = _base_record(spec, device)
    try:
        cls = get_method(spec.method)
        label = method_label(spec.method, build_params(cls.Params, spec.method_params, spec.method), cls.Params)
    except Exception:  # noqa: BLE001 - the method itself may be what cannot be found or built
        label = spec.method
    record.update(status="failed", error=text, history=[], cohort_size=cohort_size, method_label=label,
                  num_classes=splits.info.num_classes, in_chans=splits.info.in_chans,
                  image_size=splits.info.image_size)
    write_record(options.results, record)
    options.log(_summary(record))


def _record(member: Member, splits: Splits, teacher: Teacher | None, options: ExecOptions, device: torch.device,
            *, cohort_id: str, cohort_size: int, cohort_wall_s: float) -> dict[str, Any]:
    """The run record of a trained (or failed) member."""
    spec = member.spec
    record = _base_record(spec, device)
    train_time = member.own_time_s + member.shared_time_s
    network = member.student
    if member.active:
        try:
            network = member.deployed()  # what the run deploys: evaluated, counted, measured and saved
        except Exception as err:  # noqa: BLE001 - a method's failure is its run's failure
            member.fail(err)
    record.update(
        status=member.status if member.status != "running" else "ok",
        error=member.error,
        method_label=member.label,
        num_classes=splits.info.num_classes,
        in_chans=splits.info.in_chans,
        image_size=splits.info.image_size,
        teacher_sha256=teacher.sha256 if (teacher and member.uses_teacher) else None,
        teacher_top1=member.teacher_top1,
        params_m=count_params_m(network),
        extra_params_m=member.extra_params_m,
        extra_buffers_m=member.extra_buffers_m,
        train_time_s=train_time,
        train_samples_per_s=member.samples / train_time if train_time > 0 else None,
        teacher_time_s=member.teacher_time_s if member.uses_teacher else None,
        teacher_time_share=(member.teacher_time_s / train_time if member.uses_teacher and train_time > 0
                            else None),
        cohort_id=cohort_id,
        cohort_size=cohort_size,
        cohort_wall_s=cohort_wall_s,
        compile=options.compile,
        world_size=distributed.world().size,
        history=member.history,
    )
    if spec.teacher_source == "checkpoint":
        record["teacher_ckpt_sha256"] = spec.teacher_ckpt_sha256
    vals = [h["val_top1"] for h in member.history if h.get("val_top1") is not None]
    record["val_top1"] = vals[-1] if vals else None
    record["best_val_top1"], record["best_val_epoch"] = member.best_val, member.best_val_epoch
    record["test_top1_at_best_val"] = None
    if member.generation_top1:
        record["generation_top1"] = member.generation_top1
    if record["status"] != "ok":
        return record
    eval_batch = max(256, spec.batch_size)
    pred = predict_deployed(member, splits, spec.eval_split, eval_batch, network=network)
    teacher_logits = teacher.logits(spec.eval_split) if (teacher and member.uses_teacher) else None
    record.update(classification_metrics(pred, teacher_logits))
    if spec.eval_split == "test" and member.best_state is not None:
        record["test_top1_at_best_val"] = _top1_at_best_val(member, splits, eval_batch)
    if pred.extra:
        labels = pred.labels
        record["exit_top1"] = {name: float((logits.argmax(1) == labels).float().mean() * 100)
                               for name, logits in pred.extra.items()}
    if options.measure and distributed.is_main():
        record.update(_efficiency(member, network, splits, options, device))
    return record


def _top1_at_best_val(member: Member, splits: Splits, batch_size: int) -> float:
    """Test top-1 of the deployed network at its best validation epoch (selected on val, never on test)."""
    spec = member.spec
    with deployed_at_best_val(member) as network:
        pred = predict(network, splits, "test", batch_size, amp=spec.amp, channels_last=spec.channels_last)
    return top1(pred.logits, pred.labels)


def _teacher_costs(teacher: Teacher, splits: Splits) -> dict[str, Any]:
    """The teacher's size and MACs, so that reports can place it beside its students."""
    info = splits.info
    _, gmacs = measure.count_flops(teacher.model, (info.in_chans, info.image_size, info.image_size))
    return {"teacher_params_m": count_params_m(teacher.model), "teacher_gmacs": gmacs}


def _efficiency(member: Member, network: torch.nn.Module, splits: Splits, options: ExecOptions,
                device: torch.device) -> dict[str, Any]:
    """Params, MACs and inference speed of the deployed network, measured once per network and store."""
    spec, info = member.spec, splits.info
    input_size = (info.in_chans, info.image_size, info.image_size)
    signature = None if network is member.student else measure.network_signature(network)
    key = measure.efficiency_key(spec.student, input_size, info.num_classes, device=device, amp=spec.amp,
                                 channels_last=spec.channels_last, network=signature)
    fields = Store.of(options).cached(
        Store.EFFICIENCY, key,
        lambda: measure.efficiency(network, input_size, device=device, amp=spec.amp,
                                   channels_last=spec.channels_last))
    fields.pop("params_m", None)  # counted above on the deployed network itself
    return fields
