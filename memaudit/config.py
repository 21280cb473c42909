"""Typed configuration, saved as JSON beside the results it produced.

Defaults follow the paper where it speaks (3 epochs, lr 2e-4, batch 50, max length 100, M = 1,000,
Bernoulli(1/2) inclusion) and are our documented choices where it is silent (LoRA r=8, alpha=16,
no dropout; AdamW without weight decay; linear decay; loss over the whole record).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from memaudit.errors import MemauditError

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
class FindingsConfig:
    # A link t <- i (i != t) needs I[t, i] / se[t, i] >= link_z (or the link_fwer threshold,
    # whichever is higher): the influence must stand out from its own noise. Each target's
    # top-k is a maximum over N noisy candidates, so this is far above the usual 2; on the
    # bundled r64 ensemble (M = 64) planted pairs have a median z of 4.0 (plain) or 5.0
    # (adjusted), chance pairs stay below 3.5.
    link_z: float = 4.0
    # ... and I[t, i] >= link_fraction * (the largest influence on t, usually t's own): a
    # near-duplicate substitutes for t, so its influence is comparable to t's self-influence,
    # whereas a record that merely helps (same template, same topic) is a small fraction of it.
    # r64: planted pairs at a median of 0.7 of the largest, chance pairs at 0.2 (max 0.64).
    link_fraction: float = 0.5
    # Multiple testing: the z threshold is raised to the one-sided Student-t quantile (df =
    # M - 3) at link_fwer / (N (N - 1)), so that over all ordered pairs the chance of even one
    # false link stays near link_fwer. 4.6 at N = M = 64, 6.8 at N = 300, M = 24, 6.4 at
    # N = 20,000, M = 1,000; a fixed 4 would let N = 20,000 make thousands of chance links and
    # merge them into one giant cluster. None: link_z alone.
    link_fwer: float | None = 0.05
    # Without losses and inclusion, find_clusters sees only the plain difference of means,
    # which credits i with t's own self-influence in proportion to how much their inclusion
    # columns overlap by chance (up to a correlation of 0.84 among 300 columns at M = 24). Then
    # link_fraction is raised to sqrt(2 ln(N (N - 1) / 2) / M), the typical largest chance
    # correlation between two of the N columns (0.49 at N = M = 64, 0.94 at N = 300, M = 24).
    chance_overlap_guard: bool = True
    # With losses and inclusion, each target's link candidates are its strongest influencers
    # after removing the swing of its loss with its own inclusion, and they are tested jointly:
    # one least-squares fit of L[t] on its own inclusion and the candidates' (so a planted
    # record's group-mates do not add noise to each other's estimates). More candidates cost
    # residual degrees of freedom (M - candidates - 2).
    link_candidates: int = 8
    # The paper's reading of the margin, made symmetric: with the regression-adjusted
    # estimator, t and i are also linked when both have a Top-1 margin below mutual_margin
    # (several records compete for the top of their influence lists) and each is among the
    # other's mutual_top strongest other influencers. It finds near-duplicate groups whose
    # pairwise effects are too small for the z rule (in a group of 5 copies each copy's own
    # effect mostly saturates once another copy is in). It is a heuristic, not a test: measured
    # on the bundled demo (M = 32, 20 planted groups of 5) pair precision 1.00 with 16 of 20
    # groups found; on 8 synthetic ensembles with groups of 4 (tests/test_findings.py) mean pair
    # precision 0.94 (worst 0.61: two groups merged) and 79% of groups found. Adjusted margins of
    # unique records were all >= 4 on the demo (median 16), 95% of near-duplicated ones < 4.
    # Not used with the plain estimator, whose unique-record margins sit near 1-2 at small M.
    mutual_links: bool = True
    mutual_margin: float = 4.0
    mutual_top: int = 3
    # ... and, for a pair of such records, the larger of I[t, i] / (largest influence on t) and
    # I[i, t] / (largest on i) is at least mutual_fraction. None: 0 for text, 0.6 for images.
    # Images need it because most of them have low margins (images of one class help each
    # other: median unique margin 2.7 at M = 64 on the image demo, against 16 for text), so
    # mutual top-3 lists also pair look-alikes (two white cars, two cargo ships). A planted copy
    # substitutes for its mate (all 16 planted pairs found: fractions >= 0.63), look-alikes
    # less (23 of 25 such pairs < 0.6). Image demo, M = 64: link precision 0.47 -> 0.84
    # against the planted pairs, recall 0.80 kept; of the 3 unplanted links left, one is a
    # natural CIFAR-10 near-duplicate (the same cat photo, twice in the training set). Text
    # needs none: in a group of 5 copies one copy's own effect on a mate is small (saturation).
    mutual_fraction: float | None = None
    # Character n-gram TF-IDF cosine >= this marks a link as a "textual" near-duplicate (the
    # planted one-token edits score 0.8-0.95; unrelated records of one template, 0.1-0.3).
    lexical_threshold: float = 0.5
    # Images: pixel_similarity >= this marks a link as a "visual" near-duplicate (planted copies:
    # median 0.96, 95% above 0.74; random CIFAR-10 pairs 0.09 +- 0.28, 0.7% above 0.7).
    pixel_threshold: float = 0.7
    # A unique record is flagged when its self-influence is at or above this quantile of all
    # finite self-influences (0.9: the top 10%) and significantly positive (self / se >= link_z)
    self_influence_quantile: float = 0.9
    # ... or when it is extractable: mean BLEU when trained on minus when not >= bleu_gain
    bleu_gain: float = 0.3
    # ... or when its membership-inference AUC (see membership_scores) is >= mia_auc
    mia_auc: float = 0.9
    # How many clusters a report shows; find_clusters returns every cluster, so that cluster_of
    # and score_against_groups see all of them.
    top_clusters: int = 10
    # The most unique records risky_unique_records returns.
    top_records: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.link_z) and self.link_z > 0):
            raise ValueError(f"link_z must be a positive number, got {self.link_z!r}")
        if self.link_fwer is not None and not 0.0 < self.link_fwer < 1.0:
            raise ValueError(f"link_fwer must be in (0, 1) or None, got {self.link_fwer!r}")
        for name in (
            "link_fraction",
            "lexical_threshold",
            "pixel_threshold",
            "self_influence_quantile",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.mutual_fraction is not None and not 0.0 <= self.mutual_fraction <= 1.0:
            raise ValueError(f"mutual_fraction must be in [0, 1], got {self.mutual_fraction!r}")
        if not self.mutual_margin > 1.0:
            raise ValueError(f"mutual_margin must be > 1, got {self.mutual_margin!r}")
        for name in ("top_clusters", "top_records", "mutual_top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class ConvergenceConfig:
    # Split-half reliability (Spearman rank correlation between two disjoint halves of the
    # models, Spearman-Brown corrected to the full count) of self-influence AND of the margin
    # must reach this. 0.9: another ensemble of the same size would rank records nearly alike.
    min_reliability: float = 0.9
    # 1 - Jaccard(flagged set now, flagged set of the previous round) must be <= this: at most
    # about 15% of the flagged records came or went in the last round (which added >= 25% more
    # models, memaudit.convergence.adaptive.round_sizes). Measured on the reduced-M benchmark
    # (rounds of 16): 0.51, 0.29, 0.13 from 16 to 64 models, then 0.04 between 64 and 128.
    max_flag_change: float = 0.15
    # Bootstrap resamples over models for the margins' standard errors and 90% CIs; with 200
    # each percentile of the interval rests on 10 resamples beyond it.
    bootstrap: int = 200
    # Two records whose inclusion patterns differ in <= this fraction of the used models (or,
    # after complementing one, agree on >= 1 - this) cannot be told apart. At M = 64 two random
    # patterns come this close with probability ~1e-11, so only real coincidences are reported;
    # at M = 16 it is 5e-4 per pair, about 100,000 pairs among N = 20,000: too few models.
    pattern_distance: float = 0.1
    # Seed of the random half-splits and the bootstrap resamples (results are reproducible).
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_reliability) and -1.0 <= self.min_reliability <= 1.0):
            raise ValueError(f"min_reliability must be in [-1, 1], got {self.min_reliability!r}")
        for name in ("max_flag_change", "pattern_distance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("bootstrap", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")


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
    # --id-field: the column/field holding each record's id (None: "id", else the row number).
    id_field: str | None = None

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
            id_field=d.get("id_field"),
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
        if d.get("id_field") is None:
            d.pop("id_field", None)  # runs made before --id-field keep their fingerprint
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
