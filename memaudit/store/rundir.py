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
import errno
import fcntl
import io
import json
import os
import platform
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import replace
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
    finite_or_none,
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
    def check_or_create(
        self,
        cfg: RunConfig,
        records: list[Record],
        data_sha256: str,
        source: dict[str, Any] | None = None,
    ) -> bool:
        """Create the directory for ``cfg``, or check that an existing one belongs to it.
        ``source``: more about where the data came from, saved beside its sha256 (a Hub
        dataset's id, split, revision and fingerprint; a --chat-template's sha256).

        Returns True when it resumes an existing run. Refuses another dataset or configuration,
        and a directory another run or shards are writing, before writing anything: a refused
        run leaves the directory byte-identical. A new directory is built beside its place and
        renamed into it, so an interrupted creation leaves no half-made run behind.
        """
        records_bytes = _records_bytes(records)
        if self.exists():
            saved = self.read_config()
            if saved.get("format_version") != FORMAT_VERSION:
                raise MemauditError(
                    f"{self.path}: run directory format {saved.get('format_version')} is not "
                    f"{FORMAT_VERSION}; use a new --out"
                )
            if saved["dataset"].get("sha256") != data_sha256:
                raise MemauditError(
                    f"{self.path}: was made from a different dataset (sha256 "
                    f"{str(saved['dataset'].get('sha256'))[:12]}, now {data_sha256[:12]}); "
                    "use a new --out"
                )
            # The chat template that rendered the records (--chat-template) is data too.
            template = (source or {}).get("chat_template_sha256")
            if saved["dataset"].get("chat_template_sha256") != template:
                was = saved["dataset"].get("chat_template_sha256")
                raise MemauditError(
                    f"{self.path}: was made with another --chat-template (sha256 "
                    f"{str(was)[:12]}, now {str(template)[:12]}); use a new --out, or the "
                    "original template to resume"
                )
            old = self._stored_config(saved).fingerprint()
            changes = _diff(old, cfg.fingerprint())
            if changes:
                raise MemauditError(
                    f"{self.path}: was made with a different configuration ({'; '.join(changes)}); "
                    "use a new --out, or the original options to resume"
                )
            config_bytes = _config_bytes(cfg, saved["dataset"], saved.get("created", ""))
            # Atomically alone (RUN/lock), and no shard training: only then rewrite anything.
            with _exclusive(self.file("lock"), self.check_unlocked):
                self._check_no_shards()
                atomic_write_bytes(self.config_path, config_bytes)
                # Same dataset, same records: a missing or damaged copy is repaired here.
                if not _same_bytes(self.file("records.jsonl"), records_bytes):
                    atomic_write_bytes(self.file("records.jsonl"), records_bytes)
            return True
        dataset = {"path": cfg.data, "sha256": data_sha256, "records": len(records)}
        dataset.update(source or {})
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        config_bytes = _config_bytes(cfg, dataset, created)
        self._create(records_bytes, config_bytes)
        return False

    def _create(self, records_bytes: bytes, config_bytes: bytes) -> None:
        """Build the new directory as a hidden sibling, then rename it into place (atomic: the
        run directory exists whole or not at all)."""
        plan = None  # a folder with only the cost plan (memaudit run --plan) is where the run goes
        if self.path.exists():
            if not self.path.is_dir():
                raise MemauditError(f"{self.path}: exists and is not a directory")
            leftovers = list(self.path.iterdir())
            if [p.name for p in leftovers] == ["plan.json"]:
                plan, leftovers = leftovers[0].read_bytes(), []
                self.file("plan.json").unlink()
            if leftovers and not _half_created(self.path, leftovers):
                raise MemauditError(f"{self.path}: exists and is not a memaudit run directory")
            for entry in leftovers:  # what an interrupted creation by an older version left
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for stale in parent.glob(f".{self.path.name}.creating-*"):
                if _creator_dead(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.creating-", dir=parent))
        except OSError as exc:
            raise _os_error(self.path, exc) from None
        try:
            (tmp / "creator").write_text(f"{socket.gethostname()} {os.getpid()}\n")
            (tmp / "models").mkdir()
            atomic_write_bytes(tmp / "records.jsonl", records_bytes)
            if plan is not None:
                atomic_write_bytes(tmp / "plan.json", plan)
            atomic_write_bytes(tmp / "config.json", config_bytes)  # last: marks the run whole
            (tmp / "creator").unlink()
            os.rename(tmp, self.path)  # onto a missing or empty directory
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise MemauditError(
                    f"{self.path}: was filled by another process while this run created it; "
                    "rerun to resume it"
                ) from None
            raise _os_error(self.path, exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
        saved = self._read_json(self.config_path)
        missing = [k for k in ("format_version", "config", "dataset") if k not in saved]
        malformed = [k for k in ("config", "dataset") if not isinstance(saved.get(k), dict)]
        if missing or malformed:
            raise self._damaged(
                self.config_path, f"missing or malformed {', '.join(missing or malformed)}"
            )
        return saved

    def config(self) -> RunConfig:
        """The stored configuration, with ``trust_remote_code`` off: a run directory is data
        that can be handed around, so only the command line of the process that loads a model
        may turn remote code on (see memaudit.api.Audit.open)."""
        return self._stored_config(self.read_config())

    def _stored_config(self, saved: dict[str, Any]) -> RunConfig:
        try:
            cfg = RunConfig.from_dict(saved["config"])
        except MemauditError as exc:
            raise self._damaged(self.config_path, f"invalid configuration: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._damaged(
                self.config_path, f"malformed configuration ({type(exc).__name__}: {exc})"
            ) from None
        if cfg.model.trust_remote_code:
            cfg = replace(cfg, model=replace(cfg.model, trust_remote_code=False))
        return cfg

    def records(self) -> list[Record]:
        path = self.file("records.jsonl")
        hint = "rerun the same `memaudit run` (same data and options) to rewrite it"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise self._damaged(path, "missing", hint) from None
        except OSError as exc:
            raise _os_error(path, exc) from None
        out = []
        for lineno, line in enumerate(raw.splitlines(), start=1):
            try:
                out.append(Record(**json.loads(line.decode("utf-8"))))
            except (ValueError, TypeError, RecursionError) as exc:
                msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                raise self._damaged(path, f"line {lineno}: {msg}", hint) from None
        expected = self._read_json(self.config_path).get("dataset", {}).get("records")
        if expected is not None and expected != len(out):
            raise self._damaged(path, f"{len(out)} records, config.json says {expected}", hint)
        return out

    # -- inclusion matrix ---------------------------------------------------------------------
    def save_inclusion(self, inclusion: np.ndarray) -> None:
        atomic_save_npy(self.file("inclusion.npy"), inclusion.astype(bool))

    def inclusion(self) -> np.ndarray:
        path = self.file("inclusion.npy")
        hint = "rerun the same `memaudit run` to rewrite it (trained models are kept)"
        try:
            p = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise self._damaged(path, "missing", hint) from None
        except (ValueError, OSError, EOFError) as exc:
            raise self._damaged(path, f"unreadable ({exc})", hint) from None
        n = self._read_json(self.config_path).get("dataset", {}).get("records")
        if p.ndim != 2 or p.dtype != bool or (n is not None and p.shape[0] != n):
            raise self._damaged(
                path, f"a {p.dtype} array of shape {p.shape}, expected bool ({n}, models)", hint
            )
        return p

    def read_optional_json(self, name: str, hint: str) -> Any:
        """RUN/<name> parsed, None when absent; a damaged one is a one-line error with ``hint``."""
        path = self.file(name)
        if not path.exists():
            return None
        return self._read_json(path, hint)

    def _read_json(self, path: Path, hint: str | None = None) -> dict[str, Any]:
        try:
            obj = read_json(path)
        except FileNotFoundError:
            raise self._damaged(path, "missing", hint) from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise self._damaged(path, f"not valid JSON ({msg})", hint) from None
        except OSError as exc:
            raise _os_error(path, exc) from None
        if not isinstance(obj, dict):
            raise self._damaged(path, f"expected a JSON object, got {type(obj).__name__}", hint)
        return obj

    def _damaged(self, path: Path, what: str, hint: str | None = None) -> MemauditError:
        hint = hint or (
            "a rerun does not repair it: restore the file, or start again with a new --out"
        )
        return MemauditError(f"{path}: damaged run directory file: {what}; {hint}")

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
        meta["meta_sha256"] = _meta_digest(meta)
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
            fail = read_json(self._failure_path(j))
        except (OSError, ValueError, RecursionError):
            return None
        return fail if isinstance(fail, dict) else None

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
                out["failed"][j] = str(fail.get("error", "unknown error"))
            else:
                out["missing"].append(j)
        return out

    def _array_path(self, j: int, name: str) -> Path:
        return self.models_dir / f"{j:05d}.{name}.npy"

    def model_meta(
        self, j: int, need_extraction: bool = False, need_arrays: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """Metadata of a completed model, or None when model j must be (re)trained: missing,
        unreadable, or altered (the metadata holds its own checksum and those of the files
        before it), so a damaged file is retrained, never read."""
        npy, js = self._model_paths(j)
        try:
            meta = read_json(js)
        except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8
            return None
        if not isinstance(meta, dict):
            return None
        if "meta_sha256" not in meta:
            # Written before metadata held its own checksum: only a plain "ok" whose files
            # match counts; anything else (an edited status) is retrained.
            if meta.get("status") != "ok":
                return None
        elif meta["meta_sha256"] != _meta_digest(meta):
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

    def collect_losses(
        self, n_records: int, n_models: int, write: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(L, valid): the loss matrix with NaN columns for models without a valid result;
        saved as losses.npy unless ``write`` is False."""
        losses = np.full((n_records, n_models), np.nan)
        valid = np.zeros(n_models, dtype=bool)
        for j in range(n_models):
            meta = self.model_meta(j)
            if meta is not None and meta.get("status") == "ok":
                losses[:, j] = self.model_losses(j)
                valid[j] = True
        if write:
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
    """Hold ``path`` (its content names this process, host and pid), remove it at the end.

    Atomic: an ``fcntl.flock`` on the open file, so of two processes only one ever holds it
    (a stale file left by a killed process is simply locked again, never unlinked by a
    loser). ``refuse()`` raises when the lock is held; a file naming a process on another
    host (where flock may not reach) is refused the same way.
    """
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            refuse()
            raise MemauditError(f"{path}: held by another process; wait for it to finish") from None
        # The file may have been unlinked (released) between our open and flock: retry on
        # the path's current file, so two holders never hold two different inodes.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    else:
        raise MemauditError(f"{path.parent}: could not take {path}")
    try:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if holder and holder != me and _holder_alive(path):
            # A live holder that takes no flock: another host's run (flock does not reach
            # across hosts) or an older memaudit.
            refuse()
            raise MemauditError(f"{path}: held by {holder}; wait for it to finish")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (me + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still holding the flock: nobody else can hold this file now
        os.close(fd)


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


def _meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of the metadata without its own checksum, in a canonical JSON form."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    try:
        text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return sha256_bytes(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        return ""  # not what save_model writes: never matches


def _records_bytes(records: list[Record]) -> bytes:
    """records.jsonl's content, made before anything is written: a text that cannot be stored
    (a lone surrogate) is refused up front, naming its record."""
    lines = []
    for r in records:
        line = json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError:
            raise MemauditError(
                f"line {r.line} (id {ascii(r.id)}): holds a lone surrogate (invalid Unicode)"
            ) from None
    return b"".join(lines)


def _config_bytes(cfg: RunConfig, dataset: dict, created: str) -> bytes:
    doc = {
        "format_version": FORMAT_VERSION,
        "created": created,
        "config": cfg.to_dict(),
        "dataset": dataset,
        "versions": package_versions(),
    }
    try:
        return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise MemauditError(f"options: cannot be stored ({exc})") from None


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


_CREATED = {"models", "records.jsonl", "config.json", "lock", "locks"}


def _half_created(path: Path, entries: list[Path]) -> bool:
    """Whether ``path`` holds only what an interrupted creation leaves (no config.json, no
    model result): such a directory is cleaned and created again instead of blocking."""
    for entry in entries:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            continue
        if name not in _CREATED or name == "config.json":
            return False
        if name == "models" and (not entry.is_dir() or any(entry.iterdir())):
            return False
    return True


def _creator_dead(tmp: Path) -> bool:
    """A hidden creation directory whose creating process is gone (or never named itself)."""
    marker = tmp / "creator"
    return not marker.exists() or not _holder_alive(marker)


def _os_error(path: Path, exc: OSError) -> MemauditError:
    where = exc.filename or path
    return MemauditError(f"{where}: cannot write the run directory: {exc.strerror or exc}")


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
            value = [finite_or_none(v) if isinstance(v, float) else v for v in value.tolist()]
        out[key] = value
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
