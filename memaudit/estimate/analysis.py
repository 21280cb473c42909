"""Loss matrix -> influence estimates -> per-record metrics, written to the run directory.

Reads ``inclusion.npy`` and the per-model losses, writes ``losses.npy``, ``influence.npz``,
``influence.json`` and (for small N) ``influence_dense.npy``. It never trains, so it can be
rerun on any machine that has the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from memaudit.config import AnalysisConfig
from memaudit.data.records import Record
from memaudit.errors import MemauditError
from memaudit.estimate.distribution import QUANTILES, SIGNIFICANCE_RULE
from memaudit.estimate.influence import InfluenceResult
from memaudit.estimate.registry import get_estimator
from memaudit.store.io import atomic_write_json
from memaudit.store.io import finite_or_none as _nan_to_none
from memaudit.store.rundir import RunDir

MARGIN_RULE = (
    "largest / second-largest influence on the target over all training records, the target "
    "itself included; undefined (null) when the second-largest is <= 0"
)


@dataclass
class Analysis:
    records: list[Record]
    result: InfluenceResult
    n_models: int  # models in P
    valid: np.ndarray  # (M,) bool: models with a valid loss column
    losses: np.ndarray  # L (N x M) it was computed from, NaN in invalid columns
    summary: dict[str, Any]


def describe(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "median": float(np.median(v)),
    }


def top_other(result: InfluenceResult) -> np.ndarray:
    """Each target's strongest influencer other than itself (-1 if none)."""
    idx = result.top_idx
    others = np.where(idx == np.arange(len(idx))[:, None], -1, idx)
    first = np.argmax(others >= 0, axis=1)
    out = others[np.arange(len(idx)), first]
    return np.where((others >= 0).any(axis=1), out, -1)


def group_summary(records: list[Record], result: InfluenceResult) -> dict[str, Any]:
    """The paper's comparison: records with near-duplicates vs unique records."""
    groups = np.array([r.group or "" for r in records])
    grouped = groups != ""
    margin = np.where(result.margin_defined, result.margin, np.nan)
    summary: dict[str, Any] = {
        "all": {
            "self_influence": describe(result.self_influence),
            "margin": describe(margin),
            "margin_undefined": int((~result.margin_defined).sum()),
            "top1_is_self": float(result.top1_is_self.mean()),
        }
    }
    if not grouped.any():
        return summary
    for name, mask in (("unique", ~grouped), ("near_duplicated", grouped)):
        summary[name] = {
            "records": int(mask.sum()),
            "self_influence": describe(result.self_influence[mask]),
            "margin": describe(margin[mask]),
            "margin_undefined": int((~result.margin_defined[mask]).sum()),
            "top1_is_self": float(result.top1_is_self[mask].mean()) if mask.any() else None,
        }
    # How often the strongest other influencer of a planted record is in its own group, and the
    # share of its group-mates among its top (group size - 1) other influencers.
    # Vectorized over records (a loop comparing each planted record with all N is O(N^2)).
    _, gid, size = np.unique(groups, return_inverse=True, return_counts=True)
    t = np.flatnonzero(grouped)
    other = top_other(result)[t]
    hits = (other >= 0) & (gid[np.maximum(other, 0)] == gid[t])
    idx = result.top_idx[t]
    ranked = (idx >= 0) & (idx != t[:, None])
    ranked &= np.cumsum(ranked, axis=1) <= (size[gid[t]] - 1)[:, None]  # the first |mates|
    found = (ranked & (gid[np.maximum(idx, 0)] == gid[t][:, None])).sum(axis=1)
    mates = size[gid[t]] - 1
    recalls = np.where(mates > 0, found / np.maximum(mates, 1), 0.0)
    summary["near_duplicated"]["top_other_in_group"] = float(np.mean(hits))
    summary["near_duplicated"]["group_recall_at_size"] = float(np.mean(recalls))
    if (~grouped).any():
        from sklearn.metrics import roc_auc_score

        # Lower values should mean "has near-duplicates"; AUC over records with a defined value.
        for key, values in (("self_influence", result.self_influence), ("margin", margin)):
            ok = np.isfinite(values)
            if len(set(grouped[ok])) == 2:
                summary[f"auc_{key}"] = float(roc_auc_score(grouped[ok], -values[ok]))
    return summary


def analyze_run(run: RunDir, cfg: AnalysisConfig, models: int | None = None) -> Analysis:
    """Estimate influence from the run's saved losses and write the influence files.

    ``models``: use only the first ``models`` models (what a run of that size would have
    reported; the benchmarks replay ``--models auto`` this way). Such a partial analysis writes
    nothing, so the run's own influence files stay those of the whole ensemble."""
    config = run.read_config()
    records = run.records()
    inclusion = run.inclusion()
    n_models = inclusion.shape[1]
    losses, valid = run.collect_losses(len(records), n_models, write=models is None)
    if models is not None:
        valid &= np.arange(n_models) < models
    if valid.sum() < 2:
        status = run.status(n_models)
        pending = len(status["missing"]) + len(status["failed"])
        if len(status["ok"]) + pending >= 2:
            advice = "rerun `memaudit run` (or `memaudit train`) to train the rest"
        else:  # the rest diverged: deterministic, so a rerun would diverge again
            advice = (
                f"{len(status['diverged'])} diverged (non-finite loss), which a rerun repeats; "
                "use a lower --lr (or other training options) with a new --out"
            )
        raise MemauditError(
            f"{run.path}: only {int(valid.sum())} of {n_models} models have results; "
            f"at least 2 are needed: {advice}"
        )
    write = models is None
    dense = run.file("influence_dense.npy") if write and len(records) <= cfg.dense_max else None
    result = get_estimator(cfg.estimator).estimate(
        np.nan_to_num(losses),
        inclusion,
        covariates=cfg.covariates,
        top_k=cfg.top_k,
        model_mask=valid,
        dense_path=dense,
        distribution=True,
    )
    summary = group_summary(records, result)
    if write:
        result.save(run.file("influence.npz"))
        _write_influence_json(run, records, result, valid, summary, config)
    return Analysis(records, result, n_models, valid, losses=losses, summary=summary)


def influence_row(records: list[Record], result: InfluenceResult, t: int) -> dict[str, Any]:
    """Target t's influence metrics as plain JSON (shared by influence.json and the report)."""
    top = [
        {"index": int(i), "id": records[i].id, "influence": _nan_to_none(v), "se": _nan_to_none(s)}
        for i, v, s in zip(result.top_idx[t], result.top_val[t], result.top_se[t], strict=True)
        if i >= 0
    ]
    defined = bool(result.margin_defined[t])
    return {
        "self_influence": _nan_to_none(result.self_influence[t]),
        "self_influence_se": _nan_to_none(result.self_se[t]),
        "n_in": int(result.n_in[t]),
        "n_out": int(result.n_out[t]),
        "margin": _nan_to_none(result.margin[t]) if defined else None,
        "margin_defined": defined,
        "top1_is_self": bool(result.top1_is_self[t]),
        "top_influencers": top,
        **distribution_row(result, t),
    }


# -- the influence distribution of each record (memaudit.estimate.distribution) -----------------

DISTRIBUTION_RULE = {
    "quantiles": [float(q) for q in QUANTILES],
    "over": "I[t, i] for the other records i != t with a defined influence",
    "significance": SIGNIFICANCE_RULE,
}


def distribution_row(result: InfluenceResult, t: int) -> dict[str, Any]:
    """{"distribution": target t's summaries} when the result has them, else {}."""
    if result.distribution is None:
        return {}
    margin = _nan_to_none(result.margin[t]) if result.margin_defined[t] else None
    return {"distribution": result.distribution.row(t, margin)}


def significance_df(estimator: str, n_models_used: int, covariates: int = 4) -> int:
    """Degrees of freedom of the significance tests the estimator's summaries used."""
    fitted = get_estimator(estimator).fitted(n_models_used, covariates)
    return max(1, n_models_used - 2 - fitted)


def _write_influence_json(run, records, result, valid, summary, config) -> None:
    rows = [
        {"index": t, "id": r.id, "group": r.group, **influence_row(records, result, t)}
        for t, r in enumerate(records)
    ]
    atomic_write_json(
        run.file("influence.json"),
        {
            "format_version": 1,
            "estimator": result.estimator,
            "n_records": len(records),
            "n_models": int(len(valid)),
            "n_models_used": int(valid.sum()),
            "excluded_models": [int(j) for j in np.flatnonzero(~valid)],
            "top_k": result.top_k,
            "margin_rule": MARGIN_RULE,
            **({"distribution_rule": DISTRIBUTION_RULE} if result.distribution is not None else {}),
            "config": config["config"],
            "summary": summary,
            "records": rows,
        },
    )
