"""Memory budgets of the passes over all records: one place that sets the analysis' peak memory.

Nothing in the analysis holds an N x N array; every pass over pairs runs in blocks of target
rows, and every per-record statistic over the models in blocks of rows of L. These numbers size
those blocks (measured at N = 20,000, M = 1,000: benchmarks/results/influence.md).
"""

from __future__ import annotations

# Float64 work arrays of one block of target rows against all N records: about 256 MB.
BLOCK_BYTES = 256 * 1024 * 1024
# (rows x N) float64 arrays alive at once inside influence._block_stats, with slack for the
# top-k selection temporaries.
WORK_ARRAYS = 12
# Elements of one block of rows of L (rows x M) for per-record statistics (membership scores,
# the strata centring): about 16 MB per float64 work array; at N = 20,000, M = 1,000 the whole
# N x M at once would hold about ten float64 copies of L (1.6 GB).
ROW_BLOCK_ELEMENTS = 2_000_000
# Elements of one chunk of least-squares designs (targets x models x regressors): the joint
# link fits (findings.clusters.joint_influence), and the adjusted estimator's covariate fits
# (about 64 MB).
JOINT_FIT_ELEMENTS = 4_000_000
COVARIATE_FIT_ELEMENTS = 8_000_000


def influence_block_rows(n_records: int, n_models: int = 0) -> int:
    """Target rows per block so that a block's influence work arrays (and its rows of L and the
    moments, 3 x M per row) stay under about BLOCK_BYTES; at least 1."""
    per_row = 8 * (WORK_ARRAYS * n_records + 3 * n_models)
    return int(max(1, BLOCK_BYTES // per_row))


def row_block(n_models: int) -> int:
    """Rows of L per block for per-record statistics over ``n_models`` models; at least 1."""
    return max(1, ROW_BLOCK_ELEMENTS // max(1, n_models))


def fit_chunk(budget: int, per_target: int) -> int:
    """Targets per chunk of least-squares fits whose design arrays hold ``per_target``
    elements each, within ``budget`` elements; at least 1."""
    return max(1, budget // per_target)
