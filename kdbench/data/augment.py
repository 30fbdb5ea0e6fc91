"""On-device augmentation and normalisation of whole batches of raw pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data.base import DatasetInfo


def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Randomly crop (with zero padding) and optionally flip a batch, one random draw per image.

    Each image is padded with ``padding`` zeros on every side and cut back to its size at an offset drawn
    uniformly from ``0..2*padding`` in each direction (torchvision's ``RandomCrop(size, padding)``); with ``flip``,
    it is then mirrored left-right with probability 0.5. Works on any dtype (pad raw pixels, not normalised ones).

    Args:
        images: NCHW batch.
        padding: zero padding in pixels; 0 skips the crop.
        flip: whether to flip horizontally at random.
        generator: the only source of randomness; its draws happen on its own device.

    Returns:
        The augmented batch, same shape, dtype and device.
    """
    count, channels, height, width = images.shape
    if count == 0 or (padding <= 0 and not flip):
        return images
    device = images.device
    padding = max(padding, 0)
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator, device=generator.device).to(device)
    padded_width = width + 2 * padding
    rows = offsets[0, :, None, None] + torch.arange(height, device=device)[None, :, None]
    cols = offsets[1, :, None, None] + torch.arange(width, device=device)[None, None, :]
    if flip:  # mirroring the crop = reading its columns right to left
        flipped = (torch.rand(count, generator=generator, device=generator.device) < 0.5).to(device)
        cols = torch.where(flipped[:, None, None], cols.flip(2), cols)
    source = (rows * padded_width + cols).view(count, 1, height * width).expand(count, channels, height * width)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    return torch.gather(padded.reshape(count, channels, -1), 2, source).view(count, channels, height, width)


class Normalizer:
    """uint8 (or small-int) pixels -> float32 normalised, with an optional bilinear resize."""

    def __init__(self, info: DatasetInfo, pixel_max: float, device: torch.device) -> None:
        mean = torch.tensor(info.mean, dtype=torch.float64)
        std = torch.tensor(info.std, dtype=torch.float64)
        self.scale = (1.0 / (pixel_max * std)).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.shift = (mean / std).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.resize_to = info.image_size if info.image_size != info.native_size else None

    def __call__(self, pixels: Tensor) -> Tensor:
        """Scale, normalise and (if the sizes differ) resize an NCHW batch of raw pixels."""
        images = pixels.to(torch.float32) * self.scale - self.shift
        if self.resize_to is not None:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode="bilinear",
                                   align_corners=False, antialias=False)
        return images
