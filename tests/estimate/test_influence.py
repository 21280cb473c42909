"""Tests for memaudit.estimate.influence against a brute-force reference and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard

from memaudit.estimate.influence import (
    ESTIMATOR_NAME,
    InfluenceResult,
    estimate,
    influence_block,
    influence_matrix,
)

# --------------------------------------------------------------------------- references


def brute_force(losses: np.ndarray, inclusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Literal double loop over (target, training record) with boolean masks."""
    n = losses.shape[0]
    infl = np.full((n, n), np.nan)
    se = np.full((n, n), np.nan)
    for t in range(n):
        for i in range(n):
            m_in = inclusion[i].astype(bool)
            m_out = ~m_in
            a_in, a_out = losses[t, m_in], losses[t, m_out]
            if a_in.size >= 1 and a_out.size >= 1:
                infl[t, i] = np.mean(a_out) - np.mean(a_in)
            if a_in.size >= 2 and a_out.size >= 2:
                se[t, i] = np.sqrt(
                    np.var(a_out, ddof=1) / a_out.size + np.var(a_in, ddof=1) / a_in.size
                )
    return infl, se


def reference_summary(infl: np.ndarray, se: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Top-k / self / margin summary of a dense matrix, computed with plain Python sorting."""
    n = infl.shape[0]
    k = min(k, n)
    top_idx = np.full((n, k), -1, dtype=np.int64)
    top_val = np.full((n, k), np.nan)
    top_se = np.full((n, k), np.nan)
    margin = np.full(n, np.nan)
    defined = np.zeros(n, dtype=bool)
    for t in range(n):
        finite = [i for i in range(n) if np.isfinite(infl[t, i])]
        ranked = sorted(finite, key=lambda i: (-infl[t, i], i))
        for r, i in enumerate(ranked[:k]):
            top_idx[t, r] = i
            top_val[t, r] = infl[t, i]
            top_se[t, r] = se[t, i]
        if len(ranked) >= 2 and infl[t, ranked[1]] > 0:
            defined[t] = True
            margin[t] = infl[t, ranked[0]] / infl[t, ranked[1]]
    return {
        "self_influence": np.diag(infl).copy(),
        "self_se": np.diag(se).copy(),
        "top_idx": top_idx,
        "top_val": top_val,
        "top_se": top_se,
        "margin": margin,
        "margin_defined": defined,
        "top1_is_self": top_idx[:, 0] == np.arange(n),
    }


def random_case(seed: int, n: int = 7, m: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Random losses/inclusion with the awkward counts forced in: n_in = 0, 1, M-1 and M."""
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 1.0, size=(n, m))
    inclusion = rng.random((n, m)) < 0.5
    inclusion[0] = True  # in every model: undefined column
    inclusion[1] = False  # in no model: undefined column
    inclusion[2] = False
    inclusion[2, seed % m] = True  # n_in == 1: influence defined, SE undefined
    inclusion[3] = True
    inclusion[3, (seed + 1) % m] = False  # n_out == 1
    return losses, inclusion


def hadamard_case(values: np.ndarray, offset: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Losses/inclusion whose influence matrix is exactly ``values`` (N <= 7).

    Record i is in the models where row i+1 of an 8x8 Hadamard matrix is +1, so n_in = n_out
    = 4 and I[t, i] = -(h_i . L[t]) / 4. Writing L[t] = offset - sum_i values[t, i] h_i / 2
    gives I[t, i] = values[t, i] exactly (rows of H are orthogonal, dyadic arithmetic).
    """
    n = values.shape[0]
    assert values.shape == (n, n) and n <= 7
    h = hadamard(8).astype(np.float64)[1 : n + 1]
    losses = offset - values @ h / 2.0
    return losses, h > 0


SUMMARY_FIELDS = (
    "self_influence",
    "self_se",
    "top_idx",
    "top_val",
    "top_se",
    "margin",
    "margin_defined",
    "top1_is_self",
)


def assert_summary_equal(res: InfluenceResult, ref: dict[str, np.ndarray], atol=1e-10) -> None:
    for name in SUMMARY_FIELDS:
        got, want = getattr(res, name), ref[name]
        assert got.shape == want.shape, name
        if got.dtype.kind in "biu":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- dense / block


@pytest.mark.parametrize("seed", range(5))
def test_dense_and_block_match_brute_force(seed: int) -> None:
    losses, inclusion = random_case(seed)
    want_i, want_se = brute_force(losses, inclusion)
    # The forced cases really are there, so the NaN rules are exercised.
    assert np.isnan(want_i[:, [0, 1]]).all() and np.isfinite(want_i[:, 2]).all()
    assert np.isnan(want_se[:, [2, 3]]).all()

    np.testing.assert_allclose(influence_matrix(losses, inclusion), want_i, rtol=0, atol=1e-10)

    rows = np.array([5, 0, 3])
    got_i, got_se = influence_block(losses, inclusion, rows)
    assert got_i.shape == got_se.shape == (3, 7)
    assert got_i.dtype == got_se.dtype == np.float64
    np.testing.assert_allclose(got_i, want_i[rows], rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_se, want_se[rows], rtol=0, atol=1e-10)

    got_i, got_se = influence_block(losses, inclusion.astype(int), slice(2, 6))
    np.testing.assert_allclose(got_i, want_i[2:6], rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_se, want_se[2:6], rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_estimate_blockwise_matches_reference(seed: int, tmp_path) -> None:
    n = 7
    losses, inclusion = random_case(seed, n=n)
    want_i, want_se = brute_force(losses, inclusion)
    ref = reference_summary(want_i, want_se, k=4)
    for block_rows in (1, 3, n, None):
        res = estimate(losses, inclusion, top_k=4, block_rows=block_rows)
        assert res.estimator == ESTIMATOR_NAME
        assert res.n_models == 12 and res.top_k == 4
        assert res.top_idx.dtype == np.int64 and res.n_in.dtype == np.int64
        np.testing.assert_array_equal(res.n_in, inclusion.sum(axis=1))
        np.testing.assert_array_equal(res.n_out, 12 - inclusion.sum(axis=1))
        assert_summary_equal(res, ref)

    dense_path = tmp_path / "dense.npy"
    estimate(losses, inclusion, top_k=4, block_rows=3, dense_path=dense_path)
    dense = np.load(dense_path)
    assert dense.dtype == np.float32 and dense.shape == (n, n)
    np.testing.assert_allclose(dense, want_i, rtol=1e-6, atol=1e-6)  # NaNs must line up too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.npy"]  # no temp leftovers


def test_top_k_clipped_and_padded_when_nan_columns() -> None:
    losses, inclusion = random_case(0)  # records 0 and 1 have NaN columns
    res = estimate(losses, inclusion, top_k=50)
    assert res.top_k == 7 and res.top_idx.shape == (7, 7)
    # Five finite values per row, then padding.
    assert (res.top_idx[:, :5] >= 2).all()
    assert (res.top_idx[:, 5:] == -1).all()
    assert np.isnan(res.top_val[:, 5:]).all() and np.isnan(res.top_se[:, 5:]).all()
    assert np.isnan(res.self_influence[:2]).all()


def test_ties_break_towards_smaller_index() -> None:
    # Integer losses keep every mean exact, so duplicate inclusion rows give exact ties.
    rng = np.random.default_rng(7)
    losses = rng.integers(0, 5, size=(6, 8)).astype(float)
    inclusion = rng.random((6, 8)) < 0.5
    inclusion[:, 0], inclusion[:, 1] = True, False
    inclusion[4] = inclusion[1]
    inclusion[5] = inclusion[1]
    # M = 8 keeps the row means dyadic, so the whole computation is exact here.
    res = estimate(losses, inclusion, top_k=6, block_rows=4)
    assert (np.diff(res.top_val, axis=1) <= 0).all()
    for t in range(6):
        pos = {int(i): r for r, i in enumerate(res.top_idx[t])}
        assert pos[1] < pos[4] < pos[5]  # equal values: smaller index first
        assert res.top_val[t, pos[1]] == res.top_val[t, pos[4]] == res.top_val[t, pos[5]]


# --------------------------------------------------------------------------- margins


def test_margins_and_top1_on_hand_built_influence() -> None:
    values = np.array(
        [
            [3.0, 1.5, 0.5, -1.0],  # top1 self, margin 3 / 1.5 = 2
            [2.0, 0.0, -1.0, -2.0],  # second-largest exactly 0 -> undefined
            [2.0, -1.0, -0.5, -3.0],  # second-largest negative -> undefined
            [-1.0, -2.0, -3.0, -0.25],  # all negative -> undefined, top1 is self
        ]
    )
    losses, inclusion = hadamard_case(values)
    np.testing.assert_array_equal(influence_matrix(losses, inclusion), values)

    res = estimate(losses, inclusion, top_k=2)
    np.testing.assert_array_equal(res.margin_defined, [True, False, False, False])
    np.testing.assert_array_equal(res.margin[0], 2.0)
    assert np.isnan(res.margin[1:]).all()
    np.testing.assert_array_equal(res.top_idx, [[0, 1], [0, 1], [0, 2], [3, 0]])
    np.testing.assert_array_equal(res.top_val[3], [-0.25, -1.0])
    np.testing.assert_array_equal(res.top1_is_self, [True, False, False, True])
    np.testing.assert_array_equal(res.self_influence, np.diag(values))


def test_margin_tie_and_not_self() -> None:
    values = np.array(
        [
            [1.0, 2.0, 2.0],  # tie at the top: margin 1, index 1 before 2, not self
            [4.0, 1.0, 1.0],  # top1 is another record: margin 4
            [0.5, 0.25, 1.0],  # top1 self: margin 2
        ]
    )
    losses, inclusion = hadamard_case(values)
    res = estimate(losses, inclusion, top_k=1)
    np.testing.assert_array_equal(res.top_idx, [[1], [0], [2]])
    np.testing.assert_array_equal(res.margin, [1.0, 4.0, 2.0])
    assert res.margin_defined.all()
    np.testing.assert_array_equal(res.top1_is_self, [False, False, True])
    # Margins and top1_is_self do not depend on how many top entries are kept.
    res0 = estimate(losses, inclusion, top_k=0)
    assert res0.top_idx.shape == (3, 0) and res0.top_k == 0
    np.testing.assert_array_equal(res0.margin, res.margin)
    np.testing.assert_array_equal(res0.top1_is_self, res.top1_is_self)


def test_nan_column_skipped_in_top_k_and_margin() -> None:
    values = np.array([[1.0, 4.0, 2.0], [1.0, 3.0, 0.5], [2.0, 1.0, 6.0]])
    losses, inclusion = hadamard_case(values)
    # Append record 3, included in every model: its column is undefined. Its own row
    # (as a target) carries chosen influences from records 0..2.
    extra = 3.0 - np.array([1.0, 8.0, 2.0]) @ hadamard(8)[1:4].astype(float) / 2.0
    losses = np.vstack([losses, extra])
    inclusion = np.vstack([inclusion, np.ones(8, dtype=bool)])
    res = estimate(losses, inclusion, top_k=4)
    # The NaN column would win every row if it were not ignored.
    np.testing.assert_array_equal(
        res.top_idx, [[1, 2, 0, -1], [1, 0, 2, -1], [2, 0, 1, -1], [1, 2, 0, -1]]
    )
    np.testing.assert_allclose(res.margin, [2.0, 3.0, 3.0, 4.0])
    assert res.margin_defined.all()
    assert np.isnan(res.self_influence[3]) and not res.top1_is_self[3]
    assert res.n_in[3] == 8 and res.n_out[3] == 0


def test_single_record_margin_undefined() -> None:
    losses = np.array([[1.0, 2.0, 0.5, 3.0]])
    inclusion = np.array([[1, 0, 1, 0]])
    res = estimate(losses, inclusion, top_k=10)
    assert res.top_k == 1
    np.testing.assert_allclose(res.self_influence, [(2.0 + 3.0) / 2 - (1.0 + 0.5) / 2])
    np.testing.assert_array_equal(res.top_idx, [[0]])
    assert res.top1_is_self.all()
    assert not res.margin_defined[0] and np.isnan(res.margin[0])


def test_all_nan_row_does_not_crash() -> None:
    losses = np.arange(6.0).reshape(2, 3)
    inclusion = np.array([[1, 1, 1], [0, 0, 0]])
    res = estimate(losses, inclusion, top_k=2, block_rows=1)
    assert (res.top_idx == -1).all() and np.isnan(res.top_val).all()
    assert not res.margin_defined.any() and not res.top1_is_self.any()


# --------------------------------------------------------------------------- masking, stability


def test_model_mask_equals_dropping_columns() -> None:
    rng = np.random.default_rng(3)
    losses = rng.normal(size=(9, 15))
    inclusion = rng.random((9, 15)) < 0.5
    mask = np.ones(15, dtype=bool)
    mask[[2, 7, 11]] = False
    losses[4, 7] = np.nan  # a diverged model: ignored entirely once masked
    losses[0, 11] = np.inf

    masked = estimate(losses, inclusion, top_k=3, model_mask=mask, block_rows=2)
    dropped = estimate(losses[:, mask], inclusion[:, mask], top_k=3)
    assert masked.n_models == dropped.n_models == 12
    np.testing.assert_array_equal(masked.n_in, dropped.n_in)
    np.testing.assert_array_equal(masked.n_out, dropped.n_out)
    # Different block shapes may round differently in BLAS, hence the 1e-12 tolerance.
    assert_summary_equal(masked, {name: getattr(dropped, name) for name in SUMMARY_FIELDS}, 1e-12)
    np.testing.assert_array_equal(
        influence_matrix(losses, inclusion, model_mask=mask),
        influence_matrix(losses[:, mask], inclusion[:, mask]),
    )
    got = influence_block(losses, inclusion, [1, 4], model_mask=mask)
    want = influence_block(losses[:, mask], inclusion[:, mask], [1, 4])
    np.testing.assert_array_equal(got, want)

    with pytest.raises(ValueError, match="non-finite"):
        estimate(losses, inclusion)
    with pytest.raises(ValueError, match="non-finite"):
        influence_matrix(losses, inclusion, model_mask=np.arange(15) != 2)


def test_input_validation() -> None:
    losses = np.zeros((4, 5))
    inclusion = np.zeros((4, 5), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        estimate(losses, inclusion[:, :4])
    with pytest.raises(ValueError, match="2-D"):
        influence_matrix(np.zeros(5), np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="0/1"):
        estimate(losses, np.full((4, 5), 2))
    with pytest.raises(ValueError, match="model_mask"):
        estimate(losses, inclusion, model_mask=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="no models"):
        estimate(losses, inclusion, model_mask=np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="block_rows"):
        estimate(losses, inclusion, block_rows=0)


def test_large_offset_is_stable() -> None:
    rng = np.random.default_rng(11)
    n, m = 12, 64
    inclusion = rng.random((n, m)) < 0.5
    losses = 2.0 + 0.1 * rng.normal(size=(n, m)) - 0.3 * inclusion
    i0, se0 = influence_block(losses, inclusion, slice(None))
    i1, se1 = influence_block(losses + 1e6, inclusion, slice(None))
    # Representing L + 1e6 already rounds at ~1e-10; an uncentered second-moment formula
    # would get the variances wrong at the percent level here.
    np.testing.assert_allclose(i1, i0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(se1, se0, rtol=1e-6, atol=0)
    want_i, want_se = brute_force(losses + 1e6, inclusion)
    np.testing.assert_allclose(se1, want_se, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- planted structure


def test_planted_duplicates_recovered() -> None:
    rng = np.random.default_rng(2025)
    n, m = 40, 400
    inclusion = rng.random((n, m)) < 0.5
    partner = {t: t ^ 1 for t in range(10)}  # 0<->1, 2<->3, ... planted duplicate pairs
    losses = rng.normal(3.0, 0.5, size=(n, 1)) + 0.1 * rng.normal(size=(n, m))
    losses -= 1.0 * inclusion
    for t, d in partner.items():
        losses[t] -= 0.5 * inclusion[d]

    res = estimate(losses, inclusion, top_k=3, block_rows=16)
    np.testing.assert_allclose(res.self_influence, 1.0, atol=0.15)
    assert res.top1_is_self.all()
    assert (res.self_se > 0).all() and (res.self_se < 0.1).all()
    for t, d in partner.items():
        assert res.top_idx[t, 1] == d
        # Chance correlation between inclusion rows confounds the estimate a little.
        assert abs(res.top_val[t, 1] - 0.5) < 0.25
        assert 1.3 < res.margin[t] < 3.2
    others = np.array([t for t in range(n) if t not in partner])
    assert (res.margin[others] > 3.0).all()


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path) -> None:
    losses, inclusion = random_case(4)
    res = estimate(losses, inclusion, top_k=3)
    path = tmp_path / "influence.npz"
    res.save(path)
    res.save(path)  # overwriting in place is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["influence.npz"]
    back = InfluenceResult.load(path)
    assert back.estimator == res.estimator == ESTIMATOR_NAME
    assert back.n_models == res.n_models and back.top_k == res.top_k
    for name in (*SUMMARY_FIELDS, "n_in", "n_out"):
        a, b = getattr(back, name), getattr(res, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    with np.load(path, allow_pickle=False) as data:  # no object arrays inside
        assert all(data[key].dtype != object for key in data.files)


def test_influence_alone_ranks_like_the_full_estimate() -> None:
    """with_se=False (the ranking passes): same influence, top-k and margins, blockwise with
    blocks smaller than N equal to one block, SEs NaN."""
    for seed in range(3):
        losses, inclusion = random_case(seed, n=9, m=14)
        full = estimate(losses, inclusion, top_k=5, block_rows=9)
        for block_rows in (1, 4, None):
            got = estimate(losses, inclusion, top_k=5, block_rows=block_rows, with_se=False)
            np.testing.assert_array_equal(got.top_idx, full.top_idx)
            np.testing.assert_allclose(got.top_val, full.top_val, rtol=1e-12)
            np.testing.assert_allclose(got.self_influence, full.self_influence, rtol=1e-12)
            np.testing.assert_allclose(got.margin, full.margin, rtol=1e-12)
            np.testing.assert_array_equal(got.margin_defined, full.margin_defined)
            np.testing.assert_array_equal(got.top1_is_self, full.top1_is_self)
            assert np.isnan(got.top_se).all() and np.isnan(got.self_se).all()


def test_top_k_prefilter_equals_full_partition() -> None:
    """The chunk-minimum prefilter selects exactly what a full partition selects, in the same
    order, with ties, NaN and infinite values; it declines (None) when ties flood it."""
    from memaudit.estimate.influence import _smallest_by_partition, _smallest_by_prefilter

    rng = np.random.default_rng(0)
    used = declined = 0
    for trial in range(300):
        b, n = int(rng.integers(1, 8)), int(rng.integers(2, 300))
        k = int(rng.integers(1, n))
        if trial % 3 == 0:
            values = rng.integers(-3, 4, size=(b, n)).astype(float)  # many ties
        else:
            values = rng.normal(size=(b, n))
        values[rng.random((b, n)) < 0.2] = np.nan
        if trial % 5 == 0:
            values[0] = np.nan
        if trial % 7 == 0:
            values[:, ::3] = np.inf
        keys = np.where(np.isfinite(values), -values, np.inf)
        got = _smallest_by_prefilter(keys, k)
        if got is None:
            declined += 1
            continue
        used += 1
        np.testing.assert_array_equal(got, _smallest_by_partition(keys, k))
    assert used > 100 and declined > 0
