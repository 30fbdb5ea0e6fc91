"""The per-method training-cost table from a pytest-benchmark JSON file of the training-step benchmark.

``tests/benchmarks/test_training_step_benchmark.py`` times one optimisation step of every registered method on one
fixed pair and stores every setting in ``extra_info``; this module turns its ``--benchmark-json`` output into a
table: median step time, spread, samples/s and the cost relative to the plain cross-entropy step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kdbench.errors import DataError


def training_step_table(path: str | Path, baseline: str = "ce") -> pd.DataFrame:
    """One row per method: median and IQR of the step time, samples/s, and the ratio to ``baseline``'s step.

    Raises:
        DataError: the file is missing, not JSON, or holds no training-step benchmarks.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"benchmark file not found: {file}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{file} is not a pytest-benchmark JSON file: {err}") from None
    rows = []
    for bench in data.get("benchmarks", []):
        info, stats = bench.get("extra_info", {}), bench.get("stats", {})
        if "method" not in info or not stats:
            continue
        batch = int(info.get("batch_size") or 0)
        median_ms = stats["median"] * 1e3
        rows.append({
            "method": info["method"], "teacher": info.get("teacher") or "none", "student": info.get("student"),
            "batch_size": batch, "input_size": "x".join(str(v) for v in info.get("input_size", [])),
            "step_ms_median": median_ms, "step_ms_iqr": stats.get("iqr", float("nan")) * 1e3,
            "rounds": stats.get("rounds"), "samples_per_s": batch / stats["median"] if batch else None,
            "extra_params_m": info.get("extra_params_m"), "threads": info.get("threads"),
            "device_name": info.get("device_name"),
        })
    if not rows:
        raise DataError(f"{file} holds no training-step benchmarks (run tests/benchmarks/"
                        "test_training_step_benchmark.py with --benchmark-enable --benchmark-json FILE)")
    table = pd.DataFrame(rows).sort_values("step_ms_median").reset_index(drop=True)
    base = table.loc[table["method"] == baseline, "step_ms_median"]
    table["vs_baseline"] = table["step_ms_median"] / float(base.iloc[0]) if len(base) else float("nan")
    return table
