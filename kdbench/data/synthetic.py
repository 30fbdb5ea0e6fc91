"""synthetic: uniformly random uint8 images with balanced labels, for speed tests and tests."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from kdbench.data.base import DataConfig, register_dataset
from kdbench.data.tensors import Arrays, ImageFormat, TensorSource
from kdbench.errors import ConfigError

_UNIFORM_UINT8_STD = math.sqrt((256**2 - 1) / 12) / 255  # std of a uniform 0..255 pixel, scaled to [0, 1]


@register_dataset("synthetic")
class SyntheticSource(TensorSource):
    """Uniformly random uint8 images with balanced labels (image ``i`` has class ``i % num_classes``).

    Options: ``num_samples`` (512), ``size`` (32), ``channels`` (3), ``num_classes`` (10) and ``seed`` (0, the seed
    of the pixel values). Augmented like natural images: flip, and a crop padded by ``size / 8`` (at least 1).
    """

    option_defaults: ClassVar[Mapping[str, Any]] = {
        "num_samples": 512, "size": 32, "channels": 3, "num_classes": 10, "seed": 0,
    }

    def options(self, config: DataConfig) -> dict[str, Any]:
        """See :meth:`DatasetSource.options`; sizes and counts must also be at least 1."""
        options = super().options(config)
        for key in ("num_samples", "size", "channels", "num_classes"):
            if options[key] < 1:
                raise ConfigError(f"dataset option {key!r} of synthetic must be at least 1, got {options[key]!r}")
        if options["num_samples"] < options["num_classes"]:  # image i has class i % num_classes
            raise ConfigError(f"synthetic: {options['num_samples']} images for {options['num_classes']} classes leave "
                              f"class {options['num_samples']} without images; every class needs images (raise "
                              "num_samples or lower num_classes)")
        return options

    def image_format(self, config: DataConfig) -> ImageFormat:
        """See :meth:`TensorSource.image_format`."""
        options = self.options(config)
        channels = options["channels"]
        return ImageFormat(num_classes=options["num_classes"], in_chans=channels, native_size=options["size"],
                            mean=(0.5,) * channels, std=(_UNIFORM_UINT8_STD,) * channels, flip=True,
                            crop_padding=max(1, round(options["size"] / 8)), pixel_max=255.0)

    def class_counts(self, config: DataConfig) -> tuple[np.ndarray, int | None]:
        """See :meth:`TensorSource.class_counts`."""
        options = self.options(config)
        return np.bincount(self._labels(options), minlength=options["num_classes"]), None

    def read(self, config: DataConfig) -> Arrays:
        """See :meth:`TensorSource.read`."""
        options = self.options(config)
        generator = torch.Generator().manual_seed(options["seed"])
        shape = (options["num_samples"], options["channels"], options["size"], options["size"])
        images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).numpy()
        return Arrays(images, self._labels(options))

    @staticmethod
    def _labels(options: Mapping[str, Any]) -> np.ndarray:
        return np.arange(options["num_samples"], dtype=np.int64) % options["num_classes"]
