from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import pytest

from kdbench.config import (
    RunSpec,
    build_params,
    coerce_value,
    cohort_key,
    method_label,
    parse_set_overrides,
    spec_hash,
)
from kdbench.errors import ConfigError
from kdbench.plan import expand, make_spec, plan_cohorts


def spec(**kw) -> RunSpec:
    base = dict(dataset="digits", student="test_efficientnet", method="kd", teacher="test_resnet")
    return RunSpec(**{**base, **kw})


def test_run_id_is_stable_and_readable():
    a, b = spec(), spec()
    assert a.run_id == b.run_id
    assert a.run_id.startswith("digits-kd-") and len(a.run_id.split("-")[-1]) == 12
    assert spec(seed=1).run_id != a.run_id
    assert spec(method_params={"temperature": 2.0}).run_id != a.run_id


def test_run_id_pinned():
    # A refactor must not silently change ids: that would orphan every existing results store.
    assert spec().run_id == "digits-kd-" + spec_hash(spec())[:12]
    assert spec_hash(spec()) == spec_hash(RunSpec(**spec().as_dict() | {"milestones": ()}))


def test_checkpoint_path_is_not_part_of_the_id():
    a = spec(teacher_source="checkpoint", teacher_ckpt="/a/t.pt", teacher_ckpt_sha256="ab")
    b = dataclasses.replace(a, teacher_ckpt="/b/t.pt")
    assert a.run_id == b.run_id
    assert dataclasses.replace(a, teacher_ckpt_sha256="cd").run_id != a.run_id


def test_loader_options_are_kept_but_not_part_of_the_id():
    """workers and prefetch change how fast the data loads, not the data: a store resumes with any values."""
    plain = spec(dataset="imagenet", data_options={})
    fast = spec(dataset="imagenet", data_options={"workers": 16, "prefetch": 8})
    assert fast.run_id == plain.run_id
    assert cohort_key(fast) == cohort_key(plain)
    assert fast.as_dict()["data_options"] == {"workers": 16, "prefetch": 8}
    other = spec(dataset="synthetic", data_options={"num_classes": 5})
    assert other.run_id != spec(dataset="synthetic", data_options={"num_classes": 6}).run_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be > 0"),
        ({"batch_size": -1}, "batch size"),
        ({"lr": 0}, "lr must be > 0"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"schedule": "multistep"}, "needs milestones"),
        ({"val_fraction": 1.0}, "val fraction"),
        ({"teacher": None}, "needs a teacher"),
    ],
)
def test_invalid_budgets_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message) as info:
        spec(**change)
    assert "\n" not in str(info.value)


@dataclasses.dataclass(frozen=True)
class Knobs:
    temperature: float = 4.0
    steps: int = 3
    hard: bool = False
    mode: Literal["a", "b"] = "a"
    stages: tuple[int, ...] = (1, 2)
    scale: float | None = None


def test_build_params_coerces_strings_to_field_types():
    p = build_params(Knobs, {"temperature": "2", "steps": "5", "hard": "true", "mode": "b", "stages": "0,3",
                             "scale": "none"}, "m")
    assert p == Knobs(temperature=2.0, steps=5, hard=True, mode="b", stages=(0, 3), scale=None)
    assert build_params(Knobs, {"stages": [1], "scale": 0.5}, "m") == Knobs(stages=(1,), scale=0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temprature": "2"}, "no parameter 'temprature'; did you mean 'temperature'"),
        ({"steps": "2.5"}, "m.steps must be an integer"),
        ({"temperature": "warm"}, "m.temperature must be a number"),
        ({"hard": "maybe"}, "m.hard must be true or false"),
        ({"mode": "c"}, "m.mode must be one of"),
    ],
)
def test_build_params_rejects_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_params(Knobs, overrides, "m")


def test_coerce_rejects_bool_for_numbers():
    with pytest.raises(ConfigError):
        coerce_value(True, int, "x")


def test_method_label_lists_non_defaults():
    assert method_label("m", Knobs(), Knobs) == "m"
    assert method_label("m", Knobs(temperature=2.0, stages=(3,)), Knobs) == "m(temperature=2,stages=[3])"


def test_parse_set_overrides():
    assert parse_set_overrides(["kd.temperature=2", "kd.ce_weight=0.5", "at.beta=10"]) == {
        "kd": {"temperature": "2", "ce_weight": "0.5"}, "at": {"beta": "10"}}
    for bad in ["kd", "kd=2", ".t=2", "kd.=2"]:
        with pytest.raises(ConfigError, match="METHOD.PARAM=VALUE"):
            parse_set_overrides([bad])


def test_make_spec_resolves_defaults_and_normalises_teacher_free_runs():
    kd = make_spec(dataset="digits", student="s", method="kd", teacher="t", seed=0)
    assert kd.method_params == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "standardize": False}
    assert kd.teacher == "t" and kd.teacher_source == "trained"
    ce1 = make_spec(dataset="digits", student="s", method="ce", teacher="t1", seed=0, teacher_epochs=9)
    ce2 = make_spec(dataset="digits", student="s", method="ce", teacher="t2", seed=0, teacher_epochs=3)
    assert ce1.teacher is None and ce1.teacher_source == "none"
    assert ce1.run_id == ce2.run_id  # one baseline serves every pair with that student


def test_make_spec_checkpoint_hash(tmp_path):
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"weights")
    s = make_spec(dataset="digits", student="s", method="kd", teacher="t", teacher_ckpt=str(ckpt))
    assert s.teacher_source == "checkpoint"
    assert s.teacher_ckpt_sha256 == hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(ConfigError, match="not found"):
        make_spec(dataset="digits", student="s", method="kd", teacher="t", teacher_ckpt=str(tmp_path / "no.pt"))


def test_expand_product_and_dedup():
    specs = expand(dataset="digits", pairs=[("test_resnet", "test_efficientnet"), ("test_vit", "test_efficientnet")],
                   methods={"ce": {}, "kd": {"temperature": [2.0, 4.0]}}, seeds=[0, 1])
    labels = sorted((s.method, s.teacher or "-", s.method_params.get("temperature", 0), s.seed) for s in specs)
    # ce once per seed (shared by both pairs), kd 2 pairs x 2 temperatures x 2 seeds
    assert len(specs) == 2 + 8
    assert labels[:2] == [("ce", "-", 0, 0), ("ce", "-", 0, 1)]
    assert len({s.run_id for s in specs}) == len(specs)


def test_plan_cohorts_groups_by_data_stream_and_teacher():
    specs = expand(dataset="digits", pairs=[("test_resnet", "test_efficientnet")],
                   methods={"ce": {}, "kd": {"temperature": [1.0, 2.0, 3.0]}}, seeds=[0, 1])
    cohorts = plan_cohorts(specs)
    assert sorted(len(c) for c in cohorts) == [4, 4]  # per seed: ce + three kd
    for c in cohorts:
        assert len({s.seed for s in c}) == 1
    assert sorted(len(c) for c in plan_cohorts(specs, max_size=3)) == [1, 1, 3, 3]
    assert all(len(c) == 1 for c in plan_cohorts(specs, cohort=False))
    with pytest.raises(ConfigError):
        plan_cohorts(specs, max_size=0)
