"""The terminal views: the report fits 100 columns and shows record texts as they are (no rich
markup from the data), image reports say what does not apply, rounds and status are one line
each."""

from __future__ import annotations

import copy
import io
from types import SimpleNamespace

from rich.console import Console

from memaudit.report.terminal import (
    _ascii_only,
    distribution_strip,
    print_report,
    print_round,
    print_status,
)
from tests.report.test_html import make_report, with_near_duplicates

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


# -- each flagged record's influence distribution as a one-line strip ------------------------


def record(index, rid, self_infl=2.0, counts=None, share=0.5, n_sig=2):
    return {
        "index": index,
        "id": rid,
        "text": f"text of {rid} " * 8,
        "text_sha256": "0" * 64,
        "self_influence": self_infl,
        "margin": 1.5,
        "bleu_in": None,
        "bleu_out": None,
        "distribution": {
            "self_share": share,
            "n_significant": n_sig,
            "histogram": {"lo": -0.5, "hi": 2.0, "counts": counts or [1, 5, 40, 9, 2] + [0] * 55},
        },
    }


def report(records):
    return {
        "ensemble": {
            "n_records": len(records),
            "n_models": 32,
            "n_models_used": 32,
            "estimator": "regression-adjusted",
            "extract_models": None,
        },
        "config": {"model": {"name": "tiny", "finetune": "full"}},
        "redacted": False,
        "table": {
            "in_clusters": {"records": 2},
            "unique": {"records": len(records) - 2},
        },
        "ground_truth": None,
        "records": records,
        "clusters": [{"id": 0, "members": [0, 1], "kind": "textual", "reasons": ["near-copy"]}],
        "findings": {"clusters": [0], "records": [{"index": 2, "reasons": ["high self"]}]},
        "notes": [],
    }


def test_strip_renders_at_80_columns():
    recs = [record(0, "a", share=0.31, n_sig=3), record(1, "b"), record(2, "u", share=1.0, n_sig=0)]
    out = Console(width=80, record=True, file=io.StringIO())
    print_report(report(recs), out)
    text = out.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    lines = [line for line in text.splitlines() if "self 31%, 3 significant" in line]
    assert len(lines) == 1 and "◆" in lines[0] and "█" in lines[0]
    assert any("self 100%, 0 significant" in line for line in text.splitlines())


def test_strip_marks_self_and_scales_log_counts():
    strip = distribution_strip(record(0, "a"), bins=12)
    bars = strip.plain.split(" self")[0]
    assert len(bars) == 12  # 12 bins (then a space)
    assert bars[11] == "◆"  # self (2.0) is in the last bin
    assert bars[0] == "█"  # the fullest bin (the first 5 merged: 57 records)


def test_ascii_and_narrow_consoles():
    ascii_console = Console(file=io.TextIOWrapper(io.BytesIO(), encoding="ascii"), width=80)
    assert _ascii_only(ascii_console)
    assert not _ascii_only(Console(file=io.StringIO(), width=80))
    strip = distribution_strip(record(0, "a"), bins=12, ascii_only=True)
    assert strip.plain.isascii() and "*" in strip.plain
    # Narrow: numbers only, no sparkline.
    out = Console(width=60, record=True, file=io.StringIO())
    print_report(report([record(0, "a"), record(1, "b"), record(2, "u")]), out)
    text = out.export_text()
    assert "◆" not in text and "self 50%" in text


def test_reports_without_distributions_render_as_before():
    recs = [record(i, f"r{i}") for i in range(3)]
    for r in recs:
        del r["distribution"]
    out = Console(width=100, record=True, file=io.StringIO())
    print_report(report(recs), out)
    assert "◆" not in out.export_text() and "significant" not in out.export_text()


def test_flagged_records_show_their_look_alikes_as_unconfirmed_and_verbatim():
    out = _console()
    print_report(with_near_duplicates(_report(), ["[bold]r1", "r2"]), out)
    text = _text(out)
    assert "looks like [bold]r1, r2" in text  # the ids' brackets, not styling
    assert "not yet confirmed by influence" in text
    # Reports before 1.8 (no look_alike) show the partners as before.
    out = _console()
    print_report(with_near_duplicates(_report(), None), out)
    assert "looks like" not in _text(out).split("not yet confirmed by influence:")[1]
