import json

import numpy as np
import pytest

from memaudit.config import ModelConfig, RunConfig, TrainConfig
from memaudit.data.records import Record
from memaudit.errors import MemauditError
from memaudit.store.rundir import RunDir


def _cfg(**train):
    return RunConfig(
        data="d.jsonl", model=ModelConfig("m", finetune="full"), train=TrainConfig(**train)
    )


RECORDS = [Record(0, "a", "x y", None, None, 1), Record(1, "b", "z w", None, "g", 2)]


def test_create_then_resume_and_refuse_changes(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.check_or_create(_cfg(), RECORDS, "abc") is False
    assert run.records() == RECORDS
    saved = run.read_config()
    assert saved["dataset"] == {"path": "d.jsonl", "sha256": "abc", "records": 2}
    assert saved["versions"]["numpy"] == np.__version__
    assert run.check_or_create(_cfg(), RECORDS, "abc") is True
    # The model count, device and analysis options may change; the training setup may not.
    bigger = RunConfig(
        data="elsewhere.jsonl", model=ModelConfig("m", finetune="full"), device="cpu"
    )
    assert run.check_or_create(bigger, RECORDS, "abc") is True
    with pytest.raises(MemauditError, match=r"different configuration \(train.lr: 0.0002 -> 0.1"):
        run.check_or_create(_cfg(lr=0.1), RECORDS, "abc")
    with pytest.raises(MemauditError, match="different dataset"):
        run.check_or_create(_cfg(), RECORDS, "def")


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MemauditError, match="not a memaudit run directory"):
        RunDir(tmp_path).check_or_create(_cfg(), RECORDS, "abc")


def test_model_results_are_checked_before_use(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    losses = np.array([1.5, 2.5])
    run.save_model(0, losses, {"status": "ok", "seed": 1})
    assert run.model_meta(0)["seed"] == 1
    np.testing.assert_array_equal(run.model_losses(0), losses)
    assert run.model_meta(1) is None  # never trained
    # A truncated or bit-flipped loss file is not read: the model counts as not done.
    npy = run.models_dir / "00000.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 1
    npy.write_bytes(bytes(data))
    assert run.model_meta(0) is None
    run.save_model(0, losses, {"status": "ok", "seed": 1})
    npy.write_bytes(npy.read_bytes()[:-3])
    assert run.model_meta(0) is None
    # Metadata half-written (invalid JSON) also means "not done".
    run.save_model(0, losses, {"status": "ok", "seed": 1})
    (run.models_dir / "00000.json").write_text('{"index": 0, "sta')
    assert run.model_meta(0) is None


def test_collect_losses_marks_failed_models(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    run.save_model(0, np.array([1.0, 2.0]), {"status": "ok"})
    run.save_model(1, None, {"status": "diverged", "error": "nan"})
    losses, valid = run.collect_losses(2, 3)
    assert valid.tolist() == [True, False, False]
    assert np.isnan(losses[:, 1:]).all()
    assert json.loads((run.models_dir / "00001.json").read_text())["status"] == "diverged"
    assert not list(run.path.rglob("*.tmp"))


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    lock = run.file("lock")
    with run.lock():
        assert lock.read_text().split() == [socket.gethostname(), str(os.getpid())]
        # A second writer (here: another holder name for a live process) is refused.
        lock.write_text(f"{socket.gethostname()} {os.getppid()}\n")
        with pytest.raises(MemauditError, match="another memaudit run"):
            run.check_unlocked()
        with pytest.raises(MemauditError, match="another memaudit run"), run.lock():
            pass
        lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")
    assert not lock.exists()  # released
    # A lock left by a process that died (SIGKILL never cleans up) is stale: taken over.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lock.write_text(f"{socket.gethostname()} {dead}\n")
    with run.lock():
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock.exists()


def test_shards_run_side_by_side_but_not_beside_a_run_or_another_split(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    me = f"{socket.gethostname()} {os.getpid()}"
    with run.shard_lock(1, 2):
        assert (run.path / "locks" / "shard-1-of-2").read_text().strip() == me
        with run.shard_lock(2, 2):  # the other shard of the split: fine
            assert [name for name, _ in run.live_shards()] == ["shard-1-of-2", "shard-2-of-2"]
        with (
            pytest.raises(MemauditError, match="shard 1/2 is already training"),
            run.shard_lock(1, 2),
        ):
            pass
        with pytest.raises(MemauditError, match="a shard of another split"), run.shard_lock(1, 3):
            pass
        # A full run is refused while shards train, early (prepare) and at the lock.
        with pytest.raises(MemauditError, match="shards are training it"):
            run.check_idle()
        with pytest.raises(MemauditError, match="shards are training it"), run.lock():
            pass
        assert not run.file("lock").exists()  # the refused run took nothing
    assert not list((run.path / "locks").iterdir())
    with (
        run.lock(),
        pytest.raises(MemauditError, match="another memaudit run"),
        run.shard_lock(1, 2),
    ):
        pass
    assert not list((run.path / "locks").iterdir())
    # A shard killed on this host left its lock: stale, taken over by its rerun.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (run.path / "locks" / "shard-2-of-2").write_text(f"{socket.gethostname()} {dead}\n")
    assert run.live_shards() == []
    with run.shard_lock(2, 2):
        pass
    with run.lock():
        pass


def test_failures_are_recorded_until_the_model_is_written(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    run.save_model(0, np.array([1.0, 2.0]), {"status": "ok"})
    run.save_failure(1, 3, "RuntimeError: boom", "trace")
    run.save_model(2, None, {"status": "diverged", "error": "nan"})
    status = run.status(4)
    assert status == {
        "models": 4,
        "ok": [0],
        "diverged": [2],
        "failed": {1: "RuntimeError: boom"},
        "missing": [3],
    }
    assert run.model_meta(1) is None  # a failure is not a result: the next run retries it
    run.save_model(1, np.array([3.0, 4.0]), {"status": "ok"})
    assert not (run.models_dir / "00001.failed.json").exists()
    assert run.status(4)["ok"] == [0, 1]


# -- hostile and careless input (issue 15) -------------------------------------------------------


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_refused_run_leaves_the_directory_byte_identical(tmp_path):
    import os
    import socket

    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    before = _snapshot(run.path)
    # Another live run holds the lock: a resume with other (non-fingerprint) options is refused
    # and rewrites nothing, not even config.json.
    run.file("lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")
    before = _snapshot(run.path)
    other = RunConfig(data="d.jsonl", model=ModelConfig("m", finetune="full"), device="cpu")
    with pytest.raises(MemauditError, match="another memaudit run"):
        run.check_or_create(other, RECORDS, "abc")
    assert _snapshot(run.path) == before
    for bad in (_cfg(lr=0.1), _cfg()):
        with pytest.raises(MemauditError):
            run.check_or_create(bad, RECORDS, "abc" if bad.train.lr == 0.1 else "def")
        assert _snapshot(run.path) == before


def test_lone_surrogate_is_refused_before_anything_is_written(tmp_path):
    bad = [Record(0, "\ud800", "x y", None, None, 3)]
    with pytest.raises(MemauditError, match=r"line 3 .*lone surrogate"):
        RunDir(tmp_path / "run").check_or_create(_cfg(), bad, "abc")
    assert list(tmp_path.iterdir()) == []


def test_a_half_created_directory_is_created_again(tmp_path):
    run = RunDir(tmp_path / "run")
    # What an interrupted creation (older versions) left: models/ and maybe records.jsonl.
    (run.path / "models").mkdir(parents=True)
    (run.path / "records.jsonl").write_text('{"index": 0')
    (run.path / ".config.json.x.tmp").write_text("")
    assert run.check_or_create(_cfg(), RECORDS, "abc") is False
    assert run.records() == RECORDS
    # An interrupted creation of this version: a hidden sibling whose creator is gone.
    sibling = tmp_path / ".run2.creating-abc"
    sibling.mkdir()
    (sibling / "creator").write_text("somehost-that-is-not-here 1\n")
    (sibling / "config.json").write_text("{")
    RunDir(tmp_path / "run2").check_or_create(_cfg(), RECORDS, "abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run2.creating-abc", "run", "run2"]
    # ... kept while its (other-host) creator may be alive; a dead one is swept.
    dead = tmp_path / ".run3.creating-xyz"
    dead.mkdir()
    RunDir(tmp_path / "run3").check_or_create(_cfg(), RECORDS, "abc")
    assert not dead.exists() and RunDir(tmp_path / "run3").records() == RECORDS


def test_an_unwritable_place_is_one_line(tmp_path):
    with pytest.raises(MemauditError, match="cannot write"):
        RunDir("/proc/memaudit-run").check_or_create(_cfg(), RECORDS, "abc")


def test_altered_model_metadata_is_retrained_never_read(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    run.save_model(5, np.array([1.0, 2.0]), {"status": "ok", "seed": 1})
    run.save_model(6, None, {"status": "diverged", "error": "nan"})
    assert run.status(7)["ok"] == [5] and run.status(7)["diverged"] == [6]
    meta = run.models_dir / "00005.json"
    meta.write_text(meta.read_text().replace('"ok"', '"oK"'))
    other = run.models_dir / "00006.json"
    other.write_text(other.read_text().replace('"nan"', '"NaN"'))
    status = run.status(7)
    assert 5 in status["missing"] and 6 in status["missing"] and status["diverged"] == []
    # Not UTF-8, or not an object: pending too, never a crash.
    meta.write_bytes(b"\xff\xfe{}")
    other.write_text("[1, 2]")
    assert run.model_meta(5) is None and run.model_meta(6) is None
    (run.models_dir / "00005.failed.json").write_text('"x"')
    assert 5 in run.status(7)["missing"]


@pytest.mark.parametrize(
    "damage, match, repairs",
    [
        (lambda r: r.config_path.write_text('{"format_version": 1, "conf'), "config.json", False),
        (
            lambda r: r.config_path.write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads(r.config_path.read_text()).items()
                        if k != "dataset"
                    }
                )
            ),
            "config.json: .*dataset",
            False,
        ),
        (lambda r: r.file("records.jsonl").unlink(), "records.jsonl: .*missing", True),
        (
            lambda r: r.file("records.jsonl").write_bytes(r.file("records.jsonl").read_bytes()[:9]),
            "records.jsonl: .*line 1",
            True,
        ),
        (lambda r: np.save(r.file("inclusion.npy"), np.ones((5, 2), bool)), "shape", True),
        (
            lambda r: r.file("inclusion.npy").write_bytes(
                r.file("inclusion.npy").read_bytes()[:70]
            ),
            "inclusion.npy",
            True,
        ),
    ],
)
def test_damaged_files_are_one_line_errors_that_say_whether_a_rerun_repairs(
    tmp_path, damage, match, repairs
):
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    run.save_inclusion(np.ones((2, 4), bool))
    damage(run)
    with pytest.raises(MemauditError, match=match) as err:
        run.config()
        run.records()
        run.inclusion()
    message = str(err.value)
    assert "\n" not in message and "damaged" in message
    assert ("rerun the same" in message) == repairs
    if repairs:  # the rerun it recommends does repair it
        run.check_or_create(_cfg(), RECORDS, "abc")
        run.save_inclusion(np.ones((2, 4), bool))
        assert run.records() == RECORDS and run.inclusion().shape == (2, 4)


def test_a_stored_trust_remote_code_is_ignored(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = RunConfig(data="d.jsonl", model=ModelConfig("m", trust_remote_code=True))
    run.check_or_create(cfg, RECORDS, "abc")
    assert run.read_config()["config"]["model"]["trust_remote_code"] is True
    assert run.config().model.trust_remote_code is False


def _race(path, barrier, results):
    import time

    from memaudit.store.rundir import RunDir as Run

    barrier.wait()
    try:
        with Run(path).lock():
            results.put("won")
            time.sleep(0.05)  # hold it while the other one tries
            barrier.wait()
    except MemauditError:
        results.put("lost")
        barrier.wait()


def test_two_processes_taking_over_a_stale_lock_never_both_hold_it(tmp_path):
    import multiprocessing
    import socket
    import subprocess
    import sys

    mp = multiprocessing.get_context("fork")
    run = RunDir(tmp_path / "run")
    run.check_or_create(_cfg(), RECORDS, "abc")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for _ in range(50):
        run.file("lock").write_text(f"{socket.gethostname()} {dead}\n")  # stale
        barrier, results = mp.Barrier(2), mp.Queue()
        procs = [mp.Process(target=_race, args=(run.path, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcome = sorted(results.get(timeout=5) for _ in procs)
        assert outcome == ["lost", "won"]
        assert not run.file("lock").exists()  # the winner released it; nobody else unlinked
