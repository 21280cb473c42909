"""Record sources besides JSON Lines: CSV and TSV, Parquet, and a Hugging Face dataset folder.

Each source yields the same thing as JSON Lines, one object per record, so that every format
goes through the same templates, presets, validation and ids (memaudit.data.records). Rows are
numbered from 1 (a CSV's header is not a row); a record without an ``id`` column gets
``row<N>``, and every error names the file and the row.

- ``.csv`` / ``.tsv``: the header names the fields; cells are strings; an empty cell is a
  missing field (so an empty ``id`` falls back to the row number).
- ``.parquet``: read with pyarrow; values keep their types (an NQ ``answer`` list stays a list).
- a folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``: its ``train``
  split, or its only split), read with the ``datasets`` library.

Parquet and datasets need ``pip install "memaudit[formats]"``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memaudit.errors import MemauditError

DELIMITERS = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet", ".pq")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in HF_MARKERS)


def kind(path: Path) -> str:
    """jsonl, table, parquet or hf: how ``path`` is read."""
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        return "table"
    if suffix in PARQUET:
        return "parquet"
    if is_hf_dataset(path):
        return "hf"
    return "jsonl"


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, object) for every record of a CSV/TSV, Parquet or dataset folder."""
    if not path.exists():
        raise MemauditError(f"{path}: no such file")
    how = kind(path)
    if how == "table":
        yield from _table(path, DELIMITERS[path.suffix.lower()])
    elif how == "parquet":
        yield from _objects(path, _parquet(path))
    elif how == "hf":
        yield from _objects(path, _hf(path))
    else:
        raise MemauditError(f"{path}: not a CSV, TSV, Parquet file or dataset folder")


def _present(value: Any) -> bool:
    """An empty cell (CSV ""), a null or a NaN is a missing field."""
    if value is None or value == "":
        return False
    return not (isinstance(value, float) and math.isnan(value))


def has_value(obj: dict, name: str) -> bool:
    return name in obj and _present(obj[name])


def _table(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.is_dir():
        raise MemauditError(f"{path}: is a directory, expected a {path.suffix} file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MemauditError(f"{path}:{line}: invalid UTF-8 at byte {exc.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise MemauditError(f"{path}: empty file (no header row)")
        names = [h.strip() for h in header]
        if len(set(names)) != len(names) or "" in names:
            raise MemauditError(f"{path}: header: column names must be unique and non-empty")
        row = 0
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            row += 1
            if len(cells) != len(names):
                raise MemauditError(
                    f"{path}: row {row}: {len(cells)} cells, the header has {len(names)}"
                )
            yield row, {k: v for k, v in zip(names, cells, strict=True) if _present(v)}
    except csv.Error as exc:
        where = f"{path}: line {reader.line_num}"
        raise MemauditError(f"{where}: malformed {path.suffix}: {exc}") from None


def _objects(path: Path, rows: list[dict]) -> Iterator[tuple[int, dict[str, Any]]]:
    for row, obj in enumerate(rows, start=1):
        yield row, {k: v for k, v in obj.items() if _present(v)}


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MemauditError(
            f'reading this format needs {module.split(".")[0]}: pip install "memaudit[formats]"'
        ) from None


def _parquet(path: Path) -> list[dict]:
    pq = _need("pyarrow.parquet")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise MemauditError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None


def _hf(path: Path) -> list[dict]:
    datasets = _need("datasets")
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged folder raises many types
        raise MemauditError(f"{path}: not a readable dataset folder: {_first_line(exc)}") from None
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        if "train" in data:
            data = data["train"]
        elif len(splits) == 1:
            data = data[splits[0]]
        else:
            raise MemauditError(
                f"{path}: a dataset with splits {', '.join(splits)} and no 'train': save the "
                "split to audit on its own (dataset['NAME'].save_to_disk(...))"
            )
    return data.to_list()


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def folder_sha256(path: Path) -> str:
    """A dataset folder's checksum: every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode("utf-8") + b"\0")
        with open(f, "rb") as stream:
            for block in iter(lambda s=stream: s.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# -- chat records -------------------------------------------------------------------------------
def is_chat(obj: dict) -> bool:
    """A chat record: ``{"messages": [{"role": ..., "content": ...}, ...]}``."""
    return "messages" in obj


def is_chat_source(path: str | Path) -> bool:
    """Whether the first record of ``path`` is a chat record (for ``--loss-on``'s default);
    False for anything unreadable (the loading reports that)."""
    import json

    path = Path(path)
    try:
        if kind(path) == "jsonl":
            with open(path, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return is_chat(json.loads(first))
        return is_chat(next(iter_rows(path), (0, {}))[1])
    except (OSError, ValueError, MemauditError, AttributeError, TypeError):
        return False


def render_chat(obj: dict, where: str, tokenizer) -> tuple[str, str]:
    """(text, prompt) of a chat record with the tokenizer's own chat template: the
    conversation up to and including its last assistant turn; the prompt is everything before
    that turn (with the template's generation prompt), the completion the turn itself, so the
    loss (with ``--loss-on completion``) and the extraction are on the last assistant answer."""
    if tokenizer is None:
        raise MemauditError(f"{where}: a chat record needs the model's tokenizer to render it")
    if not getattr(tokenizer, "chat_template", None):
        raise MemauditError(
            f"{where}: chat records need a tokenizer with a chat template "
            f"({getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none); give a model "
            "whose tokenizer has one, or convert the records to prompt/completion"
        )
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise MemauditError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise MemauditError(f"{where}: messages[{i}] must be an object with a 'role'")
        if not isinstance(m.get("content"), str):
            raise MemauditError(f"{where}: messages[{i}]: 'content' must be a string")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise MemauditError(f"{where}: no assistant turn (nothing to learn or extract)")
    if not messages[last]["content"].strip():
        raise MemauditError(f"{where}: the last assistant turn is empty")
    try:
        prompt = tokenizer.apply_chat_template(
            messages[:last], tokenize=False, add_generation_prompt=True
        )
        text = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template may raise anything (raise_exception)
        raise MemauditError(f"{where}: the chat template failed: {_first_line(exc)}") from None
    if not text.startswith(prompt):
        raise MemauditError(
            f"{where}: the chat template does not render the conversation as its prompt "
            "followed by the last assistant turn"
        )
    return text, prompt


def chat_defaults(data: str | Path | None, options: dict) -> dict:
    """``options`` with ``loss_on`` defaulting to "completion" (the assistant's last turn) for a
    chat file read without a template or preset; other data keep the config's default ("full")."""
    chat = (
        data is not None
        and "loss_on" not in options
        and options.get("template") is None
        and options.get("preset") is None
        and Path(data).exists()
        and not Path(data).is_dir()
        and is_chat_source(data)
    )
    return {**options, "loss_on": "completion"} if chat else options
