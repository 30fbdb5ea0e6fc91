"""Part 2 of the authors' reference values (the 2022-2025 methods): the fixed inputs, the values, and the pieces
the tests that check them share (a key's tensors, its comparison, the shapes and steps a method is built on).

``inputs_v2.pt`` holds only part 2's own tensors; part 1's (``inputs.pt``) are merged in, unchanged, when loaded.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.distiller import Step, construct_method, get_method
from kdbench.features import ModelInfo, StageShape
from kdbench.methods.simkd import simkd_projector
from tests.golden.cases import CONTEXT, DATA
from tests.reference import HERE, RTOL
from tests.reference import inputs as part1_inputs

#: the shapes the methods of part 2 are built on (the final maps of the inputs: 64 and 128 channels at 8x8)
STUDENT = ModelInfo("student", 10, 64, stages=(StageShape(32, 16, 16, 2), StageShape(64, 8, 8, 4)))
TEACHER = ModelInfo("teacher", 10, 128, stages=(StageShape(64, 16, 16, 2), StageShape(128, 8, 8, 4)))


@functools.cache
def inputs() -> dict[str, Any]:
    """The fixed input tensors of part 2 (float32, CPU), part 1's included."""
    return {**part1_inputs(), **torch.load(HERE / "inputs_v2.pt", weights_only=True)}


@functools.cache
def values() -> dict[str, Any]:
    """Every part-2 key with its value, shape, source and notes."""
    return json.loads((HERE / "values_v2.json").read_text())


def x(name: str) -> Any:
    """A fresh copy of an input tensor (or list of tensors)."""
    value = inputs()[name]
    return [t.clone() for t in value] if isinstance(value, list) else value.clone()


def check(key: str, got: Tensor | float) -> None:
    """``got`` matches the key's value: a scalar within RTOL, a tensor element by element."""
    entry = values()[key]
    expected = torch.tensor(entry["value"], dtype=torch.float64)
    got = torch.as_tensor(got).detach().double()
    assert list(got.shape) == list(entry["shape"]), key
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=RTOL * 1e-2 * float(expected.abs().max()), msg=key)


def linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    """A classifier holding the key's weight and bias."""
    fc = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    return fc


def simkd_projected() -> Tensor:
    """The SimKD projector with the key's weights, on the student's final map."""
    projector = simkd_projector(64, 128, factor=2)
    for conv, name in zip(projector[0::3], ("simkd_w1", "simkd_w2", "simkd_w3"), strict=True):
        conv.weight.data.copy_(x(name))
    return projector(x("final_feat_s"))


def method(name: str, **overrides: Any):
    """The registered method ``name`` on :data:`STUDENT` and :data:`TEACHER` (seeded construction)."""
    cls = get_method(name)
    torch.manual_seed(0)
    return construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, CONTEXT)


def step(m, *, net: bool = False, epoch: int = 0, **fields: Any) -> Step:
    """A step of the keys' logits and labels (``net``: those of the networks on the final maps)."""
    suffix = "_net" if net else ""
    labels = x("target_net" if net else "target")
    return Step(images=torch.zeros(8, 3, 32, 32), labels=labels, indices=torch.arange(8),
                student_logits=x(f"logits_s{suffix}"), teacher_logits=x(f"logits_t{suffix}"),
                student_features={1: x("final_feat_s")} if m.student_stages else {},
                teacher_features={1: x("final_feat_t")} if m.teacher_stages else {},
                epoch=epoch, epochs=240, **fields)
