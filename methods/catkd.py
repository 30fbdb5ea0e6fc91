"""CAT-KD: transfer of pooled, optionally normalised class activation maps.

Loss pieces only: the method class needs both networks' classifier weights and final maps before pooling, which
the harness does not offer yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_activation_maps(feature: Tensor, classifier_weight: Tensor) -> Tensor:
    """(B, K, H, W) class activation maps: the classifier weight as a 1x1 convolution, no bias, no ReLU.

    The authors' code keeps only ``fc.weight``, so the mean over positions of these maps are the network's logits
    without the classifier bias.
    """
    return torch.einsum("bchw,kc->bkhw", feature.float(), classifier_weight.float())


def catkd_loss(student_cams: Tensor, teacher_cams: Tensor, size: int, normalize: bool) -> Tensor:
    """Mean over B·K·r² of the squared difference of the CAMs average-pooled to r x r (``size``).

    With ``normalize`` each pooled map is L2-normalised over its r² positions first (``IF_NORMALIZE``).
    """
    s = F.adaptive_avg_pool2d(student_cams.float(), size).flatten(2)
    t = F.adaptive_avg_pool2d(teacher_cams.float(), size).flatten(2)
    if normalize:
        s, t = F.normalize(s, dim=2), F.normalize(t, dim=2)
    return (s - t).pow(2).mean()
