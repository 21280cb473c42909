"""Hostile and careless input through the command line (issue 15): every failure one line and
exit 2 (1 for a bug), nothing written by a refused run, control characters never raw, remote code
only on the command line's say-so, and tiny inputs refused or handled."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys

import numpy as np
import pytest

from tests.conftest import TINY_MODEL, write_jsonl

# The tiny model, fully fine-tuned for one epoch: a run of 4 models takes seconds on a CPU.
QUICK = [
    "--model", str(TINY_MODEL), "--finetune", "full", "--epochs", "1", "--lr", "3e-3",
    "--batch-size", "8", "--max-length", "64", "--extract-models", "0",
]  # fmt: skip
HOSTILE_ID = "a\x1b]52;c;ZWNobyBwd25lZA==\x07[/x]"


def _rows(n: int) -> list[dict]:
    rows = [{"id": f"r{i}", "text": f"record number {i} says hello to {i * 7}"} for i in range(n)]
    rows[0] = {"id": HOSTILE_ID, "text": "\x1b]0;title\x07 \x1b[2J clear [bold]x[/bold] \x9b1m"}
    if n > 1:
        rows[1]["group"] = "\x1b[31m[/red]"
    return rows


def _one_line(res, code: int = 2) -> str:
    assert res.code == code, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memaudit: error: "), res.err
    assert "Traceback" not in res.err + res.out
    return lines[0]


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(data, run directory) of a finished 4-model run whose records hold escape sequences."""
    from memaudit.cli import main

    root = tmp_path_factory.mktemp("finished")
    data = write_jsonl(root / "d.jsonl", _rows(12))
    out = root / "run"
    argv = sys.argv
    sys.argv = ["memaudit", "run", str(data), *QUICK, "--models", "4", "--out", str(out)]
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    finally:
        sys.argv = argv
    assert (out / "report.json").exists()
    return data, out


@pytest.fixture
def run_copy(finished, tmp_path):
    data, out = finished
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


def test_no_raw_control_character_reaches_the_terminal(run_copy, cli):
    _, run = run_copy
    res = cli("report", run, "--format", "terminal")
    assert res.code == 0, res.err
    shown = res.out + res.err
    assert not [c for c in shown if (c < " " and c not in "\n") or "\x7f" <= c <= "\x9f"]
    assert "\\x1b]52;c;ZWNobyBwd25lZA==\\x07" in shown or "\\x1b]52" in shown


DAMAGES = {
    "config truncated": (lambda r: _truncate(r / "config.json", 40), "config.json", False),
    "config without dataset": (
        lambda r: _edit_json(r / "config.json", lambda d: d.pop("dataset")),
        "config.json",
        False,
    ),
    "records deleted": (lambda r: (r / "records.jsonl").unlink(), "records.jsonl", True),
    "records truncated": (lambda r: _truncate(r / "records.jsonl", 30), "records.jsonl", True),
    "inclusion wrong shape": (
        lambda r: np.save(r / "inclusion.npy", np.ones((3, 4), bool)),
        "inclusion.npy",
        True,
    ),
    "inclusion truncated": (lambda r: _truncate(r / "inclusion.npy", 100), "inclusion.npy", True),
    "convergence truncated": (
        lambda r: _truncate(r / "convergence.json", 20),
        "convergence.json",
        True,
    ),
}


def _truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _edit_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_run_directory_is_one_line_under_report(run_copy, cli, damage):
    _, run = run_copy
    change, name, repairs = DAMAGES[damage]
    change(run)
    line = _one_line(cli("report", run))
    assert name in line and "damaged" in line
    assert ("rerun the same" in line) == repairs


@pytest.mark.parametrize("command", ["analyze", "train"])
@pytest.mark.parametrize("damage", ["config truncated", "records truncated", "inclusion truncated"])
def test_damaged_run_directory_is_one_line_under_analyze_and_train(run_copy, cli, command, damage):
    _, run = run_copy
    change, name, _ = DAMAGES[damage]
    change(run)
    assert name in _one_line(cli(command, run))


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b'{"status": "oK"}'])
def test_damaged_model_metadata_is_retrained_never_read(run_copy, cli, content):
    data, run = run_copy
    (run / "models" / "00001.json").write_bytes(content)
    res = cli("report", run, "--format", "json")
    assert res.code == 0 and "1 of 4 models have no result (1)" in " ".join(res.err.split())
    res = cli("run", data, *QUICK, "--models", "4", "--out", run)
    assert res.code == 0, res.err
    assert json.loads((run / "models" / "00001.json").read_text())["status"] == "ok"


def test_rerun_repairs_what_it_says_it_repairs(run_copy, cli):
    data, run = run_copy
    (run / "records.jsonl").unlink()
    np.save(run / "inclusion.npy", np.ones((3, 4), bool))
    _truncate(run / "convergence.json", 20)
    res = cli("run", data, *QUICK, "--models", "4", "--out", run)
    assert res.code == 0, res.err
    assert cli("report", run, "--format", "json").code == 0


def test_a_refused_run_writes_nothing(run_copy, cli):
    data, run = run_copy
    before = _snapshot(run)
    # Another run is training it (a live process holds the lock): other options are refused
    # and the directory stays byte-identical (its config.json is not rewritten).
    (run / "lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")
    before = _snapshot(run)
    line = _one_line(
        cli("run", data, *QUICK, "--models", "8", "--estimator", "plain", "--out", run)
    )
    assert "another memaudit run" in line
    assert _snapshot(run) == before
    (run / "lock").unlink()
    before = _snapshot(run)
    other_lr = [a if a != "3e-3" else "1e-3" for a in QUICK]
    line = _one_line(cli("run", data, *other_lr, "--models", "4", "--out", run))
    assert "different configuration" in line and _snapshot(run) == before


def test_remote_code_is_not_run_because_a_run_directory_says_so(tmp_path, cli):
    from memaudit.config import ModelConfig, RunConfig
    from memaudit.data.records import Record
    from memaudit.store.rundir import RunDir
    from tests.ensemble.test_models import evil_model_dir

    model = evil_model_dir(tmp_path)
    cfg = RunConfig(data="d.jsonl", model=ModelConfig(str(model), trust_remote_code=True))
    run = RunDir(tmp_path / "run")
    run.check_or_create(cfg, [Record(0, "a", "x y", None, None, 1)], "abc")
    run.save_inclusion(np.ones((1, 2), bool))
    for command in ("train", "report"):
        res = cli(command, run.path)
        assert res.code == 2 and "Traceback" not in res.err
    assert not (model / "RAN").exists()
    # Only this process's own command line opts in.
    cli("train", run.path, "--trust-remote-code")
    assert (model / "RAN").exists()


@pytest.mark.parametrize(
    "n, extra, message",
    [
        (1, ["--models", "4"], "1 record; an audit needs at least 2"),
        (12, ["--models", "1"], "--models: 1; at least 2 are needed"),
    ],
)
def test_what_cannot_give_an_estimate_is_refused_up_front(tmp_path, cli, n, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(n))
    line = _one_line(cli("run", data, *QUICK, *extra, "--out", tmp_path / "run"))
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_two_records_and_eight_models_train_empty_halves_as_the_base_model(tmp_path, cli):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(2))
    res = cli("run", data, *QUICK, "--models", "8", "--out", tmp_path / "run")
    assert res.code == 0, res.err
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "run/models").glob("*.json"))]
    assert len(metas) == 8 and all(m["status"] == "ok" for m in metas)
    empty = [m for m in metas if m["n_train"] == 0]
    assert empty and all(m["steps"] == 0 and m["train_loss"] is None for m in empty)
    assert "rerun" not in res.err


def test_every_member_diverging_gives_advice_that_can_work(tmp_path, cli):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(6))
    args = [a if a != "3e-3" else "1e308" for a in QUICK]
    res = cli("run", data, *args, "--models", "2", "--out", tmp_path / "run")
    assert res.code == 2 and "Traceback" not in res.err
    line = res.err.strip().splitlines()[-1]  # after the training progress
    assert line.startswith("memaudit: error: ") and "diverged" in line
    assert "lower --lr" in line and "train the rest" not in line


@pytest.mark.parametrize("template", ["{text:d}", "{text!x}", "{text:{text}}"])
def test_templates_with_format_specs_are_one_line(tmp_path, cli, template):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(4))
    line = _one_line(cli("run", data, "--template", template, *QUICK, "--out", tmp_path / "r"))
    assert "--template" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


@pytest.mark.parametrize("out", ["/proc/memaudit-run", "/proc/self/status"])
def test_unwritable_output_is_one_line(tmp_path, cli, out):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(4))
    line = _one_line(cli("run", data, *QUICK, "--models", "2", "--out", out))
    assert "/proc/" in line


def test_an_unexpected_error_is_one_escaped_line_with_its_log(tmp_path, cli, monkeypatch):
    from memaudit import api

    def boom(*_a, **_k):
        raise TypeError("surprise \x1b[2J [/x]")

    monkeypatch.setattr(api.Audit, "open", boom)
    line = _one_line(cli("report", tmp_path), code=1)
    assert "unexpected TypeError: surprise \\x1b[2J [/x]" in line
    log = re.search(r"details in (\S+)\)", line).group(1)
    with open(log) as f:
        assert "Traceback" in f.read()
    os.unlink(log)


def test_library_warnings_quoting_the_data_are_escaped(cli):
    import warnings

    seen = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest, **kw: seen.append(str(message))
        cli("--help")
        warnings.warn("glyph \x1b) missing", UserWarning, stacklevel=1)
    assert seen == ["glyph \\x1b) missing"]
