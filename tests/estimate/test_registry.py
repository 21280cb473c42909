"""The estimator registry: each object estimates exactly as its module's function does, is found
by either of its names, and the names agree with what the configuration and the CLI accept."""

from __future__ import annotations

import dataclasses

import click
import numpy as np
import pytest

from memaudit.config import AnalysisConfig
from memaudit.errors import MemauditError
from memaudit.estimate.adjusted import adjusted_block, estimate_adjusted
from memaudit.estimate.influence import estimate, influence_block
from memaudit.estimate.registry import DEFAULT, ESTIMATORS, OPTIONS, get_estimator


def _ensemble(seed=0, n=30, m=40):
    rng = np.random.default_rng(seed)
    inc = rng.random((n, m)) < 0.5
    losses = rng.normal(3.0, 0.3, (n, m)) - 1.5 * inc
    losses[1] -= 1.0 * inc[0]  # record 0 helps record 1
    return losses, inc


def _same(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_adjusted_estimate_equals_estimate_adjusted():
    losses, inc = _ensemble()
    mask = np.arange(40) % 5 != 0
    got = get_estimator("adjusted").estimate(losses, inc, 3, top_k=4, model_mask=mask)
    _same(got, estimate_adjusted(losses, inc, top_k=4, model_mask=mask, covariates=3))
    assert got.estimator == "regression-adjusted"


def test_plain_estimate_equals_estimate_and_ignores_covariates():
    losses, inc = _ensemble(1)
    got = get_estimator("plain").estimate(losses, inc, 7, top_k=4, with_se=False)
    _same(got, estimate(losses, inc, top_k=4, with_se=False))
    assert got.estimator == "difference-of-means"


def test_rows_equal_the_blocks_and_apply_the_model_mask():
    losses, inc = _ensemble(2)
    rows = np.array([1, 7])
    mask = np.arange(40) % 4 != 0
    np.testing.assert_array_equal(
        get_estimator("plain").rows(losses, inc, rows, model_mask=mask),
        influence_block(losses[:, mask], inc[:, mask], rows)[0],
    )
    np.testing.assert_array_equal(
        get_estimator("adjusted").rows(losses, inc, rows, model_mask=mask, covariates=2),
        adjusted_block(losses[:, mask], inc[:, mask], rows, 2)[0],
    )


def test_found_by_option_or_result_name_and_unknown_names_fail():
    for e in ESTIMATORS.values():
        assert get_estimator(e.option) is e is get_estimator(e.result_name)
    with pytest.raises(ValueError, match="'magic'; choose one of adjusted, plain"):
        get_estimator("magic")


def test_what_findings_may_use():
    # The mutual low-margin rule needs large unique-record margins: the adjusted estimator's.
    assert get_estimator("adjusted").mutual_links and not get_estimator("plain").mutual_links


def test_names_equal_what_the_config_and_the_cli_accept():
    assert OPTIONS == ("adjusted", "plain") and OPTIONS[0] == DEFAULT
    assert AnalysisConfig().estimator == DEFAULT
    for name in OPTIONS:
        assert AnalysisConfig(estimator=name).estimator == name
    for bad in ("magic", "regression-adjusted", "Plain"):
        with pytest.raises(MemauditError, match="--estimator"):
            AnalysisConfig(estimator=bad)

    from memaudit.cli import cli

    choices = [
        set(p.type.choices)
        for cmd in cli.commands.values()
        for p in cmd.params
        if p.name == "estimator" and isinstance(p.type, click.Choice)
    ]
    assert choices and all(c == set(OPTIONS) for c in choices)
