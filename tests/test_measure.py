import json
import math
import time

import pytest
import timm
import torch
from torch import nn

from kdbench import measure
from kdbench.errors import ConfigError
from kdbench.measure import (
    CPU_FIELDS,
    EFFICIENCY_FIELDS,
    GPU_FIELDS,
    count_flops,
    count_params_m,
    cpu_benchmark,
    efficiency,
    efficiency_key,
    gpu_benchmark,
    gpu_fields_null,
)
from kdbench.store import Store

FAST_CPU = {"warmup": 1, "iters": 20, "min_iters": 3, "time_budget_s": 0.05}


def snapshot(model: nn.Module) -> dict:
    """Everything about a model that a measurement must leave alone."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "devices": {p.device for p in model.parameters()},
        "contiguous": [p.is_contiguous() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for field in ("training", "requires_grad", "devices", "contiguous"):
        assert after[field] == before[field], field
    assert after["state"].keys() == before["state"].keys()
    for name, value in before["state"].items():
        assert torch.equal(after["state"][name], value), name


def partly_frozen_student() -> nn.Module:
    model = timm.create_model("test_resnet", num_classes=10)
    model.train()
    model.conv1.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------------- FLOPs / params


@pytest.mark.parametrize(("name", "published_gmacs"), [("resnet50", 4.1), ("resnet18", 1.8)])
def test_resnet_macs_match_published_figures(name, published_gmacs):
    # torchvision's model cards list 4.09 GFLOPS (multiply-adds) for ResNet-50 and 1.81 for ResNet-18 at 224x224.
    gflops, gmacs = count_flops(timm.create_model(name), (3, 224, 224))
    assert gmacs == pytest.approx(published_gmacs, rel=0.02)
    assert gflops == pytest.approx(2 * gmacs)


def test_resnet50_params():
    assert round(count_params_m(timm.create_model("resnet50")), 2) == 25.56


class TinyNet(nn.Module):
    """Conv 3->8 (3x3), depthwise 3x3 stride 2, pointwise 8->16, norms, activations, pooling, linear 16->5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(x)))
        x = torch.relu(self.pointwise(self.depthwise(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_conv_macs_equal_hand_count():
    # 10x10 input: conv 8 out x 100 positions x 27 taps; depthwise 8 x 25 positions x 9 taps;
    # pointwise 16 x 25 x 8; linear 16 x 5. Norms, activations and pooling are not multiply-adds of a layer.
    hand_macs = 8 * 100 * 27 + 8 * 25 * 9 + 16 * 25 * 8 + 16 * 5
    gflops, gmacs = count_flops(TinyNet(), (3, 10, 10))
    assert round(gmacs * 1e9) == hand_macs == 26680
    assert round(gflops * 1e9) == 2 * hand_macs


def vit_macs_by_formula(image_size: int, patch: int, in_chans: int, dim: int, depth: int, mlp_hidden: int,
                        num_classes: int, prefix_tokens: int) -> int:
    """Multiply-adds of a plain ViT from its dimensions (token-pooled head)."""
    patches = (image_size // patch) ** 2
    tokens = patches + prefix_tokens
    patch_embed = patches * dim * in_chans * patch * patch
    qkv = tokens * dim * 3 * dim
    attention = 2 * tokens * tokens * dim  # q @ k^T and attn @ v, summed over heads
    proj = tokens * dim * dim
    mlp = 2 * tokens * dim * mlp_hidden
    return patch_embed + depth * (qkv + attention + proj + mlp) + dim * num_classes


def counted_macs(model: nn.Module, size: tuple[int, int, int], where: str) -> int:
    """MACs as count_flops counts them (``meta``) or as its real-device path counts them (``cpu``)."""
    if where == "meta":
        return round(count_flops(model, size)[1] * 1e9)
    return measure._count_flops_on(model, size, torch.device(where)) // 2


def test_vit_formula_matches_published_macs():
    # timm's results tables list vit_tiny_patch16_224 (dim 192, depth 12, MLP 768) at 1.26 GMACs.
    macs = vit_macs_by_formula(224, patch=16, in_chans=3, dim=192, depth=12, mlp_hidden=768, num_classes=1000,
                               prefix_tokens=1)
    assert macs / 1e9 == pytest.approx(1.26, rel=0.01)


@pytest.mark.parametrize(("name", "image_size", "where"),
                         [("test_vit", 64, "meta"), ("test_vit", 64, "cpu"), ("vit_tiny_patch16_224", 224, "meta")])
def test_vit_macs_include_attention(name, image_size, where):
    model = timm.create_model(name, img_size=image_size, num_classes=10)
    attention_modules = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attention_modules and all(m.fused_attn for m in attention_modules)  # the SDPA path is the one counted
    expected = vit_macs_by_formula(
        image_size, patch=model.patch_embed.patch_size[0], in_chans=3, dim=model.embed_dim, depth=len(model.blocks),
        mlp_hidden=model.blocks[0].mlp.fc1.out_features, num_classes=10, prefix_tokens=model.num_prefix_tokens,
    )
    size = (3, image_size, image_size)
    assert counted_macs(model, size, where) == expected
    for module in attention_modules:
        module.fused_attn = False
    assert counted_macs(model, size, where) == expected


@pytest.mark.parametrize("where", ["meta", "cpu"])
def test_multihead_attention_module_is_counted(where):
    # nn.MultiheadAttention's fused inference kernel is invisible to the counter; the decomposed path is counted.
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 32, 4, stride=4)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            return self.attn(tokens, tokens, tokens, need_weights=False)[0]

    tokens, dim = 16, 32
    expected = tokens * dim * 48 + 4 * tokens * dim * dim + 2 * tokens * tokens * dim
    assert counted_macs(Encoder().eval(), (3, 16, 16), where) == expected


class DataDependent(TinyNet):
    """Branches on a value, which the meta device cannot give: counted on the real device instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum().item() >= 0:
            return super().forward(x)
        return x


def test_meta_and_real_counts_agree_and_fallback_works():
    model = timm.create_model("test_vit", img_size=32, num_classes=10)
    on_meta = measure._count_flops_on(model, (3, 32, 32), torch.device("meta"))
    on_cpu = measure._count_flops_on(model, (3, 32, 32), torch.device("cpu"))
    assert on_meta == on_cpu > 0
    with pytest.raises(Exception):  # noqa: B017 - the meta device refuses .item()
        measure._count_flops_on(DataDependent(), (3, 10, 10), torch.device("meta"))
    _, gmacs = count_flops(DataDependent(), (3, 10, 10))
    assert round(gmacs * 1e9) == 26680


def test_count_flops_leaves_model_untouched():
    model = partly_frozen_student()
    before = snapshot(model)
    count_flops(model, (3, 32, 32))
    assert_untouched(model, before)


@pytest.mark.parametrize("size", [(3, 32), (3, 0, 32), (3, 32.0, 32), "3x32x32"])
def test_count_flops_rejects_bad_sizes(size):
    with pytest.raises(ConfigError, match="input size"):
        count_flops(TinyNet(), size)


# ---------------------------------------------------------------------------------------------------- CPU timing


def test_cpu_benchmark_figures_are_positive_and_finite():
    model = partly_frozen_student()
    before = snapshot(model)
    threads_before = torch.get_num_threads()
    figures = cpu_benchmark(model, (3, 28, 28), batch_size=16, threads=1, **FAST_CPU)
    assert set(figures) == set(CPU_FIELDS)
    for field in ("cpu_latency_ms_bs1", "cpu_latency_ms_bs1_p90", "cpu_samples_per_s"):
        assert math.isfinite(figures[field]) and figures[field] > 0, field
    assert figures["cpu_latency_ms_bs1_p90"] >= figures["cpu_latency_ms_bs1"]
    assert math.isfinite(figures["cpu_latency_spread"]) and figures["cpu_latency_spread"] >= 0
    assert figures["cpu_batch_size"] == 16
    assert figures["cpu_threads"] == 1
    assert torch.get_num_threads() == threads_before
    assert_untouched(model, before)


SEEN_THREADS: list[int] = []
CALLS: list[int] = []


class Sleeper(nn.Module):
    """Takes ``seconds`` per call whatever the batch size, and notes the thread count it ran with."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN_THREADS.append(torch.get_num_threads())
        CALLS.append(x.shape[0])
        time.sleep(self.seconds)
        return x.mean() * self.scale


def test_cpu_benchmark_times_what_it_runs():
    SEEN_THREADS.clear()
    threads_before = torch.get_num_threads()
    wanted = 1 if threads_before != 1 else 2
    figures = cpu_benchmark(Sleeper(0.01), (1, 4, 4), batch_size=5, threads=wanted, warmup=1, iters=5, min_iters=5,
                            time_budget_s=10.0)
    assert 10.0 <= figures["cpu_latency_ms_bs1"] < 60.0
    assert 5 / 0.06 < figures["cpu_samples_per_s"] <= 5 / 0.01
    assert set(SEEN_THREADS) == {wanted}
    assert torch.get_num_threads() == threads_before


def test_cpu_benchmark_bounds_its_work():
    CALLS.clear()
    cpu_benchmark(Sleeper(0.0), (1, 4, 4), batch_size=3, warmup=2, iters=7, min_iters=1, time_budget_s=100.0)
    assert CALLS == [1] * (2 + 7) + [3] * (2 + 7)  # warm-up then timed calls, batch 1 then the batch size
    CALLS.clear()
    started = time.perf_counter()
    cpu_benchmark(Sleeper(0.02), (1, 4, 4), batch_size=1, warmup=50, iters=1000, min_iters=3, time_budget_s=0.05)
    assert time.perf_counter() - started < 1.0
    assert 3 + 1 <= len(CALLS) <= 2 * 4 + 2  # the time budget stops warm-up and timing, after min_iters


def test_cpu_benchmark_restores_threads_after_an_error():
    threads_before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        cpu_benchmark(nn.Linear(3, 2), (3, 4, 4), threads=1, **FAST_CPU)  # wrong input shape for Linear(3)
    assert torch.get_num_threads() == threads_before


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"threads": 0}])
def test_cpu_benchmark_rejects_bad_counts(kwargs):
    with pytest.raises(ConfigError):
        cpu_benchmark(TinyNet(), (3, 8, 8), **kwargs)


# ---------------------------------------------------------------------------------------------------- GPU timing


def test_gpu_fields_are_null_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    figures = gpu_benchmark(TinyNet(), (3, 8, 8))
    assert figures == gpu_fields_null()
    assert set(figures) == set(GPU_FIELDS) and all(v is None for v in figures.values())


@pytest.mark.gpu
@pytest.mark.parametrize(("amp", "channels_last"), [(False, False), (True, True)])
def test_gpu_benchmark_on_cuda(amp, channels_last):
    model = partly_frozen_student()
    before = snapshot(model)
    figures = gpu_benchmark(model, (3, 32, 32), batch_size=64, amp=amp, channels_last=channels_last,
                            warmup=3, iters=20, min_iters=5, time_budget_s=0.2)
    assert set(figures) == set(GPU_FIELDS)
    assert figures["gpu_name"] == torch.cuda.get_device_name(0)
    for field in ("gpu_latency_ms_bs1", "gpu_latency_ms_bs1_p90", "gpu_samples_per_s", "gpu_peak_mem_mb"):
        assert math.isfinite(figures[field]) and figures[field] > 0, field
    assert figures["gpu_latency_spread"] >= 0
    assert figures["gpu_batch_size"] == 64
    assert figures["gpu_amp"] is amp and figures["gpu_channels_last"] is channels_last
    assert_untouched(model, before)


@pytest.mark.gpu
def test_efficiency_on_cuda_fills_gpu_fields():
    figures = efficiency(partly_frozen_student(), (3, 32, 32), device="cuda", cpu_batch_size=8, gpu_batch_size=32)
    assert figures["gpu_samples_per_s"] > 0 and figures["gpu_batch_size"] == 32
    assert figures["cpu_samples_per_s"] > 0


# ---------------------------------------------------------------------------------------------------- all figures


def test_efficiency_has_every_field_and_leaves_model_untouched(monkeypatch):
    monkeypatch.setattr(measure, "cpu_benchmark",
                        lambda model, size, **kw: cpu_benchmark(model, size, **kw, **FAST_CPU))
    model = partly_frozen_student()
    before = snapshot(model)
    figures = efficiency(model, (3, 32, 32), cpu_batch_size=8, threads=1)
    assert tuple(figures) == EFFICIENCY_FIELDS
    assert figures["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert figures["gflops"] == pytest.approx(2 * figures["gmacs"]) and figures["gmacs"] > 0
    assert figures["cpu_batch_size"] == 8 and figures["cpu_threads"] == 1
    assert all(figures[field] is None for field in GPU_FIELDS)
    assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------------- cache


def test_store_cache_computes_efficiency_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"params_m": 1.5, "gmacs": 0.25, "cpu_latency_ms_bs1": float("nan")}

    key = efficiency_key("resnet18", (3, 32, 32), 10, threads=2, cpu_batch_size=64)
    store = Store(tmp_path)
    first = store.cached("efficiency", key, compute)
    second = store.cached("efficiency", dict(key), compute)
    assert calls == [1]
    assert first == second == {"params_m": 1.5, "gmacs": 0.25, "cpu_latency_ms_bs1": None}
    files = list((tmp_path / "efficiency").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["key"]["model"] == "resnet18" and stored["key"]["input_size"] == [3, 32, 32]
    assert stored["figures"] == first


def test_store_cache_separates_keys_and_survives_bad_files(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"params_m": float(len(calls))}

    key = efficiency_key("resnet18", (3, 32, 32), 10)
    other = efficiency_key("resnet18", (3, 32, 32), 10, cpu_batch_size=32)
    store = Store(tmp_path)
    assert store.cached("efficiency", key, compute) == {"params_m": 1.0}
    assert store.cached("efficiency", other, compute) == {"params_m": 2.0}
    files = sorted((tmp_path / "efficiency").glob("*.json"))
    assert len(files) == 2
    first = next(f for f in files if json.loads(f.read_text())["figures"] == {"params_m": 1.0})
    first.write_text("{not json")
    assert store.cached("efficiency", key, compute) == {"params_m": 3.0}
    assert store.cached("efficiency", key, compute) == {"params_m": 3.0}
    assert len(calls) == 3


def test_efficiency_key_holds_every_knob():
    key = efficiency_key("resnet18", (1, 28, 28), 10, threads=3, cpu_batch_size=16, gpu_batch_size=128, amp=True,
                         channels_last=True)
    assert key["model"] == "resnet18" and key["input_size"] == [1, 28, 28] and key["num_classes"] == 10
    assert key["threads"] == 3 and key["cpu_batch_size"] == 16 and key["gpu_batch_size"] == 128
    assert key["amp"] is True and key["channels_last"] is True
    assert key["torch_version"] == torch.__version__ and key["timm_version"] == timm.__version__
    assert key["device"] == "cpu" and key["cpu_name"]
    json.dumps(key, allow_nan=False)
