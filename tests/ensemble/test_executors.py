"""Executors, retries, shards and faults: every way of training an ensemble gives the same bits.

The reference is one local run (--threads 1: CPU results are bit-identical for a given thread
count; on a machine with 2+ cores its members train in forked worker processes); the run in
this process alone, the Ray run, a worker killed mid-run, the shards merged, the retried
member, the disk-full run resumed all must reproduce its loss matrix exactly.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from memaudit import Audit
from memaudit.config import EnsembleConfig, ExtractConfig, ModelConfig, RunConfig, TrainConfig
from memaudit.ensemble.executors import ExecutorConfig
from memaudit.store.rundir import RunDir
from tests.conftest import DEMO_SOURCE, ROOT, SMALL_RUN, TINY_MODEL

N_MODELS = 6
SMALL = [
    *SMALL_RUN,
    "--models",
    str(N_MODELS),
    "--extract-models",
    "2",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    lines = DEMO_SOURCE.read_text(encoding="utf-8").splitlines()[:30]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(data) -> RunConfig:
    """The API twin of SMALL."""
    return RunConfig(
        data=str(data),
        model=ModelConfig(str(TINY_MODEL), finetune="full"),
        preset="nq",
        train=TrainConfig(epochs=2, lr=3e-3, batch_size=8, max_length=64),
        ensemble=EnsembleConfig(models=N_MODELS),
        extract=ExtractConfig(models=2),
    )


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    Audit(_config(data), out, executor=ExecutorConfig(threads=1)).run()
    return out


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _same_results(out, reference):
    """Bit-identical losses and extraction, and every model complete."""
    np.testing.assert_array_equal(np.load(out / "losses.npy"), np.load(reference / "losses.npy"))
    for j in range(2):
        name = f"{j:05d}.extract.json"
        assert (out / "models" / name).read_bytes() == (reference / "models" / name).read_bytes()
    status = RunDir(out).status(N_MODELS)
    assert status["ok"] == list(range(N_MODELS)), status


def test_cli_run_equals_the_api_run(data, reference, tmp_path, cli):
    res = cli("run", data, *SMALL, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    _same_results(tmp_path / "run", reference)
    assert json.loads((reference / "models" / "00003.json").read_text())["threads"] == 1


def test_worker_count_does_not_change_a_bit(data, reference, tmp_path):
    """In this process, or 3 forked workers: the same bits as the reference (auto)."""
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        Audit(_config(data), out, executor=ExecutorConfig(threads=1, workers=workers)).run()
        _same_results(out, reference)
        meta = json.loads((out / "models" / "00005.json").read_text())
        assert meta["threads"] == 1


def test_a_dead_worker_is_retried_and_the_run_ends_identical(
    data, reference, tmp_path, monkeypatch
):
    """A worker process that dies (OOM killer, segfault) fails its members, which are retried in
    fresh workers; the run ends with the reference's bits."""
    from memaudit.ensemble import member as ensemble

    compute = ensemble.compute_member
    marker = tmp_path / "died"

    def dies_once(ctx, j, column, on_step=None):
        if j == 3 and not marker.exists():
            marker.touch()
            os._exit(1)  # in the forked worker
        return compute(ctx, j, column, on_step)

    monkeypatch.setattr(ensemble, "compute_member", dies_once)
    out = tmp_path / "run"
    Audit(_config(data), out, executor=ExecutorConfig(threads=1, workers=2)).run()
    assert marker.exists()
    _same_results(out, reference)


def test_local_plan():
    from memaudit.ensemble.executors import plan_local

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    auto = plan_local(None, None, pending=10, device=cpu, cores=8)
    assert (auto.workers, auto.threads) == (8, 1)
    assert "8 worker processes" in auto.describe()
    # The thread count, all a result depends on, does not follow the pending count.
    assert (
        plan_local(None, None, 3, cpu, cores=8).workers,
        plan_local(None, None, 1, cpu, cores=8).threads,
    ) == (3, 1)
    assert (
        plan_local(None, 2, 10, cpu, cores=8).workers,
        plan_local(None, 2, 10, cpu, cores=8).threads,
    ) == (4, 2)
    assert plan_local(None, None, 10, cpu, cores=1).workers == 1
    assert plan_local(None, None, 10, gpu, cores=8).workers == 1
    assert (
        plan_local(2, None, 10, cpu, cores=8).workers,
        plan_local(2, None, 10, cpu, cores=8).threads,
    ) == (2, 4)
    assert plan_local(1, None, 10, cpu, cores=8).threads is None  # torch's default, as before
    # Memory caps the workers: 1 GB of trainable weights, and no machine has 64 of them spare.
    assert plan_local(None, None, 64, cpu, trainable_bytes=1 << 30, cores=64).workers < 64


def test_workers_option_is_checked(data, tmp_path, cli):
    res = cli("run", data, *SMALL, "--workers", "zero", "--out", tmp_path / "x")
    assert res.code == 2 and "--workers" in res.err and not (tmp_path / "x").exists()


# -- retries, divergence, disk full (local executor) -------------------------------------------
def test_failed_member_is_retried_then_reported_and_rerun(data, reference, tmp_path, monkeypatch):
    from memaudit.ensemble import member as ensemble

    compute = ensemble.compute_member
    calls: dict[int, int] = {}

    def flaky(ctx, j, column, on_step=None):
        calls[j] = calls.get(j, 0) + 1
        if j == 1 and calls[j] == 1:
            raise RuntimeError("transient: lost the device")
        if j == 4:
            raise RuntimeError("always broken")
        return compute(ctx, j, column, on_step)

    monkeypatch.setattr(ensemble, "compute_member", flaky)
    out = tmp_path / "run"
    # In this process (workers=1), so that the calls are counted here.
    ecfg = ExecutorConfig(threads=1, retries=2, workers=1)
    report = Audit(_config(data), out, executor=ecfg).run()
    audit = Audit(_config(data), out, executor=ecfg)
    assert calls[1] == 2  # retried once, then fine
    assert calls[4] == 3  # one try and two retries, then given up
    status = audit.status()
    assert status["failed"] == {4: "RuntimeError: always broken"} and status["missing"] == []
    failure = json.loads((out / "models" / "00004.failed.json").read_text())
    assert failure["attempts"] == 3 and "always broken" in failure["traceback"]
    # The run finished with the others, and says so.
    assert report["ensemble"]["excluded_models"] == [4]
    losses = np.load(out / "losses.npy")
    ref = np.load(reference / "losses.npy")
    np.testing.assert_array_equal(np.delete(losses, 4, axis=1), np.delete(ref, 4, axis=1))
    assert np.isnan(losses[:, 4]).all()

    # A rerun retries the failed member only; the result is then the reference, bit for bit.
    monkeypatch.setattr(ensemble, "compute_member", compute)
    again = Audit(_config(data), out, executor=ExecutorConfig(threads=1))
    assert again.train() == [4]
    again.analyze()
    _same_results(out, reference)
    assert not (out / "models" / "00004.failed.json").exists()


def test_injected_nan_is_excluded_and_reported(data, reference, tmp_path, monkeypatch, cli):
    """A member whose training loss turns NaN is recorded as diverged, excluded from every
    estimate, reported, and not retrained by a rerun."""
    import torch

    from memaudit.data.partition import model_seed
    from memaudit.ensemble import train

    token_nll = train.token_nll
    bad_seed = model_seed(0, 2)

    def poisoned(model, batch):
        nll, mask = token_nll(model, batch)
        if model.training and torch.initial_seed() == bad_seed:
            nll = nll * float("nan")
        return nll, mask

    monkeypatch.setattr(train, "token_nll", poisoned)
    out = tmp_path / "run"
    res = cli("run", data, *SMALL, "--out", out)
    assert res.code == 0, res.err
    meta = json.loads((out / "models" / "00002.json").read_text())
    assert meta["status"] == "diverged" and "non-finite training loss" in meta["error"]
    assert not (out / "models" / "00002.npy").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["ensemble"]["excluded_models"] == [2]
    assert "1 models diverged and are excluded: 2" in " ".join(res.err.split())
    losses = np.load(out / "losses.npy")
    assert np.isnan(losses[:, 2]).all()
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(losses[:, keep], np.load(reference / "losses.npy")[:, keep])
    # The estimates are those of the five valid models, not an average with NaN in it.
    influence = json.loads((out / "influence.json").read_text())
    assert influence["n_models_used"] == 5 and influence["excluded_models"] == [2]
    monkeypatch.setattr(train, "token_nll", token_nll)
    res = cli("run", data, *SMALL, "--out", out)
    assert res.code == 0 and "resuming: 6 models already trained, 0 to go" in res.err


def test_disk_full_stops_with_one_line_and_nothing_half_written(
    data, reference, tmp_path, monkeypatch, cli
):
    real_fsync = os.fsync
    writes = {"n": 0}

    def fsync(fd):
        writes["n"] += 1
        if writes["n"] > 9:  # config, records, inclusion, then a few models' files
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    res = cli("run", data, *SMALL, "--out", out)
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert lines[-1].startswith("memaudit: error: ") and "no space left on device" in lines[-1]
    assert "Traceback" not in res.err
    # Nothing half-written: no temporary files, no lock, and every file that marks a model
    # complete points at whole, checksummed results.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "lock").exists() and not (out / "report.json").exists()
    run = RunDir(out)
    done = [j for j in range(N_MODELS) if (out / "models" / f"{j:05d}.json").exists()]
    assert 1 <= len(done) < N_MODELS
    assert all(run.model_meta(j) is not None for j in done)

    monkeypatch.setattr(os, "fsync", real_fsync)
    res = cli("run", data, *SMALL, "--out", out)
    assert res.code == 0, res.err
    assert f"resuming: {len(done)} models already trained" in res.err
    _same_results(out, reference)


# -- shards ----------------------------------------------------------------------------------
def test_shards_in_separate_processes_merge_to_the_single_run(data, reference, tmp_path, cli):
    out = tmp_path / "run"
    res = cli("run", data, *SMALL, "--prepare-only", "--out", out)
    assert res.code == 0, res.err
    assert "memaudit train" in res.out and not list((out / "models").iterdir())
    # Two of three shards side by side, as a job array would start them.
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memaudit",
                "train",
                str(out),
                "--shard",
                f"{i}/3",
                "--threads",
                "1",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert "trained 2 models" in stdout
    assert sorted(p.name for p in (out / "models").glob("*[0-9].json")) == [
        f"{j:05d}.json" for j in (0, 1, 3, 4)
    ]
    assert not list((out / "locks").iterdir())  # released
    # The report merges what is there and says what is missing (shard 3: models 2 and 5).
    res = cli("report", out, "--format", "json")
    assert res.code == 0, res.err
    assert "2 of 6 models have no result (2, 5)" in " ".join(res.err.split())
    res = cli("train", out, "--shard", "3/3", "--threads", "1")
    assert res.code == 0, res.err
    res = cli("report", out, "--format", "json")
    assert res.code == 0 and "no result" not in res.err
    _same_results(out, reference)


def test_shard_options_are_checked(data, reference, tmp_path, cli):
    for bad in ("0/3", "4/3", "2", "a/b"):
        res = cli("train", reference, "--shard", bad)
        assert res.code == 2 and "--shard" in res.err
    res = cli("train", tmp_path / "nothing")
    assert res.code == 2 and "not a memaudit run directory" in res.err
    res = cli("run", data, *SMALL[:-4], "--models", "auto", "--prepare-only", "--out", tmp_path)
    assert res.code == 2 and "--prepare-only: needs a fixed --models" in res.err


# -- Ray -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local 2-CPU cluster for the module; its workers can be told to die (ray_hooks)."""
    ray = pytest.importorskip("ray")
    arm = tmp_path_factory.mktemp("ray") / "arm"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.ray_hooks.kill_once",
            "env_vars": {"PYTHONPATH": str(ROOT), "MEMAUDIT_TEST_ARM": str(arm)},
        },
    )
    yield arm
    ray.shutdown()


def test_ray_run_equals_the_local_run(data, reference, tmp_path, ray_cluster):
    out = tmp_path / "run"
    audit = Audit(_config(data), out, executor=ExecutorConfig("ray", cpus=1))
    audit.run()
    _same_results(out, reference)
    meta = json.loads((out / "models" / "00001.json").read_text())
    assert meta["threads"] == 1 and "host" in meta  # computed by a Ray worker


def test_cli_starts_its_own_ray_cluster(reference, tmp_path):
    """`memaudit train --executor ray` with no address starts a local cluster (and stops it);
    its workers import this tree, and the members they train equal the reference."""
    pytest.importorskip("ray")
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for j in (1, 4):
        (out / "models" / f"{j:05d}.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "memaudit", "train", str(out), "--executor", "ray"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "trained 2 models; the run has 6 of 6 models done" in proc.stdout
    RunDir(out).collect_losses(30, N_MODELS)
    _same_results(out, reference)
    assert "host" in json.loads((out / "models" / "00004.json").read_text())


def test_ray_worker_killed_mid_run_still_gives_identical_results(
    data, reference, tmp_path, ray_cluster
):
    arm = ray_cluster
    arm.write_text("")
    try:
        out = tmp_path / "run"
        failures = []
        audit = Audit(_config(data), out, executor=ExecutorConfig("ray", cpus=1, retries=1))
        prepared = audit.prepare()
        from memaudit.ensemble import driver

        hooks = driver.EnsembleProgress(on_failure=lambda *a: failures.append(a))
        executor = audit._get_executor(prepared)
        driver.train_ensemble(
            audit.run_dir,
            audit.config,
            prepared.inclusion,
            prepared.tokens,
            prepared.factory,
            prepared.device,
            prepared.dtype,
            hooks,
            tokenizer=prepared.tokenizer,
            executor=executor,
            retries=1,
        )
        audit.close()
        audit.analyze()
    finally:
        arm.unlink()
    assert arm.with_suffix(".done").exists()  # a worker did die
    assert [(j, attempt) for j, attempt, _ in failures] == [(1, 1)]
    assert "died" in failures[0][2].lower() or "crash" in failures[0][2].lower()
    _same_results(out, reference)


def test_ray_refuses_workers_running_other_code(data, tmp_path, ray_cluster, monkeypatch):
    from memaudit.ensemble import executors
    from memaudit.errors import MemauditError

    monkeypatch.setattr(executors, "code_digest", lambda: "something else")
    audit = Audit(_config(data), tmp_path / "run", executor=ExecutorConfig("ray"))
    with pytest.raises(MemauditError, match="Ray workers import a different memaudit"):
        audit.run()


def test_missing_ray_says_how_to_install(data, tmp_path, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = cli("run", data, *SMALL, "--executor", "ray", "--out", tmp_path / "run")
    assert res.code == 2
    assert res.err.strip() == (
        "memaudit: error: --executor ray: the ray package is not installed; "
        'pip install "memaudit[ray]"'
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written
