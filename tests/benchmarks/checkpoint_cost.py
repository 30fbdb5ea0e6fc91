"""Benchmark: what checkpoints cost a cohort, as a share of its epoch.

A cohort of five methods (kd, dkd, crd, at, fitnets) on the CIFAR-100 pair ``cifar_resnet32x4`` ->
``cifar_resnet8x4`` with CIFAR-shaped synthetic data (50,000 training images of 3x32x32, 100 classes, so that CRD's
memory banks have their CIFAR-100 size), at the CRD protocol's batch of 64. It measures, side by side in one
process:

- the cohort's step (one teacher pass, five members' steps), timed over ``--steps`` steps after a warm-up, and the
  epoch it makes (782 steps of 64 images);
- one end-of-epoch checkpoint of the whole cohort (:meth:`kdbench.training.checkpoint.Checkpoints.save`: five
  files, written atomically), timed ``--repeats`` times (the median), and the files' size.

It prints the checkpoint's share of the epoch; the goal is at most 2%. Usage (from the project root)::

    python -m tests.benchmarks.checkpoint_cost --json reports/checkpoint_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdbench.data import DataConfig, load_dataset
from kdbench.env import device_name
from kdbench.features import describe_model
from kdbench.models import create_model
from kdbench.plan import expand
from kdbench.store import Store
from kdbench.training import Member, teacher_outputs, to_memory_format
from kdbench.training.checkpoint import Checkpoints, Position, Resume
from tests.benchmarks import save_figures

METHODS = {"kd": {}, "dkd": {}, "crd": {}, "at": {}, "fitnets": {}}
BATCH = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed cohort steps (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=3, help="timed checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures."""
    args = parse_args(argv)
    device = torch.device(args.device)
    # synthetic keeps a fifth of its images for test and a tenth of the rest for val: 69,445 leave 50,000 to train
    data_options = {"num_samples": 69_445, "size": 32, "num_classes": 100}
    splits = load_dataset(DataConfig(name="synthetic", val_fraction=0.1, options=data_options, device=str(device)))
    specs = expand(dataset="synthetic", pairs=[("cifar_resnet32x4", "cifar_resnet8x4")], methods=METHODS, seeds=[0],
                   epochs=240, batch_size=BATCH, lr=0.05, data_options=data_options)
    info = splits.info
    teacher = create_model("cifar_resnet32x4", num_classes=info.num_classes, in_chans=3, image_size=32).to(device)
    teacher.eval()
    teacher_info = describe_model(teacher, "cifar_resnet32x4", 3, 32)
    members = [Member(spec, info, teacher_info, device, train_labels=splits.labels("train")) for spec in specs]
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    batches = splits.train_batches(BATCH, generator)
    steps_per_epoch = splits.num_batches("train", BATCH)

    def step(iteration: int) -> None:
        batch = next(batches)
        images = to_memory_format(batch.images, False)
        out = teacher_outputs(teacher, images, {}, members, False)
        for member in members:
            member.train_step(images, batch.labels, batch.indices, out, 0, iteration, steps_per_epoch)

    for i in range(2):
        step(i)
    started = time.perf_counter()
    for i in range(args.steps):
        step(2 + i)
    step_s = (time.perf_counter() - started) / args.steps
    epoch_s = step_s * steps_per_epoch

    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        checkpoints = Checkpoints(store)
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            checkpoints.save(members, Resume(Position(0, "train", 1, 0), generator.get_state(), {}))
            times.append(time.perf_counter() - began)
        sizes = {m.label: store.checkpoint_path(m.spec.run_id).stat().st_size for m in members}
    write_s = statistics.median(times)
    figures = {
        "device": device_name(device), "threads": torch.get_num_threads(), "cohort": [m.label for m in members],
        "train_images": splits.info.sizes["train"], "batch_size": BATCH, "steps_per_epoch": steps_per_epoch,
        "step_s": step_s, "epoch_s": epoch_s, "checkpoint_write_s": write_s,
        "checkpoint_mb": {k: v / 2**20 for k, v in sizes.items()}, "checkpoint_total_mb": sum(sizes.values()) / 2**20,
        "share_of_epoch_pct": 100 * write_s / epoch_s,
    }
    print(f"cohort of {len(members)} on cifar_resnet32x4 -> cifar_resnet8x4, {steps_per_epoch} steps of {BATCH}: "
          f"step {step_s * 1000:.0f} ms, epoch {epoch_s:.0f} s ({figures['device']}, {figures['threads']} threads)")
    print(f"checkpoint of the cohort: {figures['checkpoint_total_mb']:.1f} MB in {len(sizes)} files, written in "
          f"{write_s:.2f} s (median of {args.repeats}): {figures['share_of_epoch_pct']:.2f}% of the epoch")
    save_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
