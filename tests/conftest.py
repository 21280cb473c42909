"""Shared fixtures: the bundled tiny model and demo data, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "fixtures" / "tiny-gpt-neo"
DEMO_DATA = ROOT / "fixtures" / "demo" / "nq_demo.jsonl"
DEMO_SOURCE = ROOT / "fixtures" / "demo" / "nq_source.jsonl"
DEMO_CONFIG = ROOT / "fixtures" / "demo" / "demo.toml"
# A quick text run of the tiny model (full fine-tuning, 2 epochs) for end-to-end tests.
SMALL_RUN = [
    "--model", str(TINY_MODEL), "--preset", "nq", "--finetune", "full", "--epochs", "2",
    "--lr", "3e-3", "--batch-size", "8", "--max-length", "64",
]  # fmt: skip

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``memaudit ARGS`` in-process, as the console script does, and capture the outcome."""
    from memaudit.cli import main

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["memaudit", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def tiny_setup(n_records: int):
    """(records, tokenizer, tokens, MemberFactory) for the first records of the demo source and
    the tiny GPT-Neo, fully fine-tuned on CPU."""
    import torch

    from memaudit.config import ModelConfig
    from memaudit.data.records import RecordFormat, load_records
    from memaudit.data.tokens import tokenize_records
    from memaudit.ensemble.models import MemberFactory, load_base_model, load_tokenizer

    records = load_records(DEMO_SOURCE, RecordFormat(preset="nq"))[:n_records]
    tok = load_tokenizer(str(TINY_MODEL))
    tokens = tokenize_records(records, tok, 64, "full", "demo")
    cfg = ModelConfig(str(TINY_MODEL), finetune="full")
    model = load_base_model(cfg, torch.device("cpu"), torch.float32)
    return records, tok, tokens, MemberFactory(model)
