"""Signals in what appeared on screen: new error text.

A read's new lines hold an error when one of them looks like what failing programs print: a
Python traceback or exception line, `error:` / `Error:` / `ERROR`, `fatal:`, `FAILED`,
`failed`, `denied`, `panic:`, `npm ERR!`, a segmentation fault, a missing file or command, a
non-zero exit.
The headline is the most telling line (an `XxxError: message` line when there is one); its
fingerprint (lower case, numbers and quoted values blanked) tells a new error from the same one
shown again, so apps and the proactive offer of help see each distinct error once.
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
_NUMBER = re.compile(r"\d+")
_LEADING_NUMBERS = re.compile(r"^[\s\d:.,\-\[\]]+")  # a line number or a timestamp


@dataclass(frozen=True)
class ScreenError:
    headline: str
    lines: list[str]  # every new line that looks like an error, in order
    fingerprint: str


def fingerprint(line: str) -> str:
    """The same error shown again, with other numbers or quoted values, or after another
    prefix (a line number, a timestamp, a prompt), prints the same."""
    match = _HEADLINE.search(line)
    core = line[match.start():] if match else _LEADING_NUMBERS.sub("", line)
    return " ".join(_NUMBER.sub("#", _QUOTED.sub("''", core.lower())).split())


def find_error(lines: list[str]) -> ScreenError | None:
    """The error among a read's new lines, if any."""
    errors = [line for line in lines if _ERROR.search(line)]
    if not errors:
        return None
    headline = next((line for line in reversed(errors) if _HEADLINE.search(line)), errors[-1])
    return ScreenError(headline, errors, fingerprint(headline))
