"""``kdbench bench``: inference cost of models by name, without training: params, MACs, latency, throughput.

Example::

    kdbench bench resnet18 mobilenetv3_small_050 --input-size 32 --num-classes 100 --out bench.csv
    kdbench bench resnet8x4 --dataset cifar100 --device cuda --amp --channels-last

The figures are those of a run record's efficiency fields (see :mod:`kdbench.measure`), measured on one device:
CPU latency and throughput with ``--device cpu`` (the default), GPU ones with ``--device cuda``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch

from kdbench.data import DataConfig, describe_dataset
from kdbench.env import device_name, resolve_device
from kdbench.errors import ConfigError, DataError
from kdbench.measure import count_flops, count_params_m, cpu_benchmark, gpu_benchmark
from kdbench.models import check_model_name, create_model
from kdbench.store import atomic_write_text

DEFAULT_IMAGE_SIZE = 224
DEFAULT_IN_CHANS = 3
DEFAULT_NUM_CLASSES = 1000
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 256}

#: Columns of the CSV written by ``--out``, in order.
CSV_COLUMNS = (
    "model", "in_chans", "image_size", "num_classes", "device", "device_name", "params_m", "gmacs", "gflops",
    "latency_ms_bs1", "latency_ms_bs1_p90", "latency_spread", "samples_per_s", "batch_size", "threads", "amp",
    "channels_last", "peak_mem_mb", "torch_version", "timm_version",
)
#: Columns of the printed table and how each value is written.
TABLE_FORMATS = {
    "model": "{}", "params_m": "{:.3f}", "gmacs": "{:.4f}", "gflops": "{:.4f}", "latency_ms_bs1": "{:.3f}",
    "latency_ms_bs1_p90": "{:.3f}", "latency_spread": "{:.3f}", "samples_per_s": "{:.1f}", "batch_size": "{}",
    "threads": "{}", "device": "{}",
}


def _add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``kdbench bench`` to ``parser`` and return it."""
    parser.add_argument("models", nargs="+", metavar="MODEL", help="timm model names (kdbench's zoo included)")
    parser.add_argument("--input-size", metavar="N|C,H,W", default=None,
                        help=f"input image size: a square side N, or C,N,N (default: the dataset's, else "
                             f"{DEFAULT_IN_CHANS},{DEFAULT_IMAGE_SIZE},{DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="take channels, classes and image size from this dataset")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="root of file-based datasets for --dataset (default: $KDBENCH_DATA)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help=f"output classes (default: the dataset's, else {DEFAULT_NUM_CLASSES})")
    parser.add_argument("--in-chans", type=int, default=None,
                        help=f"input channels (default: the dataset's, else {DEFAULT_IN_CHANS})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per call for the throughput (default: 64 on cpu, 256 on cuda)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--amp", action="store_true", help="GPU timing under bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="GPU timing in channels-last memory format")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for CPU timing (default: torch's current setting)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="seconds of timed calls per batch size (default: 0.5 on cpu, 1.0 on cuda)")
    parser.add_argument("--out", metavar="FILE.csv", default=None, help="also write the table as CSV")
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``kdbench`` command's subparsers; its handler is :func:`run_bench`."""
    parser = subparsers.add_parser(
        "bench", help="measure params, MACs, latency and throughput of models",
        description="Measure the inference cost of models: params, MACs/FLOPs at batch 1, latency at batch 1 and "
                    "throughput at --batch-size, on the CPU or a CUDA device.",
    )
    _add_bench_arguments(parser)
    parser.set_defaults(handler=run_bench)
    return parser


def parse_input_size(text: str) -> tuple[int | None, int]:
    """``"32"`` -> ``(None, 32)``; ``"3,32,32"`` -> ``(3, 32)``. Only square images are supported.

    Raises:
        ConfigError: not a positive side nor a ``C,H,W`` triple with ``H == W``.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (1, 3) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"--input-size must be a positive side N or C,N,N, got {text!r}")
    numbers = [int(part) for part in parts]
    if len(numbers) == 1:
        return None, numbers[0]
    channels, height, width = numbers
    if height != width:
        raise ConfigError(f"--input-size {text!r}: only square images are supported (height == width)")
    return channels, height


def _dataset_shape(name: str, root: str | None) -> tuple[int, int, int]:
    """``(in_chans, image_size, num_classes)`` of a registered dataset."""
    info = describe_dataset(DataConfig(name, root=root))
    return int(info.in_chans), int(info.image_size), int(info.num_classes)


def resolve_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(in_chans, image_size, num_classes)`` from the options: explicit flags, then the dataset, then defaults.

    Raises:
        ConfigError: a malformed or contradictory size, or a non-positive count.
    """
    in_chans, image_size, num_classes = DEFAULT_IN_CHANS, DEFAULT_IMAGE_SIZE, DEFAULT_NUM_CLASSES
    if args.dataset:
        in_chans, image_size, num_classes = _dataset_shape(args.dataset, args.data_root)
    if args.input_size:
        size_chans, image_size = parse_input_size(args.input_size)
        if size_chans is not None:
            if args.in_chans is not None and args.in_chans != size_chans:
                raise ConfigError(f"--input-size {args.input_size} says {size_chans} channels but --in-chans "
                                  f"says {args.in_chans}; give one of them")
            in_chans = size_chans
    if args.in_chans is not None:
        in_chans = args.in_chans
    if args.num_classes is not None:
        num_classes = args.num_classes
    for flag, value in (("--in-chans", in_chans), ("--num-classes", num_classes)):
        if value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    return in_chans, image_size, num_classes


def _check_options(args: argparse.Namespace, device: torch.device) -> None:
    """One-line errors for options that do not fit together."""
    if device.type != "cuda" and (args.amp or args.channels_last):
        raise ConfigError("--amp and --channels-last apply to GPU timing only; add --device cuda")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
    if args.time_budget_s is not None and not args.time_budget_s > 0:
        raise ConfigError(f"--time-budget-s must be positive, got {args.time_budget_s}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give the CSV file to write, e.g. {Path(args.out) / 'b.csv'}")


def bench_model(name: str, args: argparse.Namespace, shape: tuple[int, int, int], device: torch.device) -> dict:
    """One row of the table: create ``name`` for ``shape`` and measure it on ``device``."""
    in_chans, image_size, num_classes = shape
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    input_size = (in_chans, image_size, image_size)
    gflops, gmacs = count_flops(model, input_size)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE[device.type]
    budget = {} if args.time_budget_s is None else {"time_budget_s": args.time_budget_s}
    row: dict[str, Any] = {
        "model": name, "in_chans": in_chans, "image_size": image_size, "num_classes": num_classes,
        "device": device.type, "device_name": device_name(device), "params_m": count_params_m(model),
        "gmacs": gmacs, "gflops": gflops, "amp": bool(args.amp), "channels_last": bool(args.channels_last),
        "threads": None, "peak_mem_mb": None, "torch_version": torch.__version__, "timm_version": timm.__version__,
    }
    if device.type == "cuda":
        figures = gpu_benchmark(model, input_size, batch_size=batch_size, amp=args.amp,
                                channels_last=args.channels_last, device=device, **budget)
        row["peak_mem_mb"] = figures["gpu_peak_mem_mb"]
    else:
        figures = cpu_benchmark(model, input_size, batch_size=batch_size, threads=args.threads, **budget)
        row["threads"] = figures["cpu_threads"]
    prefix = "gpu_" if device.type == "cuda" else "cpu_"
    for field in ("latency_ms_bs1", "latency_ms_bs1_p90", "latency_spread", "samples_per_s", "batch_size"):
        row[field] = figures[prefix + field]
    return row


def format_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table (the columns of :data:`TABLE_FORMATS`)."""
    header = list(TABLE_FORMATS)
    cells = [[("-" if row[col] is None else fmt.format(row[col])) for col, fmt in TABLE_FORMATS.items()]
             for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]
    lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                       for i, (text, width) in enumerate(zip(line, widths, strict=True)))
             for line in [header, *cells]]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """Measure every model of ``args.models``, print the table, write ``args.out`` if given; return 0.

    Raises:
        KDBenchError: an unknown model, a bad size or device, an input size a model cannot process.
    """
    device = resolve_device(args.device)
    _check_options(args, device)
    shape = resolve_shape(args)
    for name in args.models:  # fail on a typo before spending time on the others
        check_model_name(name)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args, shape, device))
    in_chans, image_size, num_classes = shape
    print(f"# {device.type} ({rows[0]['device_name']}), input {in_chans}x{image_size}x{image_size}, "
          f"{num_classes} classes, torch {torch.__version__}, timm {timm.__version__}")
    print(format_table(rows))
    if args.out:
        frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
        try:
            atomic_write_text(Path(args.out), frame.to_csv(index=False))
        except OSError as err:
            raise DataError(f"cannot write --out {args.out}: {err.strerror or err}") from None
        print(f"# wrote {args.out}")
    return 0
