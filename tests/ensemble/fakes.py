"""A member task without a model (numpy only), for the ensemble loop's tests: member j's loss on
record t is a pure function of (t, the member's subset, its seed)."""

from __future__ import annotations

import dataclasses

import numpy as np

from memaudit.ensemble.train import TrainingDiverged, TrainStats
from memaudit.modality import TEXT


class FakeTask:
    arrays = ("correct",)
    # Trains in this process, one member at a time (no model to pack or fork).
    modality = dataclasses.replace(TEXT, name="fake", packs=False, forks=False)

    def __init__(self, n: int, diverge_seeds=(), nan_seeds=()) -> None:
        self.n, self.diverge, self.nan = n, set(diverge_seeds), set(nan_seeds)
        self.trained: list[tuple[int, list[int]]] = []

    def fresh(self) -> dict:
        return {}

    def train(self, model, subset, seed, on_step=None) -> TrainStats:
        if seed in self.diverge:
            raise TrainingDiverged("loss is nan at step 3")
        model["subset"], model["seed"] = np.asarray(subset), seed
        self.trained.append((seed, [int(i) for i in subset]))
        if on_step:
            on_step(1, 1, 0.5)
        return TrainStats(steps=1, seconds=0.0, final_loss=0.5, epoch_losses=[0.5])

    def evaluate(self, model):
        rng = np.random.default_rng(model["seed"])
        losses = 2.0 + rng.random(self.n)
        losses[model["subset"]] -= 1.0  # trained-on records are easier
        if model["seed"] in self.nan:
            losses[0] = np.nan
        return losses, {"correct": (losses < 2.0).astype(np.float64)}
