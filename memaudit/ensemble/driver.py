"""Train the ensemble: every member that the run directory does not already hold.

The driver asks an executor (memaudit.ensemble.executors) for the pending members' results
(memaudit.ensemble.member.compute_member, run wherever the executor runs it), writes each one to
the run directory as it arrives, retries failures, and reports progress through callbacks.
Imports run one way: driver -> executors -> member_packs -> member.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.data.tokens import TokenizedRecords
from memaudit.ensemble.executors import LocalExecutor
from memaudit.ensemble.member import (
    MemberContext,
    MemberResult,
    MemberTask,
    TextTask,
    describe_error,
)
from memaudit.ensemble.models import MemberFactory
from memaudit.store.rundir import RunDir


@dataclass
class EnsembleProgress:
    """Callbacks for a progress display; all optional."""

    on_start: Callable[[int, int], None] | None = None  # (to train, already done)
    on_step: Callable[[int, int, float], None] | None = None  # (step, total, loss)
    on_model: Callable[[int, dict], None] | None = None  # (j, metadata)
    on_failure: Callable[[int, int, str], None] | None = None  # (j, attempt, error)
    on_note: Callable[[str], None] | None = None  # how the executor runs them (one line)


def pending_models(
    run: RunDir, candidates, n_extract: int = 0, arrays: tuple[str, ...] = ()
) -> list[int]:
    """The members of ``candidates`` without a valid result; the first n_extract also need
    their extraction, and every member the task's extra ``arrays``."""
    return [
        j
        for j in candidates
        if run.model_meta(j, need_extraction=j < n_extract, need_arrays=arrays) is None
    ]


def train_ensemble(
    run: RunDir,
    cfg: RunConfig,
    inclusion: np.ndarray,
    tokens: TokenizedRecords,
    factory: MemberFactory,
    device: torch.device,
    dtype: torch.dtype,
    progress: EnsembleProgress | None = None,
    tokenizer=None,
    executor=None,
    members: list[int] | None = None,
    retries: int = 2,
    task: MemberTask | None = None,
) -> list[int]:
    """Compute every pending member (of ``members``, default all) with ``executor`` (default:
    in this process), write each result as it arrives, and return the indices written now.

    A member whose computation fails is retried up to ``retries`` times (it is identified by
    its index and seed, so a retry is identical to a first try); one that still fails gets a
    ``models/NNNNN.failed.json`` and stays pending for the next run, while the rest finish.
    The first ``cfg.extract.models`` members also decode every record (extractability), since
    members are not kept; a tokenizer is needed for that. ``task`` defaults to the text path
    (tokens and factory); an image run passes its memaudit.ensemble.vision.ImageTask.
    """
    progress = progress or EnsembleProgress()
    task = task or TextTask(tokens, factory, cfg, device)
    n_extract = cfg.extract.models if tokenizer is not None else 0
    candidates = range(inclusion.shape[1]) if members is None else members
    todo = pending_models(run, candidates, n_extract, task.arrays)
    if progress.on_start:
        progress.on_start(len(todo), len(candidates) - len(todo))
    if executor is None:
        ctx = MemberContext(cfg, tokens, factory, device, dtype, tokenizer, task=task)
        executor = LocalExecutor(ctx)
    if todo and progress.on_note and hasattr(executor, "plan"):
        progress.on_note(executor.plan(len(todo)).describe())
    written: list[int] = []
    pending, attempts = list(todo), dict.fromkeys(todo, 0)
    while pending:
        failed = []
        for j, outcome in executor.map(pending, inclusion, progress.on_step):
            if isinstance(outcome, MemberResult):
                run.save_model(j, outcome.losses, outcome.meta, outcome.extraction, outcome.arrays)
                written.append(j)
                if progress.on_model:
                    progress.on_model(j, outcome.meta)
                continue
            attempts[j] += 1
            error = describe_error(outcome)
            if progress.on_failure:
                progress.on_failure(j, attempts[j], error)
            if attempts[j] <= retries:
                failed.append(j)
            else:
                run.save_failure(j, attempts[j], error, _trace(outcome))
        pending = sorted(failed)
    return sorted(written)


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
