"""Benchmark: the ``imagenet`` loader alone (images/s with 0, 1, 2, ... workers, each decoder) against the step.

Writes a small folder of JPEGs in the ImageNet layout (``train/<class>/``, ``val/<class>/``), loads it as the
``imagenet`` dataset and times:

- the loader alone: one epoch of training batches (decode, RandomResizedCrop, flip, to the device, normalise)
  with each worker count and each decoder (``pil``: PIL in the workers; ``device``: the workers read the files,
  torchvision decodes the JPEGs and crops on the data device, nvJPEG on a GPU), after a first, untimed epoch that
  starts the persistent workers; per CPU core = images/s over the cores the loader keeps busy (its workers, or
  the main process without workers);
- the training step: kdbench's ``kd`` step (teacher forward + ``Member.train_step``) at the same image size, on
  random inputs, so that it does not wait for the loader.

A loader keeps the device fed when its images/s exceed the step's samples/s; one worker's rate tells how many
workers a faster device needs (workers ~= step samples/s / images/s per worker, when the CPU has that many cores).

Usage (from the project root)::

    python -m tests.benchmarks.loader                        # CPU, 192 JPEGs at 224 px, both decoders, minutes
    python -m tests.benchmarks.loader --device cuda --workers 0 4 8 16 --images 4096 --source-size 500 375 \\
        --teacher resnet34 --student resnet18 --batch-size 512 --amp --channels-last   # the ImageNet protocol's step
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.data import DataConfig, clear_dataset_cache, load_dataset
from kdbench.env import device_name, resolve_device
from kdbench.features import describe_model
from kdbench.models import create_model
from kdbench.plan import make_spec
from kdbench.training import Member, teacher_outputs, to_memory_format
from tests.benchmarks import save_figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=192, help="training JPEGs to write (default: %(default)s)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--source-size", type=int, nargs=2, default=[224, 224], metavar=("W", "H"),
                   help="size of the written JPEGs (default: 224 224)")
    p.add_argument("--image-size", type=int, default=224, help="the crop the models see (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--decode", nargs="+", default=["pil", "device"], choices=["pil", "device"],
                   help="decoders to time (default: both)")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--student", default="mobilenetv3_small_100")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default: 1)")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--folder", type=Path, help="use (or fill) this folder instead of a temporary one")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def write_jpegs(root: Path, count: int, classes: int, size: tuple[int, int]) -> None:
    """``count`` training and ``count // 8`` (at least one per class) validation JPEGs of smooth random colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    for part, n in (("train", count), ("val", max(classes, count // 8))):
        for i in range(n):
            folder = root / part / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{part}_{i:06d}.JPEG"
            if path.exists():
                continue
            coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
            noise = rng.integers(-12, 13, (height, width, 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)


def loader_rate(root: Path, workers: int, args: argparse.Namespace, device: torch.device, decode: str = "pil") -> float:
    """Images/s of one training epoch of the ``imagenet`` loader (``workers`` workers, ``decode``), warmed up."""
    clear_dataset_cache()
    config = DataConfig("imagenet", root=str(root), image_size=args.image_size, val_fraction=0.0, device=str(device),
                        options={"workers": workers, "decode": decode})
    splits = load_dataset(config)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in splits.train_batches(args.batch_size, generator):  # starts the workers; fills the page cache
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    seen = 0
    for batch in splits.train_batches(args.batch_size, generator):
        seen += len(batch.labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = seen / (time.perf_counter() - tick)
    clear_dataset_cache()
    return rate


def step_rate(args: argparse.Namespace, device: torch.device, classes: int) -> float:
    """Samples/s of kdbench's ``kd`` step at the loader's image size, on random inputs."""
    from kdbench.data import DatasetInfo

    size = args.image_size
    info = DatasetInfo(name="imagenet", num_classes=classes, in_chans=3, image_size=size, native_size=size,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), flip=True, crop_padding=0,
                       sizes={"train": args.images, "val": 0, "test": 0})
    teacher = create_model(args.teacher, num_classes=classes, in_chans=3, image_size=size).to(device)
    teacher = teacher.eval().requires_grad_(False)
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    spec = make_spec(dataset="synthetic", student=args.student, method="kd", teacher=args.teacher, epochs=1,
                     batch_size=args.batch_size, amp=args.amp, channels_last=args.channels_last)
    member = Member(spec, info, describe_model(teacher, args.teacher, 3, size), device)
    g = torch.Generator().manual_seed(0)
    images = to_memory_format(torch.randn(args.batch_size, 3, size, size, generator=g).to(device),
                              args.channels_last)
    labels = torch.randint(0, classes, (args.batch_size,), generator=g).to(device)
    indices = torch.arange(args.batch_size, device=device)
    rates = []
    for i in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        out = teacher_outputs(teacher, images, {}, [member], args.amp)
        member.train_step(images, labels, indices, out, 0, i, 1000, views={})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up
            rates.append(args.batch_size / (time.perf_counter() - tick))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return its figures."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or Path(tmp)
        tick = time.perf_counter()
        write_jpegs(root, args.images, args.classes, tuple(args.source_size))
        written_s = time.perf_counter() - tick
        loader = {decode: {workers: loader_rate(root, workers, args, device, decode) for workers in args.workers}
                  for decode in args.decode}
    step = step_rate(args, device, args.classes)
    per_core = {decode: max(rate / max(workers, 1) for workers, rate in rates.items())
                for decode, rates in loader.items()}
    figures = {
        "device": device_name(device), "cpu_count": os.cpu_count(), "images": args.images,
        "source_size": args.source_size, "image_size": args.image_size, "batch_size": args.batch_size,
        "loader_images_per_s": {decode: {str(w): r for w, r in rates.items()} for decode, rates in loader.items()},
        "images_per_s_per_core": per_core,
        "step": f"kd {args.teacher} -> {args.student}", "step_samples_per_s": step, "amp": args.amp,
        "channels_last": args.channels_last, "jpeg_write_s": written_s,
        "cores_to_keep_up": {decode: step / rate for decode, rate in per_core.items()},
    }
    print(f"{args.images} JPEGs {args.source_size[0]}x{args.source_size[1]} -> {args.image_size} px crops, batch "
          f"{args.batch_size}, {figures['device']}, {os.cpu_count()} CPUs")
    for decode, rates in loader.items():
        for workers, rate in rates.items():
            print(f"  loader, decode {decode}, {workers} worker(s): {rate:.0f} images/s "
                  f"({rate / max(workers, 1):.0f} per core)")
    print(f"  training step ({figures['step']}, main process {args.threads} thread(s)): {step:.1f} samples/s")
    for decode, rate in per_core.items():
        print(f"  decode {decode}: {rate:.0f} images/s per core; this step needs ~{step / rate:.2f} core(s)")
    save_figures(args.json, figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
