"""The CIFAR knowledge-distillation model zoo, registered into timm's model registry on import.

The classic CIFAR-100 KD architectures (CRD / RepDistiller code base, reused by mdistiller) as timm models: after
``import kdbench.zoo``, ``timm.create_model("cifar_resnet8x4", num_classes=100)`` builds one, and every model
implements timm's feature interface (``feature_info``, ``forward_intermediates``, ``prune_intermediate_layers``,
``forward_features`` / ``forward_head``, ``get_classifier`` / ``reset_classifier``, ``features_only=True``).
No pretrained weights ship with the zoo. The modules are named ``cifar_*`` so that timm's module listings keep
apart: ``timm.list_models(module="cifar_resnet")`` lists the zoo's ResNets, ``module="resnet"`` only timm's own.
"""

from __future__ import annotations

from kdbench.zoo import cifar_mobilenetv2, cifar_resnet, cifar_shufflenet, cifar_vgg, cifar_wrn
from kdbench.zoo._base import CIFAR100_MEAN, CIFAR100_STD, CifarNet

#: every model the zoo registers, in the order of the KD tables (students and teachers by family)
ZOO_MODELS: tuple[str, ...] = (
    "cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
    "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4", "cifar_resnet50",
    "cifar_wrn_16_1", "cifar_wrn_16_2", "cifar_wrn_40_1", "cifar_wrn_40_2",
    "cifar_vgg8", "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19",
    "cifar_mobilenetv2", "cifar_shufflenetv1", "cifar_shufflenetv2",
)

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "ZOO_MODELS", "CifarNet", "cifar_mobilenetv2", "cifar_resnet", "cifar_shufflenet",
    "cifar_vgg", "cifar_wrn",
]
