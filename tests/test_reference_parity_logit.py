"""Logit-family losses against the values the authors' own code computes on fixed inputs (``tests/reference``).

Each case names its reference key and the implementation that key was computed with (``source`` in
``values.json``); the test checks that source too, so the comment cannot drift from the data. The pure loss
functions are checked, and each method's ``losses(step)`` on a Step built from the same inputs, with the
protocol's loss weights set to 1 through ``Params`` (and DKD's warm-up ramp at 1).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from kdbench.distiller import Step, construct_method, get_method
from kdbench.losses import kd_loss, standardize_logits
from kdbench.methods.dist import dist_loss
from kdbench.methods.dkd import dkd_loss, dkd_terms
from kdbench.methods.nkd import nkd_loss
from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER
from tests.reference import RTOL, expected, inputs, values


def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = inputs()
    return x["logits_s"].clone(), x["logits_t"].clone(), x["target"].clone()


def z(t: torch.Tensor) -> torch.Tensor:
    return standardize_logits(t)


# (key, the key's primary source in values.json, the kdbench function computing it)
FUNCTIONS = [
    # kd_T4: megvii-research/mdistiller:mdistiller/distillers/KD.py:kd_loss
    ("kd_T4", "megvii-research/mdistiller:mdistiller/distillers/KD.py:kd_loss",
     lambda s, t, y: kd_loss(s, t, 4.0)),
    # dkd_a1_b8_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss
    ("dkd_a1_b8_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     lambda s, t, y: dkd_loss(s, t, y, 1.0, 8.0, 4.0)),
    # dkd_tckd_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss (alpha 1, beta 0)
    ("dkd_tckd_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     lambda s, t, y: dkd_terms(s, t, y, 4.0)[0]),
    # dkd_nckd_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss (alpha 0, beta 1)
    ("dkd_nckd_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     lambda s, t, y: dkd_terms(s, t, y, 4.0)[1]),
    # dist_b1_g1_T1: hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(beta=1,gamma=1,tau=1)
    ("dist_b1_g1_T1", "hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(beta=1,gamma=1,tau=1)",
     lambda s, t, y: dist_loss(s, t, 1.0, 1.0, 1.0)),
    # dist_T4: hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(tau=4)
    ("dist_T4", "hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(tau=4)",
     lambda s, t, y: dist_loss(s, t, 1.0, 1.0, 4.0)),
    # logit_std_kd_T2: sunshangquan/logit-standardization-KD:mdistiller/distillers/KD.py:kd_loss(logit_stand=True)
    ("logit_std_kd_T2", "sunshangquan/logit-standardization-KD:mdistiller/distillers/KD.py:kd_loss(logit_stand=True)",
     lambda s, t, y: kd_loss(z(s), z(t), 2.0)),
    # logit_std_dkd_a1_b8_T2: sunshangquan/logit-standardization-KD:mdistiller/distillers/DKD.py:dkd_loss(...=True)
    ("logit_std_dkd_a1_b8_T2",
     "sunshangquan/logit-standardization-KD:mdistiller/distillers/DKD.py:dkd_loss(logit_stand=True)",
     lambda s, t, y: dkd_loss(z(s), z(t), y, 1.0, 8.0, 2.0)),
    # nkd_T1_g1.5: yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=1,gamma=1.5)
    ("nkd_T1_g1.5", "yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=1,gamma=1.5)",
     lambda s, t, y: nkd_loss(s, t, y, 1.0, 1.5)),
    # nkd_T3_g3.5: yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=3,gamma=3.5)
    ("nkd_T3_g3.5", "yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=3,gamma=3.5)",
     lambda s, t, y: nkd_loss(s, t, y, 3.0, 3.5)),
]


@pytest.mark.parametrize(("key", "source", "fn"), FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_loss_function_matches_the_authors_code(key, source, fn):
    assert values()[key]["source"] == source
    s, t, y = logits()
    assert fn(s, t, y).item() == pytest.approx(expected(key), rel=RTOL)


# (key, its source, method, Params overrides that set the protocol weights to 1, the loss terms summed, epoch)
METHODS: list[tuple[str, str, str, dict[str, Any], tuple[str, ...], int]] = [
    # kd_T4: megvii-research/mdistiller:mdistiller/distillers/KD.py:kd_loss (kd_weight 0.9 set to 1)
    ("kd_T4", "megvii-research/mdistiller:mdistiller/distillers/KD.py:kd_loss",
     "kd", {"kd_weight": 1.0}, ("loss_kd",), 0),
    # dkd_a1_b8_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss (defaults; epoch 20: ramp 1)
    ("dkd_a1_b8_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     "dkd", {}, ("loss_tckd", "loss_nckd"), 19),
    # dkd_tckd_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss (the TCKD term, alpha 1)
    ("dkd_tckd_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     "dkd", {}, ("loss_tckd",), 19),
    # dkd_nckd_T4: megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss (the NCKD term, beta 1)
    ("dkd_nckd_T4", "megvii-research/mdistiller:mdistiller/distillers/DKD.py:dkd_loss",
     "dkd", {"beta": 1.0}, ("loss_nckd",), 30),
    # dist_b1_g1_T1: hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(beta=1,gamma=1,tau=1)
    ("dist_b1_g1_T1", "hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(beta=1,gamma=1,tau=1)",
     "dist", {"kd_weight": 1.0, "temperature": 1.0}, ("loss_kd",), 0),
    # dist_T4: hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(tau=4) (kd_weight 2 set to 1)
    ("dist_T4", "hunto/image_classification_sota:lib/models/losses/dist_kd.py:DIST(tau=4)",
     "dist", {"kd_weight": 1.0}, ("loss_kd",), 0),
    # logit_std_kd_T2: sunshangquan/logit-standardization-KD:mdistiller/distillers/KD.py:kd_loss(logit_stand=True)
    ("logit_std_kd_T2", "sunshangquan/logit-standardization-KD:mdistiller/distillers/KD.py:kd_loss(logit_stand=True)",
     "kd_ls", {"kd_weight": 1.0}, ("loss_kd",), 0),
    # the same key through kd's standardize option
    ("logit_std_kd_T2", "sunshangquan/logit-standardization-KD:mdistiller/distillers/KD.py:kd_loss(logit_stand=True)",
     "kd", {"kd_weight": 1.0, "temperature": 2.0, "standardize": True}, ("loss_kd",), 0),
    # logit_std_dkd_a1_b8_T2: sunshangquan/logit-standardization-KD:mdistiller/distillers/DKD.py:dkd_loss(...=True)
    # (dkd_ls's alpha 9 and beta 72 are 1 and 8 times the KD weight 9, set back to 1 and 8)
    ("logit_std_dkd_a1_b8_T2",
     "sunshangquan/logit-standardization-KD:mdistiller/distillers/DKD.py:dkd_loss(logit_stand=True)",
     "dkd_ls", {"alpha": 1.0, "beta": 8.0}, ("loss_tckd", "loss_nckd"), 19),
    # the same key through dkd's standardize option
    ("logit_std_dkd_a1_b8_T2",
     "sunshangquan/logit-standardization-KD:mdistiller/distillers/DKD.py:dkd_loss(logit_stand=True)",
     "dkd", {"temperature": 2.0, "standardize": True}, ("loss_tckd", "loss_nckd"), 19),
    # nkd_T1_g1.5: yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=1,gamma=1.5) (defaults)
    ("nkd_T1_g1.5", "yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=1,gamma=1.5)",
     "nkd", {}, ("loss_kd",), 0),
    # nkd_T3_g3.5: yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=3,gamma=3.5) (its CIFAR-100 config)
    ("nkd_T3_g3.5", "yzd-v/cls_KD:mmcls/models/dis_losses/nkd.py:NKDLoss(temp=3,gamma=3.5)",
     "nkd", {"temperature": 3.0, "gamma": 3.5}, ("loss_kd",), 0),
    # kd_T4 through CTKD with its learnable temperature initialised at T = 4 (CTKD's DistillKL is this KL · T²)
    ("kd_T4", "megvii-research/mdistiller:mdistiller/distillers/KD.py:kd_loss",
     "ctkd", {"kd_weight": 1.0, "init": math.log(3 / 17)}, ("loss_kd",), 0),
]


def reference_step(epoch: int) -> Step:
    s, t, y = logits()
    return Step(images=torch.zeros(len(y), 3, 32, 32), labels=y, indices=torch.arange(len(y)), student_logits=s,
                teacher_logits=t, epoch=epoch, epochs=240, student_heads=(s,))


@pytest.mark.parametrize(("key", "source", "name", "overrides", "terms", "epoch"), METHODS,
                         ids=[f"{c[2]}-{c[0]}" for c in METHODS])
def test_method_losses_match_the_authors_code(key, source, name, overrides, terms, epoch):
    assert values()[key]["source"] == source
    cls = get_method(name)
    method = construct_method(cls, cls.Params(**overrides), STUDENT, TEACHER, DATA, CONTEXT)
    got = method.losses(reference_step(epoch))
    assert sum(got[term] for term in terms).item() == pytest.approx(expected(key), rel=RTOL)
