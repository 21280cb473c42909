"""Where ensemble members are computed: in this process, or as Ray tasks on a cluster.

An executor maps member indices to outcomes, a :class:`~memaudit.ensemble.MemberResult` or the
exception that member raised, yielded as they finish. It never writes: results travel back to
the driver (the process running ``memaudit run``/``train``), which writes them to the run
directory, so Ray workers need no shared file system and a failed worker loses nothing written.

Ray workers build their own copy of the setup (tokenizer, tokens, model) from the configuration
and the records the driver sends, once per worker process (Ray reuses workers), and train with
``threads`` torch threads: CPU results are bit-identical to the local executor's for the same
thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaudit import ensemble, packed
from memaudit.config import RunConfig
from memaudit.errors import MemauditError

EXECUTORS = ("local", "ray")
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


class LocalExecutor:
    """Members one after another in this process, with the driver's model and tokens."""

    def __init__(self, ctx: ensemble.MemberContext, threads: int | None = None) -> None:
        self.ctx, self.threads = ctx, threads

    def map(self, members: list[int], inclusion: np.ndarray, on_step=None) -> Iterator[Outcome]:
        k, why = packed.pack_size(self.ctx, len(members))
        if k > 1:  # K members at once: memaudit.packed
            with torch_threads(self.threads):
                yield from packed.map_packed(self.ctx, members, inclusion, k, why, on_step)
            return
        for j in members:
            with torch_threads(self.threads):
                try:
                    outcome = ensemble.compute_member(self.ctx, j, inclusion[:, j], on_step)
                except Exception as exc:  # retried by the driver; KeyboardInterrupt is not
                    outcome = exc
            yield j, outcome

    def close(self) -> None:
        pass


def code_digest() -> str:
    """sha256 over memaudit's sources: the driver and every worker must run the same code."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
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
    return code_digest(), str(Path(__file__).resolve().parent)


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
        package = Path(__file__).resolve().parent
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
        key = hashlib.sha256(
            json.dumps([cfg_dict, [asdict(r) for r in self.records]], sort_keys=True).encode()
        ).hexdigest()
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
                f"({Path(__file__).resolve().parent}); install the same version on the cluster"
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
        if cfg.is_image:
            raise MemauditError(
                "--executor ray: image runs train with the local executor for now "
                "(Ray and shards are text-only in this release)"
            )
        return RayExecutor(ecfg, cfg, records)
    return LocalExecutor(ctx_factory(), ecfg.threads)
