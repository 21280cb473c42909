"""Link rules calibrated against a null ensemble of the run's own shape.

The null: every record keeps its own loss values, its own inclusion column and therefore its
own self-influence and noise, but its losses are shuffled among the models *within* its own
inclusion strata (in-models among in-models, out-models among out-models). That keeps N, M,
the inclusion matrix, every record's self-effect and loss distribution, and destroys every
cross-record effect: under the null, no link is true. When the run itself has no cross-record
effect, the run and its shuffles are exchangeable (for exchangeable models), so a threshold
set on B shuffles holds its rate on the run.

Each link rule reports one statistic per candidate link (the z rule: the link's z; the mutual
rule: the pooled z of the candidate group the pair lies in, see
:func:`memaudit.findings.clusters.group_z`). A rule's threshold is set so that the null
shuffles give at most ``level`` false links per run on average (pooled over the B shuffles: at
most floor(level * B) null links at or above it), which bounds the family-wise rate (the chance
of any false link) by ``level`` for that rule. The two rules share cfg.link_fwer (half each).
Where the run has far more candidate links than the shuffles, the threshold may drop to where
the expected false links are at most cfg.link_fdr of the links kept (:func:`fdr_threshold`):
on the strong demo 26 mutual candidate pairs stand against 0.4 per shuffle. That relaxation
holds only for links between records that look alike (text or pixels, the modality's
similarity threshold); a link between dissimilar records must reach the family-wise threshold
(``z_strict``, ``mutual_strict``). Why: the relaxation rests on many real candidates, and those
are near-duplicates that look alike; among dissimilar records the run's real links are few, and
the background influence the shuffles do not model (records that help unrelated records, e.g.
one record lowering two unrelated questions' losses at z 7.0 and 8.5 on the weak-memorization
demo) is what gets through. Stratifying the false-discovery bound by a prior that is fixed
before looking at the statistics keeps it valid in each stratum.
The z rule keeps its analytic multiple-testing threshold as a floor: on the weak-memorization
demo (LoRA defaults, M = 32) the null needed z >= 7.5 where the analytic threshold was 6.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memaudit.config import FindingsConfig
from memaudit.estimate.influence import InfluenceResult
from memaudit.estimate.registry import get_estimator
from memaudit.findings.clusters import link_statistics, link_thresholds, n_records

NULL_METHOD = "within-strata permutation of each record's losses"


@dataclass
class LinkCalibration:
    """What the link thresholds rest on; written to report.json as ``link_calibration``."""

    level: float  # expected false links per run allowed per rule (bounds the family-wise rate)
    replicates: int  # null shuffles
    z_threshold: float  # the z rule's threshold: max(analytic, null)
    z_analytic: float  # link_thresholds' multiple-testing threshold
    z_null: float | None  # the null's threshold for z (None: no null link at all)
    mutual_threshold: float | None  # the mutual rule's pooled-z threshold (None: rule off)
    null_links: dict[str, list[float]] = field(default_factory=dict)  # per rule: null stats
    method: str = NULL_METHOD
    # The family-wise thresholds before the link_fdr relaxation: what a link between records
    # that do not look alike must reach (find_clusters; None: same as the thresholds above).
    z_strict: float | None = None
    mutual_strict: float | None = None

    def false_links_per_run(self, rule: str, threshold: float) -> float:
        """Null links per shuffle at or above ``threshold`` (the measured false-link rate)."""
        stats = np.asarray(self.null_links.get(rule, []), dtype=np.float64)
        return float((stats >= threshold).sum() / max(1, self.replicates))

    def to_json(self) -> dict[str, Any]:
        def fin(x: float | None) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        mutual = self.mutual_threshold
        return {
            "method": self.method,
            "level": self.level,
            "replicates": self.replicates,
            "z_rule": {
                "threshold": fin(self.z_threshold),
                "analytic": fin(self.z_analytic),
                "null": fin(self.z_null),
                "null_links_per_run": self.false_links_per_run("z", self.z_threshold),
                "dissimilar_threshold": fin(self.z_strict),
            },
            "mutual_rule": None
            if mutual is None
            else {
                "statistic": "pooled z of the candidate group (sum of members' z / sqrt(size))",
                "threshold": fin(mutual),
                "null_links_per_run": self.false_links_per_run("mutual", mutual),
                "dissimilar_threshold": fin(self.mutual_strict),
            },
        }


def null_losses(
    losses: np.ndarray, inclusion: np.ndarray, rng: np.random.Generator, used: np.ndarray
) -> np.ndarray:
    """A copy of ``losses`` whose used columns are shuffled, row by row, within the row's own
    inclusion strata (see the module docstring). Unused columns are left as they are."""
    out = np.array(losses, dtype=np.float64, copy=True)
    cols = np.flatnonzero(used)
    if len(cols) < 2:
        return out
    sub = out[:, cols]
    strata = np.asarray(inclusion)[:, cols].astype(np.float64)
    m = len(cols)
    step = max(1, 2_000_000 // m)
    for lo in range(0, len(sub), step):
        s = strata[lo : lo + step]
        # Both orders group the columns by stratum with equal counts, so position k of one
        # and of the other fall in the same stratum: a uniform shuffle within each stratum.
        fixed = np.argsort(s * 2.0 + np.arange(m) / (2.0 * m), axis=1, kind="stable")
        shuffled = np.argsort(s * 2.0 + rng.random(s.shape) * 0.5, axis=1)
        rows = np.arange(len(s))[:, None]
        block = np.empty_like(sub[lo : lo + step])
        block[rows, fixed] = sub[lo : lo + step][rows, shuffled]
        sub[lo : lo + step] = block
    out[:, cols] = sub
    return out


def null_threshold(stats: np.ndarray, replicates: int, level: float) -> float | None:
    """The smallest threshold with at most floor(level * replicates) of the pooled null
    ``stats`` at or above it: just above the (floor + 1)-th largest; None when there are no
    more null stats than that (any threshold holds the level)."""
    stats = np.sort(np.asarray(stats, dtype=np.float64)[np.isfinite(stats)])[::-1]
    allowed = int(np.floor(level * replicates + 1e-9))
    if len(stats) <= allowed:
        return None
    return float(np.nextafter(stats[allowed], np.inf))


# Null statistics kept per rule in LinkCalibration (the largest ones: all that a threshold
# near the top can be measured against), so report.json stays small at any N.
KEEP_NULL_STATS = 200


def calibrate_links(
    result: InfluenceResult,
    cfg: FindingsConfig,
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None = None,
    covariates: int = 4,
    seed: int = 0,
) -> LinkCalibration:
    """Thresholds for both link rules from cfg.link_null_ensembles null shuffles (module
    docstring) at level cfg.link_fwer shared by the two rules (each gets half, so the run's
    family-wise false-link rate over both stays under cfg.link_fwer). Each shuffle reruns the
    run's estimator and the link rules: cost about (shuffles) x (the findings stage)."""
    n = n_records(result)
    used = (
        np.ones(inclusion.shape[1], dtype=bool)
        if model_mask is None
        else np.asarray(model_mask, dtype=bool)
    )
    z_analytic, _ = link_thresholds(cfg, n, result.n_models, adjusted=True)
    level = (cfg.link_fwer or 0.05) / 2.0
    replicates = cfg.link_null_ensembles
    rng = np.random.default_rng(seed)
    estimator = get_estimator(result.estimator)
    z_stats, m_stats = [], []
    for _ in range(replicates):
        shuffled = null_losses(losses, inclusion, rng, used)
        res0 = estimator.estimate(
            shuffled, inclusion, covariates=covariates, top_k=result.top_k, model_mask=used
        )
        z_rows, m_rows = link_statistics(res0, cfg, shuffled, inclusion, used)
        z_stats.append(_largest(z_rows[:, 6]))
        # One statistic per pair (both directions carry the same pooled z).
        m_stats.append(_largest(m_rows[m_rows[:, 0] < m_rows[:, 1], 6]))
    z_all, m_all = np.concatenate(z_stats), np.concatenate(m_stats)
    z_null = null_threshold(z_all, replicates, level)
    mutual_on = cfg.mutual_links and estimator.mutual_links
    mutual = null_threshold(m_all, replicates, level) if mutual_on else None
    z_fwer, mutual_fwer = z_null, mutual
    if cfg.link_fdr is not None:
        z_real, m_real = link_statistics(result, cfg, losses, inclusion, used)
        z_null = fdr_threshold(z_real[:, 6], z_all, replicates, level, cfg.link_fdr, z_null)
        if mutual_on:
            real = m_real[m_real[:, 0] < m_real[:, 1], 6]
            mutual = fdr_threshold(real, m_all, replicates, level, cfg.link_fdr, mutual)
    return LinkCalibration(
        level=level,
        replicates=replicates,
        z_threshold=max(z_analytic, z_null if z_null is not None else -np.inf),
        z_analytic=z_analytic,
        z_null=z_null,
        # No null pair at all: the rule's selection alone holds the level.
        mutual_threshold=(-np.inf if mutual is None else mutual) if mutual_on else None,
        null_links={"z": _largest(z_all).tolist(), "mutual": _largest(m_all).tolist()},
        z_strict=max(z_analytic, z_fwer if z_fwer is not None else -np.inf),
        mutual_strict=(-np.inf if mutual_fwer is None else mutual_fwer) if mutual_on else None,
    )


def fdr_threshold(
    real: np.ndarray,
    null: np.ndarray,
    replicates: int,
    level: float,
    fdr: float,
    fwer_threshold: float | None,
) -> float | None:
    """The lowest threshold s (among the run's own statistics, or ``fwer_threshold``) at which
    the expected false links per run, E0(s) = (null stats >= s) / replicates, is at most
    max(level, fdr x (the run's links >= s)): the family-wise bound where the run has few
    candidate links, and a false-discovery bound (at most ``fdr`` of the links kept expected
    false) where it has many more than the shuffles. On a null run the links above s are as
    many as the shuffles give, so the second branch needs 1 / fdr times more than expected
    and the family-wise rate stays near ``level`` (tests/findings/test_calibration.py)."""
    real = np.sort(np.asarray(real, dtype=np.float64)[np.isfinite(real)])[::-1]
    null = np.sort(np.asarray(null, dtype=np.float64)[np.isfinite(null)])
    best = fwer_threshold
    for k, s in enumerate(real):
        if best is not None and s >= best:
            continue
        expected = (len(null) - np.searchsorted(null, s, side="left")) / replicates
        if expected <= max(level, fdr * (k + 1)):
            best = float(s)
    return best


def _largest(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    return np.sort(stats)[::-1][:KEEP_NULL_STATS]
