"""JSON Lines in, validated records out.

Every record becomes a text with an optional prompt/completion split (``text == prompt +
completion``), a stable id and an optional ground-truth group (from ``memaudit plant``). Any
problem is a :class:`MemauditError` naming the file and line, raised before anything is written.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.config import PRESETS
from memaudit.data import formats
from memaudit.errors import MemauditError
from memaudit.store.io import sha256_file
from memaudit.store.record import Record

__all__ = ["PRESETS", "Record", "RecordFormat", "load_records", "iter_json_lines"]

ID_FIELD = "id"
GROUP_FIELD = "group"


@dataclass(frozen=True)
class RecordFormat:
    """How to read a record. ``preset`` and ``template`` are exclusive; neither means
    ``{"text": ...}`` or ``{"prompt": ..., "completion": ...}``, decided per record."""

    preset: str | None = None
    template: str | None = None
    id_field: str | None = None  # --id-field: required in every record when given

    def __post_init__(self) -> None:
        if self.preset is not None and self.template is not None:
            raise MemauditError("--preset and --template are exclusive: give one of them")
        if self.preset is not None and self.preset not in PRESETS:
            raise MemauditError(
                f"--preset: unknown preset '{self.preset}' (known: {', '.join(PRESETS)})"
            )
        if self.effective_template is not None:
            template_fields(self.effective_template)  # fail early on a malformed template

    @property
    def effective_template(self) -> str | None:
        return PRESETS[self.preset] if self.preset else self.template

    def completion_field(self, obj: dict[str, Any]) -> str:
        """The source field that holds the completion (where ``plant`` edits)."""
        tpl = self.effective_template
        if tpl is not None:
            return template_fields(tpl)[-1]
        return "text" if "text" in obj else "completion"

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "template": self.template}


def template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MemauditError(f"--template: malformed template {template!r}: {exc}") from None
    fields = [name for _, name, spec, conv in parsed if name is not None]
    for _, name, spec, conv in parsed:
        if name is not None and (spec or conv):
            # A spec or conversion ({text:d}, {text!x}, {text:{text}}) would format record
            # values: refused, so that only plain field names ever reach str.format.
            raise MemauditError(
                f"--template: field '{{{name}{'!' + conv if conv else ''}"
                f"{':' + spec if spec else ''}}}' has a conversion or format spec; "
                "use plain field names such as '{text}'"
            )
    if not fields:
        raise MemauditError(f"--template: {template!r} names no field, e.g. '{{text}}'")
    for name in fields:
        if not name.isidentifier():
            raise MemauditError(f"--template: field '{{{name}}}' must be a plain field name")
    return fields


def _field(obj: dict, name: str, where: str, preset: str | None) -> str:
    if name not in obj:
        raise MemauditError(f"{where}: missing field '{name}'")
    value = obj[name]
    if preset == "nq" and name == "answer":
        # NQ-open lists acceptable answers; the record uses the first, as the paper did.
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            raise MemauditError(f"{where}: field 'answer' must be a non-empty list of strings")
        return value[0]
    if not isinstance(value, str):
        raise MemauditError(f"{where}: field '{name}' must be a string, not {type(value).__name__}")
    return value


def render(obj: dict, fmt: RecordFormat, where: str) -> tuple[str, str | None]:
    """(text, prompt) for one parsed JSON object."""
    tpl = fmt.effective_template
    if tpl is not None:
        prompt_parts: list[str] = []
        completion_parts: list[str] = []
        fields = template_fields(tpl)
        seen = 0
        for literal, name, _spec, _conv in string.Formatter().parse(tpl):
            # The completion starts where the last field's value starts.
            target = completion_parts if seen == len(fields) else prompt_parts
            target.append(literal)
            if name is not None:
                seen += 1
                if name not in obj:
                    source = f"--preset {fmt.preset}" if fmt.preset else "--template"
                    raise MemauditError(f"{where}: missing field '{name}' (named by {source})")
                value = _field(obj, name, where, fmt.preset)  # plain names only (see above)
                (completion_parts if seen == len(fields) else prompt_parts).append(value)
        prompt, completion = "".join(prompt_parts), "".join(completion_parts)
        return prompt + completion, prompt
    if "text" in obj:
        return _field(obj, "text", where, None), None
    if "prompt" in obj or "completion" in obj:
        prompt = _field(obj, "prompt", where, None)
        completion = _field(obj, "completion", where, None)
        return prompt + completion, prompt
    raise MemauditError(
        f"{where}: no 'text' or 'prompt'/'completion' field; use --template or --preset "
        "for other fields"
    )


def _optional_str(obj: dict, name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MemauditError(f"{where}: field '{name}' must be a string")
    return str(value)


def iter_json_lines(path: Path):
    """Yield (line number, parsed object) for every non-blank line; errors name the line."""
    path = Path(path)
    if not path.exists():
        raise MemauditError(f"{path}: no such file")
    if path.is_dir():
        raise MemauditError(f"{path}: is a directory, expected a JSON Lines file")
    raw = path.read_bytes()
    if not raw.strip():
        raise MemauditError(f"{path}: empty file (no records)")
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MemauditError(f"{where}: invalid UTF-8 at byte {exc.start}") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MemauditError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise MemauditError(f"{where}: invalid JSON: nested too deeply") from None
        except ValueError as exc:  # an integer of more digits than Python converts
            first = str(exc).splitlines()[0][:120]
            raise MemauditError(f"{where}: invalid JSON: {first}") from None
        if not isinstance(obj, dict):
            raise MemauditError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def load_records(
    path: str | Path,
    fmt: RecordFormat | None = None,
    chat=None,
    split: str = "train",
    revision: str | None = None,
    chat_template: formats.ChatTemplate | None = None,
) -> list[Record]:
    """Read and validate every record; raise :class:`MemauditError` on the first problem.
    ``chat``: the tokenizer that renders chat records (memaudit.data.formats.render_chat);
    ``split``, ``revision``: a Hub dataset's (or a dataset folder's split); ``chat_template``:
    --chat-template, rendering chat records instead of the tokenizer's own template."""
    fmt = fmt or RecordFormat()
    path = Path(path)
    records: list[Record] = []
    first_line: dict[str, int] = {}
    # CSV, TSV, Parquet, dataset folders and Hub ids: memaudit.data.formats, numbered by row.
    table = formats.kind(path) != "jsonl"
    rows = formats.iter_rows(path, split, revision) if table else iter_json_lines(path)
    for lineno, obj in rows:
        where = f"{path}: row {lineno}" if table else f"{path}:{lineno}"
        spans = None
        if formats.is_chat(obj) and fmt.effective_template is None:
            text, prompt, spans = formats.render_chat(obj, where, chat, chat_template)
        else:
            text, prompt = render(obj, fmt, where)
        if not text.strip():
            raise MemauditError(f"{where}: empty text")
        if prompt is not None and not text[len(prompt) :].strip():
            raise MemauditError(f"{where}: empty completion")
        if fmt.id_field is not None and not formats.has_value(obj, fmt.id_field):
            raise MemauditError(f"{where}: missing id field '{fmt.id_field}' (--id-field)")
        rid = _optional_str(obj, fmt.id_field or ID_FIELD, where)
        rid = rid or f"{'row' if table else 'line'}{lineno}"
        if rid in first_line:
            raise MemauditError(
                f"{where}: duplicate id '{rid}' (first used on line {first_line[rid]})"
            )
        first_line[rid] = lineno
        group = _optional_str(obj, GROUP_FIELD, where)
        for name, value in (("id", rid), ("text", text), ("group", group)):
            if value is not None and not _encodable(value):
                raise MemauditError(
                    f"{where}: field '{name}' holds a lone surrogate (invalid Unicode, e.g. "
                    "\\ud800); it cannot be stored or shown"
                )
        records.append(Record(len(records), rid, text, prompt, group, lineno, spans))
    if not records:
        raise MemauditError(f"{path}: empty file (no records)")
    return records


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def data_sha256(path: str | Path, split: str = "train", revision: str | None = None) -> str:
    """What identifies a dataset: its file's sha256, a dataset folder's (save_to_disk), or a
    Hub dataset's rows' (memaudit.data.formats.dataset_identity)."""
    return data_identity(path, split, revision)[0]


def data_identity(
    path: str | Path, split: str = "train", revision: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(sha256, what else the run directory records about the source: a Hub dataset's id,
    split, revision and fingerprint; a dataset folder's split)."""
    if formats.is_hub_id(path):
        return formats.dataset_identity(path, split, revision)
    extra = {"split": split} if formats.is_hf_dataset(Path(path)) and split != "train" else {}
    return _file_sha256(path), extra


def _file_sha256(path: str | Path) -> str:
    if Path(path).is_dir():
        return formats.folder_sha256(Path(path))
    return sha256_file(path)
