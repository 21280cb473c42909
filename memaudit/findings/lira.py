"""Membership inference as the field measures it: LiRA (Carlini et al., 2022, "Membership
Inference Attacks From First Principles") from the ensemble the audit already trained.

Every model of the ensemble was trained on a known random half, which is exactly LiRA's shadow
set-up. For each model j taken as the target and each record t, t's in- and out-distributions
of a calibrated statistic are fitted on the *other* models (leave-one-model-out: model j never
enters the distributions it is scored against), and (t, j) is scored by

* online:  log N(phi; mu_in, var_in) - log N(phi; mu_out, var_out), the likelihood ratio;
* offline: (phi - mu_out) / sd_out, the one-sided test against the out-distribution alone (a
  monotone function of the paper's 1 - Pr[Z > phi], kept as a z so that large values do not
  saturate at 1.0 and tie in the ROC).

The statistic phi = logit(exp(-loss)) = -loss - log(1 - exp(-loss)):

* images: the loss is the per-image cross-entropy -log p_y, so phi is exactly the paper's
  logit-scaled confidence log(p_y / (1 - p_y)), derived from the stored loss without logits;
* text: the loss is the mean next-token NLL over the scored positions, so exp(-loss) is the
  length-normalised (geometric-mean per-token) probability and phi its logit. We use this
  rather than the raw loss because phi is monotone in the loss (the per-record ranking and
  mia_auc are unchanged) but stretches the memorised tail (loss -> 0, where the raw loss piles
  up against its bound and is far from Gaussian) as the paper's logit scaling does; for a
  typical loss of a few nats phi is about -loss. A sequence-level probability (the summed NLL)
  would instead be tiny for every record and its logit just -sum, making long records look
  different by length alone.

With few models per side a per-record variance is noisy; the paper advises a global (fixed)
variance below 64 shadow models, so ``variance="auto"`` pools one variance per side over all
records when fewer than 64 models per side are available (still leave-one-model-out: the pool
for target j leaves j's losses out).

Everything is vectorised over row blocks of the N x M matrices: the leave-one-out means and
variances come from per-record sums (remove model j's value from the side it is on), so there
is no Python loop over records or models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

GLOBAL_VARIANCE_BELOW = 64  # models per side: the paper's advice for a fixed variance
FPRS = (0.001, 0.01)  # the field's low false-positive rates
N_BOOT = 200
_BLOCK_ELEMENTS = 2_000_000  # about 16 MB per float64 work array


def lira_statistic(losses: np.ndarray) -> np.ndarray:
    """phi = logit(exp(-loss)), computed stably; a loss of 0 is clipped to 1e-12 (phi = 27.6),
    non-finite losses stay NaN."""
    loss = np.asarray(losses, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        loss = np.where(np.isfinite(loss), np.maximum(loss, 1e-12), np.nan)
        return -loss - np.log(-np.expm1(-loss))


@dataclass
class Fit:
    """Leave-one-model-out fit for a block of rows: entry (t, j) is fitted without model j."""

    lo: int
    mu_in: np.ndarray
    var_in: np.ndarray
    mu_out: np.ndarray
    var_out: np.ndarray
    n_in: np.ndarray  # models behind mu_in (model j excluded)
    n_out: np.ndarray


def _side_sums(stat: np.ndarray, mask: np.ndarray):
    """Per row: count, mean and centred sum of squares of stat over mask."""
    n = mask.sum(axis=1)
    total = np.where(mask, stat, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
    dev = np.where(mask, stat - np.nan_to_num(mean)[:, None], 0.0)
    return n, np.nan_to_num(mean), (dev * dev).sum(axis=1)


def _loo(stat, on_side, n, mean, ss):
    """Leave-one-out count, mean and sum of squares of one side for every (t, j): unchanged
    where j is not on the side; otherwise x = stat[t, j] removed (SS' = SS - (x - m)^2 n/(n-1))."""
    n_l = n[:, None] - on_side.astype(np.int64)
    x = np.where(on_side, stat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_l = np.where(on_side, (mean[:, None] * n[:, None] - x) / n_l, mean[:, None])
        shrink = np.where(on_side, (x - mean[:, None]) ** 2 * n[:, None] / (n[:, None] - 1), 0.0)
    ss_l = np.maximum(ss[:, None] - np.nan_to_num(shrink), 0.0)
    return n_l, mean_l, ss_l


def _blocks(stat: np.ndarray, member: np.ndarray) -> Iterator[tuple[int, ...]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, stat.shape[1]))
    for lo in range(0, len(stat), step):
        s = stat[lo : lo + step]
        ok = np.isfinite(s)
        inc = member[lo : lo + step] & ok
        out = ~member[lo : lo + step] & ok
        yield lo, s, ok, inc, out


def fit_blocks(stat: np.ndarray, inclusion: np.ndarray, variance: str = "auto") -> Iterator[Fit]:
    """Leave-one-model-out in/out distributions of ``stat`` (N x M, NaN = missing) for every
    (t, j), by row blocks. ``variance``: "per_record", "global" (one pooled variance per side
    and target model, over all records, model j left out), or "auto" (global when the median
    record has fewer than GLOBAL_VARIANCE_BELOW models on a side)."""
    stat = np.asarray(stat, dtype=np.float64)
    member = np.asarray(inclusion).astype(bool)
    if stat.shape != member.shape or stat.ndim != 2:
        raise ValueError(
            f"stat and inclusion must be N x M of one shape: {stat.shape}, {member.shape}"
        )
    variance = resolve_variance(variance, member, np.isfinite(stat))
    pooled = None
    if variance == "global":
        # Pass 1: per target model j, the pooled within-record variance of each side over all
        # records, with j's own values removed.
        m = stat.shape[1]
        ss_in, df_in, ss_out, df_out = (np.zeros(m) for _ in range(4))
        for _, s, _, inc, out in _blocks(stat, member):
            for mask, ss_acc, df_acc in ((inc, ss_in, df_in), (out, ss_out, df_out)):
                n, mean, ss = _side_sums(s, mask)
                n_l, _, ss_l = _loo(s, mask, n, mean, ss)
                ss_acc += ss_l.sum(axis=0)
                df_acc += np.maximum(n_l - 1, 0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = (ss_in / df_in, ss_out / df_out)
    for lo, s, _, inc, out in _blocks(stat, member):
        sides = []
        for k, mask in enumerate((inc, out)):
            n, mean, ss = _side_sums(s, mask)
            n_l, mean_l, ss_l = _loo(s, mask, n, mean, ss)
            mean_l = np.where(n_l > 0, mean_l, np.nan)
            if pooled is not None:
                var = np.broadcast_to(pooled[k], s.shape).copy()
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    var = np.where(n_l > 1, ss_l / (n_l - 1), np.nan)
            sides.append((mean_l, var, n_l))
        (mi, vi, ni), (mo, vo, no) = sides
        yield Fit(lo, mi, vi, mo, vo, ni, no)


def resolve_variance(variance: str, member: np.ndarray, ok: np.ndarray) -> str:
    if variance not in ("auto", "global", "per_record"):
        raise ValueError(f"variance must be auto, global or per_record, not {variance!r}")
    if variance != "auto":
        return variance
    per_side = min(np.median((member & ok).sum(axis=1)), np.median((~member & ok).sum(axis=1)))
    return "global" if per_side - 1 < GLOBAL_VARIANCE_BELOW else "per_record"


@dataclass
class LiraScores:
    online: np.ndarray  # (N, M) float32 log-likelihood ratio; NaN where undefined
    offline: np.ndarray  # (N, M) float32 z against the out-distribution
    variance: str  # "global" | "per_record"


def lira_scores(
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None = None,
    variance: str = "auto",
    statistic: bool = True,
) -> LiraScores:
    """Online and offline LiRA scores of every (record, model) pair, leave-one-model-out.
    ``losses`` are per-record losses (turned into phi by lira_statistic unless ``statistic`` is
    False: then they are used as the statistic as given, larger = more member-like). Models
    outside ``model_mask`` neither score nor are scored (their columns are NaN)."""
    losses = np.asarray(losses, dtype=np.float64)
    inclusion = np.asarray(inclusion).astype(bool)
    n, m = losses.shape
    used = np.ones(m, bool) if model_mask is None else np.asarray(model_mask, bool)
    stat = lira_statistic(losses[:, used]) if statistic else losses[:, used]
    online = np.full((n, m), np.nan, dtype=np.float32)
    offline = np.full((n, m), np.nan, dtype=np.float32)
    cols = np.flatnonzero(used)
    mode = resolve_variance(variance, inclusion[:, used], np.isfinite(stat))
    for f in fit_blocks(stat, inclusion[:, used], mode):
        s = stat[f.lo : f.lo + len(f.mu_in)]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok_var = (f.var_in > 0) & (f.var_out > 0)
            llr = -0.5 * (
                (s - f.mu_in) ** 2 / f.var_in
                - (s - f.mu_out) ** 2 / f.var_out
                + np.log(f.var_in / f.var_out)
            )
            z = (s - f.mu_out) / np.sqrt(f.var_out)
        rows = slice(f.lo, f.lo + len(s))
        online[rows, cols] = np.where(ok_var, llr, np.nan)
        offline[rows, cols] = np.where(f.var_out > 0, z, np.nan)
    return LiraScores(online, offline, mode)


# ---------------------------------------------------------------------------------------------
# ROC over (record, model) pairs


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC of ``scores`` (NaN dropped) against boolean ``labels``: (fpr, tpr, thresholds)
    at every distinct score (a pair is called a member when its score >= threshold), starting
    at (0, 0)."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    ok = np.isfinite(scores)
    scores, labels = scores[ok], labels[ok]
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    del order
    # int32 counts and fp only at the distinct thresholds: at N x M = 20M pairs each full
    # int64 work array is 160 MB.
    tp = np.cumsum(y, dtype=np.int32 if len(y) < 2**31 - 1 else np.int64)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.zeros(0, int)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tp_last = tp[last].astype(np.int64)
    fpr = np.r_[0.0, (last + 1 - tp_last) / n_neg]
    tpr = np.r_[0.0, tp_last / n_pos]
    thr = np.r_[np.inf, s[last]]
    return fpr, tpr, thr


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """The highest TPR at an FPR of at most alpha (the field's reading of the ROC)."""
    keep = fpr <= alpha + 1e-15
    return float(tpr[keep].max()) if keep.any() else 0.0


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(np.r_[tpr, 1.0], np.r_[fpr, 1.0]))


def curve_points(fpr: np.ndarray, tpr: np.ndarray, n: int = 120) -> dict[str, list[float]]:
    """A short ROC for plotting with a log FPR axis: TPR at log-spaced FPRs from 1/negatives."""
    lo = float(fpr[fpr > 0].min()) if (fpr > 0).any() else 1.0
    grid = np.unique(np.r_[np.logspace(np.log10(lo), 0, n), FPRS])
    grid = grid[grid >= lo]
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return {"fpr": [float(x) for x in grid], "tpr": [float(tpr[i]) for i in idx]}


def _grid_counts(scores, labels, thresholds):
    """Per model: counts of positive and negative pairs with score >= each threshold
    ((M, T) each), by binning every pair once (np.bincount; no loop over models)."""
    n, m = scores.shape
    t = len(thresholds)
    ok = np.isfinite(scores)
    # key = model * (T + 1) + bin, where bin = number of thresholds <= score, so that
    # score >= thresholds[k] iff bin > k. int32 keys: 80 MB at 20M pairs.
    key = np.searchsorted(thresholds, np.where(ok, scores, -np.inf), side="right").astype(np.int32)
    key += (np.arange(m, dtype=np.int32) * (t + 1))[None, :]
    out = []
    for want in (labels & ok, ~labels & ok):
        h = np.bincount(key[want], minlength=m * (t + 1)).reshape(m, t + 1)
        # counts with bin > k = reverse cumulative sum
        out.append(np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:])
    return out


def _grid_summary(pos, neg, n_pos, n_neg):
    """AUC and TPR at FPRS from counts at a descending-FPR threshold grid (rows: replicates)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # empty replicates: dropped later
        tpr = pos / n_pos[:, None]
        fpr = neg / n_neg[:, None]
    order = np.argsort(fpr, axis=1, kind="stable")
    fpr, tpr = np.take_along_axis(fpr, order, 1), np.take_along_axis(tpr, order, 1)
    zero, one = np.zeros((len(fpr), 1)), np.ones((len(fpr), 1))
    f, t = np.hstack([zero, fpr, one]), np.hstack([zero, tpr, one])
    aucs = np.trapezoid(t, f, axis=1)
    # Between grid points the ROC is read linearly (the exact curve at millions of pairs is
    # nearly continuous; the step below would bias every replicate low).
    at = [np.array([np.interp(a, fi, ti) for fi, ti in zip(f, t, strict=True)]) for a in FPRS]
    return aucs, at


def roc_metrics(
    scores: np.ndarray,
    inclusion: np.ndarray,
    rows: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    curve: bool = True,
) -> dict:
    """AUC and TPR at 0.1% and 1% FPR of the ROC over all (record, model) pairs (records in
    ``rows``, all by default), exact; with 95% percentile intervals from a bootstrap over
    target models (models resampled with replacement; each replicate's ROC is read on a grid
    of 600 thresholds at the pooled negatives' quantiles, dense at low FPR)."""
    s = scores if rows is None else scores[rows]
    y = np.asarray(inclusion, bool) if rows is None else np.asarray(inclusion, bool)[rows]
    ok = np.isfinite(s)
    n_pos, n_neg = int((y & ok).sum()), int((~y & ok).sum())
    if n_pos == 0 or n_neg == 0:
        return {
            "pairs": n_pos + n_neg,
            "members": n_pos,
            "auc": None,
            "tpr_at_0.1%": None,
            "tpr_at_1%": None,
            "ci": None,
            "models": int(ok.any(axis=0).sum()),
        }
    fpr, tpr, _ = roc_curve(s, y)
    result = {
        "pairs": n_pos + n_neg,
        "members": n_pos,
        "models": int(ok.any(axis=0).sum()),
        "auc": auc(fpr, tpr),
        "tpr_at_0.1%": tpr_at(fpr, tpr, FPRS[0]),
        "tpr_at_1%": tpr_at(fpr, tpr, FPRS[1]),
        "ci": None,
    }
    if curve:
        result["curve"] = curve_points(fpr, tpr)
    used = ok.any(axis=0)
    if n_boot and used.sum() >= 2:
        neg = s[~y & ok]
        probs = np.unique(
            np.r_[
                FPRS,
                np.logspace(np.log10(max(0.5 / n_neg, 1e-6)), 0, 300),
                np.linspace(0, 1, 301)[1:-1],
            ]
        )
        thr = np.unique(np.quantile(neg, 1.0 - probs))
        pos_c, neg_c = _grid_counts(s[:, used], y[:, used], thr)
        rng = np.random.default_rng(seed)
        k = int(used.sum())
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
        npos_j, nneg_j = (y & ok)[:, used].sum(0), (~y & ok)[:, used].sum(0)
        aucs, at = _grid_summary(w @ pos_c, w @ neg_c, w @ npos_j, w @ nneg_j)
        keep = (w @ npos_j > 0) & (w @ nneg_j > 0)

        def ci(v):
            lo, hi = np.percentile(v[keep], [2.5, 97.5])
            return [float(lo), float(hi)]

        if not keep.any():
            return result
        result["ci"] = {
            "auc": ci(aucs),
            "tpr_at_0.1%": ci(at[0]),
            "tpr_at_1%": ci(at[1]),
            "replicates": int(keep.sum()),
        }
    return result


def record_exposure(
    scores: np.ndarray, inclusion: np.ndarray, fpr: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per record: the share of its in-models (and of its out-models) whose pair scores at or
    above the dataset-wide threshold that gives ``fpr`` over all out-pairs, i.e. how often an
    attacker operating at that false-positive rate over the whole dataset calls t a member when
    it was (and when it was not) trained on. Returns (tpr, fpr per record, threshold)."""
    y = np.asarray(inclusion, bool)
    ok = np.isfinite(scores)
    neg = np.sort(scores[~y & ok])[::-1]
    if len(neg) == 0:
        nan = np.full(len(scores), np.nan)
        return nan, nan, float("nan")
    k = int(np.floor(fpr * len(neg)))  # at most k out-pairs may reach the threshold
    # Smallest threshold above the (k+1)-th largest negative: strictly greater than it.
    thr = float(np.nextafter(neg[k], np.inf)) if k < len(neg) else float(neg[-1])
    hit = ok & (scores >= thr)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr_rec = (hit & y).sum(1) / (y & ok).sum(1)
        fpr_rec = (hit & ~y).sum(1) / (~y & ok).sum(1)
    return tpr_rec, fpr_rec, thr


def median_member_llr(scores: np.ndarray, inclusion: np.ndarray) -> np.ndarray:
    """Per record: the median online log-likelihood ratio over the models that trained on it."""
    x = np.where(np.asarray(inclusion, bool), scores, np.nan)
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(x, axis=1).astype(np.float64)


def lira_findings(
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None,
    groups: dict[str, np.ndarray],
    fpr: float = 0.001,
    variance: str = "auto",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Everything the report shows about LiRA: dataset-level metrics per variant (online,
    offline) and group (e.g. overall, in_clusters, unique), and per-record columns
    ``lira_tpr`` / ``lira_fpr`` (exposure at the dataset-wide threshold for ``fpr``, online)
    and ``lira_llr`` (median online log-likelihood ratio when trained on)."""
    sc = lira_scores(losses, inclusion, model_mask, variance)
    inclusion = np.asarray(inclusion, bool)
    variants = {}
    for name, s in (("online", sc.online), ("offline", sc.offline)):
        variants[name] = {
            g: roc_metrics(
                s,
                inclusion,
                None if mask is None else np.flatnonzero(mask),
                n_boot=n_boot,
                seed=seed,
            )
            for g, mask in groups.items()
        }
    tpr_rec, fpr_rec, thr = record_exposure(sc.online, inclusion, fpr)
    return {
        "variance": sc.variance,
        "statistic": "logit(exp(-loss))",
        "fpr": fpr,
        "threshold": thr,
        "variants": variants,
        "records": {
            "lira_tpr": tpr_rec,
            "lira_fpr": fpr_rec,
            "lira_llr": median_member_llr(sc.online, inclusion),
        },
    }
