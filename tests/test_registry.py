from __future__ import annotations

import pytest

from kdbench.errors import ConfigError
from kdbench.registry import Registry, UnknownNameError


def make() -> Registry[int]:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    reg.register("alpine", 2)
    reg.register("beta_kd", 3)
    return reg


def test_register_and_get():
    reg = make()
    assert reg.get("alpha") == 1
    assert "beta_kd" in reg and "gamma" not in reg
    assert len(reg) == 3
    assert list(reg) == ["alpha", "alpine", "beta_kd"]


def test_decorator_form_returns_the_object():
    reg: Registry[type] = Registry("thing")

    @reg.register("thing_one")
    class One:
        pass

    assert reg.get("thing_one") is One


def test_duplicate_is_a_value_error():
    reg = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 9)


@pytest.mark.parametrize("bad", ["", "Alpha", "has space", "dot.ted"])
def test_invalid_names_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid widget name"):
        Registry("widget").register(bad, 1)


def test_unknown_name_suggests_close_matches():
    reg = make()
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "unknown widget 'alpah'" in message and "'alpha'" in message
    assert "\n" not in message
    assert isinstance(info.value, ConfigError)


def test_unknown_name_without_close_match_lists_known():
    with pytest.raises(UnknownNameError, match="known: alpha, alpine, beta_kd"):
        make().get("zzzzzz")


def test_glob_listing():
    reg = make()
    assert reg.names("al*") == ["alpha", "alpine"]
    assert reg.names("*kd*") == ["beta_kd"]
    assert reg.names() == ["alpha", "alpine", "beta_kd"]
