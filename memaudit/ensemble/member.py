"""One ensemble member: train it on its half of the records, evaluate it on every record.

Member j trains on column j of P with seed ``model_seed(seed, j)`` and is evaluated on all
records. Computing a member (:func:`compute_member`) is a pure function of the configuration,
the records and j that returns its result; an executor (memaudit.ensemble.executors: this
process, or Ray tasks) runs it wherever, and the driver writes each result to the run directory as
it arrives, so a killed run loses at most the members in progress, and workers need no shared
file system.

The same code serves text and images: a member asks a *member task* (:class:`MemberTask`) for a
fresh model, to train it on a subset and to evaluate it on every record. :class:`TextTask`
wraps the language-model path; memaudit.ensemble.vision.ImageTask the image path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.data.partition import model_seed
from memaudit.data.tokens import TokenizedRecords
from memaudit.ensemble.evaluate import record_losses
from memaudit.ensemble.extract import extract_member, extraction, extraction_targets
from memaudit.ensemble.models import MemberFactory
from memaudit.ensemble.train import TrainingDiverged, TrainStats, train_member
from memaudit.modality import TEXT, Modality


class MemberTask(Protocol):
    """What the ensemble loop needs from a modality."""

    arrays: tuple[str, ...]  # names of the extra per-record arrays evaluate() returns
    modality: Modality  # what the rest of the pipeline may ask of it

    def fresh(self) -> Any: ...

    def train(self, model: Any, subset: np.ndarray, seed: int, on_step=None) -> TrainStats: ...

    def evaluate(self, model: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class TextTask:
    """The language-model path: shared starting weights, train.train_member, record_losses."""

    arrays: tuple[str, ...] = ()
    modality = TEXT

    def __init__(self, tokens, factory, cfg: RunConfig, device: torch.device) -> None:
        self.tokens, self.factory, self.cfg, self.device = tokens, factory, cfg, device

    def fresh(self):
        return self.factory.fresh()

    def train(self, model, subset, seed, on_step=None) -> TrainStats:
        return train_member(model, self.tokens, subset, self.cfg.train, seed, self.device, on_step)

    def evaluate(self, model) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return record_losses(model, self.tokens, self.cfg.eval_batch_size, self.device), {}


@dataclass
class MemberContext:
    """What computing any member needs; built once per process (driver or worker)."""

    cfg: RunConfig
    tokens: TokenizedRecords
    factory: MemberFactory
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any = None  # None: no extraction
    targets: Any = None  # extraction targets, made on first use
    task: Any = None  # a MemberTask; None: the text path (TextTask over tokens and factory)

    def member_task(self) -> MemberTask:
        if self.task is None:
            self.task = TextTask(self.tokens, self.factory, self.cfg, self.device)
        return self.task

    @property
    def n_extract(self) -> int:
        return self.cfg.extract.models if self.tokenizer is not None else 0


@dataclass
class MemberResult:
    """Member j's result, as the driver writes it: losses None unless status is "ok"."""

    j: int
    losses: np.ndarray | None
    meta: dict[str, Any]
    extraction: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] | None = None  # the task's extra per-record arrays


class MemberFailed(RuntimeError):
    """Computing a member raised (or its worker died); it may be retried."""


def member_context(cfg: RunConfig, records) -> MemberContext:
    """Load tokenizer and model and tokenize ``records``: a worker's own copy of the setup, so
    that it needs only the configuration and the records, not the driver's files."""
    from memaudit.data.tokens import tokenize_records
    from memaudit.ensemble.models import load_base_model, load_tokenizer, pick_device, pick_dtype

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    tokens = tokenize_records(records, tokenizer, cfg.train.max_length, cfg.train.loss_on, cfg.data)
    model = load_base_model(cfg.model, device, dtype)
    return MemberContext(cfg, tokens, MemberFactory(model), device, dtype, tokenizer)


def compute_member(ctx: MemberContext, j: int, column: np.ndarray, on_step=None) -> MemberResult:
    """Train member j on the records where ``column`` is true, evaluate it on every record and,
    for the first ``extract.models`` members, decode every record. Writes nothing."""
    cfg, device = ctx.cfg, ctx.device
    if j < ctx.n_extract and ctx.targets is None:
        ctx.targets = extraction_targets(ctx.tokens, ctx.tokenizer, cfg.extract.prefix_tokens)
    seed = model_seed(cfg.ensemble.seed, j)
    subset = np.flatnonzero(column)
    task = ctx.member_task()
    model = task.fresh()
    meta = {
        "seed": seed,
        "n_train": int(len(subset)),
        "device": str(device),
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),  # CPU results are bit-identical per thread count
        "pack": 1,  # trained alone (memaudit.ensemble.member_packs trains K at once)
    }
    try:
        # An empty half (possible with a handful of records) leaves the base model as it is:
        # a valid "out" measurement for every record, so the member is kept, untrained.
        stats = task.train(model, subset, seed, on_step) if len(subset) else TrainStats(0, 0, None)
    except TrainingDiverged as exc:
        # Excluded from the estimates and reported, never averaged in; deterministic, so
        # it is a result, not a failure to retry.
        meta.update(status="diverged", error=str(exc))
        return MemberResult(j, None, meta)
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
    return finish_member(ctx, j, model, losses, meta, arrays)


def finish_member(
    ctx: MemberContext, j: int, model, losses, meta, arrays, generations=None
) -> MemberResult:
    """Member j's result once trained and evaluated: failed if its losses are not finite, and
    with its extraction (decoding every record, unless its ``generations`` are given) if it is
    one of the first extract models."""
    if meta["status"] != "ok":
        meta["error"] = "non-finite evaluation loss"
        return MemberResult(j, None, meta)
    found = None
    if j < ctx.n_extract:
        t0 = time.perf_counter()
        if generations is None:
            found = extract_member(
                model, ctx.targets, ctx.tokenizer, ctx.cfg.extract.batch_size, ctx.device
            )
            meta["extract_seconds"] = round(time.perf_counter() - t0, 3)
        else:
            found = extraction(generations, ctx.targets)
    return MemberResult(j, losses, meta, found, arrays)


def describe_error(exc: BaseException) -> str:
    """One line: the exception's type and first line (a Ray error names the original one)."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
