"""The training step at scale: RNG isolation without costly swaps, mode switches, step timing, ``--compile``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute
from kdbench.training import RNGState, StepClock, ensure_mode, host_rngs_preserved
from tests.conftest import TINY_STUDENT, TINY_TEACHER


def draws(state: RNGState) -> tuple[float, float, float]:
    with state.active():
        return float(torch.rand(())), random.random(), float(np.random.rand())


def test_a_members_draws_do_not_depend_on_other_members():
    cpu = torch.device("cpu")
    alone = RNGState(3, cpu)
    alone_draws = [draws(alone) for _ in range(3)]
    shared, other = RNGState(3, cpu), RNGState(4, cpu)
    interleaved = []
    for _ in range(3):
        draws(other)
        random.random()  # the world outside the members draws too
        np.random.rand()
        interleaved.append(draws(shared))
    assert interleaved == alone_draws
    assert len(set(alone_draws)) == 3  # each activation draws anew
    assert draws(RNGState(4, cpu)) != alone_draws[0]


def test_host_rngs_are_restored_around_training():
    random.seed(11)
    np.random.seed(11)
    expected = random.random(), float(np.random.rand())
    random.seed(11)
    np.random.seed(11)
    with host_rngs_preserved():
        draws(RNGState(0, torch.device("cpu")))
    assert (random.random(), float(np.random.rand())) == expected


def test_torch_rng_outside_a_member_is_untouched():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    state = RNGState(0, torch.device("cpu"))
    draws(state)
    assert torch.equal(torch.rand(3), expected)


def test_ensure_mode_switches_only_when_the_root_differs():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ensure_mode(model, False)
    assert not any(m.training for m in model.modules())
    model[1].train()  # a submodule out of step with its root is left alone while the root is right
    ensure_mode(model, False)
    assert model[1].training
    ensure_mode(model, True)
    assert all(m.training for m in model.modules())


def test_step_clock_charges_weighted_spans_on_cpu():
    class Target:
        own_time_s = 0.0
        shared_time_s = 1.0

    a, b = Target(), Target()
    clock = StepClock(torch.device("cpu"))
    clock.charge(10.0, 12.0, [(a, "own_time_s", 1.0), (b, "shared_time_s", 0.5)])
    clock.settle()
    assert a.own_time_s == 2.0 and b.shared_time_s == 2.0


@pytest.mark.gpu
def test_step_clock_times_gpu_work_with_events():
    class Target:
        own_time_s = 0.0

    target = Target()
    clock = StepClock(torch.device("cuda"))
    x = torch.randn(2048, 2048, device="cuda")
    start = clock.mark()
    for _ in range(10):
        x = x @ x / 2048
    clock.charge(start, clock.mark(), [(target, "own_time_s", 1.0)])
    assert target.own_time_s == 0.0  # nothing waited yet
    clock.settle()
    assert target.own_time_s > 0.0


def _compile_works() -> bool:
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception:  # noqa: BLE001 - no compiler tool chain here
        return False
    return True


@pytest.mark.slow
def test_compile_trains_and_is_recorded_but_not_part_of_the_run_id(tmp_path: Path):
    if not _compile_works():
        pytest.fail("torch.compile does not work on this machine")
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"ce": {}}, seeds=[0], epochs=1,
                   batch_size=128)
    base = dict(device="cpu", progress=False, measure=False, log=lambda _: None, teacher_cache=tmp_path / "t")
    (eager,) = execute(specs, ExecOptions(results=tmp_path / "eager", **base))
    (compiled,) = execute(specs, ExecOptions(results=tmp_path / "compiled", compile=True, **base))
    assert compiled["status"] == "ok", compiled["error"]
    assert compiled["run_id"] == eager["run_id"]
    assert compiled["compile"] is True and eager["compile"] is False
    assert abs(compiled["top1"] - eager["top1"]) <= 3.0  # the same computation, up to rounding
    assert compiled["history"][0]["loss"] == pytest.approx(eager["history"][0]["loss"], rel=1e-3)


def _steps_without_host_sync(device: torch.device, method: str, check: bool) -> None:
    """Three training steps of ``method`` after a warm-up one; with ``check``, any host synchronisation raises."""
    from kdbench.data import DataConfig, load_dataset
    from kdbench.features import describe_model
    from kdbench.models import create_model
    from kdbench.plan import expand
    from kdbench.training import Member, teacher_outputs

    splits = load_dataset(DataConfig("digits", device=str(device)))
    info = splits.info
    (spec,) = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={method: {}}, seeds=[0],
                     epochs=1, teacher_epochs=1, batch_size=32)
    teacher = create_model(TINY_TEACHER, num_classes=info.num_classes, in_chans=info.in_chans,
                           image_size=info.image_size).to(device).eval()
    teacher_info = describe_model(teacher, TINY_TEACHER, info.in_chans, info.image_size)
    member = Member(spec, info, teacher_info, device, train_labels=splits.labels("train"))
    generator = torch.Generator(device=device).manual_seed(0)
    batches = splits.train_batches(32, generator)
    for iteration in range(4):
        batch = next(batches)
        out = teacher_outputs(teacher, batch.images, {}, [member], amp=False) if member.uses_teacher else None
        if iteration == 1 and check:
            torch.cuda.set_sync_debug_mode("error")
        try:
            member.train_step(batch.images, batch.labels, batch.indices, out, 0, iteration, 40)
        finally:
            if check:
                torch.cuda.set_sync_debug_mode(0)
    assert member.active and member.stats.steps == 4


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "fitnets", "at"])
def test_a_training_step_makes_no_host_synchronisation_on_a_gpu(method: str):
    """The step on a GPU: no .item(), no non-finite check, no RNG swap that waits for the device (CUDA's sync debug
    mode turns any host synchronisation into an error)."""
    _steps_without_host_sync(torch.device("cuda"), method, check=True)
