"""The methods of 2022-2025 train together: one ``kdbench run`` of all of them on mnist5k, CNN -> CNN and CNN -> ViT.

Each loss is checked against its authors' code in ``tests/test_reference_parity_v2.py``; here they run as a user
runs them, through the command line, all in one cohort. A method that cannot distil into a ViT says so in one line
(exit code 2) before anything trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.distiller import list_methods

#: the baselines of 2022-2025 (the published tables of their papers are in kdbench's published tables)
NEW_METHODS = ("simkd", "catkd", "dot", "ttm", "wttm", "sdd_kd", "sdd_dkd", "kdpp", "dkdpp", "wkd_l", "wkd_f",
               "mgd", "srd", "rld", "crld", "ickd")
#: mnist5k, one epoch each, all in one cohort
RUN = ["run", "--dataset", "mnist5k", "--teacher", "cifar_resnet20", "--epochs", "1", "--teacher-epochs", "1",
       "--batch-size", "128", "--max-cohort", "16", "--no-progress"]


def records(results: Path) -> dict[str, dict]:
    """The store's records by method."""
    rows = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    return {r["method"]: r for r in rows if "method" in r}


def test_every_new_method_is_registered():
    assert set(NEW_METHODS) <= set(list_methods())


@pytest.mark.slow
def test_all_new_methods_train_in_one_run_on_a_cnn_pair(tmp_path, capsys, one_torch_thread):
    methods = [a for m in NEW_METHODS for a in ("--method", m)]
    results = str(tmp_path / "results")
    assert main([*RUN, "--image-size", "16", "--student", "cifar_resnet8", *methods, "--results", results]) == 0
    found = records(tmp_path / "results")
    assert set(found) == set(NEW_METHODS)
    for name, record in found.items():
        assert record["status"] == "ok", (name, record["error"])
        assert record["cohort_size"] == len(NEW_METHODS)  # one cohort: one teacher pass per batch for all
        assert record["history"] and record["history"][-1]["epoch"] == 1
    board = capsys.readouterr().out
    assert all(name in board for name in NEW_METHODS)


@pytest.mark.slow
def test_all_new_methods_distil_a_cnn_into_a_vit_or_say_in_one_line_why_not(tmp_path, capsys, one_torch_thread):
    results = str(tmp_path / "results")
    left, refused = list(NEW_METHODS), {}
    for _ in NEW_METHODS:  # a refusal names the method; the rest is asked again
        capsys.readouterr()
        code = main([*RUN, "--image-size", "32", "--lr", "0.01", "--student", "test_vit",  # 2x2 16-px patches
                     *[a for m in left for a in ("--method", m)], "--results", results])
        err = capsys.readouterr().err.strip().splitlines()
        if code != 2:
            break
        (line,) = [e for e in err if e.startswith("kdbench: error:")]
        assert "Traceback" not in "\n".join(err)
        (name,) = [m for m in left if f"'{m}'" in line or f" {m} " in line or f" {m}:" in line or f"{m}." in line]
        refused[name] = line
        left.remove(name)
    assert code == 0, err
    found = records(tmp_path / "results")
    assert set(found) == set(left) and len(left) >= len(NEW_METHODS) - 4, refused
    assert all(found[m]["status"] == "ok" for m in left), {m: found[m]["error"] for m in left}
