"""The influence estimators a run can use: one object per estimator, found by the name a user
types (``--estimator``) or by the name its result carries (``InfluenceResult.estimator``).

Everything that depends on which estimator ran asks its object (estimate, full influence rows,
whether the findings may use the mutual low-margin rule) instead of comparing names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memaudit.estimate import adjusted, influence
from memaudit.estimate.influence import InfluenceResult


class Estimator:
    """One estimator: its names, how it estimates, and what the findings may read from it."""

    option: str  # the --estimator value (AnalysisConfig.estimator)
    result_name: str  # InfluenceResult.estimator, the name reports show
    # Whether the findings may link mutual low-margin competitors (FindingsConfig.mutual_links):
    # only when unique records' margins are large, which at small M takes the adjusted estimator.
    mutual_links: bool

    def estimate(
        self, losses: np.ndarray, inclusion: np.ndarray, covariates: int = 4, **kwargs: Any
    ) -> InfluenceResult:
        """The estimate; kwargs as for :func:`memaudit.estimate.influence.estimate` (top_k,
        model_mask, block_rows, dense_path, with_se)."""
        raise NotImplementedError

    def rows(
        self,
        losses: np.ndarray,
        inclusion: np.ndarray,
        rows: np.ndarray,
        model_mask: np.ndarray | None = None,
        covariates: int = 4,
    ) -> np.ndarray:
        """Full influence rows (len(rows) x N) of the targets ``rows``, as the full estimate
        would give them (the report's heatmap, image pairs, the bootstrap of margins)."""
        return self.rows_with_se(losses, inclusion, rows, model_mask, covariates)[0]

    def rows_with_se(
        self,
        losses: np.ndarray,
        inclusion: np.ndarray,
        rows: np.ndarray,
        model_mask: np.ndarray | None = None,
        covariates: int = 4,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rows` and their standard errors (two len(rows) x N arrays)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if model_mask is not None:
            used = np.asarray(model_mask, dtype=bool)
            losses, inclusion = np.asarray(losses)[:, used], np.asarray(inclusion)[:, used]
        return self._rows(np.asarray(losses), np.asarray(inclusion), rows, covariates)

    def _rows(self, losses, inclusion, rows, covariates) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fitted(self, n_models: int, covariates: int = 4) -> int:
        """Coefficients fitted per target beyond the two means (degrees of freedom they use)."""
        return 0

    def __repr__(self) -> str:
        return f"<estimator {self.option} ({self.result_name})>"


class Plain(Estimator):
    """The paper's difference of means (memaudit.estimate.influence)."""

    option = "plain"
    result_name = influence.ESTIMATOR_NAME
    mutual_links = False  # unique records' margins sit near 1-2 at small M

    def estimate(self, losses, inclusion, covariates=4, **kwargs):
        return influence.estimate(losses, inclusion, **kwargs)

    def _rows(self, losses, inclusion, rows, covariates):
        return influence.influence_block(losses, inclusion, rows)


class Adjusted(Estimator):
    """The regression-adjusted difference of means (memaudit.estimate.adjusted)."""

    option = "adjusted"
    result_name = adjusted.ESTIMATOR_NAME
    mutual_links = True

    def estimate(self, losses, inclusion, covariates=4, **kwargs):
        return adjusted.estimate_adjusted(losses, inclusion, covariates=covariates, **kwargs)

    def _rows(self, losses, inclusion, rows, covariates):
        return adjusted.adjusted_block(losses, inclusion, rows, covariates)

    def fitted(self, n_models, covariates=4):
        return adjusted.covariate_count(n_models, covariates) + 1


# "adjusted" is the default: on the tiny-model demo (M = 32) it separates near-duplicated from
# unique records by margin with ROC AUC 1.00 where the plain difference of means reaches 0.89,
# and it estimates the same quantity (tests/estimate/test_adjusted.py, benchmarks/reduced_m.py).
ESTIMATORS: dict[str, Estimator] = {e.option: e for e in (Adjusted(), Plain())}
DEFAULT = "adjusted"
OPTIONS = tuple(ESTIMATORS)  # the --estimator choices, the default first
_BY_RESULT_NAME = {e.result_name: e for e in ESTIMATORS.values()}


def get_estimator(name: str) -> Estimator:
    """The estimator named by its option value or by the name its result carries."""
    found = ESTIMATORS.get(name) or _BY_RESULT_NAME.get(name)
    if found is None:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(OPTIONS)}")
    return found
