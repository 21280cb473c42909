"""Bad input through the CLI: one line naming the problem, exit code 2, nothing written."""

import subprocess
import sys

import pytest

from tests.conftest import DEMO_SOURCE, TINY_MODEL, tree, write_jsonl

GOOD = {"question": "who wrote it", "answer": ["someone"]}


def _bad_files(tmp):
    (tmp / "empty.jsonl").write_bytes(b"")
    (tmp / "badjson.jsonl").write_text('{"text": "a"}\n{"text"\n')
    (tmp / "badutf8.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    write_jsonl(tmp / "nofield.jsonl", [{"question": "q"}])
    write_jsonl(tmp / "nonstring.jsonl", [{"text": ["a"]}])
    write_jsonl(tmp / "emptytext.jsonl", [{"text": ""}])
    write_jsonl(tmp / "dupids.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    write_jsonl(tmp / "good.jsonl", [GOOD] * 3)
    write_jsonl(tmp / "text.jsonl", [{"text": "one two three"}])


CASES = [
    (["missing.jsonl"], "missing.jsonl: no such file"),
    (["empty.jsonl"], "empty.jsonl: empty file"),
    (["badjson.jsonl"], "badjson.jsonl:2: invalid JSON"),
    (["badutf8.jsonl"], "badutf8.jsonl:1: invalid UTF-8"),
    (["nofield.jsonl", "--preset", "nq"], "nofield.jsonl:1: missing field 'answer'"),
    (["nonstring.jsonl"], "nonstring.jsonl:1: field 'text' must be a string"),
    (["emptytext.jsonl"], "emptytext.jsonl:1: empty text"),
    (["dupids.jsonl"], "dupids.jsonl:2: duplicate id 'a'"),
    (
        ["good.jsonl", "--template", "Q: {question} A: {answr}"],
        "good.jsonl:1: missing field 'answr' (named by --template)",
    ),
    (["good.jsonl", "--preset", "nq", "--epochs", "0"], "--epochs: must be a positive integer"),
    (["good.jsonl", "--preset", "nq", "--top-k", "abc"], "'--top-k'"),
    (["good.jsonl", "--preset", "nq", "--finetune", "half"], "'--finetune'"),
    (
        ["good.jsonl", "--preset", "nq", "--max-length", "500"],
        "--max-length: 500 exceeds the model's 64 positions",
    ),
    (["text.jsonl", "--loss-on", "completion"], "has no prompt/completion split"),
    (["good.jsonl", "--preset", "nq", "--lora-targets", "no_such_module"], "--lora-targets"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_run_input(tmp_path, monkeypatch, cli, args, message):
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    extra = [] if "--finetune" in args or "--lora-targets" in args else ["--finetune", "full"]
    extra += [] if "--max-length" in args else ["--max-length", "64"]
    res = cli("run", *args, "--model", TINY_MODEL, *extra, "--models", "2", "--out", "run")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("memaudit: error: ")
    assert message in lines[0]
    assert "Traceback" not in res.err
    assert tree(tmp_path) == before  # nothing written: no run directory, no stray files


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [GOOD])
    for name in ("./no/such/model", "no-such-org/no-such-model"):
        res = cli("run", "d.jsonl", "--preset", "nq", "--model", name, "--out", "run")
        assert res.code == 2
        assert len(res.err.strip().splitlines()) == 1
        assert f"cannot load '{name}'" in res.err and "local directory" in res.err
    assert tree(tmp_path) == {"d.jsonl"}


def test_bad_config_file(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text("epochz = 3\n")
    res = cli("run", DEMO_SOURCE, "--config", "c.toml", "--model", TINY_MODEL)
    assert res.code == 2 and "c.toml: unknown option 'epochz'" in res.err


def test_console_script_has_no_traceback(tmp_path):
    """The real entry point, in a fresh process, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "memaudit", "run", str(tmp_path / "nope.jsonl"), "--model", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"memaudit: error: {tmp_path / 'nope.jsonl'}: no such file"
    ]
    assert tree(tmp_path) == set()


def test_dedup_command_groups_planted_copies_and_writes_json(tmp_path, cli):
    """memaudit dedup: only the lexical pass, with the record options of run."""
    import json

    base = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
    rows = [
        {"question": f"question {k} about topic {k * 7} and more", "answer": [f"answer {k}"]}
        for k in range(20)
    ]
    rows += [
        {"question": base, "answer": ["yes"], "group": "g"},
        {"question": base.replace("lazy", "lazx"), "answer": ["yes"], "group": "g"},
        {"question": "a record with a \x1b[31m control sequence", "answer": ["no"]},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "groups.json"
    res = cli("dedup", data, "--preset", "nq", "--out", out)
    assert res.code == 0, res.err
    written = json.loads(out.read_text())
    assert [[m["index"] for m in g["members"]] for g in written["groups"]] == [[20, 21]]
    assert written["ground_truth"]["pair_recall"] == 1.0
    assert "1 near-duplicate groups" in res.out and "\x1b" not in res.out
    bad = cli("dedup", data, "--preset", "nq", "--threshold", "0")
    assert bad.code == 2 and "--threshold" in bad.err and len(bad.err.strip().splitlines()) == 1
