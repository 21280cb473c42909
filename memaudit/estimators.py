"""The influence estimators a run can use, by the name a user types (``--estimator``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from memaudit.adjusted import estimate_adjusted
from memaudit.influence import InfluenceResult, estimate

# "adjusted" is the default: on the tiny-model demo (M = 32) it separates near-duplicated from
# unique records by margin with ROC AUC 1.00 where the plain difference of means reaches 0.89,
# and it estimates the same quantity (tests/test_adjusted.py, benchmarks/reduced_m.py).
ESTIMATORS = ("adjusted", "plain")


def run_estimator(
    name: str,
    losses: np.ndarray,
    inclusion: np.ndarray,
    covariates: int = 4,
    **kwargs: Any,
) -> InfluenceResult:
    """Estimate with the named estimator; kwargs as for :func:`memaudit.influence.estimate`."""
    if name == "adjusted":
        return estimate_adjusted(losses, inclusion, covariates=covariates, **kwargs)
    if name == "plain":
        return estimate(losses, inclusion, **kwargs)
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
