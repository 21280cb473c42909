"""The analysis stage: group summaries of the influence estimates."""

from __future__ import annotations

import numpy as np

from memaudit.estimate.influence import estimate
from tests.findings.test_clusters import _planted


def test_group_summary_equals_a_loop_over_planted_records():
    from memaudit.data.records import Record
    from memaudit.estimate.analysis import group_summary, top_other

    losses, inclusion, texts, groups = _planted(seed=2)
    groups[0] = "solo"  # a planted group of one: no mates, recall 0
    records = [Record(t, str(t), texts[t], None, g, t) for t, g in enumerate(groups)]
    for top_k in (1, 3, 8):
        result = estimate(losses, inclusion, top_k=top_k)
        got = group_summary(records, result)["near_duplicated"]
        other, names = top_other(result), np.array([g or "" for g in groups])
        hits, recalls = [], []
        for t in np.flatnonzero(names != ""):
            mates = set(np.flatnonzero(names == names[t])) - {t}
            hits.append(other[t] in mates)
            ranked = [i for i in result.top_idx[t] if i != t and i >= 0][: len(mates)]
            recalls.append(len(mates.intersection(ranked)) / len(mates) if mates else 0.0)
        assert got["top_other_in_group"] == np.mean(hits)
        assert got["group_recall_at_size"] == np.mean(recalls)
