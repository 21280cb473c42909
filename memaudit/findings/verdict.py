"""The headline verdict on signal strength (issue #19): how much memorization this ensemble can
measure, and whether near-duplicate clusters can be resolved at this M and signal.

Near-duplicates are found through the effect of one copy on another, which is at most (and in
groups of several copies far less than) a copy's own self-influence. So the self-influences say
what the link rules can see: a pair is linked when its pooled z passes the calibrated threshold
T, i.e. when each copy's effect on the other is at least about T * se / sqrt(2) (both
directions pooled; T * se for the z rule's one direction), se the standard error of one
influence. When that smallest detectable
effect is more than half the median self-influence, a typical pair of copies cannot be told
from chance here, and an empty or short cluster list says nothing about duplication.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control, norm

from memaudit.estimate.influence import InfluenceResult

# Self-influence is "significant" under Benjamini-Hochberg at this false-discovery rate.
FDR = 0.05
# A typical near-duplicate's effect on its mate, as a share of the median self-influence, that
# the clusters should resolve (in groups of several copies the effect saturates below this).
PAIR_SHARE = 0.5


def pair_threshold(z_threshold: float, mutual_threshold: float | None) -> float:
    """The z each direction of a pair of copies must reach to be linked by either rule: the z
    rule's threshold, or the mutual rule's pooled threshold / sqrt(2) when that rule is on and
    calibrated to a finite threshold (it also needs its selection: low margins, mutual top
    influencers)."""
    if mutual_threshold is not None and math.isfinite(mutual_threshold):
        return min(z_threshold, mutual_threshold / math.sqrt(2.0))
    return z_threshold


def signal_verdict(
    result: InfluenceResult,
    n_models: int,
    pair_threshold: float,
    n_clusters: int,
    level: float | None,
) -> dict[str, Any]:
    """The headline for report.json (``headline``): share of records with significant
    self-influence (BH at FDR), median and largest self-influence in nats, the smallest
    pairwise effect the link rules can detect (``detectable_effect``), whether clusters are
    resolvable, the models that would resolve them, and ``text``: the sentences a report shows
    first. ``pair_threshold``: the z each direction of a pair must reach (see
    :func:`pair_threshold`)."""
    si = np.asarray(result.self_influence, dtype=np.float64)
    se = np.asarray(result.self_se, dtype=np.float64)
    ok = np.isfinite(si) & np.isfinite(se) & (se > 0)
    n = int(ok.sum())
    if n == 0:
        return {
            "strength": "unmeasured",
            "records": 0,
            "text": ["No record has a defined self-influence: the ensemble measures nothing."],
        }
    z = si[ok] / se[ok]
    share = float(np.mean(false_discovery_control(norm.sf(z)) <= FDR))
    median, largest = float(np.median(si[ok])), float(np.max(si[ok]))
    median_se = float(np.median(se[ok]))
    threshold = float(pair_threshold) if math.isfinite(pair_threshold) else 0.0
    detectable = threshold * median_se
    resolvable = median > 0 and detectable <= PAIR_SHARE * median
    needed = None
    if not resolvable and median > 0:
        # z grows with sqrt(M): the models at which PAIR_SHARE of the median becomes detectable.
        needed = int(math.ceil(n_models * (detectable / (PAIR_SHARE * median)) ** 2))
    strength = "none" if share < 0.05 else "weak" if not resolvable else "strong"
    text = [
        f"Memorization measured: {100 * share:.0f}% of {n} records have significant "
        f"self-influence (BH, FDR {FDR:g}); median {_nats(median)} (largest {_nats(largest)}), "
        f"median z {float(np.median(z)):.1f}, from {n_models} models."
    ]
    if resolvable:
        text.append(
            f"Near-duplicate pairs whose effect on each other is at least {_nats(detectable)} "
            f"({detectable / median:.2g} of the median self-influence) are resolvable here"
            + (
                "; every link shown passed a threshold calibrated on null shuffles of this run "
                f"(chance of any false link under {level:g} when few links are found)."
                if level
                else "."
            )
        )
    elif median <= 0:
        text.append(
            "Clusters cannot be resolved: the median record shows no self-influence. "
            "Train more epochs or at a higher learning rate (or fully fine-tune) so that the "
            "models memorize, and more models."
        )
    else:
        text.append(
            f"Clusters cannot be resolved at this model count and signal: a pair of copies "
            f"is linked only when each lowers the other's loss by at least {_nats(detectable)}, "
            f"{detectable / median:.2g}x the median self-influence, and a copy's effect on its "
            f"mate is smaller than its own. "
            + (
                "The clusters listed are the few strong enough; an absent one"
                if n_clusters
                else "No cluster is listed, and that"
            )
            + f" is not evidence of no duplication. About {needed} models "
            "would resolve pairs at half the median self-influence; more epochs or a higher "
            "learning rate (stronger memorization) would need fewer."
        )
    return {
        "strength": strength,
        "records": n,
        "share_significant": share,
        "fdr": FDR,
        "median_self_influence": median,
        "max_self_influence": largest,
        "median_self_z": float(np.median(z)),
        "median_se": median_se,
        "pair_threshold": threshold,
        "detectable_effect": detectable,
        "clusters_resolvable": bool(resolvable),
        "models_to_resolve": needed,
        "unit": "nats of a record's mean loss",
        "text": text,
    }


def _nats(x: float) -> str:
    """A loss difference with its scale: 2 significant digits and the unit."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g} nats"
    digits = max(2, 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f} nats" if abs(x) < 100 else f"{x:.0f} nats"
