import numpy as np
import pytest
import torch

from memaudit.config import TrainConfig
from memaudit.extract import aggregate, extraction_targets, greedy_continuations, score
from memaudit.records import Record
from memaudit.tokens import tokenize_records
from memaudit.train import train_member
from tests.conftest import tiny_setup

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


def test_batched_greedy_equals_one_by_one(setup):
    records, tok, tokens, factory = setup
    model = factory.fresh()
    train_member(
        model,
        tokens,
        np.arange(12),
        TrainConfig(epochs=4, lr=3e-3, batch_size=4, max_length=64),
        seed=0,
        device=CPU,
    )
    targets = extraction_targets(tokens, tok, 32)
    batched = greedy_continuations(model, targets, tok, batch_size=7, device=CPU)
    for i in range(len(records)):
        ids = torch.as_tensor(targets.prompts[i])[None]
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=int(targets.lengths[i]),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        assert batched[i] == tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip()
    # Trained records are reproduced better than held-out ones.
    bleu, _ = score(batched, targets.references)
    assert np.nanmean(bleu[:12]) > np.nanmean(bleu[12:])


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
