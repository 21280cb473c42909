import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from memaudit.estimate.adjusted import (
    ESTIMATOR_NAME,
    adjusted_block,
    covariate_count,
    estimate_adjusted,
    fit_covariates,
)
from memaudit.estimate.influence import influence_matrix
from memaudit.estimate.registry import get_estimator


def dense(result, n):
    """The influence matrix from a result with top_k = N."""
    out = np.full((n, n), np.nan)
    rows = np.arange(n)[:, None]
    ok = result.top_idx >= 0
    out[np.broadcast_to(rows, ok.shape)[ok], result.top_idx[ok]] = result.top_val[ok]
    return out


# A synthetic ensemble with a known influence structure. Records come in groups (size 1 =
# unique). A target's loss drops by a_t when it or a group-mate is trained on, a mate counting
# w = 0.8 of the target itself, and the drops *saturate* (the largest one counts, not the sum),
# like near-duplicates do: a second copy teaches little the first did not.
GROUPS = [[0, 1], [2, 3, 4], [5, 6, 7, 8]] + [[t] for t in range(9, 30)]
N = 30
W = 0.8


def _drops(rng):
    return rng.uniform(3.0, 5.0, size=N)


def simulate(m, rng, a, noise=0.5):
    inc = rng.random((N, m)) < 0.5
    losses = rng.normal(6.0, noise, size=(N, m))
    for g in GROUPS:
        for t in g:
            weight = np.array([1.0 if s == t else W for s in g])
            losses[t] -= a[t] * (weight[:, None] * inc[g]).max(axis=0)
    return losses, inc


def exact_influence(a):
    """E[L_t | i out] - E[L_t | i in] under independent Bernoulli(1/2) inclusion, exactly."""
    truth = np.zeros((N, N))
    for g in GROUPS:
        for t in g:
            weight = np.array([1.0 if s == t else W for s in g])
            for k, i in enumerate(g):
                gain = {0: [], 1: []}
                for state in itertools.product([0, 1], repeat=len(g)):
                    gain[state[k]].append(a[t] * (weight * np.array(state)).max())
                truth[t, i] = np.mean(gain[1]) - np.mean(gain[0])
    return truth


def brute_force(losses, inc, covariates, rounds):
    """The documented algorithm, one target and one pair at a time with np.linalg.lstsq."""
    n, m = losses.shape
    c = covariate_count(m, covariates)
    p = inc.astype(float)

    def dom(x, i):
        return x[~inc[i]].mean() - x[inc[i]].mean()

    out = np.zeros((n, n))
    for t in range(n):
        s = [t]
        for r in range(rounds + 1):
            x = np.column_stack([np.ones(m)] + [p[q] for q in s])
            b = np.linalg.lstsq(x, losses[t], rcond=None)[0][1:]
            resid = losses[t] - x[:, 1:] @ b
            row = np.array([dom(resid, i) for i in range(n)])
            for q, bq in zip(s, b, strict=True):
                row[q] -= bq
            if r < rounds and c:
                others = [i for i in np.lexsort((np.arange(n), -row)) if i != t]
                s = [t] + [int(i) for i in others[:c]]
        out[t] = row
    return out


def test_equals_brute_force_loop():
    rng = np.random.default_rng(0)
    losses, inc = simulate(40, rng, _drops(rng))
    got = dense(estimate_adjusted(losses, inc, top_k=N, covariates=3, rounds=2), N)
    np.testing.assert_allclose(got, brute_force(losses, inc, 3, 2), atol=1e-9)


def test_same_expectation_as_difference_of_means_with_less_variance():
    rng = np.random.default_rng(1)
    a = _drops(rng)
    truth = exact_influence(a)
    reps, m = 150, 48
    adj = np.empty((reps, N, N))
    plain = np.empty((reps, N, N))
    for r in range(reps):
        losses, inc = simulate(m, rng, a)
        adj[r] = dense(estimate_adjusted(losses, inc, top_k=N), N)
        plain[r] = influence_matrix(losses, inc)
    # The plain difference of means is exactly unbiased: every entry's mean over replicates is
    # within 4.5 standard errors of the truth (900 entries) and on average |z| stays near the
    # sqrt(2 / pi) = 0.80 of pure noise.
    sem = plain.std(axis=0, ddof=1) / np.sqrt(reps)
    z = np.abs(plain.mean(axis=0) - truth) / sem
    assert z.max() < 4.5 and z.mean() < 0.95
    # The adjusted estimator estimates the same quantity up to the small bias of covariates
    # chosen from the data (measured over 300 replicates: -0.03 nats on mate entries of 1.6 to
    # 2.4, +0.006 on null entries, a twentieth of one estimate's SE here): allow 0.06 nats.
    sem = adj.std(axis=0, ddof=1) / np.sqrt(reps)
    bias = np.abs(adj.mean(axis=0) - truth)
    assert (bias <= 4.5 * sem + 0.06).all()
    assert bias[truth == 0].mean() < 0.015
    # The saturating mates make a joint-regression coefficient differ from the difference of
    # means; the adjusted estimator must follow the difference of means, so check a mate pair.
    assert truth[5, 6] > 0.3
    off = ~np.eye(N, dtype=bool)
    sd_adj = adj.std(axis=0)[off].mean()
    sd_plain = plain.std(axis=0)[off].mean()
    assert sd_adj < 0.5 * sd_plain


def test_margin_separates_near_duplicates_at_small_m():
    rng = np.random.default_rng(2)
    losses, inc = simulate(24, rng, _drops(rng))
    grouped = np.zeros(N, dtype=bool)
    grouped[:9] = True
    auc = {}
    for name in ("plain", "adjusted"):
        res = get_estimator(name).estimate(losses, inc, top_k=5)
        assert res.estimator == (ESTIMATOR_NAME if name == "adjusted" else "difference-of-means")
        margin = np.where(res.margin_defined, res.margin, np.inf)
        auc[name] = roc_auc_score(~grouped, margin)
    assert auc["adjusted"] >= 0.95
    assert auc["adjusted"] > auc["plain"]


def test_rows_equal_the_full_estimate_and_model_mask_equals_subset():
    rng = np.random.default_rng(3)
    losses, inc = simulate(36, rng, _drops(rng))
    full = dense(estimate_adjusted(losses, inc, top_k=N), N)
    rows = np.array([0, 4, 17])
    infl, se = adjusted_block(losses, inc, rows)
    np.testing.assert_allclose(infl, full[rows], atol=1e-9)
    assert np.isfinite(se).all()
    mask = np.arange(36) % 3 != 0
    masked = estimate_adjusted(losses, inc, top_k=N, model_mask=mask)
    subset = estimate_adjusted(losses[:, mask], inc[:, mask], top_k=N)
    np.testing.assert_allclose(dense(masked, N), dense(subset, N), atol=1e-12)
    assert masked.n_models == 24


def test_covariates_capped_by_model_count():
    assert covariate_count(16, 4) == 3
    assert covariate_count(32, 4) == 4
    assert covariate_count(7, 4) == 0
    # With no room for other covariates only t's own inclusion is adjusted for, which leaves
    # self-influence exactly the difference of means.
    rng = np.random.default_rng(4)
    losses, inc = simulate(7, rng, _drops(rng))
    got = estimate_adjusted(losses, inc, top_k=N).self_influence
    np.testing.assert_allclose(got, np.diag(influence_matrix(losses, inc)), atol=1e-12)


def test_repeated_inclusion_columns_are_skipped_not_split():
    rng = np.random.default_rng(5)
    losses, inc = simulate(40, rng, _drops(rng))
    inc[12] = inc[11]  # records 11 and 12 can no longer be told apart
    inc[13] = ~inc[11]
    sets = np.array([[11, 12, 13, 0]])
    _, coef = fit_covariates(losses[[11]], inc, sets)
    assert np.isfinite(coef[0, [0, 3]]).all() and np.isnan(coef[0, [1, 2]]).all()
    res = estimate_adjusted(losses, inc, top_k=N)
    assert np.isfinite(res.self_influence).all()


@pytest.mark.parametrize("name", ["plain", "adjusted"])
def test_unknown_and_known_names(name):
    rng = np.random.default_rng(6)
    losses, inc = simulate(20, rng, _drops(rng))
    assert get_estimator(name).estimate(losses, inc).n_models == 20
    with pytest.raises(ValueError, match="unknown estimator"):
        get_estimator("magic")


def test_rows_by_either_name_match_the_full_estimates():
    rng = np.random.default_rng(7)
    losses, inc = simulate(40, rng, _drops(rng))
    mask = np.arange(40) % 4 != 0
    rows = np.array([1, 9, 20])
    for option, name in (("adjusted", ESTIMATOR_NAME), ("plain", "difference-of-means")):
        full = dense(get_estimator(option).estimate(losses, inc, top_k=N, model_mask=mask), N)
        for key in (option, name):
            got = get_estimator(key).rows(losses, inc, rows, model_mask=mask)
            np.testing.assert_allclose(got, full[rows], atol=1e-9)


def test_blockwise_equals_one_block_and_rounds_need_no_standard_errors():
    """Blocks of 7 rows (< N) give the estimate of a single N-row block; the covariate rounds
    rank with the influence alone (no second moments), which leaves the ranking unchanged."""
    from memaudit.estimate.influence import estimate

    rng = np.random.default_rng(8)
    losses, inc = simulate(48, rng, _drops(rng))
    one = estimate_adjusted(losses, inc, top_k=N, block_rows=N)
    for block_rows in (1, 7, None):
        got = estimate_adjusted(losses, inc, top_k=N, block_rows=block_rows)
        np.testing.assert_array_equal(got.top_idx, one.top_idx)
        for name in ("top_val", "top_se", "self_influence", "self_se", "margin"):
            np.testing.assert_allclose(getattr(got, name), getattr(one, name), rtol=1e-12)
    ranked = estimate(losses, inc, top_k=5, block_rows=7, with_se=False)
    full = estimate(losses, inc, top_k=5, block_rows=7)
    np.testing.assert_array_equal(ranked.top_idx, full.top_idx)
    np.testing.assert_allclose(ranked.top_val, full.top_val, rtol=1e-12)
    np.testing.assert_array_equal(ranked.margin_defined, full.margin_defined)
    assert np.isnan(ranked.top_se).all() and np.isnan(ranked.self_se).all()


def test_design_drops_what_elementwise_comparison_drops():
    """The Gram-matrix identifiability rule equals comparing the columns model by model."""
    from memaudit.estimate.adjusted import design

    rng = np.random.default_rng(9)
    m = 24
    inc = rng.random((12, m)) < 0.5
    inc[3] = inc[2]  # repeats 2
    inc[4] = ~inc[2]  # complements 2
    inc[5] = True  # constant
    inc[6] = False  # constant
    sets = np.array([[0, 2, 3, 4, 1], [2, 5, 6, -1, 3], [4, 2, 7, 8, 9], [3, -1, 3, 10, 11]])
    xt, keep, gram = design(inc, sets)
    for r, row in enumerate(sets):
        cols = [inc[c] if c >= 0 else np.zeros(m, dtype=bool) for c in row]
        for q, c in enumerate(row):
            clash = any(
                np.array_equal(cols[p], cols[q]) or np.array_equal(cols[p], ~cols[q])
                for p in range(q)
            )
            const = cols[q].all() or not cols[q].any()
            assert keep[r, q] == (c >= 0 and not clash and not const), (r, q)
        x = np.column_stack([np.ones(m)] + [col * k for col, k in zip(cols, keep[r], strict=True)])
        np.testing.assert_array_equal(gram[r], x.T @ x)
    np.testing.assert_array_equal(xt[:, 0], 1.0)
