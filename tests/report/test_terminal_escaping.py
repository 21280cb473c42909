"""The terminal views (memaudit.report.terminal): data is shown escaped, never interpreted."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from memaudit.errors import escape_controls
from memaudit.report.terminal import print_report, print_status, safe_text
from tests.report.test_html import make_report

HOSTILE = [
    "\x1b]52;c;ZWNobyBwd25lZA==\x07 x",  # OSC 52: writes the clipboard
    "\x1b]0;pwned\x07",  # OSC 0: window title
    "\x1b[2J\x1b[H",  # CSI 2J: clears the screen
    "\x9b31m c1 csi \x9d osc",  # C1 controls
    "bidi \u202eevil\u202c and \u2066iso\u2069",
    "lone \ud800 surrogate",
    "[/x] [bold]markup[/bold] [link=http://x]y[/link]",
    "tab\there\r\nnew line\x00nul\x7fdel",
]
# What rich itself writes: SGR styles (ESC [ ... m) and OSC 8 links it made; nothing else.
_RICH_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _raw_controls(shown: str) -> list[str]:
    rest = _RICH_SGR.sub("", shown)
    return sorted(
        {
            c
            for c in rest
            if (c < " " and c != "\n")
            or "\x7f" <= c <= "\x9f"
            or "\ud800" <= c <= "\udfff"
            or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
        }
    )


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100, color_system="truecolor")


def test_escape_controls_is_one_printable_line():
    for text in HOSTILE:
        out = escape_controls(text)
        assert "\n" not in out and not _raw_controls(out)
    assert escape_controls("\x1b]52;c;x\x07") == "\\x1b]52;c;x\\x07"
    assert escape_controls("a\ud800b\u202e") == "a\\ud800b\\u202e"
    assert escape_controls("plain, ünïcödé & emoji 🙂") == "plain, ünïcödé & emoji 🙂"


@pytest.mark.parametrize("redacted", [False, True])
def test_no_control_character_or_markup_from_any_record_field_reaches_the_terminal(redacted):
    report = make_report(redacted=redacted, ground_truth=False)
    report["config"]["model"]["name"] = HOSTILE[1]
    report["notes"] = [HOSTILE[2]]
    for k, rec in enumerate(report["records"]):
        payload = HOSTILE[k % len(HOSTILE)]
        rec["id"] = payload[:8] + rec["id"]
        rec["group"] = payload
        if rec["text"] is not None:
            rec["text"] = rec["text"] + " " + payload
    for c in report["clusters"]:
        c["reasons"].append(HOSTILE[6])
    console = _console()
    print_report(report, out=console)  # [/x] in an id or text: no crash
    shown = console.file.getvalue()
    assert not _raw_controls(shown)
    plain = _RICH_SGR.sub("", shown)
    assert "\\x1b]52;c;" in plain or redacted  # shown, escaped
    assert "[/x]" in plain  # markup in the data is shown as text, not applied
    assert "\x1b]8;" not in shown  # no hyperlink made from the data's [link=...]


def test_status_and_failures_escape_errors_and_paths(tmp_path):
    console = _console()
    status = {
        "models": 3,
        "ok": [0],
        "diverged": [],
        "failed": {1: "RuntimeError: " + HOSTILE[0] + HOSTILE[6]},
        "missing": [2],
    }
    print_status(status, SimpleNamespace(path=tmp_path / HOSTILE[2]), out=console)
    shown = console.file.getvalue()
    assert not _raw_controls(shown) and "[/x]" in _RICH_SGR.sub("", shown)


def test_safe_text_is_never_markup():
    console = _console()
    console.print(safe_text("[/x][red]" + HOSTILE[0]))
    assert console.file.getvalue().startswith("[/x][red]\\x1b]52")
