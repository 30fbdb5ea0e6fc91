"""What both sides of the trainer-parity check share: the fixed data stream, the initial weights, the schedule.

Only torch: :mod:`tests.trainer_parity.make_fixtures` (which runs the authors' code) and
``tests/test_trainer_parity.py`` (which runs kdbench) import it, so the two start from identical tensors without
storing weights. Initial values are a pure function of the authors' parameter name and shape; kdbench's modules
get them through the position-by-position renaming of :mod:`kdbench.zoo.authors` (networks) or the fixture's
list of the authors' names (method modules).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

NUM_CLASSES = 100
NUM_TRAIN = 24
BATCH_SIZE = 8
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
STUDENT = "resnet8"  # the authors' name; kdbench's zoo calls it cifar_resnet8
TEACHER = "resnet8x4"  # wider than the student, so that adapters have to project
EPOCHS = 3
INIT_EPOCHS = 2
#: 1-based epochs after which the authors' schedule decays (RepDistiller's ``lr_decay_epochs``): epoch 3 decays
LR_DECAY_EPOCHS = (2,)
DATA_SEED = 20250125


def _generator(*parts: object) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def images_and_labels() -> tuple[Tensor, Tensor]:
    """The training set: ``NUM_TRAIN`` normalised-looking 3x32x32 images and their labels (float32, int64)."""
    g = _generator(DATA_SEED, "data")
    images = torch.randn(NUM_TRAIN, 3, 32, 32, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=g)
    return images, labels


def strong_view(images: Tensor) -> Tensor:
    """A second view of ``images`` for methods that train on two (MLKD's weak and strong views).

    A fixed function of the images (mirrored left to right, contrast 0.8, shifted by 0.1), so that no random
    augmentation enters and both sides see the same tensors: the authors' loop as its second input, kdbench's as the
    view the method asks for.
    """
    return 0.8 * images.flip(-1) + 0.1


def checkpoint_images() -> Tensor:
    """Two images on which the authors' networks and the zoo's are compared."""
    return torch.randn(2, 3, 32, 32, generator=_generator(DATA_SEED, "checkpoint images"))


def epoch_order(k: int) -> Tensor:
    """The sample order of the ``k``-th pass over the training set (initialisation epochs count first)."""
    return torch.randperm(NUM_TRAIN, generator=_generator(DATA_SEED, "order", k))


def batches(k: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The ``k``-th epoch's batches: (images, labels, indices)."""
    images, labels = images_and_labels()
    order = epoch_order(k)
    return [(images[idx], labels[idx], idx) for idx in order.split(BATCH_SIZE)]


def initial_value(owner: str, name: str, shape: tuple[int, ...], siblings: set[str]) -> Tensor:
    """The initial value of ``owner``'s state entry ``name`` (its name in the authors' code).

    Weights of rank >= 2 are He-scaled normals; BatchNorm weights 1 + 0.1·N, biases and running means 0.1·N,
    running variances 1 + 0.2·U; counters 0. ``siblings`` (the state dict's names) tell a BatchNorm apart.
    """
    g = _generator(DATA_SEED, owner, name)
    prefix, _, leaf = name.rpartition(".")
    is_bn = f"{prefix}.running_mean" in siblings if prefix else "running_mean" in siblings
    if leaf == "num_batches_tracked":
        return torch.zeros((), dtype=torch.long)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    if leaf == "running_var":
        return 1.0 + 0.2 * torch.rand(shape, generator=g)
    if leaf == "weight" and is_bn:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def initial_state(owner: str, keys: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Initial values of every (name, shape) of one module, named as the authors name them."""
    siblings = {k for k, _ in keys}
    return {k: initial_value(owner, k, tuple(shape), siblings) for k, shape in keys}


def digest(tensor: Tensor) -> list[float]:
    """A small fingerprint of a tensor: its sum, its sum of squares and one weighted sum (float64)."""
    t = tensor.detach().double().flatten()
    w = torch.linspace(-1.0, 1.0, t.numel(), dtype=torch.float64) if t.numel() > 1 else torch.ones(1).double()
    return [float(t.sum()), float((t * t).sum()), float((t * w).sum())]
