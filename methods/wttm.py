"""Weighted transformed teacher matching: TTM with each sample weighted by the teacher's power sum."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdbench.distiller import register_method, tunable, valid
from kdbench.methods.ttm import TransformedTeacherMatching


@register_method("wttm")
class WeightedTransformedTeacherMatching(TransformedTeacherMatching):
    """Knowledge Distillation Based on Transformed Teacher Matching (Zheng, Yang, ICLR 2024), weighted (WTTM).

    Paper: https://arxiv.org/abs/2402.11148
    loss = ce_weight * CE(z_s, y) + kd_weight * mean_b [sum_c p_t^l] * KL(q || softmax(z_s)), q = p_t^l / sum(p_t^l):
    TTM (see ``ttm``) whose per-sample term is weighted by the power sum of the teacher's probabilities, so samples
    with a flatter (less confident) teacher weigh more. Defaults: l = 0.2 and weight 4 are the WTTM settings of
    the authors' README (zkxufo/TTM, its WTTM + CRD example ``--add wttm --ttm_l 0.2 -a 4``); the paper's appendix
    A.4 tunes the weight per teacher-student pair. Reference keys ``wttm_l0.1``, ``wttm_l0.2``
    (``distiller_zoo/wttm.py``).
    """

    @dataclass(frozen=True)
    class Params(TransformedTeacherMatching.Params):
        """Hyperparameters of WTTM.

        Attributes:
            exponent: l, the power of the teacher's probabilities (1 / temperature; ``--ttm_l``).
            ce_weight: weight of the cross-entropy with the labels (``-r``).
            kd_weight: weight of the WTTM term.
            weighted: weight each sample by the power sum of the teacher's probabilities (the point of WTTM).
        """

        exponent: float = field(default=0.2, metadata=valid(gt=0) | tunable(0.05, 1.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=4.0, metadata=valid(ge=0) | tunable(0.5, 50.0, log=True))
        weighted: bool = True
