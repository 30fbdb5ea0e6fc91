"""The first feature methods (``at``, ``fitnets``) against the values the authors' own code computes.

Fixed inputs and values from ``tests/reference`` (see its README); each case names its key and checks the key's
recorded source, so the comment cannot drift from the data.
"""

from __future__ import annotations

import pytest

from kdbench.methods.at import attention_loss
from kdbench.methods.fitnets import hint_loss
from tests.reference import RTOL, expected, inputs, values


def test_at_three_stages_matches_mdistiller():
    # at_p2_3stages: megvii-research/mdistiller:mdistiller/distillers/AT.py:at_loss (sum over the 3 stages)
    assert values()["at_p2_3stages"]["source"] == "megvii-research/mdistiller:mdistiller/distillers/AT.py:at_loss"
    x = inputs()
    got = sum(float(attention_loss(s, t)) for s, t in zip(x["feats_s"], x["feats_t"], strict=True))
    assert got == pytest.approx(expected("at_p2_3stages"), rel=RTOL)


def test_at_pools_the_larger_map_before_the_attention_map_as_mdistiller():
    # at_p2_stride_mismatch: megvii-research/mdistiller:mdistiller/distillers/AT.py:at_loss (8x8 vs 4x4 maps)
    assert values()["at_p2_stride_mismatch"]["source"].startswith("megvii-research/mdistiller")
    x = inputs()
    got = float(attention_loss(x["feat_s_big"], x["feat_t_small"]))
    assert got == pytest.approx(expected("at_p2_stride_mismatch"), rel=RTOL)


def test_fitnets_hint_matches_repdistiller():
    # fitnets_hint_mse: HobbitLong/RepDistiller:distiller_zoo/FitNet.py:HintLoss
    assert values()["fitnets_hint_mse"]["source"] == "HobbitLong/RepDistiller:distiller_zoo/FitNet.py:HintLoss"
    x = inputs()
    assert float(hint_loss(x["hint_s"], x["hint_t"])) == pytest.approx(expected("fitnets_hint_mse"), rel=RTOL)
