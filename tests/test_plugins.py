"""Method plugins found through the `kdbench.methods` entry-point group of installed packages."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

import kdbench.distiller as distiller
from kdbench.errors import KDBenchError

MODULE = textwrap.dedent('''
    from dataclasses import dataclass
    import torch.nn.functional as F
    from kdbench.distiller import Distiller, register_method

    @register_method("installed_ce")
    class InstalledCE(Distiller):
        """A method an installed package provides (test)."""
        needs_teacher = False

        @dataclass(frozen=True)
        class Params:
            pass

        def losses(self, step):
            return {"loss_ce": F.cross_entropy(step.student_logits, step.labels)}
''')


@pytest.fixture
def fake_package(tmp_path, monkeypatch, method_sandbox):
    """An importable module plus an entry point naming it, as `pip install` of a plugin package would give."""
    (tmp_path / "kd_plugin_pkg.py").write_text(MODULE)
    (tmp_path / "broken_plugin_pkg.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(distiller, "_discovered", False)
    yield monkeypatch
    sys.modules.pop("kd_plugin_pkg", None)
    sys.modules.pop("broken_plugin_pkg", None)


def entry_points(*specs):
    points = [importlib.metadata.EntryPoint(name=n, value=v, group=distiller.ENTRY_POINT_GROUP) for n, v in specs]
    return lambda group: [p for p in points if p.group == group]


def test_installed_plugin_is_registered_by_discovery(fake_package):
    fake_package.setattr(importlib.metadata, "entry_points", entry_points(("installed", "kd_plugin_pkg")))
    assert "installed_ce" in distiller.list_methods()
    assert distiller.get_method("installed_ce").needs_teacher is False


def test_an_installed_plugin_that_fails_to_import_is_one_line(fake_package):
    fake_package.setattr(importlib.metadata, "entry_points", entry_points(("broken", "broken_plugin_pkg")))
    with pytest.raises(KDBenchError, match="cannot load method plugin 'broken'.*RuntimeError: boom"):
        distiller.list_methods()
