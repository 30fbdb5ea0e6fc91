"""Data-parallel training of one run (one cohort) across processes: ``torchrun --nproc-per-node N -m kdbench run``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (``nccl`` on
GPUs, one per local rank; ``gloo`` on CPUs). Every rank builds the same cohort, draws the same global batches
(``--batch-size`` is the global batch) and trains on its own contiguous shard of each (:func:`shard`); after each
backward pass the gradients of every trainable parameter (the student's and the method's) are averaged across
ranks (:func:`average_gradients`), so every rank takes the same optimiser step. This is method-agnostic: no model is
wrapped, a method's adapters and heads are synchronised like the student. Every rank holds the teacher and runs
it on its own shard. At each epoch's end the student's buffers (BatchNorm statistics) are broadcast from rank 0
and the epoch's loss sums and accuracy counts are summed over ranks. Evaluation covers each split once across the
ranks: rank r predicts batches r, r + N, ... and the logits are gathered in order (:func:`gather_batches`).
Rank 0 alone claims runs, plans, trains a missing teacher and writes records and the teacher cache; the others wait
on a barrier, then read the cache.

A method's own buffers (memory banks) are not synchronised: each rank's bank holds the rows its shards wrote.

Collectives are on only inside :func:`collective` blocks (the engine opens one around each cohort's training and
evaluation), so that rank 0 can train a teacher alone while the others wait. Every collective has the process
group's timeout (``KDBENCH_DIST_TIMEOUT`` seconds, default 1800): a rank that dies makes the others fail with an
error instead of hanging; torchrun then stops them all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from kdbench.errors import ConfigError

T = TypeVar("T")

TIMEOUT_ENV = "KDBENCH_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun launch.

    Attributes:
        size: number of processes (1 when not launched by torchrun).
        rank: this process's global rank.
        local_rank: its rank on this node (its GPU index).
    """

    size: int = 1
    rank: int = 0
    local_rank: int = 0


def world_from_env() -> World:
    """The world torchrun describes in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (a world of one without them).

    Raises:
        ConfigError: the variables are not integers or are inconsistent.
    """
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local_rank}")
    return World(size, rank, local_rank)


_WORLD = World()
_COLLECTIVE = False


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun; return the world and this rank's device.

    On CUDA each rank takes the GPU of its local rank. Calling it again is harmless.
    """
    global _WORLD
    world = world_from_env()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    _WORLD = world
    return world, device


def world() -> World:
    """The world :func:`setup` joined (a world of one before, or without torchrun)."""
    return _WORLD


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes."""
    return _WORLD.rank == 0


def enabled() -> bool:
    """Inside a :func:`collective` block of a world of several processes."""
    return _COLLECTIVE and _WORLD.size > 1


@contextlib.contextmanager
def collective() -> Iterator[None]:
    """Turn on sharding, gradient averaging and gathered evaluation for the block."""
    global _COLLECTIVE
    before, _COLLECTIVE = _COLLECTIVE, True
    try:
        yield
    finally:
        _COLLECTIVE = before


def barrier() -> None:
    """Wait for every rank (no-op in a world of one)."""
    if _WORLD.size > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (a picklable object) on every rank."""
    if _WORLD.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _bounds(n: int) -> tuple[int, int]:
    return n * _WORLD.rank // _WORLD.size, n * (_WORLD.rank + 1) // _WORLD.size


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of each tensor's first dimension (everything outside a collective block)."""
    if not enabled():
        return tensors
    start, stop = _bounds(tensors[0].shape[0])
    return tuple(t[start:stop] for t in tensors)


def share(items: Sequence[T]) -> Sequence[T]:
    """This rank's contiguous share of a batch's items: the part :func:`shard` takes, for loaders that shard first."""
    if not enabled():
        return items
    start, stop = _bounds(len(items))
    return items[start:stop]


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of the optimiser's parameters across ranks, in one flat all-reduce per dtype.

    Parameters without a gradient on this rank (the same on every rank: every rank runs the same code) are left
    without one.
    """
    if not enabled():
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= _WORLD.size
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def sum_tensors(values: Sequence[Tensor]) -> list[Tensor]:
    """Each (scalar or small) tensor summed over ranks."""
    if not enabled() or not values:
        return list(values)
    flat = torch.stack([v.detach().float().reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers of ``module`` (BatchNorm statistics) on every rank."""
    if not enabled():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def mine(index: int) -> bool:
    """Whether this rank evaluates batch ``index`` (every batch outside a collective block)."""
    return not enabled() or index % _WORLD.size == _WORLD.rank


def gather_batches(items: list[tuple[int, Any]]) -> list[Any]:
    """Every rank's ``(batch index, payload)`` pairs, gathered on every rank, as payloads in batch order."""
    if not enabled():
        return [payload for _, payload in sorted(items, key=lambda item: item[0])]
    everyone: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(everyone, items)
    merged = [pair for part in everyone for pair in part]
    return [payload for _, payload in sorted(merged, key=lambda item: item[0])]
