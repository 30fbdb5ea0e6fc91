"""Initialisation phases in a cohort: run together on one teacher pass per batch, with the records of runs alone.

One cohort of ``ft`` (two initialisation epochs), ``fsp`` (two), ``ab`` (one), two-stage ``fitnets`` (one), plain
``ce`` and two test plugins whose initialisation phase fails (a loss that turns NaN in its second epoch, and
``init_parameters`` that raise) is trained once as a cohort and once run by run; the tests compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import DataConfig, load_dataset
from kdbench.distiller import METHODS, Distiller, Step, discover_methods, register_method
from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute
from tests.benchmarks.cohort_speedup import counted_teacher_passes, teacher_epochs
from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing

BUDGET = dict(epochs=1, teacher_epochs=1, batch_size=64, lr=0.05)
#: method -> its initialisation epochs in the cohort below
INIT_EPOCHS = {"ft": 2, "fsp": 2, "ab": 1, "fitnets": 1, "ce": 0, "init_nan": 3, "init_broken": 2}
METHOD_PARAMS = {"ft": {"init_epochs": [2]}, "fsp": {"init_epochs": [2]}, "ab": {"init_epochs": [1]},
                 "fitnets": {"hint_epochs": [1]}, "ce": {}, "init_nan": {}, "init_broken": {}}

pytestmark = pytest.mark.slow


def define_plugins() -> None:
    """Two initialisation-phase plugins that fail: one in its second epoch, one before its first step."""

    @register_method("init_nan")
    class InitNaN(Distiller):
        """Init-phase plugin (test): three epochs training a scale whose loss turns NaN in the second one."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.init_epochs = 3
            self.scale = nn.Parameter(torch.ones(()))
            self.steps = 0

        def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
            return [self.scale]

        def init_losses(self, step: Step) -> dict[str, Tensor]:
            self.steps += 1
            loss = F.cross_entropy(step.student_logits.float(), step.labels) * self.scale
            return {"loss_scaled": loss * float("nan") if self.steps > self.context.steps_per_epoch + 1 else loss}

        def losses(self, step: Step) -> dict[str, Tensor]:
            return {"loss_ce": F.cross_entropy(step.student_logits.float(), step.labels)}

    @register_method("init_broken")
    class InitBroken(InitNaN):
        """Init-phase plugin (test): its ``init_parameters`` raise, so its initialisation phase never starts."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.init_epochs = 2

        def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
            raise RuntimeError("no parameters to initialise")


def steps_per_epoch() -> int:
    return load_dataset(DataConfig(name="digits")).num_batches("train", BUDGET["batch_size"])


@contextmanager
def recorded_progress(bars: list[list[int]]) -> Iterator[None]:
    """Record each progress bar's total and the steps it was told of."""

    def recording_bars(enabled: bool) -> Callable:
        @contextmanager
        def bar(total: int, desc: str) -> Iterator[Callable[[int], None]]:
            bars.append([total, 0])
            yield lambda n: bars[-1].__setitem__(1, bars[-1][1] + n)

        return bar

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("kdbench.engine.progress_bars", recording_bars)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """The cohort trained together and run by run (one teacher cache), with teacher passes and progress bars."""
    discover_methods()
    before = set(METHODS.names())
    define_plugins()
    try:
        root = tmp_path_factory.mktemp("init_cohort")
        specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods=METHOD_PARAMS, seeds=[0],
                       **BUDGET)
        out = {}
        for way, cohort in (("solo", False), ("cohort", True)):  # the teacher is trained (and cached) in the first
            passes: list[int] = []
            bars: list[list[int]] = []
            options = ExecOptions(results=root / way, teacher_cache=root / "teachers", device="cpu", cohort=cohort,
                                  progress=True, measure=False, save_students="none", log=lambda line: None)
            with counted_teacher_passes(passes), recorded_progress(bars):
                records = execute(specs, options)
            out[way] = {"records": {r["method"]: r for r in records}, "passes": len(passes), "bars": bars}
        yield out
    finally:
        for name in set(METHODS.names()) - before:
            METHODS.unregister(name)


def test_every_record_of_the_cohort_is_the_record_of_its_run_alone(trained):
    solo, cohort = trained["solo"]["records"], trained["cohort"]["records"]
    assert sorted(cohort) == sorted(solo) == sorted(INIT_EPOCHS)
    assert {r["cohort_size"] for r in cohort.values()} == {len(INIT_EPOCHS)}
    assert {r["cohort_size"] for r in solo.values()} == {1}
    for name in INIT_EPOCHS:
        assert strip_timing(cohort[name]) == strip_timing(solo[name]), name


def test_each_member_keeps_its_own_initialisation_budget(trained):
    records = trained["cohort"]["records"]
    for name in ("ft", "fsp", "ab", "fitnets", "ce"):
        assert records[name]["status"] == "ok", (name, records[name]["error"])
        phases = [(h["phase"], h["epoch"]) for h in records[name]["history"]]
        assert phases == [*(("init", e + 1) for e in range(INIT_EPOCHS[name])), ("train", 1)], name


def test_members_that_fail_in_the_initialisation_phase_stop_alone(trained):
    records = trained["cohort"]["records"]
    nan, broken = records["init_nan"], records["init_broken"]
    assert nan["status"] == "failed" and nan["error"].startswith("non-finite loss at initialisation epoch 2, step 2")
    assert [(h["phase"], h["epoch"]) for h in nan["history"]] == [("init", 1)]
    assert broken["status"] == "failed" and broken["error"] == "RuntimeError: no parameters to initialise"
    assert broken["history"] == []


def test_one_teacher_pass_per_batch_serves_every_initialisation_phase(trained):
    steps = steps_per_epoch()
    users = ("ft", "fsp", "ab", "fitnets", "init_nan", "init_broken")  # every teacher-using member
    # alone, each run pays a teacher pass per batch of its own init epochs (up to where it stopped) and main epoch
    alone = {"ft": 2 + 1, "fsp": 2 + 1, "ab": 1 + 1, "fitnets": 1 + 1, "init_nan": 1, "init_broken": 0}
    assert set(alone) == set(users)
    assert trained["solo"]["passes"] == steps * sum(alone.values()) + 2  # init_nan's second epoch: two batches
    # together: one pass per batch while any member is in its initialisation phase (two epochs: init_nan, the
    # longest, failed in its second), then one per batch of the main phase
    assert trained["cohort"]["passes"] == steps * (2 + BUDGET["epochs"])
    # the cohort benchmark's figure, computed from the records' histories
    assert teacher_epochs(list(trained["solo"]["records"].values())) == sum(alone.values())
    assert teacher_epochs(list(trained["cohort"]["records"].values())) == 2 + BUDGET["epochs"]


def test_the_progress_bar_counts_the_shared_initialisation_steps(trained):
    steps = steps_per_epoch()
    cohort_bar = trained["cohort"]["bars"][-1]
    assert cohort_bar[0] == steps * (max(INIT_EPOCHS.values()) + BUDGET["epochs"])
    # init_nan, the longest phase, failed in its second epoch; the others had finished theirs after two
    assert cohort_bar[1] == steps * (2 + BUDGET["epochs"])
