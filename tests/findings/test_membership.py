"""Membership inference from the in/out losses: AUC and d' against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from memaudit.findings.membership import membership_scores


def _brute_membership(losses, inclusion):
    auc, dprime = [], []
    for lt, pt in zip(losses, inclusion, strict=True):
        ok = np.isfinite(lt)
        lin, lout = lt[ok & pt], lt[ok & ~pt]
        if len(lin) and len(lout):
            # label 1 = out-model: AUC = P(out loss > in loss), ties 1/2
            y = np.r_[np.zeros(len(lin)), np.ones(len(lout))]
            auc.append(roc_auc_score(y, np.r_[lin, lout]))
        else:
            auc.append(np.nan)
        if len(lin) > 1 and len(lout) > 1:
            pooled = np.sqrt((lin.var(ddof=1) + lout.var(ddof=1)) / 2)
            dprime.append((lout.mean() - lin.mean()) / pooled if pooled > 0 else np.nan)
        else:
            dprime.append(np.nan)
    return np.array(auc), np.array(dprime)


def test_membership_scores_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n, m = 40, 30
    inclusion = rng.random((n, m)) < 0.5
    # Rounded losses make many ties; a real in/out shift makes AUCs spread over (0.5, 1].
    losses = np.round(rng.normal(size=(n, m)) - rng.random((n, 1)) * inclusion, 1)
    got = membership_scores(losses, inclusion)
    auc, dprime = _brute_membership(losses, inclusion)
    np.testing.assert_allclose(got["mia_auc"], auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["mia_dprime"], dprime, rtol=1e-10)
    assert got["mia_auc"].std() > 0.05  # not a degenerate all-0.5 case
    np.testing.assert_array_equal(got["n_in"], inclusion.sum(axis=1))


def test_membership_scores_nan_losses_mask_and_empty_sides():
    rng = np.random.default_rng(1)
    n, m = 12, 20
    inclusion = rng.random((n, m)) < 0.5
    inclusion[0] = True  # no out-models: AUC undefined
    inclusion[1] = False  # no in-models
    inclusion[2] = False
    inclusion[2, 3] = True  # one in-model: AUC defined, d' undefined (no variance)
    losses = rng.normal(size=(n, m)) - 0.5 * inclusion
    losses[3, :5] = np.nan  # missing losses are left out, not ranked
    losses[4, 7] = np.inf
    mask = np.ones(m, dtype=bool)
    mask[-2:] = False
    got = membership_scores(losses, inclusion, model_mask=mask)
    auc, dprime = _brute_membership(losses[:, mask], inclusion[:, mask])
    assert np.isnan(got["mia_auc"][:2]).all()
    assert np.isfinite(got["mia_auc"][2]) and np.isnan(got["mia_dprime"][2])
    np.testing.assert_allclose(got["mia_auc"], auc, atol=1e-12)
    np.testing.assert_allclose(got["mia_dprime"], dprime, rtol=1e-10)
    with pytest.raises(ValueError):
        membership_scores(losses, inclusion[:, :5])


def test_membership_scores_in_row_blocks_equal_row_by_row():
    rng = np.random.default_rng(12)
    n, m = 2_100, 1_000  # more than one row block
    inclusion = rng.random((n, m)) < 0.5
    losses = rng.gamma(2.0, 1.0, size=(n, m)).round(1) - 0.3 * inclusion  # ties too
    losses[2_050, 7] = np.nan
    full = membership_scores(losses, inclusion)
    rows = [0, 1_999, 2_000, 2_050, 2_099]
    auc, dprime = _brute_membership(losses[rows], inclusion[rows])
    np.testing.assert_allclose(full["mia_auc"][rows], auc, rtol=1e-12)
    np.testing.assert_allclose(full["mia_dprime"][rows], dprime, rtol=1e-12)
    assert full["n_in"][2_050] + full["n_out"][2_050] == m - 1
