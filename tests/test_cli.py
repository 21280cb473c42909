"""Bad input through the CLI: one line naming the problem, exit code 2, nothing written."""

import dataclasses
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from tests.conftest import DEMO_SOURCE, ROOT, TINY_MODEL, tree, write_jsonl

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


# -- the options: one source (memaudit.config), checked before anything is written --------------


def _params(command) -> list[dict]:
    """A command's options as tests/cli_options.json records them."""
    import click

    rows = []
    for p in command.params:
        if not isinstance(p, click.Option):
            continue
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        plain = isinstance(default, str | int | float | bool | list) or default is None
        rows.append(
            {
                "opts": p.opts,
                "secondary": p.secondary_opts,
                "default": default if plain else None,  # click's "not given" sentinel
                "type": p.type.name,
                "choices": list(getattr(p.type, "choices", None) or []) or None,
                "is_flag": p.is_flag,
                "multiple": p.multiple,
                "required": p.required,
            }
        )
    return sorted(rows, key=lambda r: r["opts"][0])


def test_generated_options_equal_the_recorded_ones():
    """Every option of every command as it was before the options were made from the config
    fields (recorded from a000a3f): same flags, defaults, types and choices, so users' commands
    and TOML files keep working."""
    import json

    from memaudit.cli import cli as group
    from tests.conftest import ROOT

    recorded = json.loads((ROOT / "tests" / "cli_options.json").read_text())
    assert set(recorded) <= set(group.commands)
    for name, options in recorded.items():
        now = {tuple(p["opts"]): p for p in _params(group.commands[name])}
        for option in options:  # new options may be added; none of the old ones may change
            assert now.get(tuple(option["opts"])) == option, (name, option["opts"])


RUN_BAD = [
    (["--lr", "inf"], "--lr: must be a finite positive number, got inf"),
    (["--lr", "nan"], "--lr: must be a finite positive number, got nan"),
    (["--weight-decay", "nan"], "--weight-decay: must be a finite number >= 0, got nan"),
    (["--bleu-gain", "nan"], "--bleu-gain: must be a number in [0, 1], got nan"),
    (["--seed", "-1"], "--seed: must be an integer in [0, 2**63 - 1], got -1"),
    (["--mia-auc", "5"], "--mia-auc: must be a number in [0, 1], got 5.0"),
    (["--lora-alpha", "-5"], "--lora-alpha: must be a positive integer, got -5"),
    (["--min-reliability", "-0.5"], "--min-reliability: must be a number in [0, 1], got -0.5"),
    (["--models", "1.5"], "--models: expected a positive integer or 'auto', got '1.5'"),
    (["--link-z", "-inf"], "--link-z: must be a finite positive number, got -inf"),
    (["--cpus-per-model", "nan"], "--cpus-per-model: must be a finite number, got nan"),
    (
        ["--preset", "nq", "--template", "{text}"],
        "--preset and --template are exclusive: give one of them",
    ),
]


def _refused(tmp_path, monkeypatch, cli, *args):
    """Run `memaudit run` on a small data file; the one error line, after checking that the run
    was refused (exit 2, one line, no traceback) and wrote nothing."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [GOOD] * 3)
    before = tree(tmp_path)
    res = cli("run", *args, "--out", "run")
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1, res.err
    assert "Traceback" not in res.err
    assert tree(tmp_path) == before  # no run directory, nothing half-made
    return lines[0].removeprefix("memaudit: error: ")


@pytest.mark.parametrize(("args", "message"), RUN_BAD, ids=[b[1][:40] for b in RUN_BAD])
def test_invalid_values_name_the_option(tmp_path, monkeypatch, cli, args, message):
    args = ["d.jsonl", "--model", TINY_MODEL, "--finetune", "full", "--models", "2", *args]
    assert _refused(tmp_path, monkeypatch, cli, *args) == message


TOML_BAD = [
    ("epochs = 1.7", "c.toml: epochs: must be an integer, got 1.7"),  # was truncated to 1
    ("epochs = -0.5", "c.toml: epochs: must be an integer, got -0.5"),  # was "got 0"
    ("epochs = true", "c.toml: epochs: must be an integer, got True"),
    ("lr = '1e-3'", "c.toml: lr: must be a number, got '1e-3'"),
    ("lr = inf", "--lr: must be a finite positive number, got inf"),
    ("lr = nan", "--lr: must be a finite positive number, got nan"),
    ("lora_targets = ['q', 'v']", "c.toml: lora_targets: must be a string, got a list"),
    ("model = {name = 'x'}", "c.toml: model: must be a string, got a table"),
    ("[train]\nepochs = 3", "c.toml: unknown option 'train'"),
    ("epochz = 3", "c.toml: unknown option 'epochz'"),
    ("flip = 1", "c.toml: flip: must be true or false, got 1"),
    ("models = 2.5", "c.toml: models: must be an integer or a word, got 2.5"),
    ("seed = -1", "--seed: must be an integer in [0, 2**63 - 1], got -1"),
    ("mia_auc = 5", "--mia-auc: must be a number in [0, 1], got 5.0"),
    ("epochs = ", "c.toml: invalid TOML"),
    ("seed = " + "1" * 5000, "c.toml: invalid TOML: Exceeds the limit (4300 digits)"),
]


@pytest.mark.parametrize(("toml", "message"), TOML_BAD, ids=[b[0][:30] for b in TOML_BAD])
def test_invalid_toml_values_name_the_key(tmp_path, monkeypatch, cli, toml, message):
    (tmp_path / "c.toml").write_text(toml + "\n")
    args = ["d.jsonl", "--config", "c.toml", "--model", TINY_MODEL, "--models", "2"]
    assert message in _refused(tmp_path, monkeypatch, cli, *args)


def test_refused_image_run_with_a_record_format(tmp_path, monkeypatch, cli):
    """--preset with an image model: once validated by a RecordFormat that was discarded, then
    saved in the image run's config.json; now refused before anything is written."""
    npz = ROOT / "fixtures" / "images" / "cifar10_demo.npz"
    message = _refused(tmp_path, monkeypatch, cli, npz, "--model", "resnet-tiny", "--preset", "nq")
    assert message == (
        "--preset: says how to read JSON Lines records; --model resnet-tiny is an image model"
    )


def _captured(monkeypatch, cli, *args):
    """The RunConfig `memaudit run ARGS` builds (nothing runs)."""
    from memaudit import api

    made = []

    class Capture:
        def __init__(self, cfg, out, executor=None):
            made.append(cfg)

        def run(self, progress=False):
            pass

    monkeypatch.setattr(api, "Audit", Capture)
    res = cli("run", *args)
    assert res.code == 0, res.err
    return made[0]


RICH = {  # one value of each kind, none a default
    "model": "gpt-neo-125M",
    "preset": "nq",
    "finetune": "lora",
    "lora_r": 4,
    "lora_targets": "q_proj,v_proj",
    "epochs": 2,
    "lr": 1,
    "micro_batch_size": 5,
    "loss_on": "completion",
    "models": "auto",
    "first_round": 8,
    "max_models": 64,
    "design": "complementary",
    "seed": 7,
    "top_k": 3,
    "estimator": "plain",
    "extract_models": 4,
    "prefix_tokens": 8,
    "link_z": 3.5,
    "mia_auc": 0.8,
    "min_reliability": 0.8,
    "device": "cpu",
    "pack": "off",
    "trust_remote_code": True,
}


def _flags(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def test_toml_command_line_and_python_make_the_same_config(tmp_path, monkeypatch, cli):
    from memaudit.config import build_run_config

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [GOOD])
    lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in RICH.items()]
    (tmp_path / "c.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    by_flags = _captured(monkeypatch, cli, "d.jsonl", *_flags(RICH))
    by_toml = _captured(monkeypatch, cli, "d.jsonl", "--config", "c.toml")
    options = dict(RICH)
    by_python = build_run_config("d.jsonl", options.pop("model"), **options)
    assert by_flags == by_toml == by_python
    assert by_flags.ensemble.auto and by_flags.model.lora_targets == ("q_proj", "v_proj")
    # The command line wins over the file.
    mixed = _captured(monkeypatch, cli, "d.jsonl", "--config", "c.toml", "--seed", "9")
    assert mixed == dataclasses.replace(by_toml, ensemble=replace(by_toml.ensemble, seed=9))


def test_image_options_from_toml_and_command_line(tmp_path, monkeypatch, cli):
    """The bundled image demo's TOML, and the same options on the command line."""
    from memaudit.config import build_run_config

    npz = ROOT / "fixtures" / "images" / "cifar10_demo.npz"
    demo = ROOT / "fixtures" / "images" / "demo.toml"
    by_toml = _captured(monkeypatch, cli, npz, "--config", demo)
    flags = ["--model", "resnet-tiny", "--resize", "16", "--crop-padding", "0", "--flip"]
    flags += ["--epochs", "40", "--batch-size", "32", "--lr", "0.05", "--models", "64"]
    assert _captured(monkeypatch, cli, npz, *flags) == by_toml
    python = build_run_config(
        npz, "resnet-tiny", resize=16, crop_padding=0, epochs=40, batch_size=32, models=64
    )
    assert python == by_toml and by_toml.image.resize == 16 and by_toml.train.weight_decay == 5e-4


def test_cli_imports_without_tomllib(tmp_path):
    """Python 3.10 has no tomllib: the CLI imports and reads --config with tomli (it imported
    tomllib unconditionally after its fallback, so it failed to import)."""
    (tmp_path / "c.toml").write_text("epochz = 3\n")
    (tmp_path / "bad.toml").write_text("epochs = \n")
    script = (
        "import sys; sys.modules['tomllib'] = None\n"  # import tomllib: ModuleNotFoundError
        "from memaudit import cli\n"
        "assert cli.tomllib.__name__ == 'tomli', cli.tomllib\n"
        "sys.argv = ['memaudit', 'run', 'd.jsonl', '--config', sys.argv[1]]\n"
        "cli.main()\n"
    )
    for name, message in (("c.toml", "unknown option 'epochz'"), ("bad.toml", "invalid TOML")):
        proc = subprocess.run(
            [sys.executable, "-c", script, name],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"memaudit: error: --config: {name}: ")
        assert message in lines[0]


def test_report_and_analyze_overrides_are_checked(tmp_path, cli):
    """memaudit report/analyze options come from the same fields: a bad value is one line and
    leaves the run directory as it was."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ROOT / "fixtures" / "runs" / "v1-foundation", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cases = [
        (["report", run, "--link-z", "nan"], "--link-z: must be a finite positive number, got nan"),
        (["report", run, "--mia-auc", "5"], "--mia-auc: must be a number in [0, 1], got 5.0"),
        (["analyze", run, "--top-k", "0"], "--top-k: must be a positive integer, got 0"),
    ]
    for args, message in cases:
        res = cli(*args)
        assert res.code == 2, res.err
        assert res.err.strip().splitlines() == [f"memaudit: error: {message}"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
