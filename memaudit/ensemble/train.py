"""Fine-tune one ensemble member on its subset: a plain loop, short enough to read at once.

AdamW, linear warmup then linear decay to zero, token-mean cross-entropy over each batch (with
micro-batches summing to exactly the same gradient). Data order comes from the member's seed, so
a retrained member is identical to the original.

Speed (measured, docs/ARCHITECTURE.md "Training speed"): the output head and the softmax run
only on the scored positions of a batch, gathered by indices the tokenizer side computes (no
padding reaches the largest matmul of a small model, no host sync), AdamW is the fused kernel,
and the loss is read back once per epoch unless a progress callback wants every step.
"""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from memaudit.config import TrainConfig
from memaudit.data.tokens import TokenizedRecords
from memaudit.ensemble.models import config_positions


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float  # token-mean training loss over the last epoch
    epoch_losses: list[float] = field(default_factory=list)


# Per model object: (body, head) when head(body(...)[0]) reproduces the model's logits, else None.
_SPLIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _body_and_head(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    try:
        head, body = inner.get_output_embeddings(), inner.base_model
    except (AttributeError, NotImplementedError):
        return None
    if head is None or body is inner:
        return None
    return body, head


@contextmanager
def eval_mode(model):
    """The block runs in eval mode (no dropout, so no random numbers are drawn); the model
    returns to the mode it was in, even if the block fails."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _check_split(model, batch) -> tuple | None:
    """The model's (body, head) if the head alone maps hidden states to its logits (no logit
    scaling or soft-capping in between), checked once per model on a real batch."""
    split = _body_and_head(model)
    if split is None:
        return None
    try:
        with eval_mode(model):
            args = _model_args(batch)
            ref = model(**args).logits.float()
            ours = split[1](split[0](**args)[0]).float()
        same = ref.shape == ours.shape and torch.allclose(ref, ours, rtol=1e-3, atol=1e-3)
    except (TypeError, ValueError, RuntimeError):
        same = False
    return split if same else None


def output_split(model, batch) -> tuple | None:
    """The model's (body, head), checked on ``batch`` the first time a model is seen."""
    if model not in _SPLIT:
        _SPLIT[model] = _check_split(model, batch)
    return _SPLIT[model]


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """The learning-rate schedule: linear warmup, then linear decay to zero at ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the softmax: half precision raised to float32, float64 left as it is (a
    float64 run, as the exactness tests use, stays float64 end to end)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _model_args(batch: dict[str, torch.Tensor]) -> dict:
    """A padded batch's attention mask, or a packed batch's position ids (and no mask)."""
    args = {"input_ids": batch["input_ids"], "use_cache": False}
    for key in ("attention_mask", "position_ids"):
        if key in batch:
            args[key] = batch[key]
    return args


# Per model object: whether packed batches give its padded batches' losses (checked once).
_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def packs(
    model, tokens: TokenizedRecords, indices: np.ndarray, device: torch.device, max_width: int
) -> bool:
    """Whether ``model`` takes packed rows (``TokenizedRecords.packed_batch``): checked once
    per model on real records, against the padded batch, in eval mode (no dropout draws).

    Models and library versions that do not read packed position ids as separate sequences
    (then records would attend to each other) fail the check and train on padded rows.
    """
    if model not in _PACKS:
        try:
            with eval_mode(model):
                ref, _ = token_nll(model, tokens.batch(indices, device, score_all=True))
                ours, _ = token_nll(model, tokens.packed_batch(indices, device, max_width))
            # Rounding differs with the layout; a record that sees another is off by far more.
            tol = 1e-3 if ref.dtype in (torch.float32, torch.float64) else 3e-2
            same = ref.shape == ours.shape and bool((ref - ours).abs().max() <= tol)
        except (TypeError, ValueError, RuntimeError):
            same = False
        _PACKS[model] = same
    return _PACKS[model]


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (float32) of every scored next token, flattened (n,), and the batch row of each.

    Position ``batch["positions"][k]`` (a flat index into the (B, T) batch) predicts the token
    after it. Only those rows reach the output head and the softmax: on a small model the head
    is most of the work, and padding would be most of that.
    """
    split = output_split(model, batch)
    ids, pos = batch["input_ids"], batch["positions"]
    args = _model_args(batch)
    if split is not None:
        hidden = split[0](**args)[0]
        logits = split[1](hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos))
    else:
        logits = model(**args).logits
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, pos)
    targets = ids.reshape(-1).index_select(0, pos + 1)
    return F.cross_entropy(upcast(logits), targets, reduction="none"), batch["rows"]


def _optimizer(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel: one call per step instead of ~10 small ops per parameter tensor, which
    # on a small model cost more than the arithmetic.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def train_member(
    model,
    tokens: TokenizedRecords,
    subset: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    on_step=None,
) -> TrainStats:
    """Train ``model`` in place on the records ``subset`` (indices) and return its statistics."""
    start = time.perf_counter()
    torch.manual_seed(seed)  # dropout, if the model has any
    order_rng = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg, device)
    steps_per_epoch = math.ceil(len(subset) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, cfg))
    micro = cfg.micro_batch_size or cfg.batch_size
    lengths = tokens.lengths - 1  # trained positions per record: every real next token
    # Records laid end to end in rows instead of each padded to the longest (same batches,
    # same losses; on the demo 87% of the body's token slots are real against 71%), rows up to
    # --max-length wide and no wider than the model's positions (its position table and
    # causal-mask buffers are that size even where position ids restart).
    width = min(cfg.max_length, config_positions(getattr(model, "config", None)) or cfg.max_length)
    packed = cfg.pack_records and packs(model, tokens, subset[:micro], device, width)
    make_batch = (
        partial(tokens.packed_batch, max_width=width)
        if packed
        else partial(tokens.batch, score_all=True)
    )
    model.train()
    epoch_losses: list[float] = []
    step = 0
    for epoch in range(cfg.epochs):
        perm = subset[torch.randperm(len(subset), generator=order_rng).numpy()]
        # Summed on the device; read back once per epoch (a read is a sync on a GPU).
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tok_sum = 0
        for s in range(0, len(perm), cfg.batch_size):
            batch_idx = perm[s : s + cfg.batch_size]
            # Token count of the whole batch, so micro-batches add up to the batch's mean loss.
            n_tok = int(lengths[batch_idx].sum())
            opt.zero_grad(set_to_none=True)
            batch_loss = torch.zeros((), device=device)
            for m in range(0, len(batch_idx), micro):
                batch = make_batch(batch_idx[m : m + micro], device)
                nll, _ = token_nll(model, batch)
                loss = nll.sum() / n_tok
                loss.backward()
                batch_loss += loss.detach()
            opt.step()
            sched.step()
            step += 1
            loss_sum += batch_loss.double() * n_tok
            tok_sum += n_tok
            if on_step is not None:
                on_step(step, total, float(batch_loss))
        epoch_loss = float(loss_sum) / tok_sum
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"non-finite training loss in epoch {epoch + 1} (step {step})")
        epoch_losses.append(epoch_loss)
    return TrainStats(step, time.perf_counter() - start, epoch_losses[-1], epoch_losses)
