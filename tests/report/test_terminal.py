"""The terminal views: the report fits 100 columns and shows record texts as they are (no rich
markup from the data), image reports say what does not apply, rounds and status are one line
each."""

from __future__ import annotations

import copy
from types import SimpleNamespace

from rich.console import Console

from memaudit.report.terminal import print_report, print_round, print_status
from tests.report.test_html import make_report

MARKUP = "Q: is [bold red]this[/bold red] bold? A: [link=http://x]no[/link]"


def _console() -> Console:
    return Console(record=True, width=100, color_system=None)


def _text(out: Console) -> str:
    return out.export_text()


def _report() -> dict:
    report = copy.deepcopy(make_report())
    report["ground_truth"] = None  # no planted groups (make_report's scores are partial)
    return report


def test_report_fits_and_shows_texts_verbatim():
    report = _report()
    shown = report["clusters"][0]["members"][0]
    for r in report["records"]:
        if r["index"] == shown:
            r["text"] = MARKUP
    out = _console()
    print_report(report, out)
    text = _text(out)
    assert text.startswith("memaudit report")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "[bold red]this" in text  # the record's own brackets, not styling


def test_image_report_says_extractability_does_not_apply():
    report = _report()
    report["modality"] = "image"
    out = _console()
    print_report(report, out)
    assert "extractability does not apply to images" in _text(out)


def test_round_and_status_lines():
    diag = SimpleNamespace(
        n_models=32,
        converged=False,
        criteria=[
            {"name": "reliability_self", "value": 0.95, "threshold": 0.9, "met": True,
             "change": 0.1},
            {"name": "flag_change", "value": None, "threshold": 0.15, "met": False,
             "change": None},
        ],
    )  # fmt: skip
    out = _console()
    print_round(diag, out)
    assert " ".join(_text(out).split()) == (
        "round at 32 models: not converged: reliability_self 0.950 (needs 0.9) ok, moved "
        "+0.100; flag_change not evaluated"
    )
    status = {"models": 4, "ok": [0], "diverged": [1], "failed": {2: "ValueError: bad"},
              "missing": [3]}  # fmt: skip
    out = _console()
    print_status(status, SimpleNamespace(path="runs/x"), out)
    lines = " ".join(_text(out).split())
    assert "1 models diverged and are excluded: 1" in lines
    assert "model 2 failed on every attempt (ValueError: bad)" in lines
    assert "2 of 4 models have no result (2, 3)" in lines and "memaudit train runs/x" in lines
