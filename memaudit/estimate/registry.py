"""The influence estimators a run can use, by the name a user types (``--estimator``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from memaudit.estimate.adjusted import ESTIMATOR_NAME as ADJUSTED_NAME
from memaudit.estimate.adjusted import adjusted_block, estimate_adjusted
from memaudit.estimate.influence import ESTIMATOR_NAME as PLAIN_NAME
from memaudit.estimate.influence import InfluenceResult, estimate, influence_block

# "adjusted" is the default: on the tiny-model demo (M = 32) it separates near-duplicated from
# unique records by margin with ROC AUC 1.00 where the plain difference of means reaches 0.89,
# and it estimates the same quantity (tests/test_adjusted.py, benchmarks/reduced_m.py).
ESTIMATORS = ("adjusted", "plain")
# The name a result carries (InfluenceResult.estimator) -> the option value.
BY_RESULT_NAME = {ADJUSTED_NAME: "adjusted", PLAIN_NAME: "plain"}


def run_estimator(
    name: str,
    losses: np.ndarray,
    inclusion: np.ndarray,
    covariates: int = 4,
    **kwargs: Any,
) -> InfluenceResult:
    """Estimate with the named estimator; kwargs as for
    :func:`memaudit.estimate.influence.estimate`."""
    if name == "adjusted":
        return estimate_adjusted(losses, inclusion, covariates=covariates, **kwargs)
    if name == "plain":
        return estimate(losses, inclusion, **kwargs)
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")


def influence_rows(
    name: str,
    losses: np.ndarray,
    inclusion: np.ndarray,
    rows: np.ndarray,
    model_mask: np.ndarray | None = None,
    covariates: int = 4,
) -> np.ndarray:
    """Full influence rows (len(rows) x N) of the targets ``rows`` by the named estimator (the
    option value or the name a result carries), as the full estimate would give them."""
    name = BY_RESULT_NAME.get(name, name)
    if model_mask is not None:
        used = np.asarray(model_mask, dtype=bool)
        losses, inclusion = np.asarray(losses)[:, used], np.asarray(inclusion)[:, used]
    if name == "adjusted":
        return adjusted_block(losses, inclusion, rows, covariates)[0]
    if name == "plain":
        return influence_block(losses, inclusion, rows)[0]
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
