"""Where ensemble members are computed: in this process, or as Ray tasks on a cluster.

An executor maps member indices to outcomes, a :class:`~memaudit.ensemble.member.MemberResult` or
the exception that member raised, yielded as they finish. It never writes: results travel back to
the driver (the process running ``memaudit run``/``train``), which writes them to the run
directory, so Ray workers need no shared file system and a failed worker loses nothing written.

Ray workers build their own copy of the setup (tokenizer, tokens, model) from the configuration
and the records the driver sends, once per worker process (Ray reuses workers), and train with
``threads`` torch threads: CPU results are bit-identical to the local executor's for the same
thread count.

On CPU the local executor runs members in forked worker processes, ``threads`` each (default
one per core, one thread each: measured faster than one process using every core, see
docs/ARCHITECTURE.md), sharing the driver's loaded model and tokens copy-on-write. A member's
result depends on its thread count only, never on how many workers run beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.ensemble import member as ensemble
from memaudit.ensemble import member_packs as packed
from memaudit.errors import MemauditError
from memaudit.modality import modality_of
from memaudit.store.io import sha256_bytes

EXECUTORS = ("local", "ray")
PACKAGE = Path(__file__).resolve().parents[1]  # the memaudit package, as shipped to Ray workers
RAY_INSTALL = 'pip install "memaudit[ray]"'
Outcome = tuple[int, Any]  # (j, MemberResult | BaseException)


@dataclass(frozen=True)
class ExecutorConfig:
    """How members are run; none of it changes a result except ``threads`` on CPU."""

    kind: str = "local"
    address: str | None = (
        None  # Ray: a running cluster ("auto", "ray://host:10001"); None: start one
    )
    cpus: float = 1.0  # Ray: CPUs per member task
    gpus: float = 0.0  # Ray: GPUs per member task
    threads: int | None = None  # torch CPU threads per member; None: torch's default (local),
    # ceil(cpus) (Ray)
    retries: int = 2  # extra attempts for a member whose computation failed
    workers: int | None = None  # local, CPU: worker processes; None: auto (one per core)
    runtime_env: Mapping[str, Any] | None = field(default=None, compare=False)  # Ray, API only

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise MemauditError(f"--executor: '{self.kind}' is not one of {', '.join(EXECUTORS)}")
        if self.cpus <= 0 or self.gpus < 0:
            raise MemauditError("--cpus-per-model must be positive, --gpus-per-model not negative")
        if self.threads is not None and self.threads < 1:
            raise MemauditError("--threads: must be a positive integer")
        if self.retries < 0:
            raise MemauditError("--retries: must not be negative")
        if self.workers is not None and self.workers < 1:
            raise MemauditError("--workers: must be a positive integer or auto")
        if self.kind == "ray":
            import_ray()  # before anything is written

    @property
    def worker_threads(self) -> int:
        return self.threads or max(1, math.ceil(self.cpus))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and container CPU sets
    except AttributeError:
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class LocalPlan:
    """How the local executor runs a batch of members: ``workers`` processes (1: this process)
    with ``threads`` torch threads per member (None: torch's default)."""

    workers: int
    threads: int | None
    why: str

    def describe(self) -> str:
        threads = "torch's default" if self.threads is None else str(self.threads)
        where = "in this process" if self.workers == 1 else f"in {self.workers} worker processes"
        return f"training {where}, {threads} torch thread(s) per model ({self.why})"


def plan_local(
    workers: int | None,
    threads: int | None,
    pending: int,
    device: torch.device,
    trainable_bytes: int = 0,
    cores: int | None = None,
) -> LocalPlan:
    """Workers and threads per member for the local executor.

    auto (``workers=None``) on CPU: one thread per member (or ``threads``) and as many worker
    processes as that leaves cores, capped by the pending members and by memory. The thread
    count, which is all a CPU result depends on, is then the same whatever the worker count
    (1 also for a single pending member), so a rerun on any machine is identical. Measured on
    the tiny model, 2 cores shared with other processes (benchmarks/engine.py, two runs): 2
    workers x 1 thread 0.92-1.27x the speed of 1 process x 1 thread and 3.9-29x that of 1
    process x 2 threads (a thread that waits for a busy core stalls its whole matmul); on an
    idle machine 1.15x that of 1 x 2. Small matmuls do not split well across threads.
    """
    cores = cores or usable_cores()
    parallel_ok = device.type == "cpu" and _FORK is not None
    if workers is not None:  # explicit
        if workers == 1 or not parallel_ok:
            why = "--workers 1" if workers == 1 else "worker processes are for CPU training"
            return LocalPlan(1, threads, why)
        per = threads or max(1, cores // workers)
        return LocalPlan(min(workers, max(pending, 1)), per, f"--workers {workers}")
    if not parallel_ok:
        return LocalPlan(1, threads, "auto: not CPU" if device.type != "cpu" else "auto: no fork")
    per = threads or 1
    n = max(1, min(cores // per, pending))
    mem = _available_memory()
    if mem and trainable_bytes and n > 1:
        # Weights (copied once written), gradients and two AdamW moments, plus slack.
        need = 4 * trainable_bytes + (256 << 20)
        n = max(1, min(n, mem // 2 // need))
    return LocalPlan(n, per, f"auto: {cores} cores")


try:
    _FORK = mp.get_context("fork") if sys.platform.startswith("linux") else None
except ValueError:
    _FORK = None
_POOL_CTX: ensemble.MemberContext | None = None  # the context forked workers inherit


def _pool_init(threads: int | None, driver: int) -> None:
    """A forked worker: die with the driver (a killed run leaves no trainer behind), leave
    Ctrl-C to the driver, and use its thread count."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != driver:  # the driver died before prctl
            os._exit(1)
    if threads is not None:
        torch.set_num_threads(threads)


def _pool_member(j: int, column: np.ndarray) -> ensemble.MemberResult:
    return ensemble.compute_member(_POOL_CTX, j, column)


class LocalExecutor:
    """Members on this machine: in this process with the driver's model and tokens, or, on
    CPU, in worker processes forked from it (``workers``; None: auto, see :func:`plan_local`)."""

    def __init__(
        self, ctx: ensemble.MemberContext, threads: int | None = None, workers: int | None = 1
    ) -> None:
        self.ctx, self.threads, self.workers = ctx, threads, workers

    def plan(self, pending: int) -> LocalPlan:
        modality = self.ctx.member_task().modality
        if not modality.forks:  # e.g. image tasks hold their own model
            return LocalPlan(1, self.threads, f"{modality.name} runs train in this process")
        factory = self.ctx.factory
        trainable = factory.trainable_bytes if factory is not None else 0
        return plan_local(self.workers, self.threads, pending, self.ctx.device, trainable)

    def map(self, members: list[int], inclusion: np.ndarray, on_step=None) -> Iterator[Outcome]:
        k, why = packed.pack_size(self.ctx, len(members))
        if k > 1:  # K members at once: memaudit.ensemble.member_packs
            # Members with an empty half (tiny datasets) are the untrained base model: computed
            # alone, since a pack has no steps to give them.
            empty = [j for j in members if not inclusion[:, j].any()]
            members = [j for j in members if inclusion[:, j].any()]
            with torch_threads(self.threads):
                for j in empty:
                    try:
                        yield j, ensemble.compute_member(self.ctx, j, inclusion[:, j], on_step)
                    except Exception as exc:  # noqa: BLE001 - retried by the driver
                        yield j, exc
                if members:
                    yield from packed.map_packed(self.ctx, members, inclusion, k, why, on_step)
            return
        plan = self.plan(len(members))
        if plan.workers > 1:
            yield from self._map_pool(plan, members, inclusion)
            return
        for j in members:
            with torch_threads(plan.threads):
                try:
                    outcome = ensemble.compute_member(self.ctx, j, inclusion[:, j], on_step)
                except Exception as exc:  # retried by the driver; KeyboardInterrupt is not
                    outcome = exc
            yield j, outcome

    def _map_pool(self, plan: LocalPlan, members, inclusion) -> Iterator[Outcome]:
        global _POOL_CTX
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = self.ctx
        if ctx.n_extract and ctx.targets is None:  # made once here, not in every worker
            from memaudit.ensemble.extract import extraction_targets

            ctx.targets = extraction_targets(
                ctx.tokens, ctx.tokenizer, ctx.cfg.extract.prefix_tokens
            )
        _POOL_CTX = ctx
        pool = ProcessPoolExecutor(
            plan.workers,
            mp_context=_FORK,
            initializer=_pool_init,
            initargs=(plan.threads, os.getpid()),
        )
        futures = {pool.submit(_pool_member, j, inclusion[:, j].copy()): j for j in members}
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.get):
                    j = futures.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # raised, or a worker died (BrokenProcessPool)
                        outcome = exc
                    yield j, outcome
        finally:
            # Interrupted (disk full, Ctrl-C) or done: no worker outlives this call.
            for proc in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    proc.kill()
            pool.shutdown(wait=True, cancel_futures=True)
            _POOL_CTX = None

    def close(self) -> None:
        pass


def code_digest() -> str:
    """sha256 over memaudit's sources: the driver and every worker must run the same code."""
    h = hashlib.sha256()
    root = PACKAGE
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# -- Ray ---------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # per worker process: the context of the last job it served


def _worker_context(key: str, cfg_dict: dict, records: list) -> ensemble.MemberContext:
    if _WORKER.get("key") != key:
        _WORKER.clear()
        _WORKER["ctx"] = ensemble.member_context(RunConfig.from_dict(cfg_dict), records)
        _WORKER["key"] = key
    return _WORKER["ctx"]


def _ray_member(key, cfg_dict, records, j, column, threads):
    """A Ray task: one member, computed on the worker, returned to the driver."""
    import socket

    torch.set_num_threads(threads)
    ctx = _worker_context(key, cfg_dict, records)
    result = ensemble.compute_member(ctx, j, column)
    result.meta["host"] = socket.gethostname()
    return result


def _ray_digest() -> tuple[str, str]:
    return code_digest(), str(PACKAGE)


def import_ray():
    try:
        import ray
    except ImportError:
        raise MemauditError(
            f"--executor ray: the ray package is not installed; {RAY_INSTALL}"
        ) from None
    return ray


class RayExecutor:
    """Members as Ray tasks with ``cpus``/``gpus`` each, on a running cluster (``address``) or
    on a local one started here (and stopped at the end)."""

    def __init__(self, ecfg: ExecutorConfig, cfg: RunConfig, records: list) -> None:
        self.ray = import_ray()
        self.ecfg, self.cfg, self.records = ecfg, cfg, records
        self.started = False
        self.task = None  # connected on the first member: nothing pending, no cluster

    def _connect(self) -> None:
        ray, ecfg = self.ray, self.ecfg
        local = ecfg.address is None
        env = dict(ecfg.runtime_env or {})
        package = PACKAGE
        if not local:
            # Ship this memaudit package to the cluster (small), so that workers run the
            # driver's code; its dependencies (torch, transformers, ...) must be installed there.
            env.setdefault("py_modules", [str(package)])
        else:
            # Workers of a cluster on this machine import the driver's memaudit, wherever it
            # lives (a checkout, not only an install).
            env_vars = dict(env.get("env_vars", {}))
            path = env_vars.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")
            env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(package.parent), path) if p)
            env["env_vars"] = env_vars
        task_env = None
        if not ray.is_initialized():
            _check_reachable(ecfg.address)
            try:
                # The environment at the job level: uploads (py_modules) are only allowed there.
                ray.init(
                    # "local": a new cluster, never one found on this machine by chance.
                    address=ecfg.address or "local",
                    runtime_env=env or None,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    configure_logging=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MemauditError(
                    f"--ray-address {ecfg.address}: cannot connect: {ensemble.describe_error(exc)}"
                ) from None
            self.started = True
        else:
            # Ray started by the caller (a notebook, the tests): per-task environment, no uploads.
            task_env = {k: v for k, v in env.items() if k != "py_modules"} or None
        self.options = {"num_cpus": ecfg.cpus, "num_gpus": ecfg.gpus, "runtime_env": task_env}
        # max_calls=0: keep a worker (and its loaded model) for the next member, GPU tasks too;
        # Ray's own retries are off, the driver retries and reports.
        task = ray.remote(max_calls=0, max_retries=0)(_ray_member).options(**self.options)
        try:
            self._check_code()
        except BaseException:
            self.close()
            raise
        cfg = self.cfg
        model_dir = Path(cfg.model.name).expanduser()
        if model_dir.is_dir():
            # A relative model folder means the driver's folder; workers start elsewhere.
            from dataclasses import replace

            cfg = replace(cfg, model=replace(cfg.model, name=str(model_dir.resolve())))
        cfg_dict = cfg.to_dict()
        key = sha256_bytes(
            json.dumps([cfg_dict, [asdict(r) for r in self.records]], sort_keys=True).encode()
        )
        self.args = (key, ray.put(cfg_dict), ray.put(self.records))
        self.task = task

    def _check_code(self) -> None:
        ray = self.ray
        probe = ray.remote(_ray_digest).options(
            num_cpus=0, runtime_env=self.options["runtime_env"], max_retries=1
        )
        digest, where = ray.get(probe.remote(), timeout=300)
        if digest != code_digest():
            raise MemauditError(
                f"Ray workers import a different memaudit ({where}) than this driver "
                f"({PACKAGE}); install the same version on the cluster"
            )

    def map(self, members: list[int], inclusion: np.ndarray, on_step=None) -> Iterator[Outcome]:
        ray = self.ray
        if self.task is None:
            self._connect()
        threads = self.ecfg.worker_threads
        refs = {
            self.task.remote(*self.args, j, inclusion[:, j].copy(), threads): j for j in members
        }
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                j = refs.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except (ray.exceptions.RayError, Exception) as exc:
                    outcome = exc  # the task raised, or its worker or node died
                yield j, outcome
        finally:
            for ref in refs:  # interrupted (disk full, Ctrl-C): stop the rest
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False
        self.task = None


def _check_reachable(address: str | None) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT address does not answer (ray.init would
    keep retrying)."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MemauditError(
            f"--ray-address: expected HOST:PORT, ray://HOST:PORT or auto, got '{address}'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise MemauditError(
            f"--ray-address {address}: cannot connect ({exc.strerror or exc}); is the cluster "
            "running (ray start --head)?"
        ) from None


def make_executor(ecfg: ExecutorConfig | None, ctx_factory, cfg: RunConfig, records: list):
    """The executor for ``ecfg``; ``ctx_factory()`` gives the local context when needed."""
    ecfg = ecfg or ExecutorConfig()
    if ecfg.kind == "ray":
        modality = modality_of(cfg)
        if not modality.ray:
            raise MemauditError(
                f"--executor ray: {modality.name} runs train with the local executor for now "
                "(Ray and shards are text-only in this release)"
            )
        return RayExecutor(ecfg, cfg, records)
    return LocalExecutor(ctx_factory(), ecfg.threads, ecfg.workers)
