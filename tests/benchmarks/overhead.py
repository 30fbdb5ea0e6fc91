"""Benchmark: kdbench's training step against a bare PyTorch loop doing the same work.

In one process, side by side on the same models, batches and optimiser settings, it times:

- ``bare ce``: ``student(x)``, cross-entropy, ``zero_grad``, ``backward``, SGD ``step``;
- ``kdbench ce``: the same through :meth:`kdbench.training.Member.train_step` with the ``ce`` method;
- ``bare kd``: a teacher forward under ``inference_mode``, then the student's forward, CE + T²-scaled KL,
  backward and SGD step;
- ``kdbench kd``: the teacher forward as the cohort loop runs it (:func:`kdbench.training.teacher_outputs`),
  then ``Member.train_step`` with the ``kd`` method.

Each way trains its own copy of one student initialisation. The ways are interleaved: every repetition times
``--steps`` steps of each way, in an order that rotates between repetitions, so that the machine's slow and fast
moments fall on all of them alike. Figures are medians over the repetitions; the ratio kdbench / bare is the
median of the per-repetition ratios (the goal is >= 0.95). On a GPU the timings synchronise only at the ends of
a repetition, and the achieved FLOP/s is set against the device's peak (model FLOPs from
:func:`kdbench.measure.count_flops`: a training step is counted as three forward passes of the student, plus one
of the teacher for ``kd``).

Usage (from the project root)::

    python -m tests.benchmarks.overhead                      # CPU, small CIFAR models, about a minute
    python -m tests.benchmarks.overhead --device cuda --amp --channels-last \\
        --teacher cifar_resnet32x4 --student cifar_resnet8x4 --json reports/overhead_gpu.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import DatasetInfo
from kdbench.env import device_name, resolve_device
from kdbench.features import describe_model
from kdbench.measure import count_flops
from kdbench.models import create_model
from kdbench.plan import make_spec
from kdbench.training import Member, autocast, teacher_outputs, to_memory_format
from tests.benchmarks import save_figures

#: dense peak TFLOP/s by device-name fragment: (bf16, fp32 with TF32 convolutions/matmuls, plain fp32)
PEAK_TFLOPS = {
    "H200": (989.4, 494.7, 66.9),
    "H100 SXM": (989.4, 494.7, 66.9),
    "H100 PCIe": (756.0, 378.0, 51.2),
    "H100": (989.4, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 181.0, 91.6),
    "RTX 4090": (165.2, 82.6, 82.6),
    "A10": (125.0, 62.5, 31.2),
    "V100": (125.0, 15.7, 15.7),
}

TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9  # kd's defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--teacher", default=None, help="default: cifar_resnet20 on CPU, cifar_resnet32x4 on a GPU")
    p.add_argument("--student", default=None, help="default: cifar_resnet8 on CPU, cifar_resnet8x4 on a GPU")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="steps per way per repetition (CPU 6, GPU 50)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (CPU 9, GPU 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per way first (CPU 2, GPU 20)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default: %(default)s)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (both ways)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs and models (both ways)")
    p.add_argument("--compile", action="store_true", help="torch.compile the students and the teacher (both ways)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, when not in the table")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


class Way:
    """One way of training: a name, a step function, and its per-repetition samples/s."""

    def __init__(self, name: str, step: Callable[[int], None]) -> None:
        self.name = name
        self.step = step
        self.rates: list[float] = []


def bare_way(student: nn.Module, teacher: nn.Module | None, batches: list[tuple[Tensor, Tensor]],
             amp: bool, lr: float = 0.05) -> Callable[[int], None]:
    """A bare PyTorch training step (``ce`` without a teacher, ``kd`` with one)."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    device = batches[0][0].device
    student.train()

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)]
        if teacher is not None:
            with torch.inference_mode(), autocast(device, amp):
                target = teacher(images)
        with autocast(device, amp):
            logits = student(images)
            loss = F.cross_entropy(logits, labels)
            if teacher is not None:
                soft = F.kl_div(F.log_softmax(logits.float() / TEMPERATURE, 1),
                                F.log_softmax(target.float().clone() / TEMPERATURE, 1),
                                reduction="batchmean", log_target=True)
                loss = CE_WEIGHT * loss + KD_WEIGHT * TEMPERATURE**2 * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def kdbench_way(member: Member, teacher: nn.Module | None, batches: list[tuple[Tensor, Tensor]],
                iterations: int = 1000) -> Callable[[int], None]:
    """kdbench's step: the cohort loop's teacher pass, then :meth:`Member.train_step`."""
    indices = torch.arange(len(batches[0][1]), device=batches[0][1].device)

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)]
        out = teacher_outputs(teacher, images, {}, [member], member.spec.amp) if teacher is not None else None
        member.train_step(images, labels, indices, out, 0, i % iterations, iterations, views={})

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(name: str, amp: bool) -> tuple[float | None, str]:
    """The table's dense peak for a device name (bf16 with ``amp``, else TF32), and which peak it is."""
    for fragment, (bf16, tf32, _fp32) in PEAK_TFLOPS.items():
        if fragment.lower() in name.lower():
            return (bf16, "bf16 dense") if amp else (tf32, "tf32 dense")
    return None, "unknown"


def build_ways(teacher_name: str, student_name: str, batch: int, size: int, classes: int, device: torch.device, *,
               amp: bool = False, channels_last: bool = False, compile: bool = False
               ) -> tuple[list[Way], dict[str, Member], nn.Module]:
    """The four ways (bare/kdbench x ce/kd) on one teacher, one student initialisation and four fixed batches."""
    chans = 3
    info = DatasetInfo(name="synthetic", num_classes=classes, in_chans=chans, image_size=size, native_size=size,
                       mean=(0.5,) * chans, std=(0.25,) * chans, flip=True, crop_padding=4,
                       sizes={"train": 50_000, "val": 0, "test": 10_000})
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes=classes, in_chans=chans, image_size=size).to(device)
    teacher = teacher.eval().requires_grad_(False)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    teacher_info = describe_model(teacher, teacher_name, chans, size)
    g = torch.Generator().manual_seed(0)
    batches = [(to_memory_format(torch.randn(batch, chans, size, size, generator=g).to(device), channels_last),
                torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(4)]
    members = {}
    for method in ("ce", "kd"):
        spec = make_spec(dataset="synthetic", student=student_name, method=method,
                         teacher=teacher_name if method == "kd" else None, epochs=1, batch_size=batch, amp=amp,
                         channels_last=channels_last)
        members[method] = Member(spec, info, teacher_info if method == "kd" else None, device)
    ways = []
    for method, member in members.items():
        plain = copy.deepcopy(member.student)
        if compile:  # kdbench compiles its forward function; the bare loop compiles its models
            member.compile()
        uses = teacher if method == "kd" else None
        ways.append(Way(f"bare {method}", bare_way(torch.compile(plain) if compile else plain,
                                                   torch.compile(teacher) if (compile and uses is not None) else uses,
                                                   batches, amp)))
        ways.append(Way(f"kdbench {method}", kdbench_way(member, uses, batches)))
    return ways, members, teacher


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return its figures."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    teacher_name = args.teacher or ("cifar_resnet32x4" if gpu else "cifar_resnet20")
    student_name = args.student or ("cifar_resnet8x4" if gpu else "cifar_resnet8")
    steps = args.steps or (50 if gpu else 6)
    reps = args.reps or (10 if gpu else 9)
    warmup = args.warmup if args.warmup is not None else (20 if gpu else 2)
    size, chans, classes, batch = args.image_size, 3, args.classes, args.batch_size
    ways, members, teacher = build_ways(teacher_name, student_name, batch, size, classes, device, amp=args.amp,
                                        channels_last=args.channels_last, compile=args.compile)
    for way in ways:
        for i in range(warmup):
            way.step(i)
    _sync(device)
    started = time.perf_counter()
    for rep in range(reps):
        shift = rep % len(ways)
        for way in ways[shift:] + ways[:shift]:
            _sync(device)
            tick = time.perf_counter()
            for i in range(steps):
                way.step(i)
            _sync(device)
            way.rates.append(steps * batch / (time.perf_counter() - tick))
    elapsed = time.perf_counter() - started

    by_name = {w.name: w for w in ways}
    student_gflops = count_flops(members["ce"].student, (chans, size, size))[0]
    teacher_gflops = count_flops(teacher, (chans, size, size))[0]
    peak, peak_kind = (args.peak_tflops, "given") if args.peak_tflops else peak_tflops(device_name(device), args.amp)
    figures: dict[str, Any] = {
        "device": device_name(device), "threads": torch.get_num_threads() if not gpu else None,
        "teacher": teacher_name, "student": student_name, "batch_size": batch, "input_size": [chans, size, size],
        "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile, "steps": steps,
        "reps": reps, "torch_version": torch.__version__, "benchmark_s": elapsed,
        "student_gflops": student_gflops, "teacher_gflops": teacher_gflops, "methods": {},
    }
    for method in ("ce", "kd"):
        bare, ours = by_name[f"bare {method}"], by_name[f"kdbench {method}"]
        ratios = [o / b for o, b in zip(ours.rates, bare.rates, strict=True)]
        entry = {"bare_samples_per_s": statistics.median(bare.rates),
                 "kdbench_samples_per_s": statistics.median(ours.rates),
                 "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        if gpu:
            flops = (3 * student_gflops + (teacher_gflops if method == "kd" else 0.0)) * 1e9
            entry["kdbench_tflops"] = entry["kdbench_samples_per_s"] * flops / 1e12
            entry["bare_tflops"] = entry["bare_samples_per_s"] * flops / 1e12
            entry["peak_tflops"], entry["peak_kind"] = peak, peak_kind
            entry["kdbench_share_of_peak"] = entry["kdbench_tflops"] / peak if peak else None
        figures["methods"][method] = entry

    where = f"{figures['device']}" + (f", {figures['threads']} thread(s)" if not gpu else "")
    print(f"{teacher_name} -> {student_name}, batch {batch}, {chans}x{size}x{size}, {where}, amp {args.amp}, "
          f"channels-last {args.channels_last}, compile {args.compile}; {reps} reps x {steps} steps, "
          f"{elapsed:.0f} s")
    for method, entry in figures["methods"].items():
        line = (f"  {method}: bare {entry['bare_samples_per_s']:.1f} samples/s, kdbench "
                f"{entry['kdbench_samples_per_s']:.1f} samples/s, kdbench/bare {entry['ratio']:.3f} "
                f"(reps {entry['ratio_min']:.3f}..{entry['ratio_max']:.3f})")
        if gpu:
            share = entry["kdbench_share_of_peak"]
            line += (f"; {entry['kdbench_tflops']:.1f} TFLOP/s"
                     + (f" = {share:.1%} of {entry['peak_tflops']:g} ({entry['peak_kind']})" if share else ""))
        print(line)
    save_figures(args.json, figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
