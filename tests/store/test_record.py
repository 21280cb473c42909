"""The stored record: frozen, and its completion is the text after the prompt."""

from __future__ import annotations

import dataclasses
import json

import pytest

from memaudit.store.record import Record


def test_completion_and_plain_text():
    qa = Record(0, "q1", "Q: who? A: me", "Q: who? A:", None, 1)
    assert qa.completion == " me"
    plain = Record(1, "t1", "just text", None, "g0", 2)
    assert plain.completion is None


def test_frozen_and_stored_as_json_lines():
    r = Record(3, "id", "text ✓", None, None, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.text = "other"
    # records.jsonl holds exactly these fields; a record read back is equal.
    line = json.dumps(dataclasses.asdict(r), ensure_ascii=False)
    assert Record(**json.loads(line)) == r
    assert [f.name for f in dataclasses.fields(Record)] == [
        "index", "id", "text", "prompt", "group", "line", "loss_spans"
    ]  # fmt: skip
    # A record without loss spans is stored as before they existed; one with them keeps them.
    assert "loss_spans" not in r.to_dict() and Record(**r.to_dict()) == r
    chat = Record(0, "c", "u: a\nb: x\nu: c\nb: y\n", "u: a\nb: x\nu: c\nb:", None, 1, [[8, 11]])
    assert Record(**json.loads(json.dumps(chat.to_dict()))) == chat
