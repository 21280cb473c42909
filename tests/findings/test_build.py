"""The findings stage: build_findings is its parts (clusters, risky records, membership) put
together once, on a stored text run and a synthetic image run."""

from __future__ import annotations

import shutil

import numpy as np

from memaudit.config import AnalysisConfig, FindingsConfig
from memaudit.estimate.analysis import analyze_run
from memaudit.findings.build import build_findings, extraction_metrics
from memaudit.findings.clusters import find_cluster_sets, link_thresholds
from memaudit.findings.membership import membership_scores
from memaudit.findings.risky import risky_unique_records
from memaudit.store.rundir import RunDir
from tests.conftest import ROOT
from tests.report.test_images import image_run

V1_RUN = ROOT / "fixtures" / "runs" / "v1-foundation"


def test_text_run_findings_are_their_parts(tmp_path):
    shutil.copytree(V1_RUN, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    analysis = analyze_run(run, AnalysisConfig())
    # Loose enough that 6 models give clusters and risky records to compare.
    cfg = FindingsConfig(
        link_z=2.0, link_fwer=None, link_null_ensembles=0, mia_auc=0.7, top_clusters=2
    )
    found = build_findings(run, analysis, cfg)

    inclusion, losses = run.inclusion(), np.nan_to_num(analysis.losses)
    texts = [r.text for r in analysis.records]
    sets = find_cluster_sets(
        analysis.result,
        texts,
        cfg,
        losses=losses,
        inclusion=inclusion,
        model_mask=analysis.valid,
    )
    clusters, cluster_of = sets.clusters, sets.cluster_of
    assert [c.members for c in found.influence_clusters] == [c.members for c in sets.influence]
    mia = membership_scores(losses, inclusion, analysis.valid)
    lira_tpr = found.lira["records"]["lira_tpr"]
    risky = risky_unique_records(
        analysis.result, cluster_of, cfg, None, mia["mia_auc"], lira_tpr=lira_tpr
    )
    assert found.clusters and found.risky
    assert [c.members for c in found.clusters] == [c.members for c in clusters]
    np.testing.assert_array_equal(found.cluster_of, cluster_of)
    assert [(f.index, f.reasons) for f in found.risky] == [(f.index, f.reasons) for f in risky]
    np.testing.assert_array_equal(found.membership["mia_auc"], mia["mia_auc"])
    assert (found.link_z, found.link_fraction) == link_thresholds(
        cfg, len(texts), int(analysis.valid.sum()), adjusted=True
    )
    # A run from the first release decoded nothing: no extraction, not zeros.
    assert found.extraction == {} and found.n_extract == 0
    assert extraction_metrics(run, inclusion) == ({}, 0)
    assert found.shown_clusters == found.clusters[:2]
    members = {m for c in found.clusters[:2] for m in c.members}
    assert found.flagged() == members | {f.index for f in found.risky}


def test_image_run_links_by_pixels(tmp_path):
    run = image_run(tmp_path / "run")
    analysis = analyze_run(run, AnalysisConfig())
    found = build_findings(run, analysis, FindingsConfig(link_z=2.0, link_fwer=None))
    links = [lk for c in found.clusters for lk in c.links]
    assert links
    assert all(lk.pixel_similarity is not None and lk.lexical_similarity is None for lk in links)
    # Records 0 and 1 are the same image: a visual near-duplicate pair.
    pair = next(c for c in found.clusters if {0, 1} <= set(c.members))
    assert pair.kind == "visual"
    assert found.extraction == {}  # classifiers decode nothing
