import numpy as np
import pytest
import torch

from memaudit.data.records import Record
from memaudit.data.tokens import length_sorted_batches, tokenize_records
from memaudit.ensemble.models import load_tokenizer
from memaudit.errors import MemauditError
from tests.conftest import TINY_MODEL


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TINY_MODEL))


def _rec(text, prompt=None, i=0):
    return Record(i, f"r{i}", text, prompt, None, i + 1)


def test_eos_appended_and_truncation(tok):
    toks = tokenize_records([_rec("Q: who is it A: me")], tok, 64, "full", "d")
    ids = toks.ids[0]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:-1]) == "Q: who is it A: me"
    assert toks.score_from[0] == 1 and toks.truncated == 0
    short = tokenize_records([_rec("Q: who is it A: me")], tok, 4, "full", "d")
    assert len(short.ids[0]) == 4 and short.truncated == 1


def test_completion_boundary_keeps_natural_tokens(tok):
    r = _rec("Q: where is paris A: France", prompt="Q: where is paris A: ")
    toks = tokenize_records([r], tok, 64, "completion", "d")
    ids, start = toks.ids[0], toks.score_from[0]
    # The scored tokens decode to the completion (plus eos), the rest to the prompt.
    assert tok.decode(ids[:start]).rstrip() == "Q: where is paris A:"
    assert tok.decode(ids[start:-1]).strip() == "France"
    # Tokenizing the whole text once gives the same ids as the plain record.
    assert list(ids[:-1]) == tok.encode(r.text)


def test_completion_loss_needs_a_completion_in_range(tok):
    r = _rec("Q: " + "word " * 80 + "A: x", prompt="Q: " + "word " * 80 + "A: ")
    with pytest.raises(MemauditError, match="completion starts after --max-length 16"):
        tokenize_records([r], tok, 16, "completion", "data.jsonl")


def test_batch_masks(tok):
    recs = [_rec("a b c d e f", i=0), _rec("a", i=1)]
    toks = tokenize_records(recs, tok, 64, "full", "d")
    b = toks.batch([0, 1], torch.device("cpu"))
    lens = [len(x) for x in toks.ids]
    assert b["input_ids"].shape == (2, max(lens))
    assert b["attention_mask"].sum(1).tolist() == lens
    # Every real next token is scored (loss_on full), at the position that predicts it.
    assert torch.bincount(b["rows"], minlength=2).tolist() == [n - 1 for n in lens]
    width = max(lens)
    expected = [r * width + k for r, n in enumerate(lens) for k in range(n - 1)]
    assert b["positions"].tolist() == expected


def test_batch_positions_score_only_the_completion(tok):
    recs = [
        _rec("Q: x A: yes", prompt="Q: x A:", i=0),
        _rec("Q: longer one A: no", prompt="Q: longer one A:", i=1),
    ]
    toks = tokenize_records(recs, tok, 64, "completion", "d")
    b = toks.batch([0, 1], torch.device("cpu"))
    width = b["input_ids"].shape[1]
    for r, i in enumerate([0, 1]):
        predicted = [int(p) % width + 1 for p in b["positions"][b["rows"] == r]]
        assert predicted == list(range(toks.score_from[i], len(toks.ids[i])))
    all_positions = toks.batch([0, 1], torch.device("cpu"), score_all=True)["positions"]
    assert len(all_positions) == sum(len(x) - 1 for x in toks.ids)


def test_length_sorted_batches_cover_everything():
    lengths = np.array([5, 1, 9, 3, 7])
    batches = length_sorted_batches(lengths, np.arange(5), 2)
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]
    assert [lengths[b].tolist() for b in batches] == [[1, 3], [5, 7], [9]]


def test_packed_batch_lays_records_end_to_end(tok):
    texts = ["one two three four five six", "a b", "x y z w", "alpha beta gamma"]
    tokens = tokenize_records([_rec(t, i=i) for i, t in enumerate(texts)], tok, 64, "full", "t")
    b = tokens.packed_batch([0, 1, 2, 3], torch.device("cpu"), max_width=64)
    ids, pos_ids = b["input_ids"].numpy(), b["position_ids"].numpy()
    flat_ids, flat_pos = ids.reshape(-1), pos_ids.reshape(-1)
    width = ids.shape[1]
    assert width <= 64 and ids.size < 4 * max(tokens.lengths)  # fewer slots than padded
    # Every record appears once, whole, with positions 0..len-1, in no other record's span.
    starts = np.flatnonzero(flat_pos == 0)
    spans = {tuple(flat_ids[s : s + len(x)]) for s in starts for x in tokens.ids}
    for x in tokens.ids:
        assert tuple(x) in spans
    # Scored positions: every real next token, record by record, as in the padded batch.
    rows = b["rows"].numpy()
    assert np.array_equal(rows, np.repeat(np.arange(4), tokens.lengths - 1))
    targets = flat_ids[b["positions"].numpy() + 1]
    assert np.array_equal(targets, np.concatenate([x[1:] for x in tokens.ids]))
    assert (flat_pos[b["positions"].numpy() + 1] > 0).all()  # never a next record's first token


def test_loss_on_completion_scores_every_assistant_turn(tok, tmp_path):
    """A chat record's earlier assistant turns are in the loss with --loss-on completion;
    user and system turns are not; the extraction prompt stays the conversation up to the last
    assistant turn; --loss-on full scores everything as before."""
    from memaudit.data.records import load_records
    from tests.conftest import write_jsonl

    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is two plus two"},
        {"role": "assistant", "content": "four exactly"},
        {"role": "user", "content": "and three plus three"},
        {"role": "assistant", "content": "six"},
    ]
    (r,) = load_records(write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}]), chat=tok)
    earlier = r.text.index("four exactly")
    assert r.loss_spans and r.loss_spans[0][0] <= earlier < r.loss_spans[0][1]
    assert r.prompt.endswith("user: and three plus three\nassistant:")
    toks = tokenize_records([r], tok, 100, "completion", "c.jsonl")
    batch = toks.batch([0], torch.device("cpu"))
    targets = batch["positions"].numpy() + 1  # position p predicts token p + 1
    ids = toks.ids[0]
    scored = tok.decode(ids[targets[targets < toks.score_from[0]]])
    assert scored.split() == ["four", "exactly"]  # the earlier answer (and its newline)
    assert "two" not in scored and "three" not in scored and "brief" not in scored
    assert tok.decode(ids[toks.score_from[0] : -1]).strip() == "six"
    assert set(range(toks.score_from[0], len(ids))) <= set(targets)
    # Extraction still prompts with the conversation up to the last assistant turn.
    assert tok.decode(ids[: toks.completion_start[0]]).rstrip().endswith("assistant:")
    # Training and --loss-on full score every token, as before.
    full = tokenize_records([r], tok, 100, "full", "c.jsonl")
    assert full.also_scored is None
    assert len(full.batch([0], torch.device("cpu"))["positions"]) == len(ids) - 1
    # A slow (pure Python) tokenizer finds the same tokens without offsets.
    from memaudit.data.tokens import _span_tokens

    enc = tok([r.text], add_special_tokens=True, return_offsets_mapping=True)
    assert list(_span_tokens(tok, r, enc, 0, False)) == list(toks.also_scored[0])
