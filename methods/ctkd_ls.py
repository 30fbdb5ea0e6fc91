"""CTKD on standardised logits: the logit-standardisation paper's CTKD setting as a preset of ``ctkd``."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.distiller import register_method, same_range
from kdbench.methods.ctkd import CurriculumTemperatureKD


@register_method("ctkd_ls")
class LogitStandardizedCTKD(CurriculumTemperatureKD):
    """Logit Standardization in Knowledge Distillation (Sun, Ren, Li, Wang, Cao, CVPR 2024), applied to CTKD.

    Paper: https://arxiv.org/abs/2403.01427
    CTKD (``ctkd``: a learnable global temperature behind a gradient-reversal layer with a cosine curriculum) on
    logits z-scored per sample, z' = (z - mean(z)) / (1e-7 + std(z)):
    loss = ce_weight * CE(z_s, y) + kd_weight * T² KL(softmax(z'_t / T) || softmax(z'_s / T)).
    Defaults are the authors' CIFAR-100 script (sunshangquan/logit-standardization-KD,
    ``CTKD/scripts/run_cifar_distill.sh``: ``-r 0.1 -a 9`` with CTKD's global temperature in (1, 21) and its
    10-epoch curriculum). That script passes no ``--logit_stand``, and its ``train_student.py`` picks the
    standardised KL exactly when the flag is absent, so its runs standardise.
    """

    @dataclass(frozen=True)
    class Params(CurriculumTemperatureKD.Params):
        """Hyperparameters of CTKD with logit standardisation.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
            min_temperature: lower bound of the temperature (``--t_start``).
            temperature_range: width of the temperature's range above its lower bound (``--t_end``).
            init: initial value of the raw parameter t (before the sigmoid).
            curriculum_epochs: epochs over which lambda rises from 0 to ``lambda_max`` (``--decay_loops``).
            lambda_max: final strength of the gradient reversal (``-decay_min``).
            standardize: z-score both logits before the temperature (the point of this preset).
        """

        ce_weight: float = same_range(CurriculumTemperatureKD.Params, "ce_weight", 0.1)
        kd_weight: float = same_range(CurriculumTemperatureKD.Params, "kd_weight", 9.0)
        min_temperature: float = same_range(CurriculumTemperatureKD.Params, "min_temperature", 1.0)
        temperature_range: float = same_range(CurriculumTemperatureKD.Params, "temperature_range", 20.0)
        init: float = same_range(CurriculumTemperatureKD.Params, "init", 1.0)
        curriculum_epochs: float = same_range(CurriculumTemperatureKD.Params, "curriculum_epochs", 10.0)
        lambda_max: float = same_range(CurriculumTemperatureKD.Params, "lambda_max", 1.0)
        standardize: bool = True
