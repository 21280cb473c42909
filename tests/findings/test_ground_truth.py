"""Scoring clusters against planted groups."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.findings.ground_truth import score_against_groups


def test_score_against_groups_hand_made():
    groups = ["a", "a", "a", "b", "b", "c", "c", None, "d", "d", "e"]
    cluster_of = np.array([0, 0, 1, 1, 1, -1, -1, 1, 2, 2, -1])
    s = score_against_groups(cluster_of, groups)
    # predicted pairs: C(2,2) + C(4,2) + C(2,2) = 8; true: a 3, b 1, c 1, d 1 = 6 (e alone: 0)
    # correct: (0,1) a, (3,4) b, (8,9) d = 3
    assert (s["pairs_predicted"], s["pairs_true"], s["pairs_correct"]) == (8, 6, 3)
    assert s["pair_precision"] == pytest.approx(3 / 8) and s["pair_recall"] == pytest.approx(0.5)
    assert s["groups"] == 4  # the singleton group e has no pair to recover
    assert s["groups_exact"] == 1  # d
    assert s["groups_majority"] == 2  # a (2 of 3, and all of cluster 0), d; b is half of cl. 1
    assert s["share_exact"] == 0.25 and s["share_majority"] == 0.5
    assert s["ungrouped_records_clustered"] == 1 and s["clusters"] == 3
    # found: a pure cluster holds >= 2 of the group (a in cluster 0, d in cluster 2)
    assert s["groups_found"] == 2 and s["share_found"] == 0.5
    assert s["clusters_pure"] == 2 and s["cluster_purity"] == pytest.approx(2 / 3)

    none = score_against_groups(np.full(4, -1), ["a", "a", None, None])
    assert none["pair_precision"] is None and none["pair_recall"] == 0.0
