"""Synthetic loss matrices shared by the findings tests."""

import numpy as np


def saturating_losses(rng, groups, m, spread=(3.0, 5.0)):
    """Losses (N x M) and inclusion of records whose copies partly substitute for each other:
    the drop is 1 - prod(1 - w P) of a record's full drop (uniform over ``spread``), w = 0.9 for
    itself and 0.6 per mate (diminishing returns, so one copy's own effect on a mate is small
    once another copy is in). ``groups``: a label per record, None for unique records. Returns
    losses, inclusion and the labels as an array ("" for unique)."""
    n = len(groups)
    inclusion = rng.random((n, m)) < 0.5
    drop = rng.uniform(*spread, size=n)
    losses = 6.0 + rng.normal(0.0, 0.5, size=(n, m))
    grp = np.array([g or "" for g in groups])
    for t in range(n):
        mates = np.flatnonzero((grp == grp[t]) & (grp[t] != "") & (np.arange(n) != t))
        kept = (1 - 0.9 * inclusion[t]) * np.prod(1 - 0.6 * inclusion[mates], axis=0)
        losses[t] -= drop[t] * (1 - kept)
    return losses, inclusion, grp
