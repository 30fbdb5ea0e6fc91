"""KD on standardised logits: the logit-standardisation paper's KD setting as a preset of ``kd``."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.distiller import register_method, same_range
from kdbench.methods.kd import LogitKD


@register_method("kd_ls")
class LogitStandardizedKD(LogitKD):
    """Logit Standardization in Knowledge Distillation (Sun, Ren, Li, Wang, Cao, CVPR 2024).

    Paper: https://arxiv.org/abs/2403.01427
    KD with both logits z-scored per sample before the temperature, z' = (z - mean(z)) / (1e-7 + std(z)), so that
    the student matches the teacher's logit relations rather than their range:
    loss = ce_weight * CE(z_s, y) + kd_weight * T² * KL(softmax(z'_t / T) || softmax(z'_s / T)).
    Defaults are the authors' CIFAR-100 KD setting (sunshangquan/logit-standardization-KD: ``--logit-stand
    --base-temp 2 --kd-weight 9`` with CE 0.1, ``mdistiller/engine/cfg.py`` and ``tools/train.py``). Its logs
    (``logs/KD/kd,TEACHER,STUDENT,T,KD_WEIGHT.txt``) use T 3 for vgg13 -> vgg8 and vgg13 -> MobileNetV2, T 4 with
    weight 12 for resnet110 -> resnet20 and T 3 with weight 1 for ResNet50 -> MobileNetV2.
    """

    @dataclass(frozen=True)
    class Params(LogitKD.Params):
        """Hyperparameters of KD with logit standardisation.

        Attributes:
            temperature: base temperature T applied to the standardised logits.
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
            standardize: z-score both logits before the temperature (the point of this preset).
        """

        temperature: float = same_range(LogitKD.Params, "temperature", 2.0)
        ce_weight: float = same_range(LogitKD.Params, "ce_weight", 0.1)
        kd_weight: float = same_range(LogitKD.Params, "kd_weight", 9.0)
        standardize: bool = True
