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

A run's result does not depend on the number of processes, up to rounding and to in-step randomness:

- every member starts from rank 0's initial weights and buffers (:func:`broadcast_state`);
- BatchNorm layers of the student and of the method's modules normalise with the statistics of the whole global
  batch (:func:`sync_batchnorm`), and their gradients flow through those statistics, as in one process;
- a method that keeps per-sample state (CRD's memory banks) updates it with every rank's rows
  (:func:`gather`), so the state is the same on every rank;
- in-step randomness (dropout, drop-path, sampled negatives, the extra views) is drawn from a stream of each
  rank's own (:func:`rank_seed`), so that the shards do not share their noise; rank 0's stream is the one a single
  process draws;
- shares of unequal size weigh their loss by their size (:func:`share_weight`), so the averaged gradient is the
  whole batch's; a last batch with fewer images than processes is dropped (``data.base.train_batch_count``).

Losses computed over the batch (the relations of RKD, SP, CC, PKT and DIST's inter-class term) see each rank's shard.

Collectives are on only inside :func:`collective` blocks (the engine opens one around each cohort's training and
evaluation), so that rank 0 can train a teacher alone while the others wait. Every collective has the process
group's timeout (``KDBENCH_DIST_TIMEOUT`` seconds, default 1800): a rank that dies makes the others fail with an
error instead of hanging; torchrun then stops them all.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

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


def check_batch_sizes(batch_sizes: Sequence[int], processes: int | None = None, who: str = "torchrun started") -> None:
    """Every global batch must give each process a share (checked before the ranks join).

    Args:
        batch_sizes: the runs' (global) batch sizes.
        processes: how many processes train each run (default: the torchrun world's size).
        who: what starts them, for the message.

    Raises:
        ConfigError: a batch size smaller than the number of processes.
    """
    size = world_from_env().size if processes is None else processes
    smallest = min(batch_sizes, default=size)
    if smallest < size:
        raise ConfigError(f"--batch-size {smallest} is smaller than the {size} processes {who}: the batch size is the "
                          "global batch, and each process needs a share of it")


_WORLD = World()
_COLLECTIVE = False


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun; return the world and this rank's device.

    On CUDA each rank takes the GPU of its local rank. Calling it again is harmless.

    Raises:
        ConfigError: on CUDA, more processes on this node (torchrun's ``LOCAL_WORLD_SIZE``) than it has GPUs; every
            process of the node finds it, so rank 0 says it.
    """
    global _WORLD
    world = world_from_env()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world.local_rank + 1)))
        gpus = torch.cuda.device_count()
        if max(local, world.local_rank + 1) > gpus:
            raise ConfigError(f"torchrun started {local} processes on a node with {gpus} GPU{'s' * (gpus != 1)}: "
                              f"each process takes one GPU (--nproc-per-node {gpus} at most, or --device cpu)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        atexit.register(_leave)
    _WORLD = world
    return world, device


def _leave() -> None:
    """Leave the process group at exit, before the interpreter tears down.

    A group left to the interpreter's teardown could abort a process whose work was done (gloo's threads destroyed
    while still joinable: "terminate called without an active exception", exit code 1 for a finished sweep).
    """
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


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


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (a picklable object), in rank order; ``[value]`` in a world of one."""
    if _WORLD.size == 1:
        return [value]
    out: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(out, value)
    return out


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


def share_weight(share: int, whole: int) -> float:
    """The factor of a rank's mean loss over its ``share`` of a global batch of ``whole`` samples: share x N / whole.

    Averaged over the N ranks, the weighted gradients are the gradient of the mean over the whole batch, also when
    the shares differ in size (a batch size that N does not divide). 1 outside a collective block.
    """
    if not enabled() or whole <= 0:
        return 1.0
    return share * _WORLD.size / whole


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


def broadcast_state(*modules: nn.Module) -> None:
    """Rank 0's parameters and buffers of each module on every rank (inside a collective block; else nothing)."""
    if not enabled():
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def rank_seed(seed: int) -> int:
    """The seed of this rank's own random stream: ``seed`` on rank 0 (and outside a collective block)."""
    if not enabled() or _WORLD.rank == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + _WORLD.rank * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def gather(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Every rank's rows of each tensor, concatenated in rank order, detached (the tensors themselves outside).

    For the shards of a batch this is the whole global batch, in its order. Ranks may hold different numbers of
    rows (the tensors of one call share theirs). One host synchronisation per call: for methods that keep
    per-sample state, not for every step of every method.
    """
    if not enabled():
        return tensors
    rows = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(rows) for _ in range(_WORLD.size)]
    dist.all_gather(counts, rows)
    sizes = [int(c) for c in counts]
    out = []
    for tensor in tensors:
        padded = tensor.detach().new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor.detach()
        parts = [torch.empty_like(padded) for _ in range(_WORLD.size)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm over the global batch


_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SYNCED: dict[type, type] = {}


def _has_post_ops(module: nn.Module) -> bool:
    """Whether ``module`` is timm's ``BatchNormAct2d`` kind: a BatchNorm followed by its own ``drop`` and ``act``."""
    return isinstance(getattr(module, "drop", None), nn.Module) and isinstance(getattr(module, "act", None), nn.Module)


def _synced_class(cls: type) -> type:
    """The subclass of a BatchNorm class whose training forward, in a collective block, uses global statistics."""
    if cls not in _SYNCED:
        def forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
            if not (self.training and enabled()):
                return cls.forward(self, x)
            y = global_batch_norm(self, x)
            return self.act(self.drop(y)) if _has_post_ops(self) else y

        _SYNCED[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                    "_kdbench_synced": True})
    return _SYNCED[cls]


def sync_batchnorm(*modules: nn.Module) -> None:
    """Make the BatchNorm layers of each module normalise with the global batch's statistics in collective blocks.

    torch's ``SyncBatchNorm`` runs on GPUs only and all-reduces whenever a process group exists (it would hang
    while rank 0 trains a teacher alone); this one runs on every device and only inside :func:`collective` blocks.
    Each layer's class is swapped for a subclass (the same parameters, buffers and state-dict keys; outside a
    collective block, or in eval mode, the layer is the plain one). Converted: ``nn.BatchNorm1d/2d/3d`` and timm's
    ``BatchNormAct2d``; other BatchNorm variants keep their per-rank statistics. Nothing happens outside a
    collective block.
    """
    if not enabled():
        return
    for module in modules:
        for layer in module.modules():
            cls = type(layer)
            if getattr(cls, "_kdbench_synced", False):
                continue
            timm_kind = isinstance(layer, nn.modules.batchnorm._BatchNorm) and _has_post_ops(layer)
            if cls in _PLAIN_BATCHNORMS or timm_kind:
                layer.__class__ = _synced_class(cls)


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over ranks; its gradient is the sum of the ranks' gradients (each rank's loss uses it)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # noqa: ARG004 - the signature autograd calls
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: ARG004
        total = grad.clone()
        dist.all_reduce(total)
        return total


def global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch normalisation of this rank's shard ``x`` with the statistics of every rank's shard together.

    Each rank computes its shard's per-channel count, mean and sum of squared deviations; one autograd-aware
    all-reduce shares them, and they are merged exactly (Chan et al.'s parallel variance), so the gradient of each
    shard's loss reaches every shard's inputs through the shared statistics, as in one process on the whole batch.
    The running statistics are updated with the global mean and unbiased variance (the same on every rank).
    """
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    x32 = x.float()  # the statistics in float32 also under bf16 autocast (a no-op for float32 inputs)
    count = x32.numel() // channels
    if count:
        var, mean = torch.var_mean(x32, dim=dims, correction=0)  # one fused pass over the shard
        m2 = var * count
    else:
        mean = m2 = x32.new_zeros(channels)
    row = torch.cat([mean, m2, x32.new_full((1,), float(count))]).unsqueeze(0)
    # this rank's row in its own slot of a zero table (no host-to-device copy: no synchronisation on a GPU)
    table = _SumOverRanks.apply(torch.nn.functional.pad(row, (0, 0, _WORLD.rank, _WORLD.size - 1 - _WORLD.rank)))
    means, m2s, counts = table[:, :channels], table[:, channels:2 * channels], table[:, 2 * channels:]
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total
    global_m2 = m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = global_m2 / (total - 1).clamp(min=1)
            bn.running_mean.lerp_(global_mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    scale = torch.rsqrt(global_m2 / total + bn.eps)
    shift = -global_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return torch.addcmul(shift.view(shape), x32, scale.view(shape)).to(x.dtype)  # one fused pass
