"""memaudit: counterfactual influence audits of what a model memorizes from its training data."""

from memaudit.api import Audit, default_out, run
from memaudit.config import (
    AnalysisConfig,
    EnsembleConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from memaudit.errors import MemauditError

__all__ = [
    "AnalysisConfig",
    "Audit",
    "EnsembleConfig",
    "MemauditError",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "default_out",
    "run",
]
