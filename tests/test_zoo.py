"""The CIFAR KD zoo: timm registration, the feature contract, and parameter / MAC counts against published figures."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import kdbench.zoo
from kdbench.errors import ModelError

ZOO_NAMES = [
    "cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
    "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4", "cifar_wrn_16_1", "cifar_wrn_16_2", "cifar_wrn_40_1",
    "cifar_wrn_40_2", "cifar_vgg8", "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19", "cifar_mobilenetv2",
    "cifar_shufflenetv1", "cifar_shufflenetv2", "cifar_resnet50",
]

# Parameter counts (millions, 100 classes) commonly quoted for these architectures in the CIFAR-100 KD literature
# (CRD / DKD-era tables and code releases). Each is checked within 2%.
QUOTED_PARAMS_M = {
    "cifar_resnet8x4": 1.23,
    "cifar_resnet32x4": 7.43,
    "cifar_wrn_40_2": 2.26,
    "cifar_wrn_16_2": 0.70,
    "cifar_wrn_40_1": 0.57,
    "cifar_resnet56": 0.86,
    "cifar_resnet20": 0.28,  # with 1x1 projection shortcuts (CRD code); option-A tables say 0.27 M
    "cifar_resnet110": 1.74,
    "cifar_resnet32": 0.47,
    "cifar_vgg13": 9.46,
    "cifar_vgg8": 3.96,
    "cifar_mobilenetv2": 0.81,
    "cifar_shufflenetv1": 0.95,
    "cifar_shufflenetv2": 1.36,
    "cifar_resnet50": 23.71,  # ImageNet ResNet-50 (25.56 M) with a 100-way classifier and a 3x3 stem
}

# MACs at 32x32 quoted in the KD literature: resnet8x4 ~0.18 G, resnet32x4 ~1.08 G.
QUOTED_GMACS = {"cifar_resnet8x4": 0.18, "cifar_resnet32x4": 1.08}

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
PREACT_MODELS = {"cifar_wrn_16_1", "cifar_wrn_16_2", "cifar_wrn_40_1", "cifar_wrn_40_2"}
HEAD_CONV_MODELS = {"cifar_mobilenetv2", "cifar_shufflenetv2"}


@pytest.fixture(autouse=True, scope="module")
def single_thread(one_torch_thread):
    """Small CPU forwards are fastest (and steadiest on a busy machine) on one intra-op thread."""
    yield
    _shared.cache_clear()


def make(name: str, **kwargs) -> nn.Module:
    """A model in eval mode whose BN statistics come from one random batch, so activations keep a sane scale
    (fresh running statistics make deep nets explode or vanish, which would make tolerances meaningless)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(torch.randn(8, model.in_chans, 32, 32))
    return model.eval()


@functools.cache
def _shared(name: str, options: tuple[tuple[str, int], ...]) -> nn.Module:
    return make(name, **dict(options))


def shared(name: str, **kwargs: int) -> nn.Module:
    """A cached model for tests that only run it in eval mode (building the big ones dominates the file's time)."""
    return _shared(name, tuple(sorted({"num_classes": 100, **kwargs}.items())))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- independent closed-form parameter counts (conv weights, BN scale+shift, classifier weight+bias) ---------------

def conv(in_chs: int, out_chs: int, kernel: int = 3, bias: bool = False) -> int:
    return in_chs * out_chs * kernel * kernel + (out_chs if bias else 0)


def bn(chs: int) -> int:
    return 2 * chs


def fc(in_chs: int, classes: int) -> int:
    return in_chs * classes + classes


def cifar_resnet_params(stem: int, widths: tuple[int, int, int], blocks: int, classes: int) -> int:
    total, in_chs = conv(3, stem) + bn(stem), stem
    for stage, width in enumerate(widths):
        for block in range(blocks):
            total += conv(in_chs, width) + bn(width) + conv(width, width) + bn(width)
            if in_chs != width or (stage > 0 and block == 0):
                total += conv(in_chs, width, 1) + bn(width)
            in_chs = width
    return total + fc(widths[-1], classes)


def wrn_params(depth: int, widen: int, classes: int) -> int:
    blocks = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    total, in_chs = conv(3, 16), 16
    for width in widths:
        for _ in range(blocks):
            total += bn(in_chs) + conv(in_chs, width) + bn(width) + conv(width, width)
            if in_chs != width:
                total += conv(in_chs, width, 1)
            in_chs = width
    return total + bn(widths[-1]) + fc(widths[-1], classes)


def vgg_params(convs_per_group: tuple[int, ...], classes: int) -> int:
    total, in_chs = 0, 3
    for width, convs in zip((64, 128, 256, 512, 512), convs_per_group, strict=True):
        for _ in range(convs):
            total += conv(in_chs, width, bias=True) + bn(width)
            in_chs = width
    return total + fc(512, classes)


CLOSED_FORM_PARAMS = {
    **{f"cifar_resnet{d}": cifar_resnet_params(16, (16, 32, 64), (d - 2) // 6, 100)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4": cifar_resnet_params(32, (64, 128, 256), 1, 100),
    "cifar_resnet32x4": cifar_resnet_params(32, (64, 128, 256), 5, 100),
    **{f"cifar_wrn_{d}_{k}": wrn_params(d, k, 100) for d in (16, 40) for k in (1, 2)},
    "cifar_vgg8": vgg_params((1, 1, 1, 1, 1), 100),
    "cifar_vgg11": vgg_params((1, 1, 2, 2, 2), 100),
    "cifar_vgg13": vgg_params((2, 2, 2, 2, 2), 100),
    "cifar_vgg16": vgg_params((2, 2, 3, 3, 3), 100),
    "cifar_vgg19": vgg_params((2, 2, 4, 4, 4), 100),
}


# --- registration ----------------------------------------------------------------------------------------------------

def test_list_models_lists_the_whole_zoo():
    assert set(ZOO_NAMES) <= set(timm.list_models("cifar_*"))
    assert sorted(kdbench.zoo.ZOO_MODELS) == sorted(ZOO_NAMES)


def test_zoo_modules_keep_apart_from_timms_own():
    """The zoo registers under modules of its own, so timm's listing of its ResNets and VGGs is timm's alone."""
    for module in ("resnet", "vgg", "efficientnet", "mobilenetv3"):
        assert not [name for name in timm.list_models(module=module) if name.startswith("cifar_")], module
    zoo_by_module = {name: sorted(timm.list_models(module=name)) for name in (
        "cifar_resnet", "cifar_wrn", "cifar_vgg", "cifar_mobilenetv2", "cifar_shufflenet")}
    assert sorted(sum(zoo_by_module.values(), [])) == sorted(ZOO_NAMES)
    assert "cifar_resnet8x4" in zoo_by_module["cifar_resnet"] and "cifar_vgg13" in zoo_by_module["cifar_vgg"]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_pretrained_cfg_describes_cifar100(name):
    model = shared(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["num_classes"] == 100
    assert cfg["mean"] == pytest.approx(CIFAR100_MEAN)
    assert cfg["std"] == pytest.approx(CIFAR100_STD)
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_default_class_count_comes_from_the_cfg():
    assert make("cifar_resnet8").get_classifier().out_features == 100


def test_pretrained_weights_do_not_exist():
    with pytest.raises(ModelError, match="no pretrained weights"):
        timm.create_model("cifar_resnet8x4", pretrained=True)


def test_pretrained_loads_a_local_file_through_timm(tmp_path: Path):
    source = make("cifar_resnet8")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    loaded = timm.create_model("cifar_resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for (key, expected), actual in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), key


def test_image_size_keyword_is_rejected_like_other_cnns():
    # kdbench.models.create_model passes img_size first and falls back when the TypeError names it
    with pytest.raises(TypeError, match="img_size"):
        timm.create_model("cifar_resnet20", img_size=32)


# --- forward, classes and channels -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_NAMES)
def test_forward_at_32x32_for_10_and_100_classes_and_grey_images(name):
    with torch.no_grad():
        assert shared(name)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        grey = shared(name, num_classes=10, in_chans=1)
        assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 10)
        assert grey.get_classifier().out_features == 10


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_feature_info_matches_forward_intermediates(name):
    model = shared(name)
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(2, 3, 32, 32), intermediates_only=True)
    expected_taps = 5 if name in {"cifar_resnet50", "cifar_mobilenetv2"} or "vgg" in name else 4
    assert len(model.feature_info) == len(features) == expected_taps
    for info, feature in zip(model.feature_info, features, strict=True):
        assert feature.shape[1] == info["num_chs"]
        assert feature.shape[2:] == (32 // info["reduction"], 32 // info["reduction"])
        assert isinstance(info["module"], str) and model.get_submodule(info["module"]) is not None


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_forward_intermediates_final_features_give_the_forward_logits(name):
    model = shared(name)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        final, features = model.forward_intermediates(images, intermediates_only=False)
        assert torch.allclose(model.forward_head(final), logits, atol=1e-5)
        assert torch.allclose(model.forward_features(images), final, atol=1e-6)
        pre_logits = model.forward_head(final, pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)
    assert len(features) == len(model.feature_info)


@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_wrn_16_1", "cifar_vgg8", "cifar_mobilenetv2"])
def test_indices_follow_timm_semantics(name):
    model = shared(name)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        every = model.forward_intermediates(images, intermediates_only=True)
        last_two = model.forward_intermediates(images, indices=2, intermediates_only=True)
        first_and_last = model.forward_intermediates(images, indices=[0, -1], intermediates_only=True)
        _, early = model.forward_intermediates(images, indices=[1], stop_early=True)
    assert [f.shape for f in last_two] == [f.shape for f in every[-2:]]
    assert all(torch.equal(a, b) for a, b in zip(last_two, every[-2:], strict=True))
    assert torch.equal(first_and_last[0], every[0]) and torch.equal(first_and_last[1], every[-1])
    assert len(early) == 1 and torch.equal(early[0], every[1])
    with pytest.raises(AssertionError):
        model.forward_intermediates(images, indices=[len(every)])


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_norm_option_applies_the_final_norm_to_the_last_tap(name):
    model = shared(name)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, _ = model.forward_intermediates(images)
        plain = model.forward_intermediates(images, indices=1, intermediates_only=True)[0]
        normed = model.forward_intermediates(images, indices=1, norm=True, intermediates_only=True)[0]
    if name in HEAD_CONV_MODELS:  # the head conv widens the map: final features are not a tap
        assert final.shape[1] > normed.shape[1]
        return
    assert torch.allclose(normed, final, atol=1e-6)
    if name in PREACT_MODELS:  # pre-activation: the last tap is taken before the final BN + ReLU
        assert not torch.allclose(plain, normed) and normed.min() >= 0
    else:
        assert torch.equal(plain, normed)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_wrn_16_2", "cifar_vgg8", "cifar_shufflenetv2"])
def test_prune_intermediate_layers_keeps_the_requested_taps(name):
    model = make(name)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_intermediates(images, indices=[1, 2], intermediates_only=True)
    params_before = count_params(model)
    kept = model.prune_intermediate_layers([1, 2])
    with torch.no_grad():
        after = model.forward_intermediates(images, indices=[1, 2], intermediates_only=True)
        pooled = model(images)
    assert kept == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert count_params(model) < params_before
    assert model.num_features == model.feature_info[2]["num_chs"]
    assert pooled.shape[1] == model.num_features  # no classifier, no pooling after a pruned head


@pytest.mark.parametrize("name", ["cifar_resnet32x4", "cifar_mobilenetv2", "cifar_wrn_40_1"])
def test_features_only_through_timm(name):
    extractor = timm.create_model(name, features_only=True, in_chans=1)
    with torch.no_grad():
        features = extractor(torch.randn(1, 1, 32, 32))
    assert [f.shape[1] for f in features] == extractor.feature_info.channels()
    assert [32 // f.shape[-1] for f in features] == extractor.feature_info.reduction()


@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_shufflenetv1"])
def test_classifier_reset_and_headless_model(name):
    model = make(name)
    assert isinstance(model.get_classifier(), nn.Linear)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    headless = make(name, num_classes=0)
    with torch.no_grad():
        assert headless(torch.randn(2, 3, 32, 32)).shape == (2, headless.num_features)


def test_training_step_reaches_every_parameter():
    model = make("cifar_mobilenetv2", num_classes=10).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- size --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_NAMES)
def test_parameter_count_at_100_classes(name):
    params = count_params(shared(name))
    if name in CLOSED_FORM_PARAMS:
        assert params == CLOSED_FORM_PARAMS[name]
    if name in QUOTED_PARAMS_M:
        assert params / 1e6 == pytest.approx(QUOTED_PARAMS_M[name], rel=0.02)
    assert name in CLOSED_FORM_PARAMS or name in QUOTED_PARAMS_M


@pytest.mark.parametrize("name", sorted(QUOTED_GMACS))
def test_macs_at_32x32(name):
    model = shared(name)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(QUOTED_GMACS[name], rel=0.05)
