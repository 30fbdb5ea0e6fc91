"""CIFAR ResNets of the KD literature: resnet8 ... resnet110, resnet8x4, resnet32x4 and the CIFAR ResNet-50.

Architectures as in the CRD / RepDistiller code base (Tian et al. 2020, "Contrastive Representation Distillation",
https://arxiv.org/abs/1910.10699), which the CIFAR-100 KD tables (CRD, DKD, ReviewKD, ...) all use:

- ``cifar_resnet{8,14,20,32,44,56,110}``: He et al.'s CIFAR ResNet-(6n+2): a 3x3 stem conv with 16 channels, then
  3 stages of ``n`` basic blocks with 16/32/64 channels at strides 1/2/2. Unlike He et al.'s option A (zero-padded
  identity), the shortcut of a block that changes shape is a 1x1 conv + BN (option B).
- ``cifar_resnet8x4``, ``cifar_resnet32x4``: the same with 4x the channels (stem 32, stages 64/128/256).
- ``cifar_resnet50``: the bottleneck ResNet-50 (3/4/6/3 blocks, 256..2048 output channels) with a 3x3 stride-1
  stem and no max-pool, so its stages run at 32/16/8/4 pixels.

Parameter counts at 100 classes (pinned in ``tests/test_zoo.py`` within 2%). "Quoted" figures are the ones the
CIFAR-100 KD literature commonly gives for these networks; each agrees with a count of this architecture:

================  ========  ========  ===============================================================
model             quoted    counted   note
================  ========  ========  ===============================================================
cifar_resnet8     --        0.084 M
cifar_resnet14    --        0.181 M
cifar_resnet20    0.28 M    0.278 M   tables of He et al.-style option-A ResNets give 0.27 M: the 1x1
                                      projection shortcuts of the CRD code add 2.7 k parameters
cifar_resnet32    0.47 M    0.473 M
cifar_resnet44    --        0.667 M
cifar_resnet56    0.86 M    0.862 M
cifar_resnet110   1.74 M    1.737 M
cifar_resnet8x4   1.23 M    1.234 M
cifar_resnet32x4  7.43 M    7.434 M
cifar_resnet50    23.71 M   23.705 M  ImageNet ResNet-50 (25.56 M) minus 900 classifier rows and the
                                      7x7 -> 3x3 stem
================  ========  ========  ===============================================================

MACs at 32x32 (convolutions and classifier, counted with ``torch.utils.flop_counter`` as FLOPs / 2): resnet8x4
0.177 G and resnet32x4 1.083 G, against the 0.18 G and 1.08 G quoted in the KD literature (pinned within 5%).
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from kdbench.zoo._base import CifarNet, build_cifar_model, cifar_cfg, conv_bn_act


class BasicBlock(nn.Module):
    """Post-activation residual block: two 3x3 convs, a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_chs: input channels.
            planes: output channels.
            stride: stride of the first conv (and of the shortcut).
        """
        super().__init__()
        self.conv_bn_act1 = conv_bn_act(in_chs, planes, 3, stride)
        self.conv_bn2 = conv_bn_act(planes, planes, 3, act=False)
        self.shortcut = _shortcut(in_chs, planes, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum followed by ReLU."""
        return self.act(self.conv_bn2(self.conv_bn_act1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand by 4, projection shortcut when needed."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_chs: input channels.
            planes: bottleneck width; the block outputs ``4 * planes`` channels.
            stride: stride of the 3x3 conv (and of the shortcut).
        """
        super().__init__()
        out_chs = planes * self.expansion
        self.conv_bn_act1 = conv_bn_act(in_chs, planes, 1)
        self.conv_bn_act2 = conv_bn_act(planes, planes, 3, stride)
        self.conv_bn3 = conv_bn_act(planes, out_chs, 1, act=False)
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum followed by ReLU."""
        out = self.conv_bn3(self.conv_bn_act2(self.conv_bn_act1(x)))
        return self.act(out + self.shortcut(x))


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 conv + BN projection where the block changes channels or resolution."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return conv_bn_act(in_chs, out_chs, 1, stride, act=False)


class CifarResNet(CifarNet):
    """A CIFAR ResNet: 3x3 stride-1 stem, then stages of basic or bottleneck blocks (stride 1, then 2 each)."""

    def __init__(
        self,
        block: str = "basic",
        depths: tuple[int, ...] = (3, 3, 3),
        widths: tuple[int, ...] = (16, 32, 64),
        stem_chs: int = 16,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            block: ``basic`` or ``bottleneck``.
            depths: blocks per stage.
            widths: ``planes`` of each stage (bottleneck stages output 4x as many channels).
            stem_chs: channels of the stem conv.
            num_classes: classifier outputs (0: none).
            in_chans: image channels.
            global_pool: timm pooling type of the head.
            drop_rate: dropout before the classifier.
        """
        block_cls: type[BasicBlock] | type[Bottleneck] = Bottleneck if block == "bottleneck" else BasicBlock
        stem = conv_bn_act(in_chans, stem_chs, 3)
        stages, stage_chs, reductions = [], [], []
        in_chs, reduction = stem_chs, 1
        for index, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(depth):
                blocks.append(block_cls(in_chs, planes, stride if block_index == 0 else 1))
                in_chs = planes * block_cls.expansion
            reduction *= stride
            stages.append(nn.Sequential(*blocks))
            stage_chs.append(in_chs)
            reductions.append(reduction)
        super().__init__(
            stem, nn.Sequential(*stages), stem_chs, 1, stage_chs, reductions,
            num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
        )


default_cfgs = generate_default_cfgs({
    **{f"cifar_resnet{depth}": cifar_cfg((8, 8)) for depth in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4": cifar_cfg((8, 8)),
    "cifar_resnet32x4": cifar_cfg((8, 8)),
    "cifar_resnet50": cifar_cfg((4, 4)),
})


def _create_basic(
    variant: str, depth: int, stem_chs: int, widths: tuple[int, int, int], pretrained: bool, kwargs: dict[str, Any]
) -> CifarResNet:
    """A ResNet-(6n+2) of basic blocks: ``depth = 6 * blocks_per_stage + 2``."""
    blocks_per_stage = (depth - 2) // 6
    model_args = dict(block="basic", depths=(blocks_per_stage,) * 3, widths=widths, stem_chs=stem_chs)
    return build_cifar_model(CifarResNet, variant, pretrained, num_taps=4, **dict(model_args, **kwargs))


_THIN = 16, (16, 32, 64)  # stem channels, stage channels of He et al.'s CIFAR ResNets
_WIDE = 32, (64, 128, 256)  # the "x4" variants of the CRD code base (the stem is only doubled)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8: 1 basic block per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet8", 8, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-14: 2 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet14", 14, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20: 3 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet20", 20, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32: 5 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet32", 32, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44: 7 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet44", 44, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56: 9 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet56", 56, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110: 18 basic blocks per stage, 16/32/64 channels."""
    return _create_basic("cifar_resnet110", 110, *_THIN, pretrained, kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8x4: 1 basic block per stage, 32-channel stem, 64/128/256 channels."""
    return _create_basic("cifar_resnet8x4", 8, *_WIDE, pretrained, kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32x4: 5 basic blocks per stage, 32-channel stem, 64/128/256 channels."""
    return _create_basic("cifar_resnet32x4", 32, *_WIDE, pretrained, kwargs)


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-50: bottleneck blocks 3/4/6/3, 64-channel 3x3 stem, no max-pool, 256..2048 channels."""
    model_args = dict(block="bottleneck", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_chs=64)
    return build_cifar_model(CifarResNet, "cifar_resnet50", pretrained, num_taps=5, **dict(model_args, **kwargs))
