"""One model's loss on every record: a column of the loss matrix L.

The loss of a record is the mean next-token NLL over its scored positions (the whole record, or
its completion). Records are batched by length to keep padding small.
"""

from __future__ import annotations

import numpy as np
import torch

from memaudit.tokens import TokenizedRecords, length_sorted_batches
from memaudit.train import token_nll


@torch.no_grad()
def record_losses(
    model, tokens: TokenizedRecords, batch_size: int, device: torch.device
) -> np.ndarray:
    """(N,) float64 mean NLL of every record under ``model``."""
    was_training = model.training
    model.eval()
    out = np.empty(len(tokens), dtype=np.float64)
    for idx in length_sorted_batches(tokens.lengths, np.arange(len(tokens)), batch_size):
        nll, mask = token_nll(model, tokens.batch(idx, device))
        out[idx] = (nll.sum(1) / mask.sum(1)).double().cpu().numpy()
    model.train(was_training)
    return out
