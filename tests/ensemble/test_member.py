"""One member's computation: a pure function of configuration, records and index, through a
member task (numpy fake here, so no model is trained)."""

from __future__ import annotations

import numpy as np
import torch

from memaudit.config import EnsembleConfig, ModelConfig, RunConfig
from memaudit.data.partition import model_seed
from memaudit.ensemble.member import MemberContext, MemberFailed, compute_member, describe_error
from tests.ensemble.fakes import FakeTask

N = 12
CFG = RunConfig(data="d.jsonl", model=ModelConfig("m"), ensemble=EnsembleConfig(seed=7))


def _ctx(task) -> MemberContext:
    return MemberContext(CFG, None, None, torch.device("cpu"), torch.float32, task=task)


def test_a_member_is_trained_on_its_column_and_evaluated_on_every_record():
    column = np.arange(N) % 3 == 0
    task = FakeTask(N)
    steps = []
    res = compute_member(_ctx(task), 4, column, on_step=lambda *a: steps.append(a))
    seed = model_seed(7, 4)
    assert task.trained == [(seed, [0, 3, 6, 9])] and steps == [(1, 1, 0.5)]
    assert res.j == 4 and res.losses.shape == (N,) and res.extraction is None
    assert res.meta["status"] == "ok" and res.meta["seed"] == seed and res.meta["n_train"] == 4
    assert res.meta["pack"] == 1 and res.meta["dtype"] == "float32"
    np.testing.assert_array_equal(res.arrays["correct"], (res.losses < 2.0).astype(float))
    # Pure: the same inputs give the same result.
    again = compute_member(_ctx(FakeTask(N)), 4, column)
    np.testing.assert_array_equal(again.losses, res.losses)


def test_divergence_is_a_result_not_a_failure():
    seed = model_seed(7, 2)
    res = compute_member(_ctx(FakeTask(N, diverge_seeds=[seed])), 2, np.ones(N, bool))
    assert res.losses is None and res.meta["status"] == "diverged"
    assert "nan at step 3" in res.meta["error"]
    res = compute_member(_ctx(FakeTask(N, nan_seeds=[seed])), 2, np.ones(N, bool))
    assert res.losses is None and res.meta["status"] == "diverged"
    assert res.meta["error"] == "non-finite evaluation loss"


def test_describe_error_is_one_line():
    try:
        raise MemberFailed("worker died\nsecond line")
    except MemberFailed as exc:
        assert describe_error(exc) == "MemberFailed: worker died"
    assert describe_error(ValueError()) == "ValueError"
