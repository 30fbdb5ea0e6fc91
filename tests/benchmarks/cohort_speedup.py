"""Benchmark: cohort training (one teacher pass per batch for all runs) vs training the runs one at a time.

Trains the same runs twice, side by side in one invocation, into two fresh stores that share one teacher cache
(the teacher is trained first, outside the timed region), then reports:

- the wall time of each way (end to end, set-up and evaluation included) and the speed-up,
- the time of the training loops alone (from the records) and its speed-up,
- the ideal cohort training time: the one-at-a-time training time minus the teacher passes a cohort does not
  repeat (each run's own work plus one teacher pass), and how close the cohort comes to it,
- whether every run's record is identical both ways (top-1 and loss history),
- the teacher forward passes each way made (counted, not timed) and the epochs of teacher forward they come to
  (computed from the records' histories: a cohort's members share one pass per batch in the initialisation
  phase as in the main one, so initialisation phases of ``ft``, ``ab``, ``fsp`` or two-stage ``fitnets`` cost the
  cohort their longest, not their sum).

Usage (from the project root)::

    python -m tests.benchmarks.cohort_speedup --teacher resnet50 --student mobilenetv3_small_050 \\
        --dataset mnist5k --epochs 1 --json reports/cohort_speedup.json

The default runs are five teacher-using runs: kd at T = 2, 4, 8, fitnets and at. To see what initialisation
phases save, give methods that have one, e.g.
``--methods '{"ft": {"init_epochs": [2]}, "ab": {"init_epochs": [2]}, "fsp": {"init_epochs": [2]}, "kd": {}}'``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdbench.env import device_name, resolve_device
from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute
from kdbench.teachers import prepare_teacher
from tests.benchmarks import save_figures

DEFAULT_METHODS = {"kd": {"temperature": [2.0, 4.0, 8.0]}, "fitnets": {}, "at": {}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--teacher", default="resnet50")
    p.add_argument("--student", default="mobilenetv3_small_050")
    p.add_argument("--methods", default=json.dumps(DEFAULT_METHODS),
                   help="JSON: method -> {param: [values]} (default: kd at T=2,4,8, fitnets, at)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def teacher_epochs(records: list[dict[str, Any]]) -> int:
    """Epochs of teacher forward passes the records' training loops made, from their histories (nothing timed).

    A cohort's members share one teacher pass per batch, in the initialisation phase as in the main one, so a
    cohort pays, per phase, for the most epochs any of its teacher-using members recorded in it; a run trained
    alone is a cohort of one.
    """
    cohorts: dict[str, dict[str, int]] = {}
    for record in records:
        if record.get("teacher") is None:
            continue
        phases = cohorts.setdefault(record["cohort_id"], {})
        for phase in {entry["phase"] for entry in record["history"]}:
            epochs = sum(entry["phase"] == phase for entry in record["history"])
            phases[phase] = max(phases.get(phase, 0), epochs)
    return sum(sum(phases.values()) for phases in cohorts.values())


@contextlib.contextmanager
def counted_teacher_passes(passes: list[int]) -> Iterator[None]:
    """Count the teacher's forward passes (one per view per batch) made in the block."""
    import kdbench.training.forward as forward

    real = forward.teacher_forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return real(*args, **kwargs)

    forward.teacher_forward = counting
    try:
        yield
    finally:
        forward.teacher_forward = real


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print (and return) its figures."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    specs = expand(dataset=args.dataset, pairs=[(args.teacher, args.student)], methods=json.loads(args.methods),
                   seeds=[args.seed], epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                   batch_size=args.batch_size, image_size=args.image_size, amp=args.amp,
                   channels_last=args.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "teachers"
        base = dict(teacher_cache=cache, device=str(device), progress=False, measure=False, log=lambda _: None)
        # the teacher is trained (and evaluated) once, before any timing
        from kdbench.engine import load_splits

        prepare_teacher(specs[0], load_splits(specs[0], ExecOptions(**base), device), device, cache)
        timings, records, passes = {}, {}, {}
        for way, cohort in (("cohort", True), ("one_at_a_time", False)):
            options = ExecOptions(results=root / way, cohort=cohort, **base)
            passes[way] = []
            with counted_teacher_passes(passes[way]):
                start = time.perf_counter()
                records[way] = execute(specs, options)
                timings[way] = time.perf_counter() - start
    solo, together = records["one_at_a_time"], records["cohort"]
    # Training loops only (steps, data and teacher passes; no set-up or evaluation), from the records: a cohort
    # member's train_time_s holds its own steps plus its share of the shared data and teacher time.
    solo_train = sum(r["train_time_s"] for r in solo)
    cohort_train = sum(r["train_time_s"] for r in together)
    teacher_passes = [r["teacher_time_s"] for r in solo]
    ideal = solo_train - sum(teacher_passes) + sum(teacher_passes) / len(teacher_passes)
    identical = all(a["top1"] == b["top1"] and [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
                    for a, b in zip(together, solo, strict=True))
    solo_share = sum(r["teacher_time_share"] for r in solo) / len(solo)
    figures = {
        "device": device_name(device), "threads": torch.get_num_threads(), "dataset": args.dataset,
        "teacher": args.teacher, "student": args.student, "runs": [r["method_label"] for r in solo],
        "epochs": args.epochs, "batch_size": args.batch_size, "amp": args.amp, "channels_last": args.channels_last,
        "teacher_share_of_step_solo": solo_share,
        "one_at_a_time_wall_s": timings["one_at_a_time"], "cohort_wall_s": timings["cohort"],
        "speedup_wall": timings["one_at_a_time"] / timings["cohort"],
        "one_at_a_time_train_s": solo_train, "cohort_train_s": cohort_train, "speedup_train": solo_train / cohort_train,
        "ideal_cohort_train_s": ideal, "cohort_train_over_ideal": cohort_train / ideal,
        "records_identical": identical, "top1": {r["method_label"]: r["top1"] for r in solo},
        "teacher_passes_one_at_a_time": len(passes["one_at_a_time"]), "teacher_passes_cohort": len(passes["cohort"]),
        "teacher_passes_saved": len(passes["one_at_a_time"]) - len(passes["cohort"]),
        "teacher_epochs_one_at_a_time": teacher_epochs(solo), "teacher_epochs_cohort": teacher_epochs(together),
    }
    print(f"{len(specs)} runs, {args.teacher} -> {args.student} on {args.dataset}, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, {figures['device']}, {figures['threads']} threads")
    print(f"  teacher share of a solo training step: {solo_share:.0%}")
    print(f"  end to end:     one at a time {timings['one_at_a_time']:.1f} s, cohort {timings['cohort']:.1f} s, "
          f"speed-up {figures['speedup_wall']:.2f}x")
    print(f"  training loops: one at a time {solo_train:.1f} s, cohort {cohort_train:.1f} s, "
          f"speed-up {figures['speedup_train']:.2f}x")
    print(f"  ideal cohort training (one teacher pass + each run's own work): {ideal:.1f} s; "
          f"cohort / ideal: {figures['cohort_train_over_ideal']:.2f}")
    print(f"  records identical (top-1 and loss history): {identical}")
    print(f"  teacher passes (counted): one at a time {figures['teacher_passes_one_at_a_time']}, cohort "
          f"{figures['teacher_passes_cohort']}, saved {figures['teacher_passes_saved']}; epochs of teacher forward: "
          f"{figures['teacher_epochs_one_at_a_time']} vs {figures['teacher_epochs_cohort']}")
    save_figures(args.json, figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
