"""Scoring clusters against planted ground truth (``group`` fields written by memaudit plant):
pair precision and recall, groups found and recovered exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def score_against_groups(cluster_of: np.ndarray, groups: Sequence[str | None]) -> dict[str, Any]:
    """Ground truth from `memaudit plant`: pair precision (pairs of records in one cluster that
    share a planted group / pairs in one cluster) and recall (/ pairs in one planted group), the
    share of planted groups recovered exactly (one cluster holds exactly the group) and by
    majority (one cluster holds more than half of the group, and the group is more than half of
    that cluster), the share found (some cluster holds two or more of the group's records and
    nothing else: the group was detected, perhaps in fragments), the share of clusters that are
    pure (all records from one planted group), and the counts behind each number. Groups with a
    single record have no pair to recover and are not counted. A ratio with a zero denominator
    is None."""
    cluster_of = np.asarray(cluster_of, dtype=np.int64)
    if len(groups) != len(cluster_of):
        raise ValueError(f"{len(groups)} groups for {len(cluster_of)} records")
    lookup = {g: k for k, g in enumerate(sorted({g for g in groups if g is not None}))}
    gid = np.array([-1 if g is None else lookup[g] for g in groups], dtype=np.int64)

    clustered = cluster_of >= 0
    grouped = gid >= 0
    pairs_pred = _pairs(np.unique(cluster_of[clustered], return_counts=True)[1])
    pairs_true = _pairs(np.unique(gid[grouped], return_counts=True)[1])
    both = clustered & grouped
    joint, joint_n = np.unique(
        np.column_stack([cluster_of[both], gid[both]]), axis=0, return_counts=True
    )
    pairs_correct = _pairs(joint_n)

    cluster_size = dict(zip(*np.unique(cluster_of[clustered], return_counts=True), strict=True))
    group_size = dict(zip(*np.unique(gid[grouped], return_counts=True), strict=True))
    real_groups = {g for g, s in group_size.items() if s >= 2}
    exact, majority, found = set(), set(), set()
    pure = set()
    for (c, g), k in zip(joint, joint_n, strict=True):
        if k == cluster_size[c]:
            pure.add(int(c))
        if g not in real_groups:
            continue
        if k == cluster_size[c] and k >= 2:
            found.add(int(g))
        if k == group_size[g] == cluster_size[c]:
            exact.add(int(g))
        if 2 * k > group_size[g] and 2 * k > cluster_size[c]:
            majority.add(int(g))

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "pair_precision": ratio(pairs_correct, pairs_pred),
        "pair_recall": ratio(pairs_correct, pairs_true),
        "pairs_correct": pairs_correct,
        "pairs_predicted": pairs_pred,
        "pairs_true": pairs_true,
        "groups": len(real_groups),
        "groups_exact": len(exact),
        "groups_majority": len(majority),
        "share_exact": ratio(len(exact), len(real_groups)),
        "share_majority": ratio(len(majority), len(real_groups)),
        "groups_found": len(found),
        "share_found": ratio(len(found), len(real_groups)),
        "clusters": len(cluster_size),
        "clusters_pure": len(pure),
        "cluster_purity": ratio(len(pure), len(cluster_size)),
        "clustered_records": int(clustered.sum()),
        "ungrouped_records_clustered": int((clustered & ~grouped).sum()),
    }
