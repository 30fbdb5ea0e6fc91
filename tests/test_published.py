"""The packaged published CIFAR-100 table and the published <-> zoo model-name mapping."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import timm

import kdbench.zoo  # noqa: F401  (registers the zoo)
from kdbench.config import build_params, method_label
from kdbench.distiller import discover_methods, get_method
from kdbench.errors import ModelError
from kdbench.published import load_published, published_name, zoo_name

COLUMNS = ["dataset", "teacher", "student", "method", "top1", "reporting", "source"]

# the 13 teacher/student pairs of the CRD tables
PAIRS = {
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"), ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"), ("wrn_40_2", "shufflenetv1"),
}

# figures as printed in the papers / their code releases' READMEs
KNOWN_FIGURES = [
    ("resnet32x4", "resnet8x4", "teacher", 79.42),  # CRD Table 1
    ("resnet32x4", "resnet8x4", "ce", 72.50),  # CRD Table 1
    ("resnet32x4", "resnet8x4", "kd", 73.33),  # CRD Table 1
    ("resnet32x4", "resnet8x4", "crd", 75.51),  # CRD Table 1
    ("resnet32x4", "resnet8x4", "dkd", 76.32),  # DKD Table 1 / mdistiller README
    ("vgg13", "vgg8", "dkd", 74.68),  # DKD Table 1 / mdistiller README
    ("resnet50", "mobilenetv2", "dkd", 70.35),  # DKD Table 2 / mdistiller README
    ("resnet32x4", "resnet8x4", "crd(kd_weight=1)", 75.46),  # CRD Table 1, row CRD+KD
    ("resnet32x4", "shufflenetv2", "crd(kd_weight=1)", 76.05),  # CRD Table 2, row CRD+KD
    ("resnet32x4", "resnet8x4", "dist", 76.31),  # DIST_KD README
    ("resnet56", "resnet20", "ctkd", 71.19),  # CTKD README
    ("resnet32x4", "resnet8x4", "kd_ls", 76.62),  # logit-standardization-KD README, table 1
    ("resnet32x4", "resnet8x4", "dkd_ls", 77.01),  # logit-standardization-KD README, table 1
    ("resnet50", "mobilenetv2", "ctkd_ls", 69.36),  # logit-standardization-KD README, table 2
]

# how each source reports its figures (the ``reporting`` column's whole vocabulary)
REPORTING = {
    "last epoch, single run": {"teacher", "ce", "kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft",
                               "fsp", "nst", "crd", "crd(kd_weight=1)"},
    "best epoch, mean of 5 runs": {"dkd"},
    "mean of runs; epoch and number of runs not stated": {"dist"},
    "not stated": {"ctkd", "mlkd"},
    "best epoch, mean of runs; number of runs not stated": {"kd_ls", "dkd_ls", "ctkd_ls"},
}

EXPECTED_ZOO_NAMES = {
    "resnet8x4": "cifar_resnet8x4", "resnet32x4": "cifar_resnet32x4", "resnet20": "cifar_resnet20",
    "resnet32": "cifar_resnet32", "resnet56": "cifar_resnet56", "resnet110": "cifar_resnet110",
    "resnet50": "cifar_resnet50", "wrn_40_2": "cifar_wrn_40_2", "wrn_16_2": "cifar_wrn_16_2",
    "wrn_40_1": "cifar_wrn_40_1", "vgg13": "cifar_vgg13", "vgg8": "cifar_vgg8", "mobilenetv2": "cifar_mobilenetv2",
    "shufflenetv1": "cifar_shufflenetv1", "shufflenetv2": "cifar_shufflenetv2",
}


def raw_rows() -> list[dict[str, str]]:
    """The packaged CSV read with the standard library, as an independent reference for the loader."""
    path = resources.files("kdbench").joinpath("resources", "cifar100_published.csv")
    with path.open("r", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_loader_has_the_columns_and_every_row():
    table = load_published()
    rows = raw_rows()
    assert list(table.columns) == COLUMNS
    assert len(table) == len(rows) == 268
    renamed = {"fitnet": "fitnets"}  # the table's name for FitNets; kdbench's registry calls it fitnets
    for (_, loaded), raw in zip(table.iterrows(), rows, strict=True):
        raw = {**raw, "method": renamed.get(raw["method"], raw["method"])}
        assert [loaded[c] for c in COLUMNS if c != "top1"] == [raw[c] for c in COLUMNS if c != "top1"]
        assert loaded["top1"] == pytest.approx(float(raw["top1"]))


def test_table_covers_the_crd_pairs_once_per_method():
    table = load_published("cifar100")
    assert set(zip(table["teacher"], table["student"], strict=True)) == PAIRS
    assert not table.duplicated(["dataset", "teacher", "student", "method"]).any()
    per_pair = table.groupby(["teacher", "student"])["method"].apply(set)
    assert all({"teacher", "ce", "kd", "crd"} <= methods for methods in per_pair)


@pytest.mark.parametrize(("teacher", "student", "method", "top1"), KNOWN_FIGURES)
def test_known_published_figures(teacher, student, method, top1):
    table = load_published("cifar100")
    row = table[(table.teacher == teacher) & (table.student == student) & (table.method == method)]
    assert row["top1"].tolist() == [top1]


def test_values_are_plain_strings_and_percentages():
    table = load_published()
    for column in ("dataset", "teacher", "student", "method", "reporting", "source"):
        assert all(type(value) is str and value for value in table[column]), column
    assert table["top1"].notna().all()
    assert table["top1"].between(0, 100).all()
    assert set(table["reporting"]) == set(REPORTING)
    for reporting, methods in REPORTING.items():
        assert set(table.loc[table["reporting"] == reporting, "method"]) == methods, reporting
    dkd = table[table.method == "dkd"]
    assert set(dkd["reporting"]) == {"best epoch, mean of 5 runs"}
    assert dkd["source"].str.contains("Decoupled Knowledge Distillation").all()


def test_methods_are_kdbench_methods_or_run_labels_of_their_variants():
    """A published variant with other parameters is named by the run label kdbench gives it (``crd(kd_weight=1)``)."""
    discover_methods()
    for name in set(load_published()["method"]) - {"teacher"}:
        method, _, rest = name.partition("(")
        cls = get_method(method)
        overrides = dict(item.split("=", 1) for item in rest.removesuffix(")").split(",")) if rest else {}
        assert method_label(method, build_params(cls.Params, overrides, method), cls.Params) == name


def test_dataset_filter():
    assert len(load_published("cifar100")) == len(load_published())
    empty = load_published("mnist5k")
    assert empty.empty and list(empty.columns) == COLUMNS


def test_every_published_model_maps_to_a_registered_zoo_model_and_back():
    table = load_published()
    names = set(table["teacher"]) | set(table["student"])
    assert {name: zoo_name(name) for name in names} == EXPECTED_ZOO_NAMES
    for name in names:
        assert timm.is_model(zoo_name(name))
        assert published_name(zoo_name(name)) == name


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("MobileNetV2", "cifar_mobilenetv2"), ("mobile_half", "cifar_mobilenetv2"),
        ("MobileNet-V2", "cifar_mobilenetv2"),
        ("ShuffleV1", "cifar_shufflenetv1"), ("ShuffleNet-V2", "cifar_shufflenetv2"), ("WRN-40-2", "cifar_wrn_40_2"),
        ("ResNet32x4", "cifar_resnet32x4"), ("ResNet50", "cifar_resnet50"), ("vgg13_bn", "cifar_vgg13"),
        ("cifar_resnet8x4", "cifar_resnet8x4"),
    ],
)
def test_other_spellings_resolve(spelling, expected):
    assert zoo_name(spelling) == expected


def test_unknown_names_raise_one_line_model_errors():
    with pytest.raises(ModelError, match="resnet8x4") as unknown:
        zoo_name("resnet8x8")
    assert "\n" not in str(unknown.value)
    with pytest.raises(ModelError, match="not a model of the CIFAR KD zoo"):
        published_name("resnet50")  # timm's ImageNet ResNet-50 is not the CIFAR one
