"""One model's loss on every record: a column of the loss matrix L.

The loss of a record is the mean next-token NLL over its scored positions (the whole record, or
its completion). Records are batched by length to keep padding small, and only the scored
positions reach the output head (train.token_nll).
"""

from __future__ import annotations

import numpy as np
import torch

from memaudit.data.tokens import TokenizedRecords, length_sorted_batches
from memaudit.ensemble.train import eval_mode, token_nll


@torch.no_grad()
def record_losses(
    model, tokens: TokenizedRecords, batch_size: int, device: torch.device
) -> np.ndarray:
    """(N,) float64 mean NLL of every record under ``model``."""
    with eval_mode(model):
        out = torch.empty(len(tokens), dtype=torch.float64)
        for idx in length_sorted_batches(tokens.lengths, np.arange(len(tokens)), batch_size):
            batch = tokens.batch(idx, device)
            nll, rows = token_nll(model, batch)
            # Per-record sums by scattering into the padded (B, T) grid: deterministic on any
            # device (an index_add would use atomics on a GPU).
            grid = nll.new_zeros(batch["input_ids"].numel())
            grid[batch["positions"]] = nll
            sums = grid.view(len(idx), -1).sum(1)
            counts = torch.bincount(rows, minlength=len(idx))
            out[torch.from_numpy(idx)] = (sums / counts).double().cpu()
    return out.numpy()
