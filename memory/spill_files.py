"""Where a session's rows wait on disk while the database is away: one naming scheme for all.

Next to a session's event log `<dir>/<session>.jsonl` (its durable cost log, whose last line is
the summary once the session closed), each `BackgroundWriter` of the session spills to
`<dir>/<session><suffix>`; `spill_recovery` imports them later by the same names. A session
that ran without the database at all spills its own row too (`SESSION`), and its messages
straight to their file.

A row can reach the database twice: a batch stored whose answer was lost is retried, and a spill
file is rewritten without the rows stored only after they are (a crash or a full disk between
the two leaves them in it, to be written again). Each table makes the second write a no-op by a
key of the row's own: cost events and waiting exchanges by `(session_id, seq)`, a session by its
id, and the user's own facts and forgets are replaced by theirs; messages and screen events,
which have no such key, carry one made for them (`ROW_KEY`, a UUID: `KEYED_KINDS`), given as the
row is first put to a writer or kept on disk, and stored in a UNIQUE column (migration 0018)
that skips a row it holds already. A memory keeper's facts, forgets and summaries carry a
`ROW_KEY` too, made with the row by the keeper (memory/keeper.py), which `UserMemory.apply`
records in the transaction that applies the row (migration 0022) and skips a row it has
recorded: merged again by what the keeper saw, a row its session's later rows had moved on
from would come back. A keeper's row kept before rows had keys is merged by what it holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("sightline.db")

EVENT_LOG_SUFFIX = ".jsonl"
SPILL_SUFFIX = "-spill.jsonl"
REFUSED_SUFFIX = "-refused.jsonl"


class SpillKind(StrEnum):
    """What a spill file holds, as the suffix of its name; in the order they are imported
    (the session's row first: the others refer to it)."""

    SESSION = ".session-spill.jsonl"
    COST_EVENTS = ".db-spill.jsonl"
    MESSAGES = ".messages-spill.jsonl"
    MEMORY = ".memory-spill.jsonl"
    EXCHANGES = ".exchanges-spill.jsonl"  # for the memory model, from a session without the DB
    SCREEN_EVENTS = ".screen-spill.jsonl"


# the rows of these kinds carry a key of the client's (`ROW_KEY`), their tables having none of
# their own to skip a row written again by
KEYED_KINDS = frozenset({SpillKind.MESSAGES, SpillKind.SCREEN_EVENTS})
ROW_KEY = "row_key"
# the keys of rows kept before rows had keys are made from where they are in their file
_LEGACY_KEYS = uuid.UUID("6b1f3c52-8d0e-4f57-a2c4-5e9b7d1a0f38")


def keyed_file(path: Path) -> bool:
    """Whether the rows kept in the spill file at `path` carry a `ROW_KEY`."""
    named = parse_spill_name(path)
    return named is not None and named[1] in KEYED_KINDS


def with_row_key(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with a new key (a copy), or as it is if it has one: the key is the row's for good,
    so that every later write of it (a retry, an import) is known for the same row."""
    return row if ROW_KEY in row else {**row, ROW_KEY: str(uuid.uuid4())}


def legacy_row_key(file_name: str, line_number: int, line: bytes) -> str:
    """A key for a row a spill file holds without one (kept before rows had keys): made from
    the file's name, the row's line number and its bytes, so it is the same at every import
    of the file as long as the file is unchanged; and the importer changes the file only by
    rewriting the rows it has not stored, their keys in them (`spill_recovery`)."""
    content = line.rstrip(b"\r\n").hex()
    return str(uuid.uuid5(_LEGACY_KEYS, f"{file_name}\n{line_number}\n{content}"))


def event_log_path(directory: Path, session_id: str) -> Path:
    return directory / f"{session_id}{EVENT_LOG_SUFFIX}"


def read_event_log(path: Path) -> list[dict[str, Any]]:
    """A cost log's events; a line torn by a killed process is left out."""
    return [e for e in _json_lines(path.read_text(errors="replace")) if "kind" in e and "seq" in e]


def last_event(path: Path) -> dict[str, Any] | None:
    """A cost log's last event, from its tail alone (a closed session's is its summary);
    None when the log is missing, empty or its last line torn."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 65536))
            lines = fh.read().splitlines()
        event = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return event if isinstance(event, dict) else None


def read_spill_rows(path: Path) -> list[dict[str, Any]]:
    """A spill file's rows; none when it is missing (a line torn by a crash is left out)."""
    try:
        return _json_lines(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def _json_lines(text: str) -> list[dict[str, Any]]:
    objects = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def spill_path(directory: Path, session_id: str, kind: SpillKind) -> Path:
    return directory / f"{session_id}{kind.value}"


def refused_path(spill: Path) -> Path:
    """Where rows the database refused for what they hold are kept for a person to look at:
    beside the spill file, under a name the import does not read."""
    return spill.with_name(spill.name.removesuffix(SPILL_SUFFIX) + REFUSED_SUFFIX)


def remove_refused(directory: Path, session_ids: Sequence[str]) -> int:
    """Delete the sessions' files of refused rows (`memory forget`); how many there were."""
    removed = 0
    for session_id in session_ids:
        for path in directory.glob(f"{session_id}.*{REFUSED_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def parse_spill_name(path: Path) -> tuple[str, SpillKind] | None:
    """(session id, kind) of a spill file's name; None for any other file."""
    session_id, dot, suffix = path.name.partition(".")
    try:
        return session_id, SpillKind(dot + suffix)
    except ValueError:
        return None


def spill_files(directory: Path) -> list[Path]:
    """Every spill file in `directory`: sessions in the order they started (their messages
    get ids in that order, which is the order recall and history read them in), and a
    session's files in `SpillKind` order."""
    kinds = list(SpillKind)
    named = [(named, p) for p in directory.glob("*-spill.jsonl")
             if (named := parse_spill_name(p)) is not None]
    started = {session_id: _started(directory, session_id) for (session_id, _), _ in named}
    return [p for _, p in sorted(
        named, key=lambda item: (started[item[0][0]], item[0][0], kinds.index(item[0][1])))]


def _started(directory: Path, session_id: str) -> float:
    """When the session's cost log began (its first event's time); a session without a
    readable log sorts last."""
    try:
        with event_log_path(directory, session_id).open() as fh:
            return float(json.loads(fh.readline())["ts"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf


def encode_rows(rows: Sequence[dict[str, Any]]) -> bytes:
    """Rows as a spill file holds them: one JSON object a line."""
    return "".join(json.dumps(row, default=str) + "\n" for row in rows).encode()


def replace_whole(path: Path, data: bytes) -> None:
    """Put `data` in place of the file at `path` at once: written beside it, then renamed over
    it, so a crash or a full disk halfway leaves the old file, and no row is lost."""
    scratch = path.with_name(path.name + ".partial")
    scratch.write_bytes(data)
    scratch.replace(path)


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> int | None:
    """Append rows to a spill file as JSON lines; returns where they begin (the file's size
    before them), or None when the disk refused them (full, failing): the file is then left
    as it was, with no torn line, and the loss is said in one line. A row of a `KEYED_KINDS`
    file without a key gets one here (a session without the database keeps its messages and
    screen events straight in their files). Blocking: a few lines, microseconds."""
    if keyed_file(path):
        rows = [with_row_key(row) for row in rows]
    data = encode_rows(rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab", buffering=0) as fh:
            start = fh.tell()
            try:
                if fh.write(data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                with contextlib.suppress(OSError):  # a file can be cut back; /dev/full cannot
                    fh.truncate(start)
                raise
    except OSError as exc:
        log.error("%d rows could not be kept in %s (%s): they are lost", len(rows), path,
                  exc.strerror or exc)
        return None
    return start
