"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every artifact in a run directory goes through these helpers: write to a temporary file in the
same directory, fsync it, then ``os.replace`` it over the target (atomic on POSIX). A full
disk (or quota) becomes a one-line MemauditError, with the temporary file removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from memaudit.errors import MemauditError

_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _FULL:
            # The temporary file goes; the target keeps its old content (or stays absent).
            raise MemauditError(
                f"{path}: no space left on device ({os.strerror(exc.errno)}); free space and "
                "rerun the same command: finished models are kept"
            ) from None
        raise _cannot_write(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cannot_write(path: Path, exc: OSError) -> MemauditError:
    """A read-only, missing or special (/proc) place: one line naming the file."""
    return MemauditError(f"{path}: cannot write ({exc.strerror or exc}); choose another path")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -- the one place for content hashes and JSON numbers --------------------------------------------
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """sha256 of a text's UTF-8 bytes (a redacted report's stand-in for a record's text)."""
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (a dataset can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None: JSON has no NaN or infinity, and
    a missing value stays missing instead of becoming zero. Booleans and non-numbers: None."""
    if x is None or isinstance(x, (bool, np.bool_)):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
