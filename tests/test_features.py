"""Feature taps, stage matching and adapters, checked against values computed independently here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.errors import ConfigError, ModelError
from kdbench.features import (
    FeatureAdapter,
    ModelInfo,
    StageShape,
    describe_model,
    forward_with_features,
    pool_to_common_size,
    relative_depth,
    resize_map,
    select_stage,
    select_stages,
    shared_depths,
    stage_at_depth,
)
from kdbench.models import create_model


def info_with(num_stages: int, name: str = "model") -> ModelInfo:
    """A ModelInfo with ``num_stages`` identical stages."""
    return ModelInfo(name, 10, 8, stages=tuple(StageShape(8, 4, 4, 8) for _ in range(num_stages)))


# ---------------------------------------------------------------------------------------------------------------
# Stage matching


@pytest.mark.parametrize(("depth", "num_stages", "expected"), [
    (0.0, 5, 0), (1.0, 5, 4), (0.5, 5, 2), (0.25, 5, 1), (0.74, 5, 3),
    (0.5, 4, 2),  # 1.5 stages in: the tie goes to the deeper stage
    (0.5, 12, 6),  # 5.5 blocks in: block 6 (the 7th)
    (1 / 3, 4, 1), (2 / 3, 4, 2), (0.5, 3, 1), (0.5, 2, 1), (0.49, 2, 0), (0.3, 1, 0),
])
def test_stage_at_depth_picks_the_nearest_stage_ties_deeper(depth, num_stages, expected):
    assert stage_at_depth(depth, num_stages) == expected


def test_relative_depth_runs_from_zero_at_the_first_stage_to_one_at_the_last():
    assert [relative_depth(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert relative_depth(0, 1) == 1.0
    for n in (2, 4, 5, 12):
        assert [stage_at_depth(relative_depth(i, n), n) for i in range(n)] == list(range(n))


@pytest.mark.parametrize("depth", [-0.1, 1.5])
def test_depth_outside_zero_one_is_a_config_error(depth):
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        stage_at_depth(depth, 5)


def test_select_stage_prefers_an_explicit_index_and_counts_negative_ones_from_the_end():
    info = info_with(5)
    assert select_stage(info, 0.5) == 2
    assert select_stage(info, 0.5, 4) == 4
    assert select_stage(info, 0.5, -1) == 4
    assert select_stage(info, 0.5, -5) == 0
    assert select_stages(info, (0.25, 1.0)) == (1, 4)
    assert select_stages(info, (0.25, 1.0), (0, -2)) == (0, 3)


@pytest.mark.parametrize("index", [5, -6])
def test_out_of_range_index_names_the_model_and_its_stage_count(index):
    with pytest.raises(ConfigError) as err:
        select_stage(info_with(5, "resnet18"), 0.5, index, what="fitnets.student_stage")
    message = str(err.value)
    assert "\n" not in message
    assert "'resnet18'" in message and "5 stages" in message and f"fitnets.student_stage={index}" in message


def test_shared_depths_use_the_stages_of_the_shallower_model_without_its_first():
    resnet, convnext, vit = info_with(5), info_with(4), info_with(12)
    assert shared_depths(resnet, vit) == (0.25, 0.5, 0.75, 1.0)
    assert shared_depths(vit, resnet) == (0.25, 0.5, 0.75, 1.0)
    assert shared_depths(resnet, convnext) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert shared_depths(resnet, convnext, skip_first=False) == pytest.approx((0.0, 1 / 3, 2 / 3, 1.0))
    # ResNet stages 1..4 pair with ViT blocks 3, 6, 8, 11 (nearest relative depth: 2.75, 5.5, 8.25, 11)
    assert select_stages(vit, shared_depths(resnet, vit)) == (3, 6, 8, 11)
    assert select_stages(resnet, shared_depths(resnet, vit)) == (1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------------------------
# Spatial alignment


def block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Average over non-overlapping factor x factor windows of an (N, C, H, W) array."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def bilinear_up(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, h, w) to size x size with half-pixel centres (align_corners=False), by hand."""
    h = x.shape[2]
    scale = h / size

    def weights(i: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * scale - 0.5, 0.0)
        low = min(int(np.floor(src)), h - 1)
        high = min(low + 1, h - 1)
        return low, high, src - low

    out = np.zeros(x.shape[:2] + (size, size))
    for i in range(size):
        y0, y1, fy = weights(i)
        for j in range(size):
            x0, x1, fx = weights(j)
            top = (1 - fx) * x[:, :, y0, x0] + fx * x[:, :, y0, x1]
            bottom = (1 - fx) * x[:, :, y1, x0] + fx * x[:, :, y1, x1]
            out[:, :, i, j] = (1 - fy) * top + fy * bottom
    return out


def test_resize_map_pools_larger_maps_by_window_means():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(resize_map(x, (2, 2)).numpy(), block_mean(x.numpy(), 4), rtol=1e-12)
    np.testing.assert_allclose(resize_map(x, (1, 1)).numpy(), x.numpy().mean(axis=(2, 3), keepdims=True))


def test_resize_map_interpolates_smaller_maps_bilinearly():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    np.testing.assert_allclose(resize_map(x, (4, 4)).numpy(), bilinear_up(x.numpy(), 4), rtol=1e-12)
    one = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(resize_map(one, (3, 3)), one.expand(2, 3, 3, 3))


def test_resize_map_leaves_a_fitting_map_alone():
    x = torch.randn(1, 2, 3, 3)
    assert resize_map(x, (3, 3)) is x


def test_pool_to_common_size_pools_the_larger_map_only():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 2, 2)
    pa, pb = pool_to_common_size(a, b)
    assert pb is b and pa.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(pa.numpy(), block_mean(a.numpy(), 4), rtol=1e-5, atol=1e-6)
    qb, qa = pool_to_common_size(b, a)
    assert qb is b and torch.equal(qa, pa)


# ---------------------------------------------------------------------------------------------------------------
# Adapters


def conv_bn_by_hand(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """1x1 conv (weight (out, in)) followed by training-mode BatchNorm with unit scale and zero shift."""
    y = np.einsum("oc,nchw->nohw", weight, x)
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)
    return (y - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize(("student", "teacher"), [
    (StageShape(8, 8, 8, 4), StageShape(16, 2, 2, 16)),  # student map larger: pooled, then projected
    (StageShape(8, 2, 2, 16), StageShape(16, 4, 4, 8)),  # student map smaller: projected, then interpolated
    (StageShape(8, 4, 4, 8), StageShape(16, 4, 4, 8)),  # channel mismatch only
])
def test_adapter_matches_projection_and_resizing_by_hand(student, teacher):
    torch.manual_seed(0)
    adapter = FeatureAdapter(student, teacher).double().train()
    x = torch.randn(4, student.channels, student.height, student.width, dtype=torch.float64)
    got = adapter(x)
    assert got.shape == (4, teacher.channels, teacher.height, teacher.width)
    weight = adapter.proj[0].weight.detach().numpy()[:, :, 0, 0]
    eps = adapter.proj[1].eps
    xs = x.numpy()
    if student.height > teacher.height:
        expected = conv_bn_by_hand(block_mean(xs, student.height // teacher.height), weight, eps)
    elif student.height < teacher.height:
        expected = bilinear_up(conv_bn_by_hand(xs, weight, eps), teacher.height)
    else:
        expected = conv_bn_by_hand(xs, weight, eps)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_adapter_parameters_and_when_it_projects():
    s, t = StageShape(24, 4, 4, 8), StageShape(40, 4, 4, 8)
    assert sum(p.numel() for p in FeatureAdapter(s, t).parameters()) == 24 * 40 + 2 * 40
    same = FeatureAdapter(StageShape(40, 8, 8, 4), t)
    assert isinstance(same.proj, nn.Identity) and not list(same.parameters())
    forced = FeatureAdapter(StageShape(40, 8, 8, 4), t, project=True)
    assert sum(p.numel() for p in forced.parameters()) == 40 * 40 + 2 * 40
    x = torch.randn(2, 40, 8, 8)
    np.testing.assert_allclose(same(x).numpy(), block_mean(x.numpy(), 2), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Taps on real timm models


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=10, in_chans=1, image_size=32).eval()
            for name in ("test_resnet", "test_vit")}


def test_describe_model_measures_every_feature_info_stage(tiny_models):
    model = tiny_models["test_resnet"]
    info = describe_model(model, "test_resnet", 1, 32)
    assert info.num_stages == len(model.feature_info) == 5
    assert [s.channels for s in info.stages] == [f["num_chs"] for f in model.feature_info]
    assert [s.reduction for s in info.stages] == [2, 4, 8, 16, 32]
    assert [(s.height, s.width) for s in info.stages] == [(32 // r, 32 // r) for r in (2, 4, 8, 16, 32)]


def test_vit_tokens_become_maps_without_the_class_token(tiny_models):
    model = tiny_models["test_vit"]
    assert model.num_prefix_tokens >= 1
    info = describe_model(model, "test_vit", 1, 32)
    assert info.num_stages == len(model.blocks)
    assert {(s.channels, s.height, s.width, s.reduction) for s in info.stages} == {(model.embed_dim, 2, 2, 16)}
    outputs: dict[int, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out))
             for k, block in enumerate(model.blocks)]
    x = torch.randn(3, 1, 32, 32)
    try:
        with torch.no_grad():
            logits, feats = forward_with_features(model, x, [1, 3])
    finally:
        for hook in hooks:
            hook.remove()
    for k in (1, 3):
        tokens = outputs[k][:, model.num_prefix_tokens:]  # (N, 4 patches, C), row-major patch order
        expected = tokens.transpose(1, 2).reshape(3, model.embed_dim, 2, 2)
        torch.testing.assert_close(feats[k], expected)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_forward_with_features_is_one_forward_pass_with_the_model_logits(tiny_models, name):
    model = tiny_models[name]
    first = model.conv1 if name == "test_resnet" else model.patch_embed
    calls = []
    hook = first.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 1, 32, 32)
    try:
        with torch.no_grad():
            logits, feats = forward_with_features(model, x, [3, 0, 3])
    finally:
        hook.remove()
    assert len(calls) == 1
    assert sorted(feats) == [0, 3]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


@pytest.mark.slow
def test_forward_with_features_runs_to_the_logits_when_the_model_would_stop_early():
    # Hiera's forward_intermediates stops after the deepest requested stage unless told otherwise
    torch.manual_seed(0)
    model = create_model("hiera_tiny_224", num_classes=10, in_chans=1, image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, feats = forward_with_features(model, x, [1])
        torch.testing.assert_close(logits, model(x))
    assert feats[1].shape == (2, model.feature_info[1]["num_chs"], 4, 4)


class NoTaps(nn.Module):
    """A classifier with no feature taps at all."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class WrongTaps(NoTaps):
    """Claims two 8-channel stages, but its forward_intermediates returns one 5-channel map."""

    feature_info = [{"num_chs": 8, "reduction": 2}, {"num_chs": 8, "reduction": 4}]

    def forward_intermediates(self, x: torch.Tensor, **_: object) -> list[torch.Tensor]:
        return [torch.zeros(x.shape[0], 5, 1, 1)]


@pytest.mark.parametrize("model_cls", [NoTaps, WrongTaps])
def test_model_without_consistent_taps_has_no_stages_and_fails_in_one_line(model_cls):
    info = describe_model(model_cls(), "my_net", 1, 2)
    assert info.stages == () and not info.supports_features
    with pytest.raises(ModelError) as err:
        info.require_features("fitnets")
    message = str(err.value)
    assert "\n" not in message and "'my_net'" in message and "forward_intermediates" in message
