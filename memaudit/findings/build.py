"""The findings stage: from an analysis (influence estimates) to findings a user can act on.

Two kinds of risk come out of one ensemble:

* clusters (memaudit.findings.clusters): records that influence each other significantly, i.e.
  near-duplicates (textual, or only visible through the model). Duplication makes content
  extractable while hiding it from self-influence (the paper's central result), so the clusters
  are reported separately;
* risky unique records (memaudit.findings.risky): records in no cluster that the models
  memorise on their own, that become extractable when trained on, or whose membership the
  in/out losses give away (memaudit.findings.membership).

:func:`build_findings` runs once per analysis; the adaptive rounds read its flagged set and the
report renders the last round's findings, so nothing is computed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from memaudit.config import FindingsConfig
from memaudit.data.images import stored_images
from memaudit.ensemble.extract import aggregate
from memaudit.estimate.analysis import Analysis
from memaudit.findings.calibration import LinkCalibration, calibrate_links
from memaudit.findings.clusters import (
    Cluster,
    find_cluster_sets,
    link_thresholds,
    rejoin_clusters,
)
from memaudit.findings.dedup import DedupResult
from memaudit.findings.joining import Joined, join_fragments
from memaudit.findings.membership import membership_scores
from memaudit.findings.near_duplicates import NearDuplicateVerdict, near_duplicate_verdict
from memaudit.findings.risky import RecordFinding, risky_unique_records
from memaudit.findings.similarity import lexical_vectors, link_similarity
from memaudit.findings.verdict import pair_threshold, signal_verdict
from memaudit.modality import saved_modality
from memaudit.store.rundir import RunDir


@dataclass
class Findings:
    """Everything flagged in one analysis, with what the flags rest on."""

    config: FindingsConfig
    clusters: list[Cluster]  # every cluster, ranked; the report shows the first top_clusters
    cluster_of: np.ndarray  # (N,) cluster id per record, -1 for none
    risky: list[RecordFinding]  # risky unique records, ranked
    membership: dict[str, np.ndarray]  # membership_scores: mia_auc, mia_dprime, n_in, n_out
    extraction: dict[str, np.ndarray]  # extraction_metrics; {} when no model decoded
    n_extract: int  # models whose extraction was read
    link_z: float  # the z threshold links were held to
    link_fraction: float  # and the fraction of the largest influence
    # Measured the way the field measures (memaudit.findings.lira, memaudit.findings.dedup):
    lira: dict | None = None  # lira_findings: ROC metrics per variant and group, record columns
    dedup: DedupResult | None = None  # the deduplicator's pass over the same records
    dedup_table: dict | None = None  # dedup.three_way against the influence clusters
    # Weak-memorization work (#19/#14): what the link thresholds rest on, and the headline
    # verdict on signal strength. None when uncalibrated (link_null_ensembles = 0).
    link_calibration: LinkCalibration | None = None
    signal: dict | None = None  # verdict.signal_verdict: the report's headline
    # Unique records flagged against the thresholds, without the top_records display cut: what
    # the stopping rule watches (verdict()), not what the report lists.
    risky_all: list[int] | None = None
    # Every record's "has near-duplicates?" (the margin's signature, with a q-value and how
    # settled it is; memaudit.findings.near_duplicates): answered at fewer models than the
    # clusters, whose partners need pairwise evidence (#14).
    near_duplicate: NearDuplicateVerdict | None = None
    # Records linked by influence that do not look alike (one style, template or topic): a
    # finding of their own, in no near-duplicate cluster (clusters.find_cluster_sets).
    influence_clusters: list[Cluster] = field(default_factory=list)
    # Fragments joined on pooled evidence (memaudit.findings.joining); None: not run.
    joined: Joined | None = None

    def verdict(self, watch: str = "clusters") -> tuple[set[int], set[tuple[int, int]]]:
        """The verdict itself, for the stopping rule (#14): every record whose status is
        flagged (in any cluster, near-duplicated by the per-record verdict, or unique and
        risky against the thresholds) and, unless ``watch`` is "records", every pair of
        records placed in one cluster (their partners). No ranking cut: records near the
        report's top-10 line swap places without the verdict changing."""
        risky = self.risky_all if self.risky_all is not None else [f.index for f in self.risky]
        records = {int(m) for c in self.clusters for m in c.members} | {int(t) for t in risky}
        if self.near_duplicate is not None:
            records |= {int(t) for t in np.flatnonzero(self.near_duplicate.flag)}
        records |= {int(m) for c in self.influence_clusters for m in c.members}
        if watch == "records":
            return records, set()
        pairs = {
            (int(a), int(b))
            for c in self.clusters + self.influence_clusters
            for k, a in enumerate(c.members)
            for b in c.members[k + 1 :]
        }
        return records, pairs

    @property
    def shown_clusters(self) -> list[Cluster]:
        return self.clusters[: self.config.top_clusters]

    def flagged(self) -> set[int]:
        """Members of the shown clusters and the risky unique records."""
        members = {int(m) for c in self.shown_clusters for m in c.members}
        return members | {int(f.index) for f in self.risky}


def extraction_metrics(
    run: RunDir, inclusion: np.ndarray, model_mask: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Per-record in/out BLEU and exact match over the models that decoded (among
    ``model_mask``'s, when given); ({}, 0) if none."""
    models, results = run.extraction(inclusion.shape[1])
    if model_mask is not None:
        keep = [k for k, j in enumerate(models) if model_mask[j]]
        models, results = [models[k] for k in keep], [results[k] for k in keep]
    if not models:
        return {}, 0

    def column(key: str) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in r[key]] for r in results]).T

    return aggregate(column("bleu"), column("exact"), inclusion[:, models]), len(models)


def build_findings(run: RunDir, analysis: Analysis, cfg: FindingsConfig | None = None) -> Findings:
    """Membership scores, clusters and risky unique records of ``analysis``. Writes nothing."""
    cfg = cfg or FindingsConfig()
    records, res = analysis.records, analysis.result
    inclusion = run.inclusion()
    losses = np.nan_to_num(analysis.losses)
    extraction, n_extract = extraction_metrics(run, inclusion, analysis.valid)
    bleu_gain = extraction.get("bleu_gain")
    saved = run.read_config()  # read once: the modality and the estimator's covariates
    modality = saved_modality(saved)
    covariates = int(saved["config"].get("analysis", {}).get("covariates", 4))
    pixels = stored_images(run) if modality.stores_pixels else None
    texts = [r.text for r in records]
    images = None if pixels is None else pixels.images
    mia = membership_scores(losses, inclusion, analysis.valid)
    calibration = None
    if cfg.link_null_ensembles > 0:
        calibration = calibrate_links(
            res, cfg, losses, inclusion, analysis.valid, covariates=covariates
        )
    # The text similarity's TF-IDF, fit once: the links, the per-record partners and joining
    # (many chunks of pairs) all read it.
    vectors = lexical_vectors(texts) if modality.similarity == "lexical" else None
    found = find_cluster_sets(
        res,
        texts,
        cfg,
        bleu_gain,
        losses=losses,
        inclusion=inclusion,
        model_mask=analysis.valid,
        images=images,
        modality=modality,
        z_threshold=None if calibration is None else calibration.z_threshold,
        mutual_threshold=None if calibration is None else calibration.mutual_threshold,
        strict_thresholds=None
        if calibration is None
        else (calibration.z_strict, calibration.mutual_strict),
        vectors=vectors,
    )
    clusters, cluster_of = found.clusters, found.cluster_of
    threshold = getattr(cfg, modality.threshold_field)

    def alike(pairs: np.ndarray) -> np.ndarray:
        return link_similarity(modality, pairs, texts, images, vectors) >= threshold

    near = near_duplicate_verdict(res, cfg.near_duplicate_fdr, cluster_of, alike)
    joined = None
    if calibration is not None and cfg.join_fwer > 0:
        # Fragments of one group, and flagged records outside any cluster, that look alike:
        # joined where pooled evidence holds (memaudit.findings.joining). Needs the losses.
        ensemble = saved["config"].get("ensemble", {})
        joined = join_fragments(
            [np.array(c.members) for c in found.clusters],
            near.flag,
            losses,
            inclusion,
            alike,
            model_mask=analysis.valid,
            design=ensemble.get("design", "bernoulli"),
            fwer=cfg.join_fwer,
            seed=int(ensemble.get("seed", 0)),
        )
        if joined.joins:
            found = rejoin_clusters(
                found,
                joined.groups,
                [j.to_json() for j in joined.joins],
                res,
                cfg,
                bleu_gain,
                modality,
            )
            clusters, cluster_of = found.clusters, found.cluster_of
            near = near_duplicate_verdict(res, cfg.near_duplicate_fdr, cluster_of, alike)
    link_z, link_fraction = link_thresholds(
        cfg, len(records), int(analysis.valid.sum()), adjusted=True
    )
    if calibration is not None:
        link_z = calibration.z_threshold
    lira = lira_section(analysis.losses, inclusion, analysis.valid, cluster_of, cfg)
    lira_tpr = lira["records"]["lira_tpr"]
    # Ranked once without the display cut; the report shows the first top_records of it.
    uncut = replace(cfg, top_records=len(records))
    every_risky = risky_unique_records(
        res, cluster_of, uncut, bleu_gain, mia["mia_auc"], lira_tpr=lira_tpr
    )
    risky = every_risky[: cfg.top_records]
    risky_all = [f.index for f in every_risky]
    signal = signal_verdict(
        res,
        int(analysis.valid.sum()),
        pair_threshold(link_z, None if calibration is None else calibration.mutual_threshold),
        len(clusters),
        None if calibration is None else cfg.link_fwer,
    )
    dedup, table = dedup_section(analysis, texts, pixels, cluster_of, inclusion, covariates)
    return Findings(
        cfg,
        clusters,
        cluster_of,
        risky,
        mia,
        extraction,
        n_extract,
        link_z,
        link_fraction,
        lira=lira,
        dedup=dedup,
        dedup_table=table,
        link_calibration=calibration,
        signal=signal,
        risky_all=risky_all,
        near_duplicate=near,
        influence_clusters=found.influence,
        joined=joined,
    )


def lira_section(
    losses: np.ndarray,
    inclusion: np.ndarray,
    valid: np.ndarray,
    cluster_of: np.ndarray,
    cfg: FindingsConfig,
) -> dict:
    """LiRA from the ensemble, overall and for records in clusters vs unique records."""
    from memaudit.findings.lira import lira_findings

    groups = {"overall": None, "in_clusters": cluster_of >= 0, "unique": cluster_of < 0}
    return lira_findings(losses, inclusion, valid, groups, fpr=cfg.lira_fpr)


def dedup_section(
    analysis: Analysis,
    texts: list[str],
    pixels,
    cluster_of: np.ndarray,
    inclusion: np.ndarray,
    covariates: int,
) -> tuple[DedupResult, dict]:
    """The deduplicator's groups (MinHash for text, pHash for images) and the three-way table
    against the influence clusters, with the influence evidence for example pairs the
    deduplicator groups but the ensemble does not link."""
    from memaudit.estimate.registry import get_estimator
    from memaudit.findings.dedup import image_groups, text_groups, three_way

    dedup = image_groups(pixels.images) if pixels is not None else text_groups(texts)
    res = analysis.result

    def evidence(pairs: np.ndarray) -> list[dict]:
        idx = np.unique(pairs)
        rows = get_estimator(res.estimator).rows(
            np.nan_to_num(analysis.losses),
            inclusion,
            idx,
            model_mask=analysis.valid,
            covariates=covariates,
        )
        at = {int(t): k for k, t in enumerate(idx)}
        out = []
        for a, b in pairs:
            ab, ba = rows[at[a], b], rows[at[b], a]
            own = max(res.self_influence[a], res.self_influence[b])
            out.append(
                {
                    "influence_ab": _num(ab),
                    "influence_ba": _num(ba),
                    "self_influence_max": _num(own),
                    "fraction_of_self": _num(max(ab, ba) / own) if own > 0 else None,
                }
            )
        return out

    table = three_way(dedup, cluster_of, evidence)
    table["dedup_only"]["evidence"] = _dedup_only_evidence(dedup, cluster_of, evidence)
    return dedup, table


EVIDENCE_PAIRS = 100  # dedup-only pairs whose influence is summarised (2 rows each at most)


def _dedup_only_evidence(dedup: DedupResult, cluster_of: np.ndarray, evidence) -> dict | None:
    """How much the deduplicator's pairs that the ensemble did not link influence each other:
    over the first EVIDENCE_PAIRS such pairs (of the pairs the deduplicator verified), the
    larger of I[a, b] and I[b, a] as a fraction of the larger self-influence, against the same
    fraction for the same records paired with a random record (chance)."""
    c = np.asarray(cluster_of)
    pairs = dedup.pairs
    apart = pairs[(c[pairs[:, 0]] < 0) | (c[pairs[:, 0]] != c[pairs[:, 1]])][:EVIDENCE_PAIRS]
    if len(apart) == 0:
        return None
    rng = np.random.default_rng(0)
    n = len(c)
    other = (apart[:, 0] + rng.integers(1, n, len(apart))) % n  # never a itself
    chance = np.c_[apart[:, 0], other]
    found = [e["fraction_of_self"] for e in evidence(np.r_[apart, chance])]
    real = np.array([np.nan if f is None else f for f in found[: len(apart)]])
    base = np.array([np.nan if f is None else f for f in found[len(apart) :]])

    def q(x: np.ndarray, p: float) -> float | None:
        x = x[np.isfinite(x)]
        return float(np.quantile(x, p)) if len(x) else None

    return {
        "pairs": len(apart),
        "median_fraction_of_self": q(real, 0.5),
        "p10_fraction_of_self": q(real, 0.1),
        "p90_fraction_of_self": q(real, 0.9),
        "chance_median_fraction": q(base, 0.5),
        "chance_p90_fraction": q(base, 0.9),
    }


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None
