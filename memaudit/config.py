"""Typed configuration, saved as JSON beside the results it produced.

Defaults follow the paper where it speaks (3 epochs, lr 2e-4, batch 50, max length 100, M = 1,000,
Bernoulli(1/2) inclusion) and are our documented choices where it is silent (LoRA r=8, alpha=16,
no dropout; AdamW without weight decay; linear decay; loss over the whole record).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from memaudit.convergence.diagnostics import ConvergenceConfig
from memaudit.errors import MemauditError
from memaudit.findings.build import FindingsConfig

MODEL_ALIASES = {
    "gpt-neo-1.3B": "EleutherAI/gpt-neo-1.3B",
    "gpt-neo-125M": "EleutherAI/gpt-neo-125M",
    "gpt-neo-2.7B": "EleutherAI/gpt-neo-2.7B",
}
FINETUNE = ("lora", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DESIGNS = ("bernoulli", "complementary")
LOSS_ON = ("full", "completion")


@dataclass(frozen=True)
class ModelConfig:
    name: str  # Hub id or local directory, aliases resolved
    finetune: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # dropout would add noise to every member's measurement
    lora_targets: tuple[str, ...] | None = None  # None: peft's default for the architecture
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _choice("--finetune", self.finetune, FINETUNE)
        _positive("--lora-r", self.lora_r)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise MemauditError("--lora-dropout: must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 50
    micro_batch_size: int | None = None  # gradient accumulation; None: the whole batch at once
    max_length: int = 100
    weight_decay: float = 0.0
    warmup_steps: int = 0
    loss_on: str = "full"  # the loss the influence is measured on: whole record or completion
    dtype: str = "auto"  # auto: bfloat16 on a CUDA device that supports it, else float32
    # Train on records laid end to end in rows (no padding) where the model is checked to
    # keep them apart; else padded rows. Same batches and losses either way (up to rounding,
    # so not in the fingerprint).
    pack_records: bool = True

    def __post_init__(self) -> None:
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        _positive("--max-length", self.max_length)
        if self.micro_batch_size is not None:
            _positive("--micro-batch-size", self.micro_batch_size)
        if not self.lr > 0:
            raise MemauditError("--lr: must be positive")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise MemauditError("--weight-decay and --warmup-steps: must not be negative")
        _choice("--loss-on", self.loss_on, LOSS_ON)
        _choice("--dtype", self.dtype, DTYPES)


@dataclass(frozen=True)
class EnsembleConfig:
    models: int = 1000  # the paper's full mode; with auto, the first round's size
    design: str = "bernoulli"
    seed: int = 0
    auto: bool = False  # train in growing rounds until the convergence diagnostics agree
    max_models: int = 1000  # auto: never more than this

    def __post_init__(self) -> None:
        _positive("--models", self.models)
        _positive("--max-models", self.max_models)
        if self.auto and self.max_models < self.models:
            raise MemauditError("--max-models: must be at least the first round's models")
        _choice("--design", self.design, DESIGNS)
        if self.design == "complementary" and self.models % 2:
            raise MemauditError("--models: the complementary design needs an even number")


@dataclass(frozen=True)
class ExtractConfig:
    """Extractability: greedy decoding by the first ``models`` members, right after training."""

    models: int = 16  # enough that every record gets models that trained on it and that did not
    prefix_tokens: int = 32  # plain-text records: the prompt is their first K tokens
    # Fastest for the lean decoder on the demo (benchmarks/decode.py: 128 against 64 and 300;
    # larger batches pad more prompt tokens, smaller ones take more steps).
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.models, int) or self.models < 0:
            raise MemauditError("--extract-models: must be a non-negative integer")
        _positive("--prefix-tokens", self.prefix_tokens)
        _positive("--extract-batch-size", self.batch_size)


@dataclass(frozen=True)
class ImageConfig:
    """The image path (memaudit.data.images, memaudit.ensemble.vision); a run has one exactly when
    its model is an image model. Augmentation is part of the fingerprint: it changes what members
    learn."""

    dataset: str | None = None  # cifar10 | cifar100 through torchvision (else DATA is the data)
    data_root: str | None = None  # --data-root for --dataset; never downloaded
    resize: int | None = None  # every image to S x S; None: all images must share one size
    crop_padding: int = 4  # random crop from an image zero-padded by this many pixels (0: none)
    flip: bool = True  # random horizontal flip

    def __post_init__(self) -> None:
        if self.resize is not None:
            _positive("--resize", self.resize)
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise MemauditError("--crop-padding: must be a non-negative integer")


@dataclass(frozen=True)
class AnalysisConfig:
    top_k: int = 10
    dense_max: int = 5000  # also store the dense N x N matrix (float32) up to this many records
    # "adjusted" (regression-adjusted, memaudit.estimate.adjusted) or "plain" (difference of means).
    estimator: str = "adjusted"
    covariates: int = 4  # influencers per target the adjusted estimator regresses out

    def __post_init__(self) -> None:
        _positive("--top-k", self.top_k)
        if self.estimator not in ("adjusted", "plain"):
            raise MemauditError(f"--estimator: {self.estimator!r} is not one of adjusted, plain")
        if self.covariates < 0:
            raise MemauditError("--covariates: must be 0 or more")


@dataclass(frozen=True)
class RunConfig:
    data: str
    model: ModelConfig
    preset: str | None = None
    template: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    device: str = "auto"
    eval_batch_size: int = 64
    image: ImageConfig | None = None  # set for image runs (an image --model)
    # Members trained at once (memaudit.ensemble.member_packs): "auto" (CUDA: as many as fit;
    # CPU: 1), "off", or a number. Changes results only by floating-point rounding, so not in the
    # fingerprint.
    pack: str = "auto"

    @property
    def is_image(self) -> bool:
        return self.image is not None

    def __post_init__(self) -> None:
        _choice("--device", self.device, DEVICES)
        _positive("--eval-batch-size", self.eval_batch_size)
        pack = str(self.pack)
        if pack not in ("auto", "off") and not (pack.isdigit() and int(pack) > 0):
            raise MemauditError(f"--pack: expected auto, off or a positive integer, got {pack!r}")
        object.__setattr__(self, "pack", pack)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        model = dict(d["model"])
        if model.get("lora_targets") is not None:
            model["lora_targets"] = tuple(model["lora_targets"])
        return cls(
            data=d["data"],
            model=ModelConfig(**model),
            preset=d.get("preset"),
            template=d.get("template"),
            train=TrainConfig(**d["train"]),
            ensemble=EnsembleConfig(**d["ensemble"]),
            analysis=AnalysisConfig(**d.get("analysis", {})),
            extract=ExtractConfig(**d.get("extract", {})),
            findings=FindingsConfig(**d.get("findings", {})),
            convergence=ConvergenceConfig(**d.get("convergence", {})),
            device=d.get("device", "auto"),
            eval_batch_size=d.get("eval_batch_size", 64),
            image=ImageConfig(**d["image"]) if d.get("image") else None,
            pack=d.get("pack", "auto"),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What the stored results depend on. A resumed run must match it exactly; the model
        count may grow (columns of P are drawn independently), and device, batch sizes,
        the number of extraction models, analysis and findings options may change."""
        d = self.to_dict()
        d.pop("data")  # the dataset is identified by its sha256, not its path
        d.pop("pack")
        d["train"].pop("pack_records")  # like pack: rounding only
        for key in ("device", "eval_batch_size", "analysis", "findings", "convergence"):
            d.pop(key)
        for key in ("models", "auto", "max_models"):
            d["ensemble"].pop(key)
        if d.get("image") is None:
            d.pop("image", None)  # text runs: the same fingerprint as before images existed
        else:
            d["image"].pop("data_root")  # like data: identified by the pixels' sha256
        # How many members decode, and in what batches, may change; what they decode may not.
        d["extract"] = {"prefix_tokens": d["extract"]["prefix_tokens"]}
        return d


def resolve_model_name(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MemauditError(f"{option}: '{value}' is not one of {', '.join(allowed)}")


def _positive(option: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MemauditError(f"{option}: must be a positive integer, got {value!r}")
