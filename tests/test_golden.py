"""Every built-in method's loss terms on fixed tensors equal the pinned golden values.

A refactor cannot silently change a loss: the change shows up here, and a deliberate one is re-pinned with
``python -m tests.golden.cases METHOD`` and reviewed.
"""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.distiller import get_method, list_methods
from tests.golden.cases import build, compute, golden_digest, golden_path, read_versions, step_for

BUILTIN = [name for name in list_methods() if get_method(name).__module__.startswith("kdbench.methods.")]


def test_there_are_builtin_methods():
    assert {"ce", "kd"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_terms_match_golden_values(name):
    path = golden_path(name)
    assert path.is_file(), f"no golden values for {name!r}: run `python -m tests.golden.cases {name}` and review"
    expected = json.loads(path.read_text())
    got = compute(name)
    assert set(got) == set(expected)
    for term, value in expected.items():
        assert got[term] == pytest.approx(value, rel=1e-5, abs=1e-7), term


@pytest.mark.parametrize("name", BUILTIN)
def test_losses_are_finite_scalars_with_gradient_to_the_student(name):
    method = build(name)
    step = step_for(method)
    step.student_logits.requires_grad_(True)
    maps = [*step.student_features.values(), *([step.student_final_map] if step.student_final_map is not None else [])]
    for t in maps:
        t.requires_grad_(True)
    terms = method.losses(step)
    assert terms and all(k.startswith("loss") for k in terms)
    total = sum(terms.values())
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    grads = [step.student_logits.grad] + [t.grad for t in maps]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", BUILTIN)
def test_method_contract(name):
    cls = get_method(name)
    doc = (cls.__doc__ or "").strip()
    assert doc, "a method's docstring opens with its paper"
    assert cls.Params.__dataclass_params__.frozen
    cls.Params()  # the paper's defaults construct


@pytest.mark.parametrize("name", BUILTIN)
def test_golden_values_change_only_with_the_method_version(name):
    """A golden file re-pinned without a version bump fails here: results would be reused under the old id."""
    version = str(get_method(name).version)
    pinned = read_versions().get(name, {})
    assert version in pinned, f"{name} version {version} has no pinned golden digest: run python -m tests.golden.cases"
    assert pinned[version] == golden_digest(name), (
        f"the golden values of {name!r} changed while its version stayed {version}: bump {name}.version")
