"""What a run's modality (text or image) is and supports: pure data that every stage asks
instead of testing types or configuration fields.

The behaviour stays in the stage that owns it (the member tasks in memaudit.ensemble, the
similarities in memaudit.findings.similarity, the image part of the report in
memaudit.report.images); this module only says which applies. It sits just above the errors, so
that the configuration, the findings and the report can all ask it, and it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Modality:
    name: str  # "text" | "image": the report's "modality"
    unit: str  # what one record is, in messages: "records" | "images"
    # How the similarity of two linked records is measured (memaudit.findings.similarity):
    # "lexical" (character n-gram TF-IDF) or "pixel"; the Link field and the FindingsConfig
    # threshold carry the same prefix (lexical_similarity, lexical_threshold).
    similarity: str
    similarity_label: str  # how cluster reasons name it: "similarity" | "pixel similarity"
    near_duplicate: str  # a cluster whose links are all similar: "textual" | "visual"
    # FindingsConfig.mutual_fraction when it is None (see there for the measurements).
    mutual_fraction: float
    pretrained: bool  # members fine-tune a pretrained model (text) or train from scratch
    tokenized: bool  # records are tokenized for a language model
    decodes: bool  # members generate from prompts: extractability (BLEU, exact match)
    classifies: bool  # members are classifiers: accuracy in/out, the memorization score
    stores_pixels: bool  # the run directory keeps the pixels (images.npz)
    packs: bool  # K members can train at once (memaudit.ensemble.member_packs)
    forks: bool  # members can train in forked CPU worker processes
    shards: bool  # `memaudit train --shard` (a run directory alone sets up training)
    ray: bool  # `--executor ray`

    @property
    def similarity_field(self) -> str:
        """The Link field that holds a link's similarity."""
        return f"{self.similarity}_similarity"

    @property
    def threshold_field(self) -> str:
        """The FindingsConfig field that marks a link as a near-duplicate."""
        return f"{self.similarity}_threshold"


TEXT = Modality(
    name="text",
    unit="records",
    similarity="lexical",
    similarity_label="similarity",
    near_duplicate="textual",
    mutual_fraction=0.0,
    pretrained=True,
    tokenized=True,
    decodes=True,
    classifies=False,
    stores_pixels=False,
    packs=True,
    forks=True,
    shards=True,
    ray=True,
)
IMAGE = Modality(
    name="image",
    unit="images",
    similarity="pixel",
    similarity_label="pixel similarity",
    near_duplicate="visual",
    mutual_fraction=0.6,
    pretrained=False,
    tokenized=False,
    decodes=False,
    classifies=True,
    stores_pixels=True,
    packs=False,  # image tasks hold their own model
    forks=False,
    shards=False,  # text-only in this release
    ray=False,
)
MODALITIES = {m.name: m for m in (TEXT, IMAGE)}


def modality_named(name: str | None) -> Modality:
    """The modality a report names (reports from before images existed name none: text)."""
    if name is None:
        return TEXT
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; one of {', '.join(MODALITIES)}")
    return MODALITIES[name]


def modality_of(config: Any) -> Modality:
    """The modality of a RunConfig (an image run has its ``image`` options set)."""
    return IMAGE if getattr(config, "image", None) is not None else TEXT


def saved_modality(saved: dict[str, Any]) -> Modality:
    """The modality of a run directory's config.json (RunDir.read_config())."""
    return IMAGE if saved.get("config", {}).get("image") is not None else TEXT
