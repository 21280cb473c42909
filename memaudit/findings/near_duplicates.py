"""The per-record near-duplicate verdict (#14): for every record, does it show the paper's
near-duplicate signature, with a q-value, how settled the answer is and its likely partners.

Which records have near-duplicates is settled at far fewer models than which records belong
together. A copy's own inclusion matters little while its mates are in, so its Top-1 influence
margin (the largest influence on it over the runner-up) is low; that shows at 16-32 models. The
pairwise evidence that names its partners needs many more: each mate's effect is small while
the others are in (measured on the strong demo at 32 models: the best pairwise statistic ranks
grouped above unique records at ROC AUC 0.55-0.63, the margin at 1.00).

The test: log-margins of records without near-duplicates are taken to be symmetric about their
median (an empirical null, after Efron: the null is read off the data's own bulk, not assumed
standard), and records with near-duplicates pull only the lower tail. A record's p-value is the
share of records at or above its reflection about the median, (1 + k) / (1 + n), and the flags
are Benjamini-Hochberg over the records at cfg.near_duplicate_fdr. Copies in the data pull the
median down, which moves the reflection down too: the test gets more conservative, not less.
The assumption fails when most records have near-duplicates (the median is then a copy's);
the verdict says so in its note when more than half are flagged.

Measured (tests/findings/test_near_duplicates.py, and on the bundled demos' first M models):
strong demo (100 of 300 records in 20 planted groups) at 16 / 24 / 32 models flags 84 / 98 /
99 records with precision 1.00 / 0.99 / 0.99; its 200 unique records alone (null data) give
no flag at any of those M; the weak-memorization demo flags nothing at 32-128 models, where
margins of copies and unique records overlap (the headline says the signal is too weak).

Probability: Phi(distance of the log-margin to the flag cut / its standard error), the
standard error by the delta method from the two influences that make the margin: the chance
that an ensemble of the same size puts the record on the same side of the cut again (the
analytic equivalent of a bootstrap over models). The stopping rule counts records below
SETTLED as unsettled; the stopping rule reads the expected share of flips (expected_flips).

Partners: a clustered record's cluster mates; a record flagged by its margin alone, its mutual
top influencers that look like it. At small M few such pairs are mutual, so each flagged record
also lists its look-alikes: the flagged records in no cluster that look like it (and, for a
record in no cluster, the clustered ones too). Both records have the signature on their own
evidence; which records they are copies of is named by similarity alone, so the report shows
look-alikes as unconfirmed leads (never as a cluster, which needs pairwise influence evidence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import diptest
import numpy as np
from scipy.stats import false_discovery_control, norm

from memaudit.estimate.influence import InfluenceResult
from memaudit.findings.similarity import alike_pairs

SETTLED = 0.9  # a verdict less likely than this to repeat on a same-size ensemble may flip
PARTNERS = 3  # likely partners listed per flagged record
# Look-alikes listed per flagged record at most; none are searched when more than
# LOOK_ALIKE_PAIRS record pairs would be compared.
LOOK_ALIKE = 5
LOOK_ALIKE_PAIRS = 5_000_000


@dataclass
class NearDuplicateVerdict:
    """Every record's answer to "has near-duplicates?" (report.json ``near_duplicates``)."""

    log_margin: np.ndarray  # (N,) NaN where the margin is undefined (no verdict)
    p: np.ndarray  # (N,) empirical-null p-value (1 where undefined)
    q: np.ndarray  # (N,) Benjamini-Hochberg adjusted
    by_margin: np.ndarray  # (N,) bool: q <= level
    in_cluster: np.ndarray  # (N,) bool: linked by pairwise evidence (memaudit.findings.clusters)
    probability: np.ndarray  # (N,) chance a same-size ensemble gives the same flag (NaN: none)
    partners: list[list[int]]  # per record: its strongest other influencers that are flagged
    cut: float  # log-margin at or below which records are flagged (-inf: none can be)
    median: float  # the null's centre
    level: float
    dip_p: float = 1.0  # Hartigan's dip test of the log-margins' unimodality
    # Per flagged record: flagged records that look like it, one of the two in no cluster,
    # lowest margin first; unconfirmed by pairwise influence (None: not searched).
    look_alike: list[list[int]] | None = field(default=None)

    @property
    def flag(self) -> np.ndarray:
        """Has near-duplicates: in a cluster, or the margin's signature."""
        return self.by_margin | self.in_cluster

    @property
    def defined(self) -> np.ndarray:
        return np.isfinite(self.log_margin) | self.in_cluster

    @property
    def unsettled(self) -> np.ndarray:
        """Records whose verdict may still flip with more models (a cluster's members rest on
        their links, which the stopping rule watches as partner pairs)."""
        return np.isfinite(self.log_margin) & ~self.in_cluster & ~(self.probability >= SETTLED)

    @property
    def expected_flips(self) -> float:
        """The share of records a same-size ensemble would be expected to flag differently:
        the mean of 1 - probability over records with a verdict (a cluster's members: 0)."""
        prob = np.where(self.in_cluster, 1.0, self.probability)
        ok = np.isfinite(prob)
        return float(np.mean(1.0 - prob[ok])) if ok.any() else 0.0

    @property
    def note(self) -> str | None:
        if self.dip_p > self.level and np.isfinite(self.log_margin).sum() >= 4:
            return (
                f"the Top-1 margins form one group (dip test p = {self.dip_p:.2g}): no record "
                "stands out by its margin, so only clusters say which records have "
                "near-duplicates here"
            )
        if self.by_margin.sum() * 2 > self.defined.sum():
            return (
                "more than half of the records are flagged: the verdict assumes most records "
                "have no near-duplicate, so read it as a ranking here"
            )
        return None

    def to_json(self, ids: list[str]) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        shown = np.flatnonzero(self.flag | self.unsettled)
        return {
            "method": "Top-1 margin against its reflection about the median (empirical null); "
            "Benjamini-Hochberg over records",
            "level": self.level,
            "cut_margin": num(float(np.exp(self.cut))),
            "median_margin": num(float(np.exp(self.median))),
            "dip_p": num(self.dip_p),
            "n_records": int(len(self.flag)),
            "n_defined": int(self.defined.sum()),
            "n_flagged": int(self.flag.sum()),
            "n_by_margin": int(self.by_margin.sum()),
            "n_in_clusters": int(self.in_cluster.sum()),
            "n_unsettled": int(self.unsettled.sum()),
            "expected_flips": self.expected_flips,
            "settled_at": SETTLED,
            "note": self.note,
            "records": [
                {
                    "index": int(t),
                    "id": ids[t],
                    "has_near_duplicates": bool(self.flag[t]),
                    "basis": _basis(bool(self.by_margin[t]), bool(self.in_cluster[t])),
                    "margin": num(float(np.exp(self.log_margin[t]))),
                    "q": num(self.q[t]),
                    "probability": num(self.probability[t]),
                    "partners": [ids[i] for i in self.partners[t]],
                    "look_alike": None
                    if self.look_alike is None
                    else [ids[i] for i in self.look_alike[t]],
                }
                for t in shown
            ],
        }


def near_duplicate_verdict(
    result: InfluenceResult,
    level: float = 0.05,
    cluster_of: np.ndarray | None = None,
    alike: Callable[[np.ndarray], np.ndarray] | None = None,
) -> NearDuplicateVerdict:
    """The verdict of every record from the estimate's margins (module docstring); records in
    a cluster of ``cluster_of`` (>= 0) have near-duplicates by their links, and their
    partners are their cluster's other members. ``alike``: (K, 2) record pairs -> (K,) bool,
    whether they look alike (the modality's similarity); without it no partner is named for
    records flagged by their margin alone."""
    n = len(result.self_influence)
    defined = result.margin_defined & np.isfinite(result.margin) & (result.margin > 0)
    log_margin = np.full(n, np.nan)
    log_margin[defined] = np.log(result.margin[defined])
    x = log_margin[defined]
    p = np.ones(n)
    median = float(np.median(x)) if len(x) else float("nan")
    if len(x):
        ranked = np.sort(x)
        # k = records at or above the reflection 2 * median - x.
        k = len(ranked) - np.searchsorted(ranked, 2.0 * median - x, side="left")
        p[defined] = np.minimum(1.0, (1.0 + k) / (1.0 + len(x)))
    q = false_discovery_control(p) if n else p.copy()  # Benjamini-Hochberg q-values
    # Copies form a mode of their own below the unique records'; a one-sided tail of a
    # unimodal spread (records memorized less, any skew) does not. Hartigan's dip test holds its
    # level for every unimodal distribution, so the flags do too.
    dip_p = float(diptest.diptest(x)[1]) if len(x) >= 4 else 1.0
    flag = defined & (q <= level) & (dip_p <= level)
    cut = float(log_margin[flag].max()) if flag.any() else -np.inf
    se = _log_margin_se(result)
    with np.errstate(invalid="ignore", divide="ignore"):
        boundary = cut if flag.any() else _first_cut(x, median)
        distance = np.where(flag, boundary - log_margin, log_margin - boundary)
        probability = np.where(defined, norm.cdf(distance / se), np.nan)
    # A zero standard error (or a margin exactly at the cut) says nothing either way.
    probability = np.where(defined & ~np.isfinite(probability), 0.5, probability)
    clustered = np.zeros(n, dtype=bool) if cluster_of is None else np.asarray(cluster_of) >= 0
    partners = _partners(result, flag | clustered, cluster_of, alike)
    look = _look_alikes(flag | clustered, cluster_of, alike, log_margin, partners)
    return NearDuplicateVerdict(
        log_margin, p, q, flag, clustered, probability, partners, cut, median, level, dip_p, look
    )


def _basis(by_margin: bool, in_cluster: bool) -> str | None:
    if by_margin and in_cluster:
        return "cluster and margin"
    return "cluster" if in_cluster else ("margin" if by_margin else None)


def _first_cut(x: np.ndarray, median: float) -> float:
    """With nothing flagged: the reflection of the largest log-margin, below which a record
    has the smallest p-value there is (flags need about 1 / level such records at once)."""
    return float(2.0 * median - x.max()) if len(x) else -np.inf


def _log_margin_se(result: InfluenceResult) -> np.ndarray:
    """Delta-method standard error of log(top1 / top2) from the two influences' errors."""
    v, s = result.top_val, result.top_se
    if v.shape[1] < 2:
        return np.full(len(v), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((s[:, 0] / v[:, 0]) ** 2 + (s[:, 1] / v[:, 1]) ** 2)


def _partners(
    result: InfluenceResult,
    flag: np.ndarray,
    cluster_of: np.ndarray | None,
    alike: Callable[[np.ndarray], np.ndarray] | None,
) -> list[list[int]]:
    """A clustered record's cluster mates; another flagged record's strongest other
    influencers that are flagged too (copies share the signature), have it among their own
    top influencers and look like it. Mutual: on the strong demo at 32 models 96% of such
    partners are planted mates, against 56% without it. Alike: at 16 models chance overlaps
    of inclusion patterns make mutual pairs too (8 of 8 wrong on a synthetic ensemble), and a
    suggested partner is not a finding, so the text or pixels must back it; [] otherwise."""
    out: list[list[int]] = [[] for _ in range(len(flag))]
    members: dict[int, list[int]] = {}
    if cluster_of is not None:
        for r in np.flatnonzero(np.asarray(cluster_of) >= 0):
            members.setdefault(int(cluster_of[r]), []).append(int(r))
    for t in np.flatnonzero(flag):
        if cluster_of is not None and cluster_of[t] >= 0:
            out[t] = [i for i in members[int(cluster_of[t])] if i != t][:PARTNERS]
            continue
        if alike is None:
            continue
        idx = result.top_idx[t]
        mates = [int(i) for i in idx if i >= 0 and i != t and flag[i] and t in result.top_idx[i]]
        if mates:
            ok = alike(np.array([[t, i] for i in mates], dtype=np.int64))
            out[t] = [i for i, y in zip(mates, ok, strict=True) if y][:PARTNERS]
    return out


def _look_alikes(
    flag: np.ndarray,
    cluster_of: np.ndarray | None,
    alike: Callable[[np.ndarray], np.ndarray] | None,
    log_margin: np.ndarray,
    partners: list[list[int]],
) -> list[list[int]] | None:
    """Per flagged record, the other flagged records that look like it and are not its partners
    (at most LOOK_ALIKE, lowest margin first), where one of the two is in no cluster: two
    clusters that look alike were put to the joining test already, or are two groups of one
    template. Each record has the signature on its own evidence; the pair is named by
    similarity alone, so it is a lead, not a finding (the pairwise evidence that would join
    them is what small M lacks). Measured, look-alikes that are planted mates: held-out NQ-open
    (strong, seed 2) at 32 models, 85 of 91 (24 flagged records outside any cluster, 3 with an
    influence partner, all 24 with a look-alike); the strong demo at 16 and 24 models, 172 of
    172 and 81 of 81."""
    if alike is None:
        return None
    rows = np.flatnonzero(flag)
    if len(rows) * (len(rows) - 1) // 2 > LOOK_ALIKE_PAIRS:
        return None
    out: list[list[int]] = [[] for _ in range(len(flag))]
    if len(rows) < 2:
        return out
    a, b = np.triu_indices(len(rows), 1)
    pairs = np.column_stack([rows[a], rows[b]])
    if cluster_of is not None:
        c = np.asarray(cluster_of)
        # Two clusters that look alike were put to the joining test and not joined (or
        # are two groups of one template): no lead there.
        pairs = pairs[(c[pairs[:, 0]] < 0) | (c[pairs[:, 1]] < 0)]
    near = alike_pairs(alike, pairs)
    order = np.where(np.isfinite(log_margin), log_margin, np.inf)
    for t, i in np.concatenate([near, near[:, ::-1]]).tolist():
        if i not in partners[t]:
            out[t].append(i)
    for t in rows:
        out[t] = sorted(out[t], key=lambda i: (order[i], i))[:LOOK_ALIKE]
    return out
