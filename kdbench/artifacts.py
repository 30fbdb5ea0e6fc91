"""Trained students as artifacts: saved beside their run records, and exported as folders timm loads.

A run that ends ``ok`` keeps its deployed student (``--save-students``, ``ExecOptions.save_students``) in the
store, at :meth:`kdbench.store.Store.student_path`: ``runs/<run_id>.student-last.safetensors`` (the weights after
the last epoch, those the record's ``top1`` was measured on) and ``runs/<run_id>.student-best.safetensors`` (the
weights at the best validation epoch, those of ``test_top1_at_best_val``). Each file is the student's ``state_dict``
in safetensors, whose header also names (as JSON under ``kdbench``) the run, the architecture, the classes, the
input size and the normalisation it was trained with; the record holds its SHA-256 (``student_last_sha256``,
``student_best_sha256``; null when not saved). Files are written atomically, before the record that names them,
and by rank 0 alone under torchrun.

Only the deployed network is saved: the method's ``deployed_student`` decides what that is (by default the run's
timm student; never a method's adapters or auxiliary heads it does not predict with). A deployed network that is
not the bare student is a :class:`kdbench.distiller.DeployedNetwork` (SimKD's: the student's features, its trained
projector and the teacher's classifier): its student file holds the backbone (the timm student without its
classifier, ``num_classes=0``) and its head is written beside it as a ``torch.export`` program
(``runs/<run_id>.student-<which>.head.pt2``, :meth:`kdbench.store.Store.student_head_path`), whose SHA-256 the
student file's header holds under ``head``; ``logits = head(backbone.forward_features(images))``.

:func:`export_student` turns a saved student into the folder timm's own hub push writes: ``config.json`` (written
by timm's ``save_config_for_hf``: architecture, classes, model arguments and the pretrained config with the input
size, mean, std, interpolation and crop), ``model.safetensors`` (the stored file, byte for byte) and a model card
``README.md`` with the record's figures. ``timm.create_model("local-dir:<folder>", pretrained=True)``, or the
architecture with ``pretrained_cfg_overlay=dict(file=<folder>/model.safetensors)``, then loads it. A network with a
head adds ``head.pt2`` (the stored program, byte for byte), loaded by ``torch.export.load``: timm and torch alone
run it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import timm
from torch import Tensor, nn

from kdbench.config import NOT_HASHED, RunSpec, identity_data_options
from kdbench.data import DATASETS, DataConfig, DatasetInfo, ImageFolderSource
from kdbench.distiller import DeployedNetwork
from kdbench.errors import ConfigError, DataError
from kdbench.options import ExecOptions
from kdbench.store import Store, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from kdbench.training import Member

#: the students a run can keep: after the last epoch, and at the best validation epoch
WHICH = ("last", "best")
#: the safetensors header key of kdbench's description of a saved student (JSON)
HEADER_KEY = "kdbench"
#: the files of an exported folder, as timm's hub push names them
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
#: the head of a deployed network that is not the bare student, in an exported folder (a ``torch.export`` program)
HEAD_FILE = "head.pt2"
#: pretrained-config entries that describe the architecture's published weights, not the exported ones
_SOURCE_ENTRIES = ("tag", "license", "hf_hub_id", "hf_hub_filename", "url", "file", "source", "state_dict",
                   "paper_ids", "paper_name", "notes", "origin_url", "description", "test_input_size",
                   "test_crop_pct", "test_pool_size", "label_names", "label_descriptions", "label_offset")


def record_field(which: str) -> str:
    """The record field of the SHA-256 of the ``which`` student (``student_last_sha256``, ``student_best_sha256``)."""
    return f"student_{which}_sha256"


def kept(save_students: str) -> tuple[str, ...]:
    """The students a ``--save-students`` value keeps (``both``: last and best; ``none``: none)."""
    return WHICH if save_students == "both" else tuple(w for w in WHICH if w == save_students)


# ---------------------------------------------------------------------------------------------------------------
# Saving beside the record


def deployed_student(member: Member) -> nn.Module:
    """The network a run deploys at its current weights (``member.deployed()``: the method's ``deployed_student``)."""
    return member.deployed()


def head_program(network: DeployedNetwork, header: Mapping[str, Any]) -> bytes:
    """The ``torch.export`` program of a deployed network's head, as bytes (the same in every process).

    Exported on the CPU in float32 from an all-zero example of the backbone's ``forward_features`` output at the
    run's input size, with the batch dimension free, so any batch size runs through it.
    """
    import torch

    head = copy.deepcopy(network.head).to("cpu", torch.float32).eval()
    backbone = copy.deepcopy(network.backbone).to("cpu", torch.float32).eval()
    size = (2, int(header["in_chans"]), int(header["image_size"]), int(header["image_size"]))
    with torch.no_grad():
        shape = backbone.forward_features(torch.zeros(size)).shape
        program = torch.export.export(head, (torch.zeros(shape),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _network_files(network: nn.Module, member: Member,
                   header: dict[str, Any]) -> tuple[dict[str, Tensor], bytes | None] | None:
    """The tensors of a deployed network's student file and its head program (``None`` for the bare student).

    ``None`` for a network that is neither the student nor a :class:`DeployedNetwork`: it has no timm form.
    """
    if network is member.student:
        return network.state_dict(), None
    if not isinstance(network, DeployedNetwork):
        return None
    return network.backbone.state_dict(), head_program(network, header)


def preprocessing(spec: RunSpec, info: DatasetInfo) -> dict[str, Any]:
    """How the run's images reached the student: mean, std, interpolation and crop fraction (timm's names).

    Tensor datasets are scaled to [0, 1], normalised and (when ``image_size`` differs from the stored size) resized
    bilinearly, whole; image folders are resized and centre-cropped with their preprocessing options.
    """
    source = DATASETS.get(spec.dataset)
    interpolation, crop_pct = "bilinear", 1.0
    if isinstance(source, ImageFolderSource):
        prep = source.preprocessing(DataConfig(name=spec.dataset, options=dict(spec.data_options)))
        interpolation, crop_pct = prep.interpolation, prep.crop_fraction
    return {"mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
            "interpolation": interpolation, "crop_pct": float(crop_pct)}


def student_file(tensors: Mapping[str, Tensor], header: Mapping[str, Any]) -> bytes:
    """The safetensors bytes of a student's weights, ``header`` stored as JSON under :data:`HEADER_KEY`.

    Tensors are copied to the CPU, contiguous (channels-last weights included) and unshared, so any
    ``state_dict`` can be saved and loads back with ``load_state_dict``.
    """
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    # one metadata key: safetensors writes its metadata in hash-map order, so with two keys the same student could
    # be written as different bytes (and another SHA-256) by different processes
    return safetensors.torch.save(plain, metadata={HEADER_KEY: json.dumps(dict(header), sort_keys=True)})


def save_students(member: Member, info: DatasetInfo, options: ExecOptions) -> dict[str, str | None]:
    """Save the students ``options.save_students`` asks for of a finished member; their record fields.

    Nothing is saved for a run that did not end ``ok``, nor by any rank but 0 under torchrun. Without a validation
    split there is no best epoch: ``best`` is skipped with one note (its field stays null), never replaced by the
    last weights.

    Returns:
        ``{"student_last_sha256": ..., "student_best_sha256": ...}``, each the file's SHA-256 or ``None``.
    """
    from kdbench import distributed

    fields: dict[str, str | None] = {record_field(which): None for which in WHICH}
    if not member.active or not distributed.is_main():
        return fields
    spec, store = member.spec, Store.of(options)
    header = {"run_id": spec.run_id, "architecture": spec.student, "num_classes": info.num_classes,
              "in_chans": info.in_chans, "image_size": info.image_size, **preprocessing(spec, info),
              "label_names": list(info.class_names) if info.class_names else None}
    from kdbench.training.evaluation import deployed_at_best_val

    for which in kept(options.save_students):
        if which == "best" and member.best_state is None:
            options.log(f"note: {spec.run_id} has no validation split, so no best-validation student to save "
                        "(--save-students best needs --val-fraction > 0)")
            continue
        here = deployed_at_best_val(member) if which == "best" else contextlib.nullcontext(deployed_student(member))
        with here as network:
            files = _network_files(network, member, header)
            if files is None:
                options.log(f"note: {spec.run_id}'s method deploys a {type(network).__name__}, neither its student nor "
                            "a DeployedNetwork, so no student is saved")
                break
            weights, head = files
            epoch = member.best_val_epoch if which == "best" else spec.epochs
            extra = {"head": {"sha256": hashlib.sha256(head).hexdigest(), "input": "forward_features"}} if head else {}
            data = student_file(weights, {**header, "which": which, "epoch": epoch, **extra})
        if head is not None:  # the head first: the student file that names it is written after it
            atomic_write_bytes(store.student_head_path(spec.run_id, which), head)
        atomic_write_bytes(store.student_path(spec.run_id, which), data)
        fields[record_field(which)] = hashlib.sha256(data).hexdigest()
    return fields


def read_student(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The weights and the kdbench header of a saved student file.

    Raises:
        DataError: the file is missing, or not a safetensors file written by kdbench.
    """
    try:
        data = Path(path).read_bytes()
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {})[HEADER_KEY])
        return safetensors.torch.load(data), header
    except FileNotFoundError:
        raise DataError(f"student file {path} not found") from None
    except (OSError, KeyError, ValueError, safetensors.SafetensorError) as err:
        raise DataError(f"{path} is not a student file kdbench saved ({type(err).__name__})") from None


# ---------------------------------------------------------------------------------------------------------------
# Choosing a run to export


@dataclasses.dataclass(frozen=True)
class RunFilter:
    """Which records a best-run export chooses among (``None``: any)."""

    dataset: str | None = None
    teacher: str | None = None
    student: str | None = None
    method: str | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` is one of them (``method`` matches the method's name or its label)."""
        return ((self.dataset is None or record.get("dataset") == self.dataset)
                and (self.teacher is None or record.get("teacher") == self.teacher)
                and (self.student is None or record.get("student") == self.student)
                and (self.method is None or self.method in (record.get("method"), record.get("method_label"))))

    def describe(self) -> str:
        """The filter in words."""
        parts = [f"{name} {value}" for name, value in dataclasses.asdict(self).items() if value is not None]
        return ", ".join(parts) or "no filter"


def ranking_figure(which: str) -> str:
    """The figure a best-run export ranks by: test ``top1`` for the last weights, ``best_val_top1`` for the best."""
    return "top1" if which == "last" else "best_val_top1"


def choose_run(records: Iterable[Mapping[str, Any]], run_filter: RunFilter, which: str) -> Mapping[str, Any]:
    """The ``ok`` record of the filter with the highest :func:`ranking_figure` (ties: the smallest run id).

    Raises:
        ConfigError: no ``ok`` record matches, or none that has the figure.
    """
    figure = ranking_figure(which)
    matching = [r for r in records if r.get("status") == "ok" and run_filter.matches(r)]
    ranked = [r for r in matching if isinstance(r.get(figure), int | float) and math.isfinite(r[figure])]
    if not ranked:
        why = f" has {figure} (runs without a validation split have none)" if matching else " matches"
        raise ConfigError(f"no ok run of {run_filter.describe()}{why}")
    return min(ranked, key=lambda r: (-float(r[figure]), str(r["run_id"])))


def _configuration(record: Mapping[str, Any]) -> str:
    """What a record's run is, its seed left out: the records of the other seeds of one configuration share it."""
    names = [f.name for f in dataclasses.fields(RunSpec) if f.name not in ("seed", *NOT_HASHED)]
    values = {name: record.get(name) for name in names}
    if isinstance(values.get("data_options"), Mapping):
        values["data_options"] = identity_data_options(values["data_options"])
    return json.dumps(values, sort_keys=True, default=str)


def seed_summary(record: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Test top-1 over the ``ok`` runs in the store that differ from ``record``'s in the seed alone.

    Returns:
        ``seeds`` (sorted), ``n``, ``mean`` and ``std`` (sample standard deviation; ``None`` for one seed).
    """
    key = _configuration(record)
    runs = {r["seed"]: float(r["top1"]) for r in records
            if r.get("status") == "ok" and r.get("top1") is not None and _configuration(r) == key}
    values = [runs[s] for s in sorted(runs)]
    mean = sum(values) / len(values) if values else None
    std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
           if mean is not None and len(values) > 1 else None)
    return {"seeds": sorted(runs), "n": len(values), "mean": mean, "std": std}


# ---------------------------------------------------------------------------------------------------------------
# Exporting a folder timm loads


def hub_config(header: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """The ``config.json`` of an exported student, as timm's ``save_config_for_hf`` writes it.

    The architecture is built (through :func:`kdbench.models.create_model`, as the run built it) and the weights
    are loaded into it strictly, so a file that is not this architecture's is refused here rather than by a user.

    Raises:
        DataError: the weights do not fit the architecture the header names.
    """
    from timm.models._hub import save_config_for_hf

    from kdbench.models import create_model

    name, size, chans = header["architecture"], int(header["image_size"]), int(header["in_chans"])
    classes = 0 if header.get("head") else int(header["num_classes"])  # a backbone: its head predicts the classes
    model = create_model(name, num_classes=classes, in_chans=chans, image_size=size)
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(f"the saved student does not fit {name!r}: {first}") from None
    cfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", None) or {}).items() if k not in _SOURCE_ENTRIES}
    default_size = tuple(cfg.get("input_size", (chans, size, size)))[1:]
    data = {"input_size": (chans, size, size), "mean": tuple(header["mean"]), "std": tuple(header["std"]),
            "interpolation": header["interpolation"], "crop_pct": float(header["crop_pct"]), "crop_mode": "center"}
    cfg.update(architecture=name, num_classes=classes, **data)
    if default_size != (size, size):
        cfg["pool_size"] = None  # the architecture's default pool size is for its default input size
    model.pretrained_cfg = cfg
    model_args: dict[str, Any] = {"num_classes": classes, "in_chans": chans}
    if "img_size" in getattr(model, "_model_args", {}) or getattr(getattr(model, "patch_embed", None), "img_size",
                                                                   None) is not None:
        model_args["img_size"] = size
    extra: dict[str, Any] = {}
    if "data_config" in inspect.signature(save_config_for_hf).parameters:
        extra["data_config"] = data
    model_config = {"label_names": list(header["label_names"])} if header.get("label_names") and classes else None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CONFIG_FILE
        save_config_for_hf(model, str(path), model_config=model_config, model_args=model_args, **extra)
        return json.loads(path.read_text(encoding="utf-8"))


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _number(value: Any, unit: str = "", digits: int = 3) -> str:
    return f"{value:.{digits}g}{unit}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _loader_lines(name: str) -> list[str]:
    """The import a user needs before timm knows ``name`` (kdbench's zoo, another package's registry), if any."""
    try:
        module = timm.models.model_entrypoint(name).__module__
    except (RuntimeError, KeyError):
        return []
    if module.startswith("timm."):
        return []
    package = "kdbench" if module.startswith("kdbench.") else module
    return [f"import {package}  # registers {name} in timm's registry (timm alone does not know it)"]


def model_card(record: Mapping[str, Any], header: Mapping[str, Any], which: str, sha256: str,
               seeds: Mapping[str, Any], takes_img_size: bool = False) -> str:
    """The ``README.md`` of an exported student: what it is, its figures, and how to load it with timm.

    Args:
        record: the run's record.
        header: the saved student's kdbench header (architecture, classes, input size, normalisation).
        which: ``last`` or ``best``.
        sha256: the SHA-256 of the weights file.
        seeds: :func:`seed_summary` of the run's configuration.
        takes_img_size: the architecture is built for its input size (timm's ``img_size`` argument).
    """
    arch, teacher = header["architecture"], record.get("teacher") or (
        "itself" if record.get("teacher_source") == "self" else "none (trained without a teacher)")
    method = record.get("method_label") or record["method"]
    params = ", ".join(f"{k}={v}" for k, v in sorted((record.get("method_params") or {}).items())) or "defaults"
    chans, size = header["in_chans"], header["image_size"]
    if seeds["n"] > 1:
        over = (f"{_percent(seeds['mean'])} ± {_number(seeds['std'], digits=3)} (mean ± sample std over {seeds['n']} "
                f"seeds: {', '.join(map(str, seeds['seeds']))})")
    else:
        over = f"one seed in the store ({record['seed']})"
    weights = (f"best validation epoch ({header.get('epoch')}; val top-1 {_percent(record.get('best_val_top1'))})"
               if which == "best" else f"last epoch ({header.get('epoch')})")
    this_top1 = record.get("test_top1_at_best_val") if which == "best" else record.get("top1")
    latency = [f"CPU {_number(record.get('cpu_latency_ms_bs1'), ' ms')}"]
    if record.get("gpu_latency_ms_bs1") is not None:
        latency.append(f"GPU {_number(record.get('gpu_latency_ms_bs1'), ' ms')}")
    img_arg = f", img_size={size}" if takes_img_size else ""
    imports = _loader_lines(arch)
    rows = [
        ("Architecture", f"`{arch}` (timm), {header['num_classes']} classes, {chans}x{size}x{size} inputs"
         + (f"; the method's head (`{HEAD_FILE}`) predicts from its features" if header.get("head") else "")),
        ("Dataset", f"{record['dataset']}"),
        ("Teacher", f"`{teacher}`" + (f" (test top-1 {_percent(record.get('teacher_top1'))})"
                                      if record.get("teacher_top1") is not None else "")),
        ("Method", f"{method} (`{record['method']}` version {record.get('method_version', 'n/a')}; "
                   f"hyperparameters: {params})"),
        ("Test top-1 of these weights", f"{_percent(this_top1)} (seed {record['seed']})"),
        ("Test top-1 of the configuration", over),
        ("Weights", f"{weights}, SHA-256 `{sha256}`"),
        ("Params", f"{_number(record.get('params_m'), ' M')}"),
        ("MACs", _number(record.get("gmacs"), " G") if (record.get("gmacs") or 0) >= 0.1
         else _number((record.get("gmacs") or math.nan) * 1e3, " M")),
        ("Latency (batch 1)", ", ".join(latency) + (f" on {record.get('device_name')}" if record.get("device_name")
                                                    else "")),
        ("Training", f"{record.get('epochs')} epochs, batch {record.get('batch_size')}, {record.get('optimizer')} "
                     f"lr {record.get('lr')}, {record.get('schedule')} schedule"),
        ("Versions", f"kdbench {record.get('kdbench_version')}, timm {record.get('timm_version')}, torch "
                     f"{record.get('torch_version')}"),
        ("Run id", f"`{record['run_id']}`"),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    if header.get("head"):
        code = "\n".join([
            "import timm", "import torch", *imports, "",
            "# the backbone (the student without its classifier) and the method's head, which predicts the classes",
            'backbone = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
            f'head = torch.export.load("PATH/TO/THIS/FOLDER/{HEAD_FILE}").module()',
            "config = timm.data.resolve_data_config({}, model=backbone)  # input size, mean, std, interpolation, crop",
            "with torch.no_grad():",
            "    logits = head(backbone.forward_features(images))  # images: a batch preprocessed as below",
        ])
    else:
        code = _timm_code(arch, header, imports, img_arg)
    return _card_text(record, header, table, code, imports)


def _timm_code(arch: str, header: Mapping[str, Any], imports: list[str], img_arg: str) -> str:
    """The card's loading code of a bare timm student."""
    chans, size = header["in_chans"], header["image_size"]
    mean, std = ", ".join(f"{v:g}" for v in header["mean"]), ", ".join(f"{v:g}" for v in header["std"])
    overlay = (f'file="PATH/TO/THIS/FOLDER/{WEIGHTS_FILE}", num_classes={header["num_classes"]}, '
               f"input_size=({chans}, {size}, {size}),\n{' ' * 34}mean=({mean},), std=({std},), "
               f'interpolation="{header["interpolation"]}", crop_pct={header["crop_pct"]:g}')
    return "\n".join([
        "import timm", *imports, "",
        "# the folder (or, once pushed, 'hf-hub:<user>/<repo>'): architecture and classes come from config.json",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()', "",
        "# or the architecture by name, this file as its pretrained weights; the overlay gives the file's classes",
        "# (else timm drops the classifier as one for other classes) and its preprocessing",
        f'model = timm.create_model("{arch}", pretrained=True, num_classes={header["num_classes"]}, '
        f"in_chans={chans}{img_arg},",
        f"                          pretrained_cfg_overlay=dict({overlay})).eval()",
        "config = timm.data.resolve_data_config({}, model=model)  # input size, mean, std, interpolation, crop",
    ])


def _card_text(record: Mapping[str, Any], header: Mapping[str, Any], table: str, code: str,
               imports: list[str]) -> str:
    """The model card around its figures' table and its loading code."""
    arch, size = header["architecture"], header["image_size"]
    teacher = record.get("teacher") or (
        "itself" if record.get("teacher_source") == "self" else "none (trained without a teacher)")
    method = record.get("method_label") or record["method"]
    mean, std = ", ".join(f"{v:g}" for v in header["mean"]), ", ".join(f"{v:g}" for v in header["std"])
    return "\n".join([
        "---", "tags:", "- image-classification", "- timm", "- knowledge-distillation", "- kdbench",
        "library_name: timm", "pipeline_tag: image-classification", "---", "",
        f"# {arch} distilled from {teacher} with {method} on {record['dataset']}", "",
        f"A `{arch}` student trained by kdbench (run `{record['run_id']}`). The figures below are those of its run "
        "record, measured by kdbench on the dataset's test split.", "",
        table, "",
        "## Use with timm", "",
        "```python", code, "```", "",
        *([f"`{arch}` is not one of timm's own architectures: run `{imports[0].split('  #')[0]}` before "
           "`timm.create_model`.", ""] if imports else []),
        "## Preprocessing", "",
        f"Images scaled to [0, 1], normalised with mean ({mean}) and std ({std}), at {size}x{size} "
        f"({header['interpolation']} resize, crop fraction {header['crop_pct']:g}); these are in `config.json`'s "
        "`pretrained_cfg`.", "",
        "No license is set: add the one of your data and code before publishing these weights.", "",
    ])


def export_student(store: Store, record: Mapping[str, Any], which: str, out: Path, force: bool = False,
                   records: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write the ``which`` student of ``record`` as a folder timm loads (see the module docstring); its path.

    The folder is assembled in a temporary sibling and renamed into place, so it is whole or absent.

    Args:
        store: the store the record is in.
        record: the run's record.
        which: ``last`` or ``best``.
        out: the folder to write; it must not exist or be empty, unless ``force`` (then it is replaced).
        force: replace a folder that is not empty.
        records: the store's records, for the seeds of the run's configuration in the model card.

    Raises:
        DataError: no such student saved, a file that does not match its record, or an output folder in the way.
    """
    run_id = str(record["run_id"])
    sha256 = record.get(record_field(which))
    path = store.student_path(run_id, which)
    if not sha256:
        raise DataError(f"run {run_id} has no saved {which!r} student (its record has no {record_field(which)}); "
                        f"train it with --save-students {which if which == 'last' else 'best'} (or both)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise DataError(f"{out} exists and is not an empty folder; choose another --out or pass --force")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; choose another --out")
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise DataError(f"the {which!r} student of run {run_id} is missing from the store ({path})")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path} changed since its run saved it (its SHA-256 is not the one in the record)")
    tensors, header = read_student(path)
    head = _stored_head(store, run_id, which, header)
    config = hub_config(header, tensors)
    card = model_card(record, header, which, sha256, seed_summary(record, records or [record]),
                      takes_img_size="img_size" in (config.get("model_args") or {}))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        atomic_write_text(staging / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        atomic_write_bytes(staging / WEIGHTS_FILE, data)
        if head is not None:
            atomic_write_bytes(staging / HEAD_FILE, head)
        atomic_write_text(staging / CARD_FILE, card)
        os.chmod(staging, 0o755)  # noqa: S103 - mkdtemp's 0700 would hide the folder from the other users
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _stored_head(store: Store, run_id: str, which: str, header: Mapping[str, Any]) -> bytes | None:
    """The head program a saved student's header names, checked against its SHA-256; ``None`` without one.

    Raises:
        DataError: the head file is missing or changed since its run saved it.
    """
    if not header.get("head"):
        return None
    path = store.student_head_path(run_id, which)
    if not path.is_file():
        raise DataError(f"the head of the {which!r} student of run {run_id} is missing from the store ({path})")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != header["head"]["sha256"]:
        raise DataError(f"{path} changed since its run saved it (its SHA-256 is not the one its student file names)")
    return data


def check_which(which: str) -> None:
    """Raise a one-line :class:`ConfigError` unless ``which`` is ``last`` or ``best``."""
    if which not in WHICH:
        raise ConfigError(f"--which must be one of {', '.join(WHICH)} (got {which!r})")

