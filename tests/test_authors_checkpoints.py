"""The CIFAR KD authors' teacher checkpoints load into every zoo network through ``--teacher-ckpt`` with equal logits.

``tests/trainer_parity/fixtures/authors_checkpoints.json`` was written by ``tests/trainer_parity/make_fixtures.py``
from the authors' own model classes (RepDistiller's ``models.model_dict`` and mdistiller's ``cifar_model_dict``, at
the commits it names): for each of the 22 networks, the names and shapes of its state dict in saved order and its
eval-mode logits on two fixed images, with every tensor (BatchNorm statistics included) given the values
:func:`tests.trainer_parity.common.initial_state` derives from its name. Here the same state dict is saved as the
authors' checkpoints hold it (``{'epoch', 'model', 'accuracy' | 'best_acc', 'optimizer'}``), read and loaded by
kdbench's own path for ``--teacher-ckpt`` (:func:`kdbench.teachers.read_state_dict`,
:func:`kdbench.teachers.load_weights`) into the zoo's network, whose logits must equal the authors' network's: the
architectures are the authors', layer for layer. Float64 on both sides; 1e-9 of the largest logit leaves room for
summation order only (a wrong layer, order or BatchNorm epsilon moves logits by far more).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.errors import KDBenchError
from kdbench.models import create_model
from kdbench.teachers import load_weights, read_state_dict
from tests.trainer_parity import common

FIXTURE = Path(__file__).parent / "trainer_parity" / "fixtures" / "authors_checkpoints.json"
DATA: dict[str, Any] = json.loads(FIXTURE.read_text())
CASES = [(repo, name) for repo, entry in DATA.items() for name in entry["models"]]


def model_entry(repo: str, name: str) -> dict[str, Any]:
    """The fixture's entry of one network (an entry equal to another repository's is stored there)."""
    entry = DATA[repo]["models"][name]
    return DATA[entry["same_as"]]["models"][name] if "same_as" in entry else entry


def authors_checkpoint(repo: str, name: str, path: Path) -> None:
    """Write the network's state dict the way the authors' training scripts save it."""
    keys = [(k, tuple(shape)) for k, shape in model_entry(repo, name)["keys"]]
    state = common.initial_state(f"checkpoint:{name}", keys)
    extra = {"accuracy": 0.0} if repo == "HobbitLong/RepDistiller" else {"best_acc": 0.0}
    torch.save({"epoch": 240, "model": state, **extra, "optimizer": {"state": {}, "param_groups": []}}, path)


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    """Both sides compute in float64 (see the module's docstring)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def test_every_zoo_network_of_the_tables_is_covered() -> None:
    from kdbench.zoo import ZOO_MODELS

    for repo, entry in DATA.items():
        assert sorted(m["zoo"] for m in entry["models"].values()) == sorted(ZOO_MODELS), repo


@pytest.mark.parametrize(("repo", "name"), CASES)
def test_authors_checkpoint_gives_the_authors_logits(repo: str, name: str, tmp_path: Path) -> None:
    entry = DATA[repo]["models"][name]
    path = tmp_path / "ckpt_epoch_240.pth"
    authors_checkpoint(repo, name, path)
    model = create_model(entry["zoo"], num_classes=common.NUM_CLASSES, in_chans=3, image_size=32)
    load_weights(model, read_state_dict(path), str(path), entry["zoo"])
    with torch.no_grad():
        logits = model.eval()(common.checkpoint_images())
    expected = torch.tensor(model_entry(repo, name)["logits"], dtype=torch.float64)
    scale = float(expected.abs().max())
    assert torch.allclose(logits, expected, rtol=0, atol=1e-9 * scale), float((logits - expected).abs().max())


def test_a_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt_epoch_240.pth"
    authors_checkpoint("HobbitLong/RepDistiller", "resnet20", path)
    model = create_model("cifar_resnet32", num_classes=common.NUM_CLASSES, in_chans=3, image_size=32)
    with pytest.raises(KDBenchError, match="does not fit model"):
        load_weights(model, read_state_dict(path), str(path), "cifar_resnet32")
