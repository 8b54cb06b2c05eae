"""Signals in what appeared on screen: new error text.

A read's new lines hold an error when one of them looks like what failing programs print: a
Python traceback or exception line, `error:` / `Error:` / `ERROR`, `fatal:`, `FAILED`,
`failed`, `denied`, `panic:`, `npm ERR!`, a segmentation fault, a missing file or command, a
non-zero exit.
The headline is the most telling line (an `XxxError: message` line when there is one); its
fingerprint (lower case, quoted values and every word holding a digit blanked: numbers, request
and trace ids, UUIDs, hashes, `user_4821`; exception names kept) tells a new error from the same
one shown again, so apps and the proactive offer of help see each distinct error once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ERROR = re.compile(
    r"Traceback \(most recent call last\)|\b[A-Z]\w*(?:Error|Exception)\b|\berror(?:\[\w+\])?:"
    r"|\bERROR\b|\bERR!|\bfatal:|\bFAIL(?:ED)?\b|\bfailed\b|\bdenied\b|\bpanic:|Segmentation fault"
    r"|No such file or directory|command not found|exit(?:ed)?(?: with)? (?:code|status) [1-9]",
)
_HEADLINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b\s*:")
_QUOTED = re.compile(r"(['\"‘’“”]).*?(['\"‘’“”])")
# a run of word characters and hyphens holding a digit: a number, a UUID, a hash, `req-9f8e2`;
# not an exception's name (`Win32Error`), which is what tells one error from another
_WITH_DIGIT = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?![\w-]*(?:error|exception)(?![\w-]))[\w-]+")
_LEADING_NUMBERS = re.compile(r"^[\s\d:.,\-\[\]]+")  # a line number or a timestamp


@dataclass(frozen=True)
class ScreenError:
    headline: str
    lines: list[str]  # every new line that looks like an error, in order
    fingerprint: str


def fingerprint(line: str) -> str:
    """The same error shown again, with other numbers, ids or quoted values, or after another
    prefix (a line number, a timestamp, a prompt), prints the same."""
    match = _HEADLINE.search(line)
    core = line[match.start():] if match else _LEADING_NUMBERS.sub("", line)
    return " ".join(_WITH_DIGIT.sub("#", _QUOTED.sub("''", core.lower())).split())


def find_error(lines: list[str]) -> ScreenError | None:
    """The error among a read's new lines, if any."""
    errors = [line for line in lines if _ERROR.search(line)]
    if not errors:
        return None
    headline = next((line for line in reversed(errors) if _HEADLINE.search(line)), errors[-1])
    return ScreenError(headline, errors, fingerprint(headline))
