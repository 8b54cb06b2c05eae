"""Where a session's rows wait on disk while the database is away: one naming scheme for all.

Next to a session's event log `<dir>/<session>.jsonl` (its durable cost log, whose last line is
the summary once the session closed), each `BackgroundWriter` of the session spills to
`<dir>/<session><suffix>`; `spill_recovery` imports them later by the same names.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

EVENT_LOG_SUFFIX = ".jsonl"


class SpillKind(StrEnum):
    """What a spill file holds, as the suffix of its name."""

    COST_EVENTS = ".db-spill.jsonl"
    MESSAGES = ".messages-spill.jsonl"
    MEMORY = ".memory-spill.jsonl"
    SCREEN_EVENTS = ".screen-spill.jsonl"


def event_log_path(directory: Path, session_id: str) -> Path:
    return directory / f"{session_id}{EVENT_LOG_SUFFIX}"


def spill_path(directory: Path, session_id: str, kind: SpillKind) -> Path:
    return directory / f"{session_id}{kind.value}"


def parse_spill_name(path: Path) -> tuple[str, SpillKind] | None:
    """(session id, kind) of a spill file's name; None for any other file."""
    session_id, dot, suffix = path.name.partition(".")
    try:
        return session_id, SpillKind(dot + suffix)
    except ValueError:
        return None


def spill_files(directory: Path) -> list[Path]:
    """Every spill file in `directory`, in name order (a session's kinds together)."""
    return sorted(p for p in directory.glob("*-spill.jsonl") if parse_spill_name(p))
