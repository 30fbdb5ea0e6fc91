"""Expanding a checked sweep spec into runs, and checking its data and models before anything trains."""

from __future__ import annotations

from kdbench.config import RunSpec
from kdbench.data import DataConfig, describe_dataset
from kdbench.distiller import get_method
from kdbench.errors import KDBenchError, ModelError
from kdbench.models import create_model
from kdbench.plan import expand
from kdbench.sweep.schema import PairEntry, SpecError, SweepSpec


def expand_sweep(spec: SweepSpec, data_root: str | None = None) -> list[RunSpec]:
    """Pairs x methods x parameter grid x seeds as run specs, de-duplicated by run id, in a stable order.

    The run ids are those ``kdbench run`` gives the same runs: a teacher-free method (``ce``) gets one run per
    student and budget, shared by every pair with that student. A dataset read from disk is fingerprinted under
    ``data_root`` (default: the spec's ``data_root``, else ``$KDBENCH_DATA``).

    Raises:
        SpecError: combinations that cannot be run (a method needing a teacher on a teacher-less pair, parameter
            values a method rejects together), one line each.
    """
    specs: dict[str, RunSpec] = {}
    problems: list[str] = []
    swept = {method for method, _ in spec.methods}
    for number, pair in enumerate(spec.pairs):
        ckpts = {pair.teacher: pair.teacher_ckpt} if pair.teacher and pair.teacher_ckpt else None
        problems += [f"pairs[{number}] ({pair.label}): method_params names {name!r}, which is not among the "
                     f"sweep's methods" for name in pair.method_params if name not in swept]
        for method, grid in spec.methods:
            grid = {**grid, **{param: [value] for param, value in pair.method_params.get(method, {}).items()}}
            try:
                expanded = expand(dataset=spec.dataset, pairs=[(pair.teacher, pair.student)], methods={method: grid},
                                  seeds=list(spec.seeds), grid=True, teacher_ckpts=ckpts,
                                  teacher_pretrained=pair.teacher_pretrained,
                                  data_root=data_root or spec.execution.get("data_root"), **spec.pair_budget(pair))
            except KDBenchError as err:
                problems.append(f"pairs[{number}] ({pair.label}), method {method}: {err}")
                continue
            for run in expanded:
                specs.setdefault(run.run_id, run)
    if problems:
        raise SpecError(spec.source, problems)
    return list(specs.values())


def check_sweep_data(spec: SweepSpec, data_root: str | None, download: bool) -> None:
    """Check the dataset and the models: each data setting is readable, and each pair's models can process it.

    The dataset must be found (and read) under every data setting the sweep uses, and every model of every pair
    must be built for, and run on, that data's input (channels and image size). Only the models the runs use are
    checked: a pair's teacher only when one of the methods needs a teacher.

    Raises:
        SpecError: one line per data setting that fails, then one per pair whose model cannot process its input.
    """
    settings: dict[str, tuple[DataConfig, list[tuple[int, PairEntry]]]] = {}
    for number, pair in enumerate(spec.pairs):
        budget = spec.pair_budget(pair)
        config = DataConfig(name=spec.dataset, root=data_root, download=download, val_fraction=budget["val_fraction"],
                            image_size=budget["image_size"], options=dict(budget["data_options"]))
        settings.setdefault(repr(config), (config, []))[1].append((number, pair))
    uses_teacher = any(get_method(method).needs_teacher for method, _ in spec.methods)
    problems = []
    checked: dict[tuple[str, int, int, int], str | None] = {}
    for config, pairs in settings.values():
        try:
            info = describe_dataset(config)
        except KDBenchError as err:
            problems.append(f"dataset: {err}")
            continue
        for number, pair in pairs:
            for role, model in (("teacher", pair.teacher if uses_teacher else None), ("student", pair.student)):
                if model is None:
                    continue
                key = (model, info.in_chans, info.image_size, info.num_classes)
                if key not in checked:
                    checked[key] = _input_problem(model, info.in_chans, info.image_size, info.num_classes)
                if checked[key]:
                    problems.append(f"pairs[{number}] ({pair.label}): {role} {checked[key]}")
    if problems:
        raise SpecError(spec.source, problems)


def _input_problem(model: str, in_chans: int, image_size: int, num_classes: int) -> str | None:
    """Why ``model`` cannot be built for, or run on, ``in_chans`` x ``image_size`` inputs; ``None`` if it can."""
    try:
        create_model(model, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    except ModelError as err:
        return str(err)
    return None
