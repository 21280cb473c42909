"""Has the ensemble converged? Diagnostics that tell a user whether more models would change
the findings.

The paper trains 1,000 models; a user who trains 16, 32, 64, ... needs evidence that the
estimates have stopped moving. Three facts shape what is measured here:

* Rank agreement between independent halves of the ensemble is the evidence. Each half is a
  smaller ensemble of the same design; if two disjoint halves rank the records alike, the full
  ensemble (twice as large, hence the Spearman-Brown correction 2r / (1 + r)) is reliable, and
  more models would refine the numbers rather than change which records stand out. Ranks, not
  values, because the user acts on orderings (top decile, lowest margins).
* Margins are comparable only at equal M. The margin's denominator, for a record without a
  near-duplicate, is the largest of N - 1 noise terms whose size falls like 1 / sqrt(M), so
  margins drift upward as models are added. A margin's level at one M says little about
  another; its bootstrap spread and its rank reliability at this M are what can be reported.
  Below about 64 models even a planted duplicate's runner-up is often noise, margins bunch up
  near 1 and their intervals are narrow: a margin near 1 there is no evidence of a duplicate.
  The margin's reliability lags: on a synthetic ensemble (N = 60) self-influence reached 0.9
  at 64-128 models and the margin at 256-512.
* Records whose inclusion patterns coincide (or are complements) cannot be separated by any
  estimator: every target sees the same models with and without each of them, so their
  influences are confounded (for exact complements, I[t, i] = -I[t, j]). They are reported as
  such rather than with a margin that looks meaningful but is not.

The adaptive ``--models auto`` mode calls :func:`diagnose` after each round and stops when
``converged``: both reliabilities reach ``min_reliability`` and the flagged set moved by at most
``max_flag_change`` since the previous round (so the first round never converges).

Under the complementary design (model 2k + 1 trains on the complement of model 2k), complementary
model pairs are kept together when splitting and resampling, so every half and every resample
keeps each record in exactly half of its models; pairs are detected from the inclusion matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata

from memaudit.config import ConvergenceConfig
from memaudit.estimate.budget import BLOCK_BYTES, influence_block_rows
from memaudit.estimate.influence import InfluenceResult
from memaudit.estimate.registry import DEFAULT, get_estimator
from memaudit.store.io import finite_or_none

_CI_LEVEL = 0.90  # two-sided percentile interval for the margins


@dataclass
class Diagnostics:
    n_models: int
    reliability_self: float | None  # Spearman-Brown corrected split-half rank corr. of self-infl.
    reliability_margin: float | None  # same for the margin (defined in both halves)
    self_se_median: float  # median standard error of self-influence (from the estimator)
    margin_se_median: float | None  # median bootstrap SE of the flagged records' margins
    flag_change: float | None  # 1 - Jaccard vs previous round's flagged set; None in round one
    # 90% bootstrap CI of each flagged record's margin (percentile, recentred on the margin of
    # all models: see bootstrap_margins); records with an undefined margin are left out.
    margin_ci: dict[int, tuple[float, float]]
    # (i, j, fraction of used models where their inclusion differs), closest first: near 0 for
    # coinciding patterns, near 1 for complementary ones; at most the pair limit.
    indistinguishable: list[tuple[int, int, float]]
    converged: bool
    # One per criterion: {"name", "value", "threshold", "met", "change"} where change is the
    # value minus the previous round's value (None without one).
    criteria: list[dict[str, Any]]
    # How many indistinguishable pairs there were in all (``indistinguishable`` may be cut).
    n_indistinguishable: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: Python scalars only, NaN / inf -> None, margin_ci keyed by str(record)
        (JSON object keys are strings, so this survives a round trip unchanged)."""
        d = asdict(self)
        d["margin_ci"] = {str(k): [lo, hi] for k, (lo, hi) in self.margin_ci.items()}
        d["indistinguishable"] = [[i, j, f] for i, j, f in self.indistinguishable]
        return _jsonable(d)


class PatternPairs(NamedTuple):
    """Result of :func:`indistinguishable_pairs`; unpacks as ``pairs, total = ...``."""

    pairs: list[tuple[int, int, float]]  # at most `limit`, closest first
    total: int  # how many pairs met the criterion in all


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


# ---------------------------------------------------------------------------------------------
# Model bookkeeping


def _used_models(n_models: int, model_mask: np.ndarray | None) -> np.ndarray:
    if model_mask is None:
        return np.arange(n_models)
    mask = np.asarray(model_mask)
    if mask.shape != (n_models,) or mask.dtype != bool:
        raise ValueError(f"model_mask must be a bool array of shape ({n_models},)")
    return np.flatnonzero(mask)


def _model_units(inclusion: np.ndarray, used: np.ndarray) -> list[np.ndarray]:
    """The used models grouped into resampling units: complementary pairs (2k, 2k + 1) stay
    together, so halves and resamples keep the design's balance; every other model is alone."""
    inc = np.asarray(inclusion)
    used_set = set(used.tolist())
    units: list[np.ndarray] = []
    taken: set[int] = set()
    for j in used.tolist():
        if j in taken:
            continue
        mate = j + 1 if j % 2 == 0 else -1
        if mate in used_set and np.array_equal(inc[:, j].astype(bool), ~inc[:, mate].astype(bool)):
            units.append(np.array([j, mate]))
            taken.update((j, mate))
        else:
            units.append(np.array([j]))
            taken.add(j)
    return units


# ---------------------------------------------------------------------------------------------
# Split-half reliability


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation over the pairs finite in both; None with < 3 such pairs or a
    constant side (no ranking to agree on)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _spearman_brown(r: float) -> float:
    # Only a positive half-length reliability is stepped up: 2r / (1 + r) diverges at r = -1
    # and a non-positive agreement means "no reliability" either way.
    return 2.0 * r / (1.0 + r) if r > 0 else r


def split_half_reliability(
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None = None,
    top_k: int = 10,
    seed: int = 0,
    n_splits: int = 5,
    estimator: str = DEFAULT,
    covariates: int = 4,
) -> tuple[float | None, float | None]:
    """(reliability of self-influence, reliability of the margin) of the full ensemble.

    The used models are split at random into two disjoint halves (complementary model pairs
    kept together), the estimator runs on each, and the Spearman rank correlation between the
    halves is taken for self-influence (records finite in both) and for the margin (records with
    a defined margin in both). The correlations are averaged over ``n_splits`` random splits
    for stability, then corrected to the full model count with Spearman-Brown 2r / (1 + r).
    None where no split gives a correlation (fewer than 3 comparable records). ``top_k`` is
    passed to the estimator; the margin does not depend on it. Cost: 2 * n_splits estimates at
    half the models. Checked on synthetic ensembles: the corrected value matches the rank
    correlation with an independent ensemble of the same size to within about 0.05, where the
    uncorrected half-half correlation falls 0.1-0.15 short.
    """
    losses = np.asarray(losses)
    inclusion = np.asarray(inclusion)
    if inclusion.shape != losses.shape or losses.ndim != 2:
        raise ValueError("losses and inclusion must be N x M arrays of the same shape")
    used = _used_models(losses.shape[1], model_mask)
    units = _model_units(inclusion, used)
    if len(units) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    r_self: list[float] = []
    r_margin: list[float] = []
    for _ in range(n_splits):
        order = rng.permutation(len(units))
        halves = order[: len(units) // 2], order[len(units) // 2 :]
        results = []
        for half in halves:
            mask = np.zeros(losses.shape[1], dtype=bool)
            mask[np.concatenate([units[u] for u in half])] = True
            # Self-influence and margins only: no standard errors (a third less product).
            results.append(
                get_estimator(estimator).estimate(
                    losses,
                    inclusion,
                    covariates,
                    top_k=top_k,
                    model_mask=mask,
                    with_se=False,
                )
            )
        a, b = results
        rs = _spearman(a.self_influence, b.self_influence)
        both = a.margin_defined & b.margin_defined
        rm = _spearman(np.where(both, a.margin, np.nan), np.where(both, b.margin, np.nan))
        if rs is not None:
            r_self.append(rs)
        if rm is not None:
            r_margin.append(rm)
    rel_self = _spearman_brown(float(np.mean(r_self))) if r_self else None
    rel_margin = _spearman_brown(float(np.mean(r_margin))) if r_margin else None
    return rel_self, rel_margin


# ---------------------------------------------------------------------------------------------
# Bootstrap of the margins


def _row_margins(infl: np.ndarray) -> np.ndarray:
    """Largest / second-largest finite value per row, by the estimator's rule: NaN (undefined)
    with fewer than two finite values or a non-positive runner-up."""
    margin = np.full(infl.shape[0], np.nan)
    if infl.shape[1] < 2:
        return margin
    v = np.where(np.isfinite(infl), infl, -np.inf)
    top2 = -np.partition(-v, 1, axis=1)[:, :2]  # the two largest, descending
    first, second = top2[:, 0], top2[:, 1]
    defined = np.isfinite(first) & (second > 0)  # -inf (missing) is not > 0
    margin[defined] = first[defined] / second[defined]
    return margin


def bootstrap_margins(
    losses: np.ndarray,
    inclusion: np.ndarray,
    records: list[int],
    model_mask: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    estimator: str = DEFAULT,
    covariates: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap standard errors and 90% CIs of the margins of ``records``.

    Each resample draws the used models with replacement (complementary pairs as units) and
    recomputes each record's margin from its influence row (influence_block on the resampled
    columns of L and P; a model drawn twice counts twice). Returns (se, ci) of shapes
    (len(records),) and (len(records), 2); NaN where the margin of all the models is undefined
    or the margin is undefined in more than half of the resamples; otherwise computed from the
    resamples where it is defined.

    The interval is the 5% / 95% percentile interval of the resampled margins, rescaled so that
    their median sits at the margin of all the models (the SE gets the same factor), and never
    below 1 (a margin is largest / second-largest). Why: a resample adds its own noise to the
    N - 1 competing influences, so their maximum, the runner-up, comes out larger and the
    resampled margins smaller (a median 0.75 of the full margin for unique records at
    M = 128-512); the raw percentile interval then misses the full-ensemble margin for most
    unique records. The spread on the log scale is what the bootstrap gets roughly right (a bit
    narrow: on synthetic ensembles the rescaled 90% interval covered the mean margin of
    independent ensembles of the same size 72-92% of the time). So the interval says how far the
    margin would move between ensembles of this size; it is not an interval for the large-M
    margin, which is larger (see the module notes). Cost: n_boot influence_block passes over
    the records, each on an N x M copy of L and P.
    """
    losses = np.asarray(losses)
    inclusion = np.asarray(inclusion)
    if inclusion.shape != losses.shape or losses.ndim != 2:
        raise ValueError("losses and inclusion must be N x M arrays of the same shape")
    n = losses.shape[0]
    rec = np.asarray(records, dtype=np.int64).reshape(-1)
    if rec.size and (rec.min() < 0 or rec.max() >= n):
        raise ValueError(f"records must be indices in [0, {n})")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    se = np.full(rec.size, np.nan)
    ci = np.full((rec.size, 2), np.nan)
    if rec.size == 0:
        return se, ci
    used = _used_models(losses.shape[1], model_mask)
    units = _model_units(inclusion, used)
    by = get_estimator(estimator)

    def rows_of(lm: np.ndarray, pm: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return by.rows(lm, pm, rows, covariates=covariates)

    full = np.full(rec.size, np.nan)
    lu, pu = losses[:, used], inclusion[:, used]
    for lo, hi in _row_blocks(rec.size, n):
        full[lo:hi] = _row_margins(rows_of(lu, pu, rec[lo:hi]))
    # All draws up front, so the result does not depend on how records are blocked.
    draws = np.random.default_rng(seed).integers(0, len(units), size=(n_boot, len(units)))
    boot = np.full((n_boot, rec.size), np.nan)
    for b in range(n_boot):
        cols = np.concatenate([units[u] for u in draws[b]])
        lb, pb = losses[:, cols], inclusion[:, cols]
        for lo, hi in _row_blocks(rec.size, n):
            boot[b, lo:hi] = _row_margins(rows_of(lb, pb, rec[lo:hi]))
    tail = 100.0 * (1.0 - _CI_LEVEL) / 2.0
    for r in range(rec.size):
        m = boot[np.isfinite(boot[:, r]), r]
        if m.size * 2 < n_boot or not np.isfinite(full[r]):
            continue
        scale = full[r] / np.median(m)  # margins are > 0 wherever defined
        se[r] = scale * m.std(ddof=1)
        ci[r] = np.maximum(scale * np.percentile(m, [tail, 100.0 - tail]), 1.0)
    return se, ci


def _row_blocks(n_rows: int, n_records: int) -> list[tuple[int, int]]:
    """Blocks of target rows whose (rows x N) influence work arrays stay near the budget."""
    step = influence_block_rows(n_records)
    return [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


# ---------------------------------------------------------------------------------------------
# Records that no estimator can tell apart


def indistinguishable_pairs(
    inclusion: np.ndarray,
    model_mask: np.ndarray | None = None,
    max_fraction: float = 0.1,
    limit: int = 1000,
    complements: bool = True,
    block_rows: int | None = None,
) -> PatternPairs:
    """Pairs (i < j) whose inclusion patterns differ in at most ``max_fraction`` of the used
    models, or (``complements``) differ in at least 1 - max_fraction of them, i.e. one is nearly
    the other's complement. Returns ``PatternPairs(pairs, total)``: at most ``limit`` tuples
    (i, j, fraction of used models where their inclusion differs), closest first (distance to
    identical or to complementary, whichever is smaller; ties by i, j), and the total count.

    The Hamming distance comes from one matrix product on +-1 patterns, d = (M - X X^T) / 2,
    over blocks of rows against the rows after them (float32 is exact: every partial sum is an
    integer of size <= M), so no dense N x N exists; a block is kept near 256 MB. With
    max_fraction >= 0.5 and complements every pair qualifies: keep it well below.
    """
    inc = np.asarray(inclusion)
    if inc.ndim != 2:
        raise ValueError(f"inclusion must be 2-D (N x M), got shape {inc.shape}")
    if not (math.isfinite(max_fraction) and 0.0 <= max_fraction <= 1.0):
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    used = _used_models(inc.shape[1], model_mask)
    n, m = inc.shape[0], used.size
    if n < 2 or m == 0:
        return PatternPairs([], 0)
    x = np.where(inc[:, used].astype(bool), 1.0, -1.0).astype(np.float32)
    thr = math.floor(max_fraction * m + 1e-9)  # largest admissible number of differing models
    if block_rows is None:
        # Per entry: the float32 Gram value and two bool masks (plus slack).
        block_rows = max(1, BLOCK_BYTES // (8 * n))
    # d <= thr  <=>  x_i . x_j = M - 2 d >= M - 2 thr;  d >= M - thr  <=>  x_i . x_j <= -(M - 2 thr)
    min_dot = float(m - 2 * thr)
    keep_i = np.empty(0, dtype=np.int64)
    keep_j = np.empty(0, dtype=np.int64)
    keep_d = np.empty(0, dtype=np.int64)
    total = 0
    for lo in range(0, n - 1, block_rows):
        hi = min(lo + block_rows, n)
        gram = x[lo:hi] @ x[lo:].T  # (B, N - lo); row r is record lo + r, column c is lo + c
        near = gram >= min_dot
        if complements:
            near |= gram <= -min_dot
        near &= np.arange(lo, n)[None, :] > np.arange(lo, hi)[:, None]  # each pair once, i < j
        r, c = np.nonzero(near)
        if r.size == 0:
            continue
        total += r.size
        keep_i = np.concatenate([keep_i, r + lo])
        keep_j = np.concatenate([keep_j, c + lo])
        keep_d = np.concatenate([keep_d, np.rint((m - gram[r, c]) / 2).astype(np.int64)])
        if keep_i.size > limit:
            keep_i, keep_j, keep_d = _closest(keep_i, keep_j, keep_d, m, limit)
    keep_i, keep_j, keep_d = _closest(keep_i, keep_j, keep_d, m, limit)
    pairs = [(int(i), int(j), float(d) / m) for i, j, d in zip(keep_i, keep_j, keep_d, strict=True)]
    return PatternPairs(pairs, int(total))


def _closest(
    i: np.ndarray, j: np.ndarray, d: np.ndarray, m: int, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((j, i, np.minimum(d, m - d)))[:limit]
    return i[order], j[order], d[order]


# ---------------------------------------------------------------------------------------------
# Everything for one round


def _jaccard_change(now: set[int], before: set[int]) -> float:
    union = now | before
    return 0.0 if not union else 1.0 - len(now & before) / len(union)


def _criterion(
    name: str, value: float | None, threshold: float, at_least: bool, before: dict[str, Any]
) -> dict[str, Any]:
    """One row of Diagnostics.criteria; a missing value (None) never meets its threshold."""
    met = value is not None and (value >= threshold if at_least else value <= threshold)
    prev = before.get(name)
    change = value - prev if value is not None and prev is not None else None
    return {"name": name, "value": value, "threshold": threshold, "met": met, "change": change}


def diagnose(
    losses: np.ndarray,
    inclusion: np.ndarray,
    flagged: set[int],
    previous: Diagnostics | None = None,
    previous_flagged: set[int] | None = None,
    model_mask: np.ndarray | None = None,
    cfg: ConvergenceConfig = ConvergenceConfig(),  # noqa: B008 (frozen, so sharing is safe)
    top_k: int = 10,
    result: InfluenceResult | None = None,
    estimator: str | None = None,
    covariates: int = 4,
    pairs: set[tuple[int, int]] | None = None,
    previous_pairs: set[tuple[int, int]] | None = None,
    expected_flips: float | None = None,
) -> Diagnostics:
    """All diagnostics for the ensemble as it stands.

    With ``pairs`` and ``previous_pairs`` (the records each flagged record is clustered with,
    as pairs), flag_change is the larger of the flagged set's change and the pairs' change, so
    a verdict whose members stay but whose partners move is not stable (#14). ``expected_flips``:
    the share of records whose per-record near-duplicate verdict a same-size ensemble would be
    expected to flip (memaudit.findings.near_duplicates); with it, it must be at most
    ``cfg.max_expected_flips``.

    Converged when reliability_self and reliability_margin reach ``cfg.min_reliability`` and
    flag_change (vs ``previous_flagged``) is at most ``cfg.max_flag_change``; without a
    previous flagged set (the first round) it is never converged, since stability cannot be
    judged from one round. ``criteria`` lists each criterion with its value, threshold, whether
    it is met, and its change since ``previous``. Margin CIs and SEs are bootstrapped for the
    flagged records only (their margins are the ones a user reads; all N would cost
    cfg.bootstrap full estimates). Indistinguishable pairs are reported, not a criterion: they
    are a property of the design that more models dissolve, and reliability already suffers.
    ``result``: the estimate on these models if the caller has it (saves one full estimate).
    ``estimator`` (option or result name): None runs the estimator of ``result``, or the
    project's default without one, so the diagnostics judge the estimates the run reports.
    Cost: about 5 full estimates (the half splits) plus cfg.bootstrap passes over the flagged
    rows.
    """
    losses = np.asarray(losses)
    inclusion = np.asarray(inclusion)
    n = losses.shape[0]
    flagged = {int(t) for t in flagged}
    if any(t < 0 or t >= n for t in flagged):
        raise ValueError(f"flagged records must be indices in [0, {n})")
    if estimator is None:
        estimator = result.estimator if result is not None else DEFAULT
    by = get_estimator(estimator)
    if result is None:
        result = by.estimate(losses, inclusion, covariates, top_k=top_k, model_mask=model_mask)
    elif result.self_se.shape != (n,):
        raise ValueError(f"result has {result.self_se.shape[0]} records, losses have {n}")
    named = {"estimator": by.option, "covariates": covariates}
    rel_self, rel_margin = split_half_reliability(
        losses, inclusion, model_mask=model_mask, top_k=top_k, seed=cfg.seed, **named
    )
    records = sorted(flagged)
    se, ci = bootstrap_margins(
        losses,
        inclusion,
        records,
        model_mask=model_mask,
        n_boot=cfg.bootstrap,
        seed=cfg.seed,
        **named,
    )
    finite_se = se[np.isfinite(se)]
    margin_se_median = float(np.median(finite_se)) if finite_se.size else None
    margin_ci = {
        t: (float(lo), float(hi))
        for t, (lo, hi) in zip(records, ci, strict=True)
        if np.isfinite(lo)
    }
    finite_self_se = result.self_se[np.isfinite(result.self_se)]
    self_se_median = float(np.median(finite_self_se)) if finite_self_se.size else math.nan
    flag_change = (
        None if previous_flagged is None else _jaccard_change(flagged, set(previous_flagged))
    )
    if flag_change is not None and pairs is not None and previous_pairs is not None:
        flag_change = max(flag_change, _jaccard_change(set(pairs), set(previous_pairs)))
    pairs, n_pairs = indistinguishable_pairs(
        inclusion, model_mask=model_mask, max_fraction=cfg.pattern_distance
    )

    before = {c["name"]: c.get("value") for c in previous.criteria} if previous else {}
    criteria = [
        _criterion("reliability_self", rel_self, cfg.min_reliability, True, before),
        _criterion("reliability_margin", rel_margin, cfg.min_reliability, True, before),
        _criterion("flag_change", flag_change, cfg.max_flag_change, False, before),
    ]
    if expected_flips is not None:
        criteria.append(
            _criterion("expected_flips", expected_flips, cfg.max_expected_flips, False, before)
        )
        if cfg.watch == "records":
            # The per-record verdict reads the margin as a flag, judged by the two criteria
            # above; the rank order of the unique records' margins (mostly noise maxima) is
            # shown but not waited for.
            margin = next(c for c in criteria if c["name"] == "reliability_margin")
            margin["required"] = False
    return Diagnostics(
        n_models=result.n_models,
        reliability_self=rel_self,
        reliability_margin=rel_margin,
        self_se_median=self_se_median,
        margin_se_median=margin_se_median,
        flag_change=flag_change,
        margin_ci=margin_ci,
        indistinguishable=pairs,
        converged=all(c["met"] for c in criteria if c.get("required", True)),
        criteria=criteria,
        n_indistinguishable=n_pairs,
    )
