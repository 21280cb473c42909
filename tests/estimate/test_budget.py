"""The memory budgets: block sizes keep the work arrays near the budget, and never reach 0."""

from __future__ import annotations

from memaudit.estimate import budget
from memaudit.estimate.influence import _auto_block_rows


def test_influence_blocks_stay_within_the_budget():
    for n, m in ((20_000, 1_000), (300, 24), (5, 2)):
        rows = budget.influence_block_rows(n, m)
        assert rows * 8 * (budget.WORK_ARRAYS * n + 3 * m) <= budget.BLOCK_BYTES
        assert (rows + 1) * 8 * (budget.WORK_ARRAYS * n + 3 * m) > budget.BLOCK_BYTES
    # N = 20,000: 138 rows of 12 float64 arrays (and L, moments), about 256 MB.
    assert budget.influence_block_rows(20_000, 1_000) == 138
    assert _auto_block_rows(5, 2) == 5  # never more rows than records
    assert budget.influence_block_rows(10**9) == 1  # never 0


def test_row_blocks_and_fit_chunks():
    assert budget.row_block(1_000) == 2_000  # 2,000 x 1,000 float64: 16 MB per array
    assert budget.row_block(0) == budget.ROW_BLOCK_ELEMENTS
    assert budget.row_block(10**9) == 1
    assert budget.fit_chunk(budget.JOINT_FIT_ELEMENTS, 1_000 * 10) == 400
    assert budget.fit_chunk(budget.COVARIATE_FIT_ELEMENTS, 10**9) == 1
