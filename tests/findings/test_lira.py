"""LiRA from the ensemble: against a plain per-pair reference, against the closed form for
Gaussians, leave-one-model-out, and the dataset-level metrics."""

import numpy as np
import pytest
from scipy.stats import norm

from memaudit.findings.lira import (
    fit_blocks,
    lira_findings,
    lira_scores,
    lira_statistic,
    record_exposure,
    roc_curve,
    roc_metrics,
    tpr_at,
)


def synthetic(n, m, d, seed=0, sd_in=1.0):
    """Per-record offsets (uncalibrated across records) + N(0, 1) out, N(d, sd_in^2) in."""
    rng = np.random.default_rng(seed)
    inclusion = rng.random((n, m)) < 0.5
    offset = rng.normal(0, 3, n)[:, None]
    stat = offset + np.where(
        inclusion, d + sd_in * rng.normal(size=(n, m)), rng.normal(size=(n, m))
    )
    return stat, inclusion


def reference(stat, inclusion, variance):
    """Plain per-pair LiRA: for each (t, j), the other models' values of t, split by side."""
    n, m = stat.shape
    online = np.full((n, m), np.nan)
    offline = np.full((n, m), np.nan)
    pooled = {}
    if variance == "global":
        for j in range(m):
            for side in (True, False):
                ss = df = 0.0
                for t in range(n):
                    v = [stat[t, k] for k in range(m) if k != j and inclusion[t, k] == side]
                    if len(v) > 1:
                        ss += np.var(v) * len(v)
                        df += len(v) - 1
                pooled[j, side] = ss / df
    for t in range(n):
        for j in range(m):
            vin = [stat[t, k] for k in range(m) if k != j and inclusion[t, k]]
            vout = [stat[t, k] for k in range(m) if k != j and not inclusion[t, k]]
            if variance == "global":
                var_in, var_out = pooled[j, True], pooled[j, False]
            else:
                var_in, var_out = np.var(vin, ddof=1), np.var(vout, ddof=1)
            x = stat[t, j]
            online[t, j] = norm.logpdf(x, np.mean(vin), np.sqrt(var_in)) - norm.logpdf(
                x, np.mean(vout), np.sqrt(var_out)
            )
            offline[t, j] = (x - np.mean(vout)) / np.sqrt(var_out)
    return online, offline


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's one-model sides
@pytest.mark.parametrize("variance", ["per_record", "global"])
def test_matches_plain_per_pair_reference(variance):
    stat, inclusion = synthetic(12, 10, 1.5, seed=1, sd_in=0.7)
    got = lira_scores(stat, inclusion, variance=variance, statistic=False)
    online, offline = reference(stat, inclusion, variance)
    assert got.variance == variance
    assert np.isfinite(online).mean() > 0.8
    np.testing.assert_allclose(got.online, online, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.offline, offline, rtol=1e-4, atol=1e-4)


def test_tpr_at_fixed_fpr_matches_the_closed_form():
    """Equal-variance Gaussians separated by d: TPR = Phi(d - Phi^-1(1 - FPR)). The fitted means
    come from ~M/2 models a side, which widens each side by 1/n: d_eff = d / sqrt(1 + 2/n)."""
    n, m, d = 3000, 300, 2.0
    stat, inclusion = synthetic(n, m, d, seed=2)
    sc = lira_scores(stat, inclusion, variance="per_record", statistic=False)
    d_eff = d / np.sqrt(1 + 2 / (m / 2))
    for scores in (sc.online, sc.offline):
        fpr, tpr, _ = roc_curve(scores, inclusion)
        for alpha, tol in ((0.001, 0.02), (0.01, 0.015)):
            expected = norm.cdf(d_eff - norm.ppf(1 - alpha))
            assert abs(tpr_at(fpr, tpr, alpha) - expected) < tol, (alpha, expected)
    # Calibration matters: the raw statistic ranked across records (offsets sd 3) is far worse.
    fpr, tpr, _ = roc_curve(stat, inclusion)
    assert tpr_at(fpr, tpr, 0.01) < 0.1


def test_no_model_scores_itself():
    """Model j's own value never enters the distributions it is scored against: changing
    column j leaves every fitted parameter of column j unchanged (and changes the others)."""
    stat, inclusion = synthetic(50, 20, 1.0, seed=3)
    j = 7
    moved = stat.copy()
    moved[:, j] += np.random.default_rng(0).normal(0, 5, len(stat))
    for variance in ("per_record", "global"):
        a = list(fit_blocks(stat, inclusion, variance))[0]
        b = list(fit_blocks(moved, inclusion, variance))[0]
        for name in ("mu_in", "var_in", "mu_out", "var_out"):
            x, y = getattr(a, name), getattr(b, name)
            np.testing.assert_allclose(x[:, j], y[:, j], rtol=1e-12)
            assert not np.allclose(np.delete(x, j, 1), np.delete(y, j, 1))
        assert (a.n_in[:, j] + a.n_out[:, j] == 19).all()


def test_masked_models_neither_score_nor_are_scored_and_nan_losses():
    stat, inclusion = synthetic(30, 12, 1.0, seed=4)
    mask = np.ones(12, bool)
    mask[3] = False
    junk = stat.copy()
    junk[:, 3] = 1e9  # a diverged model's losses must not move anything
    a = lira_scores(stat, inclusion, mask, "per_record", statistic=False)
    b = lira_scores(junk, inclusion, mask, "per_record", statistic=False)
    assert np.isnan(b.online[:, 3]).all()
    np.testing.assert_array_equal(a.online, b.online)
    holes = stat.copy()
    holes[0, 0] = np.nan
    c = lira_scores(holes, inclusion, None, "per_record", statistic=False)
    assert np.isnan(c.online[0, 0]) and np.isfinite(c.online[0, 1:]).all()


def test_statistic_is_the_logit_of_the_confidence():
    p = np.array([0.01, 0.5, 0.9, 0.999999])
    np.testing.assert_allclose(lira_statistic(-np.log(p)), np.log(p / (1 - p)), rtol=1e-6)
    assert np.isfinite(lira_statistic(np.array([0.0]))).all()
    assert np.isnan(lira_statistic(np.array([np.nan, np.inf]))).all()


def test_auto_variance_is_global_below_64_models_a_side():
    stat, inclusion = synthetic(20, 40, 1.0)
    assert lira_scores(stat, inclusion, statistic=False).variance == "global"
    stat, inclusion = synthetic(20, 200, 1.0)
    assert lira_scores(stat, inclusion, statistic=False).variance == "per_record"


def test_roc_metrics_exact_and_bootstrap_intervals():
    stat, inclusion = synthetic(400, 60, 1.5, seed=5)
    sc = lira_scores(stat, inclusion, statistic=False)
    r = roc_metrics(sc.online, inclusion, n_boot=100)
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(sc.online)
    assert r["auc"] == pytest.approx(roc_auc_score(inclusion[ok], sc.online[ok]), abs=1e-9)
    for key in ("auc", "tpr_at_0.1%", "tpr_at_1%"):
        lo, hi = r["ci"][key]
        assert lo < r[key] < hi  # the replicates' grid reading is not biased off the estimate
    assert r["curve"]["fpr"] == sorted(r["curve"]["fpr"])
    sub = roc_metrics(sc.online, inclusion, rows=np.arange(100), n_boot=0)
    assert sub["pairs"] == int(np.isfinite(sc.online[:100]).sum()) and sub["ci"] is None


def test_record_exposure_holds_the_dataset_wide_fpr():
    stat, inclusion = synthetic(500, 40, 1.0, seed=6)
    sc = lira_scores(stat, inclusion, statistic=False)
    tpr_rec, fpr_rec, thr = record_exposure(sc.online, inclusion, 0.01)
    ok = np.isfinite(sc.online)
    realised = ((sc.online >= thr) & ~inclusion & ok).sum() / (~inclusion & ok).sum()
    assert realised <= 0.01 and realised > 0.005
    assert (tpr_rec >= 0).all() and (tpr_rec <= 1).all()
    # A record whose in-values sit far above its out-values is exposed in every in-model.
    stat[0] = np.where(inclusion[0], 50.0, 0.0) + np.random.default_rng(0).normal(0, 0.1, 40)
    sc = lira_scores(stat, inclusion, statistic=False)
    assert record_exposure(sc.online, inclusion, 0.01)[0][0] == 1.0


def test_lira_findings_groups_and_record_columns():
    stat, inclusion = synthetic(200, 40, 1.0, seed=7)
    losses = np.log1p(np.exp(-stat))  # the inverse of lira_statistic
    groups = {"overall": None, "in_clusters": np.arange(200) < 20, "unique": np.arange(200) >= 20}
    out = lira_findings(losses, inclusion, None, groups, n_boot=20)
    assert set(out["variants"]) == {"online", "offline"}
    assert out["variants"]["online"]["in_clusters"]["pairs"] == 20 * 40
    assert set(out["records"]) == {"lira_tpr", "lira_fpr", "lira_llr"}
    sc = lira_scores(stat, inclusion, statistic=False)
    direct = roc_metrics(sc.online, inclusion, n_boot=0)
    assert out["variants"]["online"]["overall"]["auc"] == pytest.approx(direct["auc"], abs=1e-6)
