"""The modality descriptors: what text and image runs support, found from a config, a saved
config.json or a report, and consistent with the fields they name."""

from __future__ import annotations

import dataclasses

import pytest

from memaudit.config import FindingsConfig, ImageConfig, ModelConfig, RunConfig
from memaudit.findings.clusters import Link
from memaudit.modality import (
    IMAGE,
    MODALITIES,
    TEXT,
    modality_named,
    modality_of,
    saved_modality,
)


def test_found_from_a_config_a_saved_config_and_a_report():
    text = RunConfig(data="d.jsonl", model=ModelConfig("m"))
    image = RunConfig(data="d.npz", model=ModelConfig("resnet-tiny"), image=ImageConfig())
    assert modality_of(text) is TEXT and modality_of(image) is IMAGE
    assert saved_modality({"config": text.to_dict()}) is TEXT
    assert saved_modality({"config": image.to_dict()}) is IMAGE
    assert saved_modality({"config": {}}) is TEXT  # a config.json from before images
    assert modality_named("image") is IMAGE and modality_named("text") is TEXT
    assert modality_named(None) is TEXT  # a report from before images names none
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        modality_named("audio")
    assert set(MODALITIES) == {"text", "image"}


def test_named_fields_exist():
    """The similarity a modality names is a Link field and a FindingsConfig threshold."""
    link_fields = {f.name for f in dataclasses.fields(Link)}
    cfg = FindingsConfig()
    for m in MODALITIES.values():
        assert m.similarity_field in link_fields
        assert 0.0 <= getattr(cfg, m.threshold_field) <= 1.0


def test_what_each_supports():
    # Text: pretrained language models that decode, pack, fork, shard and run on Ray.
    assert TEXT.decodes and TEXT.tokenized and TEXT.pretrained and not TEXT.classifies
    assert TEXT.packs and TEXT.forks and TEXT.shards and TEXT.ray
    # Images: classifiers trained from scratch, in this process only, pixels kept in the run.
    assert IMAGE.classifies and IMAGE.stores_pixels and not IMAGE.decodes
    assert not (IMAGE.packs or IMAGE.forks or IMAGE.shards or IMAGE.ray)
    # FindingsConfig.mutual_fraction = None resolves to these (see FindingsConfig).
    assert (TEXT.mutual_fraction, IMAGE.mutual_fraction) == (0.0, 0.6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TEXT.ray = False


def test_member_tasks_name_their_modality():
    from memaudit.ensemble.member import TextTask
    from memaudit.ensemble.vision import ImageTask

    assert TextTask.modality is TEXT and ImageTask.modality is IMAGE
