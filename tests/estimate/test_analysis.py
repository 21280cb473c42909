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


def test_analysis_of_the_first_models_equals_a_smaller_run_and_writes_nothing(tmp_path):
    """analyze_run(models=m) is what a run of m models estimates (the benchmarks replay
    --models auto with it); it leaves the run's own files as they were."""
    import shutil

    import numpy as np

    from memaudit.config import AnalysisConfig
    from memaudit.estimate.analysis import analyze_run
    from memaudit.estimate.registry import get_estimator
    from memaudit.store.rundir import RunDir
    from tests.conftest import ROOT

    shutil.copytree(ROOT / "fixtures" / "runs" / "v1-foundation", tmp_path / "run")
    run = RunDir(tmp_path / "run")
    full = analyze_run(run, AnalysisConfig())
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    part = analyze_run(run, AnalysisConfig(), models=4)
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before
    assert part.valid.sum() == 4 and full.valid.sum() == 6
    losses = np.nan_to_num(full.losses)[:, :4]
    alone = get_estimator("adjusted").estimate(losses, run.inclusion()[:, :4])
    np.testing.assert_allclose(part.result.self_influence, alone.self_influence, atol=1e-9)
    assert not np.allclose(part.result.self_influence, full.result.self_influence)
