"""ShuffleNet V1 and V2 students of the CIFAR-100 KD tables (their "ShuffleNetV1" and "ShuffleNetV2").

Layouts of the CRD / RepDistiller code base (Tian et al. 2020), adapted to 32x32 inputs by a 1x1 stride-1 stem
(24 channels, BN, ReLU) and no max-pool, so the three stages run at 16/8/4 pixels:

- ShuffleNet V1 (Zhang et al. 2018, https://arxiv.org/abs/1707.01083), 3 groups: stages of 4/8/4 bottleneck units
  with 240/480/960 output channels. A unit is grouped 1x1 conv (ungrouped on the 24-channel stem output) + BN + ReLU,
  channel shuffle, 3x3 depthwise conv + BN + ReLU (the CRD code keeps this ReLU, the paper drops it), grouped 1x1 conv
  + BN; the first unit of a stage is strided and concatenates a 3x3 average-pooled shortcut, the others add the input;
  ReLU after the merge.
- ShuffleNet V2 (Ma et al. 2018, https://arxiv.org/abs/1807.11164), 1x width: stages of one downsampling unit and
  3/7/3 basic units with 116/232/464 channels, then a 1x1 head conv to 1024 channels with BN + ReLU.

Parameter counts at 100 classes (pinned in ``tests/test_zoo.py`` within 2%); "quoted" is the figure the CIFAR-100
KD literature commonly gives, "counted" this architecture:

==================  ========  ========
model               quoted    counted
==================  ========  ========
cifar_shufflenetv1  0.95 M    0.949 M
cifar_shufflenetv2  1.36 M    1.356 M
==================  ========  ========
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from kdbench.zoo._base import CifarNet, build_cifar_model, cifar_cfg, conv_bn_act

_STEM_CHS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal channel groups: (g, c/g) -> (c/g, g)."""
    batch, chs, height, width = x.shape
    return x.view(batch, groups, chs // groups, height, width).transpose(1, 2).reshape(batch, chs, height, width)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 bottleneck unit; strided units concatenate an average-pooled shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int) -> None:
        """Build the unit.

        Args:
            in_chs: input channels.
            out_chs: channels of the unit's output (input channels included for a strided, concatenating unit).
            stride: 1 (residual sum) or 2 (concatenation with the pooled input).
            groups: groups of the 1x1 convs.
        """
        super().__init__()
        self.stride = stride
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        mid_chs = branch_chs // 4
        self.first_groups = 1 if in_chs == _STEM_CHS else groups
        self.conv_gc1 = conv_bn_act(in_chs, mid_chs, 1, groups=self.first_groups)
        self.conv_dw = conv_bn_act(mid_chs, mid_chs, 3, stride, groups=mid_chs)
        self.conv_gc2 = conv_bn_act(mid_chs, branch_chs, 1, groups=groups, act=False)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Branch, merged with the input (sum) or the pooled input (concatenation), then ReLU."""
        out = channel_shuffle(self.conv_gc1(x), self.first_groups)
        out = self.conv_gc2(self.conv_dw(out))
        merged = out + x if self.pool is None else torch.cat([out, self.pool(x)], dim=1)
        return self.act(merged)


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNet V2 downsampling unit: two strided branches, concatenated and shuffled."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        """Build the unit.

        Args:
            in_chs: input channels.
            out_chs: output channels (half from each branch).
        """
        super().__init__()
        mid_chs = out_chs // 2
        self.left = nn.Sequential(
            conv_bn_act(in_chs, in_chs, 3, 2, groups=in_chs, act=False),
            conv_bn_act(in_chs, mid_chs, 1),
        )
        self.right = nn.Sequential(
            conv_bn_act(in_chs, mid_chs, 1),
            conv_bn_act(mid_chs, mid_chs, 3, 2, groups=mid_chs, act=False),
            conv_bn_act(mid_chs, mid_chs, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate both branches and shuffle."""
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 basic unit: half the channels pass through, the other half goes through the branch."""

    def __init__(self, chs: int) -> None:
        """Build the unit.

        Args:
            chs: input and output channels.
        """
        super().__init__()
        half = chs // 2
        self.branch = nn.Sequential(
            conv_bn_act(half, half, 1),
            conv_bn_act(half, half, 3, groups=half, act=False),
            conv_bn_act(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Split, transform the second half, concatenate and shuffle."""
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], dim=1), 2)


class CifarShuffleNetV1(CifarNet):
    """ShuffleNet V1 for 32x32 inputs (see the module docstring)."""

    def __init__(
        self,
        stage_chs: tuple[int, int, int] = (240, 480, 960),
        depths: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            stage_chs: output channels of each stage.
            depths: units per stage.
            groups: groups of the 1x1 convs.
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        stages, in_chs = [], _STEM_CHS
        for out_chs, depth in zip(stage_chs, depths, strict=True):
            units = [ShuffleV1Unit(in_chs if i == 0 else out_chs, out_chs, 2 if i == 0 else 1, groups)
                     for i in range(depth)]
            stages.append(nn.Sequential(*units))
            in_chs = out_chs
        super().__init__(
            conv_bn_act(in_chans, _STEM_CHS, 1), nn.Sequential(*stages), _STEM_CHS, 1, list(stage_chs), [2, 4, 8],
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
        )


class CifarShuffleNetV2(CifarNet):
    """ShuffleNet V2 for 32x32 inputs (see the module docstring)."""

    def __init__(
        self,
        stage_chs: tuple[int, int, int] = (116, 232, 464),
        depths: tuple[int, int, int] = (3, 7, 3),
        head_chs: int = 1024,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            stage_chs: output channels of each stage.
            depths: basic units per stage, after its downsampling unit.
            head_chs: channels of the 1x1 head conv.
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        stages, in_chs = [], _STEM_CHS
        for out_chs, depth in zip(stage_chs, depths, strict=True):
            units = [ShuffleV2DownUnit(in_chs, out_chs), *(ShuffleV2Unit(out_chs) for _ in range(depth))]
            stages.append(nn.Sequential(*units))
            in_chs = out_chs
        super().__init__(
            conv_bn_act(in_chans, _STEM_CHS, 1), nn.Sequential(*stages), _STEM_CHS, 1, list(stage_chs), [2, 4, 8],
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
            conv_head=conv_bn_act(in_chs, head_chs, 1), head_chs=head_chs,
        )


default_cfgs = generate_default_cfgs({
    "cifar_shufflenetv1": cifar_cfg((4, 4)),
    "cifar_shufflenetv2": cifar_cfg((4, 4)),
})


@register_model
def cifar_shufflenetv1(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV1:
    """ShuffleNet V1 (3 groups, 240/480/960 channels) of the CIFAR-100 KD tables (``ShuffleV1`` in the CRD code)."""
    return build_cifar_model(CifarShuffleNetV1, "cifar_shufflenetv1", pretrained, num_taps=4, **kwargs)


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """ShuffleNet V2 1x (116/232/464 channels, 1024 head) of the CIFAR-100 KD tables (``ShuffleV2`` in the CRD code)."""
    return build_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, num_taps=4, **kwargs)
