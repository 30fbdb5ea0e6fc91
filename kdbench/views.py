"""Extra augmented views of a training batch, made on the training device (the ``extra_views`` of a method).

A method that trains on a second view of each batch (MLKD's weak and strong views) names it in
``Distiller.extra_views``; the engine makes each view once per batch, from the main view's images, with a
generator of its own (seeded by the run seed and the view's name, so the main data stream, and with it every
other member of a cohort, is unchanged), and runs the teacher on it once per cohort.

A view maker is a function ``(images, info, generator) -> images``: normalised NCHW inputs in, normalised inputs
of the same shape out. New ones are registered with ``VIEW_AUGMENTATIONS.register(name, fn)``.

``strong`` is RandAugment (Cubuk et al., 2020, https://arxiv.org/abs/1909.13719) done per sample on a batch: each
image gets ``num_ops`` operations drawn uniformly (with replacement) from identity, auto-contrast, brightness,
colour, contrast, sharpness, posterize, solarize, rotate, shear x/y and translate x/y, at magnitude 9 of 30 with a
random sign, as torchvision's ``RandAugment()`` defaults; histogram equalisation is left out (no batched form).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import DatasetInfo
from kdbench.registry import Registry

ViewMaker = Callable[[Tensor, DatasetInfo, torch.Generator], Tensor]
VIEW_AUGMENTATIONS: Registry[ViewMaker] = Registry("view augmentation")

NUM_OPS = 2
MAGNITUDE = 9 / 30


def view_seed(seed: int, name: str) -> int:
    """The seed of view ``name``'s generator in a run seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 3:
        return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return x.mean(1, keepdim=True).expand_as(x)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 1)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrix(batch: int, device: torch.device, **entries: Tensor) -> Tensor:
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    for key, value in entries.items():
        theta[:, int(key[1]), int(key[2])] = value
    return theta


def _sharpen(x: Tensor, factor: Tensor) -> Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(x.shape[1], 1, 3, 3),
                       groups=x.shape[1])
    return _blend(x, blurred, factor)


def _autocontrast(x: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1.0 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x)


def _operations(x: Tensor, sign: Tensor) -> list[Tensor]:
    """Every operation applied to the whole batch, at the fixed magnitude with a per-sample sign."""
    batch, device, m = x.shape[0], x.device, MAGNITUDE
    factor = 1.0 + sign * 0.9 * m
    bits = 8 - int(round(4 * m))
    levels = 2.0**bits - 1
    angle = sign * math.radians(30.0) * m
    cos, sin = torch.cos(angle), torch.sin(angle)
    return [
        x,
        _autocontrast(x),
        _blend(x, torch.zeros_like(x), factor),
        _blend(x, _gray(x), factor),
        _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor),
        _sharpen(x, factor),
        torch.floor(x * levels + 1e-6) / levels,
        torch.where(x >= 1.0 - m, 1.0 - x, x),
        _affine(x, _matrix(batch, device, t00=cos, t01=-sin, t10=sin, t11=cos)),
        _affine(x, _matrix(batch, device, t01=sign * 0.3 * m)),
        _affine(x, _matrix(batch, device, t10=sign * 0.3 * m)),
        _affine(x, _matrix(batch, device, t02=sign * 2 * 0.45 * m)),
        _affine(x, _matrix(batch, device, t12=sign * 2 * 0.45 * m)),
    ]


def strong_view(images: Tensor, info: DatasetInfo, generator: torch.Generator) -> Tensor:
    """RandAugment-style strong view of a normalised batch: ``NUM_OPS`` random operations per sample."""
    mean = torch.tensor(info.mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.float() * std + mean).clamp(0, 1)
    batch = x.shape[0]
    for _ in range(NUM_OPS):
        choice = torch.randint(0, 13, (batch,), generator=generator, device=images.device)
        sign = torch.where(torch.rand(batch, generator=generator, device=images.device) < 0.5, -1.0, 1.0)
        candidates = torch.stack(_operations(x, sign))
        x = candidates[choice, torch.arange(batch, device=images.device)]
    return ((x - mean) / std).to(images.dtype).contiguous(memory_format=torch.contiguous_format)


VIEW_AUGMENTATIONS.register("strong", strong_view)

__all__ = ["VIEW_AUGMENTATIONS", "ViewMaker", "strong_view", "view_seed"]
