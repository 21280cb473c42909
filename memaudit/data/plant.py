"""Plant near-duplicate groups, as the paper did, so that any audit can be scored.

Each group is an original record plus ``copies - 1`` edited copies; each copy replaces ``edits``
random tokens of the completion (of the text, for plain-text records) by random vocabulary tokens.
Both may be ranges (``2-5`` copies, ``1-3`` edits), drawn per group and per copy, so a planted set
is harder than one group size and one edit strength. With a
tokenizer the unit is a tokenizer token, as in the paper; without one it is a whitespace-separated
word and the vocabulary is the dataset's own words. The output keeps the input's format, so a
planted file is a drop-in replacement, and adds an ``id`` to every record and a ``group`` to every
planted one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from memaudit.data.records import GROUP_FIELD, ID_FIELD, RecordFormat, iter_json_lines, load_records
from memaudit.errors import MemauditError
from memaudit.store.io import atomic_write_text

_WORD = re.compile(r"(\s+)")


def _word_editor(texts: list[str]) -> Callable[[str, np.random.Generator], str]:
    vocab = sorted({w for t in texts for w in t.split()})

    def edit(value: str, rng: np.random.Generator) -> str:
        parts = _WORD.split(value)
        words = [k for k, p in enumerate(parts) if p and not p.isspace()]
        k = words[rng.integers(len(words))]
        choices = [w for w in vocab if w != parts[k]] or ["<unk>"]
        parts[k] = choices[rng.integers(len(choices))]
        return "".join(parts)

    return edit


def _token_editor(tokenizer) -> Callable[[str, np.random.Generator], str]:
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]

    def edit(value: str, rng: np.random.Generator) -> str:
        ids = tokenizer.encode(value, add_special_tokens=False)
        k = int(rng.integers(len(ids)))
        for _ in range(100):
            new = vocab[rng.integers(len(vocab))]
            if new == ids[k]:
                continue
            candidate = tokenizer.decode(ids[:k] + [new] + ids[k + 1 :])
            # A byte-level token can be half a UTF-8 character; keep edits that decode cleanly.
            if "\ufffd" not in candidate and candidate.strip():
                return candidate
        raise MemauditError(f"plant: could not find a clean replacement token for {value!r}")

    return edit


def plant(
    path: str | Path,
    fmt: RecordFormat,
    groups: int,
    copies: int | tuple[int, int],
    seed: int = 0,
    tokenizer=None,
    edits: int | tuple[int, int] = 1,
) -> list[dict]:
    """Return the planted dataset as JSON objects in the input's format, copies after originals.

    ``copies`` and ``edits`` are an int or an inclusive (low, high) range drawn uniformly.
    """
    records = load_records(path, fmt)
    if groups < 1 or groups > len(records):
        raise MemauditError(f"--groups: must be between 1 and {len(records)} (the record count)")
    copies_lo, copies_hi = (copies, copies) if isinstance(copies, int) else copies
    edits_lo, edits_hi = (edits, edits) if isinstance(edits, int) else edits
    if copies_lo < 2 or copies_hi < copies_lo:
        raise MemauditError("--copies: must be at least 2 (the original and one edited copy)")
    if edits_lo < 1 or edits_hi < edits_lo:
        raise MemauditError("--edits: must be at least 1 replaced token per copy")
    objects = [obj for _, obj in iter_json_lines(Path(path))]
    field = fmt.completion_field(objects[0])

    def get(obj: dict) -> str:
        value = obj[field]
        return value[0] if isinstance(value, list) else value

    def put(obj: dict, value: str) -> dict:
        obj = json.loads(json.dumps(obj))  # deep copy of plain JSON
        if isinstance(obj[field], list):
            obj[field][0] = value
        else:
            obj[field] = value
        return obj

    edit = (
        _token_editor(tokenizer)
        if tokenizer is not None
        else _word_editor([get(o) for o in objects])
    )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(records), size=groups, replace=False).tolist())

    def draw(lo: int, hi: int) -> int:
        # Fixed values draw nothing, so fixed-size plantings are the same as before ranges.
        return lo if lo == hi else int(rng.integers(lo, hi + 1))

    def edited(value: str) -> str:
        for _ in range(draw(edits_lo, edits_hi)):
            value = edit(value, rng)
        return value

    group_of = {idx: f"g{g:03d}" for g, idx in enumerate(chosen)}
    taken = {r.id for r in records}
    out: list[dict] = []
    for rec, obj in zip(records, objects, strict=True):
        base = {ID_FIELD: rec.id, **{k: v for k, v in obj.items() if k != ID_FIELD}}
        if rec.index not in group_of:
            out.append(base)
            continue
        base[GROUP_FIELD] = group_of[rec.index]
        out.append(base)
        seen = {get(base)}
        size = draw(copies_lo, copies_hi)
        for c in range(1, size):
            for _ in range(100):
                value = edited(get(base))
                if value not in seen:
                    break
            else:
                raise MemauditError(
                    f"{path}:{rec.line}: could not make {size - 1} distinct copies of "
                    f"record '{rec.id}'; its completion is too short"
                )
            seen.add(value)
            copy_id = f"{rec.id}-dup{c}"
            if copy_id in taken:
                raise MemauditError(f"{path}: planted id '{copy_id}' collides with an existing id")
            taken.add(copy_id)
            out.append({**put(base, value), ID_FIELD: copy_id})
    planted = Planted(out)
    planted.source = Path(path)
    return planted


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (existing or not): planting never overwrites its input."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


class Planted(list):
    """plant()'s records, remembering the file they came from (so it is never overwritten)."""

    source: Path | None = None


def write_jsonl(objects: list[dict], out: str | Path, source: str | Path | None = None) -> None:
    """Write ``objects`` to ``out``; refused when ``out`` is the input (``source``, or the
    file a :class:`Planted` list came from): planting never overwrites the user's dataset."""
    source = source if source is not None else getattr(objects, "source", None)
    if source is not None and same_file(source, out):
        raise MemauditError(f"--out: {out} is the input file; write the planted data elsewhere")
    atomic_write_text(out, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects))
