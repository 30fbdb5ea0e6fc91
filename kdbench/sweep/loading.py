"""Reading a sweep spec: a YAML file, or a shipped spec by name, loaded with ``yaml.safe_load`` and checked."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import ConfigError
from kdbench.sweep.checking import parse_sweep_spec
from kdbench.sweep.schema import SpecError, SweepSpec

#: where ``kdbench sweep NAME`` finds the shipped specs
PACKAGED_CONFIGS = ("resources", "configs")


def packaged_configs() -> dict[str, str]:
    """The shipped sweep specs: name -> first comment line (what the spec is)."""
    folder = resources.files("kdbench").joinpath(*PACKAGED_CONFIGS)
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = next((line for line in entry.read_text(encoding="utf-8").splitlines() if line.strip()), "")
            out[entry.name.removesuffix(".yaml")] = first.lstrip("#").strip()
    return out


def _read_spec_text(name: str) -> tuple[str, Path]:
    """The text of spec ``name`` (a file, else a shipped config's name) and the folder its relative paths start in.

    Raises:
        ConfigError: neither a readable file nor a shipped config.
    """
    path = Path(name).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), path.resolve().parent
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read sweep spec {name}: {err}") from None
    shipped = packaged_configs()
    stem = name.removesuffix(".yaml")
    if stem in shipped and "/" not in name:
        entry = resources.files("kdbench").joinpath(*PACKAGED_CONFIGS, f"{stem}.yaml")
        return entry.read_text(encoding="utf-8"), Path.cwd()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise ConfigError(f"sweep spec {name} is a folder, not a file; name a spec file{hint}")
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = (f"; did you mean the shipped spec {close[0]!r}?" if close
            else f"; shipped specs: {', '.join(shipped)}" if shipped else "")
    raise ConfigError(f"sweep spec not found: {name}{hint}")


def load_sweep_spec(name: str | Path, extra_plugins: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep spec file (or a shipped spec by name, e.g. ``quickstart``).

    Relative paths in the spec (``teacher_ckpt``, ``data_root``, ``plugins``) start in the spec file's folder.

    Args:
        name: path of a YAML file, or the name of a shipped spec (see ``kdbench sweep --list-configs``).
        extra_plugins: method plugin files to load besides the spec's ``plugins`` (paths from the working folder).

    Raises:
        SpecError: every problem of the spec, one line each.
        ConfigError: the file cannot be found or read.
    """
    data, base_dir = read_spec_data(name)
    plugins = [str(Path(p).expanduser().resolve()) for p in extra_plugins]
    return parse_sweep_spec(data, source=str(name), base_dir=base_dir, extra_plugins=plugins)


def read_spec_data(name: str | Path) -> tuple[Any, Path]:
    """The YAML document of spec ``name`` (a file, else a shipped config's name) and the folder of its paths.

    Raises:
        SpecError: the text is not valid YAML (with its line and column).
        ConfigError: the file cannot be found or read.
    """
    text, base_dir = _read_spec_text(str(name))
    try:
        return yaml.safe_load(text), base_dir
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(str(name), [f"not valid YAML{where}: {problem}"]) from None
