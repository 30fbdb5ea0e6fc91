"""The packaged published CIFAR-100 and ImageNet tables and the published <-> zoo model-name mapping."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import timm

import kdbench.zoo  # noqa: F401  (registers the zoo)
from kdbench.config import build_params, method_label
from kdbench.distiller import discover_methods, get_method
from kdbench.errors import ModelError
from kdbench.published import load_published, model_name, published_name, published_teacher_top1, zoo_name

COLUMNS = ["dataset", "teacher", "student", "method", "top1", "reporting", "source"]

# the 13 teacher/student pairs of the CRD tables
PAIRS = {
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"), ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"), ("wrn_40_2", "shufflenetv1"),
}
# the cross-architecture pairs the logit-standardisation README adds (its table 2)
LS_PAIRS = {("resnet32x4", "wrn_16_2"), ("resnet32x4", "wrn_40_2"), ("wrn_40_2", "resnet8x4"),
            ("wrn_40_2", "mobilenetv2")}
MLKD_LS = "mlkd(temperature=2,kd_weight=9,standardize=True)"

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
    ("resnet110", "resnet20", "dkd", 71.06),  # logit-standardization-KD README, table 1, row DKD
    ("resnet32x4", "resnet8x4", MLKD_LS, 78.28),  # logit-standardization-KD README, table 1, row MLKD+Ours
    ("wrn_40_2", "resnet8x4", "kd_ls", 77.11),  # logit-standardization-KD README, table 2
    ("resnet32x4", "wrn_40_2", MLKD_LS, 79.66),  # logit-standardization-KD README, table 2
    ("resnet32x4", "resnet8x4", "ttm", 76.17),  # zkxufo/TTM README
    ("resnet32x4", "resnet8x4", "ickd", 75.25),  # ICKD Cifar100/README.md, ICKD-C (w/o KL)
    ("wrn_40_2", "shufflenetv1", "wkd_f", 77.36),  # JiamingLv/WKD README
    ("resnet32x4", "resnet8x4", "wkd_l", 76.53),  # JiamingLv/WKD README, row WKD-L
    ("wrn_40_2", "shufflenetv1", "wkd_l", 76.72),  # JiamingLv/WKD README, row WKD-L
    ("resnet32x4", "shufflenetv1", "sdd_kd", 76.30),  # SDD-CVPR2024 README (cifar100.png), row SD-KD
    ("resnet50", "vgg8", "sdd_dkd", 75.86),  # SDD-CVPR2024 README (cifar100.png), row SD-DKD
    ("resnet56", "resnet20", "kdpp", 72.53),  # Knowledge-Distillation-via-ND README, row KD++
    ("resnet32x4", "resnet8x4", "dkdpp", 76.28),  # Knowledge-Distillation-via-ND README, row DKD++
    ("resnet32x4", "shufflenetv2", "dot", 75.55),  # mdistiller README, DOT table, row KD+DOT
    ("resnet32x4", "resnet8x4", "simkd", 78.08),  # DefangChen/SimKD README, row SimKD (f=2)
]

# ImageNet figures as printed in the READMEs of the code releases
KNOWN_IMAGENET_FIGURES = [
    ("resnet34.tv_in1k", "resnet18", "teacher", 73.31),  # DIST_KD README
    ("resnet34.tv_in1k", "resnet18", "ce", 69.76),  # DIST_KD README, torchdistill benchmark
    ("resnet34.tv_in1k", "resnet18", "kd", 71.03),  # mdistiller README
    ("resnet34.tv_in1k", "resnet18", "crd", 71.17),  # CRD, as torchdistill's benchmark quotes it
    ("resnet34.tv_in1k", "resnet18", "reviewkd", 71.61),  # ReviewKD ImageNet README
    ("resnet34.tv_in1k", "resnet18", "dkd", 71.70),  # mdistiller README
    ("resnet34.tv_in1k", "resnet18", "dist", 72.07),  # DIST_KD README
    ("resnet50.tv_in1k", "mobilenetv1_100", "teacher", 76.16),  # DIST_KD README
    ("resnet50.tv_in1k", "mobilenetv1_100", "ce", 68.87),  # ReviewKD ImageNet README
    ("resnet50.tv_in1k", "mobilenetv1_100", "kd", 70.50),  # mdistiller README
    ("resnet50.tv_in1k", "mobilenetv1_100", "reviewkd", 72.56),  # ReviewKD ImageNet README
    ("resnet50.tv_in1k", "mobilenetv1_100", "dkd", 72.05),  # mdistiller README
    ("resnet50.tv_in1k", "mobilenetv1_100", "dist", 73.24),  # DIST_KD README
    ("resnet34.tv_in1k", "resnet18", "wttm", 72.19),  # zkxufo/TTM README, ImageNet table
    ("resnet34.tv_in1k", "resnet18", "ickd", 72.16),  # ICKD ImageNet/README.md
    ("resnet50.tv_in1k", "mobilenetv1_100", "kdpp", 72.77),  # Knowledge-Distillation-via-ND README
    ("resnet34.tv_in1k", "resnet18", "dkdpp", 72.07),  # Knowledge-Distillation-via-ND README
    ("resnet50.tv_in1k", "mobilenetv1_100", "wkd_l", 73.17),  # JiamingLv/WKD README
    ("resnet34.tv_in1k", "resnet18", "wkd_f", 72.50),  # JiamingLv/WKD README
    ("resnet50.tv_in1k", "mobilenetv1_100", "dot", 73.09),  # mdistiller README, DOT table
    ("resnet34.tv_in1k", "resnet18", "srd", 71.87),  # Simple-Recipe-Distillation README
    ("resnet34.tv_in1k", "resnet18", "mgd", 71.69),  # yzd-v/MGD cls/README.md
    ("resnet50.tv_in1k", "mobilenetv1_100", "sdd_dkd", 73.08),  # SDD-CVPR2024 README (ImageNet.png)
]

# how each source reports its figures (the ``reporting`` column's whole vocabulary)
REPORTING = {
    "last epoch, single run": {"teacher", "ce", "kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft",
                               "fsp", "nst", "crd", "crd(kd_weight=1)"},
    "best epoch, mean of 5 runs": {"dkd"},
    "mean of runs; epoch and number of runs not stated": {"dist"},
    # kd and dkd: the LS README's table 2 pairs
    "not stated": {"ctkd", "mlkd", "kd", "dkd", "ickd", "wkd_f", "wkd_l", "sdd_kd", "sdd_dkd", "kdpp", "dkdpp",
                   "simkd"},
    "best epoch; number of runs not stated": {"dot"},  # mdistiller's trainer, as its README's DOT table
    "best epoch, mean of runs; number of runs not stated": {"kd_ls", "dkd_ls", "ctkd_ls", MLKD_LS, "dkd"},
    "mean of 5 runs; epoch not stated": {"ttm", "wttm"},
}

EXPECTED_ZOO_NAMES = {
    "resnet8x4": "cifar_resnet8x4", "resnet32x4": "cifar_resnet32x4", "resnet20": "cifar_resnet20",
    "resnet32": "cifar_resnet32", "resnet56": "cifar_resnet56", "resnet110": "cifar_resnet110",
    "resnet50": "cifar_resnet50", "wrn_40_2": "cifar_wrn_40_2", "wrn_16_2": "cifar_wrn_16_2",
    "wrn_40_1": "cifar_wrn_40_1", "vgg13": "cifar_vgg13", "vgg8": "cifar_vgg8", "mobilenetv2": "cifar_mobilenetv2",
    "shufflenetv1": "cifar_shufflenetv1", "shufflenetv2": "cifar_shufflenetv2",
}


def raw_rows() -> list[dict[str, str]]:
    """The packaged CSVs read with the standard library, as an independent reference for the loader."""
    rows = []
    for name in ("cifar100_published.csv", "imagenet_published.csv"):
        path = resources.files("kdbench").joinpath("resources", name)
        with path.open("r", encoding="utf-8", newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_loader_has_the_columns_and_every_row():
    table = load_published()
    rows = raw_rows()
    assert list(table.columns) == COLUMNS
    assert len(table) == len(rows) == 311 + 13 + 35 + 30 + 18  # + 2022-2025 methods: 30 CIFAR-100, 18 ImageNet
    renamed = {"fitnet": "fitnets"}  # the table's name for FitNets; kdbench's registry calls it fitnets
    for (_, loaded), raw in zip(table.iterrows(), rows, strict=True):
        raw = {**raw, "method": renamed.get(raw["method"], raw["method"])}
        assert [loaded[c] for c in COLUMNS if c != "top1"] == [raw[c] for c in COLUMNS if c != "top1"]
        assert loaded["top1"] == pytest.approx(float(raw["top1"]))


def test_table_covers_the_crd_pairs_once_per_method():
    table = load_published("cifar100")
    assert set(zip(table["teacher"], table["student"], strict=True)) == PAIRS | LS_PAIRS
    assert not load_published().duplicated(["dataset", "teacher", "student", "method"]).any()
    per_pair = table.groupby(["teacher", "student"])["method"].apply(set)
    assert all({"teacher", "ce", "kd", "crd"} <= per_pair[pair] for pair in PAIRS)
    assert all({"kd", "kd_ls", "dkd", "dkd_ls", "mlkd", MLKD_LS} <= per_pair[pair] for pair in LS_PAIRS)


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
    cifar = load_published("cifar100")
    assert set(cifar["reporting"]) == set(REPORTING)
    for reporting, methods in REPORTING.items():
        assert set(cifar.loc[cifar["reporting"] == reporting, "method"]) == methods, reporting
    dkd_paper = cifar[cifar["reporting"] == "best epoch, mean of 5 runs"]
    assert set(dkd_paper["method"]) == {"dkd"}
    assert dkd_paper["source"].str.contains("Decoupled Knowledge Distillation").all()


def test_methods_are_kdbench_methods_or_run_labels_of_their_variants():
    """A published variant with other parameters is named by the run label kdbench gives it (``crd(kd_weight=1)``)."""
    discover_methods()
    for name in set(load_published()["method"]) - {"teacher"}:
        method, _, rest = name.partition("(")
        cls = get_method(method)
        overrides = dict(item.split("=", 1) for item in rest.removesuffix(")").split(",")) if rest else {}
        assert method_label(method, build_params(cls.Params, overrides, method), cls.Params) == name


def test_dataset_filter():
    assert len(load_published("cifar100")) + len(load_published("imagenet")) == len(load_published())
    empty = load_published("mnist5k")
    assert empty.empty and list(empty.columns) == COLUMNS


def test_every_published_model_maps_to_a_registered_zoo_model_and_back():
    table = load_published("cifar100")
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


@pytest.mark.parametrize(("teacher", "student", "method", "top1"), KNOWN_IMAGENET_FIGURES)
def test_known_imagenet_figures(teacher, student, method, top1):
    table = load_published("imagenet")
    row = table[(table.teacher == teacher) & (table.student == student) & (table.method == method)]
    assert row["top1"].tolist() == [top1]


def test_imagenet_rows_name_timm_models_and_both_protocol_pairs():
    table = load_published("imagenet")
    assert set(zip(table["teacher"], table["student"], strict=True)) == {
        ("resnet34.tv_in1k", "resnet18"), ("resnet50.tv_in1k", "mobilenetv1_100")}
    for name in set(table["teacher"]) | set(table["student"]):
        assert timm.is_model(name)
        assert model_name("imagenet", name) == name
    assert model_name("cifar100", "resnet8x4") == "cifar_resnet8x4"
    assert table["source"].str.len().gt(20).all()
    assert published_teacher_top1("imagenet", "resnet50.tv_in1k") == 76.16
    assert published_teacher_top1("imagenet", "resnet18") is None
    assert published_teacher_top1("mnist5k", "resnet34.tv_in1k") is None
