"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks", https://arxiv.org/abs/1605.07146).

WRN-d-k as in the CRD / RepDistiller code base (Tian et al. 2020): a 3x3 stem conv with 16 channels (no BN or ReLU:
the network is pre-activation), 3 stages of ``(d - 4) / 6`` pre-activation basic blocks with 16k/32k/64k channels at
strides 1/2/2, and a final BN + ReLU (``norm``) before pooling. A block that changes channels applies its BN + ReLU
to the input first and projects that with a 1x1 conv; otherwise its shortcut is the raw input. No dropout.

Feature tap 0 is therefore the raw stem conv output, and the last stage's tap is taken before the final BN + ReLU
(``forward_intermediates(..., norm=True)`` applies it, as in timm's pre-activation ResNetV2).

Parameter counts at 100 classes (pinned in ``tests/test_zoo.py`` within 2%); "quoted" is the figure the CIFAR-100
KD literature commonly gives, "counted" this architecture:

================  ========  ========
model             quoted    counted
================  ========  ========
cifar_wrn_16_1    --        0.181 M
cifar_wrn_16_2    0.70 M    0.703 M
cifar_wrn_40_1    0.57 M    0.570 M
cifar_wrn_40_2    2.26 M    2.255 M
================  ========  ========
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from kdbench.zoo._base import CifarNet, build_cifar_model, cifar_cfg


def _bn_act(chs: int) -> nn.Sequential:
    """Pre-activation: BN followed by ReLU."""
    return nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True))


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free 3x3 conv with 'same' padding."""
    return nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity or 1x1 projection shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_chs: input channels.
            out_chs: output channels.
            stride: stride of the first conv (and of the projection).
        """
        super().__init__()
        self.pre_act = _bn_act(in_chs)
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.mid_act = _bn_act(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.projection = None if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum (no activation after it: the next block or the final norm activates)."""
        activated = self.pre_act(x)
        out = self.conv2(self.mid_act(self.conv1(activated)))
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class CifarWideResNet(CifarNet):
    """WRN-depth-widen: 16-channel stem conv, 3 stages of pre-activation blocks, final BN + ReLU."""

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            depth: total depth, ``6 * blocks_per_stage + 4``.
            widen_factor: multiplier of the 16/32/64 stage channels.
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        blocks_per_stage = (depth - 4) // 6
        stem = nn.Sequential()
        stem.add_module("conv", _conv3x3(in_chans, 16))
        stage_chs = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        stages, in_chs = [], 16
        for index, out_chs in enumerate(stage_chs):
            stride = 1 if index == 0 else 2
            blocks = [PreActBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1)
                      for i in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            in_chs = out_chs
        super().__init__(
            stem, nn.Sequential(*stages), 16, 1, stage_chs, [1, 2, 4],
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
            norm=_bn_act(stage_chs[-1]),
        )


default_cfgs = generate_default_cfgs({
    f"cifar_wrn_{depth}_{width}": cifar_cfg((8, 8)) for depth in (16, 40) for width in (1, 2)
})


def _create(variant: str, depth: int, widen_factor: int, pretrained: bool, kwargs: dict[str, Any]) -> CifarWideResNet:
    """Build a registered WRN variant."""
    model_args = dict(depth=depth, widen_factor=widen_factor)
    return build_cifar_model(CifarWideResNet, variant, pretrained, num_taps=4, **dict(model_args, **kwargs))


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-16-1: 2 blocks per stage, 16/32/64 channels."""
    return _create("cifar_wrn_16_1", 16, 1, pretrained, kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-16-2: 2 blocks per stage, 32/64/128 channels."""
    return _create("cifar_wrn_16_2", 16, 2, pretrained, kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-40-1: 6 blocks per stage, 16/32/64 channels."""
    return _create("cifar_wrn_40_1", 40, 1, pretrained, kwargs)


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-40-2: 6 blocks per stage, 32/64/128 channels."""
    return _create("cifar_wrn_40_2", 40, 2, pretrained, kwargs)
