"""End to end, as a user runs it: the CLI and the Python API on the bundled tiny model."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest

from memaudit import Audit
from memaudit.estimate.influence import InfluenceResult
from memaudit.report.build import load_schema
from tests.conftest import DEMO_CONFIG, DEMO_DATA, DEMO_SOURCE, ROOT, TINY_MODEL, write_jsonl
from tests.conftest import SMALL_RUN as SMALL


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    lines = DEMO_SOURCE.read_text(encoding="utf-8").splitlines()[:40]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _memaudit(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "memaudit", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _files(run):
    return {p.name: p.read_bytes() for p in sorted((run / "models").iterdir())}


@pytest.fixture(scope="module")
def reference_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _memaudit("run", small_data, *SMALL, "--models", "6", "--out", out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def _n_models_done(run):
    """Models whose metadata, written last, marks them complete."""
    if not (run / "models").exists():
        return 0
    return sum(re.fullmatch(r"\d{5}\.json", p.name) is not None for p in (run / "models").iterdir())


# When to kill: while setting up or in the first model; mid-ensemble (with parallel workers
# models finish out of order, so count them rather than wait for one name); after every model,
# while estimating and reporting.
KILL_WHEN = {
    "setup": lambda out: (out / "config.json").exists(),
    "mid-ensemble": lambda out: _n_models_done(out) >= 2,
    "estimating": lambda out: (out / "losses.npy").exists(),
}


@pytest.mark.parametrize("kill_when", list(KILL_WHEN))
def test_killed_run_resumes_identically(small_data, reference_run, tmp_path, kill_when):
    out = tmp_path / "run"
    proc = _memaudit("run", small_data, *SMALL, "--models", "6", "--out", out)
    deadline = time.time() + 300
    while not KILL_WHEN[kill_when](out):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    assert proc.poll() is None, "the kill should land while the run works"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _files(out) if (out / "models").exists() else {}
    n_done = _n_models_done(out)
    if kill_when == "mid-ensemble":
        assert 2 <= n_done < 6, "the kill should land mid-ensemble"
    if kill_when == "estimating":
        assert n_done == 6
    assert not (out / "report.json").exists()

    proc = _memaudit("run", small_data, *SMALL, "--models", "6", "--out", out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    if n_done:
        assert f"resuming: {n_done} models already trained" in err
    after = _files(out)
    for name, data in done_before.items():  # finished models were not retrained or rewritten
        if name.endswith(".json") and not name.startswith("."):
            assert after[name] == data
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "lock").exists()
    # Identical to the uninterrupted run: every loss, bit for bit, and the estimates.
    reference = np.load(reference_run / "losses.npy")
    np.testing.assert_array_equal(np.load(out / "losses.npy"), reference)
    a = InfluenceResult.load(out / "influence.npz")
    b = InfluenceResult.load(reference_run / "influence.npz")
    np.testing.assert_array_equal(a.self_influence, b.self_influence)
    np.testing.assert_array_equal(a.top_idx, b.top_idx)


def test_damaged_result_is_retrained_and_changes_are_refused(
    small_data, reference_run, tmp_path, cli
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    npy = out / "models" / "00003.npy"
    npy.write_bytes(npy.read_bytes()[:-8])  # truncated
    flipped = bytearray((out / "models" / "00001.npy").read_bytes())
    flipped[-3] ^= 0x10  # one bit of one loss
    (out / "models" / "00001.npy").write_bytes(bytes(flipped))
    # What a kill between a model's files leaves: its losses without the metadata that marks
    # them complete, a temporary file of the next one, and the dead run's lock.
    (out / "models" / "00005.json").unlink()
    (out / "models" / ".00004.json.x1y2.tmp").write_text('{"index": 4, "sta')
    (out / "lock").write_text(f"{socket.gethostname()} {_dead_pid()}\n")
    res = cli("run", small_data, *SMALL, "--models", "6", "--out", out)
    assert res.code == 0, res.err
    assert "resuming: 3 models already trained, 3 to go" in res.err
    assert not (out / "lock").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # swept
    reference = np.load(reference_run / "losses.npy")
    np.testing.assert_array_equal(np.load(out / "losses.npy"), reference)

    changed = [a if a != "3e-3" else "1e-3" for a in SMALL]
    res = cli("run", small_data, *changed, "--models", "6", "--out", out)
    assert res.code == 2 and "different configuration (train.lr: 0.003 -> 0.001)" in res.err
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": ["a"]}])
    res = cli("run", other, *SMALL, "--models", "6", "--out", out)
    assert res.code == 2 and "different dataset" in res.err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_more_models_extend_a_run(small_data, reference_run, tmp_path, cli):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    res = cli("run", small_data, *SMALL, "--models", "8", "--out", out)
    assert res.code == 0, res.err
    assert "resuming: 6 models already trained, 2 to go" in res.err
    losses = np.load(out / "losses.npy")
    assert losses.shape == (40, 8)
    np.testing.assert_array_equal(losses[:, :6], np.load(reference_run / "losses.npy"))


def test_python_api_reads_the_run(reference_run):
    audit = Audit.open(reference_run)
    records, p, losses = audit.records(), audit.inclusion(), audit.losses()
    assert len(records) == 40 and p.shape == (40, 6) and losses.shape == (40, 6)
    analysis = audit.analyze(top_k=5)
    assert analysis.result.top_idx.shape == (40, 5)
    # influence.json agrees with the arrays.
    doc = json.loads((reference_run / "influence.json").read_text())
    assert doc["estimator"] == "regression-adjusted" and doc["n_models_used"] == 6
    assert doc["records"][7]["self_influence"] == pytest.approx(analysis.result.self_influence[7])
    assert "text" not in json.dumps(doc["records"][0])  # no record text in the metrics file
    # The plain estimator on request, named as such.
    plain = audit.analyze(estimator="plain")
    doc = json.loads((reference_run / "influence.json").read_text())
    assert doc["estimator"] == plain.result.estimator == "difference-of-means"


@pytest.mark.slow
def test_demo_shows_the_papers_direction(tmp_path, cli):
    """`memaudit run` on the bundled demo exactly as the README runs it (300 records, 20 planted
    groups of 5, 32 models): near-duplicated records have lower self-influence, lower margins
    and higher extractability than unique ones, and the planted groups come back as clusters.

    Thresholds, from the measured run (2 cores): pair precision 1.00 and 20 of 20 clusters pure,
    17 of 20 groups found, margin AUC 1.00, BLEU 0.37 vs 0.18. Pair recall is low (0.27) by
    design: a group of 5 comes back in fragments of 2-3 at this M, so the test asks for groups
    found (a pure cluster holds two or more of the group), not pairs.
    """
    out = tmp_path / "demo"
    res = cli("run", DEMO_DATA, "--config", DEMO_CONFIG, "--out", out)
    assert res.code == 0, res.err
    s = json.loads((out / "influence.json").read_text())["summary"]
    uni, dup = s["unique"], s["near_duplicated"]
    assert (uni["records"], dup["records"]) == (200, 100)
    assert dup["self_influence"]["mean"] < 0.5 * uni["self_influence"]["mean"]
    assert dup["margin"]["median"] < 0.33 * uni["margin"]["median"]
    assert s["auc_self_influence"] > 0.95 and s["auc_margin"] > 0.95
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert report["ensemble"]["estimator"] == "regression-adjusted"
    planted = report["ground_truth"]["planted_table"]
    # The paper: BLEU 0.36 vs 0.07 for near-duplicated vs unique records.
    assert planted["near_duplicated"]["bleu"]["mean"] > planted["unique"]["bleu"]["mean"] + 0.1
    gt = report["ground_truth"]
    assert gt["pair_precision"] >= 0.95 and gt["cluster_purity"] >= 0.95
    assert gt["share_found"] >= 0.7 and gt["clusters"] >= 14
    assert (out / "report.html").stat().st_size > 10_000
    assert "records in near-duplicate clusters vs unique records" in res.out
    assert "Top near-duplicate clusters" in res.out
    # A fixed M gets the same diagnostics, and a warning exactly when they say M was too small.
    conv = json.loads((out / "convergence.json").read_text())
    assert conv["stopped_by"] == "fixed --models 32" and len(conv["rounds"]) == 1
    reliable = [c["met"] for c in conv["rounds"][0]["criteria"] if c["name"].startswith("rel")]
    assert ("have not settled" in res.out) == (not all(reliable))


def _plant_small(tmp_path, cli):
    """64 records: the first 48 of the demo source with 8 planted groups of 3."""
    planted = tmp_path / "planted.jsonl"
    source = tmp_path / "src.jsonl"
    source.write_text("\n".join(DEMO_SOURCE.read_text().splitlines()[:48]) + "\n")
    res = cli(
        "plant",
        source,
        "--preset",
        "nq",
        "--groups",
        "8",
        "--copies",
        "3",
        "--tokenizer",
        TINY_MODEL,
        "--out",
        planted,
    )
    assert res.code == 0, res.err
    return planted


@pytest.mark.slow
def test_planted_groups_are_each_others_top_influencers(tmp_path, cli):
    """With more models per record (64 records, 64 models), a planted record's strongest other
    influencers are its own group, and the margin separates planted from unique records."""
    planted = _plant_small(tmp_path, cli)
    out = tmp_path / "run"
    res = cli("run", planted, "--config", DEMO_CONFIG, "--models", "64", "--out", out)
    assert res.code == 0, res.err
    doc = json.loads((out / "influence.json").read_text())
    s = doc["summary"]
    assert s["near_duplicated"]["top_other_in_group"] >= 0.9
    assert s["near_duplicated"]["group_recall_at_size"] >= 0.85
    assert s["auc_margin"] >= 0.95
    assert s["unique"]["top1_is_self"] == 1.0
    # The report's near-duplicate clusters are the planted groups.
    gt = json.loads((out / "report.json").read_text())["ground_truth"]
    assert gt["pair_precision"] >= 0.9 and gt["pair_recall"] >= 0.8
    assert gt["groups_majority"] >= 7  # of 8
    # Spelled out on the records: a planted record's top two other influencers are its mates.
    rows = doc["records"]
    for r in rows:
        if r["group"]:
            others = [x["id"] for x in r["top_influencers"] if x["id"] != r["id"]][:2]
            mates = {x["id"] for x in rows if x["group"] == r["group"]} - {r["id"]}
            assert len(mates.intersection(others)) >= 1


@pytest.mark.slow
def test_models_auto_stops_by_its_rule(tmp_path, cli):
    """--models auto trains in rounds (16, 24, 32, ...) and stops when the diagnostics agree;
    the tolerances are options. On 64 records with planted groups of 3, at 24 models: split-
    half reliability of self-influence 0.88, of the margin 0.87, verdict change since 16
    models 0.375, no per-record verdict expected to flip. So these tolerances stop it at
    24, by the rule, far below the cap (the 16-model round never stops: nothing to compare)."""
    planted = _plant_small(tmp_path, cli)
    out = tmp_path / "run"
    res = cli(
        "run",
        planted,
        "--config",
        DEMO_CONFIG,
        "--models",
        "auto",
        "--max-models",
        "256",
        "--min-reliability",
        "0.6",
        "--max-flag-change",
        "0.5",
        "--out",
        out,
    )
    assert res.code == 0, res.err
    conv = json.loads((out / "convergence.json").read_text())
    assert [r["n_models"] for r in conv["rounds"]] == [16, 24]
    assert conv["stopped_by"].startswith("converged at 24 models")
    first, last = conv["rounds"]
    assert not first["converged"] and last["converged"]
    crit = {c["name"]: c for c in last["criteria"]}
    assert crit["reliability_self"]["value"] >= 0.6 and crit["flag_change"]["value"] <= 0.5
    assert crit["reliability_margin"]["change"] > 0  # the margin settles as models are added
    assert crit["expected_flips"]["value"] <= 0.025  # the per-record verdict is settled too
    assert len(list((out / "models").glob("0*[0-9].json"))) == 24
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert report["convergence"]["stopped_by"] == conv["stopped_by"]
    assert "Convergence (2 round(s)): converged at 24 models" in res.out
