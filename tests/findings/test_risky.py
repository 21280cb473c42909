"""Risky unique records: flags, reasons and ranking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memaudit.config import FindingsConfig
from memaudit.estimate.influence import InfluenceResult
from memaudit.findings.risky import risky_unique_records


def _fake_result(self_influence, self_se):
    n = len(self_influence)
    return InfluenceResult(
        estimator="test",
        n_models=100,
        top_k=1,
        self_influence=np.asarray(self_influence, dtype=float),
        self_se=np.asarray(self_se, dtype=float),
        n_in=np.full(n, 50),
        n_out=np.full(n, 50),
        top_idx=np.arange(n)[:, None],
        top_val=np.asarray(self_influence, dtype=float)[:, None],
        top_se=np.asarray(self_se, dtype=float)[:, None],
        margin=np.full(n, np.nan),
        margin_defined=np.zeros(n, dtype=bool),
        top1_is_self=np.ones(n, dtype=bool),
    )


def test_risky_unique_records_flags_reasons_and_ranking():
    n = 20
    self_infl = np.arange(n, dtype=float)
    self_infl[0] = np.nan  # undefined: never flagged, never crashes
    se = np.full(n, 0.1)
    se[19] = 10.0  # top self-influence but not significant (z = 1.9)
    result = _fake_result(self_infl, se)
    cluster_of = np.full(n, -1)
    cluster_of[[16, 17]] = 0
    bleu = np.full(n, np.nan)
    bleu[[3, 16]] = [0.45, 0.9]  # 16 is clustered: reported with its cluster, not here
    auc = np.full(n, np.nan)
    auc[7] = 0.95

    found = risky_unique_records(result, cluster_of, FindingsConfig(), bleu, auc)
    # risk = percentile + BLEU gain + (2 AUC - 1): 7 -> 7/19 + 0.9, 18 -> 18/19, 3 -> 3/19 + 0.45
    assert [f.index for f in found] == [7, 18, 3]
    by = {f.index: f for f in found}
    assert by[7].risk_score == pytest.approx(7 / 19 + 0.9)
    assert by[7].reasons == ["membership-inference AUC 0.95"]
    assert by[3].reasons == ["BLEU gain 0.45 when trained on: extractable"]
    assert len(by[18].reasons) == 1 and "self-influence 18.00" in by[18].reasons[0]
    assert "z = 180.0" in by[18].reasons[0] and "top 10%" in by[18].reasons[0]

    # Missing inputs: no BLEU or membership flags, reasons or zeros.
    only_self = risky_unique_records(result, cluster_of)
    assert [f.index for f in only_self] == [18]
    text = " ".join(r for f in only_self for r in f.reasons)
    assert "BLEU" not in text and "membership" not in text

    capped = risky_unique_records(
        result, cluster_of, dataclasses.replace(FindingsConfig(), top_records=1), bleu, auc
    )
    assert [f.index for f in capped] == [7]
    with pytest.raises(ValueError):
        risky_unique_records(result, cluster_of[:5])


def test_risky_membership_flag_uses_lira_exposure_when_given():
    """The calibrated LiRA exposure replaces the per-record AUC for the membership flag: a high
    AUC alone no longer flags; lira_tpr >= 0.5 does, and adds lira_tpr to the risk."""
    n = 20
    result = _fake_result(np.zeros(n), np.full(n, 1.0))  # no self-influence flags (z = 0)
    cluster_of = np.full(n, -1)
    auc = np.full(n, 0.6)
    auc[7] = 0.99
    lira = np.zeros(n)
    lira[[4, 9]] = [0.8, 0.4]
    found = risky_unique_records(result, cluster_of, FindingsConfig(), None, auc, lira_tpr=lira)
    assert [f.index for f in found] == [4]
    assert found[0].risk_score == pytest.approx(1.0 + 0.8)  # percentile (all tie: 1) + 0.8
    assert "LiRA at 0.1% FPR calls it a member in 80%" in found[0].reasons[0]
    assert "per-record AUC 0.60" in found[0].reasons[0]
    without = risky_unique_records(result, cluster_of, FindingsConfig(), None, auc)
    assert [f.index for f in without] == [7]
