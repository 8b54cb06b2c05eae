"""What the `sightline` command groups share: the error a user can fix, argument types, and
the escaping of what is printed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vision.ranges import Range


def counted(count: int, noun: str, plural: str = "") -> str:
    """`1 call`, `2 calls`: a count with its noun in the right number (`plural` when adding
    an s is not it)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class UserError(Exception):
    """Any failure the user can fix; printed as one line, exit status 2."""


def one_line(text: str) -> str:
    """`text` with the characters that would break or garble a line written as escapes (ESC
    as the four characters `\\x1b`): newlines and controls that a user's input may hold, and
    whatever stored text holds (file names, chat, the text read off a screen), which must
    never drive the operator's terminal (an escape sequence can retitle it, clear it, or
    fake output)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def utf8_text(raw: str) -> str:
    """Free text for the database or a model: bytes of the command line that are not UTF-8
    (which Python keeps as lone surrogates) cannot be stored or sent."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"is not UTF-8 text, got {raw!r}: check the terminal's encoding") from None
    return raw


def query(raw: str) -> str:
    """A search needs words: a blank query would return whatever is nearest to nothing."""
    if not utf8_text(raw).strip():
        raise argparse.ArgumentTypeError("the query is blank: give a question or words to find")
    return raw


INT_MAX = 2**31 - 1  # Postgres' integer: a count, limit or id past it is no real one


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 0 < value <= INT_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {INT_MAX}, got {raw!r}")
    return value


def in_range(accepted: Range) -> Callable[[str], int | float]:
    """An argparse type for a number in `accepted` (NaN and infinities never are)."""
    def parse(raw: str) -> int | float:
        try:
            return accepted.parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {raw!r}") from None
    return parse


def identifier(raw: str) -> str:
    """A tenant or user id: what the worker would accept from a job's metadata. An empty or
    blank one would silently address a tenant nobody uses."""
    value = raw.strip()
    if not value or len(value) > 200 or not value.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be a non-empty printable name of at most 200 characters, got {raw!r}")
    return value


def non_blank(raw: str) -> str:
    """A name that must say something (a document's): a blank one matches nothing."""
    if not utf8_text(raw).strip():
        raise argparse.ArgumentTypeError(f"must not be blank, got {raw!r}")
    return raw


def key_value(raw: str) -> tuple[str, str]:
    key, sep, value = utf8_text(raw).partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {raw!r}")
    return key.strip(), value.strip()


_UNITS = {"m": 60, "h": 3600, "d": 86400}


MAX_WINDOW_DAYS = 3660  # ten years: more than any record is kept; beyond it dates overflow


def duration(raw: str) -> float:
    """A look-back window such as `30m`, `24h` or `7d`, in seconds, of at most ten years."""
    text = raw.strip().lower()
    try:
        value = float(text[:-1]) * _UNITS[text[-1]] if text else 0.0
    except (KeyError, ValueError, OverflowError):
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number > 0 followed by m, h or d (e.g. 24h, 7d), got {raw!r}")
    if value > MAX_WINDOW_DAYS * 86400:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_WINDOW_DAYS}d (ten years), got {raw!r}")
    return value


def month(raw: str) -> str:
    """A calendar month as YYYY-MM."""
    text = raw.strip()
    parts = text.split("-")
    if (len(parts) != 2 or len(parts[0]) != 4 or len(parts[1]) != 2
            or not all(p.isdigit() for p in parts) or not 1 <= int(parts[1]) <= 12
            or not 1 <= int(parts[0]) <= 9998):  # a month's end must be a date too
        raise argparse.ArgumentTypeError(f"must be a month as YYYY-MM (e.g. 2026-11), got {raw!r}")
    return text
