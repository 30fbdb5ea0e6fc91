"""The half-width MobileNetV2 student of the CIFAR-100 KD tables (their "MobileNetV2").

Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (https://arxiv.org/abs/1801.04381), in
the variant of the CRD / RepDistiller code base (``mobile_half``, taken from "Knowledge Distillation via Route
Constrained Optimization", Jin et al. 2019): width multiplier 0.5, expansion 6, and

- a 3x3 stride-2 stem (16 channels at width 0.5), so the 32x32 image is at 16x16 after the stem and 2x2 at the end;
- inverted residual blocks that always have the 1x1 expansion conv, also in the first block whose expansion is 1
  (timm's and torchvision's MobileNetV2 drop it there);
- a 1x1 head conv to 1280 channels (not scaled down for width < 1) with BN + ReLU, then pooling and the classifier.

The seven block groups are tapped like the RepDistiller feature list: stage 1 = groups 1-2 (12 channels, stride 2),
stage 2 = group 3 (16, stride 4), stage 3 = groups 4-5 (48, stride 8), stage 4 = groups 6-7 (160, stride 16).

Parameter count at 100 classes (pinned in ``tests/test_zoo.py`` within 2%): 0.81 M as commonly quoted in the
CIFAR-100 KD literature; this architecture counts 0.813 M, of which 0.128 M are the classifier.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from kdbench.zoo._base import CifarNet, build_cifar_model, cifar_cfg, conv_bn_act

#: (channels at width 1, blocks, stride of the first block) of the seven block groups
_GROUPS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
#: block groups making up each tapped stage
_STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (strided), 1x1 linear projection; identity shortcut when the shape is kept."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int) -> None:
        """Build the block.

        Args:
            in_chs: input channels.
            out_chs: output channels.
            stride: stride of the depthwise conv.
            expand_ratio: hidden width as a multiple of ``in_chs``.
        """
        super().__init__()
        hidden_chs = in_chs * expand_ratio
        self.use_shortcut = stride == 1 and in_chs == out_chs
        self.conv_pw = conv_bn_act(in_chs, hidden_chs, 1)
        self.conv_dw = conv_bn_act(hidden_chs, hidden_chs, 3, stride, groups=hidden_chs)
        self.conv_pwl = conv_bn_act(hidden_chs, out_chs, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        """Linear bottleneck, plus the input where shapes allow."""
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return out + x if self.use_shortcut else out


class CifarMobileNetV2(CifarNet):
    """MobileNetV2 for 32x32 inputs with the CRD code base's layout (see the module docstring)."""

    def __init__(
        self,
        width_mult: float = 0.5,
        expand_ratio: int = 6,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            width_mult: multiplier of every block's channels (0.5 for the KD tables' student).
            expand_ratio: expansion of every block group but the first (which uses 1).
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        stem_chs = int(32 * width_mult)
        stem = conv_bn_act(in_chans, stem_chs, 3, stride=2)
        groups, group_chs, group_reductions = [], [], []
        in_chs, reduction = stem_chs, 2
        for index, (base_chs, num_blocks, stride) in enumerate(_GROUPS):
            out_chs = int(base_chs * width_mult)
            ratio = 1 if index == 0 else expand_ratio
            blocks = [InvertedResidual(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, ratio)
                      for i in range(num_blocks)]
            groups.append(nn.Sequential(*blocks))
            reduction *= stride
            group_chs.append(out_chs)
            group_reductions.append(reduction)
            in_chs = out_chs
        stages = nn.Sequential(*(nn.Sequential(*(groups[g] for g in members)) for members in _STAGE_GROUPS))
        last_groups = [members[-1] for members in _STAGE_GROUPS]
        head_chs = int(1280 * width_mult) if width_mult > 1.0 else 1280
        super().__init__(
            stem, stages, stem_chs, 2, [group_chs[g] for g in last_groups], [group_reductions[g] for g in last_groups],
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
            conv_head=conv_bn_act(in_chs, head_chs, 1), head_chs=head_chs,
        )


default_cfgs = generate_default_cfgs({"cifar_mobilenetv2": cifar_cfg((2, 2))})


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """Half-width MobileNetV2 of the CIFAR-100 KD tables (``mobile_half`` in the CRD code base)."""
    model_args = dict(dict(width_mult=0.5, expand_ratio=6), **kwargs)
    return build_cifar_model(CifarMobileNetV2, "cifar_mobilenetv2", pretrained, num_taps=5, **model_args)
