"""Efficiency figures of a model: parameters, FLOPs/MACs, CPU and GPU latency and throughput.

Every run record carries these fields (see the measurement protocol in DESIGN.md):

- ``params_m``: parameters of the deployed model, in millions.
- ``gmacs`` / ``gflops``: multiply-adds and floating-point operations of one forward pass at batch 1, in
  billions (``gflops == 2 * gmacs``). KD papers call the multiply-adds "FLOPs"; both columns are kept.
- ``cpu_latency_ms_bs1`` (median), ``cpu_latency_ms_bs1_p90``, ``cpu_latency_spread`` ((p90 - p10) / median),
  ``cpu_samples_per_s`` at ``cpu_batch_size`` images per call, with ``cpu_threads`` torch threads.
- ``gpu_name``, ``gpu_latency_ms_bs1``, ``gpu_latency_ms_bs1_p90``, ``gpu_latency_spread``, ``gpu_samples_per_s``
  at ``gpu_batch_size``, ``gpu_amp`` (bf16 autocast), ``gpu_channels_last``, ``gpu_peak_mem_mb`` (peak memory
  allocated by torch during the throughput run, weights included, in MiB); all ``None`` without CUDA.

The training-cost fields of the record (``train_time_s``, ``train_samples_per_s``, ``teacher_time_s``,
``teacher_time_share``) are measured by the engine while it trains, not here.

Figures of one architecture at one input size on one machine do not depend on the method or the seed, so the
scheduler keeps them once per results store, under :func:`efficiency_key` (:meth:`kdbench.store.Store.cached`).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from math import prod
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from kdbench.env import cpu_name
from kdbench.errors import ConfigError
from kdbench.models import count_params_m

__all__ = [
    "CPU_FIELDS",
    "EFFICIENCY_FIELDS",
    "GPU_FIELDS",
    "MEASURE_PROTOCOL_VERSION",
    "count_flops",
    "count_params_m",
    "cpu_benchmark",
    "efficiency",
    "efficiency_key",
    "network_signature",
    "gpu_benchmark",
    "gpu_fields_null",
]

#: Bumped whenever a change here changes the figures, so cached figures of an older protocol are not reused.
MEASURE_PROTOCOL_VERSION = 1

CPU_FIELDS = (
    "cpu_latency_ms_bs1",
    "cpu_latency_ms_bs1_p90",
    "cpu_latency_spread",
    "cpu_samples_per_s",
    "cpu_batch_size",
    "cpu_threads",
)
GPU_FIELDS = (
    "gpu_name",
    "gpu_latency_ms_bs1",
    "gpu_latency_ms_bs1_p90",
    "gpu_latency_spread",
    "gpu_samples_per_s",
    "gpu_batch_size",
    "gpu_amp",
    "gpu_channels_last",
    "gpu_peak_mem_mb",
)
EFFICIENCY_FIELDS = ("params_m", "gmacs", "gflops", *CPU_FIELDS, *GPU_FIELDS)

_MIB = 2**20


# ----------------------------------------------------------------------------------------------------------------
# inputs and model copies


def _checked_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    """``input_size`` as a ``(channels, height, width)`` tuple of positive ints, or a one-line ConfigError."""
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0
                                 for n in size):
        raise ConfigError(f"input size must be three positive integers (channels, height, width), got {input_size!r}")
    channels, height, width = (int(n) for n in size)
    return channels, height, width


def _checked_count(name: str, value: int) -> int:
    """``value`` if it is a positive int, else a one-line ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _param_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 for a model without parameters)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _eval_copy(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """A deep copy of ``model`` on ``device`` in eval mode; the caller's model is left exactly as it was."""
    clone = copy.deepcopy(model).to(device)
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    return clone.eval()


def _random_batch(batch_size: int, size: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
                  channels_last: bool = False) -> torch.Tensor:
    """A reproducible batch of standard-normal images."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, *size, generator=generator, dtype=dtype).to(device)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def _attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                     *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``softmax(q @ k^T) @ v``: the two batched matrix products, two FLOPs per multiply-add.

    Shapes are ``(..., length, dim)``; every leading query dimension (batch, heads) multiplies the work, which
    also covers grouped-query attention, where the keys and values have fewer heads than the queries.
    """
    *leading, query_len, qk_dim = query_shape
    key_len, value_dim = value_shape[-2], value_shape[-1]
    return 2 * prod(leading) * query_len * key_len * (qk_dim + value_dim)


def _extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for the attention kernels this torch's FlopCounterMode leaves uncounted (CPU and custom backends).

    ``F.scaled_dot_product_attention`` dispatches on CPU to ``aten._scaled_dot_product_flash_attention_for_cpu``,
    which the counter has no formula for, so fused attention would silently count zero.
    """
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    formulas: dict[Any, Callable[..., int]] = {}
    for name in names:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            formulas[op] = _attention_flops
    return formulas


def _count_flops_on(model: nn.Module, size: tuple[int, int, int], device: torch.device) -> int:
    """FLOPs of one forward pass at batch 1 of an eval-mode copy of ``model`` run on ``device``."""
    counted = _eval_copy(model, device).requires_grad_(True)
    sample = _random_batch(1, size, torch.device("cpu"), _param_dtype(counted)).to(device)
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with torch.inference_mode(False), torch.enable_grad(), counter:
        counted(sample)
    return counter.get_total_flops()


def count_flops(model: nn.Module, input_size: Sequence[int], device: str | torch.device = "cpu") -> tuple[float, float]:
    """FLOPs and multiply-adds of one forward pass at batch 1 in eval mode.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on a copy of ``model``; the model itself is not
    touched. The copy runs on the ``meta`` device (shapes only, no arithmetic: a ResNet-50 at 224x224 counts in
    a fraction of a second); a model that cannot run there (data-dependent control flow, tensors that are not
    registered buffers) is counted on ``device`` instead, with the same result. One multiply-add is two FLOPs, so
    ``gmacs == gflops / 2`` (KD papers report the multiply-adds and call them "FLOPs").

    What is counted: convolutions (grouped and depthwise included), linear layers and every matrix product
    (``mm``, ``addmm``, ``bmm``, ``matmul``, ``einsum`` once decomposed), and attention. Attention is counted
    whichever way it runs: timm's ViT blocks call ``F.scaled_dot_product_attention`` when timm's fused attention
    is on (the default). On ``meta`` it decomposes into two batched matrix products; on CUDA the counter's own
    formulas cover the flash, memory-efficient and cuDNN kernels; the CPU kernel has no formula in torch, and this
    function adds one (``q @ k^T`` and ``attn @ v``). With fused attention off the two products are plain
    ``matmul`` calls. All paths give the same figure. The forward pass runs with autograd enabled so that
    ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take their decomposed path instead of the fused
    inference kernel (``aten._native_multi_head_attention``), which the counter cannot see.

    What is missed: elementwise work (activations, the elementwise parts of batch/layer norms, bias additions,
    residual additions, scaling, softmax), pooling, resizing, embedding look-ups, and any custom kernel or
    extension op without a registered formula. For the CNNs and ViTs that KD benchmarks use this is a few
    percent of the total, the same convention as fvcore and the published MAC counts of timm models.

    Args:
        model: the network to count.
        input_size: ``(channels, height, width)`` of one input image.
        device: where to count a model that cannot run on the ``meta`` device.

    Returns:
        ``(gflops, gmacs)``, in billions.
    """
    size = _checked_input_size(input_size)
    try:
        flops = _count_flops_on(model, size, torch.device("meta"))
    except Exception:  # whatever fails on meta (data-dependent code, stray tensors): count for real
        flops = _count_flops_on(model, size, torch.device(device))
    return flops / 1e9, flops / 2e9


# ----------------------------------------------------------------------------------------------------------------
# timing


def _timed_calls(call: Callable[[], object], *, warmup: int, iters: int, min_iters: int, time_budget_s: float,
                 synchronize: Callable[[], None] | None = None) -> list[float]:
    """Seconds taken by each timed call of ``call``, after warm-up.

    Warm-up makes up to ``warmup`` calls (at least one) and stops early once ``time_budget_s`` is spent. Timing
    then makes at most ``iters`` calls and stops once ``time_budget_s`` is spent, but never before ``min_iters``.
    ``synchronize`` (a CUDA device synchronise) is called before and after every timed call.
    """
    sync = synchronize or (lambda: None)
    started = time.perf_counter()
    for _ in range(max(warmup, 1)):
        call()
        if time.perf_counter() - started >= time_budget_s:
            break
    sync()
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) < max(iters, min_iters):
        begin = time.perf_counter()
        call()
        sync()
        seconds.append(time.perf_counter() - begin)
        if len(seconds) >= min_iters and time.perf_counter() - started >= time_budget_s:
            break
    return seconds


def _latency_stats(seconds: Sequence[float]) -> tuple[float, float, float]:
    """Median and 90th percentile in milliseconds, and the relative spread (p90 - p10) / median."""
    p10, median, p90 = np.percentile(np.asarray(seconds, dtype=float), [10, 50, 90])
    return float(median) * 1e3, float(p90) * 1e3, float((p90 - p10) / median)


def cpu_benchmark(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch_size: int = 64,
    threads: int | None = None,
    warmup: int = 3,
    iters: int = 100,
    min_iters: int = 5,
    time_budget_s: float = 0.5,
) -> dict[str, Any]:
    """CPU latency at batch 1 and throughput at ``batch_size``, in eval mode under ``torch.inference_mode``.

    Runs on a float copy of ``model`` with ``threads`` torch threads (the caller's thread setting is restored
    afterwards). Each batch size gets up to ``warmup`` warm-up calls, then timed calls (``time.perf_counter``)
    until ``iters`` calls or ``time_budget_s`` seconds, with at least ``min_iters`` calls. A small student at
    28x28 measures in about a second.

    Args:
        model: the network to time (left untouched).
        input_size: ``(channels, height, width)`` of one input image.
        batch_size: images per call for the throughput figure.
        threads: torch intra-op threads during the measurement; default: the current ``torch.get_num_threads()``.
        warmup: warm-up calls per batch size (bounded by the time budget too).
        iters: most timed calls per batch size.
        min_iters: fewest timed calls per batch size, even past the time budget.
        time_budget_s: seconds of timing per batch size after which no new call starts.

    Returns:
        ``cpu_latency_ms_bs1`` (median), ``cpu_latency_ms_bs1_p90``, ``cpu_latency_spread`` ((p90 - p10) /
        median at batch 1), ``cpu_samples_per_s`` (``batch_size`` / median call time), ``cpu_batch_size``,
        ``cpu_threads``.
    """
    size = _checked_input_size(input_size)
    _checked_count("batch size", batch_size)
    threads = torch.get_num_threads() if threads is None else _checked_count("threads", threads)
    cpu = torch.device("cpu")
    runner = _eval_copy(model, cpu).float()
    timing = {"warmup": warmup, "iters": iters, "min_iters": min_iters, "time_budget_s": time_budget_s}

    def timed(batch: torch.Tensor) -> list[float]:
        with torch.inference_mode():
            return _timed_calls(lambda: runner(batch), **timing)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        single = timed(_random_batch(1, size, cpu, torch.float32))
        batched = single if batch_size == 1 else timed(_random_batch(batch_size, size, cpu, torch.float32))
    finally:
        torch.set_num_threads(previous_threads)
    median_ms, p90_ms, spread = _latency_stats(single)
    return {
        "cpu_latency_ms_bs1": median_ms,
        "cpu_latency_ms_bs1_p90": p90_ms,
        "cpu_latency_spread": spread,
        "cpu_samples_per_s": batch_size / float(np.median(batched)),
        "cpu_batch_size": batch_size,
        "cpu_threads": threads,
    }


def gpu_fields_null() -> dict[str, None]:
    """Every GPU field set to ``None``: what a record carries when no CUDA device measured it."""
    return dict.fromkeys(GPU_FIELDS)


def gpu_benchmark(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch_size: int = 256,
    amp: bool = False,
    channels_last: bool = False,
    device: str | torch.device = "cuda",
    warmup: int = 10,
    iters: int = 200,
    min_iters: int = 10,
    time_budget_s: float = 1.0,
) -> dict[str, Any]:
    """GPU latency at batch 1 and throughput at ``batch_size``, in eval mode under ``torch.inference_mode``.

    Runs on a copy of ``model`` on ``device``. Every timed call is bracketed by ``torch.cuda.synchronize`` so
    the time covers the GPU work, not just the kernel launches. If ``batch_size`` does not fit in memory it is
    halved until it does; the batch size actually used is reported. Peak memory is torch's peak allocation during
    the throughput run (weights included). Without CUDA, every field is ``None`` (:func:`gpu_fields_null`).

    Args:
        model: the network to time (left untouched).
        input_size: ``(channels, height, width)`` of one input image.
        batch_size: images per call for the throughput figure.
        amp: run under ``torch.autocast`` with bfloat16.
        channels_last: put the model and inputs in ``torch.channels_last`` memory format.
        device: the CUDA device to measure.
        warmup: warm-up calls per batch size (bounded by the time budget too).
        iters: most timed calls per batch size.
        min_iters: fewest timed calls per batch size, even past the time budget.
        time_budget_s: seconds of timing per batch size after which no new call starts.

    Returns:
        ``gpu_name``, ``gpu_latency_ms_bs1``, ``gpu_latency_ms_bs1_p90``, ``gpu_latency_spread``,
        ``gpu_samples_per_s``, ``gpu_batch_size``, ``gpu_amp``, ``gpu_channels_last``, ``gpu_peak_mem_mb``.
    """
    size = _checked_input_size(input_size)
    _checked_count("batch size", batch_size)
    if not torch.cuda.is_available():
        return gpu_fields_null()
    target = torch.device(device)
    if target.type != "cuda":
        raise ConfigError(f"gpu_benchmark needs a CUDA device, got {str(target)!r}")
    runner = _eval_copy(model, target, channels_last)
    dtype = _param_dtype(runner)
    timing = {"warmup": warmup, "iters": iters, "min_iters": min_iters, "time_budget_s": time_budget_s}

    def timed(batch: torch.Tensor) -> list[float]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
        with torch.inference_mode(), autocast:
            return _timed_calls(lambda: runner(batch), synchronize=lambda: torch.cuda.synchronize(target), **timing)

    single = timed(_random_batch(1, size, target, dtype, channels_last))
    while True:
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(target)
            batched = timed(_random_batch(batch_size, size, target, dtype, channels_last))
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
    peak_mb = torch.cuda.max_memory_allocated(target) / _MIB
    median_ms, p90_ms, spread = _latency_stats(single)
    return {
        "gpu_name": torch.cuda.get_device_name(target),
        "gpu_latency_ms_bs1": median_ms,
        "gpu_latency_ms_bs1_p90": p90_ms,
        "gpu_latency_spread": spread,
        "gpu_samples_per_s": batch_size / float(np.median(batched)),
        "gpu_batch_size": batch_size,
        "gpu_amp": bool(amp),
        "gpu_channels_last": bool(channels_last),
        "gpu_peak_mem_mb": peak_mb,
    }


# ----------------------------------------------------------------------------------------------------------------
# all figures of one model, and their cache


def efficiency(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    cpu_batch_size: int = 64,
    gpu_batch_size: int = 256,
    amp: bool = False,
    channels_last: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every efficiency field of the run record (:data:`EFFICIENCY_FIELDS`) for ``model``.

    FLOPs are counted on the CPU and CPU figures are always measured; GPU figures are measured when ``device``
    is a CUDA device and CUDA is available, and are ``None`` otherwise. Each measurement works on its own copy of
    the model: the caller's model keeps its mode, device, ``requires_grad`` flags and memory format.

    Args:
        model: the deployed network (no adapters or auxiliary heads).
        input_size: ``(channels, height, width)`` of one input image.
        device: ``"cpu"``, or the CUDA device to measure the GPU figures on.
        cpu_batch_size: images per call for the CPU throughput.
        gpu_batch_size: images per call for the GPU throughput.
        amp: GPU timing under bf16 autocast.
        channels_last: GPU timing in channels-last memory format.
        threads: torch threads for the CPU timing; default: the current ``torch.get_num_threads()``.
    """
    size = _checked_input_size(input_size)
    gflops, gmacs = count_flops(model, size)
    figures: dict[str, Any] = {"params_m": count_params_m(model), "gmacs": gmacs, "gflops": gflops}
    figures.update(cpu_benchmark(model, size, batch_size=cpu_batch_size, threads=threads))
    if torch.device(device).type == "cuda":
        figures.update(gpu_benchmark(model, size, batch_size=gpu_batch_size, amp=amp, channels_last=channels_last,
                                     device=device))
    else:
        figures.update(gpu_fields_null())
    return figures


def efficiency_key(
    model_name: str,
    input_size: Sequence[int],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    cpu_batch_size: int = 64,
    gpu_batch_size: int = 256,
    amp: bool = False,
    channels_last: bool = False,
    network: str | None = None,
) -> dict[str, Any]:
    """The cache key of :func:`efficiency` for one architecture: everything that changes one of its figures.

    Holds the model name, input size, class count, the CPU and (for CUDA) GPU names, the thread count, both batch
    sizes, amp, channels_last, the torch and timm versions and :data:`MEASURE_PROTOCOL_VERSION`. Pass the same
    ``threads`` and batch sizes to :func:`efficiency` inside the ``compute`` callable. ``network``: the
    :func:`network_signature` of a deployed network that is not the bare student (absent from the key otherwise).
    """
    target = torch.device(device)
    measures_gpu = target.type == "cuda" and torch.cuda.is_available()
    return {
        "model": model_name,
        "input_size": list(_checked_input_size(input_size)),
        "num_classes": int(num_classes),
        "device": target.type,
        "cpu_name": cpu_name(),
        "gpu_name": torch.cuda.get_device_name(target) if measures_gpu else None,
        "threads": torch.get_num_threads() if threads is None else int(threads),
        "cpu_batch_size": int(cpu_batch_size),
        "gpu_batch_size": int(gpu_batch_size),
        "amp": bool(amp),
        "channels_last": bool(channels_last),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "protocol": MEASURE_PROTOCOL_VERSION,
        **({"network": network} if network is not None else {}),
    }


def network_signature(model: nn.Module) -> str:
    """A short digest of a network's structure (its ``repr``: every layer and its shapes), for :func:`efficiency_key`.

    A deployed network that is not the bare timm student (a method's head after its features) is measured under
    its own key, so it never shares cached figures with the student it was built from.
    """
    return hashlib.sha256(repr(model).encode()).hexdigest()[:16]
