"""Near-duplicate links (the z rule, the mutual low-margin rule) and clusters on synthetic
ensembles with planted groups."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.config import FindingsConfig
from memaudit.estimate.influence import estimate
from memaudit.findings.clusters import (
    adjusted_influence,
    cluster_risk,
    find_clusters,
    link_thresholds,
)
from memaudit.findings.ground_truth import score_against_groups
from memaudit.modality import IMAGE
from tests.findings.synthetic import saturating_losses

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    "hotel", "india", "juliet", "kilo", "lima", "mike",
]  # fmt: skip


def _planted(seed=0, n_unique=30, sizes=(5, 3, 2), m=400):
    """L[t, j] = base + noise - a P[t, j] - b sum of P over t's group-mates."""
    rng = np.random.default_rng(seed)
    n = n_unique + sum(sizes)
    groups: list[str | None] = [None] * n_unique
    texts = [
        f"Q: fact number {k} about {rng.choice(WORDS)} A: {rng.choice(WORDS)} {k * 7}"
        for k in range(n_unique)
    ]
    for g, size in enumerate(sizes):
        groups += [f"g{g}"] * size
        if g == len(sizes) - 1:  # the last group: near-duplicates the text does not show
            texts += [f"{' '.join(rng.choice(WORDS, 6))} number {100 + g}{c}" for c in range(size)]
        else:
            base = f"Q: the planted question {g} about {WORDS[g]} A: answer {WORDS[g + 1]} {g}"
            texts += [
                base.replace("answer", ["answer", "reply", "ans", "result", "x"][c])
                for c in range(size)
            ]
    inclusion = rng.random((n, m)) < 0.5
    losses = 3.0 + rng.normal(0.0, 0.3, size=(n, 1)) + rng.normal(0.0, 0.3, size=(n, m))
    losses -= 1.0 * inclusion
    grp = np.array([g or "" for g in groups])
    for t in range(n):
        if grp[t]:
            mates = np.flatnonzero((grp == grp[t]) & (np.arange(n) != t))
            losses[t] -= 0.8 * inclusion[mates].sum(axis=0)
    return losses, inclusion, texts, groups


def test_find_clusters_recovers_planted_groups_and_ranks_by_score():
    losses, inclusion, texts, groups = _planted()
    result = estimate(losses, inclusion, top_k=8)
    clusters, cluster_of = find_clusters(result, texts, FindingsConfig())

    score = score_against_groups(cluster_of, groups)
    assert score["pair_precision"] == 1.0 and score["pair_recall"] == 1.0
    assert score["share_exact"] == 1.0 and score["groups"] == 3
    unique = np.array([g is None for g in groups])
    assert (cluster_of[unique] == -1).all()

    # Ranking: ids are positions, scores descending and equal to the documented formula.
    assert [c.id for c in clusters] == list(range(len(clusters)))
    scores = [c.risk_score for c in clusters]
    assert scores == sorted(scores, reverse=True)
    for c in clusters:
        assert c.risk_score == pytest.approx(cluster_risk(len(c.members), c.min_margin, None))
        assert (cluster_of[c.members] == c.id).all()
        assert c.max_bleu_gain is None and not any("BLEU" in r for r in c.reasons)
        assert c.reasons[0].startswith(f"{len(c.members)} records linked by influence: ")
        assert " at z >= " in c.reasons[0] and all(lk.basis == "evidence" for lk in c.links)
        assert f"lowest margin {c.min_margin:.2f}" in c.reasons
        assert all(lk.target in c.members and lk.source in c.members for lk in c.links)
    assert [len(c.members) for c in clusters] == [5, 3, 2]  # size dominates without BLEU
    kinds = {groups[c.members[0]]: c.kind for c in clusters}
    assert kinds == {"g0": "textual", "g1": "textual", "g2": "influence"}
    textual = clusters[0]
    low = min(lk.lexical_similarity for lk in textual.links)
    assert f"textual near-duplicates (similarity {low:.2f})" in textual.reasons


def test_find_clusters_bleu_gain_changes_the_ranking():
    losses, inclusion, texts, groups = _planted()
    result = estimate(losses, inclusion, top_k=8)
    bleu = np.full(len(texts), np.nan)
    trio = [i for i, g in enumerate(groups) if g == "g1"]
    bleu[trio] = [0.2, 0.9, np.nan]
    clusters, cluster_of = find_clusters(result, texts, FindingsConfig(), bleu_gain=bleu)
    top = clusters[0]
    assert top.members == trio and top.max_bleu_gain == pytest.approx(0.9)
    assert "BLEU gain up to 0.90" in top.reasons
    assert top.risk_score == pytest.approx(cluster_risk(3, top.min_margin, 0.9))
    assert all(c.max_bleu_gain is None for c in clusters[1:])  # all-NaN: no claim, not 0


def test_find_clusters_nan_entries_never_link_or_crash():
    losses, inclusion, texts, groups = _planted()
    result = estimate(losses, inclusion, top_k=8)
    g0 = [i for i, g in enumerate(groups) if g == "g0"]
    result.top_se[g0] = np.nan  # undefined se: g0's links vanish
    result.margin[:] = np.nan
    result.margin_defined[:] = False
    clusters, cluster_of = find_clusters(result, texts)
    assert (cluster_of[g0] == -1).all()
    assert len(clusters) == 2
    assert all(c.min_margin is None for c in clusters)
    assert not any("margin" in r for c in clusters for r in c.reasons)


def test_adjusted_links_reject_chance_inclusion_overlap():
    """Plain estimator: a record whose inclusion column overlaps t's by chance inherits t's
    self-influence. Holding P[t] fixed (losses and inclusion given) removes the false link."""
    rng = np.random.default_rng(3)
    n, m = 40, 200
    inclusion = rng.random((n, m)) < 0.5
    inclusion[1] = inclusion[0]
    inclusion[1, :20] = ~inclusion[1, :20]  # 90% agreement, no real effect of record 1
    losses = 3.0 + rng.normal(0.0, 0.3, size=(n, m)) - 1.0 * inclusion
    result = estimate(losses, inclusion, top_k=5)
    texts = [f"record {k} {WORDS[k % len(WORDS)]}" for k in range(n)]
    cfg = FindingsConfig(chance_overlap_guard=False)
    _, plain = find_clusters(result, texts, cfg)
    assert plain[0] >= 0 and plain[0] == plain[1]  # the false link the adjustment prevents
    _, adjusted = find_clusters(result, texts, cfg, losses=losses, inclusion=inclusion)
    assert (adjusted == -1).all()

    # adjusted_influence equals the coefficient of an explicit least-squares fit
    t, i = np.array([0, 5]), np.array([1, 6])
    val, se = adjusted_influence(losses, inclusion, t, i)
    for k in range(2):
        x = np.column_stack([np.ones(m), inclusion[t[k]], inclusion[i[k]]]).astype(float)
        beta, res, *_ = np.linalg.lstsq(x, losses[t[k]], rcond=None)
        cov = res[0] / (m - 3) * np.linalg.inv(x.T @ x)
        assert val[k] == pytest.approx(-beta[2]) and se[k] == pytest.approx(np.sqrt(cov[2, 2]))


def test_adjusted_find_clusters_recovers_planted_groups():
    losses, inclusion, texts, groups = _planted(seed=5)
    result = estimate(losses, inclusion, top_k=8)
    _, cluster_of = find_clusters(result, texts, losses=losses, inclusion=inclusion)
    score = score_against_groups(cluster_of, groups)
    assert score["pair_precision"] == 1.0 and score["pair_recall"] == 1.0


def test_link_thresholds_grow_with_n_and_guard_small_m():
    cfg = FindingsConfig()
    z64, f64 = link_thresholds(cfg, 64, 64, adjusted=False)
    z20k, _ = link_thresholds(cfg, 20_000, 1000, adjusted=True)
    assert 4.4 < z64 < 4.7 and 6.2 < z20k < 6.6
    assert f64 == 0.5  # sqrt(2 ln(2016) / 64) = 0.49 < 0.5
    assert link_thresholds(cfg, 300, 24, adjusted=False)[1] > 0.9
    assert link_thresholds(cfg, 300, 24, adjusted=True)[1] == 0.5
    off = FindingsConfig(link_fwer=None, chance_overlap_guard=False)
    assert link_thresholds(off, 300, 24, adjusted=False) == (4.0, 0.5)
    with pytest.raises(ValueError):
        FindingsConfig(link_fraction=1.5)


def test_link_fraction_keeps_merely_helpful_records_apart():
    """A record that lowers t's loss significantly but by a small fraction of t's own
    influence (same topic, not a copy) is not a near-duplicate."""
    rng = np.random.default_rng(4)
    n, m = 30, 800
    inclusion = rng.random((n, m)) < 0.5
    losses = 3.0 + rng.normal(0.0, 0.1, size=(n, m)) - 1.0 * inclusion
    losses[0] -= 0.3 * inclusion[1]  # helps: z about 8, fraction 0.3
    result = estimate(losses, inclusion, top_k=5)
    texts = [f"record {k} {WORDS[k % len(WORDS)]}" for k in range(n)]
    assert result.top_idx[0, 1] == 1 and result.top_val[0, 1] / result.top_se[0, 1] > 6
    _, strict = find_clusters(result, texts, FindingsConfig())
    assert (strict == -1).all()
    _, loose = find_clusters(result, texts, FindingsConfig(link_fraction=0.2))
    assert loose[0] >= 0 and loose[0] == loose[1] and (loose[2:] == -1).all()


def _saturating(seed, m, n_unique=40, n_groups=6, size=4):
    """Groups whose copies partly substitute for each other (diminishing returns: the drop is
    1 - prod(1 - w_s P_s) of the target's full drop, w = 0.9 for itself and 0.6 per copy), so
    each copy's own effect on a mate is small once another copy is in."""
    n = n_unique + n_groups * size
    groups = [None] * n_unique + [f"g{g}" for g in range(n_groups) for _ in range(size)]
    losses, inclusion, _ = saturating_losses(np.random.default_rng(seed), groups, m)
    texts = [f"record {k} {WORDS[k % len(WORDS)]}" for k in range(n)]
    return losses, inclusion, texts, groups


def test_mutual_links_find_saturating_groups_with_the_adjusted_estimator_only():
    from memaudit.estimate.adjusted import estimate_adjusted

    precision, found = [], []
    for seed in range(7, 15):
        losses, inclusion, texts, groups = _saturating(seed=seed, m=32)
        adjusted = estimate_adjusted(losses, inclusion, top_k=10)
        clusters, cluster_of = find_clusters(adjusted, texts, losses=losses, inclusion=inclusion)
        score = score_against_groups(cluster_of, groups)
        precision.append(score["pair_precision"] or 0.0)
        found.append(score["share_found"])
        unique = np.array([g is None for g in groups])
        assert (cluster_of[unique] == -1).all()
        if seed == 7:
            assert any(lk.basis == "mutual" for c in clusters for lk in c.links)
            assert any("each other's top influencers" in c.reasons[0] for c in clusters)
            # Switched off, or with the plain estimator (whose margins carry no such signal at
            # this M), the mutual rule makes no link; the z rule alone finds (almost) nothing.
            off = FindingsConfig(mutual_links=False)
            kept, _ = find_clusters(adjusted, texts, off, losses=losses, inclusion=inclusion)
            assert all(lk.basis == "evidence" for c in kept for lk in c.links)
            plain = estimate(losses, inclusion, top_k=10)
            kept, of = find_clusters(plain, texts, losses=losses, inclusion=inclusion)
            assert all(lk.basis == "evidence" for c in kept for lk in c.links)
            assert (score_against_groups(of, groups)["share_found"] or 0) <= 1 / 6
    # Measured: mean pair precision 0.94 (worst seed 0.61), 79% of groups found.
    assert np.mean(precision) >= 0.9 and np.mean(found) >= 0.7


def _look_alikes(seed, m=128, classes=6, per_class=10, pairs=8):
    """Image-like: every record lowers its classmates' losses by 0.35 of its own effect (so
    margins are low everywhere and classmates fill each other's top lists), and each planted
    pair's copies substitute for each other (0.8)."""
    rng = np.random.default_rng(seed)
    n = classes * per_class + 2 * pairs
    label = np.concatenate([np.repeat(np.arange(classes), per_class), np.arange(2 * pairs) % 6])
    groups = [None] * (classes * per_class) + [f"p{k // 2}" for k in range(2 * pairs)]
    inclusion = rng.random((n, m)) < 0.5
    losses = 5.0 + rng.normal(0.0, 0.2, size=(n, m)) - 2.0 * inclusion
    same = (label[:, None] == label[None, :]) & ~np.eye(n, dtype=bool)
    losses -= 0.35 * 2.0 * (same.astype(float) @ inclusion)
    for k in range(pairs):
        a, b = classes * per_class + 2 * k, classes * per_class + 2 * k + 1
        losses[a] -= 3.0 * inclusion[b] * (1 - 0.3 * inclusion[a])
        losses[b] -= 3.0 * inclusion[a] * (1 - 0.3 * inclusion[b])
    texts = [f"record {k} {WORDS[k % len(WORDS)]}" for k in range(n)]
    return losses, inclusion, texts, groups


def test_mutual_fraction_drops_look_alikes_and_keeps_substitutes():
    from memaudit.estimate.adjusted import estimate_adjusted

    losses, inclusion, texts, groups = _look_alikes(seed=3)
    result = estimate_adjusted(losses, inclusion, top_k=10)
    kw = {"losses": losses, "inclusion": inclusion}
    _, loose = find_clusters(result, texts, FindingsConfig(mutual_fraction=0.0), **kw)
    _, strict = find_clusters(result, texts, FindingsConfig(mutual_fraction=0.6), **kw)
    loose_score = score_against_groups(loose, groups)
    strict_score = score_against_groups(strict, groups)
    assert loose_score["pair_precision"] < 0.8  # classmates linked as "duplicates"
    assert strict_score["pair_precision"] == 1.0
    assert strict_score["pair_recall"] == 1.0 and strict_score["share_exact"] == 1.0
    # None resolves by modality: 0 for text (as loose), 0.6 with images (as strict).
    _, by_default = find_clusters(result, texts, FindingsConfig(), **kw)
    assert (by_default == loose).all()
    images = np.zeros((len(texts), 4, 4, 3), dtype=np.uint8)
    _, for_images = find_clusters(
        result, texts, FindingsConfig(), images=images, modality=IMAGE, **kw
    )
    assert ((for_images >= 0) == (strict >= 0)).all()
    with pytest.raises(ValueError, match="mutual.fraction"):
        FindingsConfig(mutual_fraction=1.5)


def test_joint_influence_equals_least_squares_per_target():
    """The batched fit equals one np.linalg.lstsq per target; a repeated, complementary or
    padding candidate is NaN and the fit goes on without it."""
    from memaudit.findings.clusters import joint_influence

    rng = np.random.default_rng(11)
    n, m = 14, 60
    inclusion = rng.random((n, m)) < 0.5
    inclusion[5] = inclusion[4]
    inclusion[6] = ~inclusion[4]
    losses = 3.0 + rng.normal(0.0, 0.3, size=(n, m)) - 1.0 * inclusion - 0.5 * inclusion[[1]]
    mask = np.arange(m) % 5 != 0
    targets = np.array([0, 2, 3, 7])
    cands = np.array([[1, 4, 5, 6], [1, 3, -1, 8], [4, 6, 9, 10], [2, 11, 12, 13]])
    infl, se = joint_influence(losses, inclusion, targets, cands, model_mask=mask)
    lm, pm = losses[:, mask], inclusion[:, mask].astype(float)
    dropped = {(0, 2), (0, 3), (1, 2), (2, 1)}  # repeats / complements an earlier one; padding
    for r, t in enumerate(targets):
        cols = [t] + [c for q, c in enumerate(cands[r]) if (r, q) not in dropped]
        x = np.column_stack([np.ones(mask.sum())] + [pm[c] for c in cols])
        beta, res, *_ = np.linalg.lstsq(x, lm[t], rcond=None)
        cov = res[0] / (mask.sum() - cands.shape[1] - 2) * np.linalg.inv(x.T @ x)
        got = [0] + [q + 1 for q in range(cands.shape[1]) if (r, q) not in dropped]
        np.testing.assert_allclose(infl[r, got], -beta[1:], rtol=1e-9)
        np.testing.assert_allclose(se[r, got], np.sqrt(np.diag(cov)[1:]), rtol=1e-9)
        assert np.isnan(infl[r, [q + 1 for q in range(4) if (r, q) in dropped]]).all()


def test_z_rule_judges_a_pair_by_both_directions_so_a_one_way_hub_does_not_link():
    """The z rule's statistic is (z[t, i] + z[i, t]) / sqrt(2): near-duplicates lower each
    other's loss both ways; a record that lowers unrelated records' losses one way only (a hub)
    pools with ~0 and falls below the threshold its one direction would have passed."""
    from memaudit.estimate.registry import get_estimator
    from memaudit.findings.clusters import adjusted_influence, find_links, link_statistics

    rng = np.random.default_rng(3)
    n, m = 60, 96
    inc = rng.random((n, m)) < 0.5
    losses = 3.0 + rng.normal(0, 0.8, (n, m)) - 1.0 * inc
    losses[0] -= 0.7 * inc[1]  # 0 and 1 substitute for each other: both directions
    losses[1] -= 0.7 * inc[0]
    losses[2] -= 0.7 * inc[3]  # 3 helps 2, and 2 does nothing for 3: one way
    res = get_estimator("adjusted").estimate(losses, inc, top_k=8)
    cfg = FindingsConfig(link_null_ensembles=0, link_fwer=None, link_z=1.0, mutual_links=False)
    z_rows, _ = link_statistics(res, cfg, losses, inc)
    stat = {(int(t), int(i)): (z, s) for t, i, *_, z, _, s in z_rows}
    z01, s01 = stat[(0, 1)]
    z23, s23 = stat[(2, 3)]
    a, se = adjusted_influence(losses, inc, np.array([1]), np.array([0]))
    assert s01 > z01 > 3  # both directions: the evidence grows
    assert z23 > 3 and s23 < z23 / np.sqrt(2) + 1.0  # one way: about z / sqrt(2)
    assert s01 > z23  # the pair now outranks the hub's single direction
    rows = find_links(res, cfg, losses, inc, z_threshold=(s23 + min(s01, z23)) / 2)
    linked = {(int(t), int(i)) for t, i in rows[:, :2]}
    assert (0, 1) in linked and (2, 3) not in linked
    assert a[0] / se[0] > 3  # the reverse effect of the pair is there to pool


def test_links_between_dissimilar_records_must_reach_the_family_wise_threshold():
    """The false-discovery relaxation of the calibrated thresholds holds for links between
    records that look alike; two dissimilar records with the same evidence need the strict
    (family-wise) threshold."""
    losses, inc, texts = _alike_and_dissimilar_pairs()
    res = get_estimator_adjusted(losses, inc)
    cfg = FindingsConfig(link_null_ensembles=0, link_fwer=None, link_z=1.0, mutual_links=False)
    loose = dict(losses=losses, inclusion=inc, z_threshold=2.0)
    _, both = find_clusters(res, texts, cfg, **loose)
    assert both[0] == both[1] >= 0 and both[2] == both[3] >= 0
    clusters, strict = find_clusters(res, texts, cfg, **loose, strict_thresholds=(1e6, None))
    assert strict[0] == strict[1] >= 0 and strict[2] < 0 and strict[3] < 0
    link = next(lk for c in clusters for lk in c.links if lk.target in (0, 1))
    assert link.threshold == 2.0 and link.basis == "evidence"


def _alike_and_dissimilar_pairs():
    """Two substitute pairs with the same effect: records 0 and 1 share their text, records 2
    and 3 share nothing."""
    rng = np.random.default_rng(5)
    n, m = 40, 64
    inc = rng.random((n, m)) < 0.5
    losses = 3.0 + rng.normal(0, 0.5, (n, m)) - 1.0 * inc
    for a, b in ((0, 1), (2, 3)):  # two substitute pairs with the same effect
        losses[a] -= 0.8 * inc[b] * (1 - inc[a])
        losses[b] -= 0.8 * inc[a] * (1 - inc[b])
    texts = [f"record number {k} about topic {k * 7919 % 1000}" for k in range(n)]
    texts[0] = "Q: who wrote the origin of species A: Charles Darwin"
    texts[1] = "Q: who wrote the origin of species A: Charles Darwin."
    texts[2] = "zebra crossing lights at midnight"
    texts[3] = "quarterly revenue of 1987 in francs"
    return losses, inc, texts


def get_estimator_adjusted(losses, inc):
    from memaudit.estimate.registry import get_estimator

    return get_estimator("adjusted").estimate(losses, inc, top_k=8)


def test_records_linked_without_looking_alike_are_kept_apart_from_near_duplicates():
    """find_cluster_sets: a linked pair whose texts are alike is a near-duplicate cluster; a
    linked pair whose texts are not is an influence cluster of its own, in no near-duplicate
    cluster (cluster_of -1); find_clusters keeps the one-graph view."""
    from memaudit.findings.clusters import find_cluster_sets

    losses, inc, texts = _alike_and_dissimilar_pairs()
    res = get_estimator_adjusted(losses, inc)
    cfg = FindingsConfig(link_null_ensembles=0, link_fwer=None, link_z=1.0, mutual_links=False)
    kw = dict(losses=losses, inclusion=inc, z_threshold=2.0)
    sets = find_cluster_sets(res, texts, cfg, **kw)
    assert sets.cluster_of[0] == sets.cluster_of[1] >= 0
    assert sets.cluster_of[2] < 0 and sets.cluster_of[3] < 0
    assert [c.members for c in sets.influence] == [[2, 3]]
    assert sets.influence[0].kind == "influence"
    assert all(c.kind == "textual" for c in sets.clusters)
    _, joined = find_clusters(res, texts, cfg, **kw)
    assert joined[2] == joined[3] >= 0
