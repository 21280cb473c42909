"""Train the ensemble: every member that the run directory does not already hold.

Member j trains on column j of P with seed ``model_seed(seed, j)`` and is evaluated on all
records; its losses and metadata are written before the next member starts, so a killed run
loses at most the member in progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.evaluate import record_losses
from memaudit.extract import extract_member, extraction_targets
from memaudit.models import MemberFactory
from memaudit.partition import model_seed
from memaudit.rundir import RunDir
from memaudit.tokens import TokenizedRecords
from memaudit.train import TrainingDiverged, train_member


@dataclass
class EnsembleProgress:
    """Callbacks for a progress display; all optional."""

    on_start: Callable[[int, int], None] | None = None  # (to train, already done)
    on_step: Callable[[int, int, float], None] | None = None  # (step, total, loss)
    on_model: Callable[[int, dict], None] | None = None  # (j, metadata)


def pending_models(run: RunDir, n_models: int, n_extract: int = 0) -> list[int]:
    """Members without a valid result; the first n_extract also need their extraction."""
    return [j for j in range(n_models) if run.model_meta(j, need_extraction=j < n_extract) is None]


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
) -> list[int]:
    """Train and evaluate every pending member; return the indices trained in this call.

    The first ``cfg.extract.models`` members also decode every record (extractability), since
    members are not kept; a tokenizer is needed for that.
    """
    progress = progress or EnsembleProgress()
    n_extract = cfg.extract.models if tokenizer is not None else 0
    targets = (
        extraction_targets(tokens, tokenizer, cfg.extract.prefix_tokens) if n_extract else None
    )
    todo = pending_models(run, inclusion.shape[1], n_extract)
    if progress.on_start:
        progress.on_start(len(todo), inclusion.shape[1] - len(todo))
    for j in todo:
        seed = model_seed(cfg.ensemble.seed, j)
        subset = np.flatnonzero(inclusion[:, j])
        model = factory.fresh()
        meta = {
            "seed": seed,
            "n_train": int(len(subset)),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        }
        try:
            stats = train_member(model, tokens, subset, cfg.train, seed, device, progress.on_step)
        except TrainingDiverged as exc:
            # Excluded from the estimates and reported, never averaged in.
            meta.update(status="diverged", error=str(exc))
            run.save_model(j, None, meta)
        else:
            t0 = time.perf_counter()
            losses = record_losses(model, tokens, cfg.eval_batch_size, device)
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
                run.save_model(j, losses, meta, extraction)
            else:
                meta["error"] = "non-finite evaluation loss"
                run.save_model(j, None, meta)
        if progress.on_model:
            progress.on_model(j, meta)
    return todo
