"""The timm model contract shared by every network of the CIFAR KD zoo.

A zoo network is a ``stem``, a sequence of ``stages``, an optional final ``norm`` (pre-activation networks), an
optional ``conv_head`` (1x1 conv widening the last stage before pooling) and a pooled linear classifier ``fc``.
:class:`CifarNet` turns those parts into timm's interface: ``feature_info``, ``forward_features``,
``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``, ``get_classifier`` and
``reset_classifier``. Feature taps are the stem output (index 0) followed by the output of every stage, the way
timm's ResNet and ResNetV2 count them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from timm.layers import create_classifier
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import nn

from kdbench.errors import ModelError

#: CIFAR-100 channel statistics, as used by the CRD / RepDistiller training code.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def cifar_cfg(pool_size: tuple[int, int], first_conv: str = "stem.conv", **overrides: Any) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` for a CIFAR-100 network without published weights.

    Args:
        pool_size: spatial size of the final feature map at 32x32 input.
        first_conv: name of the first convolution (timm adapts it for other input channel counts).
        **overrides: any other ``pretrained_cfg`` field.

    Returns:
        A dict accepted by ``timm.models.generate_default_cfgs``.
    """
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": first_conv,
        "classifier": "fc",
        **overrides,
    }


def conv_bn_act(
    in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """A bias-free ``conv`` -> ``bn`` (-> ``act`` ReLU) block with 'same' padding."""
    layers: dict[str, nn.Module] = {
        "conv": nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        "bn": nn.BatchNorm2d(out_chs),
    }
    if act:
        layers["act"] = nn.ReLU(inplace=True)
    return nn.Sequential(OrderedDict(layers))


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions over their fan-out per group, unit-scale zero-shift BNs, zero linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class CifarNet(nn.Module):
    """Base class of the zoo: a stem, stages, optional norm / head conv, and a pooled linear classifier.

    Subclasses build their parts and pass them to ``__init__``; everything timm expects is implemented here.

    Attributes:
        feature_info: one dict per feature tap (``num_chs``, ``reduction``, ``module``), stem first.
        num_features: channels of ``forward_features`` output (what the classifier pools).
        head_hidden_size: width of the pooled pre-logits vector.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: nn.Sequential,
        stem_chs: int,
        stem_reduction: int,
        stage_chs: list[int],
        stage_reductions: list[int],
        num_classes: int,
        in_chans: int,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        norm: nn.Module | None = None,
        conv_head: nn.Module | None = None,
        head_chs: int | None = None,
    ) -> None:
        """Assemble a network from its parts.

        Args:
            stem: module mapping the image to the first feature map (tap 0).
            stages: one module per stage; the output of stage ``i`` is tap ``i + 1``.
            stem_chs: channels of the stem output.
            stem_reduction: total stride of the stem output.
            stage_chs: channels of each stage output.
            stage_reductions: total stride of each stage output.
            num_classes: classifier outputs; 0 keeps the pooled features (no classifier).
            in_chans: image channels the stem was built for.
            global_pool: timm pooling type of the head (``avg``, ``max``, ``avgmax``, ``''`` for none).
            drop_rate: dropout rate before the classifier.
            norm: final normalisation after the last stage (pre-activation networks), or None.
            conv_head: 1x1 convolution block widening the last stage before pooling, or None.
            head_chs: channels after ``conv_head`` (required with ``conv_head``).
        """
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.stem = stem
        self.stages = stages
        self.norm = norm if norm is not None else nn.Identity()
        self.conv_head = conv_head if conv_head is not None else nn.Identity()
        self.feature_info = [dict(num_chs=stem_chs, reduction=stem_reduction, module="stem")]
        self.feature_info += [
            dict(num_chs=chs, reduction=reduction, module=f"stages.{index}")
            for index, (chs, reduction) in enumerate(zip(stage_chs, stage_reductions, strict=True))
        ]
        self.num_features = head_chs if conv_head is not None else stage_chs[-1]
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        init_weights(self)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (``nn.Identity`` when built with ``num_classes=0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one.

        Args:
            num_classes: new number of outputs; 0 removes the classifier (pooled features come out).
            global_pool: new pooling type; None keeps the current one.
        """
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        param = next(self.parameters(), None)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        if param is not None:
            self.fc.to(device=param.device, dtype=param.dtype)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled final feature map: stem, stages, norm and head conv."""
        x = self.stem(x)
        x = self.stages(x)
        x = self.norm(x)
        return self.conv_head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify the final feature map; ``pre_logits`` stops before the classifier."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (or pooled features when built with ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward pass that also returns the feature maps at the taps of ``feature_info``.

        Args:
            x: input images, ``(N, in_chans, H, W)``.
            indices: taps to return: None for all, an int ``n`` for the last ``n``, or a list (negatives count
                from the end). Tap 0 is the stem output, tap ``i`` the output of stage ``i``.
            norm: apply the final ``norm`` to the last stage's tap (pre-activation networks only; a no-op otherwise).
            stop_early: stop after the last requested stage.
            output_fmt: only ``NCHW`` is supported.
            intermediates_only: return only the list of taps.

        Returns:
            The list of taps, or ``(final_features, taps)`` where ``final_features`` is what
            ``forward_features`` returns (when the last stage was run).
        """
        if output_fmt != "NCHW":
            raise ModelError(f"output_fmt {output_fmt!r} is not supported by the CIFAR zoo; use 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last_index = len(self.stages)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        feat_index = 0
        for feat_index, stage in enumerate(stages, start=1):
            x = stage(x)
            if feat_index in take_indices:
                intermediates.append(self.norm(x) if norm and feat_index == last_index else x)
        if intermediates_only:
            return intermediates
        if feat_index == last_index:
            x = self.conv_head(self.norm(x))
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and head parts) that the requested taps do not need.

        Args:
            indices: taps to keep, as in :meth:`forward_intermediates`.
            prune_norm: also drop the final norm (it only feeds the last tap when ``norm=True``).
            prune_head: drop the classifier (and the head conv, which only feeds the classifier).

        Returns:
            The absolute indices of the kept taps.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.conv_head = nn.Identity()
            self.num_features = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0, "")
        return take_indices


def build_cifar_model(
    model_cls: type[CifarNet], variant: str, pretrained: bool, num_taps: int, **kwargs: Any
) -> CifarNet:
    """Build a zoo network through timm's builder (pretrained cfg, ``features_only``, device/dtype handling).

    Args:
        model_cls: the :class:`CifarNet` subclass.
        variant: the registered model name.
        pretrained: must be False unless a weight source is given via ``pretrained_cfg_overlay``
            (e.g. ``dict(file="ckpt.pth")``): the zoo ships no weights.
        num_taps: number of feature taps (``len(feature_info)``), the default ``out_indices`` of ``features_only``.
        **kwargs: forwarded to the model class (``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``) or to
            timm's builder (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``features_only``, ``out_indices``,
            ``device``, ``dtype``, ...).

    Raises:
        ModelError: ``pretrained=True`` without a weight source.
    """
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        )
        if not (cfg.has_weights or cfg.state_dict):
            raise ModelError(
                f"no pretrained weights exist for {variant!r}; create it with pretrained=False "
                "and train it or load a checkpoint"
            )
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    feature_cfg = dict(feature_cls="getter", out_indices=tuple(range(num_taps)))
    model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
