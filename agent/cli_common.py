"""What the `sightline` command groups share: the error a user can fix, and argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vision.ranges import Range


class UserError(Exception):
    """Any failure the user can fix; printed as one line, exit status 2."""


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {raw!r}")
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


def key_value(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {raw!r}")
    return key.strip(), value.strip()
