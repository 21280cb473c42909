"""Extractability: does a member reproduce a record's completion from its prompt?

Greedy decoding from the record's prompt ("Q: ... A:") or, for plain text, from its first
``prefix_tokens`` tokens, for as many tokens as the true continuation has (cut at eos); scored
with sacrebleu's sentence BLEU (0 to 1) and normalised exact match. Run on the first
``extract_models`` members right after they train, since members are not kept.

Decoding is a lean loop (left-padded batches, the model's body with its KV cache, the output
head on the last position only, a row leaving the batch once done) instead of ``generate``,
whose per-step bookkeeping (logits processors, stopping criteria, mask building) is most of the
time on a small model: measured with ``benchmarks/decode.py``, 0.20 s against 0.26 s per 300
demo records. A model the loop cannot verify (not decoder-only, a logit-changing generation
setting, a head that is not the whole of the logits, or lean tokens that differ from
``generate``'s on its first batch) is decoded by ``generate``.
"""

from __future__ import annotations

import inspect
import re
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from memaudit.data.tokens import TokenizedRecords
from memaudit.ensemble.train import eval_mode, output_split

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
    with eval_mode(model):
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        out = [""] * len(targets.prompts)
        lengths = targets.lengths
        split = lean_split(model, targets, tokenizer, batch_size, device)
        order = prompt_order(targets) if split is not None else _length_order(targets)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = left_padded(targets.prompts, idx, pad, device)
            if split is not None:
                gen = lean_greedy(*split, batch, lengths[idx], eos)
            else:
                gen = _generate(model, batch, lengths[idx], pad, eos)
            for i, text in zip(idx, decode_texts(tokenizer, gen, lengths[idx], eos), strict=True):
                out[i] = text
    return out


# The lean decoder drops a row once it is done, so its batches go by prompt length (least
# padding in the prompt pass; measured on the demo, batch size 128: 0.17 s against 0.21 s by
# continuation length). ``generate`` decodes every row of a batch for its longest continuation,
# so its batches go by continuation length (2-3x fewer decoded tokens). Records with nothing to
# continue are skipped.
def prompt_order(targets: ExtractionTargets) -> np.ndarray:
    keep, plen = _to_decode(targets)
    return keep[np.lexsort((targets.lengths[keep], plen[keep]))]


def _length_order(targets: ExtractionTargets) -> np.ndarray:
    keep, plen = _to_decode(targets)
    return keep[np.lexsort((plen[keep], targets.lengths[keep]))]


def _to_decode(targets: ExtractionTargets) -> tuple[np.ndarray, np.ndarray]:
    n = len(targets.prompts)
    plen = np.fromiter((len(p) for p in targets.prompts), dtype=np.int64, count=n)
    return np.flatnonzero(targets.lengths > 0), plen


def lean_split(
    model, targets: ExtractionTargets, tokenizer, batch_size: int, device: torch.device
) -> tuple | None:
    """The model's (body, head, cache keyword) for :func:`lean_greedy`, verified against
    ``generate`` on its first batch the first time the model is seen; None: use ``generate``."""
    if model not in _LEAN and len(first := prompt_order(targets)[:batch_size]):
        with eval_mode(model):
            pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
            batch = left_padded(targets.prompts, first, pad, device)
            _LEAN[model] = _verified_split(model, batch, targets.lengths[first], pad, eos)
    return _LEAN.get(model)


def decode_texts(tokenizer, gen: torch.Tensor, lengths: np.ndarray, eos: int | None) -> list[str]:
    """Each row's text, cut at its length or eos; special tokens (eos, padding) dropped."""
    texts = tokenizer.batch_decode(_cut(gen, lengths, eos), skip_special_tokens=True)
    return [t.strip() for t in texts]


def left_padded(
    prompts: list[np.ndarray], idx: np.ndarray, pad: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of the prompts ``idx``, left-padded: every prompt ends at
    the last column, where decoding continues."""
    plen = np.fromiter((len(prompts[i]) for i in idx), dtype=np.int64, count=len(idx))
    attn = np.arange(plen.max()) >= (plen.max() - plen)[:, None]
    ids = np.full(attn.shape, pad, dtype=np.int64)
    ids[attn] = np.concatenate([prompts[i] for i in idx])
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(attn.astype(np.int64)).to(device),
    }


# Per model object: (body, head, cache keyword) when the lean decoder reproduced ``generate`` on
# the model's first batch, else None (every batch then goes through ``generate``).
_LEAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Generation settings that cannot change a greedy token (sampling ones are off with do_sample
# False; eos, pad and the length are passed explicitly). Any other non-default setting (a
# repetition penalty, suppressed tokens, a minimum length, ...) sends the model to ``generate``.
_GREEDY_NEUTRAL = {
    "_from_model_config", "transformers_version", "use_cache", "output_attentions",
    "output_hidden_states", "bos_token_id", "eos_token_id", "pad_token_id", "max_length",
    "max_new_tokens", "do_sample", "num_beams", "temperature", "top_k", "top_p", "min_p",
    "typical_p", "length_penalty", "early_stopping", "num_return_sequences",
}  # fmt: skip


def _verified_split(
    model, batch: dict, lengths: np.ndarray, pad: int, eos: int | None
) -> tuple | None:
    """The model's (body, head, cache keyword) if the lean decoder can run it: a decoder-only
    model whose body takes position ids and a cache, whose head alone maps hidden states to its
    logits, with no greedy-changing generation settings, and whose lean continuations of
    ``batch`` equal ``generate``'s."""
    config, gen_config = model.config, getattr(model, "generation_config", None)
    if getattr(config, "is_encoder_decoder", False) or gen_config is None:
        return None
    if set(gen_config.to_diff_dict()) - _GREEDY_NEUTRAL:
        return None
    split = output_split(model, batch)
    if split is None:
        return None
    params = inspect.signature(split[0].forward).parameters
    # transformers 5 renames the cache argument (and output field) past_key_values -> cache.
    key = next((k for k in ("cache", "past_key_values") if k in params), None)
    if key is None or "position_ids" not in params:
        return None
    try:
        lean = _cut(lean_greedy(*split, key, batch, lengths, eos), lengths, eos)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None
    same = lean == _cut(_generate(model, batch, lengths, pad, eos), lengths, eos)
    return (*split, key) if same else None


def lean_greedy(
    body, head, key: str, batch: dict, lengths: np.ndarray, eos: int | None, on_keep=None
) -> torch.Tensor:
    """(B, max(lengths)) greedy tokens by a plain loop over the body with its KV cache, the
    head on the last position only. A row leaves the batch (and the cache) once it has its
    ``lengths`` tokens or eos; its later columns are padding to ignore. ``on_keep(rows)`` hears
    which rows stay (per-row state outside the cache follows: packed LoRA's routing)."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    steps = int(lengths.max())
    out = torch.zeros((len(ids), steps), dtype=ids.dtype, device=ids.device)
    need = torch.from_numpy(lengths).to(ids.device)
    rows = torch.arange(len(ids), device=ids.device)  # batch row -> row of ``out``
    pos = (attn.cumsum(-1) - 1).clamp_min(0)  # as generate: left padding does not shift
    cache = None
    for t in range(steps):
        res = body(
            input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{key: cache}
        )
        cache = res[key]
        nxt = head(res[0][:, -1]).argmax(-1)
        out[rows, t] = nxt
        live = need[rows] > t + 1
        if eos is not None:
            live &= nxt != eos
        if not bool(live.all()):
            if not bool(live.any()):
                break
            keep = live.nonzero().squeeze(1)
            rows, nxt, attn, pos = rows[keep], nxt[keep], attn[keep], pos[keep]
            cache.batch_select_indices(keep)
            if on_keep is not None:
                on_keep(keep)
        ids = nxt[:, None]
        attn = torch.cat([attn, attn.new_ones((len(ids), 1))], dim=1)
        pos = pos[:, -1:] + 1
    return out


def _generate(model, batch: dict, lengths: np.ndarray, pad: int, eos: int | None) -> torch.Tensor:
    width = batch["input_ids"].shape[1]
    return model.generate(
        **batch,
        max_new_tokens=int(lengths.max()),
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=eos,
    )[:, width:]


def _cut(gen: torch.Tensor, lengths: np.ndarray, eos: int | None) -> list[list[int]]:
    """Each row's tokens up to its reference length, and before its first eos."""
    rows = []
    for row, n in zip(gen.cpu().tolist(), lengths, strict=True):
        row = row[:n]
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


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
    return extraction(greedy_continuations(model, targets, tokenizer, batch_size, device), targets)


def extraction(generations: list[str], targets: ExtractionTargets) -> dict:
    """A member's extraction record: its continuations scored against the references."""
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
