"""The per-record near-duplicate verdict: flags copies whose pairwise links need more models,
holds its false discovery rate on data without near-duplicates, and says how settled it is."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.estimate.registry import get_estimator
from memaudit.findings.near_duplicates import SETTLED, near_duplicate_verdict
from tests.findings.synthetic import saturating_losses


def _ensemble(seed, m, n_unique=120, sizes=(2, 3, 4, 5, 6) * 4, spread=(3.0, 5.0)):
    """Saturating groups (a copy's drop is 1 - prod(1 - w P) of its full drop, w = 0.9 for
    itself and 0.6 per mate) among unique records whose full drops vary over ``spread``."""
    groups = [None] * n_unique + [f"g{g}" for g, s in enumerate(sizes) for _ in range(s)]
    losses, inclusion, grp = saturating_losses(np.random.default_rng(seed), groups, m, spread)
    return losses, inclusion, np.array([g is not None for g in groups]), grp


@pytest.mark.parametrize(("m", "min_recall"), [(16, 0.5), (32, 0.9)])
def test_copies_are_flagged_at_small_m_with_their_partners(m, min_recall):
    """20 saturating groups of 2-6 among 120 unique records (measured: recall 0.58 at 16
    models, 0.98 at 32, precision 1.00 at both). Partners are named only where the records
    look alike (at 16 models all 8 mutual top-influencer pairs were chance ones)."""
    losses, inc, grouped, grp = _ensemble(0, m)
    res = get_estimator("adjusted").estimate(losses, inc, top_k=10)
    # Copies share their text, as planted copies nearly do; unique records share nothing.
    label = np.where(grouped, grp, np.arange(len(grp)).astype(str))
    v = near_duplicate_verdict(res, 0.05, alike=lambda p: label[p[:, 0]] == label[p[:, 1]])
    precision = grouped[v.flag].mean()
    recall = v.flag[grouped].mean()
    assert precision >= 0.95 and recall >= min_recall, (precision, recall)
    named = [(t, i) for t in np.flatnonzero(v.flag) for i in v.partners[t]]
    assert all(grp[t] == grp[i] for t, i in named) and (m < 32 or len(named) >= 20)
    assert v.dip_p <= 0.05  # copies form a mode of their own
    # At 32 models most flags are settled; at 16 (recall 0.58) the verdict says it is not.
    assert v.probability[v.flag].max() <= 1.0
    if m >= 32:
        assert np.median(v.probability[v.flag]) > SETTLED
    else:
        assert v.unsettled.sum() >= 0.1 * len(grp)


def test_no_flags_on_data_without_near_duplicates():
    """Unique records with a wide spread of memorability (full drops 0.5-5 nats, so the
    log-margins have a long lower tail) and no copy: without the dip test 6 of these 30
    ensembles flagged about 22 records each; the dip test (level 0.05 for any unimodal
    spread) leaves at most a few."""
    runs_with_flags = 0
    for seed in range(15):
        for m in (16, 32):
            losses, inc, _, _ = _ensemble(seed, m, n_unique=150, sizes=(), spread=(0.5, 5.0))
            res = get_estimator("adjusted").estimate(losses, inc, top_k=10)
            runs_with_flags += bool(near_duplicate_verdict(res, 0.05).flag.any())
    assert runs_with_flags <= 3  # 30 runs x 0.05 = 1.5 expected at most


def test_clustered_records_count_as_near_duplicated_and_settled():
    losses, inc, grouped, _ = _ensemble(1, 16)
    res = get_estimator("adjusted").estimate(losses, inc, top_k=10)
    cluster_of = np.full(len(grouped), -1)
    cluster_of[[0, 1]] = 7  # two unique records a cluster holds: by their links
    v = near_duplicate_verdict(res, 0.05, cluster_of)
    assert v.flag[0] and v.flag[1] and not v.unsettled[[0, 1]].any()
    assert v.partners[0] == [1] and v.partners[1] == [0]
    doc = v.to_json([f"r{k}" for k in range(len(grouped))])
    row = next(r for r in doc["records"] if r["index"] == 0)
    assert row["basis"] in ("cluster", "cluster and margin") and row["partners"] == ["r1"]
    assert doc["n_flagged"] == int(v.flag.sum()) and doc["n_in_clusters"] == 2


def test_a_weak_signal_flags_nothing_and_leaves_nothing_unsettled():
    """Full drops near the noise (0.05 nats against a loss sd of 0.5): no verdict to give,
    and nothing that more models of this size would flip."""
    losses, inc, _, _ = _ensemble(2, 32, spread=(0.02, 0.05))
    res = get_estimator("adjusted").estimate(losses, inc, top_k=10)
    v = near_duplicate_verdict(res, 0.05)
    assert not v.by_margin.any()


def test_look_alikes_name_flagged_records_outside_the_cluster_only():
    """Each flagged record lists the other flagged records that look like it and are not
    already its cluster mates or partners, one of the two in no cluster; records with no flag
    are never listed, and without a similarity nothing is searched."""
    losses, inc, grouped, grp = _ensemble(0, 16)
    res = get_estimator("adjusted").estimate(losses, inc, top_k=10)
    label = np.where(grouped, grp, np.arange(len(grp)).astype(str))
    first = np.flatnonzero(grp == "g3")  # a group of 5: two of them form a cluster
    cluster_of = np.full(len(grp), -1)
    cluster_of[first[:2]] = 0
    v = near_duplicate_verdict(
        res, 0.05, cluster_of, alike=lambda p: label[p[:, 0]] == label[p[:, 1]]
    )
    flagged = v.flag
    for t in np.flatnonzero(flagged):
        looks = v.look_alike[t]
        assert all(flagged[i] and label[i] == label[t] for i in looks), (t, looks)
        assert not set(looks) & set(v.partners[t])
        assert len(looks) <= 5
        if cluster_of[t] >= 0:
            assert all(cluster_of[i] < 0 for i in looks)
    # The cluster's members see the group's other flagged copies; they see the cluster.
    rest = [i for i in first[2:] if flagged[i]]
    assert rest and set(rest) <= set(v.look_alike[first[0]])
    assert all(set(first[:2]) <= set(v.look_alike[i]) for i in rest)
    # Unflagged records get none; without a similarity the search is off.
    assert all(v.look_alike[t] == [] for t in np.flatnonzero(~flagged))
    assert near_duplicate_verdict(res, 0.05, cluster_of).look_alike is None
    row = next(r for r in v.to_json(list(label))["records"] if r["index"] == first[0])
    assert row["look_alike"] == [label[i] for i in v.look_alike[first[0]]]
