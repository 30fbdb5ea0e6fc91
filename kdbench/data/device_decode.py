"""Decoding on the data device: JPEG files decoded, cropped, flipped and resized where the model runs.

The ``imagefolder`` / ``imagenet`` option ``decode=device``: the DataLoader's workers only read each file's bytes;
the batch is decoded by torchvision's JPEG decoder on the data device (nvJPEG on a GPU, libjpeg on the CPU), and
the RandomResizedCrop and flip (training) or the resize and centre crop (evaluation) run there as tensor operations.
The crop box and the flip of each training image come from ``random.Random(seed)`` exactly as in the PIL path, so
the two paths see the same regions; the pixels differ slightly (another decoder and resampler), which is why the
option is part of the run id.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kdbench.data.base import first_line
from kdbench.errors import DataError

if TYPE_CHECKING:
    from kdbench.data.imagefolder import Preprocessing

_JPEG_MAGIC = b"\xff\xd8"

CropBox = Callable[[int, int, random.Random], tuple[int, int, int, int]]


def read_bytes(path: str) -> Tensor:
    """The bytes of the file at ``path`` as a 1-D uint8 tensor (what the loader's workers do on this path)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"imagefolder: cannot read {path}: {first_line(error)}") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_images(raw: Sequence[Tensor], paths: Sequence[str], device: torch.device) -> list[Tensor]:
    """Decode files to RGB uint8 CHW tensors on ``device``: JPEGs in one batched call there, others on the CPU.

    Raises:
        DataError: a file that is not a readable image, named by its path.
    """
    with warnings.catch_warnings():  # torchvision 0.29 notes that TorchCodec will take over its image decoders
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode(raw, paths, device)


def _decode(raw: Sequence[Tensor], paths: Sequence[str], device: torch.device) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    images: list[Tensor | None] = [None] * len(raw)
    jpegs = [i for i, data in enumerate(raw) if bytes(data[:2].tolist()) == _JPEG_MAGIC]
    if jpegs and device.type == "cuda":
        try:
            decoded = decode_jpeg([raw[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded, strict=True):
                images[i] = image
        except RuntimeError:
            images = [None] * len(raw)  # decode one by one below, so that a broken file is named
    for i, data in enumerate(raw):
        if images[i] is None:
            try:
                images[i] = decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
            except RuntimeError as error:
                raise DataError(f"imagefolder: cannot read {paths[i]}: {first_line(error)}") from None
    return [image for image in images if image is not None]


def decode_crops(raw: Sequence[Tensor], seeds: Sequence[int], paths: Sequence[str], size: int,
                 preprocessing: Preprocessing, device: torch.device, crop_box: CropBox) -> Tensor:
    """A batch of ``size`` x ``size`` uint8 crops on ``device`` (NCHW) from undecoded files.

    Args:
        raw: each file's bytes.
        seeds: per image, the seed of its crop and flip; a negative seed takes the evaluation resize and centre crop.
        paths: the files' paths, for messages.
        size: the side of the crops.
        preprocessing: the interpolation and the evaluation crop fraction.
        device: where the decoding and the crops run.
        crop_box: the RandomResizedCrop box ``(top, left, height, width)`` of an image's width and height, drawn
            from a ``random.Random`` (the PIL path's own function, so that both paths crop the same regions).
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(preprocessing.interpolation)
    out = torch.empty(len(raw), 3, size, size, dtype=torch.uint8, device=device)
    for index, (image, seed) in enumerate(zip(decode_images(raw, paths, device), seeds, strict=True)):
        height, width = image.shape[-2:]
        if seed >= 0:
            rng = random.Random(seed)
            top, left, box_height, box_width = crop_box(width, height, rng)
            crop = TF.resized_crop(image, top, left, box_height, box_width, [size, size], interpolation=mode,
                                   antialias=True)
            if rng.random() < 0.5:
                crop = crop.flip(-1)
        else:
            resized = TF.resize(image, int(size / preprocessing.crop_fraction), interpolation=mode, antialias=True)
            crop = TF.center_crop(resized, [size, size])
        out[index] = crop
    return out
