"""RNG isolation: a member's private random state, swapped in around its own work."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn


class RNGState:
    """A member's private random state, made the global one around the member's work.

    torch's CPU and CUDA generators are private copies, swapped in and out (a few microseconds; no device
    synchronisation). Python's and NumPy's global RNGs cost ~100 times more to save and restore, so instead they are
    seeded afresh each time the state is made active, from the member's seed and a count of its activations: a
    member's draws from them are still a function of its own seed and history alone, whoever else is in the
    cohort. Their global state is therefore changed by :meth:`active`; :func:`host_rngs_preserved` saves and
    restores it around a whole training.

    Args:
        seed: the seed the private state starts from.
        device: the training device (its CUDA generator is included when it is a GPU).
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self._cuda = device if device.type == "cuda" else None
        self._seed = seed
        self._activations = 0
        outer = self._capture()
        torch.manual_seed(seed)
        self._state = self._capture()
        self._restore(outer)

    def _capture(self) -> tuple[Tensor, Tensor | None]:
        cuda_state = torch.cuda.get_rng_state(self._cuda) if self._cuda is not None else None
        return torch.get_rng_state(), cuda_state

    def _restore(self, state: tuple[Tensor, Tensor | None]) -> None:
        cpu, cuda_state = state
        torch.set_rng_state(cpu)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self._cuda)

    def _seed_host_rngs(self) -> None:
        """Seed Python's and NumPy's global RNGs from (seed, activation count) with a splitmix64 mix."""
        z = (self._seed * 0x9E3779B97F4A7C15 + self._activations + 1) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
        self._activations += 1
        random.seed(z)
        np.random.seed(z & 0xFFFFFFFF)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this state the global RNG state for the block; keep what the block drew."""
        outer = self._capture()
        self._restore(self._state)
        self._seed_host_rngs()
        try:
            yield
        finally:
            self._state = self._capture()
            self._restore(outer)


@contextlib.contextmanager
def host_rngs_preserved() -> Iterator[None]:
    """Save Python's and NumPy's global RNG states for the block and restore them after it."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def ensure_mode(module: nn.Module, training: bool) -> None:
    """Put ``module`` in training (or eval) mode unless its root already is.

    ``Module.train`` walks the whole tree (milliseconds for a ResNet-50), too slow for every step. The root's flag
    stands for the tree: everything in kdbench that changes a model's mode does it from the root and restores it
    from the root (:func:`predict`).
    """
    if module.training != training:
        module.train(training)
