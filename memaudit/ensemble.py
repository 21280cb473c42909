"""Train the ensemble: every member that the run directory does not already hold.

Member j trains on column j of P with seed ``model_seed(seed, j)`` and is evaluated on all
records; its losses and metadata are written before the next member starts, so a killed run
loses at most the member in progress.

The loop is the same for text and images: it asks a *member task* (:class:`MemberTask`) for a
fresh model, to train it on a subset and to evaluate it on every record. :class:`TextTask`
wraps the language-model path; memaudit.vision.ImageTask the image path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.evaluate import record_losses
from memaudit.extract import extract_member, extraction_targets
from memaudit.models import MemberFactory
from memaudit.partition import model_seed
from memaudit.rundir import RunDir
from memaudit.tokens import TokenizedRecords
from memaudit.train import TrainingDiverged, TrainStats, train_member


class MemberTask(Protocol):
    """What the ensemble loop needs from a modality."""

    arrays: tuple[str, ...]  # names of the extra per-record arrays evaluate() returns

    def fresh(self) -> Any: ...

    def train(self, model: Any, subset: np.ndarray, seed: int, on_step=None) -> TrainStats: ...

    def evaluate(self, model: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class TextTask:
    """The language-model path: shared starting weights, train.train_member, record_losses."""

    arrays: tuple[str, ...] = ()

    def __init__(self, tokens, factory, cfg: RunConfig, device: torch.device) -> None:
        self.tokens, self.factory, self.cfg, self.device = tokens, factory, cfg, device

    def fresh(self):
        return self.factory.fresh()

    def train(self, model, subset, seed, on_step=None) -> TrainStats:
        return train_member(model, self.tokens, subset, self.cfg.train, seed, self.device, on_step)

    def evaluate(self, model) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return record_losses(model, self.tokens, self.cfg.eval_batch_size, self.device), {}


@dataclass
class EnsembleProgress:
    """Callbacks for a progress display; all optional."""

    on_start: Callable[[int, int], None] | None = None  # (to train, already done)
    on_step: Callable[[int, int, float], None] | None = None  # (step, total, loss)
    on_model: Callable[[int, dict], None] | None = None  # (j, metadata)


def pending_models(
    run: RunDir, n_models: int, n_extract: int = 0, arrays: tuple[str, ...] = ()
) -> list[int]:
    """Members without a valid result; the first n_extract also need their extraction."""
    return [
        j
        for j in range(n_models)
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
    task: MemberTask | None = None,
) -> list[int]:
    """Train and evaluate every pending member; return the indices trained in this call.

    The first ``cfg.extract.models`` members also decode every record (extractability), since
    members are not kept; a tokenizer is needed for that. ``task`` defaults to the text path
    (tokens and factory); an image run passes its memaudit.vision.ImageTask.
    """
    progress = progress or EnsembleProgress()
    task = task or TextTask(tokens, factory, cfg, device)
    n_extract = cfg.extract.models if tokenizer is not None else 0
    targets = (
        extraction_targets(tokens, tokenizer, cfg.extract.prefix_tokens) if n_extract else None
    )
    todo = pending_models(run, inclusion.shape[1], n_extract, task.arrays)
    if progress.on_start:
        progress.on_start(len(todo), inclusion.shape[1] - len(todo))
    for j in todo:
        seed = model_seed(cfg.ensemble.seed, j)
        subset = np.flatnonzero(inclusion[:, j])
        model = task.fresh()
        meta = {
            "seed": seed,
            "n_train": int(len(subset)),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        }
        try:
            stats = task.train(model, subset, seed, progress.on_step)
        except TrainingDiverged as exc:
            # Excluded from the estimates and reported, never averaged in.
            meta.update(status="diverged", error=str(exc))
            run.save_model(j, None, meta)
        else:
            t0 = time.perf_counter()
            losses, arrays = task.evaluate(model)
            meta.update(
                status="ok" if np.isfinite(losses).all() else "diverged",
                train_loss=stats.final_loss,
                epoch_losses=stats.epoch_losses,
                steps=stats.steps,
                train_seconds=round(stats.seconds, 3),
                eval_seconds=round(time.perf_counter() - t0, 3),
            )
            extraction = None
            if meta["status"] == "ok" and j < n_extract:
                t0 = time.perf_counter()
                extraction = extract_member(
                    model, targets, tokenizer, cfg.extract.batch_size, device
                )
                meta["extract_seconds"] = round(time.perf_counter() - t0, 3)
            if meta["status"] == "ok":
                run.save_model(j, losses, meta, extraction, arrays)
            else:
                meta["error"] = "non-finite evaluation loss"
                run.save_model(j, None, meta)
        if progress.on_model:
            progress.on_model(j, meta)
    return todo
