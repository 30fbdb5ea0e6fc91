"""Benchmark: planning a sweep over a folder of ImageNet's size (listing and fingerprinting 1.28 M files).

Writes a tree of ``--classes`` x ``--per-class`` tiny files (``train/<wnid>/*.JPEG``, and 50 per class in
``val/<wnid>/``) in a temporary folder (deleted after), then times what planning reads:

- ``describe``: listing the folder (class folders, file names) and the split sizes, the first time in a process;
- ``fingerprint``: the data fingerprint of the default ``metadata`` mode (one ``stat`` per file), the first time;
- ``plan``: ``make_spec`` for every run of a sweep the size of ``imagenet_kd`` (42 runs), after the above: cached;
- ``recheck``: the engine's uncached fingerprint before training (``cached=False``).

The files were just written, so their metadata is in the OS cache: the figures are those of a warm cache (a cold
network file system is slower). Wall and CPU seconds are both printed: on a shared machine the CPU time is the
figure that does not depend on what else runs. Usage (from the project root)::

    python -m tests.benchmarks.planning                       # 1,000 x 1,300 files: minutes to write, seconds to plan
    python -m tests.benchmarks.planning --classes 100 --per-class 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdbench.data import DataConfig, clear_dataset_cache, dataset_fingerprint, describe_dataset
from kdbench.plan import make_spec
from tests.benchmarks import save_figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=1300, help="training files per class (default: %(default)s)")
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--runs", type=int, default=42, help="run specs to plan (imagenet_kd has 42)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def write_tree(root: Path, classes: int, per_class: int, val_per_class: int) -> int:
    """The tree of tiny files; returns how many files it holds."""
    count = 0
    for index in range(classes):
        wnid = f"n{index:08d}"
        for part, n in (("train", per_class), ("val", val_per_class)):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                os.close(os.open(os.path.join(folder, f"{wnid}_{i}.JPEG"), os.O_CREAT | os.O_WRONLY, 0o644))
            count += n
    return count


CPU_S: dict[str, float] = {}


def timed(function: Any, name: str = "") -> tuple[Any, float]:
    """``function()`` and its wall time in seconds; its CPU time (this process) goes to ``CPU_S[name]``."""
    tick, cpu = time.perf_counter(), time.process_time()
    value = function()
    CPU_S[name] = time.process_time() - cpu
    return value, time.perf_counter() - tick


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return its figures."""
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kdbench-planning-"))
    try:
        files, write_s = timed(lambda: write_tree(tmp, args.classes, args.per_class, args.val_per_class))
        clear_dataset_cache()
        config = DataConfig("imagenet", root=str(tmp), val_fraction=0.0)
        info, describe_s = timed(lambda: describe_dataset(config), "describe")
        _, fingerprint_s = timed(lambda: dataset_fingerprint(config), "fingerprint")

        def plan() -> None:
            for seed in range(args.runs):
                make_spec(dataset="imagenet", student="resnet18", method="ce", teacher=None, seed=seed,
                          data_root=str(tmp), val_fraction=0.0)

        _, plan_s = timed(plan, "plan")
        _, recheck_s = timed(lambda: dataset_fingerprint(config, cached=False), "recheck")
    finally:
        clear_dataset_cache()
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {"files": files, "classes": info.num_classes, "write_s": write_s, "describe_s": describe_s,
               "fingerprint_s": fingerprint_s, "plan_runs": args.runs, "plan_s": plan_s, "recheck_s": recheck_s,
               "cpu_s": dict(CPU_S), "load_average": os.getloadavg()}
    cpu = CPU_S
    print(f"{files} files in {info.num_classes} classes (written in {write_s:.0f} s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  describe (list the folder): {describe_s:.1f} s wall, {cpu['describe']:.2f} s CPU; fingerprint (stat "
          f"every file): {fingerprint_s:.1f} s wall, {cpu['fingerprint']:.2f} s CPU")
    print(f"  plan {args.runs} runs after that: {plan_s:.2f} s wall; engine's uncached recheck: {recheck_s:.1f} s "
          f"wall, {cpu['recheck']:.2f} s CPU")
    save_figures(args.json, figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
