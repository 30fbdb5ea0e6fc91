"""DKD on standardised logits: the logit-standardisation paper's DKD setting as a preset of ``dkd``."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.distiller import register_method, same_range
from kdbench.methods.dkd import DecoupledKD


@register_method("dkd_ls")
class LogitStandardizedDKD(DecoupledKD):
    """Logit Standardization in Knowledge Distillation (Sun, Ren, Li, Wang, Cao, CVPR 2024), applied to DKD.

    Paper: https://arxiv.org/abs/2403.01427
    DKD (``dkd``) with both logits z-scored per sample before the temperature, z' = (z - mean(z)) / (1e-7 + std(z)):
    loss = ce_weight * CE(z_s, y) + ramp * (alpha * TCKD(z'_s, z'_t) + beta * NCKD(z'_s, z'_t)).
    Defaults are the authors' command for resnet32x4 -> resnet8x4 (sunshangquan/logit-standardization-KD README:
    ``--logit-stand --base-temp 2 --kd-weight 9`` on the DKD config, whose ``tools/train.py`` multiplies DKD's
    alpha 1 and beta 8 by the KD weight 9): CE 1, alpha 9, beta 72, T 2, the 20-epoch warm-up. Its logs
    (``logs/DKD/dkd,TEACHER,STUDENT,T,KD_WEIGHT[,BETA].txt``) give other pairs other values, e.g. T 3, weight 18,
    beta 2 (alpha 18, beta 36) for resnet56 -> resnet20; T 2, weight 15, beta 2 for resnet110 -> resnet32,
    vgg13 -> vgg8 and ResNet50 -> MobileNetV2; T 2, weight 12, beta 2 for wrn_40_2 -> wrn_16_2 / wrn_40_1;
    T 2, weight 9, beta 8 for resnet32x4 -> ShuffleNetV2; T 3, weight 9, beta 2 for vgg13 -> MobileNetV2.
    """

    @dataclass(frozen=True)
    class Params(DecoupledKD.Params):
        """Hyperparameters of DKD with logit standardisation.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            alpha: weight of TCKD (DKD's alpha times the KD weight).
            beta: weight of NCKD (DKD's beta times the KD weight).
            temperature: base temperature T applied to the standardised logits.
            warmup: epochs (of the paper's, counted from 1) of the linear ramp of the distillation terms.
            standardize: z-score both logits before the temperature (the point of this preset).
        """

        ce_weight: float = same_range(DecoupledKD.Params, "ce_weight", 1.0)
        alpha: float = same_range(DecoupledKD.Params, "alpha", 9.0)
        beta: float = same_range(DecoupledKD.Params, "beta", 72.0)
        temperature: float = same_range(DecoupledKD.Params, "temperature", 2.0)
        warmup: float = same_range(DecoupledKD.Params, "warmup", 20.0)
        standardize: bool = True
