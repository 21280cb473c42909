"""Atomic writes, content hashes and JSON numbers (memaudit.store.io)."""

from __future__ import annotations

import errno
import hashlib
import json

import numpy as np
import pytest

from memaudit.errors import MemauditError
from memaudit.store import io


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "a.json"
    io.atomic_write_json(path, {"x": [1, 2]})
    io.atomic_write_json(path, {"x": 3})
    assert json.loads(path.read_text()) == {"x": 3}
    io.atomic_save_npy(tmp_path / "a.npy", np.arange(4.0))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4.0))
    assert io.read_json(path) == {"x": 3}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "a.npy", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    io.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(ValueError):  # NaN is not JSON: nothing is written
        io.atomic_write_json(path, {"x": float("nan")})
    assert path.read_text() == "old"


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    io.atomic_write_text(path, "old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(MemauditError, match="a.txt: no space left on device") as info:
        io.atomic_write_text(path, "new")
    assert "\n" not in str(info.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_sha256_helpers_agree_with_hashlib(tmp_path):
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert io.sha256_bytes(data) == io.sha256_file(tmp_path / "f") == expected
    assert io.sha256_text("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1.5),
        (np.float32(0.25), 0.25),
        (3, 3.0),
        (np.int64(-2), -2.0),
        ("2.5", 2.5),
        (float("nan"), None),
        (np.inf, None),
        (-np.inf, None),
        (None, None),
        (True, None),
        (np.bool_(False), None),
        ("abc", None),
        ([1.0], None),
    ],
)
def test_finite_or_none(value, expected):
    got = io.finite_or_none(value)
    assert got == expected and (got is None or type(got) is float)
