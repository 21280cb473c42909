"""Per-record influence distributions: the blockwise summaries equal a brute-force computation."""

import numpy as np
import pytest
from scipy.stats import t as student

from memaudit.estimate.adjusted import adjusted_block, estimate_adjusted
from memaudit.estimate.distribution import (
    FDR,
    QUANTILES,
    DistributionSummary,
    histogram,
    summarize_block,
)
from memaudit.estimate.influence import InfluenceResult, estimate, influence_block


def ensemble(n=40, m=24, seed=0):
    """Losses with self-influence, pairs of near-duplicates (0-1, 2-3, 4-5) and one record
    in every model (its column of I is undefined: no model left it out)."""
    rng = np.random.default_rng(seed)
    inc = rng.random((n, m)) < 0.5
    inc[7] = True
    losses = rng.normal(3.0, 0.4, (n, m)) - 1.5 * inc
    for a, b in ((0, 1), (2, 3), (4, 5)):
        losses[a] -= 1.2 * inc[b]
        losses[b] -= 1.2 * inc[a]
    return losses, inc


def brute(infl, se, t, df):
    """Target t's summaries, one row at a time, by the plain definitions."""
    row, s = infl[t], se[t]
    others = np.delete(np.arange(len(row)), t)
    ok = others[np.isfinite(row[others])]
    v = row[ok]
    # Benjamini-Hochberg over the tested others, one-sided (I > 0).
    tested = ok[np.isfinite(s[ok])]
    p = np.sort(student.sf(row[tested] / s[tested], df))
    m = len(p)
    passed = [k for k in range(1, m + 1) if p[k - 1] <= k * FDR / m]
    n_sig = max(passed, default=0)
    # The discoveries: the n_sig smallest p-values (no ties in continuous data).
    pvals = student.sf(row[tested] / s[tested], df)
    found = tested[np.argsort(pvals)[:n_sig]]
    top = np.sort(row[found])[::-1]
    top = np.concatenate([top, np.zeros(5)])
    total = max(row[t], 0) + row[found].sum()
    return {
        "quantiles": np.quantile(v, QUANTILES),
        "minimum": v.min(),
        "maximum": v.max(),
        "mean": v.mean(),
        "std": v.std(ddof=1),
        "n_others": len(v),
        "n_significant": n_sig,
        "positive_total": total,
        "self_share": max(row[t], 0) / total,
        "top1_share": top[0] / total,
        "top5_share": top[:5].sum() / total,
    }


def check(summary: DistributionSummary, infl, se, df):
    n = infl.shape[0]
    for t in range(n):
        want = brute(infl, se, t, df)
        for key, value in want.items():
            got = getattr(summary, key)[t]
            np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-12, err_msg=f"{key} t={t}")


@pytest.mark.parametrize("block_rows", [None, 7])
def test_plain_summaries_equal_brute_force(block_rows):
    losses, inc = ensemble()
    res = estimate(losses, inc, top_k=3, block_rows=block_rows, distribution=True)
    infl, se = influence_block(losses, inc, np.arange(len(losses)))
    assert np.isnan(infl[:, 7]).all()  # the undefined column is left out, not counted
    check(res.distribution, infl, se, df=24 - 2)
    # The pairs are found: each has a significant mate and a lower self share than the rest.
    d = res.distribution
    assert (d.n_significant[:6] >= 1).all()
    assert d.self_share[:6].max() < np.median(d.self_share[8:])
    assert (d.top1_share[:6] > 0.2).all()


@pytest.mark.parametrize("block_rows", [None, 9])
def test_adjusted_summaries_equal_brute_force(block_rows):
    losses, inc = ensemble(seed=1)
    res = estimate_adjusted(losses, inc, top_k=3, block_rows=block_rows, distribution=True)
    infl, se = adjusted_block(losses, inc, np.arange(len(losses)))
    np.testing.assert_allclose(res.self_influence, np.diag(infl), rtol=1e-9)
    check(res.distribution, infl, se, df=24 - 2 - 5)  # 4 covariates and t itself


def test_summaries_survive_save_and_load(tmp_path):
    losses, inc = ensemble()
    res = estimate(losses, inc, top_k=3, distribution=True)
    res.save(tmp_path / "i.npz")
    back = InfluenceResult.load(tmp_path / "i.npz")
    np.testing.assert_array_equal(back.distribution.quantiles, res.distribution.quantiles)
    np.testing.assert_array_equal(back.distribution.n_significant, res.distribution.n_significant)
    # A result without summaries (or an older file) loads with none.
    plain = estimate(losses, inc, top_k=3)
    plain.save(tmp_path / "p.npz")
    assert plain.distribution is None
    assert InfluenceResult.load(tmp_path / "p.npz").distribution is None


def test_without_standard_errors_significance_is_unknown():
    losses, inc = ensemble()
    res = estimate(losses, inc, top_k=3, distribution=True, with_se=False)
    assert (res.distribution.n_significant == -1).all()
    assert res.distribution.row(0)["n_significant"] is None
    assert np.isfinite(res.distribution.quantiles).all()


def test_bh_counts_a_planted_set_of_strong_influencers():
    """A row with 4 very strong others among many nulls: BH finds those 4 (and the rule is
    per row: another row with no signal finds none)."""
    rng = np.random.default_rng(3)
    n = 500
    infl = rng.uniform(-2.0, 2.0, (2, n))  # p > 0.02: no null passes BH at 5 / 499 x 5%
    se = np.ones((2, n))
    infl[0, [10, 20, 30, 40]] = 8.0
    infl[0, 0] = 50.0  # self: never counted
    infl[1, 1] = 3.0
    d = summarize_block(np.array([0, 1]), infl.copy(), se)
    assert d.n_significant[0] == 4
    assert d.n_significant[1] == 0
    # Shares of self + the four: 50 / 82, 8 / 82, 32 / 82.
    np.testing.assert_allclose(
        [d.self_share[0], d.top1_share[0], d.top5_share[0]], [50 / 82, 8 / 82, 32 / 82]
    )
    assert d.self_share[1] == 1 and d.top1_share[1] == 0 and d.top5_share[1] == 0


def test_histogram_covers_self_and_counts_the_others():
    row = np.array([5.0, 0.1, -0.2, 0.3, np.nan, 0.0])
    h = histogram(row, 0, bins=10)
    assert h["lo"] == -0.2 and h["hi"] == 5.0
    assert sum(h["counts"]) == 4  # the others with a finite influence
    assert h["counts"][0] == 4 and h["counts"][-1] == 0  # bins of 0.52: all in the first
