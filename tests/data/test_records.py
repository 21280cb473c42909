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


# -- hostile and careless input (issue 15) -------------------------------------------------------

import json  # noqa: E402
import string  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.mark.parametrize("template", ["{text:d}", "{text!x}", "{text:{text}}", "Q {q!r} A {a}"])
def test_templates_with_specs_or_conversions_are_refused(template):
    with pytest.raises(MemauditError, match="--template: .*conversion or format spec"):
        RecordFormat(template=template)


@pytest.mark.parametrize(
    "line, match",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"text": "a", "n": ' + "9" * 5000 + "}", "invalid JSON: .*digits"),
        ('{"id": "\\ud800", "text": "a b"}', "field 'id' holds a lone surrogate"),
        ('{"text": "a \\udfff b"}', "field 'text' holds a lone surrogate"),
    ],
)
def test_hostile_json_lines_are_one_line_errors(tmp_path, line, match):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(MemauditError, match=match) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)


# Any JSON value, odd unicode (controls, surrogates, bidi, markup) included.
_TEXT = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_characters="\n"), max_size=20
) | st.sampled_from(["\x1b]52;c;ZWNobyBwd25lZA==\x07", "\x1b[2J", "\x9b1m", "[/x]", "\ud800"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_RECORD = st.fixed_dictionaries(
    {}, optional={"id": _TEXT | st.integers(), "text": _TEXT | _JSON, "group": _TEXT, "x": _JSON}
)
_LINE = (
    _RECORD.map(lambda o: json.dumps(o, ensure_ascii=True))
    | _JSON.map(json.dumps)
    | st.text(alphabet=string.printable, max_size=30)
    | st.integers(1, 50).map(lambda d: "[" * d * 1000 + "]" * d * 1000)  # deep nesting
    | st.integers(4300, 6000).map(lambda n: '{"text": "a", "n": ' + "7" * n + "}")
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(_LINE, min_size=0, max_size=6))
def test_fuzz_any_record_file_loads_or_is_one_line(tmp_path_factory, lines):
    """Whatever a record file holds: records that can be stored and shown, or one
    MemauditError line naming the file, with nothing written."""
    from rich.console import Console

    from memaudit.config import ModelConfig, RunConfig
    from memaudit.report.terminal import safe_text
    from memaudit.store.rundir import RunDir

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "d.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        records = load_records(path)
    except MemauditError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        assert sorted(p.name for p in tmp.iterdir()) == ["d.jsonl"]
        return
    run = RunDir(tmp / "run")
    cfg = RunConfig(data=str(path), model=ModelConfig("m"))
    run.check_or_create(cfg, records, "sha")
    assert run.records() == records
    console = Console(file=__import__("io").StringIO(), force_terminal=True, width=80)
    for r in records:  # every field shown escaped: no control character from the data
        for value in (r.id, r.text, r.group or ""):
            console.print(safe_text(value))
    shown = console.file.getvalue()
    stripped = __import__("re").sub(r"\x1b\[[0-9;]*m", "", shown)
    assert not any(c < " " and c != "\n" or "\x7f" <= c <= "\x9f" for c in stripped)
