"""Published CIFAR-100 and ImageNet KD accuracies (package data) and the mapping of their model names to kdbench's.

The figures live in ``kdbench/resources/*_published.csv`` (see ``kdbench/resources/README.md`` for their sources and
the training protocol behind them) and are read through :mod:`importlib.resources`, so they load from an installed
wheel as well as from a source checkout. CIFAR-100 rows name the CRD code base's models (mapped to the zoo by
:func:`zoo_name`); ImageNet rows name timm's models as kdbench runs them (``resnet34.tv_in1k``, ``mobilenetv1_100``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING

import pandas as pd

from kdbench.errors import DataError, ModelError
from kdbench.zoo import ZOO_MODELS

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: columns of the published tables, in order
PUBLISHED_COLUMNS: tuple[str, ...] = ("dataset", "teacher", "student", "method", "top1", "reporting", "source")

_ZOO_PREFIX = "cifar_"
_FILE_SUFFIX = "_published.csv"

#: published (table) model name -> zoo (timm) model name, for every zoo model; the tables name the CRD code base's
#: models, which the zoo registers with a ``cifar_`` prefix
PUBLISHED_TO_ZOO: Mapping[str, str] = MappingProxyType({name.removeprefix(_ZOO_PREFIX): name for name in ZOO_MODELS})

#: zoo (timm) model name -> published (table) model name
ZOO_TO_PUBLISHED: Mapping[str, str] = MappingProxyType({zoo: published for published, zoo in PUBLISHED_TO_ZOO.items()})

#: other spellings of the published names: the CRD code's own names and the papers' typography
_ALIASES = {
    "mobilehalf": "mobilenetv2",
    "shufflev1": "shufflenetv1",
    "shufflev2": "shufflenetv2",
    **{f"vgg{depth}bn": f"vgg{depth}" for depth in (8, 11, 13, 16, 19)},
}


# Where a published table names a method differently from kdbench's registry.
PUBLISHED_METHOD_NAMES = {"fitnet": "fitnets"}


def load_published(dataset: str | None = None) -> pd.DataFrame:
    """Load the published accuracies, optionally for one dataset.

    Args:
        dataset: keep only this dataset's rows (e.g. ``cifar100``); None for all. A dataset without published
            figures gives an empty frame with the same columns.

    Returns:
        One row per (dataset, teacher, student, method) with the columns of :data:`PUBLISHED_COLUMNS`; ``top1`` is
        a percentage (float), every other column a string. ``method`` uses kdbench's method names
        (:data:`PUBLISHED_METHOD_NAMES` maps the table's own), or the run label kdbench gives a variant with other
        parameters (``crd(kd_weight=1)``, the papers' CRD+KD).

    Raises:
        DataError: a packaged table is missing columns (a damaged installation).
    """
    frames = [_read_table(entry) for entry in _published_tables()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PUBLISHED_COLUMNS))
    table["method"] = table["method"].replace(PUBLISHED_METHOD_NAMES)
    if dataset is not None:
        table = table[table["dataset"] == dataset].reset_index(drop=True)
    return table


#: datasets whose published tables name the CRD code base's CIFAR models (the others use timm's names)
ZOO_NAMED_DATASETS = frozenset({"cifar100"})


def model_name(dataset: str, published: str) -> str:
    """The kdbench (timm) name of a model as the published table of ``dataset`` names it.

    Raises:
        ModelError: a CIFAR-100 row's model that is not one of the zoo's.
    """
    return zoo_name(published) if dataset in ZOO_NAMED_DATASETS else published


def published_teacher_top1(dataset: str, teacher: str) -> float | None:
    """The published top-1 of ``teacher`` on ``dataset`` (its ``teacher`` rows), or ``None`` when there is none.

    Used to check a pretrained teacher before the students train (ImageNet: ``resnet34.tv_in1k`` 73.31).
    """
    try:
        table = load_published(dataset)
    except (DataError, OSError, ValueError):
        return None
    rows = table[(table["method"] == "teacher") & (table["teacher"] == teacher)]
    return float(rows["top1"].iloc[0]) if not rows.empty else None


def zoo_name(published_name: str) -> str:
    """The zoo's timm name of a model as the published tables name it.

    Case, hyphens and underscores are ignored, and the CRD code's own names are understood, so ``resnet8x4``,
    ``ResNet8x4``, ``WRN-40-2``, ``MobileNetV2``, ``mobile_half`` and ``ShuffleV1`` all resolve. A zoo name is
    returned unchanged.

    Args:
        published_name: model name from a published table.

    Returns:
        The registered timm name, e.g. ``cifar_resnet8x4``.

    Raises:
        ModelError: the name is not one of the zoo's models.
    """
    if published_name in ZOO_TO_PUBLISHED:
        return published_name
    key = _name_key(published_name)
    key = _ALIASES.get(key, key)
    for published, zoo in PUBLISHED_TO_ZOO.items():
        if _name_key(published) == key:
            return zoo
    close = difflib.get_close_matches(published_name.lower(), list(PUBLISHED_TO_ZOO), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(name) for name in close)}?" if close else "see kdbench.zoo.ZOO_MODELS"
    raise ModelError(f"{published_name!r} is not a model of the CIFAR KD zoo; {hint}")


def published_name(zoo_model: str) -> str:
    """The published tables' name of a zoo model: ``cifar_resnet8x4`` -> ``resnet8x4``.

    Args:
        zoo_model: registered timm name of a zoo model.

    Raises:
        ModelError: the name is not a zoo model (published figures exist only for the CIFAR zoo architectures).
    """
    try:
        return ZOO_TO_PUBLISHED[zoo_model]
    except KeyError:
        raise ModelError(
            f"{zoo_model!r} is not a model of the CIFAR KD zoo; published names exist only for its cifar_* models"
        ) from None


def _name_key(name: str) -> str:
    """Lower case without separators: ``WRN-40-2`` -> ``wrn402``."""
    return re.sub(r"[\s_\-]", "", name.lower())


def _published_tables() -> list[Traversable]:
    """The packaged ``*_published.csv`` files, sorted by name."""
    folder = resources.files("kdbench").joinpath("resources")
    return sorted((entry for entry in folder.iterdir() if entry.name.endswith(_FILE_SUFFIX)), key=lambda e: e.name)


def _read_table(entry: Traversable) -> pd.DataFrame:
    """Read one packaged table, checking its columns."""
    with entry.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype={column: str for column in PUBLISHED_COLUMNS if column != "top1"})
    missing = [column for column in PUBLISHED_COLUMNS if column not in table.columns]
    if missing:
        raise DataError(f"packaged table {entry.name} lacks columns {missing}; reinstall kdbench")
    table = table[list(PUBLISHED_COLUMNS)]
    return table.astype({"top1": float})
