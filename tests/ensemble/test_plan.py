"""The cost plan (memaudit.ensemble.plan): its projection arithmetic, and `memaudit run --plan`
on the tiny model: measured, printed, written to RUN/plan.json, nothing trained."""

import json

import pytest

from memaudit.config import EnsembleConfig, ExtractConfig, ModelConfig, RunConfig, TrainConfig
from memaudit.ensemble.plan import DAY, describe, disk_bytes, project, steps_per_member
from tests.conftest import DEMO_DATA, SMALL_RUN, TINY_MODEL, write_jsonl

PARTS = {"fresh_seconds": 0.5, "step_seconds": 0.25, "eval_seconds_per_record": 0.01}


def _cfg(**ensemble) -> RunConfig:
    return RunConfig(
        data="-",
        model=ModelConfig(str(TINY_MODEL)),
        train=TrainConfig(epochs=3, batch_size=10),
        ensemble=EnsembleConfig(**ensemble),
        extract=ExtractConfig(models=4),
    )


def test_steps_per_member_is_epochs_times_batches_of_a_half():
    assert steps_per_member(_cfg(), 200) == 3 * 10
    assert steps_per_member(_cfg(), 201) == 3 * 11  # 100.5 records: a partial last batch
    assert steps_per_member(_cfg(), 1) == 3


def test_projection_totals_models_and_extraction():
    parts = {**PARTS, "decode_seconds_per_record": 0.02}
    p = project(_cfg(models=100), 200, parts, workers=2)
    per_model = 0.5 + 30 * 0.25 + 200 * 0.01
    assert p["seconds_per_model"] == pytest.approx(per_model)
    assert p["extract_seconds_per_model"] == pytest.approx(4.0)
    assert p["total"]["seconds"] == pytest.approx((100 * per_model + 4 * 4.0) / 2, abs=0.1)
    # --models auto: from the first round (16 unless given) to --max-models.
    assert p["auto"]["min_models"] == 16 and p["auto"]["max_models"] == 1000
    assert p["auto"]["max_seconds"] == pytest.approx((1000 * per_model + 16) / 2, abs=0.1)
    auto = project(_cfg(models=32, auto=True, max_models=256), 200, parts)
    assert auto["total"] is None
    assert (auto["auto"]["min_models"], auto["auto"]["max_models"]) == (32, 256)


def test_disk_grows_with_models_and_records():
    cfg = _cfg()
    small = disk_bytes(cfg, 100, 10, 5000, {})
    assert disk_bytes(cfg, 100, 20, 5000, {}) > small
    assert disk_bytes(cfg, 200, 10, 10000, {}) > small
    # Each model's losses alone are 8 bytes per record.
    assert disk_bytes(cfg, 1000, 1000, 0, {}) > 1000 * 1000 * 8


def test_more_than_a_day_warns_and_names_models_auto():
    p = project(_cfg(models=1000), 20000, {**PARTS, "step_seconds": 10.0})
    plan = {
        **p,
        "model": "m",
        "records": 20000,
        "device": "cpu",
        "dtype": "float32",
        "threads_per_model": 1,
        "peak_memory_per_member_gib": None,
        "pack": {"member_memory_estimate_mib": 1.0, "k": 1, "why": "off"},
        "disk_bytes": 10,
        "disk_models": 1000,
        "exceeds_a_day": p["total"]["seconds"] > DAY,
    }
    assert plan["exceeds_a_day"]
    text = "\n".join(describe(plan))
    assert "more than a day" in text and "--models auto" in text
    assert "--models 1000:" in text and "days" in text


def test_run_plan_measures_writes_plan_json_and_trains_nothing(cli, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(DEMO_DATA.read_text().splitlines(True)[:40]))
    out = tmp_path / "run"
    args = [data, *SMALL_RUN, "--models", "4", "--extract-models", "2", "--workers", "1"]
    r = cli("run", *args, "--out", out, "--plan")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]  # nothing trained
    plan = json.loads((out / "plan.json").read_text())
    assert plan["records"] == 40 and plan["device"] == "cpu" and plan["workers"] == 1
    assert plan["steps_per_model"] == 2 * 3  # 2 epochs of ceil(20 / 8) batches
    assert plan["measured"]["step_seconds"] > 0 and plan["measured"]["timed_steps"] >= 1
    assert plan["total"]["models"] == 4 and plan["total"]["seconds"] > 0
    assert plan["pack"]["k"] >= 1 and plan["disk_bytes"] > 40 * 8 * 4
    assert "per model:" in r.out and "--models 4:" in r.out and "plan.json" in r.out
    # The folder that holds only the plan is where the run then goes.
    r = cli("run", *args, "--out", out)
    assert r.code == 0, r.err
    assert (out / "report.json").is_file() and (out / "plan.json").is_file()


def test_plan_of_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q"}])  # no answer field
    out = tmp_path / "run"
    r = cli("run", data, *SMALL_RUN, "--out", out, "--plan")
    assert r.code == 2
    assert r.err.count("\n") == 1 and "error" in r.err
    assert not out.exists()


def test_a_new_full_mode_run_shows_its_plan_before_it_starts(cli, tmp_path, monkeypatch):
    """M = 1,000: the projection is printed and written before training; training itself is
    replaced here by a stub that records that it was reached."""
    from memaudit import api

    started = []
    monkeypatch.setattr(api.Audit, "run", lambda self, progress=False: started.append(1))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(DEMO_DATA.read_text().splitlines(True)[:20]))
    out = tmp_path / "run"
    r = cli("run", data, *SMALL_RUN, "--models", "1000", "--workers", "1", "--out", out)
    assert r.code == 0, r.err
    assert "--models 1000:" in r.out and (out / "plan.json").is_file() and started == [1]
    # Not for a fixed smaller M, nor --models auto.
    started.clear()
    r = cli("run", data, *SMALL_RUN, "--models", "8", "--out", tmp_path / "small")
    assert r.code == 0 and "plan:" not in r.out and started == [1]
    assert not (tmp_path / "small").exists()
