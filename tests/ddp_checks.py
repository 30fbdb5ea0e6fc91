"""Checks of :mod:`kdbench.distributed`'s collectives, run by ``tests/test_distributed.py`` under torchrun (gloo).

Every rank compares what it computes on its shard with the one-process computation on the whole batch (which
every rank can do, from the same seed), and exits non-zero with the failed check's name on the first mismatch.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.ddp_checks
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d
from torch import nn

from kdbench import distributed


def check(name: str, ok: bool) -> None:
    if not ok:
        print(f"rank {distributed.world().rank}: check failed: {name}", file=sys.stderr)
        sys.exit(1)


def batchnorm_matches_the_whole_batch(make: Callable[[], nn.Module], batch: int, channels_last: bool) -> None:
    """Forward, input and parameter gradients and running statistics equal the one-process layer's."""
    torch.manual_seed(0)
    reference = make()
    nn.init.uniform_(reference.weight, 0.5, 1.5)
    nn.init.uniform_(reference.bias, -0.5, 0.5)
    layer = copy.deepcopy(reference)
    x = torch.randn(batch, 6, 5, 5) * 3 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(batch, 6, 5, 5)
    plain = type(reference)
    name = f"{plain.__name__}, batch {batch}{', channels last' if channels_last else ''}"

    full = x.clone().requires_grad_(True)
    for _ in range(2):  # two steps: the running statistics move twice
        reference.zero_grad()
        full.grad = None
        (reference(full) * weights).sum().backward()
    expected = reference(full)

    distributed.sync_batchnorm(layer)
    check(f"{name}: converted", isinstance(layer, plain) and type(layer) is not plain)
    start, stop = distributed._bounds(batch)
    mine = x[start:stop].clone().requires_grad_(True)
    for _ in range(2):
        layer.zero_grad()
        mine.grad = None
        out = layer(mine)
        (out * weights[start:stop]).sum().backward()
    check(f"{name}: output", torch.allclose(layer(mine), expected[start:stop], atol=1e-5))
    check(f"{name}: input gradient", torch.allclose(mine.grad, full.grad[start:stop], atol=1e-4))
    for param, ref in ((layer.weight, reference.weight), (layer.bias, reference.bias)):
        summed = param.grad.clone()
        dist.all_reduce(summed)  # each rank's loss is its shard's part of the whole-batch loss
        check(f"{name}: parameter gradient", torch.allclose(summed, ref.grad, atol=1e-4))
    check(f"{name}: running mean", torch.allclose(layer.running_mean, reference.running_mean, atol=1e-5))
    check(f"{name}: running var", torch.allclose(layer.running_var, reference.running_var, atol=1e-5))
    check(f"{name}: batches tracked", int(layer.num_batches_tracked) == int(reference.num_batches_tracked))
    layer.eval()
    reference.eval()
    check(f"{name}: eval mode is the plain layer", torch.allclose(layer(x), reference(x), atol=1e-5))
    check(f"{name}: state-dict keys", list(layer.state_dict()) == list(reference.state_dict()))


def shares_weighted_as_the_whole_batch() -> None:
    """Shares of unequal size (3 and 4 of 7): weighted losses, averaged gradients = the whole batch's gradient."""
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 9, 5))
    x, y = torch.randn(7, 3, 5, 5), torch.randint(0, 5, (7,))
    nn.functional.cross_entropy(reference(x), y).backward()
    grads = {}
    for weighted in (True, False):
        model = copy.deepcopy(reference)
        model.zero_grad()
        distributed.sync_batchnorm(model)
        mine_x, mine_y = distributed.shard(x, y)
        loss = nn.functional.cross_entropy(model(mine_x), mine_y)
        weight = distributed.share_weight(len(mine_y), len(y)) if weighted else 1.0
        (loss * weight).backward()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        distributed.average_gradients(optimizer)
        grads[weighted] = [p.grad for p in model.parameters()]
    expected = [p.grad for p in reference.parameters()]
    check("share weights: the whole batch's gradient",
          all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[True], expected, strict=True)))
    check("share weights: unweighted shares differ",
          not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[False], expected, strict=True)))


def main() -> None:
    distributed.setup(torch.device("cpu"))
    world = distributed.world()
    check("two processes", world.size == 2)
    with distributed.collective():
        for make in (lambda: nn.BatchNorm2d(6), lambda: BatchNormAct2d(6, act_layer=nn.ReLU)):
            for batch, channels_last in ((8, False), (7, True)):
                batchnorm_matches_the_whole_batch(make, batch, channels_last)

        rows = torch.arange(7 * 3).reshape(7, 3)
        labels = torch.arange(7)
        shard_rows, shard_labels = distributed.shard(rows, labels)
        gathered = distributed.gather(shard_rows, shard_labels)
        check("gather of unequal shards", torch.equal(gathered[0], rows) and torch.equal(gathered[1], labels))

        shares_weighted_as_the_whole_batch()

        torch.manual_seed(world.rank)  # different weights on each rank until the broadcast
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        model[1].running_mean.fill_(float(world.rank))
        distributed.broadcast_state(model)
        torch.manual_seed(0)
        reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        check("broadcast_state: rank 0's weights", torch.equal(model[0].weight, reference[0].weight))
        check("broadcast_state: rank 0's buffers", torch.equal(model[1].running_mean, torch.zeros(4)))

        seeds = [None, None]
        dist.all_gather_object(seeds, distributed.rank_seed(123))
        check("rank_seed: rank 0 keeps the seed", seeds[0] == 123)
        check("rank_seed: each rank its own", seeds[1] != 123)
    check("rank_seed outside a collective block", distributed.rank_seed(123) == 123)
    dist.barrier()
    if distributed.is_main():
        print("ddp checks passed")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
