"""Feature taps through timm's own feature contract: ``forward_intermediates`` and ``feature_info``.

Every timm model that supports ``forward_intermediates`` (ResNets, ConvNeXts, EfficientNets, MobileNets, ViTs,
Swins and kdbench's CIFAR zoo) exposes its stage outputs the same way, so a feature method written once works on
any pair. ViT token features come back as NCHW maps with the prefix (class) tokens dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdbench.errors import ModelError


@dataclass(frozen=True)
class StageShape:
    """Shape of one stage output for one sample at the run's input size.

    Attributes:
        channels: feature channels (``feature_info[i]["num_chs"]``).
        height: spatial height of the map (tokens are reshaped to a map).
        width: spatial width of the map.
        reduction: the stage's stride relative to the input (``feature_info[i]["reduction"]``).
    """

    channels: int
    height: int
    width: int
    reduction: int


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about a model before training: never the module itself.

    Attributes:
        name: the timm model name.
        num_classes: classifier outputs.
        num_features: width of the pre-logits features.
        stages: the shape of each ``forward_intermediates`` output, or ``()`` when the model has no feature taps.
    """

    name: str
    num_classes: int
    num_features: int
    stages: tuple[StageShape, ...]

    @property
    def supports_features(self) -> bool:
        """Whether the model exposes stage features through ``forward_intermediates``."""
        return bool(self.stages)

    def require_features(self, method: str) -> None:
        """Raise a one-line :class:`ModelError` if ``method`` cannot tap this model's features."""
        if not self.supports_features:
            raise ModelError(f"model {self.name!r} does not support timm's forward_intermediates/feature_info, "
                             f"which method {method!r} needs; choose a model that does (see the README)")


def has_feature_taps(model: nn.Module) -> bool:
    """Whether ``model`` implements ``forward_intermediates`` and ``feature_info``."""
    return callable(getattr(model, "forward_intermediates", None)) and bool(getattr(model, "feature_info", None))


def describe_model(model: nn.Module, name: str, in_chans: int, image_size: int) -> ModelInfo:
    """Measure the stage shapes of ``model`` with one batch-1 forward pass at the run's input size."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    num_features = int(getattr(model, "num_features", 0) or 0)
    stages: tuple[StageShape, ...] = ()
    if has_feature_taps(model):
        was_training = model.training
        model.eval()
        try:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            with torch.no_grad():
                maps = model.forward_intermediates(torch.zeros(1, in_chans, image_size, image_size, device=device),
                                                   intermediates_only=True)
        except (NotImplementedError, TypeError, AssertionError, RuntimeError):
            maps = []
        finally:
            model.train(was_training)
        info = list(model.feature_info)
        if maps and len(maps) == len(info):
            stages = tuple(StageShape(int(m.shape[1]), int(m.shape[2]), int(m.shape[3]), int(f["reduction"]))
                           for m, f in zip(maps, info, strict=True))
    return ModelInfo(name=name, num_classes=num_classes, num_features=num_features, stages=stages)


def forward_with_features(model: nn.Module, images: Tensor, stages: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """One forward pass that yields the logits and the requested stage features.

    Args:
        model: a timm model.
        images: a batch of inputs.
        stages: indices into the model's stages (``feature_info``); empty for logits only.

    Returns:
        ``(logits, {stage index: NCHW feature map})``.
    """
    if not stages:
        return model(images), {}
    ordered = sorted(set(stages))
    final, maps = model.forward_intermediates(images, indices=ordered)
    return model.forward_head(final), dict(zip(ordered, maps, strict=True))
