"""The driver loop: pending members go to an executor, results are written as they arrive,
failures are retried and, when they keep failing, recorded and left pending."""

from __future__ import annotations

import json

import numpy as np
import torch

from memaudit.config import ModelConfig, RunConfig
from memaudit.ensemble.driver import EnsembleProgress, pending_models, train_ensemble
from memaudit.ensemble.executors import LocalExecutor
from memaudit.ensemble.member import MemberContext, MemberFailed, compute_member
from memaudit.store.rundir import RunDir
from tests.ensemble.fakes import FakeTask

N, M = 10, 4
CFG = RunConfig(data="d.jsonl", model=ModelConfig("m"))
CPU = torch.device("cpu")


class FlakyExecutor:
    """Computes members in this process; member j fails its first ``fails[j]`` attempts."""

    def __init__(self, task, fails: dict[int, int]) -> None:
        self.ctx = MemberContext(CFG, None, None, CPU, torch.float32, task=task)
        self.fails, self.calls = dict(fails), []

    def map(self, members, inclusion, on_step=None):
        self.calls.append(list(members))
        for j in members:
            if self.fails.get(j, 0) > 0:
                self.fails[j] -= 1
                yield j, MemberFailed(f"member {j} lost its worker")
            else:
                yield j, compute_member(self.ctx, j, inclusion[:, j], on_step)


def test_retries_a_failing_member_and_records_one_that_keeps_failing(tmp_path):
    run = RunDir(tmp_path / "run")
    inclusion = np.random.default_rng(0).random((N, M)) < 0.5
    task = FakeTask(N)
    executor = FlakyExecutor(task, {1: 1, 2: 10})
    events = []
    progress = EnsembleProgress(
        on_start=lambda todo, done: events.append(("start", todo, done)),
        on_model=lambda j, meta: events.append(("model", j)),
        on_failure=lambda j, attempt, error: events.append(("failure", j, attempt, error)),
    )
    written = train_ensemble(
        run, CFG, inclusion, None, None, CPU, torch.float32, progress,
        executor=executor, retries=2, task=task,
    )  # fmt: skip
    assert written == [0, 1, 3]
    assert executor.calls == [[0, 1, 2, 3], [1, 2], [2]]  # member 2: 1 try + 2 retries
    assert events[0] == ("start", 4, 0)
    assert [e for e in events if e[0] == "failure"] == [
        ("failure", 1, 1, "MemberFailed: member 1 lost its worker"),
        ("failure", 2, 1, "MemberFailed: member 2 lost its worker"),
        ("failure", 2, 2, "MemberFailed: member 2 lost its worker"),
        ("failure", 2, 3, "MemberFailed: member 2 lost its worker"),
    ]
    failed = json.loads((run.models_dir / "00002.failed.json").read_text())
    assert failed["attempts"] == 3 and failed["error"] == "MemberFailed: member 2 lost its worker"
    status = run.status(M)
    assert status["ok"] == [0, 1, 3] and list(status["failed"]) == [2]
    # Each written member holds its task's arrays, and what it holds is its own result.
    assert pending_models(run, range(M), arrays=task.arrays) == [2]
    res = compute_member(executor.ctx, 3, inclusion[:, 3])
    np.testing.assert_array_equal(run.model_losses(3), res.losses)

    # A rerun trains only the pending member; its success removes the failure record.
    written = train_ensemble(
        run, CFG, inclusion, None, None, CPU, torch.float32,
        executor=FlakyExecutor(task, {}), task=task,
    )  # fmt: skip
    assert written == [2] and not (run.models_dir / "00002.failed.json").exists()
    assert run.status(M)["ok"] == [0, 1, 2, 3]


def test_default_executor_is_local_and_members_choose_a_subset(tmp_path):
    run = RunDir(tmp_path / "run")
    inclusion = np.random.default_rng(1).random((N, M)) < 0.5
    task = FakeTask(N)
    notes = []
    written = train_ensemble(
        run, CFG, inclusion, None, None, CPU, torch.float32,
        EnsembleProgress(on_note=notes.append), members=[3, 1], task=task,
    )  # fmt: skip
    assert written == [1, 3] and run.status(M)["missing"] == [0, 2]
    assert notes == [
        LocalExecutor(MemberContext(CFG, None, None, CPU, torch.float32, task=task))
        .plan(2)
        .describe()
    ]
    assert "fake runs train in this process" in notes[0]
