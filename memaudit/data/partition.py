"""The inclusion matrix P (N records x M models): which records each model trains on.

Column j is drawn from its own seed stream, so it depends only on (seed, j): growing M keeps every
earlier column, which is what lets a run be extended with more models, and lets any machine
regenerate any member's subset.
"""

from __future__ import annotations

import numpy as np

from memaudit.config import EnsembleConfig
from memaudit.errors import MemauditError

_P_STREAM = 0x50  # separate streams for subsets and for training seeds
_SEED_STREAM = 0x53


def inclusion_column(n_records: int, j: int, design: str, seed: int) -> np.ndarray:
    """Boolean mask of the records model j trains on."""
    if design == "bernoulli":
        # The paper: every entry Bernoulli(1/2), independently.
        rng = np.random.default_rng([seed, _P_STREAM, j])
        return rng.random(n_records) < 0.5
    if design == "complementary":
        # Model 2k+1 trains on the complement of model 2k: each record in exactly half the models.
        rng = np.random.default_rng([seed, _P_STREAM, j // 2])
        col = rng.random(n_records) < 0.5
        return col if j % 2 == 0 else ~col
    raise ValueError(f"unknown design {design!r}")


def inclusion_matrix(
    n_records: int, cfg: EnsembleConfig, n_models: int | None = None
) -> np.ndarray:
    m = cfg.models if n_models is None else n_models
    cols = [inclusion_column(n_records, j, cfg.design, cfg.seed) for j in range(m)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_records, 0), dtype=bool)


def model_seed(seed: int, j: int) -> int:
    """The training seed of model j (initialisation noise, data order, dropout)."""
    return int(np.random.default_rng([seed, _SEED_STREAM, j]).integers(2**31 - 1))


def shard_members(n_models: int, index: int, count: int) -> list[int]:
    """Shard ``index`` of ``count`` (1-based): every count-th member, so shards stay balanced
    and a larger M adds members to every shard."""
    return list(range(index - 1, n_models, count))


MIN_RECORDS = 2
MIN_MODELS = 2


def check_minimums(
    n_records: int, cfg: EnsembleConfig, source: str, resuming: bool = False
) -> None:
    """Refuse, before anything is written, what cannot give an estimate: influence compares
    models trained with a record against models trained without it, so it needs at least two
    models, and an audit of one record has nothing to compare it with. ``resuming``: the
    records are checked against the run directory instead (another dataset is refused there)."""
    if n_records < MIN_RECORDS and not resuming:
        raise MemauditError(
            f"{source}: {n_records} record; an audit needs at least {MIN_RECORDS} (influence "
            "compares records with one another)"
        )
    if cfg.models < MIN_MODELS:
        raise MemauditError(
            f"--models: {cfg.models}; at least {MIN_MODELS} are needed (each record's influence "
            "compares models trained with it against models trained without it)"
        )
