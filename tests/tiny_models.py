"""Tiny timm models the tests need and timm does not ship, registered into timm's registry on import.

``test_deit_distilled``: timm's distilled DeiT (``VisionTransformerDistilled``: class and distillation tokens, two
heads) with patch 2, width 32, two blocks of two heads; seconds-long on digits' 8x8 images.
"""

from __future__ import annotations

import timm
import torch
from timm.models import register_model

TINY_DEIT = "test_deit_distilled"

if TINY_DEIT not in timm.list_models():

    @register_model
    def test_deit_distilled(pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        """A two-block distilled DeiT for seconds-long tests (weights only from a file: pretrained_cfg_overlay)."""
        args = {"patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, **kwargs}
        return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=pretrained, **args)
