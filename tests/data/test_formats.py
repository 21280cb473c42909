"""Record sources besides JSON Lines (memaudit.data.formats): CSV, TSV, Parquet and a
save_to_disk dataset folder give the same records as the same rows in JSON Lines; every bad
input is one MemauditError naming the file and the row (one line, exit 2, nothing written)."""

import json

import pytest

from memaudit.data.records import RecordFormat, data_sha256, load_records
from memaudit.errors import MemauditError
from tests.conftest import SMALL_RUN, write_jsonl

ROWS = [
    {"id": "a", "question": "who wrote hamlet", "answer": "Shakespeare"},
    {"id": "b", "question": "capital of france", "answer": "Paris"},
    {"id": "c", "question": "largest planet", "answer": "Jupiter"},
]
TEMPLATE = RecordFormat(template="Q: {question} A: {answer}")


def _csv(path, rows, sep=","):
    keys = list(rows[0])
    lines = [sep.join(keys)] + [sep.join(str(r[k]) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _same(got, want):
    assert [(r.id, r.text, r.prompt) for r in got] == [(r.id, r.text, r.prompt) for r in want]


@pytest.fixture
def reference(tmp_path):
    return load_records(write_jsonl(tmp_path / "ref.jsonl", ROWS), TEMPLATE)


def test_csv_and_tsv_give_the_json_lines_records(tmp_path, reference):
    _same(load_records(_csv(tmp_path / "d.csv", ROWS), TEMPLATE), reference)
    _same(load_records(_csv(tmp_path / "d.tsv", ROWS, "\t"), TEMPLATE), reference)


def test_rows_without_ids_are_numbered_and_quoted_cells_kept(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,id\n"a, quoted ""cell""",\nsecond,x\n', encoding="utf-8")
    got = load_records(path)
    assert [(r.id, r.text, r.line) for r in got] == [
        ("row1", 'a, quoted "cell"', 1),
        ("x", "second", 2),
    ]


def test_parquet_keeps_types_for_presets(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": r["id"], "question": r["question"], "answer": [r["answer"]]} for r in ROWS]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    want = load_records(write_jsonl(tmp_path / "ref.jsonl", rows), RecordFormat(preset="nq"))
    _same(load_records(path, RecordFormat(preset="nq")), want)


def test_save_to_disk_dataset_and_its_train_split(tmp_path, reference):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "ds"))
    _same(load_records(tmp_path / "ds", TEMPLATE), reference)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    _same(load_records(tmp_path / "dd", TEMPLATE), reference)
    # The folder's checksum covers its files: the run directory knows its dataset.
    assert data_sha256(tmp_path / "ds") != data_sha256(tmp_path / "dd")
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(MemauditError, match="splits a, b and no 'train'"):
        load_records(tmp_path / "ab", TEMPLATE)


@pytest.mark.parametrize(
    "content,message",
    [
        ("question,answer\nq1,a1\nq2\n", r"d\.csv: row 2: 1 cells, the header has 2"),
        ("question,answer\nq1,a1\nq2,\n", r"d\.csv: row 2: missing field 'answer'"),
        ('question,answer\nq1,"a1\n', r"d\.csv: line \d+: malformed \.csv"),
        ("", r"d\.csv: empty file"),
        ("question,question\nq,a\n", r"d\.csv: header: column names must be unique"),
        ("question,answer,id\nq,a,x\nq2,a2,x\n", r"d\.csv: row 2: duplicate id 'x'"),
    ],
)
def test_bad_csv_rows_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MemauditError, match=message):
        load_records(path, TEMPLATE)


def test_bad_bytes_and_bad_files(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text\nok\n\xff\xfe\n")
    with pytest.raises(MemauditError, match=r"d\.csv:3: invalid UTF-8"):
        load_records(path)
    with pytest.raises(MemauditError, match="no such file"):
        load_records(tmp_path / "missing.tsv")
    pytest.importorskip("pyarrow")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(MemauditError, match=r"bad\.parquet: not a readable Parquet file"):
        load_records(tmp_path / "bad.parquet")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", "-dataset"])
def test_each_format_runs_through_the_pipeline(cli, tmp_path, suffix):
    """--prepare-only: records read, validated, tokenized, the run directory made with the ids."""
    data = tmp_path / f"d{suffix}"
    rows = [{**r, "answer": [r["answer"]]} for r in ROWS] if suffix == ".parquet" else ROWS
    if suffix in (".csv", ".tsv"):
        _csv(data, ROWS, "," if suffix == ".csv" else "\t")
        fmt = ["--template", TEMPLATE.template]
    elif suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        pytest.importorskip("pyarrow.parquet").write_table(pa.Table.from_pylist(rows), data)
        fmt = []
    else:
        pytest.importorskip("datasets").Dataset.from_list(rows).save_to_disk(str(data))
        fmt = ["--template", TEMPLATE.template]
    args = [a for a in SMALL_RUN if a != "nq"]
    args = [a for a in args if a != "--preset"] + (fmt or ["--preset", "nq"])
    out = tmp_path / "run"
    r = cli("run", data, *args, "--models", "2", "--out", out, "--prepare-only")
    assert r.code == 0, r.err
    stored = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [s["id"] for s in stored] == ["a", "b", "c"]
    assert stored[1]["text"] == "Q: capital of france A: Paris"


def test_a_bad_row_is_one_line_exit_2_and_nothing_written(cli, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("question,answer\nq1,a1\nq2\n", encoding="utf-8")
    out = tmp_path / "run"
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    r = cli("run", data, *args, "--template", TEMPLATE.template, "--models", "2", "--out", out)
    assert r.code == 2
    assert r.err.count("\n") == 1 and "d.csv: row 2: 1 cells" in r.err
    assert not out.exists()


# -- chat records ------------------------------------------------------------------------------
CHATS = [
    {
        "id": "c1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    },
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
]


@pytest.fixture(scope="module")
def chat_tokenizer():
    from memaudit.ensemble.models import load_tokenizer
    from tests.conftest import TINY_MODEL

    tok = load_tokenizer(str(TINY_MODEL))
    assert tok.chat_template  # fixtures/make_fixtures.py step 8
    return tok


def test_chat_records_render_with_the_chat_template(tmp_path, chat_tokenizer):
    got = load_records(write_jsonl(tmp_path / "c.jsonl", CHATS), chat=chat_tokenizer)
    assert got[0].id == "c1" and got[1].id == "line2"
    assert got[0].text == "user: hi\nassistant: hello\n"
    assert got[0].prompt == "user: hi\nassistant:" and got[0].completion == " hello\n"
    # Multi-turn: earlier turns are the prompt; the completion is the last assistant turn.
    assert got[1].prompt == "system: be brief\nuser: 2+2?\nassistant: 4\nuser: and 3+3?\nassistant:"
    assert got[1].completion == " 6\n"


@pytest.mark.parametrize(
    "messages,message",
    [
        ("hi", r"c\.jsonl:1: 'messages' must be a non-empty list"),
        ([{"role": "user", "content": "hi"}], r"c\.jsonl:1: no assistant turn"),
        ([{"role": "assistant", "content": 3}], r"c\.jsonl:1: messages\[0\]: 'content' must be"),
        (["x"], r"c\.jsonl:1: messages\[0\] must be an object with a 'role'"),
        ([{"role": "assistant", "content": "  "}], r"c\.jsonl:1: the last assistant turn is empty"),
    ],
)
def test_bad_chat_records_name_the_line(tmp_path, chat_tokenizer, messages, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    with pytest.raises(MemauditError, match=message):
        load_records(path, chat=chat_tokenizer)


def test_a_tokenizer_without_a_chat_template_is_a_clear_error(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", CHATS)
    template, chat_tokenizer.chat_template = chat_tokenizer.chat_template, None
    try:
        with pytest.raises(MemauditError, match=r"c\.jsonl:1: chat records need a tokenizer "):
            load_records(path, chat=chat_tokenizer)
    finally:
        chat_tokenizer.chat_template = template


def test_chat_demo_runs_end_to_end_with_the_loss_on_the_answer(cli, tmp_path):
    from tests.conftest import ROOT

    demo = (ROOT / "fixtures" / "demo" / "chat_demo.jsonl").read_text().splitlines(True)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(demo[:24]))
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    out = tmp_path / "run"
    r = cli("run", data, *args, "--models", "2", "--extract-models", "1", "--out", out)
    assert r.code == 0, r.err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["train"]["loss_on"] == "completion"  # chat records: the assistant's answer
    assert (out / "report.json").is_file()
    first = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert first["id"] == "line1" and first["prompt"].endswith("assistant:")


def test_chat_without_a_template_in_the_cli_is_one_line_and_nothing_written(cli, tmp_path):
    import shutil

    from tests.conftest import TINY_MODEL

    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model, ignore=shutil.ignore_patterns("chat_template.jinja"))
    data = write_jsonl(tmp_path / "c.jsonl", CHATS)
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    args[args.index("--model") + 1] = str(model)
    out = tmp_path / "run"
    r = cli("run", data, *args, "--models", "2", "--out", out)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "chat records need a tokenizer with a chat template" in r.err
    assert "--chat-template FILE" in r.err
    assert not out.exists()


def test_id_field_names_the_id_column_and_is_required(tmp_path):
    rows = [
        {"qid": f"q{i}", **{k: v for k, v in r.items() if k != "id"}} for i, r in enumerate(ROWS)
    ]
    path = _csv(tmp_path / "d.csv", rows)
    fmt = RecordFormat(template=TEMPLATE.template, id_field="qid")
    assert [r.id for r in load_records(path, fmt)] == ["q0", "q1", "q2"]
    rows[1]["qid"] = ""
    with pytest.raises(
        MemauditError, match=r"d\.csv: row 2: missing id field 'qid' \(--id-field\)"
    ):
        load_records(_csv(path, rows), fmt)


def test_id_field_in_the_cli_and_the_fingerprint(cli, tmp_path):
    from memaudit.config import ModelConfig, RunConfig

    # Runs made before --id-field existed keep their fingerprint.
    assert "id_field" not in RunConfig(data="-", model=ModelConfig("m")).fingerprint()
    rows = [{"qid": f"q{i}", "text": r["question"]} for i, r in enumerate(ROWS)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    out = tmp_path / "run"
    r = cli(
        "run", data, *args, "--models", "2", "--id-field", "qid", "--out", out, "--prepare-only"
    )
    assert r.code == 0, r.err
    stored = [json.loads(x)["id"] for x in (out / "records.jsonl").read_text().splitlines()]
    assert stored == ["q0", "q1", "q2"]
    assert json.loads((out / "config.json").read_text())["config"]["id_field"] == "qid"


# -- Hugging Face Hub dataset ids ---------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch):
    """datasets.load_dataset replaced by an in-memory dataset (tests never touch the network);
    records the calls."""
    datasets = pytest.importorskip("datasets")
    from memaudit.data import formats

    calls = []
    state = {"rows": ROWS}

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list(state["rows"])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    monkeypatch.setattr(formats, "_offline", lambda: False)
    return calls, state


def test_hub_id_shapes_and_local_paths(tmp_path, monkeypatch):
    from memaudit.config import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("owner/name") and is_hub_id("squad") and is_hub_id("a-b/c_d.v2")
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").mkdir()
    (tmp_path / "squad").write_text("")
    # An existing path, a data file's name, or a path of more than two parts is never an id.
    assert not is_hub_id("owner/name") and not is_hub_id("squad")
    assert not any(is_hub_id(x) for x in ("d.jsonl", "x/d.csv", "a/b/c", "./x", "/x", "../x"))


def test_a_missing_data_file_is_not_looked_up_on_the_hub(cli, tmp_path, hub):
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    r = cli("run", tmp_path / "missing.jsonl", *args, "--models", "2", "--out", tmp_path / "r")
    assert r.code == 2 and "missing.jsonl: no such file" in r.err
    assert hub[0] == []


def test_hub_id_runs_with_split_and_revision_recorded(cli, tmp_path, monkeypatch, hub):
    calls, state = hub
    monkeypatch.chdir(tmp_path)
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    args += ["--template", TEMPLATE.template, "--models", "2", "--prepare-only"]
    hub_args = ["--split", "validation", "--revision", "v1.0", "--out", "run"]
    r = cli("run", "someone/qa-set", *args, *hub_args)
    assert r.code == 0, r.err
    assert calls and all(c == ("someone/qa-set", {"split": "validation", "revision": "v1.0"})
                         for c in calls)  # fmt: skip
    stored = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [s["id"] for s in stored] == ["a", "b", "c"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    dataset = saved["dataset"]
    assert (dataset["hub_id"], dataset["split"], dataset["revision"]) == (
        "someone/qa-set", "validation", "v1.0",
    )  # fmt: skip
    assert dataset["fingerprint"] and len(dataset["sha256"]) == 64
    assert (saved["config"]["split"], saved["config"]["revision"]) == ("validation", "v1.0")
    # The same rows resume; other rows (the dataset changed on the Hub) are refused.
    from memaudit.data import formats

    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    assert cli("run", "someone/qa-set", *args, *hub_args).code == 0
    before = (tmp_path / "run" / "config.json").read_bytes()
    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    state["rows"] = [{**ROWS[0], "answer": "Marlowe"}, *ROWS[1:]]
    r = cli("run", "someone/qa-set", *args, *hub_args)
    assert r.code == 2 and "was made from a different dataset" in r.err
    assert (tmp_path / "run" / "config.json").read_bytes() == before
    # Another split of the same id is another configuration.
    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    state["rows"] = ROWS
    r = cli("run", "someone/qa-set", *args, *hub_args[2:4], "--split", "train", "--out", "run")
    assert r.code == 2 and "split: 'validation' -> None" in r.err


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_id_offline_is_one_line_naming_the_id_and_a_local_copy(
    cli, tmp_path, monkeypatch, variable
):
    pytest.importorskip("datasets")
    from memaudit.data import formats

    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.chdir(tmp_path)
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    r = cli("run", "memaudit-test/not-cached", *args, "--models", "2", "--out", "run")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "DATA 'memaudit-test/not-cached'" in r.err and "(offline)" in r.err
    assert "save_to_disk(DIR)" in r.err and ".jsonl, .csv or .parquet file" in r.err
    assert not (tmp_path / "run").exists()


def test_split_picks_a_dataset_folders_split(tmp_path, reference):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"a": ds.select([0]), "b": ds}).save_to_disk(str(tmp_path / "ab"))
    _same(load_records(tmp_path / "ab", TEMPLATE, split="b"), reference)
    with pytest.raises(MemauditError, match=r"--split c: .*ab has splits a, b"):
        load_records(tmp_path / "ab", TEMPLATE, split="c")


# -- --chat-template FILE ---------------------------------------------------------------------
OWN_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def bare_model(tmp_path):
    """The fixture model without its chat template (a temporary copy)."""
    import shutil

    from tests.conftest import TINY_MODEL

    model = tmp_path / "bare-model"
    shutil.copytree(TINY_MODEL, model, ignore=shutil.ignore_patterns("chat_template.jinja"))
    return model


def _chat_args(model):
    args = [a for a in SMALL_RUN if a not in ("--preset", "nq")]
    args[args.index("--model") + 1] = str(model)
    return [*args, "--models", "2"]


def test_chat_template_file_renders_records(tmp_path, chat_tokenizer):
    from memaudit.data.formats import read_chat_template

    template = tmp_path / "t.jinja"
    template.write_text(OWN_TEMPLATE)
    got = load_records(
        write_jsonl(tmp_path / "c.jsonl", CHATS),
        chat=chat_tokenizer,
        chat_template=read_chat_template(template),
    )
    # The file's template, not the tokenizer's own ("user: hi\n...").
    assert got[0].text == "<user> hi\n<assistant> hello\n"
    assert got[0].prompt == "<user> hi\n<assistant>"


def test_chat_template_option_end_to_end_and_on_resume(cli, tmp_path, bare_model):
    import hashlib

    template = tmp_path / "t.jinja"
    template.write_text(OWN_TEMPLATE)
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": c["messages"]} for c in CHATS * 3])
    out = tmp_path / "run"
    run = ("run", data, *_chat_args(bare_model), "--out", out, "--prepare-only")
    r = cli(*run, "--chat-template", template)
    assert r.code == 0, r.err
    first = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert first["text"] == "<user> hi\n<assistant> hello\n"
    saved = json.loads((out / "config.json").read_text())
    want = hashlib.sha256(OWN_TEMPLATE.encode()).hexdigest()
    assert saved["dataset"]["chat_template_sha256"] == want
    assert saved["config"]["train"]["loss_on"] == "completion"
    assert cli(*run, "--chat-template", template).code == 0  # same template: resumes
    before = (out / "config.json").read_bytes()
    template.write_text(OWN_TEMPLATE + "{# edited #}")
    r = cli(*run, "--chat-template", template)
    assert r.code == 2 and "was made with another --chat-template" in r.err
    assert cli(*run).code == 2  # without it: another template (the model has none anyway)
    assert (out / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"--chat-template .*missing\.jinja: no such file"),
        (b"\xff\xfe", r"--chat-template .*t\.jinja: invalid UTF-8 at byte 0"),
        ("{% for m in messages %}{{ m['role'] }", r"c\.jsonl:1: --chat-template .*t\.jinja failed"),
        ("{{ raise_exception('no system turns') }}", r"t\.jinja failed: .*no system turns"),
        ("hello", r"t\.jinja does not render the conversation as its prompt"),
    ],
)
def test_a_bad_chat_template_file_is_one_line_and_nothing_written(
    cli, tmp_path, bare_model, content, message
):
    import re

    template = tmp_path / ("missing.jinja" if content is None else "t.jinja")
    if isinstance(content, bytes):
        template.write_bytes(content)
    elif content is not None:
        template.write_text(content)
    data = write_jsonl(tmp_path / "c.jsonl", CHATS)
    out = tmp_path / "run"
    r = cli("run", data, *_chat_args(bare_model), "--chat-template", template, "--out", out)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert re.search(message, r.err), r.err
    assert not out.exists()


def test_chat_template_on_records_that_are_not_chat(cli, tmp_path, bare_model):
    template = tmp_path / "t.jinja"
    template.write_text(OWN_TEMPLATE)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b c"}, {"text": "d e f"}])
    out = tmp_path / "run"
    r = cli("run", data, *_chat_args(bare_model), "--chat-template", template, "--out", out)
    assert r.code == 2 and "renders chat records" in r.err and "not chat records" in r.err
    assert not out.exists()


def test_chat_template_in_a_config_file_is_relative_to_it(cli, tmp_path, bare_model, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "t.jinja").write_text(OWN_TEMPLATE)
    (conf / "run.toml").write_text('chat_template = "t.jinja"\n')
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": c["messages"]} for c in CHATS])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "run"
    args = ("--config", conf / "run.toml", "--out", out, "--prepare-only")
    r = cli("run", data, *_chat_args(bare_model), *args)
    assert r.code == 0, r.err
    assert json.loads((out / "records.jsonl").read_text().splitlines()[0])["text"].startswith(
        "<user> hi"
    )


def test_hub_offline_reads_the_cache_alone_and_restores_the_flags(monkeypatch, tmp_path):
    """Offline (or with no name resolution), datasets is told so for the one load, so that a
    cached dataset loads at once instead of the Hub client retrying for half a minute."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants

    from memaudit.data import formats

    seen = []

    def fake(name, **kwargs):
        seen.append((datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    monkeypatch.setattr(formats, "_offline", lambda: True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    assert len(load_records("someone/cached", TEMPLATE)) == 3
    assert seen == [(True, True)]
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == (False, False)


def test_hub_unknown_split_names_the_option(monkeypatch, tmp_path, hub):
    datasets = pytest.importorskip("datasets")

    def fake(name, **kwargs):
        raise ValueError("Unknown split \"dev\". Should be one of ['train', 'test'].")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MemauditError, match=r"^--split dev: DATA 'someone/x': .*Unknown split"):
        load_records("someone/x", TEMPLATE, split="dev")


def test_split_and_revision_refused_for_a_file(tmp_path):
    from memaudit.config import build_run_config

    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(MemauditError, match=r"^--revision: applies to a Hub dataset id"):
        build_run_config(data, "m", revision="v1")
    with pytest.raises(MemauditError, match=r"^--split: applies to a Hub dataset id or a data"):
        build_run_config(data, "m", split="test")


def test_a_text_dataset_folder_is_not_image_data(tmp_path):
    from memaudit.data.images import is_image_source
    from tests.data.test_images import _hf_images

    pytest.importorskip("datasets").Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "t"))
    _hf_images(n=2)[0].save_to_disk(str(tmp_path / "i"))
    assert not is_image_source(tmp_path / "t", None) and is_image_source(tmp_path / "i", None)
