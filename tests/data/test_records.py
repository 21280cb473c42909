import pytest

from memaudit.data.records import RecordFormat, load_records
from memaudit.errors import MemauditError
from tests.conftest import DEMO_SOURCE, write_jsonl


def test_text_and_prompt_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "hello world"},
            {"id": "b", "prompt": "Q: x A:", "completion": " y", "group": "g1"},
        ],
    )
    a, b = load_records(path)
    assert (a.id, a.text, a.prompt, a.completion, a.group, a.line) == (
        "line1",
        "hello world",
        None,
        None,
        None,
        1,
    )
    assert (b.id, b.text, b.prompt, b.completion, b.group) == (
        "b",
        "Q: x A: y",
        "Q: x A:",
        " y",
        "g1",
    )


def test_template_completion_starts_at_last_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "who", "a": "me", "extra": 1}])
    (r,) = load_records(path, RecordFormat(template="Q: {q} A: {a}."))
    assert r.text == "Q: who A: me."
    assert r.prompt == "Q: who A: "
    assert r.completion == "me."


def test_nq_preset_uses_first_answer():
    records = load_records(DEMO_SOURCE, RecordFormat(preset="nq"))
    assert len(records) == 220
    r = records[0]
    assert r.text.startswith("Q: ") and " A: " in r.text
    assert r.prompt.endswith(" A: ") and r.completion and r.text == r.prompt + r.completion


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert [r.line for r in load_records(path)] == [1, 3]


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        (b"", {}, "empty file"),
        (b"\n  \n", {}, "empty file"),
        (b'{"text": "a"}\n{"text": \n', {}, ":2: invalid JSON"),
        (b'{"text": "a"}\n{"text": "\xff"}\n', {}, ":2: invalid UTF-8"),
        (b'["text"]\n', {}, ":1: expected a JSON object"),
        (b'{"body": "a"}\n', {}, ":1: no 'text' or 'prompt'/'completion' field"),
        (b'{"text": 3}\n', {}, ":1: field 'text' must be a string"),
        (b'{"prompt": "a"}\n', {}, ":1: missing field 'completion'"),
        (b'{"text": "   "}\n', {}, ":1: empty text"),
        (b'{"prompt": "a", "completion": " "}\n', {}, ":1: empty completion"),
        (b'{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', {}, ":2: duplicate id 'x'"),
        (b'{"q": "a"}\n', {"template": "{q} {nope}"}, ":1: missing field 'nope'"),
        (b'{"question": "a", "answer": []}\n', {"preset": "nq"}, "non-empty list of strings"),
        (b'{"question": "a", "answer": "b"}\n', {"preset": "nq"}, "non-empty list of strings"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, fmt, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(MemauditError) as info:
        load_records(path, RecordFormat(**fmt))
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_format_options_are_checked():
    with pytest.raises(MemauditError, match="exclusive"):
        RecordFormat(preset="nq", template="{a}")
    with pytest.raises(MemauditError, match="names no field"):
        RecordFormat(template="no fields")
    with pytest.raises(MemauditError, match="unknown preset"):
        RecordFormat(preset="squad")


def test_missing_file(tmp_path):
    with pytest.raises(MemauditError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
