"""Extractability: does a member reproduce a record's completion from its prompt?

Greedy decoding (batched, left-padded, with the KV cache through ``generate``) from the record's
prompt ("Q: ... A:") or, for plain text, from its first ``prefix_tokens`` tokens, for as many
tokens as the true continuation has; scored with sacrebleu's sentence BLEU (0 to 1) and
normalised exact match. Run on the first ``extract_models`` members right after they train,
since members are not kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from memaudit.tokens import TokenizedRecords

_NORM = re.compile(r"[\W_]+")


@dataclass
class ExtractionTargets:
    prompts: list[np.ndarray]  # token ids to condition on
    references: list[str]  # the true continuation
    lengths: np.ndarray  # tokens to generate per record (the continuation's length)


def extraction_targets(
    tokens: TokenizedRecords, tokenizer, prefix_tokens: int
) -> ExtractionTargets:
    eos = tokenizer.eos_token_id
    prompts, refs, lengths = [], [], []
    for k, ids in enumerate(tokens.ids):
        body = ids[:-1] if eos is not None and ids[-1] == eos else ids
        start = int(tokens.completion_start[k])
        if start < 0:
            # Plain text: the first prefix_tokens tokens, or half of a shorter record.
            start = min(prefix_tokens, max(1, len(body) // 2))
        start = min(max(start, 1), len(body))
        prompts.append(body[:start])
        refs.append(tokenizer.decode(body[start:], skip_special_tokens=True).strip())
        lengths.append(len(body) - start)
    return ExtractionTargets(prompts, refs, np.asarray(lengths))


@torch.no_grad()
def greedy_continuations(
    model, targets: ExtractionTargets, tokenizer, batch_size: int, device: torch.device
) -> list[str]:
    """Greedy continuation of every prompt, cut at its reference length or eos."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    out = [""] * len(targets.prompts)
    plen = np.fromiter((len(p) for p in targets.prompts), dtype=np.int64, count=len(out))
    # Batches of similar continuation length, then prompt length: a batch decodes as many
    # steps as its longest continuation, and finished rows still ride along (measured: 2-3x
    # fewer decoded tokens than batches by prompt length on the demo). Records with nothing
    # to continue are skipped.
    order = np.lexsort((plen, targets.lengths))
    order = order[targets.lengths[order] > 0]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = int(plen[idx].max())
        # Left padding: every prompt ends at the last column.
        attn = np.arange(width) >= (width - plen[idx])[:, None]
        ids = np.full(attn.shape, pad, dtype=np.int64)
        ids[attn] = np.concatenate([targets.prompts[i] for i in idx])
        gen = model.generate(
            input_ids=torch.from_numpy(ids).to(device),
            attention_mask=torch.from_numpy(attn.astype(np.int64)).to(device),
            max_new_tokens=int(targets.lengths[idx].max()),
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )[:, width:].cpu()
        # Each continuation cut at its reference length; special tokens (eos, the padding
        # after it) are dropped by the decoder.
        texts = tokenizer.batch_decode(
            [gen[b, : targets.lengths[i]].tolist() for b, i in enumerate(idx)],
            skip_special_tokens=True,
        )
        for i, text in zip(idx, texts, strict=True):
            out[i] = text.strip()
    model.train(was_training)
    return out


def _normalise(text: str) -> str:
    return _NORM.sub(" ", text.lower()).strip()


def score(hypotheses: list[str], references: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sentence BLEU in [0, 1] and exact match (after lower-casing and collapsing punctuation)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # short answers have no 4-grams
    scores = np.array(
        [
            bleu.sentence_score(h, [r]).score / 100.0 if r else np.nan
            for h, r in zip(hypotheses, references, strict=True)
        ]
    )
    exact = np.array(
        [
            float(_normalise(h) == _normalise(r)) if r else np.nan
            for h, r in zip(hypotheses, references, strict=True)
        ]
    )
    return scores, exact


def extract_member(
    model, targets: ExtractionTargets, tokenizer, batch_size: int, device: torch.device
) -> dict:
    generations = greedy_continuations(model, targets, tokenizer, batch_size, device)
    bleu, exact = score(generations, targets.references)
    return {"bleu": bleu, "exact": exact, "generations": generations}


def aggregate(bleu: np.ndarray, exact: np.ndarray, inclusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per record, means over the extraction models that trained on it and that did not.

    bleu, exact: (N, K) for the K extraction models; inclusion: (N, K). The out-mean is the
    held-out baseline: an answer that is common knowledge scores high without memorization.
    """
    inc = inclusion.astype(bool)

    def mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ok = mask & np.isfinite(values)
        n = ok.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.where(ok, values, 0).sum(1) / n, np.nan)

    out = {
        "bleu_in": mean(bleu, inc),
        "bleu_out": mean(bleu, ~inc),
        "exact_in": mean(exact, inc),
        "exact_out": mean(exact, ~inc),
        "n_extract_in": (inc & np.isfinite(bleu)).sum(1),
        "n_extract_out": (~inc & np.isfinite(bleu)).sum(1),
    }
    out["bleu_gain"] = out["bleu_in"] - out["bleu_out"]
    return out
