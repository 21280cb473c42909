import copy

import numpy as np
import pytest
import torch

from memaudit.config import ModelConfig, TrainConfig
from memaudit.data.records import Record
from memaudit.data.tokens import tokenize_records
from memaudit.ensemble import extract
from memaudit.ensemble.extract import aggregate, extraction_targets, greedy_continuations, score
from memaudit.ensemble.models import load_base_model
from memaudit.ensemble.train import train_member
from tests.conftest import TINY_MODEL, tiny_setup

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    return tiny_setup(24)


def test_targets_are_prompt_and_true_answer(setup):
    records, tok, tokens, _ = setup
    targets = extraction_targets(tokens, tok, prefix_tokens=32)
    for r, p, ref in zip(records, targets.prompts, targets.references, strict=True):
        assert tok.decode(p).rstrip() == r.prompt.rstrip()  # "Q: ... A:"
        assert ref == r.completion.strip()
    plain = [Record(0, "a", "one two three four five six seven eight", None, None, 1)]
    t = extraction_targets(tokenize_records(plain, tok, 64, "full", "d"), tok, prefix_tokens=3)
    assert len(t.prompts[0]) == 3 and t.references[0] and t.lengths[0] > 0


def _one_by_one(model, targets, tok) -> list[str]:
    """``generate`` record by record: batch size 1, no padding."""
    out = []
    for prompt, n in zip(targets.prompts, targets.lengths, strict=True):
        ids = torch.as_tensor(prompt)[None]
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=int(n),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return out


def _trained(model, tokens):
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=4, max_length=64)
    train_member(model, tokens, np.arange(12), cfg, seed=0, device=CPU)
    return model


def test_batched_greedy_equals_one_by_one(setup):
    records, tok, tokens, factory = setup
    model = _trained(factory.fresh(), tokens)
    targets = extraction_targets(tokens, tok, 32)
    usual = _one_by_one(model, targets, tok)
    assert len(set(usual)) > len(usual) // 2  # not a trivial model
    # Batch sizes that mix prompt and continuation lengths (left padding, rows leaving the
    # batch at different steps) and one that holds every record.
    for batch_size in (5, 7, 24):
        assert greedy_continuations(model, targets, tok, batch_size, CPU) == usual
    assert extract._LEAN[model] is not None  # the lean decoder, not generate
    # Trained records are reproduced better than held-out ones.
    bleu, _ = score(usual, targets.references)
    assert np.nanmean(bleu[:12]) > np.nanmean(bleu[12:])


def test_lean_greedy_with_lora(setup):
    _, tok, tokens, _ = setup
    torch.manual_seed(0)
    cfg = ModelConfig(str(TINY_MODEL), finetune="lora", lora_targets=("q_proj", "v_proj"))
    model = _trained(load_base_model(cfg, CPU, torch.float32), tokens)
    targets = extraction_targets(tokens, tok, 32)
    assert greedy_continuations(model, targets, tok, 7, CPU) == _one_by_one(model, targets, tok)
    assert extract._LEAN[model] is not None


def test_generate_fallback(setup):
    """A generation setting that changes greedy tokens (a repetition penalty) sends the model to
    ``generate``, which still agrees with the per-record loop."""
    _, tok, tokens, factory = setup
    plain = _trained(factory.fresh(), tokens)
    model = copy.deepcopy(plain)
    model.generation_config.repetition_penalty = 3.0
    targets = extraction_targets(tokens, tok, 32)
    got = greedy_continuations(model, targets, tok, 7, CPU)
    assert extract._LEAN[model] is None
    assert got == _one_by_one(model, targets, tok)
    assert got != greedy_continuations(plain, targets, tok, 7, CPU)  # the penalty matters


def test_score_bleu_and_exact():
    bleu, exact = score(
        ["the visceral membrane", "Paris", "x y"], ["the visceral membrane", "paris.", "a b"]
    )
    assert bleu[0] == pytest.approx(1.0) and bleu[2] == pytest.approx(0.0)
    assert exact.tolist() == [1.0, 1.0, 0.0]


def test_aggregate_in_out_means():
    bleu = np.array([[1.0, 0.0, 0.5, np.nan], [0.2, 0.4, 0.6, 0.8]])
    inc = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    agg = aggregate(bleu, bleu, inc)
    assert agg["bleu_in"].tolist() == [0.75, 0.7]
    assert agg["bleu_out"][0] == 0.0 and agg["bleu_out"][1] == pytest.approx(0.3)
    assert agg["n_extract_in"].tolist() == [2, 2] and agg["n_extract_out"].tolist() == [1, 2]
    assert agg["bleu_gain"][1] == pytest.approx(0.4)
