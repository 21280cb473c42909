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

Cost, and the approximation above a budget. Each shuffle reruns the estimator and the link
rules, about SHUFFLE_COST estimates. Runs whose B = cfg.link_null_ensembles shuffles are small
(B x N^2 x M <= EXACT_WORK, e.g. N = 1,000, M = 1,000, B = 39) or fit cfg.link_null_budget (B x
SHUFFLE_COST <= budget, in estimates) run all B, exactly as above. Larger runs (N = 20,000, M =
1,000: 39 shuffles, ~52 estimates, take 30-80 minutes on 2 cores) run only B' = floor(budget /
SHUFFLE_COST) whole shuffles and extrapolate each rule's null tail (:class:`NullTail`): the
expected false links per run above s, E0(s) = (null stats >= s) / B', is read from the data
where the allowed count is within it, and beyond it from a generalized Pareto fit to the largest
null statistics (Knijnenburg et al. 2009, "Fewer permutations, more accurate P-values"), shape
clamped at >= 0 so the extrapolated tail is never lighter than exponential (conservative: the
statistics are maxima of z's, whose tails are exponential or lighter). The threshold is the s
where the fitted E0(s) = level, so each rule still bounds the expected false links per run
(hence the family-wise rate, by Markov's inequality) by level, up to the error of the tail fit
(measured on null ensembles in tests/findings/test_calibration.py). Whole shuffles, not a
subsample of target rows: the mutual rule's candidate pairs need both records' rows (each is in
the other's top list), so a row subsample of fraction f sees only f^2 of the null pairs (2f with
each sampled row's partners re-estimated as well, at (1 + mutual_top) times the cost), and its
groups (bridges, blocks) would differ from the run's; at equal cost whole shuffles give the z
rule as many null statistics and the mutual rule 1 / f times more. Where a rule's null gives
TAIL_MIN statistics or fewer there is no tail to fit: the z rule keeps its analytic threshold
(and stays above every null statistic), the mutual rule is held to the z rule's null threshold
(a pooled z is on the z scale; an assumption, stated in the report's fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import genpareto

from memaudit.config import FindingsConfig
from memaudit.estimate.influence import InfluenceResult
from memaudit.estimate.registry import get_estimator
from memaudit.findings.clusters import link_statistics, link_thresholds, n_records

NULL_METHOD = "within-strata permutation of each record's losses"
TAIL_METHOD = (
    NULL_METHOD + "; fewer shuffles (the budget), each rule's null tail extrapolated by a "
    "generalized Pareto fit"
)

# Work of one null shuffle in estimates (one run of the estimator): the estimator itself, and
# the link rules (the plain estimate that ranks link candidates, their joint fits, the mutual
# rule), and the shuffle. Measured 1.33 at N = 20,000, M = 128
# (benchmarks/results/calibration_cost.md) and 1.38 at N = 3,000, M = 200; rounded up.
SHUFFLE_COST = 1.5
# B x N^2 x M (shuffles x the estimator's matrix-product work) at or below which every shuffle
# runs whatever the budget: N = 1,000, M = 1,000, B = 39 is 3.9e10; the demo (N = 300,
# M <= 128) is 4.5e8 at most.
EXACT_WORK = 5e10
# The tail fit: the largest 1 / TAIL_SHARE of the null statistics, at most TAIL_EXCEEDANCES
# (Knijnenburg et al. start at 250) and at least TAIL_MIN (no fit on fewer than TAIL_MIN + 1
# statistics); below TAIL_FIT_MIN exceedances the shape is fixed at 0 (an exponential tail,
# scale = mean excess), a two-parameter fit on so few being unstable.
TAIL_EXCEEDANCES = 250
TAIL_SHARE = 4
TAIL_FIT_MIN = 30
TAIL_MIN = 5


def null_plan(cfg: FindingsConfig, n: int, m: int, exact_work: float = EXACT_WORK) -> int | None:
    """How many shuffles calibration runs: None for all cfg.link_null_ensembles (the exact
    path), else the number the budget allows (the tail-fit path; see the module docstring)."""
    b = cfg.link_null_ensembles
    budget = cfg.link_null_budget
    if budget is None or b * float(n) * n * m <= exact_work or b * SHUFFLE_COST <= budget:
        return None
    return max(1, min(b, int(np.floor(budget / SHUFFLE_COST + 1e-9))))


@dataclass
class NullTail:
    """A rule's null: E0(s), the expected false links per run at or above s, from the pooled
    statistics of ``shuffles`` null shuffles; beyond the (k + 1)-th largest (u) a generalized
    Pareto fit to the k largest (shape clamped at >= 0; see the module docstring)."""

    stats: np.ndarray  # every finite null statistic, descending
    shuffles: int
    u: float | None = None  # the tail's start; None: too few statistics, no tail
    exceedances: int = 0  # k
    shape: float = 0.0  # the shape used (>= 0)
    shape_fitted: float | None = None  # the maximum-likelihood shape before clamping
    scale: float = 0.0

    @classmethod
    def fit(cls, stats: np.ndarray, shuffles: int) -> NullTail:
        stats = np.asarray(stats, dtype=np.float64)
        stats = np.sort(stats[np.isfinite(stats)])[::-1]
        tail = cls(stats=stats, shuffles=shuffles)
        # The top quarter at most: an exponential fitted to the body of a light-tailed sample
        # (its mean excess over a low u) would extrapolate far too high.
        k = min(TAIL_EXCEEDANCES, max(TAIL_MIN, len(stats) // TAIL_SHARE))
        if len(stats) <= k:
            return tail
        tail.u, tail.exceedances = float(stats[k]), k
        excess = stats[:k] - stats[k]
        tail.scale = float(excess.mean())  # the exponential (shape 0) fit
        if k >= TAIL_FIT_MIN and tail.scale > 0:
            try:
                with np.errstate(all="ignore"):
                    shape, _, scale = genpareto.fit(excess, floc=0.0)
            except (RuntimeError, ValueError):  # no fit: the exponential stands
                return tail
            tail.shape_fitted = float(shape)
            if shape > 0 and np.isfinite(scale) and scale > 0:
                tail.shape, tail.scale = float(shape), float(scale)
        return tail

    def expected(self, s: float | np.ndarray) -> float | np.ndarray:
        """E0(s): the data's (null stats >= s) / shuffles up to u, the fitted tail beyond."""
        s_arr = np.asarray(s, dtype=np.float64)
        ascending = self.stats[::-1]
        e0 = (len(ascending) - np.searchsorted(ascending, s_arr, side="left")) / self.shuffles
        if self.u is not None:
            sf = genpareto.sf(s_arr - self.u, self.shape, 0.0, max(self.scale, 1e-300))
            e0 = np.where(s_arr > self.u, self.exceedances * sf / self.shuffles, e0)
        return float(e0) if np.ndim(s) == 0 else e0

    def threshold(self, level: float) -> float | None:
        """The lowest s with E0(s) <= level, never at or below a null statistic whose count
        alone says more than level; None: no tail to fit (fewer than TAIL_MIN + 1 stats)."""
        if self.u is None:
            return None
        allowed = int(np.floor(level * self.shuffles + 1e-9))
        if allowed >= self.exceedances:  # within the data: count them, as the exact path does
            return null_threshold(self.stats, self.shuffles, level)
        p = level * self.shuffles / self.exceedances
        s = self.u + float(genpareto.isf(p, self.shape, 0.0, max(self.scale, 1e-300)))
        return max(s, float(np.nextafter(self.stats[allowed], np.inf)))

    def to_json(self) -> dict[str, Any]:
        return {
            "null_statistics": int(len(self.stats)),
            "tail_start": self.u,
            "exceedances": self.exceedances,
            "shape": self.shape,
            "shape_fitted": self.shape_fitted,
            "scale": self.scale,
        }


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
    # The tail-fit path only (None / empty: every shuffle ran, the exact path): the shuffles
    # asked for, the budget, each rule's fitted null tail, and the rules whose null gave too
    # few statistics for a tail (what they were held to instead).
    requested: int | None = None
    budget: float | None = None
    tails: dict[str, NullTail] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)

    def false_links_per_run(self, rule: str, threshold: float) -> float:
        """Null links per shuffle at or above ``threshold`` (the measured false-link rate; on
        the tail-fit path, the fitted tail's)."""
        if rule in self.tails:
            return self.tails[rule].expected(threshold)
        stats = np.asarray(self.null_links.get(rule, []), dtype=np.float64)
        return float((stats >= threshold).sum() / max(1, self.replicates))

    def to_json(self) -> dict[str, Any]:
        def fin(x: float | None) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        mutual = self.mutual_threshold
        out: dict[str, Any] = {
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
            "approximation": None,
        }
        if self.requested is not None:
            out["approximation"] = {
                "kind": "fewer whole shuffles + generalized Pareto tail fit",
                "shuffles": self.replicates,
                "requested_shuffles": self.requested,
                "row_fraction": 1.0,  # whole shuffles: every target row re-estimated
                "budget_estimates": self.budget,
                "work_estimates": self.replicates * SHUFFLE_COST,
                "tails": {rule: tail.to_json() for rule, tail in self.tails.items()},
                "fallback": dict(self.fallback),
            }
        return out


def null_losses(
    losses: np.ndarray, inclusion: np.ndarray, rng: np.random.Generator, used: np.ndarray
) -> np.ndarray:
    """A copy of ``losses`` whose used columns are shuffled, row by row, within the row's own
    inclusion strata (see the module docstring). Unused columns are left as they are."""
    out = np.array(losses, dtype=np.float64, copy=True)
    cols = np.flatnonzero(used)
    if len(cols) < 2:
        return out
    inc = np.asarray(inclusion)
    m = len(cols)
    step = max(1, 2_000_000 // m)
    # Block by block (the strata and the block's copy are never N x M at once).
    for lo in range(0, len(out), step):
        s = inc[lo : lo + step][:, cols].astype(np.float64)
        sub = out[lo : lo + step][:, cols]
        # Both orders group the columns by stratum with equal counts, so position k of one
        # and of the other fall in the same stratum: a uniform shuffle within each stratum.
        fixed = np.argsort(s * 2.0 + np.arange(m) / (2.0 * m), axis=1, kind="stable")
        shuffled = np.argsort(s * 2.0 + rng.random(s.shape) * 0.5, axis=1)
        rows = np.arange(len(s))[:, None]
        block = np.empty_like(sub)
        block[rows, fixed] = sub[rows, shuffled]
        out[lo : lo + step, cols] = block
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
    exact_work: float = EXACT_WORK,
) -> LinkCalibration:
    """Thresholds for both link rules from cfg.link_null_ensembles null shuffles (module
    docstring) at level cfg.link_fwer shared by the two rules (each gets half, so the run's
    family-wise false-link rate over both stays under cfg.link_fwer). Each shuffle reruns the
    run's estimator and the link rules: cost about (shuffles) x SHUFFLE_COST estimates; above
    cfg.link_null_budget (and ``exact_work``) fewer shuffles and a tail fit (:func:`null_plan`).
    """
    n = n_records(result)
    used = (
        np.ones(inclusion.shape[1], dtype=bool)
        if model_mask is None
        else np.asarray(model_mask, dtype=bool)
    )
    z_analytic, _ = link_thresholds(cfg, n, result.n_models, adjusted=True)
    level = (cfg.link_fwer or 0.05) / 2.0
    planned = null_plan(cfg, n, int(used.sum()), exact_work)
    replicates = cfg.link_null_ensembles if planned is None else planned
    # The exact path keeps each shuffle's largest statistics (all a threshold near the top is
    # measured against); the tail-fit path keeps them all (its E0 counts lower down too).
    keep = _largest if planned is None else _finite
    rng = np.random.default_rng(seed)
    estimator = get_estimator(result.estimator)
    z_stats, m_stats = [], []
    for _ in range(replicates):
        shuffled = null_losses(losses, inclusion, rng, used)
        res0 = estimator.estimate(
            shuffled, inclusion, covariates=covariates, top_k=result.top_k, model_mask=used
        )
        z_rows, m_rows = link_statistics(res0, cfg, shuffled, inclusion, used)
        del shuffled, res0
        z_stats.append(keep(z_rows[:, 6]))
        # One statistic per pair (both directions carry the same pooled z).
        m_stats.append(keep(m_rows[m_rows[:, 0] < m_rows[:, 1], 6]))
    z_all, m_all = np.concatenate(z_stats), np.concatenate(m_stats)
    mutual_on = cfg.mutual_links and estimator.mutual_links
    if planned is not None:
        return _tail_calibration(
            result, cfg, losses, inclusion, used, z_all, m_all, replicates, mutual_on
        )
    z_null = null_threshold(z_all, replicates, level)
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


def _tail_calibration(
    result: InfluenceResult,
    cfg: FindingsConfig,
    losses: np.ndarray,
    inclusion: np.ndarray,
    used: np.ndarray,
    z_all: np.ndarray,
    m_all: np.ndarray,
    replicates: int,
    mutual_on: bool,
) -> LinkCalibration:
    """The thresholds of the tail-fit path (module docstring) from the pooled null stats."""
    z_analytic, _ = link_thresholds(cfg, n_records(result), result.n_models, adjusted=True)
    level = (cfg.link_fwer or 0.05) / 2.0
    tails = {"z": NullTail.fit(z_all, replicates)}
    if mutual_on:
        tails["mutual"] = NullTail.fit(m_all, replicates)
    fallback: dict[str, str] = {}
    z_null = tails["z"].threshold(level)
    if z_null is None:
        fallback["z"] = "too few null statistics for a tail: the analytic threshold"
        z_null = float(np.nextafter(z_all.max(), np.inf)) if len(z_all) else None
    z_fwer = z_null  # before the fdr branch: what the mutual rule's fallback is held to
    mutual = tails["mutual"].threshold(level) if mutual_on else None
    mutual_fwer = mutual
    if cfg.link_fdr is not None:
        z_real, m_real = link_statistics(result, cfg, losses, inclusion, used)
        if tails["z"].u is not None:
            z_null = fdr_threshold(
                z_real[:, 6], z_all, replicates, level, cfg.link_fdr, z_null,
                expected=tails["z"].expected,
            )  # fmt: skip
        if mutual_on and tails["mutual"].u is not None:
            real = m_real[m_real[:, 0] < m_real[:, 1], 6]
            mutual = fdr_threshold(
                real, m_all, replicates, level, cfg.link_fdr, mutual,
                expected=tails["mutual"].expected,
            )  # fmt: skip
    z_threshold = max(z_analytic, z_null if z_null is not None else -np.inf)
    if mutual_on and tails["mutual"].u is None:
        # A pooled z is on the z scale: the z rule's null threshold (without its analytic
        # floor, which the mutual rule never had) stands in for the missing tail.
        fallback["mutual"] = "too few null pairs for a tail: the z rule's null threshold"
        top = float(np.nextafter(m_all.max(), np.inf)) if len(m_all) else -np.inf
        mutual = mutual_fwer = max(z_fwer if z_fwer is not None else z_threshold, top)
    return LinkCalibration(
        level=level,
        replicates=replicates,
        z_threshold=z_threshold,
        z_analytic=z_analytic,
        z_null=z_null,
        mutual_threshold=(-np.inf if mutual is None else mutual) if mutual_on else None,
        null_links={"z": _largest(z_all).tolist(), "mutual": _largest(m_all).tolist()},
        method=TAIL_METHOD,
        requested=cfg.link_null_ensembles,
        budget=cfg.link_null_budget,
        tails=tails,
        fallback=fallback,
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
    expected: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float | None:
    """The lowest threshold s (among the run's own statistics, or ``fwer_threshold``) at which
    the expected false links per run, E0(s) = (null stats >= s) / replicates, is at most
    max(level, fdr x (the run's links >= s)): the family-wise bound where the run has few
    candidate links, and a false-discovery bound (at most ``fdr`` of the links kept expected
    false) where it has many more than the shuffles. On a null run the links above s are as
    many as the shuffles give, so the second branch needs 1 / fdr times more than expected
    and the family-wise rate stays near ``level`` (tests/findings/test_calibration.py).
    ``expected``: E0 itself (the tail-fit path's :meth:`NullTail.expected`) instead."""
    real = np.sort(np.asarray(real, dtype=np.float64)[np.isfinite(real)])[::-1]
    null = np.sort(np.asarray(null, dtype=np.float64)[np.isfinite(null)])
    # Vectorised: the lowest run statistic s below the family-wise threshold whose E0(s) is
    # within the bound (k + 1: the run's links at or above s), else that threshold.
    below = real < fwer_threshold if fwer_threshold is not None else np.ones(len(real), bool)
    if expected is None:
        e0 = (len(null) - np.searchsorted(null, real, side="left")) / replicates
    else:
        e0 = np.asarray(expected(real), dtype=np.float64)
    ok = below & (e0 <= np.maximum(level, fdr * np.arange(1, len(real) + 1)))
    return float(real[ok].min()) if ok.any() else fwer_threshold


def _finite(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    return stats[np.isfinite(stats)]


def _largest(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    return np.sort(stats)[::-1][:KEEP_NULL_STATS]
