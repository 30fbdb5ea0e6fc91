"""Methods say what they are: a family each, valid ranges declared once, and orders read from the registry.

The README's methods table is parsed here, so it cannot drift from the registry: every built-in method is listed
under its family's heading, and nothing else is listed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.config import Bounds, build_params, field_bounds, valid
from kdbench.distiller import (
    FAMILIES,
    METHODS,
    Distiller,
    MethodParams,
    RunContext,
    StageSelection,
    Step,
    gather_here,
    get_method,
    is_builtin,
    list_methods,
    methods_by_family,
    register_method,
    tunable,
)
from kdbench.errors import ConfigError
from kdbench.report.style import method_order

README = Path(__file__).resolve().parents[1] / "README.md"
BUILTIN = [name for name in list_methods() if is_builtin(name)]
HEADING = re.compile(r"^\| \*\*(?P<heading>[^*]+)\*\* \|")
ROW = re.compile(r"^\| `(?P<name>[a-z0-9_\-]+)` \|")


def readme_methods_table() -> dict[str, str]:
    """Method name -> the family heading it is listed under, from the README's methods table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    heading = None
    for line in section.splitlines():
        if match := HEADING.match(line):
            heading = match["heading"]
        elif (match := ROW.match(line)) and heading is not None:
            assert match["name"] not in listed, f"{match['name']} is listed twice in the README's methods table"
            listed[match["name"]] = heading
    return listed


def outside(bounds: Bounds) -> Any:
    """A number just outside ``bounds``."""
    if bounds.low is not None:
        return bounds.low if bounds.low_open else bounds.low - 1
    return bounds.high if bounds.high_open else bounds.high + 1


def test_the_readme_table_lists_every_builtin_method_under_its_family_and_nothing_else():
    listed = readme_methods_table()
    headings = set(listed.values())
    assert headings <= set(FAMILIES.values()), f"headings that are no family: {headings - set(FAMILIES.values())}"
    missing = [name for name in BUILTIN if name not in listed]
    assert not missing, f"built-in methods missing from the README's methods table: {missing}"
    unknown = [name for name in listed if name not in BUILTIN]
    assert not unknown, f"the README's methods table lists methods that are not registered: {unknown}"
    wrong = {name: (listed[name], FAMILIES[get_method(name).family]) for name in BUILTIN
             if listed[name] != FAMILIES[get_method(name).family]}
    assert not wrong, f"listed under another family's heading (README, registry): {wrong}"


def test_the_readme_table_follows_the_family_order():
    listed = readme_methods_table()
    order = list(FAMILIES.values())
    positions = [order.index(heading) for heading in listed.values()]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_declares_a_family_and_ranges_its_defaults_satisfy(name):
    cls = get_method(name)
    assert cls.family in FAMILIES and cls.family != "other", f"{name} declares no family"
    assert issubclass(cls.Params, MethodParams)
    cls.Params()  # the defaults are inside their ranges (a default outside would raise here)
    for spec_field in dataclasses.fields(cls.Params):
        bounds = field_bounds(spec_field)
        if bounds is None:
            continue
        assert bounds.holds(getattr(cls.Params(), spec_field.name)), (name, spec_field.name)
        search = spec_field.metadata.get("search") or {}
        for end in search.get("choices", ()) or [search.get("low"), search.get("high")]:
            if end is not None:
                assert bounds.holds(end), f"{name}.{spec_field.name}: its search space leaves its valid range"


@pytest.mark.parametrize("name", BUILTIN)
def test_every_declared_range_refuses_a_value_outside_it_on_construction_and_from_the_command_line(name):
    cls = get_method(name)
    ranged = [f for f in dataclasses.fields(cls.Params) if field_bounds(f) is not None]
    assert ranged or not dataclasses.fields(cls.Params), f"{name} declares no range for any of its parameters"
    for spec_field in ranged:
        bad = outside(field_bounds(spec_field))
        value = (bad,) if "tuple" in str(spec_field.type) else bad
        with pytest.raises(ValueError, match=rf"{name}\.{spec_field.name} must be"):
            cls.Params(**{spec_field.name: value})  # a __post_init__ of its own still calls super()'s
        with pytest.raises(ConfigError, match=rf"^{name}\.{spec_field.name} must be"):
            build_params(cls.Params, {spec_field.name: str(bad)}, name)


def test_weights_temperatures_and_probabilities_have_the_ranges_their_meaning_gives():
    def bounds(method: str, param: str) -> str:
        (spec_field,) = [f for f in dataclasses.fields(get_method(method).Params) if f.name == param]
        return str(field_bounds(spec_field))

    assert bounds("kd", "kd_weight") == ">= 0" and bounds("kd", "temperature") == "> 0"
    assert bounds("kd_ls", "kd_weight") == ">= 0"  # a preset keeps its parent's ranges
    assert bounds("crd", "momentum") == "in [0, 1)" and bounds("crd", "nce_k") == ">= 1"
    assert bounds("tfkd", "correct_prob") == "in (0, 1]" and bounds("deit", "alpha") == "in [0, 1]"
    assert bounds("at", "depths") == "in [0, 1]"


def test_the_stage_methods_share_one_stage_selection_with_unchanged_names_and_defaults():
    stage = {"depths", "student_indices", "teacher_indices"}
    users = [name for name in BUILTIN if issubclass(get_method(name).Params, StageSelection)]
    assert set(users) == {"ab", "at", "fsp", "kdsvd", "nst", "reviewkd", "sp", "vid"}
    for name in users:
        defaults = dataclasses.asdict(get_method(name).Params())
        assert stage <= set(defaults)
        assert defaults["depths"] == ((1.0,) if name == "sp" else None)
        assert defaults["student_indices"] is None and defaults["teacher_indices"] is None


def test_list_methods_and_the_report_order_come_from_the_registry_by_family(capsys):
    from kdbench.cli import main

    ordered = methods_by_family(builtin_only=True)
    assert sorted(ordered) == sorted(BUILTIN)
    ranks = [list(FAMILIES).index(get_method(name).family) for name in ordered]
    assert ranks == sorted(ranks)
    assert list(method_order()) == [name for name in ordered if name != "ce"]
    assert main(["list", "methods"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == methods_by_family()
    assert all(row[1] == get_method(row[0]).family for row in rows)


@dataclass(frozen=True)
class _Plain:
    weight: float = 1.0


def _register(name: str, **attributes: Any) -> type[Distiller]:
    body = {"__doc__": "A test method (paper, link).", "Params": attributes.pop("Params", _Plain),
            "losses": lambda self, step: {"loss": step.student_logits.sum()}, **attributes}
    return register_method(name)(type(name.title(), (Distiller,), body))


def test_a_plugin_without_a_family_is_other_and_an_unknown_family_is_refused():
    try:
        assert _register("famtest_plain").family == "other"
        assert "famtest_plain" in methods_by_family()
        with pytest.raises(TypeError, match="'vision' is not a method family; use one of baseline, logit"):
            _register("famtest_bad", family="vision")
        assert "famtest_bad" not in METHODS.names()
    finally:
        for name in ("famtest_plain", "famtest_bad"):
            if name in METHODS.names():
                METHODS.unregister(name)


def test_registration_refuses_a_default_or_a_search_space_outside_the_declared_range():
    @dataclass(frozen=True)
    class BadDefault(MethodParams):
        temperature: float = field(default=-1.0, metadata=valid(gt=0))

    @dataclass(frozen=True)
    class WideSpace:
        temperature: float = field(default=4.0, metadata=valid(gt=0) | tunable(0.0, 8.0))

    @dataclass(frozen=True)
    class BadChoice:
        nce_k: int = field(default=4, metadata=valid(ge=1) | tunable(choices=(0, 4)))

    try:
        with pytest.raises(TypeError, match=r"famtest_default.temperature: its default -1.0 is outside .* > 0"):
            _register("famtest_default", Params=BadDefault)
        with pytest.raises(TypeError, match=r"famtest_space.temperature: its search space \[0.0, 8.0\] reaches"):
            _register("famtest_space", Params=WideSpace)
        with pytest.raises(TypeError, match=r"famtest_choice.nce_k: its search space \[0, 4\]"):
            _register("famtest_choice", Params=BadChoice)
    finally:
        for name in ("famtest_default", "famtest_space", "famtest_choice"):
            if name in METHODS.names():
                METHODS.unregister(name)


def test_valid_refuses_a_declaration_that_means_nothing():
    for kwargs in ({}, {"ge": 0, "gt": 0}, {"ge": 1, "le": 0}, {"gt": 1, "lt": 1}):
        with pytest.raises(ValueError):
            valid(**kwargs)
    assert str(valid(ge=0, lt=1)["valid"]) == "in [0, 1)" and str(valid(le=2)["valid"]) == "<= 2"


def test_the_run_context_gathers_nothing_in_one_process_and_methods_reach_it_there():
    context = RunContext(epochs=1, steps_per_epoch=1, batch_size=2, num_train=2, num_classes=2,
                         train_labels=torch.zeros(2, dtype=torch.long))
    rows = torch.arange(4.0).reshape(2, 2)
    assert context.gather is gather_here and context.processes == 1
    (same,) = context.gather(rows)
    assert same is rows
    crd_source = Path(get_method("crd").__module__.replace("kdbench.methods.", "methods/") + ".py")
    text = (Path(__file__).resolve().parents[1] / crd_source).read_text(encoding="utf-8")
    assert "distributed" not in text.split('"""', 2)[0] + text.split("class CRD", 1)[1].split('"""', 2)[2]
    assert "context.gather" in text


def test_the_stage_helpers_pair_sum_and_prefix_the_labels_term():
    class Stub(Distiller):
        """A stub (no paper)."""

        @dataclass(frozen=True)
        class Params(MethodParams):
            ce_weight: float = 2.0

    stub = Stub(Stub.Params(), None, None, None)  # type: ignore[arg-type]
    stub.pairs = ((0, 1), (2, 3))
    maps = {i: torch.full((1,), float(i)) for i in range(4)}
    step = Step(images=torch.zeros(1), labels=torch.tensor([0]), indices=torch.tensor([0]),
                student_logits=torch.tensor([[0.0, 0.0]]), student_features=maps, teacher_features=maps)
    students, teachers = stub.paired_maps(step)
    assert [float(s) for s in students] == [0.0, 2.0] and [float(t) for t in teachers] == [1.0, 3.0]
    assert float(stub.sum_over_pairs(step, lambda s, t: (s * t).sum())) == 0 * 1 + 2 * 3
    terms = stub.with_ce(step, loss_x=torch.tensor(5.0))
    assert list(terms) == ["loss_ce", "loss_x"]
    assert torch.allclose(terms["loss_ce"], 2.0 * torch.log(torch.tensor(2.0)))
