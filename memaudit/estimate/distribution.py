"""Each record's influence as a distribution: per-row summaries of I[t, .] in the estimate's pass.

The influence on a target t is a distribution over the whole training set: one spike at t
itself is a record memorized on its own; a few comparable spikes are near-duplicates sharing
the memorization; a long tail is diffuse learning. Per target this module keeps, over the
other records i != t (finite entries only):

* quantiles (``QUANTILES``, numpy's default linear interpolation), min, max, mean and std;
* ``n_significant``: how many others have a significantly *positive* influence on t, with the
  run's standard errors, t = I / SE, one-sided p-values of Student's t with the models' degrees
  of freedom (the normal is anti-conservative at tens of models: on the demo's unique records,
  M = 32, it counted 1.6x (adjusted) to 3x (plain) as many), and the Benjamini-Hochberg rule
  per row at false
  discovery rate ``FDR`` over the row's N - 1 tests (see ``SIGNIFICANCE_RULE``);
* ``self_share``, ``top1_share``, ``top5_share``: the share of t's total positive influence
  carried by t itself, by its largest other influencer and by its five largest. The total is
  max(I[t, t], 0) plus the influences of the significant others: summing the positive parts
  of all N - 1 others would add up their noise (about 0.4 SE each), which at N = 20,000 swamps
  any record's self-influence, so every share would read as zero. An other that is not
  significant carries no share.

:class:`Accumulator` fills these block by block from the (rows x N) arrays the estimators
already hold, so nothing N x N is ever kept. It works in place on the block (the estimator is
done with it by then): one partition of each row gives every quantile, and only the entries
with p <= FDR are sorted for the multiple-testing rule.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.special import ndtri, stdtrit

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
TOP_OTHERS = 5
FDR = 0.05
SIGNIFICANCE_RULE = (
    "others i != t with a significantly positive influence on t: t = I[t, i] / SE[t, i] with "
    "the run's standard errors, one-sided p-values of Student's t with M - 2 degrees of freedom "
    "(M - 2 - the covariates and t itself for the regression-adjusted estimator), "
    "Benjamini-Hochberg per target at "
    f"false discovery rate {FDR:g} over the target's N - 1 tests. BH rather than Bonferroni: "
    "a count of discoveries wants the expected share of false ones among them bounded, and "
    "Bonferroni over N - 1 tests (z > 4.6 at N = 20,000) would count almost nothing at tens of "
    "models. Null when the run has no standard errors. Shares of the positive influence: "
    "of max(I[t, t], 0) plus the influences of these significant others."
)


@dataclass
class DistributionSummary:
    """Per-target summaries of the influence distribution (arrays of length N)."""

    quantiles: np.ndarray  # (N, len(QUANTILES)) float64, NaN where no finite other
    minimum: np.ndarray  # (N,) float64
    maximum: np.ndarray  # (N,) float64
    mean: np.ndarray  # (N,) float64
    std: np.ndarray  # (N,) float64, ddof 1
    n_others: np.ndarray  # (N,) int64: finite I[t, i], i != t
    n_significant: np.ndarray  # (N,) int64; -1 where there are no standard errors
    positive_total: np.ndarray  # (N,) float64: max(I[t, t], 0) + the significant others
    self_share: np.ndarray  # (N,) float64, NaN where positive_total == 0
    top1_share: np.ndarray  # (N,) float64
    top5_share: np.ndarray  # (N,) float64

    def arrays(self, prefix: str = "dist_") -> dict[str, np.ndarray]:
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, data: Any, prefix: str = "dist_") -> DistributionSummary | None:
        """From a mapping written by :meth:`arrays`; None if it has none (an older file)."""
        names = [f.name for f in fields(cls)]
        if any(prefix + name not in data for name in names):
            return None
        return cls(**{name: np.asarray(data[prefix + name]) for name in names})

    def row(self, t: int, margin: float | None = None) -> dict[str, Any]:
        """Target t's summaries as plain JSON (None for undefined values)."""

        def num(x: Any) -> float | None:
            return float(x) if np.isfinite(x) else None

        n_sig = int(self.n_significant[t])
        qs = zip(QUANTILES, self.quantiles[t], strict=True)
        return {
            "quantiles": {_qkey(q): num(v) for q, v in qs},
            "min": num(self.minimum[t]),
            "max": num(self.maximum[t]),
            "mean": num(self.mean[t]),
            "std": num(self.std[t]),
            "n_others": int(self.n_others[t]),
            "n_significant": n_sig if n_sig >= 0 else None,
            "positive_total": num(self.positive_total[t]),
            "self_share": num(self.self_share[t]),
            "top1_share": num(self.top1_share[t]),
            "top5_share": num(self.top5_share[t]),
            "margin": margin,
        }


def _qkey(q: float) -> str:
    return f"q{round(100 * q):02d}"


class Accumulator:
    """Fills a :class:`DistributionSummary` of N targets from blocks of full rows."""

    def __init__(self, n: int, df: float | None = None) -> None:
        self.df = df
        nan = np.full(n, np.nan)
        self.out = DistributionSummary(
            quantiles=np.full((n, len(QUANTILES)), np.nan),
            minimum=nan.copy(),
            maximum=nan.copy(),
            mean=nan.copy(),
            std=nan.copy(),
            n_others=np.zeros(n, dtype=np.int64),
            n_significant=np.full(n, -1, dtype=np.int64),
            positive_total=nan.copy(),
            self_share=nan.copy(),
            top1_share=nan.copy(),
            top5_share=nan.copy(),
        )

    def add(self, rows: np.ndarray, infl: np.ndarray, se: np.ndarray | None) -> None:
        """Summaries of targets ``rows`` from their influence rows ``infl`` (len(rows) x N)
        and standard errors ``se`` (or None). Overwrites ``infl`` (it is partitioned in
        place); ``se`` is only read."""
        part = summarize_block(rows, infl, se, self.df)
        for f in fields(DistributionSummary):
            getattr(self.out, f.name)[rows] = getattr(part, f.name)

    def result(self) -> DistributionSummary:
        return self.out


def summarize_block(
    rows: np.ndarray, infl: np.ndarray, se: np.ndarray | None, df: float | None = None
) -> DistributionSummary:
    """The summaries of targets ``rows`` (int array; target rows[b] is column rows[b] of
    ``infl``) from their full rows. Partitions ``infl`` in place. ``df``: degrees of freedom of
    the t-test (None: the normal)."""
    rows = np.asarray(rows, dtype=np.int64)
    b = rows.size
    local = np.arange(b)
    self_val = infl[local, rows].copy()
    infl[local, rows] = np.nan  # from here on the rows hold the others only
    finite = np.isfinite(infl)
    n_others = finite.sum(axis=1)

    n_sig = np.full(b, -1, dtype=np.int64)
    top = np.full((b, TOP_OTHERS + 1), np.nan)  # see _bh; all NaN: no standard errors
    if se is not None:
        n_sig, top = _bh(infl, se, finite, df)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(infl, axis=1, where=finite) / n_others
        dev = infl - mean[:, None]
        dev *= dev
        std = np.sqrt(np.sum(dev, axis=1, where=finite) / (n_others - 1))
    del dev
    std[n_others < 2] = np.nan
    mean[n_others < 1] = np.nan

    # One partition per row: every quantile's two neighbours, the minimum and the maximum.
    infl[~finite] = np.inf  # undefined entries sort last, past the n_others finite ones
    del finite
    qs = np.full((b, len(QUANTILES)), np.nan)
    lo_v, hi_v = np.full(b, np.nan), np.full(b, np.nan)
    for f in np.unique(n_others):
        if f == 0:
            continue
        g = np.flatnonzero(n_others == f)
        sub = infl[g] if g.size < b else infl
        pos = np.asarray(QUANTILES) * (f - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, f - 1)
        kth = np.unique(np.concatenate([lo, hi, [0, f - 1]]))
        sub.partition(kth, axis=1)
        a, c = sub[:, lo], sub[:, hi]
        # numpy's linear method: a + (c - a) * frac, evaluated as numpy's _lerp does.
        frac = pos - lo
        diff = c - a
        qs[g] = np.where(frac >= 0.5, c - diff * (1 - frac), a + diff * frac)
        lo_v[g], hi_v[g] = sub[:, 0], sub[:, f - 1]

    sig = np.nan_to_num(top)  # padding (fewer than five discoveries) counts zero
    total = np.maximum(self_val, 0.0) + sig.sum(axis=1)
    total[n_sig < 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, 1.0 / total, np.nan)
    share[~np.isfinite(self_val)] = np.nan
    return DistributionSummary(
        quantiles=qs,
        minimum=lo_v,
        maximum=hi_v,
        mean=mean,
        std=std,
        n_others=n_others.astype(np.int64),
        n_significant=n_sig,
        positive_total=np.where(np.isfinite(self_val), total, np.nan),  # nan: no SE
        self_share=np.maximum(self_val, 0.0) * share,
        top1_share=sig[:, 0] * share,
        top5_share=sig[:, :TOP_OTHERS].sum(axis=1) * share,
    )


def _bh(
    infl: np.ndarray, se: np.ndarray, finite: np.ndarray, df: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg per row (one-sided, I > 0) among the finite entries of ``infl``
    (self already NaN). Returns the discoveries per row, count (B,), and top (B, TOP_OTHERS + 1):
    their TOP_OTHERS largest influences, descending and NaN-padded, then the sum of the rest.
    Only p <= FDR can be rejected, so only those few are sorted."""
    b = infl.shape[0]
    tested = finite & np.isfinite(se)
    m = tested.sum(axis=1)
    crit = _critical(FDR, df)
    with np.errstate(invalid="ignore"):
        # p <= FDR  <=>  I >= crit * SE (SE == 0 with I > 0: p = 0).
        cand = tested & (infl >= crit * se) & (infl > 0)
    r, c = np.nonzero(cand)
    del cand
    with np.errstate(divide="ignore"):
        z = infl[r, c] / se[r, c]
    # Every discovery has p <= R FDR / m <= n FDR / m where n counts the row's p <= the previous
    # bound: shrinking the bound so (it never falls below BH's R) leaves the few that matter,
    # typically 5% of N -> 0.3%, before any sorting.
    n_kept = np.bincount(r, minlength=b)
    for _ in range(8):
        with np.errstate(divide="ignore"):
            bound = _critical(np.minimum(n_kept * FDR / np.maximum(m, 1), FDR), df)
        keep = z >= bound[r]
        r, c, z = r[keep], c[keep], z[keep]
        shrunk = np.bincount(r, minlength=b)
        if (shrunk == n_kept).all():
            break
        n_kept = shrunk
    # Ascending p == descending z, so BH's p_(k) <= k FDR / m is z_(k) >= crit(k FDR / m): the
    # critical values are computed once per distinct m, not a p-value per candidate.
    order = np.lexsort((-z, r))
    r, c, z = r[order], c[order], z[order]
    starts = np.searchsorted(r, np.arange(b))
    rank = np.arange(r.size) - starts[r] + 1
    ok = np.zeros(r.size, dtype=bool)
    for mi in np.unique(m[r]):
        sel = m[r] == mi
        levels = np.arange(1, rank[sel].max() + 1) * FDR / mi
        ok[sel] = z[sel] >= _critical(levels, df)[rank[sel] - 1]
    count = np.zeros(b, dtype=np.int64)
    np.maximum.at(count, r[ok], rank[ok])
    # The discoveries: the `count` smallest p of each row. Their influences, largest first.
    keep = rank <= count[r]
    r, v = r[keep], infl[r[keep], c[keep]]
    order = np.lexsort((-v, r))
    r, v = r[order], v[order]
    pos = np.arange(r.size) - np.searchsorted(r, np.arange(b))[r]
    top = np.full((b, TOP_OTHERS + 1), np.nan)
    head = pos < TOP_OTHERS
    top[r[head], pos[head]] = v[head]
    rest = np.bincount(r[~head], weights=v[~head], minlength=b)
    top[:, TOP_OTHERS] = rest
    return count, top


def _critical(alpha: float | np.ndarray, df: float | None) -> np.ndarray:
    """One-sided critical values: P(T >= crit) = alpha, T normal (df None) or Student's t."""
    return -ndtri(alpha) if df is None else -stdtrit(df, alpha)


def histogram(row: np.ndarray, t: int, bins: int = 60) -> dict[str, Any]:
    """Counts of the finite I[t, i], i != t, in ``bins`` equal bins over a range that also
    covers I[t, t], so that self can be marked on the same axis. The HTML and the terminal
    draw from it; ``Audit.influence_row`` gives the row to check it against."""
    row = np.asarray(row, dtype=np.float64)
    others = np.delete(row, t)
    others = others[np.isfinite(others)]
    span = others
    if np.isfinite(row[t]):
        span = np.append(others, row[t])
    if span.size == 0:
        return {"lo": None, "hi": None, "counts": []}
    lo, hi = float(span.min()), float(span.max())
    if hi <= lo:
        hi = lo + 1e-12
    counts, _ = np.histogram(others, bins=bins, range=(lo, hi))
    return {"lo": lo, "hi": hi, "counts": [int(x) for x in counts]}
