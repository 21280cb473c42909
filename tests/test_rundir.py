import json

import numpy as np
import pytest

from memaudit.config import ModelConfig, RunConfig, TrainConfig
from memaudit.errors import MemauditError
from memaudit.records import Record
from memaudit.rundir import RunDir


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
