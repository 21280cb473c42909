"""The run directory: the contract between stages, and the only state a run has.

    RUN/config.json          format version, resolved configuration, dataset sha256, versions
    RUN/records.jsonl        the parsed records (index, id, text, prompt, group, line)
    RUN/inclusion.npy        P, bool (N x M)
    RUN/models/NNNNN.npy     model j's loss on every record, float64 (N,)
    RUN/models/NNNNN.extract.json  model j's extraction (first --extract-models members):
                             bleu, exact and the generated text per record
    RUN/models/NNNNN.correct.npy   image runs: whether model j classifies each record
                             correctly, bool (N,)
    RUN/images.npz           image runs: the pixels (after --resize), labels, class names, ids
    RUN/models/NNNNN.json    model j's metadata; written last, so it marks the model complete,
                             and it holds the sha256 of the files before it: a damaged file is
                             retrained, never read
    RUN/losses.npy           L, float64 (N x M), NaN for models without a valid result
    RUN/lock                 held by the run writing the directory (host and pid)
    RUN/locks/shard-I-of-K   held by shard I of K (memaudit train --shard) while it trains
    RUN/models/NNNNN.failed.json  model j failed on every attempt: error, host, traceback;
                             removed when it is written; the model stays pending
    RUN/influence.npz        per-target estimates (see memaudit.estimate.influence.InfluenceResult)
    RUN/influence.json       per-record metrics for people and other tools
    RUN/influence_dense.npy  the full influence matrix, float32, when N is small enough

Every file is written atomically (memaudit.store.io), so a killed run leaves only whole files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import socket
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from memaudit.config import RunConfig
from memaudit.errors import MemauditError
from memaudit.store.io import (
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_bytes,
)
from memaudit.store.record import Record

FORMAT_VERSION = 1
_PACKAGES = ("memaudit", "torch", "transformers", "peft", "numpy", "scipy", "safetensors")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.models_dir = self.path / "models"

    # -- files -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.config_path.is_file()

    # -- creation and resumption ---------------------------------------------------------------
    def check_or_create(self, cfg: RunConfig, records: list[Record], data_sha256: str) -> bool:
        """Create the directory for ``cfg``, or check that an existing one belongs to it.

        Returns True when it resumes an existing run. Refuses another dataset or configuration.
        """
        if self.exists():
            saved = self.read_config()
            if saved.get("format_version") != FORMAT_VERSION:
                raise MemauditError(
                    f"{self.path}: run directory format {saved.get('format_version')} is not "
                    f"{FORMAT_VERSION}; use a new --out"
                )
            if saved["dataset"]["sha256"] != data_sha256:
                raise MemauditError(
                    f"{self.path}: was made from a different dataset (sha256 "
                    f"{saved['dataset']['sha256'][:12]}, now {data_sha256[:12]}); use a new --out"
                )
            old = RunConfig.from_dict(saved["config"]).fingerprint()
            changes = _diff(old, cfg.fingerprint())
            if changes:
                raise MemauditError(
                    f"{self.path}: was made with a different configuration ({'; '.join(changes)}); "
                    "use a new --out, or the original options to resume"
                )
            self._write_config(cfg, saved["dataset"], saved["created"])
            return True
        # A folder with only the cost plan (memaudit run --plan) is where this run goes.
        if self.path.exists() and any(p.name != "plan.json" for p in self.path.iterdir()):
            raise MemauditError(f"{self.path}: exists and is not a memaudit run directory")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.file("records.jsonl"),
            "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records),
        )
        dataset = {"path": cfg.data, "sha256": data_sha256, "records": len(records)}
        self._write_config(cfg, dataset, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return False

    def _write_config(self, cfg: RunConfig, dataset: dict, created: str) -> None:
        atomic_write_json(
            self.config_path,
            {
                "format_version": FORMAT_VERSION,
                "created": created,
                "config": cfg.to_dict(),
                "dataset": dataset,
                "versions": package_versions(),
            },
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RUN/lock while writing, so that two runs never write one directory.

        The lock file names its holder (host and pid); a lock whose process is gone on this
        host is stale and taken over, so a killed run never blocks its own rerun. A run is also
        refused while shards (``memaudit train --shard``) are training the directory.
        """
        with _exclusive(self.file("lock"), self.check_unlocked):
            self._check_no_shards()
            # Alone now: temporary files are what a killed writer left; never read, swept.
            for tmp in (*self.path.glob(".*.tmp"), *self.models_dir.glob(".*.tmp")):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            yield

    @contextlib.contextmanager
    def shard_lock(self, index: int, count: int) -> Iterator[None]:
        """Hold RUN/locks/shard-I-of-K while shard I of K trains: shards of one K run side by
        side (their members are disjoint), the same shard twice, a shard beside a full run, or
        beside a shard of another K (overlapping members) is refused."""
        path = self.path / "locks" / f"shard-{index}-of-{count}"
        path.parent.mkdir(exist_ok=True)

        def refuse() -> None:
            self.check_unlocked()
            if path.exists() and _holder_alive(path):
                holder = path.read_text(encoding="utf-8", errors="replace").strip()
                raise MemauditError(
                    f"{self.path}: shard {index}/{count} is already training ({holder}); "
                    f"delete {path} if it is not running"
                )

        with _exclusive(path, refuse):
            self.check_unlocked()
            for other, holder in self.live_shards():
                if not other.endswith(f"-of-{count}"):
                    raise MemauditError(
                        f"{self.path}: a shard of another split ({other}, {holder}) is training "
                        "it; shards running side by side must share K"
                    )
            yield

    def live_shards(self) -> list[tuple[str, str]]:
        """(name, holder) of the shard locks whose process still runs."""
        out = []
        for path in sorted((self.path / "locks").glob("shard-*")):
            if _holder_alive(path):
                with contextlib.suppress(FileNotFoundError):
                    out.append((path.name, path.read_text(encoding="utf-8").strip()))
        return out

    def _check_no_shards(self) -> None:
        shards = self.live_shards()
        if shards:
            names = ", ".join(f"{name} ({holder})" for name, holder in shards)
            raise MemauditError(
                f"{self.path}: shards are training it ({names}); wait for them to finish, or "
                "delete their files in locks/ if they are not running"
            )

    def check_unlocked(self) -> None:
        """Refuse early when another live run holds the lock."""
        path = self.file("lock")
        if path.exists() and _holder_alive(path):
            holder = path.read_text(encoding="utf-8", errors="replace").strip()
            raise MemauditError(
                f"{self.path}: another memaudit run ({holder}) is writing to it; wait for it "
                f"to finish, or delete {path} if it is not running"
            )

    def check_idle(self) -> None:
        """Refuse early when a live run or live shards write the directory."""
        self.check_unlocked()
        self._check_no_shards()

    def read_config(self) -> dict[str, Any]:
        if not self.exists():
            raise MemauditError(f"{self.path}: not a memaudit run directory (no config.json)")
        return read_json(self.config_path)

    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_config()["config"])

    def records(self) -> list[Record]:
        with open(self.file("records.jsonl"), encoding="utf-8") as f:
            return [Record(**json.loads(line)) for line in f]

    # -- inclusion matrix ---------------------------------------------------------------------
    def save_inclusion(self, inclusion: np.ndarray) -> None:
        atomic_save_npy(self.file("inclusion.npy"), inclusion.astype(bool))

    def inclusion(self) -> np.ndarray:
        return np.load(self.file("inclusion.npy"), allow_pickle=False)

    # -- per-model results --------------------------------------------------------------------
    def _model_paths(self, j: int) -> tuple[Path, Path]:
        return self.models_dir / f"{j:05d}.npy", self.models_dir / f"{j:05d}.json"

    def _extract_path(self, j: int) -> Path:
        return self.models_dir / f"{j:05d}.extract.json"

    def save_model(
        self,
        j: int,
        losses: np.ndarray | None,
        meta: dict[str, Any],
        extraction: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write model j's losses (and extraction, and per-record ``arrays`` such as image
        correctness, as models/NNNNN.<name>.npy), then its metadata: the metadata is the
        completion mark, and it holds the checksums of the files written before it."""
        npy, js = self._model_paths(j)
        meta = {"index": j, **meta}
        if losses is not None:
            data = _npy_bytes(losses.astype(np.float64))
            atomic_write_bytes(npy, data)
            meta["losses_sha256"] = sha256_bytes(data)
        if extraction is not None:
            data = json.dumps(_jsonable(extraction)).encode("utf-8")
            atomic_write_bytes(self._extract_path(j), data)
            meta["extract_sha256"] = sha256_bytes(data)
        for name, array in (arrays or {}).items():
            data = _npy_bytes(np.asarray(array))
            atomic_write_bytes(self._array_path(j, name), data)
            meta[f"{name}_sha256"] = sha256_bytes(data)
        atomic_write_json(js, meta)
        with contextlib.suppress(FileNotFoundError):
            self._failure_path(j).unlink()

    def _failure_path(self, j: int) -> Path:
        return self.models_dir / f"{j:05d}.failed.json"

    def save_failure(self, j: int, attempts: int, error: str, trace: str = "") -> None:
        """Record that model j failed ``attempts`` times: reported, and retried by a rerun."""
        atomic_write_json(
            self._failure_path(j),
            {
                "index": j,
                "attempts": attempts,
                "error": error,
                "host": socket.gethostname(),
                "traceback": trace,
            },
        )

    def failure(self, j: int) -> dict[str, Any] | None:
        try:
            return read_json(self._failure_path(j))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def status(self, n_models: int) -> dict[str, Any]:
        """Which models are done, diverged, failed (retries exhausted) or not trained yet."""
        out: dict[str, Any] = {
            "models": n_models,
            "ok": [],
            "diverged": [],
            "failed": {},
            "missing": [],
        }
        for j in range(n_models):
            meta = self.model_meta(j)
            if meta is not None:
                out["ok" if meta.get("status") == "ok" else "diverged"].append(j)
            elif (fail := self.failure(j)) is not None:
                out["failed"][j] = fail["error"]
            else:
                out["missing"].append(j)
        return out

    def _array_path(self, j: int, name: str) -> Path:
        return self.models_dir / f"{j:05d}.{name}.npy"

    def model_meta(
        self, j: int, need_extraction: bool = False, need_arrays: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """Metadata of a completed model, or None when model j must be (re)trained."""
        npy, js = self._model_paths(j)
        try:
            meta = read_json(js)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if meta.get("status") != "ok":
            return meta  # a recorded failure is a result too: not retried silently
        if not _matches(npy, meta.get("losses_sha256")):
            return None
        if need_extraction and not _matches(self._extract_path(j), meta.get("extract_sha256")):
            return None
        for name in need_arrays:
            if not _matches(self._array_path(j, name), meta.get(f"{name}_sha256")):
                return None
        return meta

    def extraction(self, n_models: int) -> tuple[list[int], list[dict[str, Any]]]:
        """(model indices, their extraction results) for every model with a valid one."""
        models, results = [], []
        for j in range(n_models):
            meta = self.model_meta(j, need_extraction=True)
            if meta is not None and meta.get("status") == "ok":
                models.append(j)
                results.append(json.loads(self._extract_path(j).read_bytes()))
        return models, results

    def model_losses(self, j: int) -> np.ndarray:
        npy, _ = self._model_paths(j)
        return np.load(npy, allow_pickle=False)

    def collect_losses(self, n_records: int, n_models: int) -> tuple[np.ndarray, np.ndarray]:
        """(L, valid): the loss matrix with NaN columns for models without a valid result."""
        losses = np.full((n_records, n_models), np.nan)
        valid = np.zeros(n_models, dtype=bool)
        for j in range(n_models):
            meta = self.model_meta(j)
            if meta is not None and meta.get("status") == "ok":
                losses[:, j] = self.model_losses(j)
                valid[j] = True
        atomic_save_npy(self.file("losses.npy"), losses)
        return losses, valid

    def collect_array(self, name: str, n_records: int, n_models: int) -> np.ndarray | None:
        """A per-model array (e.g. "correct") as an N x M float matrix, NaN in the columns of
        models without a valid copy; None when no model has one."""
        out = np.full((n_records, n_models), np.nan)
        found = False
        for j in range(n_models):
            meta = self.model_meta(j, need_arrays=(name,))
            if meta is not None and meta.get("status") == "ok":
                out[:, j] = np.load(self._array_path(j, name), allow_pickle=False)
                found = True
        return out if found else None

    def save_images(self, data) -> None:
        data.save(self.file("images.npz"))

    def model_metas(self, n_models: int) -> list[dict[str, Any] | None]:
        return [self.model_meta(j) for j in range(n_models)]


@contextlib.contextmanager
def _exclusive(path: Path, refuse) -> Iterator[None]:
    """Create ``path`` naming this process (host and pid), hold it, remove it at the end.

    If it exists, ``refuse()`` raises when its holder is alive; a dead holder's file is stale
    and taken over.
    """
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            refuse()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    else:
        raise MemauditError(f"{path.parent}: could not take {path}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.read_text(encoding="utf-8").strip() == me:
                path.unlink()


def _holder_alive(path: Path) -> bool:
    """Whether the process named in a lock file still runs (another host: assume it does)."""
    try:
        host, pid = path.read_text(encoding="utf-8").split()
        pid_n = int(pid)
    except (FileNotFoundError, ValueError):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _matches(path: Path, sha256: str | None) -> bool:
    try:
        return sha256 is not None and sha256_bytes(path.read_bytes()) == sha256
    except FileNotFoundError:
        return False


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays to lists, NaN to null (JSON has no NaN)."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            value = [
                None if isinstance(v, float) and not np.isfinite(v) else v for v in value.tolist()
            ]
        out[key] = value
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
