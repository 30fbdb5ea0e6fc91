"""kdbench's step against the bare PyTorch loop, as pytest-benchmark rows (one per way).

The side-by-side script with the ratio is ``python -m tests.benchmarks.overhead``; this is the same four ways for
``--benchmark-json`` comparisons across commits::

    python -m pytest tests/benchmarks/test_overhead_benchmark.py --benchmark-enable

Under ``--benchmark-disable`` (the default of the test suite) each way runs once on tiny models, as a smoke test.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.benchmarks.overhead import build_ways
from tests.conftest import TINY_STUDENT, TINY_TEACHER

WAYS = ("bare ce", "kdbench ce", "bare kd", "kdbench kd")


@functools.cache
def ways() -> dict:
    built, members, _ = build_ways(TINY_TEACHER, TINY_STUDENT, batch=32, size=16, classes=10,
                                   device=torch.device("cpu"))
    return {"ways": {w.name: w for w in built}, "members": members}


@pytest.mark.parametrize("name", WAYS)
def test_step_overhead(benchmark, name):
    way = ways()["ways"][name]
    benchmark.extra_info.update({"way": name, "teacher": TINY_TEACHER, "student": TINY_STUDENT, "batch_size": 32})
    counter = iter(range(10**6))
    benchmark.pedantic(lambda: way.step(next(counter)), rounds=5, warmup_rounds=1, iterations=1)
    if name.startswith("kdbench"):
        stats = ways()["members"][name.split()[1]].stats
        assert stats.steps >= 1 and all(torch.isfinite(torch.as_tensor(v)) for v in stats.loss_sums.values())
