"""Record sources besides JSON Lines: CSV and TSV, Parquet, and a Hugging Face dataset folder.

Each source yields the same thing as JSON Lines, one object per record, so that every format
goes through the same templates, presets, validation and ids (memaudit.data.records). Rows are
numbered from 1 (a CSV's header is not a row); a record without an ``id`` column gets
``row<N>``, and every error names the file and the row.

- ``.csv`` / ``.tsv``: the header names the fields; cells are strings; an empty cell is a
  missing field (so an empty ``id`` falls back to the row number).
- ``.parquet``: read with pyarrow; values keep their types (an NQ ``answer`` list stays a list).
- a folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``: its ``--split``,
  by default ``train`` or its only split), read with the ``datasets`` library;
- a Hugging Face Hub dataset id (``owner/name`` or ``name``, when no such path exists here):
  ``datasets.load_dataset(id, split=--split, revision=--revision)``, from the datasets cache
  when the Hub is not reachable. Remote code never runs (``trust_remote_code`` is never set;
  datasets 4 dropped loading scripts altogether). Its identity for resuming is the sha256 of
  its Arrow table, with the id, split, revision and datasets' fingerprint saved beside it.

Parquet and datasets need ``pip install "memaudit[formats]"``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.config import is_hub_id
from memaudit.errors import MemauditError

DELIMITERS = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet", ".pq")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in HF_MARKERS)


def kind(path: Path) -> str:
    """jsonl, table, parquet, hf (a dataset folder) or hub (a Hub id): how ``path`` is read."""
    if is_hub_id(path):
        return "hub"
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        return "table"
    if suffix in PARQUET:
        return "parquet"
    if is_hf_dataset(path):
        return "hf"
    return "jsonl"


def iter_rows(
    path: Path, split: str = "train", revision: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, object) for every record of a CSV/TSV, Parquet, dataset folder or
    Hub dataset (``split`` and ``revision``: see :func:`load_dataset`)."""
    how = kind(path)
    if how == "hub":
        yield from _objects(path, load_dataset(path, split, revision).to_list())
        return
    if not path.exists():
        raise MemauditError(f"{path}: no such file")
    if how == "table":
        yield from _table(path, DELIMITERS[path.suffix.lower()])
    elif how == "parquet":
        yield from _objects(path, _parquet(path))
    elif how == "hf":
        yield from _objects(path, load_dataset(path, split).to_list())
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


def load_dataset(data: str | Path, split: str = "train", revision: str | None = None):
    """The ``datasets.Dataset`` that DATA names: a ``save_to_disk`` folder (its ``split``; by
    default ``train`` or its only split) or a Hub id (one load per process: the chat check, the
    records and the checksum share it). Every failure is one line naming DATA."""
    if is_hub_id(data):
        key = (os.fspath(data), split, revision)
        if key not in _HUB_LOADED:
            _HUB_LOADED[key] = _load_hub(*key)
        return _HUB_LOADED[key]
    return _load_folder(Path(data), split)


_HUB_LOADED: dict[tuple[str, str, str | None], Any] = {}


def _load_folder(path: Path, split: str):
    datasets = _need("datasets")
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged folder raises many types
        raise MemauditError(f"{path}: not a readable dataset folder: {_first_line(exc)}") from None
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        if split in data:
            data = data[split]
        elif split == "train" and len(splits) == 1:
            data = data[splits[0]]
        elif split == "train":
            raise MemauditError(
                f"{path}: a dataset with splits {', '.join(splits)} and no 'train': name one "
                "with --split"
            )
        else:
            raise MemauditError(f"--split {split}: {path} has splits {', '.join(splits)}")
    return data


def _offline() -> bool:
    """The Hub is off limits: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or no name resolution (then
    the Hub client would retry for half a minute before failing)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "0").strip().lower() not in ("0", "", "false", "no", "off"):
            return True
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return False
    except OSError:
        return True


def _load_hub(name: str, split: str, revision: str | None):
    datasets = _need("datasets")
    import huggingface_hub.constants as hub_constants
    from datasets.utils.logging import disable_progress_bar, set_verbosity_error

    disable_progress_bar()  # a progress bar would break the one-line error and our progress
    set_verbosity_error()
    offline = _offline()
    local = (
        "point DATA at a local copy: a folder saved with "
        f"`datasets.load_dataset('{name}', split='{split}').save_to_disk(DIR)` where the Hub "
        "is reachable, or a .jsonl, .csv or .parquet file"
    )
    # Offline, datasets reads its cache alone instead of retrying the network.
    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        # trust_remote_code is never passed: no code from the dataset's repository runs.
        return datasets.load_dataset(name, split=split, revision=revision)
    except ConnectionError:
        why = "the Hub is not reachable (offline)" if offline else "the Hub did not answer"
        raise MemauditError(
            f"DATA '{name}': not a local file or folder, not in the datasets cache, and {why}; "
            f"{local}"
        ) from None
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise MemauditError(
            f"DATA '{name}': not a local file or folder, and not a dataset on the Hub "
            f"({_first_line(exc)}); {local}"
        ) from None
    except ValueError as exc:
        text = _first_line(exc)
        if "split" in text.lower():
            raise MemauditError(f"--split {split}: DATA '{name}': {text}") from None
        raise MemauditError(f"DATA '{name}': cannot load it: {text}") from None
    except Exception as exc:  # noqa: BLE001 - the Hub client and builders raise many types
        what = f" at --revision {revision}" if revision else ""
        raise MemauditError(f"DATA '{name}'{what}: cannot load it: {_first_line(exc)}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def dataset_identity(data: str | Path, split: str = "train", revision: str | None = None):
    """(sha256, source) of a Hub dataset for the run directory: the sha256 of its Arrow table
    (the same rows give the same sum wherever the dataset was loaded) and what names it: id,
    split, revision and datasets' own fingerprint."""
    ds = load_dataset(data, split, revision)
    source = {
        "hub_id": os.fspath(data),
        "split": split,
        "revision": revision,
        "fingerprint": getattr(ds, "_fingerprint", None),
    }
    return arrow_sha256(ds), source


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def arrow_sha256(ds) -> str:
    """sha256 of a Dataset's rows as an Arrow IPC stream, written block by block (never held
    in memory twice)."""
    import pyarrow as pa

    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    sink = _HashSink()
    stream = pa.PythonFile(sink, mode="w")
    with pa.ipc.new_stream(stream, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1 << 14):
            writer.write_batch(batch)
    return sink.hash.hexdigest()


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


def is_chat_source(path: str | Path, split: str = "train", revision: str | None = None) -> bool:
    """Whether the first record of ``path`` is a chat record (for ``--loss-on``'s default);
    False for anything unreadable (the loading reports that)."""
    import json

    path = Path(path)
    try:
        if kind(path) == "jsonl":
            with open(path, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return is_chat(json.loads(first))
        return is_chat(next(iter_rows(path, split, revision), (0, {}))[1])
    except (OSError, ValueError, MemauditError, AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class ChatTemplate:
    """--chat-template FILE: a Jinja chat template read once; transformers renders it in its
    sandboxed Jinja environment, so a template file runs no code of its own."""

    file: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_chat_template(path: str | Path) -> ChatTemplate:
    where = f"--chat-template {path}"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise MemauditError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise MemauditError(f"{where}: is a directory, expected a Jinja template file") from None
    except OSError as exc:
        raise MemauditError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MemauditError(f"{where}: invalid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise MemauditError(f"{where}: empty file (expected a Jinja chat template)")
    return ChatTemplate(os.fspath(path), text)


def render_chat(
    obj: dict, where: str, tokenizer, template: ChatTemplate | None = None
) -> tuple[str, str, list[list[int]] | None]:
    """(text, prompt, loss spans) of a chat record with the tokenizer's own chat template, or
    ``template`` (--chat-template): the conversation up to and including its last assistant
    turn; the prompt is everything before that turn (with the template's generation prompt),
    the completion the turn itself, so the extraction is on the last assistant answer. The
    loss spans are the [start, end) characters of the earlier assistant turns (None if there
    are none): with --loss-on completion every assistant turn is scored."""
    if tokenizer is None:
        raise MemauditError(f"{where}: a chat record needs the model's tokenizer to render it")
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise MemauditError(
            f"{where}: chat records need a tokenizer with a chat template "
            f"({getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none); give one with "
            "--chat-template FILE (a Jinja template), a model whose tokenizer has one, or "
            "convert the records to prompt/completion"
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
    own = {} if template is None else {"chat_template": template.text}
    named = "the chat template" if template is None else f"--chat-template {template.file}"

    def turn(i: int) -> tuple[str, str]:
        """(the conversation before assistant turn i with the generation prompt, through it)."""
        try:
            before = tokenizer.apply_chat_template(
                messages[:i], tokenize=False, add_generation_prompt=True, **own
            )
            through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, **own)
        except Exception as exc:  # noqa: BLE001 - a template may raise anything
            raise MemauditError(f"{where}: {named} failed: {_first_line(exc)}") from None
        ok = isinstance(before, str) and isinstance(through, str) and through.startswith(before)
        # ... and the part after the prompt holds the assistant turn's words.
        if not ok or messages[i]["content"].strip() not in through[len(before) :]:
            which = "the last assistant turn" if i == last else f"assistant turn messages[{i}]"
            raise MemauditError(
                f"{where}: {named} does not render the conversation as its prompt "
                f"followed by {which}"
            )
        return before, through

    prompt, text = turn(last)
    spans = []
    for i, m in enumerate(messages[:last]):
        if m["role"] != "assistant" or not m["content"].strip():
            continue
        before, through = turn(i)
        # The earlier turn must sit in the conversation as it renders on its own, for its
        # characters to be the turn's (templates that drop earlier turns' reasoning do not).
        if not prompt.startswith(through):
            raise MemauditError(
                f"{where}: {named} renders assistant turn {i} (messages[{i}]) differently "
                "inside the whole conversation, so its tokens cannot be scored alone; use "
                "--loss-on full, or keep only the last assistant turn"
            )
        spans.append([len(before), len(through)])
    return text, prompt, spans or None


def chat_defaults(data: str | Path | None, options: dict) -> dict:
    """``options`` with ``loss_on`` defaulting to "completion" (the assistant turns) for a
    chat file read without a template or preset; other data keep the config's default ("full")."""
    readable = data is not None and (
        Path(data).is_file() or is_hf_dataset(Path(data)) or is_hub_id(data)
    )
    chat = (
        readable
        and "loss_on" not in options
        and options.get("template") is None
        and options.get("preset") is None
        and is_chat_source(data, options.get("split", "train"), options.get("revision"))
    )
    return {**options, "loss_on": "completion"} if chat else options
