"""Risky unique records: records in no cluster that the models memorise on their own (high,
significant self-influence), that become extractable when trained on (BLEU gain), or whose
membership the in/out losses give away (membership-inference AUC). Missing inputs skip their
flags and reasons rather than reporting zeros."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from memaudit.config import FindingsConfig
from memaudit.estimate.influence import InfluenceResult
from memaudit.findings.clusters import n_records, optional_array


@dataclass
class RecordFinding:
    index: int
    risk_score: float
    reasons: list[str]


def risky_unique_records(
    result: InfluenceResult,
    cluster_of: np.ndarray,
    cfg: FindingsConfig | None = None,
    bleu_gain: np.ndarray | None = None,
    mia_auc: np.ndarray | None = None,
    lira_tpr: np.ndarray | None = None,
) -> list[RecordFinding]:
    """Unique (unclustered) records flagged for high self-influence (at or above the
    cfg.self_influence_quantile of all finite self-influences, and significantly positive:
    self / self_se >= cfg.link_z), extractability (bleu_gain >= cfg.bleu_gain) or membership
    inference (mia_auc >= cfg.mia_auc); each flag is a reason sentence with its number.

    With ``lira_tpr`` (memaudit.findings.lira.record_exposure: the share of the models that
    trained on the record in which a dataset-wide LiRA attacker at cfg.lira_fpr calls it a
    member), the membership flag and its part of the risk use it instead of the uncalibrated
    per-record AUC: flagged at lira_tpr >= cfg.lira_tpr, risk + lira_tpr.

    Ranked by risk = (self-influence percentile in [0, 1]) + (BLEU gain clipped to [0, 1]) +
    (membership advantage 2 * AUC - 1 clipped to [0, 1]); every given measure counts, flagged or
    not, and a missing one adds nothing. Ties: smaller index first. At most cfg.top_records.
    """
    cfg = cfg or FindingsConfig()
    n = n_records(result)
    cluster_of = np.asarray(cluster_of)
    if cluster_of.shape != (n,):
        raise ValueError(f"cluster_of must have shape ({n},), got {cluster_of.shape}")
    bleu = optional_array(bleu_gain, n, "bleu_gain")
    auc = optional_array(mia_auc, n, "mia_auc")
    unique = cluster_of < 0

    self_infl = result.self_influence
    finite = np.isfinite(self_infl)
    pct = np.zeros(n)
    z_self = np.full(n, np.nan)
    flag_self = np.zeros(n, dtype=bool)
    if finite.any():
        # Percentile among all finite self-influences: "top 10%" means of the whole dataset.
        pct[finite] = rankdata(self_infl[finite], method="max") / finite.sum()
        cut = np.quantile(self_infl[finite], cfg.self_influence_quantile)
        with np.errstate(invalid="ignore", divide="ignore"):
            z_self = self_infl / result.self_se
        flag_self = finite & (self_infl >= cut) & (z_self >= cfg.link_z)
    # A missing measure is all-NaN: NaN never flags (compares False) and adds 0 to the score.
    bleu = np.full(n, np.nan) if bleu is None else bleu
    auc = np.full(n, np.nan) if auc is None else auc
    flag_bleu = bleu >= cfg.bleu_gain
    lira = optional_array(lira_tpr, n, "lira_tpr")
    if lira is None:
        flag_auc = auc >= cfg.mia_auc
        membership = np.clip(2.0 * np.nan_to_num(auc, nan=0.5) - 1.0, 0.0, 1.0)
    else:
        flag_auc = lira >= cfg.lira_tpr
        membership = np.clip(np.nan_to_num(lira), 0.0, 1.0)
    score = pct + np.clip(np.nan_to_num(bleu), 0.0, 1.0) + membership

    flagged = np.flatnonzero(unique & (flag_self | flag_bleu | flag_auc))
    flagged = flagged[np.lexsort((flagged, -score[flagged]))][: cfg.top_records]
    top_share = round(100 * (1 - cfg.self_influence_quantile))
    findings = []
    for t in flagged:
        reasons = []
        if flag_self[t]:
            reasons.append(
                f"self-influence {_scaled(self_infl[t])} (top {top_share}%, z = {z_self[t]:.1f}): "
                "memorised on its own"
            )
        if flag_bleu[t]:
            reasons.append(f"BLEU gain {bleu[t]:.2f} when trained on: extractable")
        if flag_auc[t] and lira is not None:
            reasons.append(
                f"LiRA at {100 * cfg.lira_fpr:g}% FPR calls it a member in "
                f"{100 * lira[t]:.0f}% of the models that trained on it"
                + (f" (per-record AUC {auc[t]:.2f})" if np.isfinite(auc[t]) else "")
            )
        elif flag_auc[t]:
            reasons.append(f"membership-inference AUC {auc[t]:.2f}")
        findings.append(RecordFinding(index=int(t), risk_score=float(score[t]), reasons=reasons))
    return findings


def _scaled(x: float) -> str:
    """Two decimals, or two significant digits below 0.01 (0.00073, not 0.00: #19)."""
    return f"{x:.2f}" if not np.isfinite(x) or abs(x) >= 0.01 or x == 0 else f"{x:.2g}"
