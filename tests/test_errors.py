"""MemauditError: a user-facing problem, one line and exit code 2 at the command line."""

from __future__ import annotations

import pytest

from memaudit.errors import MemauditError


def test_is_an_exception_with_exit_code_2():
    err = MemauditError("--top-k: must be a positive integer, got 0")
    assert isinstance(err, Exception) and err.exit_code == 2
    assert str(err) == "--top-k: must be a positive integer, got 0"


def test_the_cli_prints_it_as_one_line_and_exits_2(tmp_path, cli):
    res = cli("report", tmp_path / "missing")
    assert res.code == 2
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a memaudit run directory" in lines[0]
    assert "Traceback" not in res.err


def test_config_errors_are_memaudit_errors():
    from memaudit.config import AnalysisConfig

    with pytest.raises(MemauditError, match="--covariates"):
        AnalysisConfig(covariates=-1)
