"""VGG with batch norm for CIFAR, as used by the CIFAR-100 KD tables (CRD / RepDistiller code base, Tian et al. 2020).

Simonyan & Zisserman's VGG (https://arxiv.org/abs/1409.1556) cut down for 32x32 inputs: five groups of 3x3 conv
(with bias) + BN + ReLU, a 2x2 max-pool in front of groups 1-3, no pool in front of group 4 (so groups 3 and 4 both
run at 4x4 pixels), global average pooling and a single linear classifier (no fully connected hidden layers).
Group 0 is the stem (tap 0); groups 1-4 are the stages. Channels are 64/128/256/512/512; the depth variants differ in
convs per group: vgg8 1/1/1/1/1, vgg11 1/1/2/2/2, vgg13 2/2/2/2/2, vgg16 2/2/3/3/3, vgg19 2/2/4/4/4.

Parameter counts at 100 classes (pinned in ``tests/test_zoo.py`` within 2%); "quoted" is the figure the CIFAR-100
KD literature commonly gives, "counted" this architecture:

================  ========  =========
model             quoted    counted
================  ========  =========
cifar_vgg8        3.96 M    3.965 M
cifar_vgg11       --        9.277 M
cifar_vgg13       9.46 M    9.462 M
cifar_vgg16       --        14.774 M
cifar_vgg19       --        20.087 M
================  ========  =========
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from kdbench.zoo._base import CifarNet, build_cifar_model, cifar_cfg

#: convs per group (stem group first) of each depth
_CONVS_PER_GROUP = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_GROUP_CHS = (64, 128, 256, 512, 512)
_POOL_BEFORE_GROUP = (False, True, True, True, False)


def _conv_group(in_chs: int, out_chs: int, num_convs: int, pool_first: bool) -> nn.Sequential:
    """Optional 2x2 max-pool, then ``num_convs`` x (3x3 conv with bias, BN, ReLU)."""
    group = nn.Sequential()
    if pool_first:
        group.add_module("pool", nn.MaxPool2d(kernel_size=2, stride=2))
    for index in range(num_convs):
        group.add_module(f"conv{index + 1}", nn.Conv2d(in_chs if index == 0 else out_chs, out_chs, 3, padding=1))
        group.add_module(f"bn{index + 1}", nn.BatchNorm2d(out_chs))
        group.add_module(f"act{index + 1}", nn.ReLU(inplace=True))
    return group


class CifarVGG(CifarNet):
    """VGG-BN for 32x32 inputs: a stem group and four stage groups, global average pooling, one linear layer."""

    def __init__(
        self,
        depth: int = 13,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            depth: 8, 11, 13, 16 or 19: weight layers of the original VGG, whose three fully connected layers
                are one linear classifier here.
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        convs = _CONVS_PER_GROUP[depth]
        groups, reductions, in_chs, reduction = [], [], in_chans, 1
        for out_chs, num_convs, pool_first in zip(_GROUP_CHS, convs, _POOL_BEFORE_GROUP, strict=True):
            groups.append(_conv_group(in_chs, out_chs, num_convs, pool_first))
            reduction *= 2 if pool_first else 1
            reductions.append(reduction)
            in_chs = out_chs
        super().__init__(
            groups[0], nn.Sequential(*groups[1:]), _GROUP_CHS[0], reductions[0], list(_GROUP_CHS[1:]), reductions[1:],
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
        )


default_cfgs = generate_default_cfgs({
    f"cifar_vgg{depth}": cifar_cfg((4, 4), first_conv="stem.conv1") for depth in _CONVS_PER_GROUP
})


def _create(variant: str, depth: int, pretrained: bool, kwargs: dict[str, Any]) -> CifarVGG:
    """Build a registered VGG variant."""
    return build_cifar_model(CifarVGG, variant, pretrained, num_taps=5, **dict(dict(depth=depth), **kwargs))


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-8 with BN: one conv per group."""
    return _create("cifar_vgg8", 8, pretrained, kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with BN: 1/1/2/2/2 convs per group."""
    return _create("cifar_vgg11", 11, pretrained, kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13 with BN: two convs per group."""
    return _create("cifar_vgg13", 13, pretrained, kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 with BN: 2/2/3/3/3 convs per group."""
    return _create("cifar_vgg16", 16, pretrained, kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19 with BN: 2/2/4/4/4 convs per group."""
    return _create("cifar_vgg19", 19, pretrained, kwargs)
