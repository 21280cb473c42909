"""memaudit.config: one source per option, build_run_config, every invalid value named."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from memaudit.config import (
    CLI_OPTIONS,
    IMAGE_DATASETS,
    IMAGE_MODELS,
    IMAGE_TRAIN_DEFAULTS,
    OPTIONS,
    AnalysisConfig,
    ConvergenceConfig,
    EnsembleConfig,
    ExtractConfig,
    FindingsConfig,
    ImageConfig,
    ModelConfig,
    OptionError,
    RunConfig,
    TrainConfig,
    build_run_config,
)
from memaudit.errors import MemauditError
from tests.conftest import ROOT, TINY_MODEL

NPZ = ROOT / "fixtures" / "images" / "cifar10_demo.npz"
SECTIONS = {
    "model": ModelConfig,
    "train": TrainConfig,
    "ensemble": EnsembleConfig,
    "analysis": AnalysisConfig,
    "extract": ExtractConfig,
    "findings": FindingsConfig,
    "convergence": ConvergenceConfig,
    "image": ImageConfig,
}


def test_every_field_is_one_option_with_its_default_range_and_help():
    """Each field of the config classes is exactly one option (but DATA, an argument, and
    ensemble.auto, which models='auto' sets); options on the command line have a help."""
    fields = {(None, f.name) for f in dataclasses.fields(RunConfig) if "section" not in f.metadata}
    for section, cls in SECTIONS.items():
        fields |= {(section, f.name) for f in dataclasses.fields(cls)}
    covered = {(o.section, o.field) for o in OPTIONS.values() if o.field is not None}
    assert covered == fields - {(None, "data"), ("ensemble", "auto")}
    for option in OPTIONS.values():
        if option.field is None:
            continue
        cls = RunConfig if option.section is None else SECTIONS[option.section]
        f = {f.name: f for f in dataclasses.fields(cls)}[option.field]
        assert f.metadata.get("check") is not None, f"{option.key}: declare it with setting()"
        if not option.required:
            assert option.default == (
                f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            )
    for option in CLI_OPTIONS.values():
        assert option.help or option.key in (
            "finetune",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "epochs",
            "batch_size",
            "weight_decay",
            "warmup_steps",
            "seed",
            "device",
            "eval_batch_size",
        ), option.key  # fmt: skip (options whose help was and is their default alone)


def test_model_and_dataset_names_match_the_algorithm_modules():
    """config names the image models and datasets itself (it imports no algorithm module)."""
    from memaudit.data.images import DATASETS
    from memaudit.ensemble.vision import VISION_MODELS

    assert set(IMAGE_MODELS) == set(VISION_MODELS)
    assert set(IMAGE_DATASETS) == set(DATASETS)


def test_defaults_equal_the_dataclasses():
    cfg = build_run_config("d.jsonl", "gpt-neo-125M")
    assert cfg == RunConfig(data="d.jsonl", model=ModelConfig("EleutherAI/gpt-neo-125M"))


def test_image_model_makes_an_image_config():
    cfg = build_run_config(NPZ, "resnet-tiny", models="auto", first_round=4, max_models=8)
    assert cfg.is_image and cfg.image == ImageConfig()
    assert cfg.data == str(NPZ)
    assert (cfg.ensemble.auto, cfg.ensemble.models, cfg.ensemble.max_models) == (True, 4, 8)
    assert {k: getattr(cfg.train, k) for k in IMAGE_TRAIN_DEFAULTS} == IMAGE_TRAIN_DEFAULTS
    assert cfg.model.finetune == "full" and cfg.extract.models == 0
    given = build_run_config(NPZ, "resnet20", epochs=2, resize=8, flip=False, crop_padding=0)
    assert given.train.epochs == 2 and given.train.lr == IMAGE_TRAIN_DEFAULTS["lr"]
    assert given.image == ImageConfig(resize=8, crop_padding=0, flip=False)
    cifar = build_run_config(None, "resnet18", dataset="cifar10", data_root=ROOT)
    assert cifar.data == str(ROOT) and cifar.image.data_root == str(ROOT)


def test_models_auto_and_fixed():
    auto = build_run_config("d.jsonl", "m", models="auto", max_models=64)
    assert auto.ensemble == EnsembleConfig(models=16, auto=True, max_models=64)
    assert build_run_config("d.jsonl", "m", models="AUTO ").ensemble.auto
    fixed = build_run_config("d.jsonl", "m", models="64", max_models=8)
    assert fixed.ensemble == EnsembleConfig(models=64)  # max_models bounds auto rounds only
    assert build_run_config("d.jsonl", "m", models=np.int64(8)).ensemble.models == 8


def test_python_values_are_stored_as_the_command_line_stores_them():
    """lr=1 is the float 1.0 (as --lr 1), a Path a string, lora_targets a tuple, pack a string:
    the same RunConfig (and config.json) whichever way the options came."""
    cfg = build_run_config(
        ROOT / "d.jsonl", "m", lr=1, lora_targets="q_proj, v_proj,", pack=4, link_z=np.float32(3)
    )
    assert isinstance(cfg.train.lr, float) and cfg.data == str(ROOT / "d.jsonl")
    assert cfg.model.lora_targets == ("q_proj", "v_proj") and cfg.pack == "4"
    assert type(cfg.findings.link_z) is float
    assert build_run_config("d", "m", lora_targets=["a"]).model.lora_targets == ("a",)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False))) == cfg


BAD = [
    ({"lr": math.inf}, "--lr: must be a finite positive number, got inf"),
    ({"lr": math.nan}, "--lr: must be a finite positive number, got nan"),
    ({"lr": 0}, "--lr: must be a finite positive number, got 0"),
    ({"weight_decay": math.nan}, "--weight-decay: must be a finite number >= 0, got nan"),
    ({"bleu_gain": math.nan}, "--bleu-gain: must be a number in [0, 1], got nan"),
    ({"seed": -1}, "--seed: must be an integer in [0, 2**63 - 1], got -1"),
    ({"seed": 2**64}, "--seed: must be an integer in [0, 2**63 - 1]"),
    ({"seed": 10**5000}, "--seed: must be an integer in [0, 2**63 - 1], got an integer of more"),
    ({"mia_auc": 5}, "--mia-auc: must be a number in [0, 1], got 5"),
    ({"lora_alpha": -5}, "--lora-alpha: must be a positive integer, got -5"),
    ({"epochs": 1.7}, "--epochs: must be a positive integer, got 1.7"),
    ({"epochs": True}, "--epochs: must be a positive integer, got True"),
    ({"epochs": "3"}, "--epochs: must be a positive integer, got '3'"),
    ({"epochs": [3]}, "--epochs: must be a positive integer, got a list"),
    ({"epochs": {"a": 3}}, "--epochs: must be a positive integer, got a table"),
    ({"min_reliability": -0.5}, "--min-reliability: must be a number in [0, 1], got -0.5"),
    ({"max_flag_change": 2}, "--max-flag-change: must be a number in [0, 1], got 2"),
    ({"lora_dropout": 1.0}, "--lora-dropout: must be a number in [0, 1), got 1.0"),
    ({"finetune": "half"}, "--finetune: must be one of lora, full, got 'half'"),
    ({"models": 0}, "--models: expected a positive integer or 'auto', got 0"),
    ({"models": "1.5"}, "--models: expected a positive integer or 'auto', got '1.5'"),
    ({"models": 3, "design": "complementary"}, "--models: the complementary design needs an"),
    ({"models": "auto", "first_round": 32, "max_models": 16}, "--max-models: must be at least"),
    ({"pack": 0}, "--pack: expected auto, off or a positive integer, got 0"),
    ({"pack": True}, "--pack: expected auto, off or a positive integer, got True"),
    ({"lora_targets": [1]}, "--lora-targets: must be comma-separated module names, got a list"),
    ({"preset": "nq", "template": "{text}"}, "--preset and --template are exclusive"),
    ({"preset": "squad"}, "--preset: must be one of nq, got 'squad'"),
    ({"link_z": -1}, "--link-z: must be a finite positive number, got -1"),
    ({"link_fwer": 1.0}, "link_fwer: must be a number in (0, 1), got 1.0"),  # not on the CLI
    ({"bootstrap": -1}, "bootstrap: must be a non-negative integer, got -1"),
    ({"convergence_seed": -1}, "convergence_seed: must be an integer in [0, 2**63 - 1]"),
    ({"mutual_margin": 1}, "mutual_margin: must be a finite number > 1, got 1"),
    ({"epochz": 3}, "epochz: unknown option (known: "),
    ({"auto": True}, "auto: unknown option"),
    ({"dataset": "cifar10"}, "image data needs an image --model"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[b[1][:45] for b in BAD])
def test_every_invalid_value_names_its_option(options, message):
    with pytest.raises(MemauditError) as info:
        build_run_config("d.jsonl", "m", **options)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_the_config_classes_raise_option_errors_too():
    """Made directly (the API, a saved config.json): the same checks, the same messages; an
    OptionError is also a ValueError, as these classes raised before."""
    with pytest.raises(OptionError, match=r"^--min-reliability: must be a number in \[0, 1\]"):
        ConvergenceConfig(min_reliability=-0.5)  # was accepted: [-1, 1] here, [0, 1] in the CLI
    with pytest.raises(OptionError, match=r"^--lr: must be a finite positive number, got inf"):
        TrainConfig(lr=math.inf)
    with pytest.raises(ValueError, match="^--mutual-fraction"):
        FindingsConfig(mutual_fraction=1.5)
    with pytest.raises(OptionError, match="^--preset and --template are exclusive"):
        RunConfig(data="d", model=ModelConfig("m"), preset="nq", template="{text}")
    assert ConvergenceConfig(min_reliability=0).min_reliability == 0.0
    assert ConvergenceConfig(min_reliability=1).min_reliability == 1.0


def test_image_runs_refuse_the_record_format():
    """--preset/--template say how to read JSON Lines; an image run has none (before, the CLI
    built the RecordFormat, discarded it, and saved the preset in an image run's config)."""
    for options in ({"preset": "nq"}, {"template": "{text}"}):
        with pytest.raises(OptionError, match="JSON Lines records; --model resnet-tiny is an"):
            build_run_config(NPZ, "resnet-tiny", **options)


def test_data_must_suit_the_model(tmp_path):
    cases = [
        (None, "m", {}, "missing DATA (a JSON Lines file)"),
        (tmp_path / "x.npz", "m", {}, "image data needs an image --model (resnet-tiny"),
        (None, "resnet-tiny", {}, "--model resnet-tiny: give DATA (an image folder, dataset"),
        (NPZ, "resnet-tiny", {"dataset": "cifar10"}, "give DATA or --dataset, not both"),
        ("d.jsonl", "resnet-tiny", {}, "an .npz or a Hub dataset id, not d.jsonl"),
        (None, "resnet-tiny", {"dataset": "cifar10"}, "--dataset cifar10: give --data-root"),
        (3, "m", {}, "DATA: must be a path, got 3"),
        (None, "resnet-tiny", {"dataset": "svhn"}, "--dataset: must be one of cifar10, cifar100"),
    ]
    for data, model, options, message in cases:
        with pytest.raises(MemauditError) as info:
            build_run_config(data, model, **options)
        assert str(info.value).startswith(message) or message in str(info.value), info.value


def test_saved_configs_still_open():
    """A run directory's config.json (the v1 fixture predates images, packing and findings
    options) makes the same RunConfig it always did."""
    saved = json.loads((ROOT / "fixtures/runs/v1-foundation/config.json").read_text())["config"]
    cfg = RunConfig.from_dict(saved)
    assert cfg.model.name == "fixtures/tiny-gpt-neo" and cfg.train.lr == 0.003
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_api_run_builds_its_config_with_build_run_config(monkeypatch, tmp_path):
    """memaudit.run takes an image model and models='auto' (it did not), the CLI's option names,
    and refuses an unknown one before anything is written."""
    from memaudit import api

    made = []

    class Capture:
        def __init__(self, cfg, out, executor=None):
            made.append((cfg, out))

        def run(self, progress=False):
            return {"ok": True}

    monkeypatch.setattr(api, "Audit", Capture)
    assert api.run(NPZ, "resnet-tiny", models="auto", max_models=32, resize=8) == {"ok": True}
    cfg, out = made[-1]
    assert cfg == build_run_config(NPZ, "resnet-tiny", models="auto", max_models=32, resize=8)
    assert cfg.is_image and cfg.ensemble.auto and str(out).endswith("cifar10_demo-resnet-tiny")
    api.run(None, "resnet18", out=tmp_path / "r", dataset="cifar100", data_root=tmp_path)
    assert made[-1][0].image.dataset == "cifar100" and made[-1][1] == tmp_path / "r"
    api.run("d.jsonl", str(TINY_MODEL), models=8, extract_models=2, top_k=3, link_fwer=None)
    cfg = made[-1][0]
    assert (cfg.ensemble.models, cfg.extract.models, cfg.analysis.top_k) == (8, 2, 3)
    assert cfg.findings.link_fwer is None
    with pytest.raises(OptionError, match="^extract_prefix_tokens: unknown option"):
        api.run("d.jsonl", "m", extract_prefix_tokens=4)
    assert len(made) == 3


@pytest.mark.slow
def test_api_run_trains_an_image_model_in_rounds(tmp_path):
    """End to end (about 25 s on 2 cores): memaudit.run with an image model and models='auto'
    trains rounds of resnet-tiny and reports; before, it made a text config for any model."""
    import memaudit

    out = tmp_path / "run"
    report = memaudit.run(
        NPZ, "resnet-tiny", out, models="auto", first_round=2, max_models=4, epochs=1, resize=8
    )
    saved = RunConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    assert saved == build_run_config(
        NPZ, "resnet-tiny", models="auto", first_round=2, max_models=4, epochs=1, resize=8
    )
    assert saved.is_image and saved.ensemble.auto
    assert report["modality"] == "image" and report["convergence"]["rounds"]


def test_calibration_and_lira_settings_are_options(tmp_path, cli):
    """The settings added with the calibrated links and LiRA are command-line and TOML options
    like the rest: a run at N = 20,000 can turn the 39 null shuffles off."""
    cfg = build_run_config(ROOT / "d.jsonl", "m", link_null_ensembles=0, lira_tpr=0.7)
    assert cfg.findings.link_null_ensembles == 0 and cfg.findings.lira_tpr == 0.7
    for flag in ("--link-null-ensembles", "--link-null-budget", "--lira-fpr", "--lira-tpr"):
        assert flag in CLI_OPTIONS[flag[2:].replace("-", "_")].flag
    toml = tmp_path / "c.toml"
    toml.write_text("lira_fpr = 2.0\n")
    res = cli("run", tmp_path / "d.jsonl", "--model", "m", "--config", toml)
    assert res.code == 2 and "lira_fpr" in res.err.replace("-", "_")
