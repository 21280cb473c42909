"""Fine-tune one ensemble member on its subset: a plain loop, short enough to read at once.

AdamW, linear warmup then linear decay to zero, token-mean cross-entropy over each batch (with
micro-batches summing to exactly the same gradient). Data order comes from the member's seed, so
a retrained member is identical to the original.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from memaudit.config import TrainConfig
from memaudit.tokens import TokenizedRecords


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float  # token-mean training loss over the last epoch
    epoch_losses: list[float] = field(default_factory=list)


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL of the scored next tokens (float32) and the matching mask, both (B, T-1)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["input_ids"][:, 1:]
    mask = batch["scored"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return nll * mask, mask


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
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(subset) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    micro = cfg.micro_batch_size or cfg.batch_size
    model.train()
    epoch_losses: list[float] = []
    step = 0
    for _ in range(cfg.epochs):
        perm = subset[torch.randperm(len(subset), generator=order_rng).numpy()]
        loss_sum, tok_sum = 0.0, 0
        for s in range(0, len(perm), cfg.batch_size):
            batch_idx = perm[s : s + cfg.batch_size]
            # Token count of the whole batch, so micro-batches add up to the batch's mean loss.
            n_tok = int(sum(len(tokens.ids[i]) - 1 for i in batch_idx))
            opt.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for m in range(0, len(batch_idx), micro):
                batch = tokens.batch(batch_idx[m : m + micro], device)
                batch["scored"] = batch["attention_mask"].bool()  # train on every real token
                nll, _ = token_nll(model, batch)
                loss = nll.sum() / n_tok
                loss.backward()
                batch_loss += float(loss.detach())
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(f"non-finite training loss at step {step}")
            opt.step()
            sched.step()
            step += 1
            loss_sum += batch_loss * n_tok
            tok_sum += n_tok
            if on_step is not None:
                on_step(step, total, batch_loss)
        epoch_losses.append(loss_sum / tok_sum)
    return TrainStats(step, time.perf_counter() - start, epoch_losses[-1], epoch_losses)
