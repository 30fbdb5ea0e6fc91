"""From what a user asks for to run specs, and from run specs to cohorts.

``make_spec`` resolves a method's hyperparameters (defaults plus type-checked overrides) and normalises the teacher
fields: a method that uses no separate teacher gets ``teacher=None`` and no teacher budget, so one ``ce`` run
serves every pair with that student. ``plan_cohorts`` groups runs that can share a data stream and a teacher pass,
and ``make_plan`` splits runs into those a results store holds (done, failed) and cohorts still to train.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.config import RunSpec, build_params, cohort_key, params_dict
from kdbench.distiller import generations_of, get_method
from kdbench.errors import ConfigError
from kdbench.models import check_model_name
from kdbench.options import ExecOptions
from kdbench.pretrained import pretrained_data_options, pretrained_fields
from kdbench.results import FINISHED_STATUSES, read_record, record_spec_mismatch, set_aside_record
from kdbench.teachers import file_sha256


@functools.cache
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(Path(path))


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (cached by path, size and modification time).

    Raises:
        ConfigError: the file does not exist.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"teacher checkpoint not found: {path}")
    stat = file.stat()
    return _sha256_of(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


def make_spec(
    *,
    dataset: str,
    student: str,
    method: str,
    teacher: str | None,
    method_overrides: Mapping[str, Any] | None = None,
    teacher_ckpt: str | None = None,
    teacher_pretrained: bool = False,
    data_root: str | None = None,
    **budget: Any,
) -> RunSpec:
    """Build one :class:`RunSpec` with resolved hyperparameters, normalised teacher fields and the data's fingerprint.

    Args:
        dataset: registered dataset name.
        student: student model name.
        method: registered method name.
        teacher: teacher model name (ignored by methods that use no separate teacher).
        method_overrides: hyperparameter name -> value, type-checked against the method's ``Params``.
        teacher_ckpt: load the teacher from this checkpoint instead of training it (with ``teacher_pretrained``:
            the pretrained weights file, in timm's layout).
        teacher_pretrained: use timm's pretrained weights for the teacher (their SHA-256 enters the run id, and the
            teacher's preprocessing the data options).
        data_root: where a dataset read from disk lies (else ``$KDBENCH_DATA``): its files' fingerprint enters the
            spec (``data_fingerprint``), so other data under the same name is another run.
        **budget: the remaining :class:`RunSpec` fields (seed, epochs, batch_size, lr, ...).

    Raises:
        ConfigError: unknown method or parameter, a wrong type, a missing teacher or checkpoint.
        DataError: a dataset read from disk cannot be found or read.
    """
    from kdbench.data import DataConfig, dataset_fingerprint

    cls = get_method(method)
    params = params_dict(build_params(cls.Params, dict(method_overrides or {}), method))
    fields: dict[str, Any] = dict(budget)
    if teacher_pretrained and teacher is not None:  # the teacher's normalisation and resize, for every run of the pair
        fields["data_options"] = pretrained_data_options(teacher, dataset, fields.get("data_options") or {}, data_root)
    fields["data_fingerprint"] = dataset_fingerprint(
        DataConfig(name=dataset, root=data_root, options=dict(fields.get("data_options") or {})))
    fields["method_version"] = int(cls.version)
    if cls.needs_teacher:
        if teacher is None:
            raise ConfigError(f"method {method!r} needs a teacher; pass --teacher MODEL")
        if teacher_pretrained:  # timm's weights: from the hub, or from the file --teacher-ckpt names
            fields.update(pretrained_fields(teacher, teacher_ckpt))
        elif teacher_ckpt:
            fields.update(teacher_source="checkpoint", teacher_ckpt=str(teacher_ckpt),
                          teacher_ckpt_sha256=checkpoint_sha256(teacher_ckpt))
        else:
            fields["teacher_source"] = "trained"
        if fields["teacher_source"] == "trained":  # a teacher trained at the student's lr unless told otherwise
            if fields.get("teacher_lr") is None:
                fields["teacher_lr"] = fields.get("lr", RunSpec.__dataclass_fields__["lr"].default)
            if fields.get("teacher_weight_decay") is None:
                fields["teacher_weight_decay"] = fields.get("weight_decay",
                                                            RunSpec.__dataclass_fields__["weight_decay"].default)
        else:  # the teacher's training budget does not apply
            fields.update(teacher_epochs=0, teacher_seed=0, teacher_lr=None, teacher_weight_decay=None)
    else:
        teacher = None
        fields.update(teacher_source=cls.teacher_source or "none", teacher_epochs=0, teacher_seed=0,
                      teacher_lr=None, teacher_weight_decay=None, teacher_ckpt=None, teacher_ckpt_sha256=None)
    return RunSpec(dataset=dataset, student=student, method=method, teacher=teacher, method_params=params, **fields)


def expand(
    *,
    dataset: str,
    pairs: Sequence[tuple[str | None, str]],
    methods: Mapping[str, Mapping[str, Sequence[Any]] | Mapping[str, Any]],
    seeds: Sequence[int],
    grid: bool = True,
    teacher_ckpts: Mapping[str, str] | None = None,
    teacher_pretrained: bool = False,
    **budget: Any,
) -> list[RunSpec]:
    """Pairs x methods x parameter grid x seeds, de-duplicated (teacher-free runs are shared by pairs).

    Args:
        dataset: registered dataset name.
        pairs: ``(teacher, student)`` tuples.
        methods: method name -> {param: list of values} (``grid=True``) or {param: value}.
        seeds: student seeds.
        grid: whether parameter values are lists to take the product of.
        teacher_ckpts: teacher model name -> checkpoint path, for pairs whose teacher is loaded.
        teacher_pretrained: take teachers from timm's pretrained weights.
        **budget: the remaining :class:`RunSpec` fields.
    """
    for teacher, student in pairs:
        check_model_name(student)
        if teacher is not None:
            check_model_name(teacher)
    specs: dict[str, RunSpec] = {}
    for (teacher, student), (method, params), seed in itertools.product(pairs, methods.items(), seeds):
        for overrides in _grid(params) if grid else [dict(params)]:
            spec = make_spec(dataset=dataset, student=student, method=method, teacher=teacher,
                             method_overrides=overrides, seed=seed,
                             teacher_ckpt=(teacher_ckpts or {}).get(teacher or ""),
                             teacher_pretrained=teacher_pretrained, **budget)
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def _grid(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The product of per-parameter value lists; a scalar counts as a one-value list."""
    names = list(params)
    values = [v if isinstance(v, list | tuple) else [v] for v in params.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def plan_cohorts(specs: Iterable[RunSpec], *, cohort: bool = True, max_size: int = 8) -> list[list[RunSpec]]:
    """Group runs that share a data stream and a teacher, at most ``max_size`` per cohort, in a stable order.

    Teacher-free runs join a cohort of the same data stream that has a teacher (they share the batches, not the
    teacher pass), or form their own. A method that trains several generations always trains alone, as does
    every run with ``cohort=False``.
    """
    if max_size < 1:
        raise ConfigError(f"the cohort size cap must be >= 1 (got {max_size})")
    groups: dict[Any, dict[Any, list[RunSpec]]] = {}
    solo: list[list[RunSpec]] = []
    for spec in specs:
        cls = get_method(spec.method)
        if not cohort or generations_of(cls, build_params(cls.Params, spec.method_params, spec.method)) > 1:
            solo.append([spec])
            continue
        data, teacher = cohort_key(spec)
        groups.setdefault(data, {}).setdefault(teacher, []).append(spec)
    cohorts: list[list[RunSpec]] = []
    for by_teacher in groups.values():
        free = by_teacher.pop(None, [])
        keyed = list(by_teacher.values())
        if keyed:
            keyed[0] = free + keyed[0]
        elif free:
            keyed = [free]
        for members in keyed:
            cohorts.extend(members[i:i + max_size] for i in range(0, len(members), max_size))
    return cohorts + solo


@dataclass
class Plan:
    """What ``execute`` would do: runs to train (in cohorts), runs done (ok or pruned), runs skipped as failed."""

    cohorts: list[list[RunSpec]]
    done: list[RunSpec]
    failed: list[RunSpec]

    @property
    def pending(self) -> list[RunSpec]:
        """The runs that would train."""
        return [spec for cohort in self.cohorts for spec in cohort]


def make_plan(specs: Sequence[RunSpec], options: ExecOptions) -> Plan:
    """Split ``specs`` into done (``ok`` or ``pruned``), failed (kept unless ``retry_failed``) and pending cohorts."""
    unique = list({spec.run_id: spec for spec in specs}.values())
    done, failed, pending = [], [], []
    for spec in unique:
        record = read_record(options.results, spec.run_id)
        if record is not None and (mismatch := record_spec_mismatch(record, spec.as_dict())) is not None:
            set_aside_record(options.results, spec.run_id, f"{mismatch} (edited?)")  # trained again, as corrupt
            record = None
        if record is not None and record.get("status") in FINISHED_STATUSES:
            done.append(spec)
        elif record is not None and not options.retry_failed:
            failed.append(spec)
        else:
            pending.append(spec)
    cohorts = plan_cohorts(pending, cohort=options.cohort, max_size=options.max_cohort)
    return Plan(cohorts=cohorts, done=done, failed=failed)
