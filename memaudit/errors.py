"""The one exception type that reaches users as a one-line message, and the escaping of
anything shown in a terminal."""

import re


class MemauditError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2.

    The message must name what is wrong and where (file and line, or option), because the CLI
    prints it without a traceback.
    """

    exit_code = 2


# Characters that a terminal interprets rather than shows: C0 and C1 controls (ESC starts OSC 52
# clipboard writes, window titles, screen clears), DEL, bidirectional overrides and isolates
# (text that reads differently from what it is), line/paragraph separators, and lone
# surrogates (not encodable). Data from records, ids and error messages shows them escaped.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def escape_controls(text: object) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\u202e``): safe to
    print to a terminal, and always one line."""
    return _UNSAFE.sub(_escape_one, str(text))


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
