import argparse
import csv
import types

import pytest
import torch

from kdbench.cli import main
from kdbench.commands import bench
from kdbench.commands.bench import CSV_COLUMNS, add_parser, parse_input_size, resolve_shape, run_bench
from kdbench.errors import ConfigError, KDBenchError, ModelError
from kdbench.models import create_model

FAST = ["--time-budget-s", "0.05", "--batch-size", "8", "--threads", "1"]


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``kdbench bench`` arguments the way the ``kdbench`` command does: as a subcommand."""
    parser = argparse.ArgumentParser(prog="kdbench")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


@pytest.mark.slow
def test_bench_end_to_end_writes_table_and_csv(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.csv"
    args = parse(["test_resnet", "resnet18", "--input-size", "32", "--num-classes", "10", "--out", str(out), *FAST])
    assert args.handler is run_bench
    assert run_bench(args) == 0

    printed = capsys.readouterr().out
    assert "test_resnet" in printed and "resnet18" in printed and "latency_ms_bs1" in printed
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [row["model"] for row in rows] == ["test_resnet", "resnet18"]
    for row in rows:
        model = create_model(row["model"], num_classes=10, in_chans=3, image_size=32)
        assert float(row["params_m"]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
        assert (row["in_chans"], row["image_size"], row["num_classes"]) == ("3", "32", "10")
        assert float(row["gflops"]) == pytest.approx(2 * float(row["gmacs"])) and float(row["gmacs"]) > 0
        assert float(row["latency_ms_bs1_p90"]) >= float(row["latency_ms_bs1"]) > 0
        assert float(row["samples_per_s"]) > 0 and float(row["latency_spread"]) >= 0
        assert (row["batch_size"], row["threads"], row["device"]) == ("8", "1", "cpu")
        assert row["torch_version"] == torch.__version__
    # ResNet-18's published 1.81 GMACs at 224x224: every feature map is 7x smaller per side at 32x32 (224 = 7 x 32),
    # so the convolutions cost 1/49 of that (the classifier is negligible).
    assert float(rows[1]["gmacs"]) == pytest.approx(1.81 / 49, rel=0.02)


def test_input_size_with_channels(tmp_path, capsys):
    args = parse(["test_resnet", "--input-size", "1,28,28", "--num-classes", "5", *FAST])
    assert run_bench(args) == 0
    assert "input 1x28x28, 5 classes" in capsys.readouterr().out


def test_unknown_model_is_a_model_error_before_any_measurement(capsys):
    with pytest.raises(ModelError, match="unknown model 'resnet1'"):
        run_bench(parse(["test_resnet", "resnet1", "--input-size", "32", *FAST]))
    assert capsys.readouterr().out == ""  # nothing was measured or printed


def test_bench_subcommand_exits_2_with_one_line(capsys):
    assert main(["bench", "no_such_model_xyz", "--input-size", "32"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0
    assert stderr.startswith("kdbench: error: unknown model 'no_such_model_xyz'")


def test_too_small_input_is_a_model_error():
    with pytest.raises(ModelError, match="cannot process"):
        run_bench(parse(["test_vit", "--input-size", "8", *FAST]))


@pytest.mark.parametrize(("text", "expected"), [("32", (None, 32)), ("3,32,32", (3, 32)), (" 1, 28, 28 ", (1, 28))])
def test_parse_input_size(text, expected):
    assert parse_input_size(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "3,32", "3,32,30", "32x32", "", "3,32,32,1", "a"])
def test_bad_input_sizes_are_config_errors(text):
    with pytest.raises(ConfigError, match="--input-size"):
        parse_input_size(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-size", "3,32,32", "--in-chans", "1"], "--in-chans"),
        (["--num-classes", "0"], "--num-classes"),
        (["--amp"], "--device cuda"),
        (["--channels-last"], "--device cuda"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "0"], "--threads"),
        (["--time-budget-s", "0"], "--time-budget-s"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(KDBenchError, match=message) as caught:
        run_bench(parse(["test_resnet", *argv]))
    assert "\n" not in str(caught.value)


def test_defaults_are_imagenet_shaped():
    assert resolve_shape(parse(["m"])) == (3, 224, 1000)


def test_dataset_shape_with_overrides():
    assert resolve_shape(parse(["m", "--dataset", "mnist5k"])) == (1, 28, 10)
    assert resolve_shape(parse(["m", "--dataset", "synthetic", "--input-size", "64", "--num-classes", "7"])) == (
        3, 64, 7)
    assert resolve_shape(parse(["m", "--dataset", "mnist5k", "--in-chans", "3"])) == (3, 28, 10)


def test_dataset_description_is_used(monkeypatch):
    seen = []

    def describe_dataset(config):
        seen.append((config.name, config.root))
        return types.SimpleNamespace(in_chans=2, image_size=20, num_classes=4)

    monkeypatch.setattr(bench, "describe_dataset", describe_dataset)
    assert resolve_shape(parse(["m", "--dataset", "anything", "--data-root", "/data"])) == (2, 20, 4)
    assert seen == [("anything", "/data")]


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset"):
        run_bench(parse(["test_resnet", "--dataset", "cifar1000"]))


@pytest.mark.slow
def test_bench_uses_dataset_in_end_to_end_run(capsys, monkeypatch):
    monkeypatch.setattr(bench, "DEFAULT_BATCH_SIZE", {"cpu": 4, "cuda": 4})
    assert run_bench(parse(["test_resnet", "--dataset", "mnist5k", "--time-budget-s", "0.05", "--threads", "1"])) == 0
    printed = capsys.readouterr().out
    assert "input 1x28x28, 10 classes" in printed
    assert " 4 " in printed.splitlines()[-1]  # the batch size column


@pytest.mark.gpu
def test_bench_on_cuda(tmp_path, capsys):
    out = tmp_path / "gpu.csv"
    args = parse(["test_resnet", "--input-size", "32", "--num-classes", "10", "--device", "cuda", "--amp",
                  "--channels-last", "--batch-size", "32", "--time-budget-s", "0.1", "--out", str(out)])
    assert run_bench(args) == 0
    with out.open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["device"] == "cuda" and row["device_name"] == torch.cuda.get_device_name(0)
    assert float(row["samples_per_s"]) > 0 and float(row["latency_ms_bs1"]) > 0 and float(row["peak_mem_mb"]) > 0
    assert (row["batch_size"], row["amp"], row["channels_last"], row["threads"]) == ("32", "True", "True", "")
