"""Typed configuration, saved as JSON beside the results it produced.

Defaults follow the paper where it speaks (3 epochs, lr 2e-4, batch 50, max length 100, M = 1,000,
Bernoulli(1/2) inclusion) and are our documented choices where it is silent (LoRA r=8, alpha=16,
no dropout; AdamW without weight decay; linear decay; loss over the whole record).

One source per option: every field carries its default, its allowed values and its help
(:func:`setting`). The command line's options (``memaudit run --help``), the TOML keys of
``--config`` and the keywords of :func:`build_run_config` (and so of ``memaudit.run``) are made
from these fields (:data:`OPTIONS`), and every invalid value raises :class:`OptionError` naming
the option. This module imports no other part of memaudit but its errors.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from memaudit.errors import MemauditError

MODEL_ALIASES = {
    "gpt-neo-1.3B": "EleutherAI/gpt-neo-1.3B",
    "gpt-neo-125M": "EleutherAI/gpt-neo-125M",
    "gpt-neo-2.7B": "EleutherAI/gpt-neo-2.7B",
}
# The image models of memaudit.ensemble.vision (VISION_MODELS there; a test keeps the two equal):
# an image --model makes an image run. Named here because config imports no algorithm module.
IMAGE_MODELS = ("resnet-tiny", "resnet20", "resnet18")
IMAGE_DATASETS = ("cifar10", "cifar100")  # torchvision's, read from --data-root
PRESETS = {
    # NQ-open: {"question": str, "answer": [str, ...]}; the paper's "Q: {question} A: {answer}".
    "nq": "Q: {question} A: {answer}",
}
FINETUNE = ("lora", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DESIGNS = ("bernoulli", "complementary")
LOSS_ON = ("full", "completion")
ESTIMATORS = ("adjusted", "plain")


class OptionError(MemauditError, ValueError):
    """An invalid option value: a MemauditError (one line, exit code 2) whose message starts
    with the option's name; also a ValueError, as the config classes raised before."""


# -- checks: what a field accepts, and the value it stores --------------------------------------


class _Rejected(Exception):
    pass


@dataclass(frozen=True)
class Check:
    """What one field accepts. ``accept`` returns the value to store (an int for an integer
    option, a float for a number) or raises _Rejected; ``says`` completes "--option: ..."."""

    says: str
    kind: type  # int, float, str or bool: the command line's type
    accept: Callable[[Any], Any]
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is accepted (and means what the field's comment says)

    def __call__(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        return self.accept(value)


def _integer(low: int, high: int | None = None, says: str | None = None) -> Check:
    def accept(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Rejected
        if value < low or (high is not None and value > high):
            raise _Rejected
        return int(value)

    if says is None:
        says = {0: "a non-negative integer", 1: "a positive integer"}[low]
        says = f"must be {says}"
    return Check(says, int, accept)


def _number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Check:
    """A finite real number in the interval (never NaN or infinity: they are not JSON)."""

    def accept(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Rejected
        try:
            x = float(value)
        except (OverflowError, ValueError):
            raise _Rejected from None
        if not math.isfinite(x):
            raise _Rejected
        if low is not None and (x <= low if low_open else x < low):
            raise _Rejected
        if high is not None and (x >= high if high_open else x > high):
            raise _Rejected
        return x

    if high is None and low == 0:
        says = "must be a finite positive number" if low_open else "must be a finite number >= 0"
    elif high is None:
        says = f"must be a finite number {'>' if low_open else '>='} {low:g}"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        says = f"must be a number in {left}{low:g}, {high:g}{right}"
    return Check(says, float, accept)


def _choice(*values: str) -> Check:
    def accept(value: Any) -> str:
        if not isinstance(value, str) or value not in values:
            raise _Rejected
        return value

    return Check(f"must be one of {', '.join(values)}", str, accept, choices=values)


def _text_accept(value: Any) -> str:
    if not isinstance(value, str):
        raise _Rejected
    return value


def _path_accept(value: Any) -> str:
    if not isinstance(value, str | os.PathLike):
        raise _Rejected
    return os.fspath(value)


def _bool_accept(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Rejected
    return value


def _pack_accept(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise _Rejected
    if text not in ("auto", "off") and not (text.isdigit() and int(text) > 0):
        raise _Rejected
    return text


def _targets_accept(value: Any) -> tuple[str, ...] | None:
    """LoRA target modules: a tuple of names, or on the command line one comma-separated string."""
    if isinstance(value, str):
        names = tuple(t.strip() for t in value.split(","))
        value = tuple(t for t in names if t) or None
        return value
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) and t for t in value):
        raise _Rejected
    return tuple(value)


def _optional(check: Check) -> Check:
    return dataclasses.replace(check, optional=True)


_ANY = Check("", object, lambda value: value)  # a field declared without setting()
POSITIVE = _integer(1)
NON_NEGATIVE = _integer(0)
FRACTION = _number(0.0, 1.0)
TEXT = Check("must be a string", str, _text_accept)
PATH = Check("must be a path", Path, _path_accept)
BOOL = Check("must be true or false", bool, _bool_accept)
SEED = _integer(0, 2**63 - 1, "must be an integer in [0, 2**63 - 1]")


def setting(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 (click's word)
    *,
    check: Check,
    key: str | None = None,
    cli: bool = True,
    image_default: Any = MISSING,
    shown: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A config field that is also an option: ``key`` (default: the field's name) is its TOML
    key and keyword, ``--key-with-dashes`` its command-line flag when ``cli``; ``check`` what it
    accepts; ``image_default`` its default in image runs where that differs; ``shown`` the
    default as the help states it, where the default itself would not say it."""
    metadata = {
        "help": help,
        "check": check,
        "key": key,
        "cli": cli,
        "image_default": image_default,
        "shown": shown,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _option_name(f: dataclasses.Field) -> str:
    """How an error names the field: its flag where the command line has it, else its key."""
    key = f.metadata.get("key") or f.name
    return "--" + key.replace("_", "-") if f.metadata.get("cli") else key


def _validate(obj: Any) -> None:
    """Check every field of a config dataclass; store the checked value (an int as a float for a
    number option, a path as a string). Raises OptionError naming the first bad option."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(obj, f.name)
        try:
            accepted = check(value)
        except _Rejected:
            got = shown_value(value)
            raise OptionError(f"{_option_name(f)}: {check.says}, got {got}") from None
        if accepted is not value:
            object.__setattr__(obj, f.name, accepted)


def shown_value(value: Any) -> str:
    """A rejected value in a message, one short line however long or odd the value is."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = repr(value)
    except ValueError:  # an int over Python's 4,300-digit limit for str()
        return "an integer of more than 4,300 digits"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting(
        help="Hub id, local directory, or alias (gpt-neo-1.3B, gpt-neo-125M); for images "
        "resnet-tiny, resnet20 or resnet18.",
        check=TEXT,
        key="model",
    )  # Hub id or local directory, aliases resolved
    finetune: str = setting("lora", check=_choice(*FINETUNE))
    lora_r: int = setting(8, check=POSITIVE)
    lora_alpha: int = setting(16, check=POSITIVE)
    # dropout would add noise to every member's measurement
    lora_dropout: float = setting(0.0, check=_number(0.0, 1.0, high_open=True))
    lora_targets: tuple[str, ...] | None = setting(
        None,
        "Comma-separated module names for LoRA [default: peft's for the model].",
        check=Check("must be comma-separated module names", str, _targets_accept, optional=True),
    )  # None: peft's default for the architecture
    trust_remote_code: bool = setting(
        False,
        "Allow model code from the model's repository to run (off by default).",
        check=BOOL,
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(3, check=POSITIVE, image_default=30)
    lr: float = setting(
        2e-4,
        "Learning rate (text: AdamW, images: SGD).",
        check=_number(0.0, low_open=True),
        image_default=0.05,
    )
    batch_size: int = setting(50, check=POSITIVE, image_default=64)
    # gradient accumulation; None: the whole batch at once
    micro_batch_size: int | None = setting(
        None,
        "Split each batch for gradient accumulation (same result, less memory).",
        check=_optional(POSITIVE),
    )
    max_length: int = setting(
        100, "Tokens per record; longer records are truncated.", check=POSITIVE
    )
    weight_decay: float = setting(0.0, check=_number(0.0), image_default=5e-4)
    warmup_steps: int = setting(0, check=NON_NEGATIVE)
    # the loss the influence is measured on: whole record or completion
    loss_on: str = setting(
        "full",
        "Measure each record's loss on all tokens or its completion.",
        check=_choice(*LOSS_ON),
    )
    # auto: bfloat16 on a CUDA device that supports it, else float32
    dtype: str = setting("auto", "auto: bfloat16 on CUDA, else float32.", check=_choice(*DTYPES))
    # Train on records laid end to end in rows (no padding) where the model is checked to
    # keep them apart; else padded rows. Same batches and losses either way (up to rounding,
    # so not in the fingerprint).
    pack_records: bool = setting(True, check=BOOL, cli=False)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class EnsembleConfig:
    # the paper's full mode; with auto, the first round's size
    models: int = setting(
        1000,
        "Ensemble size M (the paper's full mode is 1,000), or 'auto': train in rounds of "
        "16, 32, 64, ... until the convergence diagnostics agree.",
        check=POSITIVE,
    )
    design: str = setting(
        "bernoulli",
        "Inclusion design: iid halves, or complementary pairs.",
        check=_choice(*DESIGNS),
    )
    seed: int = setting(0, check=SEED)
    # train in growing rounds until the convergence diagnostics agree (models="auto")
    auto: bool = setting(False, check=BOOL, cli=False)
    max_models: int = setting(
        1000, "With --models auto: the most models to train.", check=POSITIVE
    )  # auto: never more than this

    def __post_init__(self) -> None:
        _validate(self)
        if self.auto and self.max_models < self.models:
            raise OptionError("--max-models: must be at least the first round's models")
        if self.design == "complementary" and self.models % 2:
            raise OptionError("--models: the complementary design needs an even number")


@dataclass(frozen=True)
class ExtractConfig:
    """Extractability: greedy decoding by the first ``models`` members, right after training."""

    # enough that every record gets models that trained on it and that did not
    models: int = setting(
        16,
        "Members that decode every record for extractability (0: none).",
        check=NON_NEGATIVE,
        key="extract_models",
    )
    # plain-text records: the prompt is their first K tokens
    prefix_tokens: int = setting(
        32, "Plain-text records: prompt with this many tokens, score the rest.", check=POSITIVE
    )
    # Fastest for the lean decoder on the demo (benchmarks/decode.py: 128 against 64 and 300;
    # larger batches pad more prompt tokens, smaller ones take more steps).
    batch_size: int = setting(128, check=POSITIVE, key="extract_batch_size", cli=False)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class ImageConfig:
    """The image path (memaudit.data.images, memaudit.ensemble.vision); a run has one exactly when
    its model is an image model. Augmentation is part of the fingerprint: it changes what members
    learn."""

    # cifar10 | cifar100 through torchvision (else DATA is the data)
    dataset: str | None = setting(
        None,
        "Images: torchvision's CIFAR-10/100 training set from --data-root (no DATA; "
        "never downloads).",
        check=_optional(_choice(*IMAGE_DATASETS)),
    )
    # --data-root for --dataset; never downloaded
    data_root: str | None = setting(
        None, "Images: the folder holding --dataset's files.", check=_optional(PATH)
    )
    # every image to S x S; None: all images must share one size
    resize: int | None = setting(
        None,
        "Images: resize every image to S x S (needed when sizes differ).",
        check=_optional(POSITIVE),
    )
    # random crop from an image zero-padded by this many pixels (0: none)
    crop_padding: int = setting(
        4,
        "Images: random-crop augmentation from a zero-padded image (0: none).",
        check=NON_NEGATIVE,
    )
    flip: bool = setting(
        True, "Images: random horizontal flip augmentation.", check=BOOL
    )  # random horizontal flip
    # A Hugging Face image dataset as DATA (a save_to_disk folder or a Hub id): its columns.
    image_field: str = setting(
        "image",
        "Images from a dataset folder or Hub id: the image column (a datasets.Image feature).",
        check=TEXT,
    )
    label_field: str = setting(
        "label",
        "Images from a dataset folder or Hub id: the label column (class ids or names).",
        check=TEXT,
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class AnalysisConfig:
    top_k: int = setting(10, "Top influencers kept per target.", check=POSITIVE)
    # also store the dense N x N matrix (float32) up to this many records
    dense_max: int = setting(5000, check=NON_NEGATIVE, cli=False)
    # "adjusted" (regression-adjusted, memaudit.estimate.adjusted) or "plain" (difference of means).
    estimator: str = setting(
        "adjusted",
        "adjusted: difference of means after regressing out each target's own inclusion and "
        "its strongest influencers (far less noise at small M); plain: the paper's difference of "
        "means.",
        check=_choice(*ESTIMATORS),
    )
    # influencers per target the adjusted estimator regresses out
    covariates: int = setting(
        4,
        "Influencers per target the adjusted estimator regresses out (at most M/4 - 1).",
        check=NON_NEGATIVE,
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class FindingsConfig:
    # A link t <- i (i != t) needs I[t, i] / se[t, i] >= link_z (or the link_fwer threshold,
    # whichever is higher): the influence must stand out from its own noise. Each target's
    # top-k is a maximum over N noisy candidates, so this is far above the usual 2; on the
    # bundled r64 ensemble (M = 64) planted pairs have a median z of 4.0 (plain) or 5.0
    # (adjusted), chance pairs stay below 3.5.
    link_z: float = setting(
        4.0,
        "Near-duplicate link: influence / standard error at least this.",
        check=_number(0.0, low_open=True),
    )
    # ... and I[t, i] >= link_fraction * (the largest influence on t, usually t's own): a
    # near-duplicate substitutes for t, so its influence is comparable to t's self-influence,
    # whereas a record that merely helps (same template, same topic) is a small fraction of it.
    # r64: planted pairs at a median of 0.7 of the largest, chance pairs at 0.2 (max 0.64).
    link_fraction: float = setting(
        0.5, "... and at least this fraction of the target's largest influence.", check=FRACTION
    )
    # Multiple testing: the z threshold is raised to the one-sided Student-t quantile (df =
    # M - 3) at link_fwer / (N (N - 1)), so that over all ordered pairs the chance of even one
    # false link stays near link_fwer. 4.6 at N = M = 64, 6.8 at N = 300, M = 24, 6.4 at
    # N = 20,000, M = 1,000; a fixed 4 would let N = 20,000 make thousands of chance links and
    # merge them into one giant cluster. None: link_z alone.
    link_fwer: float | None = setting(
        0.05,
        check=_optional(_number(0.0, 1.0, low_open=True, high_open=True)),
        cli=False,
    )
    # Both link rules are calibrated on this many null shuffles of the run's own losses
    # (memaudit.findings.calibration: each record's losses permuted within its own inclusion
    # strata, so self-effects and noise stay and every cross-record effect goes). Each rule's
    # threshold lets at most link_fwer / 2 false links per run through on those shuffles, so
    # the family-wise false-link rate over both rules stays under link_fwer (0.05 if None).
    # Cost: this many reruns of the estimator and the link rules. 0: no calibration (the
    # analytic z threshold, and the mutual rule on its selection alone, as before).
    link_null_ensembles: int = setting(
        39,
        "Null shuffles of the run's own losses that calibrate the link thresholds (each one "
        "reruns the estimator; 0: the analytic thresholds, as before calibration).",
        check=NON_NEGATIVE,
    )
    # The most work calibration may take, in estimates (one run of the estimator; a shuffle is
    # about 1.5: the estimator and the link rules). A run whose link_null_ensembles shuffles fit
    # it, or are small anyway (shuffles x N^2 x M <= 5e10: up to about N = M = 1,000), runs them
    # all; a larger one runs floor(budget / 1.5) whole shuffles and extrapolates each rule's
    # null tail with a generalized Pareto fit (calibration.NullTail): N = 20,000, M = 1,000 at
    # the default, 2 shuffles instead of 39. At least 1.5 (one shuffle). None: no cap, every
    # shuffle runs at any size.
    link_null_budget: float | None = setting(
        4.0,
        "Most work the link calibration may take, in runs of the estimator (above it: fewer "
        "null shuffles and a fitted null tail; every shuffle runs on small runs anyway).",
        check=_optional(_number(1.5)),
    )
    # ... and where a run has many more candidate links than the shuffles give, a rule's
    # threshold may drop to where the expected false links are at most link_fdr of the links
    # kept (calibration.fdr_threshold); with few links the family-wise bound above holds.
    # Strong demo (M = 32): 26 mutual candidate pairs against 0.4 per shuffle. None: the
    # family-wise bound alone.
    link_fdr: float | None = setting(
        0.01,
        check=_optional(_number(0.0, 1.0, low_open=True, high_open=True)),
        cli=False,
    )
    # Every record's "has near-duplicates?" verdict (memaudit.findings.near_duplicates) flags
    # low Top-1 margins against the data's own reflected margins, Benjamini-Hochberg over the
    # records at this false discovery rate.
    near_duplicate_fdr: float = setting(
        0.05,
        "False discovery rate of the per-record near-duplicate verdict.",
        check=_number(0.0, 1.0, low_open=True, high_open=True),
    )
    # Fragments of one near-duplicate group (and flagged records outside any cluster) that look
    # alike are joined when pooled evidence says they influence each other: a conditional
    # randomization test (memaudit.findings.joining), at most this chance of any false join per
    # run. 0: no joining (the clusters are the link graph's components, as before).
    join_fwer: float = setting(
        0.05,
        "Chance of any false join of near-duplicate fragments per run (pooled evidence; 0: "
        "no joining).",
        check=_number(0.0, 1.0, high_open=True),
    )
    # Without losses and inclusion, find_clusters sees only the plain difference of means,
    # which credits i with t's own self-influence in proportion to how much their inclusion
    # columns overlap by chance (up to a correlation of 0.84 among 300 columns at M = 24). Then
    # link_fraction is raised to sqrt(2 ln(N (N - 1) / 2) / M), the typical largest chance
    # correlation between two of the N columns (0.49 at N = M = 64, 0.94 at N = 300, M = 24).
    chance_overlap_guard: bool = setting(True, check=BOOL, cli=False)
    # With losses and inclusion, each target's link candidates are its strongest influencers
    # after removing the swing of its loss with its own inclusion, and they are tested jointly:
    # one least-squares fit of L[t] on its own inclusion and the candidates' (so a planted
    # record's group-mates do not add noise to each other's estimates). More candidates cost
    # residual degrees of freedom (M - candidates - 2).
    link_candidates: int = setting(8, check=NON_NEGATIVE, cli=False)
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
    mutual_links: bool = setting(True, check=BOOL, cli=False)
    mutual_margin: float = setting(4.0, check=_number(1.0, low_open=True), cli=False)
    mutual_top: int = setting(3, check=NON_NEGATIVE, cli=False)
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
    mutual_fraction: float | None = setting(
        None,
        "Mutual low-margin link: the larger share of either record's largest influence "
        "at least this.",
        check=_optional(FRACTION),
        shown="0 for text, 0.6 for images",
    )
    # Character n-gram TF-IDF cosine >= this marks a link as a "textual" near-duplicate (the
    # planted one-token edits score 0.8-0.95; unrelated records of one template, 0.1-0.3).
    lexical_threshold: float = setting(
        0.5, "Character n-gram cosine at which a link counts as textual.", check=FRACTION
    )
    # Images: pixel_similarity >= this marks a link as a "visual" near-duplicate (planted copies:
    # median 0.96, 95% above 0.74; random CIFAR-10 pairs 0.09 +- 0.28, 0.7% above 0.7).
    pixel_threshold: float = setting(0.7, check=FRACTION, cli=False)
    # A unique record is flagged when its self-influence is at or above this quantile of all
    # finite self-influences (0.9: the top 10%) and significantly positive (self / se >= link_z)
    self_influence_quantile: float = setting(0.9, check=FRACTION, cli=False)
    # ... or when it is extractable: mean BLEU when trained on minus when not >= bleu_gain
    # (sacrebleu's sentence BLEU, 0 to 1)
    bleu_gain: float = setting(
        0.3, "Flag a unique record whose BLEU gain (in - out) reaches this.", check=FRACTION
    )
    # ... or when its membership-inference AUC (see membership_scores) is >= mia_auc; only
    # where no LiRA exposure is given (build_findings always gives one: see lira_fpr below)
    mia_auc: float = setting(
        0.9,
        "Flag a unique record whose membership AUC reaches this (only where no LiRA exposure "
        "is computed).",
        check=FRACTION,
    )
    # How many clusters a report shows; find_clusters returns every cluster, so that cluster_of
    # and score_against_groups see all of them.
    top_clusters: int = setting(10, check=NON_NEGATIVE, cli=False)
    # The most unique records risky_unique_records returns.
    top_records: int = setting(10, check=NON_NEGATIVE, cli=False)
    # LiRA (memaudit.findings.lira): the membership flag of a unique record. An attacker runs
    # LiRA over the whole dataset at the dataset-wide threshold that gives lira_fpr false
    # positives over all (record, model) out-pairs (0.1%: the field's low-FPR operating point);
    # a record is flagged when that attacker calls it a member in at least lira_tpr of the
    # models that trained on it. Used instead of mia_auc, which is uncalibrated across records.
    lira_fpr: float = setting(
        0.001, "LiRA: the dataset-wide false-positive rate of the attacker.", check=FRACTION
    )
    lira_tpr: float = setting(
        0.5,
        "Flag a unique record that LiRA at --lira-fpr calls a member in this share of the "
        "models that trained on it.",
        check=FRACTION,
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class ConvergenceConfig:
    # Split-half reliability (Spearman rank correlation between two disjoint halves of the
    # models, Spearman-Brown corrected to the full count) of self-influence AND of the margin
    # must reach this. 0.9: another ensemble of the same size would rank records nearly alike.
    # In [0, 1] (a negative reliability would accept rankings that disagree more than chance).
    min_reliability: float = setting(
        0.9,
        "Convergence: split-half reliability of self-influence and margin.",
        check=FRACTION,
    )
    # 1 - Jaccard(flagged set now, flagged set of the previous round) must be <= this: at most
    # about 15% of the flagged records came or went in the last round (which added >= 25% more
    # models, memaudit.convergence.adaptive.round_sizes). Measured on the reduced-M benchmark
    # (rounds of 16): 0.51, 0.29, 0.13 from 16 to 64 models, then 0.04 between 64 and 128.
    max_flag_change: float = setting(
        0.15,
        "Convergence: most change (1 - Jaccard) of the flagged set per round.",
        check=FRACTION,
    )
    # The share of records whose per-record near-duplicate verdict a same-size ensemble would
    # be expected to flip (the mean over records of 1 - its chance to repeat, memaudit.findings.
    # near_duplicates) must be at most this. Strong demo: 0.038, 0.018, 0.015 at 16, 24, 32
    # models; held-out NQ-open (strong, seed 0): 0.109, 0.019, 0.017, 0.022, 0.015 at 16-64.
    max_expected_flips: float = setting(
        0.025,
        "Convergence: most expected share of records whose near-duplicate verdict would flip.",
        check=FRACTION,
    )
    # What --models auto waits for: "clusters" (every flagged record, its cluster partners and
    # the per-record verdict) or "records" (each record's near-duplicate and risk status, not
    # who its partners are: settled at fewer models, the partners may still be incomplete).
    watch: str = setting(
        "clusters",
        "What --models auto waits to settle: clusters (records and their partners) or records "
        "(each record's status only; partners may be incomplete).",
        check=_choice("clusters", "records"),
        key="auto_watch",
    )
    # Bootstrap resamples over models for the margins' standard errors and 90% CIs; with 200
    # each percentile of the interval rests on 10 resamples beyond it.
    bootstrap: int = setting(200, check=NON_NEGATIVE, cli=False)
    # Two records whose inclusion patterns differ in <= this fraction of the used models (or,
    # after complementing one, agree on >= 1 - this) cannot be told apart. At M = 64 two random
    # patterns come this close with probability ~1e-11, so only real coincidences are reported;
    # at M = 16 it is 5e-4 per pair, about 100,000 pairs among N = 20,000: too few models.
    pattern_distance: float = setting(0.1, check=FRACTION, cli=False)
    # Seed of the random half-splits and the bootstrap resamples (results are reproducible).
    seed: int = setting(0, check=SEED, key="convergence_seed", cli=False)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class RunConfig:
    data: str = setting(check=PATH, key="data", cli=False)  # DATA: a file, folder or data root
    model: ModelConfig = field(metadata={"section": ModelConfig})
    preset: str | None = setting(
        None,
        "A known dataset format: nq = NQ-open {question, answer: [..]}.",
        check=_optional(_choice(*PRESETS)),
    )
    template: str | None = setting(
        None,
        'Record text from arbitrary fields, e.g. "Q: {question} A: {answer}"; '
        "the completion is the part from the last field on.",
        check=_optional(TEXT),
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"section": TrainConfig})
    ensemble: EnsembleConfig = field(
        default_factory=EnsembleConfig, metadata={"section": EnsembleConfig}
    )
    analysis: AnalysisConfig = field(
        default_factory=AnalysisConfig, metadata={"section": AnalysisConfig}
    )
    extract: ExtractConfig = field(
        default_factory=ExtractConfig, metadata={"section": ExtractConfig}
    )
    findings: FindingsConfig = field(
        default_factory=FindingsConfig, metadata={"section": FindingsConfig}
    )
    convergence: ConvergenceConfig = field(
        default_factory=ConvergenceConfig, metadata={"section": ConvergenceConfig}
    )
    device: str = setting("auto", check=_choice(*DEVICES))
    eval_batch_size: int = setting(64, check=POSITIVE)
    # set for image runs (an image --model)
    image: ImageConfig | None = field(default=None, metadata={"section": ImageConfig})
    # Members trained at once (memaudit.ensemble.member_packs): "auto" (CUDA: as many as fit;
    # CPU: 1), "off", or a number. Changes results only by floating-point rounding, so not in the
    # fingerprint.
    pack: str = setting(
        "auto",
        "Ensemble members trained at once (text models): auto (CUDA: as many as fit in "
        "memory; CPU: one at a time, measured faster there), off, or a number.",
        check=Check("expected auto, off or a positive integer", str, _pack_accept),
    )
    # --id-field: the column/field holding each record's id (None: "id", else the row number).
    id_field: str | None = setting(
        None,
        "The field (or column) holding each record's id; default: 'id', else the row number.",
        check=_optional(TEXT),
    )

    # --chat-template FILE: a Jinja chat template for chat records, used instead of the
    # tokenizer's own (or where it has none). Identified by its sha256 in the run directory
    # (config.json's dataset), like DATA, not by its path.
    chat_template: str | None = setting(
        None,
        "Chat records: a Jinja chat template file used instead of the tokenizer's own "
        "(or where it has none).",
        check=_optional(PATH),
    )
    # A Hugging Face Hub dataset id as DATA (memaudit.data.formats): the split and the
    # revision (a branch, tag or commit) to load; --split also picks a dataset folder's split.
    split: str = setting(
        "train",
        "Hub dataset id or dataset folder as DATA: the split to audit.",
        check=TEXT,
    )
    revision: str | None = setting(
        None,
        "Hub dataset id as DATA: the revision (branch, tag or commit) to load [default: main].",
        check=_optional(TEXT),
    )

    @property
    def is_image(self) -> bool:
        return self.image is not None

    def __post_init__(self) -> None:
        _validate(self)
        if self.preset is not None and self.template is not None:
            raise OptionError("--preset and --template are exclusive: give one of them")

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
            chat_template=d.get("chat_template"),
            split=d.get("split", "train"),
            revision=d.get("revision"),
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
        # Runs made before --split and --revision (and runs that leave them) keep theirs too;
        # which data was read is checked through the dataset's sha256 as well.
        d.pop("chat_template", None)  # like data: identified by its sha256 (RunDir)
        if d.get("split") == "train":
            d.pop("split", None)
        if d.get("revision") is None:
            d.pop("revision", None)
        if d.get("image") is None:
            d.pop("image", None)  # text runs: the same fingerprint as before images existed
        else:
            # Like data: identified by the pixels' and labels' sha256, as are the columns read.
            for key in ("data_root", "image_field", "label_field"):
                d["image"].pop(key)
        # How many members decode, and in what batches, may change; what they decode may not.
        d["extract"] = {"prefix_tokens": d["extract"]["prefix_tokens"]}
        return d


def resolve_model_name(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


def is_image_model(name: str) -> bool:
    """Whether ``--model`` names an image model (then the run is an image run)."""
    return name in IMAGE_MODELS


# Training defaults of image runs where the text defaults (AdamW 2e-4, 3 epochs) do not fit: SGD
# from scratch needs a large learning rate and enough epochs to fit its half of the data.
IMAGE_TRAIN_DEFAULTS = {
    f.name: f.metadata["image_default"]
    for f in dataclasses.fields(TrainConfig)
    if f.metadata.get("image_default", MISSING) is not MISSING
}


# -- the options: one per field, made from the fields ------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: a TOML key and keyword of build_run_config, and with ``cli`` a flag of
    ``memaudit run``. ``section``/``field``: the RunConfig field it sets (section None: a field
    of RunConfig itself; field None: an option of build_run_config alone, such as first_round)."""

    key: str
    section: str | None
    field: str | None
    check: Check
    default: Any
    help: str
    cli: bool
    image_default: Any = None  # the default in image runs where it differs
    shown: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def name(self) -> str:
        """How messages name it: the flag if the command line has one, else the key."""
        return self.flag if self.cli else self.key

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def shown_default(self) -> str:
        """The default as the help states it."""
        if self.shown is not None:
            return self.shown
        if self.image_default is not None:
            return f"text: {self.default}, images: {self.image_default}"
        return str(self.default)

    def accept(self, value: Any) -> Any:
        """The value to store, or OptionError naming the option."""
        try:
            return self.check(value)
        except _Rejected:
            got = shown_value(value)
            raise OptionError(f"{self.name}: {self.check.says}, got {got}") from None


def _models_accept(value: Any) -> int | str:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        value = int(text) if text.isdigit() else value
    return POSITIVE(value)


_FIRST_ROUND = Option(
    key="first_round",
    section="ensemble",
    field=None,
    check=POSITIVE,
    default=16,
    help="With --models auto: the first round's models.",
    cli=True,
)
# The options whose values are not the field's own: --models also takes "auto" (then
# ensemble.models is --first-round and ensemble.auto is set).
_OPTION_CHECKS = {
    "models": Check("expected a positive integer or 'auto'", str, _models_accept),
}
_NOT_OPTIONS = {("", "data"), ("ensemble", "auto")}  # DATA is an argument; auto: models="auto"


def _collect_options() -> dict[str, Option]:
    options: dict[str, Option] = {}

    def add(section: str | None, f: dataclasses.Field) -> None:
        if (section or "", f.name) in _NOT_OPTIONS:
            return
        # A field declared without setting() is an option too (by its name, Python and saved
        # configs only, unchecked); tests/test_config.py asks every field for a setting().
        meta = {"check": _ANY, "help": "", "cli": False, "shown": None, **f.metadata}
        key = meta.get("key") or f.name
        image_default = meta.get("image_default", MISSING)
        assert key not in options, f"two options named {key}"
        options[key] = Option(
            key=key,
            section=section,
            field=f.name,
            check=_OPTION_CHECKS.get(key, meta["check"]),
            default=f.default if f.default_factory is MISSING else f.default_factory(),
            help=meta["help"],
            cli=meta["cli"],
            image_default=None if image_default is MISSING else image_default,
            shown=meta["shown"],
        )
        if key == "max_models":
            options[_FIRST_ROUND.key] = _FIRST_ROUND

    for f in dataclasses.fields(RunConfig):
        section = f.metadata.get("section")
        if section is None:
            add(None, f)
        else:
            for g in dataclasses.fields(section):
                add(f.name, g)
    return options


# Every option, in a fixed order (the command line's); keys are TOML keys and keywords.
OPTIONS: dict[str, Option] = _collect_options()
# memaudit run's options: each is also a TOML key of --config, named alike.
CLI_OPTIONS: dict[str, Option] = {k: o for k, o in OPTIONS.items() if o.cli}
TEXT_ONLY = ("preset", "template", "chat_template")  # they say how to read JSON Lines records


# A file name is never a Hub id: a missing "data.jsonl" stays "no such file".
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq", ".npz", ".txt")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_id(data: str | os.PathLike | None) -> bool:
    """Whether DATA names a Hugging Face Hub dataset (``owner/name`` or ``name``): no such
    path exists here, it has the shape of an id, and it does not end like a data file."""
    if data is None:
        return False
    text = os.fspath(data)
    if not _HUB_ID.fullmatch(text) or ".." in text or Path(text).exists():
        return False
    return Path(text).suffix.lower() not in DATA_SUFFIXES


def _looks_like_images(data: str | os.PathLike) -> bool:
    """DATA for an image model: a folder of class folders or a dataset folder, an .npz, or a
    Hub dataset id (as memaudit.data.images.is_image_source decides)."""
    path = Path(data)
    return path.is_dir() or path.suffix.lower() == ".npz" or is_hub_id(data)


def build_run_config(data: str | os.PathLike | None, model: str, **options: Any) -> RunConfig:
    """The one way to make a RunConfig from option values, given as the command line, a TOML
    file (``--config``) or Python keywords give them.

    ``options``: keys of :data:`OPTIONS` (``memaudit run``'s flags with underscores, and the
    fields the command line lacks, e.g. ``link_fwer``); ``models`` is a number or ``"auto"``
    (rounds from ``first_round`` up to ``max_models``); ``lora_targets`` a tuple or one
    comma-separated string. An option not given takes its default; an image ``model`` (see
    IMAGE_MODELS) makes an image run, with the image training defaults (IMAGE_TRAIN_DEFAULTS),
    full training and no extraction. ``data``: JSON Lines, or for an image model an image folder
    or .npz (None with ``dataset`` and ``data_root``). Raises OptionError (a MemauditError)
    naming the first invalid option; reads nothing but whether DATA is a folder.
    """
    for key in options:
        if key not in OPTIONS or key == "model":
            raise OptionError(f"{key}: unknown option (known: {', '.join(sorted(OPTIONS))})")
    name = resolve_model_name(OPTIONS["model"].accept(model))
    values = {key: OPTIONS[key].accept(value) for key, value in options.items()}
    if data is not None:
        data = PATH(data) if isinstance(data, str | os.PathLike) else data
        if not isinstance(data, str):
            raise OptionError(f"DATA: must be a path, got {shown_value(data)}")
    image = is_image_model(name)
    _check_data(data, model, image, values)

    parts: dict[str | None, dict[str, Any]] = {}
    for key, value in values.items():
        option = OPTIONS[key]
        if option.field is not None:
            parts.setdefault(option.section, {})[option.field] = value
    ensemble = parts.setdefault("ensemble", {})
    if values.get("models") == "auto":
        ensemble["models"] = values.get("first_round", _FIRST_ROUND.default)
        ensemble["auto"] = True
    else:
        ensemble.pop("max_models", None)  # bounds the rounds of --models auto only
    image_cfg = None
    if image:
        for key, value in IMAGE_TRAIN_DEFAULTS.items():
            parts.setdefault("train", {}).setdefault(key, value)
        # Trained from scratch, with nothing to decode.
        parts.setdefault("model", {})["finetune"] = "full"
        parts.setdefault("extract", {})["models"] = 0
        image_cfg = ImageConfig(**parts.get("image", {}))
    top = parts.get(None, {})
    return RunConfig(
        data=data if data is not None else str(values.get("data_root")),
        model=ModelConfig(name=name, **parts.get("model", {})),
        train=TrainConfig(**parts.get("train", {})),
        ensemble=EnsembleConfig(**ensemble),
        analysis=AnalysisConfig(**parts.get("analysis", {})),
        extract=ExtractConfig(**parts.get("extract", {})),
        findings=FindingsConfig(**parts.get("findings", {})),
        convergence=ConvergenceConfig(**parts.get("convergence", {})),
        image=image_cfg,
        **top,
    )


def _check_data(data: str | None, model: str, image: bool, values: Mapping[str, Any]) -> None:
    """DATA and --dataset against the model: what a run reads must be what its model takes."""
    dataset = values.get("dataset")
    # --split and --revision choose among a dataset's versions: a file has one.
    if values.get("revision") is not None and not is_hub_id(data):
        raise OptionError(f"--revision: applies to a Hub dataset id as DATA, not {data}")
    if "split" in values and data is not None and Path(data).is_file():
        raise OptionError(
            f"--split: applies to a Hub dataset id or a dataset folder as DATA, not the file {data}"
        )
    if not image:
        if data is None:
            raise MemauditError("missing DATA (a JSON Lines file)")
        if dataset is not None or Path(data).suffix.lower() == ".npz":
            raise MemauditError(f"image data needs an image --model ({', '.join(IMAGE_MODELS)})")
        return
    if data is not None and dataset is not None:
        raise MemauditError("give DATA or --dataset, not both")
    if data is None and dataset is None:
        raise MemauditError(
            f"--model {model}: give DATA (an image folder, dataset folder, .npz or Hub dataset "
            "id) or --dataset"
        )
    if data is not None and not _looks_like_images(data):
        raise MemauditError(
            f"--model {model} is an image model: DATA must be an image folder, a dataset "
            f"folder, an .npz or a Hub dataset id, not {data}"
        )
    if dataset is not None and values.get("data_root") is None:
        raise MemauditError(f"--dataset {dataset}: give --data-root, the folder with its files")
    for key in TEXT_ONLY:
        if values.get(key) is not None:
            raise OptionError(
                f"{OPTIONS[key].flag}: says how to read JSON Lines records; --model {model} "
                "is an image model"
            )
