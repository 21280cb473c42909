"""Counterfactual influence from an ensemble of models (difference-of-means estimator).

With N records and M models, ``inclusion[i, j]`` says whether record ``i`` was in the
training set of model ``j`` and ``losses[t, j]`` is the loss of model ``j`` on record ``t``.
The influence of training record ``i`` on target ``t`` is

    I[t, i] = mean_{j: P[i,j]=0} L[t, j] - mean_{j: P[i,j]=1} L[t, j]

(rows: targets, columns: training records; positive means including ``i`` lowers the loss
on ``t``). The standard error is ``sqrt(var_out / n_out + var_in / n_in)`` with unbiased
sample variances. Everything is computed blockwise over targets so that large N never needs
a dense N x N float64 matrix in memory.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields

import numpy as np

from memaudit.estimate.budget import influence_block_rows
from memaudit.estimate.distribution import Accumulator, DistributionSummary
from memaudit.store.io import atomic_path

ESTIMATOR_NAME = "difference-of-means"


@dataclass
class InfluenceResult:
    """Per-target summary of the influence matrix (the matrix itself is never kept)."""

    estimator: str
    n_models: int  # models used (after model_mask)
    top_k: int
    self_influence: np.ndarray  # (N,) float64: I[t, t]
    self_se: np.ndarray  # (N,) float64
    n_in: np.ndarray  # (N,) int64: used models that trained on record i
    n_out: np.ndarray  # (N,) int64
    top_idx: np.ndarray  # (N, k) int64, descending influence; -1 where padded
    top_val: np.ndarray  # (N, k) float64, NaN where padded
    top_se: np.ndarray  # (N, k) float64, NaN where padded
    margin: np.ndarray  # (N,) float64: largest / second-largest influence on t; NaN if undefined
    margin_defined: np.ndarray  # (N,) bool
    top1_is_self: np.ndarray  # (N,) bool: top_idx[t, 0] == t
    # Per-target summaries of the whole row (estimate(..., distribution=True)); None otherwise
    # and in files written before they existed.
    distribution: DistributionSummary | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one .npz (no pickle) atomically, so readers never see a partial file.

        The file is written exactly at ``path`` (no suffix is appended).
        """
        names = [f.name for f in fields(self) if f.name != "distribution"]
        arrays = {name: np.asarray(getattr(self, name)) for name in names}
        if self.distribution is not None:
            arrays |= self.distribution.arrays()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InfluenceResult:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                estimator=str(data["estimator"]),
                n_models=int(data["n_models"]),
                top_k=int(data["top_k"]),
                self_influence=data["self_influence"].astype(np.float64),
                self_se=data["self_se"].astype(np.float64),
                n_in=data["n_in"].astype(np.int64),
                n_out=data["n_out"].astype(np.int64),
                top_idx=data["top_idx"].astype(np.int64),
                top_val=data["top_val"].astype(np.float64),
                top_se=data["top_se"].astype(np.float64),
                margin=data["margin"].astype(np.float64),
                margin_defined=data["margin_defined"].astype(bool),
                top1_is_self=data["top1_is_self"].astype(bool),
                distribution=DistributionSummary.from_arrays(data),
            )


@dataclass
class _Prepared:
    """Validated inputs restricted to the used models, shared by all blocks."""

    losses: np.ndarray  # (N, M_used) float64
    inc_t: np.ndarray  # (M_used, N) float64 0/1, transposed once for the matmuls
    n_in: np.ndarray  # (N,) int64
    n_out: np.ndarray  # (N,) int64
    # Per-record factors (1, N); NaN where the statistic is undefined, so NaN propagates
    # through the block arithmetic instead of needing masks or division-by-zero handling.
    inv_in: np.ndarray  # 1 / n_in, NaN where n_in == 0
    inv_out: np.ndarray  # 1 / n_out, NaN where n_out == 0
    var_in_fac: np.ndarray  # 1 / (n_in (n_in - 1)), NaN where n_in < 2
    var_out_fac: np.ndarray  # 1 / (n_out (n_out - 1)), NaN where n_out < 2

    @property
    def n_records(self) -> int:
        return self.losses.shape[0]

    @property
    def n_models(self) -> int:
        return self.losses.shape[1]


def _inverse_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 / n, 1 / (n (n - 1))) as (1, N) float64 rows, NaN where undefined."""
    nf = n.astype(np.float64)
    inv = np.full(n.shape, np.nan)
    np.divide(1.0, nf, out=inv, where=n >= 1)
    fac = np.full(n.shape, np.nan)
    np.divide(1.0, nf * (nf - 1.0), out=fac, where=n >= 2)
    return inv[None, :], fac[None, :]


def _prepare(
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None,
    rows: np.ndarray | None = None,
) -> _Prepared:
    """Validate; with ``rows``, keep only those rows of L (a few targets need not copy all N;
    the finiteness check still covers every row)."""
    losses = np.asarray(losses)
    inclusion = np.asarray(inclusion)
    if losses.ndim != 2:
        raise ValueError(f"losses must be 2-D (N records x M models), got shape {losses.shape}")
    if inclusion.shape != losses.shape:
        raise ValueError(
            f"inclusion shape {inclusion.shape} does not match losses shape {losses.shape}"
        )
    if not np.issubdtype(losses.dtype, np.number) or np.iscomplexobj(losses):
        raise ValueError(f"losses must be a real numeric array, got dtype {losses.dtype}")
    if inclusion.dtype != bool:
        if not np.issubdtype(inclusion.dtype, np.number):
            raise ValueError(f"inclusion must be bool or 0/1, got dtype {inclusion.dtype}")
        if not np.all((inclusion == 0) | (inclusion == 1)):
            raise ValueError("inclusion must contain only 0/1 (or bool) values")
    n_models_total = losses.shape[1]

    if model_mask is None:
        used = np.ones(n_models_total, dtype=bool)
    else:
        used = np.asarray(model_mask)
        if used.shape != (n_models_total,):
            raise ValueError(f"model_mask must have shape ({n_models_total},), got {used.shape}")
        if used.dtype != bool:
            raise ValueError(f"model_mask must be a bool array, got dtype {used.dtype}")
    if not used.any():
        raise ValueError("model_mask selects no models")

    # All models used (the usual case): no copy of a float64 L, which is only read.
    cols = slice(None) if used.all() else used
    if rows is None:
        lsub = np.ascontiguousarray(losses[:, cols], dtype=np.float64)
        bad = ~np.isfinite(lsub).all(axis=0)
    else:
        lsub = np.ascontiguousarray(losses[rows][:, cols], dtype=np.float64)
        bad = ~np.isfinite(losses).all(axis=0)[used]
    if bad.any():
        cols = np.flatnonzero(used)[bad]
        shown = ", ".join(map(str, cols[:10])) + (" ..." if cols.size > 10 else "")
        raise ValueError(
            f"{cols.size} used model column(s) contain non-finite losses ({shown}); "
            "exclude them with model_mask"
        )
    inc = inclusion[:, used].astype(bool)
    n_in = inc.sum(axis=1, dtype=np.int64)
    n_out = np.int64(inc.shape[1]) - n_in
    inv_in, var_in_fac = _inverse_counts(n_in)
    inv_out, var_out_fac = _inverse_counts(n_out)
    return _Prepared(
        losses=lsub,
        inc_t=np.ascontiguousarray(inc.T, dtype=np.float64),
        n_in=n_in,
        n_out=n_out,
        inv_in=inv_in,
        inv_out=inv_out,
        var_in_fac=var_in_fac,
        var_out_fac=var_out_fac,
    )


def _block_stats(
    prep: _Prepared, rows: np.ndarray, with_se: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Influence and SE of targets ``rows`` against all training records.

    ``with_se=False`` skips the second moments (half the matrix product) and returns SE None:
    passes that only rank influencers need the influence alone."""
    b = rows.size
    lb = prep.losses[rows]
    # Centering per row keeps the second moments small, so Q - S^2/n does not cancel
    # catastrophically when losses carry a large common offset.
    lb = lb - lb.mean(axis=1, keepdims=True)
    moments = np.concatenate([lb, lb * lb]) if with_se else lb  # (2B, M): one GEMM for both
    sum_all = moments.sum(axis=1, keepdims=True)
    prod = moments @ prep.inc_t  # (2B, N): sums over the models that trained on i
    s_in = prod[:b]
    s_out = sum_all[:b] - s_in

    # In-place arithmetic keeps the number of live (B, N) arrays small (see budget.WORK_ARRAYS);
    # the NaN factors make undefined entries NaN without any masking.
    if not with_se:  # the same operations as below, in place: fewer passes over memory
        s_out *= prep.inv_out
        s_in *= prep.inv_in
        s_out -= s_in
        return s_out, None
    infl = s_out * prep.inv_out  # mean_out for now
    mean_in = s_in * prep.inv_in
    q_in = prod[b:]
    q_out = sum_all[b:] - q_in
    # var / n = (Q - S * mean) / (n (n - 1)); clip the tiny negative rounding residue.
    s_in *= mean_in
    q_in -= s_in
    np.maximum(q_in, 0.0, out=q_in)
    q_in *= prep.var_in_fac
    s_out *= infl
    q_out -= s_out
    np.maximum(q_out, 0.0, out=q_out)
    q_out *= prep.var_out_fac
    q_in += q_out
    se = np.sqrt(q_in)
    infl -= mean_in
    return infl, se


def _row_indices(rows: slice | np.ndarray | int, n: int) -> np.ndarray:
    idx = np.atleast_1d(np.arange(n)[rows])
    return idx.astype(np.int64, copy=False)


def influence_block(
    losses: np.ndarray,
    inclusion: np.ndarray,
    rows: slice | np.ndarray,
    model_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Influence and standard error for the targets `rows` (slice or int index array) against
    all N training records: two float64 arrays of shape (len(rows), N)."""
    losses = np.asarray(losses)
    if losses.ndim != 2:
        raise ValueError(f"losses must be 2-D (N records x M models), got shape {losses.shape}")
    idx = _row_indices(rows, losses.shape[0])
    prep = _prepare(losses, inclusion, model_mask, rows=idx)
    return _block_stats(prep, np.arange(idx.size))


def influence_matrix(
    losses: np.ndarray, inclusion: np.ndarray, model_mask: np.ndarray | None = None
) -> np.ndarray:
    """Dense N x N influence (float64), for small N and tests."""
    prep = _prepare(losses, inclusion, model_mask)
    return _block_stats(prep, np.arange(prep.n_records))[0]


def top_k_rows(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row top-k of ``values`` ignoring NaN; ties: larger value, then smaller index.

    Returns (idx, val) of shape (B, k) with -1 / NaN padding when a row has fewer than k
    finite values.
    """
    b, n = values.shape
    if k == 0 or b == 0:
        return np.full((b, k), -1, dtype=np.int64), np.full((b, k), np.nan)
    # Sort key: ascending key == descending value; non-finite entries sort last.
    keys = np.where(np.isfinite(values), -values, np.inf)
    idx = _smallest_by_prefilter(keys, k) if k < n else None
    if idx is None:
        idx = _smallest_by_partition(keys, k)
    val = np.take_along_axis(values, idx, axis=1).astype(np.float64)
    pad = ~np.isfinite(val)
    idx[pad] = -1
    val[pad] = np.nan
    return idx, val


def _smallest_by_prefilter(keys: np.ndarray, k: int) -> np.ndarray | None:
    """The k smallest keys per row in (key, index) order, or None when the prefilter would
    keep too much (many ties at the k-th place).

    Each of C >= k column chunks contributes its minimum, an actual element, so the k-th
    smallest of the C minima bounds the row's k-th smallest key from above: every element that
    can be among the k smallest is <= that bound. Only those few (about k per row for
    continuous values) are sorted, instead of partitioning all N per row (the partition was the
    costliest step after the matrix product).
    """
    b, n = keys.shape
    chunks = min(n, max(4 * k, 64))
    starts = (np.arange(chunks, dtype=np.int64) * n) // chunks  # strictly increasing: C <= N
    minima = np.minimum.reduceat(keys, starts, axis=1)  # (B, C)
    bound = np.partition(minima, k - 1, axis=1)[:, k - 1 : k]
    r, c = np.nonzero(keys <= bound)
    if r.size > b * 8 * k:
        return None
    order = np.lexsort((c, keys[r, c], r))  # by row, then key, then index
    r, c = r[order], c[order]
    pos = np.arange(r.size) - np.searchsorted(r, np.arange(b))[r]
    return c[pos < k].reshape(b, k).astype(np.int64)


def _smallest_by_partition(keys: np.ndarray, k: int) -> np.ndarray:
    """As :func:`_smallest_by_prefilter`, by a full partition of every row (k < N) or an
    argsort of every row (k >= N)."""
    b, n = keys.shape
    if k < n:
        thr = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
        # argpartition alone would pick arbitrary members of a tie at the k-th value;
        # instead keep everything strictly better and the lowest-index ties.
        better = keys < thr
        tied = keys == thr
        need = k - better.sum(axis=1, keepdims=True)
        chosen = better | (tied & (np.cumsum(tied, axis=1) <= need))
        # Exactly k chosen per row; nonzero lists them row by row in ascending index.
        idx = np.nonzero(chosen)[1].reshape(b, k)
    else:
        idx = np.broadcast_to(np.arange(n), (b, n)).copy()
    sel = np.take_along_axis(keys, idx, axis=1)
    # Stable sort on key over index-ascending candidates == sort on (-value, index).
    order = np.argsort(sel, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)


def _margin(top2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 margin from the two largest finite values per row (NaN-padded, descending).

    Undefined (NaN, False) with fewer than two finite values or a non-positive runner-up,
    where the ratio would be meaningless or divide by zero.
    """
    b = top2.shape[0]
    margin = np.full(b, np.nan)
    if top2.shape[1] < 2:
        return margin, np.zeros(b, dtype=bool)
    first, second = top2[:, 0], top2[:, 1]
    # NaN compares False, so padded rows are undefined too.
    defined = np.isfinite(first) & (second > 0)
    margin[defined] = first[defined] / second[defined]
    return margin, defined


def _apply_corrections(
    infl: np.ndarray, rows: np.ndarray, cols: np.ndarray, delta: np.ndarray
) -> None:
    c, d = cols[rows], delta[rows]
    ok = (c >= 0) & np.isfinite(d)
    local = np.broadcast_to(np.arange(rows.size)[:, None], c.shape)
    infl[local[ok], c[ok]] += d[ok]


def _auto_block_rows(n_records: int, n_models: int) -> int:
    """Rows per block so a block's float64 work arrays stay under about budget.BLOCK_BYTES."""
    return min(n_records, influence_block_rows(n_records, n_models))


def estimate(
    losses: np.ndarray,
    inclusion: np.ndarray,
    top_k: int = 10,
    model_mask: np.ndarray | None = None,
    block_rows: int | None = None,
    dense_path: str | os.PathLike[str] | None = None,
    corrections: tuple[np.ndarray, np.ndarray] | None = None,
    estimator: str = ESTIMATOR_NAME,
    with_se: bool = True,
    distribution: bool = False,
    fitted: int = 0,
) -> InfluenceResult:
    """Blockwise over targets so N = 20,000 never holds a dense N x N float64: per block
    compute I and SE, take per-row top-k, the self entries and margins.

    corrections = (cols, delta), two (N, S) arrays (cols -1 where padded): delta[t, s] is
    added to I[t, cols[t, s]] before top-k and margins; the regression-adjusted estimator
    (memaudit.estimate.adjusted) uses it to put back the effects it regressed out. ``estimator``
    names the result.

    block_rows=None picks a block size so each block's float64 work arrays stay under about
    256 MB (the transposed inclusion matrix, N x M float64, is a fixed extra cost). If
    dense_path is given, the full influence matrix is also streamed as float32 into a .npy
    at exactly that path (written to a temp file in the same directory, then os.replace).

    with_se=False computes the influence alone (half the matrix product): self_se and top_se
    are NaN. For passes that only rank influencers (the adjusted estimator's covariate rounds,
    the findings' link candidates); the influence, top-k and margins are unchanged.

    distribution=True also summarizes every full row in the same pass (quantiles, significant
    others, shares of the positive influence: memaudit.estimate.distribution); ``fitted``: the
    parameters already fitted to ``losses`` (the adjusted estimator's residuals), which its
    t-tests take off the M - 2 degrees of freedom.
    """
    prep = _prepare(losses, inclusion, model_mask)
    n = prep.n_records
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative int, got {top_k!r}")
    k = int(min(top_k, n))
    k_sel = max(k, min(2, n))
    if block_rows is None:
        block_rows = _auto_block_rows(n, prep.n_models)
    elif isinstance(block_rows, bool) or int(block_rows) != block_rows or block_rows < 1:
        raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
    block_rows = int(block_rows)

    self_infl = np.full(n, np.nan)
    self_se = np.full(n, np.nan)
    top_idx = np.full((n, k), -1, dtype=np.int64)
    top_val = np.full((n, k), np.nan)
    top_se = np.full((n, k), np.nan)
    margin = np.full(n, np.nan)
    margin_defined = np.zeros(n, dtype=bool)
    top1_is_self = np.zeros(n, dtype=bool)
    summaries = Accumulator(n, df=max(1, prep.n_models - 2 - fitted)) if distribution else None

    with contextlib.ExitStack() as stack:
        dense = None
        if dense_path is not None:
            tmp = stack.enter_context(atomic_path(dense_path))
            dense = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, n))
        for start in range(0, n, block_rows):
            rows = np.arange(start, min(start + block_rows, n))
            infl, se = _block_stats(prep, rows, with_se)
            if corrections is not None:
                _apply_corrections(infl, rows, *corrections)
            if dense is not None:
                dense[rows[0] : rows[-1] + 1] = infl
            self_infl[rows] = infl[np.arange(rows.size), rows]
            if se is not None:
                self_se[rows] = se[np.arange(rows.size), rows]
            # One selection serves both top-k and the margin (which needs the top two).
            idx, val = top_k_rows(infl, k_sel)
            margin[rows], margin_defined[rows] = _margin(val[:, :2])
            top1_is_self[rows] = idx[:, 0] == rows  # padding (-1) never matches
            idx, val = idx[:, :k], val[:, :k]
            top_idx[rows] = idx
            top_val[rows] = val
            if se is not None:
                top_se[rows] = np.where(
                    idx >= 0, np.take_along_axis(se, np.maximum(idx, 0), 1), np.nan
                )
            if summaries is not None:  # last: it partitions infl in place
                summaries.add(rows, infl, se)
            del infl, se
        if dense is not None:
            dense.flush()
            del dense  # close the memmap before atomic_path moves the file into place

    return InfluenceResult(
        estimator=estimator,
        n_models=prep.n_models,
        top_k=k,
        self_influence=self_infl,
        self_se=self_se,
        n_in=prep.n_in.copy(),
        n_out=prep.n_out.copy(),
        top_idx=top_idx,
        top_val=top_val,
        top_se=top_se,
        margin=margin,
        margin_defined=margin_defined,
        top1_is_self=top1_is_self,
        distribution=summaries.result() if summaries is not None else None,
    )
