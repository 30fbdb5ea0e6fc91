"""Pretrained teachers: timm's weights (from its hub or a local file), checked against the data they distil on.

A pretrained teacher is never trained by kdbench. Its weights are one file, found when the run is planned: the file
the user names (``--teacher-pretrained --teacher-ckpt FILE``, in timm's layout) or the one timm's hub client
downloads into its cache. The file's SHA-256 is part of the run id (``RunSpec.teacher_ckpt_sha256``), and the model is
built by timm's own pretrained-config mechanism (``pretrained_cfg_overlay=dict(file=...)``), so a test that writes a
weights file of its own goes through the code path users run.

Three checks keep a pretrained teacher honest:

- **class order**: the data's classes (an image folder's class folders) must be among the teacher's (ImageNet's
  sorted WordNet ids for timm's ImageNet-1k models); a subset (``--data-option classes=100``) keeps the matching
  rows of the teacher's classifier, and a folder whose classes do not map onto the teacher's is one clear error;
- **preprocessing**: the normalisation and evaluation resize follow the teacher's pretrained config (mean, std,
  interpolation, crop fraction), written into the runs' data options, so the record says which were used;
- **accuracy**: the teacher is evaluated on the test split before any student trains; a top-1 far below its published
  figure is a warning (wrong preprocessing or class order).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
from torch import nn

from kdbench.data import DATASETS, DataConfig, DatasetInfo, ImageFolderSource
from kdbench.errors import ConfigError, DataError, ModelError
from kdbench.models import create_model

#: a pretrained teacher whose test top-1 is more than this many points below its published figure is reported
TOP1_WARNING_MARGIN = 5.0

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def pretrained_config(name: str) -> dict[str, Any]:
    """The pretrained config timm holds for ``name`` (``resnet34.tv_in1k``; a bare architecture takes its default tag).

    Raises:
        ModelError: ``name`` has no pretrained weights in timm.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ModelError(f"timm has no pretrained weights for {name!r}; name one with its tag, e.g. "
                         "resnet34.tv_in1k (see `kdbench list models PATTERN`)")
    return cfg.to_dict()


def _hub_file(name: str, cfg: Mapping[str, Any]) -> Path:
    """The weights file of ``name`` in the hub client's cache, downloaded there if it is missing."""
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise ModelError(f"the pretrained weights of {name!r} are not on timm's hub; download them and pass "
                         "--teacher-ckpt FILE with --teacher-pretrained")
    from huggingface_hub import hf_hub_download  # timm's own hub client
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HUB_FILES
    for client in ("huggingface_hub", "urllib3", "requests"):  # their retries and notices: kdbench says one line
        logging.getLogger(client).setLevel(logging.ERROR)
    why = "no weights file in its repository"
    for filename in names:
        try:
            return Path(hf_hub_download(hub_id, filename=filename))
        except LocalEntryNotFoundError:  # (a subclass of the next one)
            why = "the hub is out of reach and the weights are not in its local cache"
            break
        except EntryNotFoundError:
            continue  # the next file name timm knows
        except Exception as error:  # noqa: BLE001 - the hub client raises many types (HTTP, permissions, ...)
            text = str(error).strip()
            why = text.splitlines()[0][:160] if text else type(error).__name__
            break
    raise ModelError(f"cannot load pretrained weights for {name!r} from timm's hub ({why}); where the hub is out of "
                     "reach, pass the weights file: --teacher-pretrained --teacher-ckpt FILE")


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # they key the cache: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file (cached by path, size and modification time)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def resolve_weights(name: str, file: str | Path | None = None) -> tuple[Path, str]:
    """The weights file of the pretrained teacher ``name`` and its SHA-256.

    Args:
        name: a timm model name with pretrained weights.
        file: a local weights file in timm's layout; ``None`` takes the file from timm's hub (its cache first).

    Raises:
        ModelError: no pretrained config, a missing file, or the hub out of reach.
    """
    cfg = pretrained_config(name)
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ModelError(f"pretrained weights file not found: {file}")
    else:
        path = _hub_file(name, cfg)
    return path.resolve(), weights_sha256(path)


def pretrained_fields(name: str, file: str | Path | None = None) -> dict[str, Any]:
    """The :class:`~kdbench.config.RunSpec` fields of a pretrained teacher: its source, weights file and SHA-256."""
    path, sha = resolve_weights(name, file)
    return {"teacher_source": "pretrained", "teacher_ckpt": str(path), "teacher_ckpt_sha256": sha}


def pretrained_data_options(name: str, dataset: str, options: Mapping[str, Any],
                            data_root: str | None = None) -> dict[str, Any]:
    """``options`` with the teacher's preprocessing (mean, std, interpolation, crop fraction) filled in.

    Only for image-folder datasets (``imagefolder``, ``imagenet``); other data is returned unchanged. The folder's
    classes are checked against the teacher's here, when the run is planned, before anything trains.

    Raises:
        ConfigError: an option the user set that contradicts the teacher's pretrained config.
        DataError: the folder's classes do not map onto the teacher's.
    """
    source = DATASETS.get(dataset)
    if not isinstance(source, ImageFolderSource):
        return dict(options)
    cfg = pretrained_config(name)
    wanted: dict[str, Any] = {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]],
                              "interpolation": cfg.get("interpolation") or "bilinear",
                              "crop_fraction": float(cfg.get("crop_pct") or 0.875)}
    if wanted["interpolation"] not in ("bilinear", "bicubic"):
        raise ConfigError(f"the pretrained teacher {name!r} was evaluated with {wanted['interpolation']!r} "
                          "resampling, which the image-folder loader does not offer (bilinear, bicubic)")
    out = dict(options)
    for key, value in wanted.items():
        given = out.get(key)
        if given is None:
            out[key] = value
        elif (list(given) if isinstance(given, list | tuple) else given) != value:
            shown = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else value
            raise ConfigError(f"data option {key}={given!r} contradicts the pretrained teacher {name!r}, whose "
                              f"config says {key}={shown}; leave it out (it follows the teacher) or match it")
    info = source.describe(DataConfig(name=dataset, root=data_root, options=out))
    outputs = int(cfg.get("num_classes") or info.num_classes)
    class_map(name, config_class_names(cfg), outputs, info)
    return out


def config_class_names(cfg: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names of a pretrained config in output order (ImageNet-1k: sorted WordNet ids), if timm knows them."""
    if cfg.get("label_names"):
        return tuple(cfg["label_names"])
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(dict(cfg))
    return tuple(ImageNetInfo(subset).label_names()) if subset else None


def teacher_class_names(model: nn.Module) -> tuple[str, ...] | None:
    """The class names of a pretrained model in output order, if timm knows them (see :func:`config_class_names`)."""
    return config_class_names(getattr(model, "pretrained_cfg", None) or {})


def class_map(name: str, teacher_classes: tuple[str, ...] | None, num_outputs: int,
              info: DatasetInfo) -> list[int] | None:
    """For each class of the data, the teacher's output that predicts it; ``None`` when they are the same.

    Raises:
        DataError: the data's classes do not map onto the teacher's (one line, with an example).
    """
    data_classes = info.class_names
    if teacher_classes is None or data_classes is None:
        if num_outputs == info.num_classes:
            return None
        what = "the data names no classes" if data_classes is None else f"timm names none of {name!r}'s outputs"
        raise DataError(f"the pretrained teacher {name!r} predicts {num_outputs} classes and the data has "
                        f"{info.num_classes}, and {what} to map one onto the other")
    index = {cls: position for position, cls in enumerate(teacher_classes)}
    strangers = [cls for cls in data_classes if cls not in index]
    if strangers:
        more = f" (and {len(strangers) - 1} more of the data's {len(data_classes)})" if len(strangers) > 1 else ""
        raise DataError(f"the data's classes do not map onto the classes of the pretrained teacher {name!r}: class "
                        f"{strangers[0]!r}{more} is not one of its {len(teacher_classes)} classes (such as "
                        f"{teacher_classes[0]!r}); name the class folders as the teacher's classes (ImageNet: "
                        "WordNet ids)")
    mapping = [index[cls] for cls in data_classes]
    return None if mapping == list(range(len(teacher_classes))) else mapping


def _keep_outputs(model: nn.Module, name: str, rows: list[int]) -> None:
    """Cut the classifier of ``model`` down to the outputs ``rows``, in that order."""
    path = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    head = model.get_submodule(path) if isinstance(path, str) else None
    if not isinstance(head, nn.Linear):
        raise ModelError(f"cannot keep a subset of the pretrained teacher {name!r}'s classes: its classifier is not a "
                         "linear layer")
    kept = nn.Linear(head.in_features, len(rows), bias=head.bias is not None)
    kept.weight.data.copy_(head.weight.data[rows])
    if head.bias is not None:
        kept.bias.data.copy_(head.bias.data[rows])
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, kept)
    if hasattr(model, "num_classes"):
        model.num_classes = len(rows)


def load_pretrained(name: str, weights: str | Path, sha256: str | None, info: DatasetInfo) -> nn.Module:
    """The pretrained teacher ``name`` from ``weights`` (through timm's pretrained config), for the data ``info``.

    When the file is missing here (a run planned on another machine), timm's hub gives it again.

    Raises:
        KDBenchError: the weights changed since the run was planned, do not fit, or do not map onto the data's
            classes.
    """
    path = Path(weights)
    if not path.is_file():
        path, _ = resolve_weights(name)
    if sha256 is not None and weights_sha256(path) != sha256:
        raise ModelError(f"the pretrained weights {path} of {name!r} changed since the run was planned; plan the run "
                         "again")
    outputs = int(pretrained_config(name).get("num_classes") or info.num_classes)
    model = create_model(name, num_classes=outputs, in_chans=info.in_chans, image_size=info.image_size,
                         pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    rows = class_map(name, teacher_class_names(model), outputs, info)
    if rows is not None:
        _keep_outputs(model, name, rows)
    return model


def check_top1(name: str, top1: float | None, expected: float | None, log: Callable[[str], None]) -> None:
    """Log the teacher's measured top-1; warn when it is far below ``expected`` (its published figure)."""
    if top1 is None:
        return
    against = f" (published: {expected:.2f})" if expected is not None else ""
    log(f"pretrained teacher {name}: top-1 {top1:.2f}% on the test split{against}")
    if expected is not None and top1 < expected - TOP1_WARNING_MARGIN:
        log(f"kdbench: warning: the pretrained teacher {name} reaches {top1:.2f}% where {expected:.2f}% is "
            "published; check the preprocessing (mean, std, resize) and that the data's classes are the teacher's")
