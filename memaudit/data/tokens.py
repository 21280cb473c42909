"""Tokenize every record once, and batch token sequences for training and evaluation.

Each record is ``text + eos`` truncated to ``max_length`` tokens. Token k (k >= 1) is predicted
from tokens < k; the scored positions are all of them (``loss_on="full"``) or those from the first
completion token on (``loss_on="completion"``), with a chat record's earlier assistant turns
(its ``loss_spans``) scored too. The completion boundary comes from the fast
tokenizer's offsets, so "A: Paris" keeps its natural " Paris" token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from memaudit.data.records import Record
from memaudit.errors import MemauditError


@dataclass
class TokenizedRecords:
    ids: list[np.ndarray]  # int64 token ids per record, eos included when it fits
    score_from: np.ndarray  # (N,) first scored position per record (>= 1)
    completion_start: np.ndarray  # (N,) first completion token; -1 for plain-text records
    truncated: int  # how many records were cut at max_length
    pad_id: int
    # loss_on="completion": per record, the positions scored besides those from score_from on
    # (the tokens of a chat record's earlier assistant turns); None: there are none.
    also_scored: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids])

    def batch(
        self, indices: Sequence[int], device: torch.device, score_all: bool = False
    ) -> dict[str, torch.Tensor]:
        """Right-padded ids and attention mask, and the scored target positions.

        ``positions`` are flat indices into the (B, T) batch of the positions whose next token
        is scored (all real tokens with ``score_all``, as in training), in row-major order;
        ``rows`` the batch row of each. Computed here, on the host, so the model side gathers
        them without a device sync.
        """
        rows = [self.ids[i] for i in indices]
        width = max(len(r) for r in rows)
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attn = np.arange(width) < lens[:, None]
        ids[attn] = np.concatenate(rows)
        start = np.ones(len(rows), dtype=np.int64) if score_all else self.score_from[indices]
        # Target k is scored for start <= k < len: it is predicted at position k - 1.
        pred = (np.arange(1, width + 1) >= start[:, None]) & (
            np.arange(1, width + 1) < lens[:, None]
        )
        if not score_all and self.also_scored is not None:
            for row, i in enumerate(indices):
                extra = self.also_scored[i]
                pred[row, extra[extra < lens[row]] - 1] = True
        positions = np.flatnonzero(pred)
        return {
            "input_ids": torch.from_numpy(ids).to(device),
            "attention_mask": torch.from_numpy(attn.astype(np.int64)).to(device),
            "positions": torch.from_numpy(positions).to(device),
            "rows": torch.from_numpy(positions // width).to(device),
        }

    def packed_batch(
        self, indices: Sequence[int], device: torch.device, max_width: int = 0
    ) -> dict[str, torch.Tensor]:
        """The records laid end to end in rows, every real token scored.

        Each record's ``position_ids`` restart at 0, which is how Hugging Face models take
        packed sequences: with no attention mask, a token attends only within its own record.
        The tail of a row is padding, a sequence of its own that no record sees (attention is
        causal) and no target comes from. Rows are no wider than ``max_width`` (or the batch's
        longest record), a length the model takes. ``positions`` and ``rows`` are in
        the order of ``batch(score_all=True)``, record by record: the two give the same losses.
        """
        lens = np.fromiter((len(self.ids[i]) for i in indices), dtype=np.int64, count=len(indices))
        longest = int(lens.max())
        cap = max(max_width, longest)
        # Of a few widths, the one that holds the batch in the fewest token slots (a handful
        # of candidates: this runs on the host every step).
        widths = {longest, cap, *range(2 * longest, cap + 1, longest)}
        width, where, fill = min(
            (_first_fit(lens, w) for w in sorted(widths)),
            key=lambda packing: packing[0] * len(packing[2]),
        )
        ids = np.full(len(fill) * width, self.pad_id, dtype=np.int64)
        pos_ids = np.tile(np.arange(width, dtype=np.int64), len(fill))
        for k, i in enumerate(indices):
            ids[where[k] : where[k] + lens[k]] = self.ids[i]
            pos_ids[where[k] : where[k] + lens[k]] = np.arange(lens[k])
        for r, used in enumerate(fill):  # the padding tail restarts too: a sequence of its own
            pos_ids[r * width + used : (r + 1) * width] = np.arange(width - used)
        # Position p predicts the token after it: p runs over a record's first len - 1 tokens.
        positions = np.concatenate([where[k] + np.arange(lens[k] - 1) for k in range(len(lens))])
        rows = np.repeat(np.arange(len(lens)), lens - 1)
        return {
            "input_ids": torch.from_numpy(ids.reshape(len(fill), width)).to(device),
            "position_ids": torch.from_numpy(pos_ids.reshape(len(fill), width)).to(device),
            "positions": torch.from_numpy(positions).to(device),
            "rows": torch.from_numpy(rows).to(device),
        }


def _first_fit(lens: np.ndarray, width: int) -> tuple[int, np.ndarray, list[int]]:
    """Records into rows of ``width`` tokens, longest first, each into the first row with room:
    (width, flat offset of each record, tokens used per row)."""
    fill: list[int] = []
    where = np.empty(len(lens), dtype=np.int64)
    for k in np.argsort(-lens, kind="stable"):
        r = next((r for r, used in enumerate(fill) if used + lens[k] <= width), len(fill))
        if r == len(fill):
            fill.append(0)
        where[k] = r * width + fill[r]
        fill[r] += int(lens[k])
    return width, where, fill


def tokenize_records(
    records: list[Record], tokenizer, max_length: int, loss_on: str, source: str
) -> TokenizedRecords:
    texts = [r.text for r in records]
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=fast)
    eos = tokenizer.eos_token_id
    ids: list[np.ndarray] = []
    score_from = np.ones(len(records), dtype=np.int64)
    completion_start = np.full(len(records), -1, dtype=np.int64)
    truncated = 0
    also: list[np.ndarray] = [_NONE] * len(records)
    for r, tok_ids, k in zip(records, enc["input_ids"], range(len(records)), strict=True):
        seq = list(tok_ids) + ([eos] if eos is not None else [])
        if len(seq) > max_length:
            truncated += 1
            seq = seq[:max_length]
        where = f"{source}:{r.line}: record '{r.id}'"
        if len(seq) < 2:
            raise MemauditError(f"{where} has fewer than 2 tokens; nothing to score")
        if r.prompt is not None:
            completion_start[k] = _completion_start(tokenizer, r, enc, k, fast)
        if loss_on == "completion":
            if r.prompt is None:
                raise MemauditError(
                    f"{where} has no prompt/completion split; --loss-on completion needs "
                    "prompt/completion records, a --template or a --preset"
                )
            if completion_start[k] >= len(seq):
                raise MemauditError(
                    f"{where}: its completion starts after --max-length {max_length} tokens"
                )
            score_from[k] = max(completion_start[k], 1)
            if r.loss_spans:
                also[k] = _span_tokens(tokenizer, r, enc, k, fast)
        ids.append(np.asarray(seq, dtype=np.int64))
    return TokenizedRecords(
        ids,
        score_from,
        completion_start,
        truncated,
        int(tokenizer.pad_token_id),
        also if any(len(a) for a in also) else None,
    )


_NONE = np.zeros(0, dtype=np.int64)


def _span_tokens(tokenizer, r: Record, enc, k: int, fast: bool) -> np.ndarray:
    """The token positions (>= 1) of a chat record's earlier assistant turns (its loss spans):
    the tokens that overlap a span's characters, as the completion's first token is the first
    that reaches past the prompt."""
    out: list[int] = []
    for start, end in r.loss_spans:
        if fast:
            offsets = enc["offset_mapping"][k]
            out += [p for p, (a, b) in enumerate(offsets) if b > a and b > start and a < end]
        else:
            first = len(tokenizer(r.text[:start].rstrip(), add_special_tokens=True)["input_ids"])
            stop = len(tokenizer(r.text[:end], add_special_tokens=True)["input_ids"])
            out += range(first, stop)
    positions = np.unique(np.asarray(out, dtype=np.int64))
    return positions[positions >= 1]


def _completion_start(tokenizer, r: Record, enc, k: int, fast: bool) -> int:
    boundary = len(r.prompt.rstrip())
    if fast:
        # The first token that reaches past the prompt (its leading space included).
        for pos, (_, end) in enumerate(enc["offset_mapping"][k]):
            if end > boundary:
                return pos
        return len(enc["input_ids"][k])
    return len(tokenizer(r.prompt.rstrip(), add_special_tokens=True)["input_ids"])


def length_sorted_batches(lengths: np.ndarray, indices: np.ndarray, batch_size: int):
    """Batches of similar length (less padding) for evaluation, where order does not matter."""
    order = indices[np.argsort(lengths[indices], kind="stable")]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
