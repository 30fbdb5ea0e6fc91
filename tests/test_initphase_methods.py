"""Factor transfer, activation boundaries and FSP: their initialisation phase (losses, what trains in it), their
main phase, stage choice by relative depth, and `kdbench run` end to end with the init phase on digits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kdbench.cli import main
from kdbench.config import build_params
from kdbench.distiller import construct_method, get_method, init_phase_parameters
from kdbench.errors import ConfigError
from kdbench.features import ModelInfo, StageShape
from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER, build, step_for

INIT_METHODS = ["ft", "ab", "fsp"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_params(name: str, **overrides):
    cls = get_method(name)
    torch.manual_seed(0)
    return construct_method(cls, build_params(cls.Params, overrides, name), STUDENT, TEACHER, DATA, CONTEXT)


def init_step(method):
    step = step_for(method)
    step.phase, step.epoch = "init", -1
    for t in step.student_features.values():
        t.requires_grad_(True)
    return step


@pytest.mark.parametrize("name", INIT_METHODS)
def test_init_phase_defaults_and_override(name):
    assert build(name).init_epochs == 30  # RepDistiller's --init_epochs 30
    assert with_params(name, init_epochs=2).init_epochs == 2
    with pytest.raises(ConfigError):
        with_params(name, init_epochs=-1)


@pytest.mark.parametrize("name", INIT_METHODS)
def test_init_losses_give_gradient_to_exactly_what_the_init_phase_trains(name):
    method = build(name)
    step = init_step(method)
    terms = method.init_losses(step)
    assert terms and all(k.startswith("loss") for k in terms)
    total = sum(terms.values())
    assert total.ndim == 0 and torch.isfinite(total) and total > 0
    total.backward()
    trained = {id(p) for p in init_phase_parameters(method, torch.nn.Linear(2, 2))}
    with_grad = {id(p) for p in method.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= trained  # its adapters learn, and nothing the init phase leaves alone
    reaches_student = any(t.grad is not None and t.grad.abs().sum() > 0 for t in step.student_features.values())
    assert reaches_student == (name != "ft")  # FT's init phase trains the paraphraser alone, on the teacher's map


def test_ft_init_trains_only_the_paraphraser_and_main_phase_only_the_translator():
    method = build("ft")
    student = torch.nn.Linear(2, 2)
    paraphraser = {id(p) for m in (method.encoder, method.decoder) for p in m.parameters()}
    assert method.init_trains == "method"  # the student is not in the initialisation phase's optimiser
    held = {id(p) for p in init_phase_parameters(method, student)}
    assert paraphraser <= held and not held & {id(p) for p in student.parameters()}
    step = init_step(method)
    sum(method.init_losses(step).values()).backward()  # and of the method's modules, only the paraphraser learns
    assert {id(p) for p in method.parameters() if p.grad is not None} == paraphraser
    method.zero_grad(set_to_none=True)
    (group,) = method.param_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in method.translator.parameters()}
    step = step_for(method)
    sum(method.losses(step).values()).backward()
    assert all(p.grad is None for p in method.encoder.parameters())  # the teacher factor is a fixed target
    assert any(p.grad is not None for p in method.translator.parameters())


def test_ft_paraphraser_learns_to_reconstruct_the_teacher_map():
    method = with_params("ft", teacher_stage=1)  # a narrow stage keeps it fast
    step = init_step(method)
    optimiser = torch.optim.Adam(init_phase_parameters(method, torch.nn.Linear(2, 2)), lr=1e-2)
    first = method.init_losses(step)["loss_rec"].item()
    for _ in range(60):
        optimiser.zero_grad()
        method.init_losses(step)["loss_rec"].backward()
        optimiser.step()
    assert method.init_losses(step)["loss_rec"].item() < 0.8 * first


def test_ft_factor_choice_and_widths():
    method = build("ft")
    assert method.student_stages == (3,) and method.teacher_stages == (4,)  # the last stage of each
    assert method.factor == "flatten"  # the fixture's last maps pool to 1x1
    assert method.translator[-2].num_features == 128 and method.encoder[-2].out_channels == 128  # rate 0.5 of 256
    assert with_params("ft", depth=0.5).factor == "attention"
    assert with_params("ft", factor="attention").factor == "attention"
    with pytest.raises(ConfigError):
        with_params("ft", factor="l2")


@pytest.mark.parametrize("name,term", [("ab", "loss_ab"), ("fsp", "loss_fsp")])
def test_main_phase_is_cross_entropy_unless_beta(name, term):
    method = build(name)
    assert set(method.losses(step_for(method))) == {"loss_ce"} and method.param_groups() == []
    weighted = with_params(name, beta=2.0)
    step = step_for(weighted)
    terms = weighted.losses(step)
    assert set(terms) == {"loss_ce", term}
    assert terms[term].item() == pytest.approx(2.0 * weighted.init_losses(step)[term].item(), rel=1e-6)
    assert weighted.param_groups() and all(p.requires_grad for p in weighted.param_groups()[0]["params"])


def test_ab_stages_and_connectors():
    method = build("ab")
    assert method.pairs == ((1, 1), (2, 3), (3, 4))  # every stage but the stem, paired by relative depth
    same = ModelInfo("same", 10, 64, stages=STUDENT.stages)
    twin = construct_method(get_method("ab"), get_method("ab").Params(), STUDENT, same, DATA, CONTEXT)
    assert sum(p.numel() for p in twin.parameters()) == 0  # equal shapes: no connector (as RepDistiller)
    with pytest.raises(ConfigError):
        with_params("ab", student_indices=(1, 2), teacher_indices=(1,))


def test_fsp_chain_and_adapters():
    method = build("fsp")
    assert method.chain == ((0, 0), (1, 1), (2, 3), (3, 4))  # every stage including the stem
    # Student widths 8, 16, 32, 64 against teacher 16, 32, 128, 256: each link gets a 1x1 conv + BN, no resizing.
    step = step_for(method)
    for adapter, (s, t) in zip(method.adapters, method.chain, strict=True):
        out = adapter(step.student_features[s])
        assert out.shape[1] == TEACHER.stages[t].channels and out.shape[2:] == step.student_features[s].shape[2:]
    wide = ModelInfo("wide", 10, 64, stages=tuple(dataclasses.replace(s, channels=8) for s in TEACHER.stages))
    narrow = ModelInfo("narrow", 10, 64, stages=tuple(StageShape(8, s.height, s.width, 1) for s in STUDENT.stages))
    equal = construct_method(get_method("fsp"), get_method("fsp").Params(), narrow, wide, DATA, CONTEXT)
    assert sum(p.numel() for p in equal.parameters()) == 0  # equal widths: RepDistiller's FSP exactly
    with pytest.raises(ConfigError):
        with_params("fsp", depths=(1.0,))


INIT_TERM = {"ft": "loss_rec", "ab": "loss_ab", "fsp": "loss_fsp"}


@pytest.mark.slow
@pytest.mark.parametrize("teacher,methods,extra", [
    ("test_resnet", ("ft", "ab", "fsp"), []),
    ("test_vit", ("fsp",), ["--image-size", "32"]),  # a ViT's block maps chained with a CNN's stages
])
def test_kdbench_run_with_the_init_phase_on_digits(tiny_run_args, results, teacher, methods, extra):
    args = [a if a != "test_resnet" else teacher for a in tiny_run_args] + extra
    for name in methods:
        args += ["--method", name, "--set", f"{name}.init_epochs=1"]
    assert main(args) == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (results / "runs").glob("*.json"))}
    assert set(records) == set(methods)
    for name, record in records.items():
        assert record["status"] == "ok"
        phases = [(h["phase"], h["epoch"]) for h in record["history"]]
        assert phases == [("init", 1), ("train", 1)]  # the init epoch first; the main phase keeps its budget
        assert set(record["history"][0]) >= {INIT_TERM[name]} and "loss_ce" in record["history"][1]
