"""DOT and the ``gradient_groups`` capability: one backward pass per group, the method's own optimiser steps.

The optimiser reproduces the parameters and both momentum buffers the authors' ``DistillationOrientedTrainer``
computes (``tests/reference/values_v2.json``, keys ``dot_*``), driven directly and through the harness's backward
passes; with delta 0 it is plain SGD; a run trains end to end (CNN and ViT students), resumes from a checkpoint to
the uninterrupted record bit for bit, and under torchrun gives the one-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from kdbench import distributed
from kdbench.config import RunSpec
from kdbench.data import DataConfig, describe_dataset
from kdbench.errors import ConfigError
from kdbench.features import describe_model
from kdbench.methods.dot import DistillationOrientedSGD
from kdbench.models import create_model
from kdbench.training import Member
from kdbench.training.forward import teacher_outputs
from kdbench.training.optim import backward_groups, check_gradient_groups
from tests.helpers import torchrun
from tests.reference import RTOL
from tests.reference.part2 import inputs, values

DOT_KEYS = ("param_shared", "param_ce_only", "param_kd_only", "buf_shared_task", "buf_shared_kd", "buf_ce_only_task",
            "buf_kd_only_kd")
DOMAINS = [("cifar", 0.05, 5e-4, 0.075), ("imagenet", 0.2, 1e-4, 0.09)]  # mdistiller's CIFAR-100 / ImageNet configs


def reference() -> tuple[dict, dict]:
    """The fixed inputs of part 2 and its values (copied from the authors' runs, see README_v2.md there)."""
    return inputs(), values()


def check_state(domain: str, optimizer: DistillationOrientedSGD, params: list[Tensor]) -> None:
    """The three parameters and four buffers after two steps against the authors' values."""
    _, values = reference()
    state = optimizer.state
    got = (params[0], params[1], params[2], state[params[0]]["momentum_buffer"],
           state[params[0]]["momentum_kd_buffer"], state[params[1]]["momentum_buffer"],
           state[params[2]]["momentum_kd_buffer"])
    assert "momentum_kd_buffer" not in state[params[1]] and "momentum_buffer" not in state[params[2]]
    for name, tensor in zip(DOT_KEYS, got, strict=True):
        expected = torch.tensor(values[f"dot_{domain}_{name}"]["value"], dtype=torch.float64)
        torch.testing.assert_close(tensor.detach().double(), expected, rtol=RTOL,
                                   atol=RTOL * 1e-2 * float(expected.abs().max()), msg=name)


@pytest.mark.parametrize(("domain", "lr", "weight_decay", "delta"), DOMAINS)
def test_the_optimiser_reproduces_the_authors_parameters_and_buffers(domain, lr, weight_decay, delta):
    inputs, _ = reference()
    params = [t.clone() for t in inputs["dot_params"]]  # shared, CE only, KD only
    optimizer = DistillationOrientedSGD(params, lr=lr, momentum=0.9, delta=delta, weight_decay=weight_decay)
    for s in range(2):
        (g_shared, g_ce), (k_shared, k_kd) = inputs["dot_grads_ce"][s], inputs["dot_grads_kd"][s]
        optimizer.step_groups({"task": [g_shared, g_ce, None], "kd": [k_shared, None, k_kd]})
    check_state(domain, optimizer, params)


@pytest.mark.parametrize(("domain", "lr", "weight_decay", "delta"), DOMAINS)
def test_the_harness_backward_passes_give_the_authors_step(domain, lr, weight_decay, delta):
    """Losses whose gradients are the stored ones, through backward_groups: None where a group misses a parameter."""
    inputs, _ = reference()
    params = [nn.Parameter(t.clone()) for t in inputs["dot_params"]]
    optimizer = DistillationOrientedSGD(params, lr=lr, momentum=0.9, delta=delta, weight_decay=weight_decay)
    for s in range(2):
        (g_shared, g_ce), (k_shared, k_kd) = inputs["dot_grads_ce"][s], inputs["dot_grads_kd"][s]
        terms = {"loss_ce": (g_shared * params[0]).sum() + (g_ce * params[1]).sum(),
                 "loss_kd": (k_shared * params[0]).sum() + (k_kd * params[2]).sum()}
        grads = backward_groups(optimizer, terms, {"task": ("loss_ce",), "kd": ("loss_kd",)}, "dot")
        assert grads["task"][2] is None and grads["kd"][1] is None
        assert all(p.grad is None for p in params)
        optimizer.step_groups(grads)
    check_state(domain, optimizer, params)


def test_each_group_gets_the_gradient_of_its_own_terms_and_a_group_may_sum_several():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(5, 4)
    out = net(x)
    terms = {"loss_a": out.pow(2).mean(), "loss_b": out.sum(), "loss_c": out[:, 0].exp().mean()}
    expected = {"one": torch.autograd.grad(terms["loss_a"], list(net.parameters()), retain_graph=True),
                "two": torch.autograd.grad(terms["loss_b"] + terms["loss_c"], list(net.parameters()),
                                           retain_graph=True)}
    grads = backward_groups(optimizer, terms, {"one": ("loss_a",), "two": ("loss_b", "loss_c")}, "test", weight=2.0)
    for name in ("one", "two"):
        for got, want in zip(grads[name], expected[name], strict=True):
            torch.testing.assert_close(got, 2.0 * want)  # the process's share weight multiplies each group
    assert all(p.grad is None for p in net.parameters())


def test_each_group_is_averaged_over_the_processes_as_the_single_backward_is(monkeypatch):
    """A stand-in for torchrun's all-reduce, which halves every gradient: called once per group, on that group."""
    seen: list[list[float]] = []

    def halve(optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append([float(p.grad.sum()) for p in params])
        for p in params:
            p.grad.mul_(0.5)

    monkeypatch.setattr(distributed, "average_gradients", halve)
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([a, b], lr=0.1)
    grads = backward_groups(optimizer, {"loss_ce": (3 * a).sum(), "loss_kd": (5 * a).sum() + (7 * b).sum()},
                            {"task": ("loss_ce",), "kd": ("loss_kd",)}, "dot")
    assert seen == [[6.0], [10.0, 21.0]]
    assert torch.equal(grads["task"][0], torch.full((2,), 1.5)) and grads["task"][1] is None
    assert torch.equal(grads["kd"][0], torch.full((2,), 2.5)) and torch.equal(grads["kd"][1], torch.full((3,), 3.5))


def test_groups_and_terms_that_break_the_contract_are_one_line():
    for bad in ({}, {"task": ()}, {"task": "loss_ce"}, {"a": ("loss_ce",), "b": ("loss_ce",)}):
        with pytest.raises(RuntimeError, match="gradient_groups must map") as err:
            check_gradient_groups(bad, "mine")
        assert "\n" not in str(err.value)
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match=r"missing \['loss_kd'\], in no group \['loss_x'\]"):
        backward_groups(torch.optim.SGD([p], lr=0.1), {"loss_ce": p.sum(), "loss_x": p.sum()},
                        {"task": ("loss_ce",), "kd": ("loss_kd",)}, "mine")


DIGITS = describe_dataset(DataConfig(name="digits", image_size=8))


def member(method: str, teacher: nn.Module, **kw) -> Member:
    spec = RunSpec(dataset="digits", student="test_efficientnet", teacher="test_resnet", method=method, image_size=8,
                   epochs=2, lr=0.05, **kw)
    return Member(spec, DIGITS, describe_model(teacher, "test_resnet", 1, 8), torch.device("cpu"),
                  teacher_model=teacher)


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return create_model("test_resnet", num_classes=10, in_chans=1, image_size=8).eval().requires_grad_(False)


def train(m: Member, net: nn.Module, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        images, labels = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        out = teacher_outputs(net, images, {}, [m], amp=m.spec.amp)
        m.train_step(images, labels, torch.arange(16), out, 0, i, 10)


def test_with_delta_zero_dot_takes_kds_sgd_steps():
    """Both buffers at the run's momentum add up to SGD's one buffer: the same student, up to rounding."""
    net = teacher()
    kd, dot = member("kd", net), member("dot", net, method_params={"delta": 0.0})
    assert isinstance(dot.optimizer, DistillationOrientedSGD) and not hasattr(kd.optimizer, "step_groups")
    assert all(torch.equal(a, b) for a, b in zip(kd.student.parameters(), dot.student.parameters(), strict=True))
    for m in (kd, dot):
        train(m, net, 4)
    for a, b in zip(kd.student.parameters(), dot.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    moved = member("dot", net)  # the default delta 0.075 takes other steps
    train(moved, net, 4)
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                   for a, b in zip(kd.student.parameters(), moved.student.parameters(), strict=True))
    assert kd.stats.loss_sums.keys() == dot.stats.loss_sums.keys() == {"loss", "loss_ce", "loss_kd"}


def test_the_schedule_sets_the_learning_rate_and_the_state_holds_both_buffers():
    net = teacher()
    m = member("dot", net, amp=True)  # bf16 autocast: each group's backward as the single one's (no loss scaling)
    train(m, net, 2)
    assert [g["lr"] for g in m.optimizer.param_groups] != [0.05]  # the cosine schedule moved it
    state = m.optimizer.state_dict()["state"]
    assert state and all({"momentum_buffer", "momentum_kd_buffer"} <= set(s) for s in state.values())
    assert all(torch.isfinite(torch.as_tensor(v)) for v in m.stats.loss_sums.values())


def test_optimiser_settings_dot_cannot_train_with_are_one_line():
    net = teacher()
    with pytest.raises(ConfigError, match="dot trains with its own SGD .*--optimizer adamw"):
        member("dot", net, optimizer="adamw")
    with pytest.raises(ConfigError, match=r"momentum ± delta in \[0, 1\)"):
        member("dot", net, momentum=0.95, method_params={"delta": 0.075})


# ---------------------------------------------------------------------------------------------------------------
# End to end: `kdbench run`, checkpoints, torchrun


@pytest.mark.slow
@pytest.mark.parametrize(("student", "image_size", "lr"), [("test_efficientnet", 8, "0.05"), ("test_vit", 16, "0.01")])
def test_kdbench_run_trains_dot_end_to_end(student, image_size, lr, results, one_torch_thread):
    from kdbench.cli import main

    args = ["run", "--dataset", "digits", "--image-size", str(image_size), "--teacher", "test_resnet", "--student",
            student, "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "64", "--lr", lr, "--device", "cpu",
            "--no-progress", "--results", str(results), "--method", "dot"]
    assert main(args) == 0
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "ok", record.get("error")
    assert record["method"] == "dot" and 0 <= record["top1"] <= 100 and record["extra_params_m"] == 0
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all(h["loss_kd"] > 0 and h["loss_ce"] > 0 for h in record["history"])


@pytest.mark.slow
def test_a_resumed_dot_run_gives_the_uninterrupted_record(tmp_path, monkeypatch):
    """Interrupted mid-epoch 2 (a checkpoint after every step), resumed: every record bit for bit; the checkpoint
    holds both momentum buffers."""
    from kdbench.plan import expand
    from kdbench.scheduler import execute
    from tests.conftest import TINY_STUDENT, TINY_TEACHER
    from tests.helpers import Interrupt, checkpoints_in, computed, interrupt_at, quiet_options

    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"dot": {}, "kd": {}},
                   seeds=[0], epochs=2, teacher_epochs=1, batch_size=64, lr=0.05)
    teachers = tmp_path / "teachers"
    expected = {r["run_id"]: computed(r) for r in execute(specs, quiet_options(tmp_path / "reference", teachers))}
    assert all(r["status"] == "ok" for r in expected.values())
    interrupt_at(monkeypatch, Member, "train_step", 60)  # two members: step 9 of epoch 2
    with pytest.raises(Interrupt):
        execute(specs, quiet_options(tmp_path / "results", teachers, checkpoint_minutes=1e-9))
    left = checkpoints_in(tmp_path / "results")
    assert len(left) == 2
    states = [torch.load(p, weights_only=True)["optimizer"]["state"] for p in left]
    assert sum(all("momentum_kd_buffer" in s for s in state.values()) for state in states) == 1  # dot's, not kd's
    monkeypatch.undo()
    resumed = execute(specs, quiet_options(tmp_path / "results", teachers, checkpoint_minutes=1e-9))
    assert {r["run_id"]: computed(r) for r in resumed} == expected


@pytest.mark.slow
def test_dot_under_torchrun_trains_as_in_one_process(tmp_path: Path):
    """Two processes, shares of 31 and 32 images: each group's gradients averaged, the one-process run's record."""
    args = ["run", "--dataset", "digits", "--teacher", "test_resnet", "--student", "test_efficientnet", "--epochs",
            "2", "--teacher-epochs", "1", "--batch-size", "63", "--device", "cpu", "--no-progress", "--method", "dot"]
    two = torchrun([*args, "--results", str(tmp_path / "two")], timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "kdbench", *args, "--results", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    (a,), (b,) = ([json.loads(p.read_text()) for p in (tmp_path / d / "runs").glob("*.json")] for d in ("two", "one"))
    assert a["status"] == b["status"] == "ok" and (a["world_size"], b["world_size"]) == (2, 1)
    assert a["top1"] == pytest.approx(b["top1"], abs=0.3)
    for x, y in zip(a["history"], b["history"], strict=True):
        for term in ("loss", "loss_ce", "loss_kd"):
            assert x[term] == pytest.approx(y[term], rel=1e-3), term
