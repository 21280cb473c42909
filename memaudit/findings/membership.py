"""Membership inference from the ensemble's own in/out losses: a per-record AUC and d' of
the loss with the record in training against without it."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from memaudit.estimate.budget import row_block


def membership_scores(
    losses: np.ndarray, inclusion: np.ndarray, model_mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per record t: 'mia_auc' = P(loss of an out-model > loss of an in-model) (ties count 1/2),
    i.e. how well the loss separates models that trained on t from models that did not, from the
    in/out losses the ensemble already has (no extra training); 'mia_dprime' = (mean_out -
    mean_in) / sqrt((var_in + var_out) / 2) (ddof = 1). Also 'n_in' and 'n_out', the models
    behind each score. Non-finite losses are left out; 'mia_auc' is NaN where a side has no
    models, 'mia_dprime' where a side has fewer than two or both variances are zero.
    Vectorised (ranks per row), no Python loop over records."""
    losses = np.asarray(losses, dtype=np.float64)
    inclusion = np.asarray(inclusion)
    if losses.ndim != 2 or inclusion.shape != losses.shape:
        raise ValueError(
            f"losses and inclusion must be N x M arrays of one shape, got {losses.shape} and "
            f"{inclusion.shape}"
        )
    if model_mask is not None:
        model_mask = np.asarray(model_mask, dtype=bool)
        if model_mask.shape != (losses.shape[1],):
            raise ValueError(
                f"model_mask must have shape ({losses.shape[1]},), got {model_mask.shape}"
            )
        losses, inclusion = losses[:, model_mask], inclusion[:, model_mask]
    # Row blocks (budget.ROW_BLOCK_ELEMENTS): every statistic is per row.
    step = row_block(losses.shape[1])
    parts = [
        _membership_rows(losses[lo : lo + step], inclusion[lo : lo + step])
        for lo in range(0, len(losses), step)
    ]
    if not parts:
        return _membership_rows(losses, inclusion)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _membership_rows(losses: np.ndarray, inclusion: np.ndarray) -> dict[str, np.ndarray]:
    ok = np.isfinite(losses)
    inc = inclusion.astype(bool) & ok
    out = ~inclusion.astype(bool) & ok
    n_in = inc.sum(axis=1)
    n_out = out.sum(axis=1)

    # Missing losses rank above every finite one, so the finite values' average ranks are
    # exactly their ranks among themselves (Mann-Whitney U from the out-models' rank sum).
    ranks = rankdata(np.where(ok, losses, np.inf), method="average", axis=1)
    rank_out = np.where(out, ranks, 0.0).sum(axis=1)
    u_out = rank_out - n_out * (n_out + 1) / 2.0
    pairs = (n_in * n_out).astype(np.float64)
    auc = np.full(len(losses), np.nan)
    np.divide(u_out, pairs, out=auc, where=pairs > 0)

    def side(mask: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals = np.where(mask, losses, 0.0)
        mean = np.full(len(losses), np.nan)
        np.divide(vals.sum(axis=1), n, out=mean, where=n > 0)
        dev = np.where(mask, losses - np.nan_to_num(mean)[:, None], 0.0)
        var = np.full(len(losses), np.nan)
        np.divide((dev * dev).sum(axis=1), n - 1, out=var, where=n > 1)
        return mean, var

    mean_in, var_in = side(inc, n_in)
    mean_out, var_out = side(out, n_out)
    pooled = np.sqrt((var_in + var_out) / 2.0)  # NaN propagates from an undefined side
    dprime = np.full(len(losses), np.nan)
    np.divide(mean_out - mean_in, pooled, out=dprime, where=np.isfinite(pooled) & (pooled > 0))
    return {"mia_auc": auc, "mia_dprime": dprime, "n_in": n_in, "n_out": n_out}
