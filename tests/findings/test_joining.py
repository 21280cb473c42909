"""Joining near-duplicate fragments on pooled evidence (memaudit.findings.joining)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memaudit.findings.joining import (
    CrtDirection,
    _holm,
    crt_pvalue,
    draw_counts,
    join_fragments,
)


def saturating_run(sizes, n_unique, m, seed, noise=0.2):
    """Losses of groups of near-duplicates whose loss falls with the number of its mates in as
    on the strong demo: when a copy is out 6.8, 2.6, 1.8, 1.5, 1.3 nats with 0 to 4 mates in;
    when it is in 1.2, 0.86, 0.73, 0.66, 0.62 (measured about 1.2, 0.9, 0.75, 0.65, 0.55, with
    half the spread). Unique records have a self-effect only. Returns losses, inclusion,
    groups (arrays)."""
    rng = np.random.default_rng(seed)
    n = sum(sizes) + n_unique
    inc = rng.random((n, m)) < 0.5
    loss = np.empty((n, m))
    groups, start = [], 0
    for k in sizes:
        g = np.arange(start, start + k)
        start += k
        groups.append(g)
        for t in g:
            mates = inc[g[g != t]].sum(axis=0)
            out = 1.2 + 5.6 / (1.0 + mates) ** 2
            inside = 0.4 + 0.8 / (1.0 + mates) ** 0.8
            spread = noise * np.where(inc[t], 0.5, 1.0)
            loss[t] = np.where(inc[t], inside, out) + spread * rng.standard_normal(m)
    for t in range(start, n):
        loss[t] = np.where(inc[t], 1.6, 6.2) + 0.15 * rng.standard_normal(m)
    return loss, inc, groups


def alike_within(blocks, n):
    """alike(pairs) for records in one of ``blocks`` (arrays of record ids)."""
    block = np.full(n, -1)
    for k, b in enumerate(blocks):
        block[b] = k

    def alike(pairs):
        return (block[pairs[:, 0]] >= 0) & (block[pairs[:, 0]] == block[pairs[:, 1]])

    return alike


def test_crt_pvalue_is_uniform_without_influence():
    # Two unrelated groups: A's losses do not depend on B's inclusion.
    hits = 0
    for seed in range(200):
        loss, inc, groups = saturating_run([3, 3], 0, 32, seed)
        p = crt_pvalue(loss, inc, groups[0], groups[1], 0.5, np.random.default_rng(seed))
        hits += p <= 0.1
    assert 8 <= hits <= 34  # Binomial(200, 0.1): mean 20, beyond 4 sd either side fails


def test_crt_pvalue_finds_a_split_group():
    # A group of 5 split 2 + 3, at 32 models: either direction carries the evidence.
    found = 0
    for seed in range(10):
        loss, inc, groups = saturating_run([5], 0, 32, seed)
        g, rng = groups[0], np.random.default_rng(seed)
        p = min(
            crt_pvalue(loss, inc, g[:2], g[2:], 1e-3, rng),
            crt_pvalue(loss, inc, g[2:], g[:2], 1e-3, rng),
        )
        found += p <= 1e-3
    assert found >= 8


def test_complementary_draws_hold_the_design():
    c = draw_counts(3, 6, np.ones(6, dtype=bool), "complementary", 50, np.random.default_rng(0))
    assert np.all(c[:, 0::2] + c[:, 1::2] == 3)
    used = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    assert draw_counts(2, 6, used, "bernoulli", 4, np.random.default_rng(0)).shape == (4, 5)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_lone_copies_are_joined_into_whole_groups(k):
    # Every copy comes back alone (no cluster at all): the look-alike set is tested whole.
    whole = 0
    for seed in range(5):
        loss, inc, groups = saturating_run([k] * 4, 20, 32, 100 * k + seed)
        n = loss.shape[0]
        flagged = np.zeros(n, dtype=bool)
        flagged[np.concatenate(groups)] = True
        out = join_fragments([], flagged, loss, inc, alike_within(groups, n), seed=seed)
        found = {tuple(g.tolist()) for g in out.groups}
        whole += sum(tuple(g.tolist()) in found for g in groups)
        for g in out.groups:  # never a record from two groups
            assert len({int(np.searchsorted([x[0] for x in groups], r, "right")) for r in g}) == 1
    assert whole >= 0.75 * 20


def test_fragments_grow_and_unrelated_lookalikes_stay_apart():
    # Two real groups of 4 that look alike to each other (one block), 12 runs: a join across
    # them is a false join; the family-wise level is 0.05.
    false_runs = joined_whole = 0
    for seed in range(12):
        loss, inc, groups = saturating_run([4, 4, 4, 4], 10, 32, seed)
        n = loss.shape[0]
        flagged = np.zeros(n, dtype=bool)
        flagged[np.concatenate(groups)] = True
        blocks = [np.concatenate(groups[:2]), np.concatenate(groups[2:])]
        fragments = [groups[0][:2], groups[2][:2]]
        out = join_fragments(fragments, flagged, loss, inc, alike_within(blocks, n), seed=seed)
        of = np.full(n, -1)
        for k, g in enumerate(groups):
            of[g] = k
        false_runs += any(len(set(of[g].tolist())) > 1 for g in out.groups)
        joined_whole += sum(any(set(g) == set(x.tolist()) for x in out.groups) for g in groups)
    assert false_runs <= 2  # Binomial(12, 0.05): P(X >= 3) = 0.02
    assert joined_whole >= 20  # of 48 groups


def test_null_lookalikes_are_not_joined():
    # Unique records only (no cross-record effect), flagged and looking alike in blocks of 5.
    runs_with_join = 0
    for seed in range(20):
        loss, inc, _ = saturating_run([], 40, 32, seed)
        n = loss.shape[0]
        blocks = [np.arange(s, s + 5) for s in range(0, n, 5)]
        out = join_fragments(
            [], np.ones(n, dtype=bool), loss, inc, alike_within(blocks, n), seed=seed
        )
        runs_with_join += bool(out.joins)
    assert runs_with_join <= 3


def test_nothing_to_join_and_disabled():
    loss, inc, groups = saturating_run([3], 5, 16, 0)
    n = loss.shape[0]
    flagged = np.zeros(n, dtype=bool)
    flagged[groups[0]] = True
    assert join_fragments([], flagged, loss, inc, alike_within(groups, n), fwer=0).joins == []
    none = join_fragments([], np.zeros(n, dtype=bool), loss, inc, alike_within(groups, n))
    assert none.groups == [] and none.tested == 0
    skipped = join_fragments([], flagged, loss, inc, alike_within(groups, n), max_records=2)
    assert skipped.skipped and not skipped.joins


def test_lone_pairs_in_a_large_lookalike_set_are_still_tested():
    # Five pairs of copies that all look alike (10 lone records: too many for the whole-set
    # stage): round 1 holds the pairs of lone records back, and later rounds test them.
    loss, inc, groups = saturating_run([2] * 5, 10, 32, 7)
    n = loss.shape[0]
    flagged = np.zeros(n, dtype=bool)
    flagged[np.concatenate(groups)] = True
    out = join_fragments([], flagged, loss, inc, alike_within([np.arange(10)], n), seed=0)
    found = {tuple(g.tolist()) for g in out.groups}
    assert sum(tuple(g.tolist()) in found for g in groups) >= 4
    assert all(len(g) == 2 for g in out.groups)


def test_unflagged_copies_join_their_fragment_and_unflagged_lookalikes_do_not():
    # Groups of 5 found only as a 2-record fragment each; their other 3 copies and 2 unique
    # records per group (no influence) look alike to the fragment, and none is flagged.
    whole = false_runs = 0
    for seed in range(10):
        loss, inc, groups = saturating_run([5] * 4, 20, 32, 500 + seed)
        n = loss.shape[0]
        uniques = np.arange(20, n)
        blocks = [np.concatenate([g, uniques[2 * k : 2 * k + 2]]) for k, g in enumerate(groups)]
        fragments = [g[:2] for g in groups]
        out = join_fragments(
            fragments, np.zeros(n, dtype=bool), loss, inc, alike_within(blocks, n), seed=seed
        )
        assert out.neighbours == 20  # 3 copies and 2 unique records per group
        found = {tuple(g.tolist()) for g in out.groups}
        whole += sum(tuple(g.tolist()) in found for g in groups)
        false_runs += any(np.isin(g, uniques).any() for g in out.groups)
    assert whole >= 20  # of 40 (measured 26; the rest miss a copy or two)
    assert false_runs <= 2  # Binomial(10, 0.05): P(X >= 3) = 0.01


@pytest.mark.parametrize("seed", range(5))
def test_lazy_pvalue_decides_as_the_full_one(seed):
    # Asking at growing bars goes on with the same draws: each answer is p <= bar for the
    # p-value all the draws give.
    loss, inc, groups = saturating_run([3, 3], 0, 32, seed, noise=2.0)
    a, b = groups[0], groups[1][:1]
    full = CrtDirection(loss, inc, a, b, 6_000, np.random.default_rng(seed))
    full.at_most(1.0)
    assert full.complete
    lazy = CrtDirection(loss, inc, a, b, 6_000, np.random.default_rng(seed))
    for bar in [1e-3, 0.01, 0.05, 0.2, 0.5, 1.0]:
        assert lazy.at_most(bar) == (full.p_value <= bar)
    assert lazy.p_value == full.p_value


class _Known:
    def __init__(self, p):
        self.p = p

    def at_most(self, bar):
        return self.p <= bar


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=30), st.floats(0.001, 0.2))
def test_holm_rejects_what_the_sorted_pvalues_do(ps, level):
    order = np.argsort(ps, kind="stable")
    expected = set()
    for i, k in enumerate(order):
        if ps[k] > level / (len(ps) - i):
            break
        expected.add(int(k))
    assert {k for k, _ in _holm([_Known(p) for p in ps], level)} == expected
