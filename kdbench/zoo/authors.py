"""The CIFAR KD authors' checkpoints in the zoo: their state dicts renamed onto the zoo's modules.

The teachers behind the published CIFAR-100 tables were released by the CRD authors (RepDistiller's
``fetch_pretrained_teachers.sh``: ``torch.save({'epoch', 'model', 'accuracy', 'optimizer'})``) and by mdistiller
(``cifar_teachers.tar``, the same layout). Their model classes and the zoo's compute the same networks layer for
layer, and register their parameters and buffers in the same order with the same shapes; only the names differ
(``conv1`` / ``bn1`` / ``layer1.0.conv1`` there, ``stem.conv`` / ``stem.bn`` / ``stages.0.0.conv_bn_act1.conv``
here). So a state dict of theirs maps onto a zoo model position by position, and the mapping is accepted only if
every shape agrees in that order, which a foreign network practically never does by chance.

``num_batches_tracked`` counters are matched apart (checkpoints written before PyTorch 0.4.1 have none; they only
matter for BatchNorm with ``momentum=None``, which the zoo does not use): missing ones are set to 0.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["from_authors", "is_zoo_model"]

COUNTER = "num_batches_tracked"


def is_zoo_model(model: nn.Module) -> bool:
    """Whether ``model`` is a network of the CIFAR KD zoo."""
    from kdbench.zoo._base import CifarNet

    return isinstance(model, CifarNet)


def _split(keys: list[str]) -> tuple[list[str], list[str]]:
    values = [k for k in keys if not k.endswith(COUNTER)]
    counters = [k for k in keys if k.endswith(COUNTER)]
    return values, counters


def from_authors(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """``state`` renamed onto ``model``'s names, or ``None`` where it is not an authors' state dict of this network.

    Args:
        model: a zoo network (any other module gives ``None``).
        state: a state dict in its saved order (the order ``torch.save`` kept), ``module.`` prefixes removed.

    Returns:
        The renamed state dict (strictly loadable into ``model``), or ``None`` if ``state`` already uses the zoo's
        names, ``model`` is not a zoo network, or the entries do not correspond one to one with equal shapes.
    """
    if not is_zoo_model(model):
        return None
    target = model.state_dict()
    if set(state) == set(target):
        return None
    theirs, their_counters = _split(list(state))
    ours, our_counters = _split(list(target))
    if len(theirs) != len(ours) or len(their_counters) not in (0, len(our_counters)):
        return None
    if any(tuple(state[a].shape) != tuple(target[b].shape) for a, b in zip(theirs, ours, strict=True)):
        return None
    renamed = {b: state[a] for a, b in zip(theirs, ours, strict=True)}
    for i, b in enumerate(our_counters):
        renamed[b] = state[their_counters[i]] if their_counters else target[b].new_zeros(())
    return {k: renamed[k] for k in target}
