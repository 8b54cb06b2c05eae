"""Rows a closed session could not write (its database was down) reach the database later.

A `BackgroundWriter` that cannot reach Postgres by the time its session closes leaves its rows
in a spill file next to the session's cost log: `<session>.db-spill.jsonl` (cost events),
`<session>.messages-spill.jsonl` (the conversation), `<session>.memory-spill.jsonl` (facts
and summary) and `<session>.screen-spill.jsonl` (the screen timeline); a session that ran
without the database at all also leaves `<session>.session-spill.jsonl` (its own row), whose
import writes the row, then its whole cost log as its cost events, and
`<session>.exchanges-spill.jsonl` (exchanges its memory model never saw: `backlog.py`). A
session whose summary reached only its cost log gets it on its row once its spilled events are
in. Every new session, and
`sightline memory show|forget`, first imports the spill files of sessions that have closed
(their cost log ends with the summary), in order, and deletes each file once all of it is
stored. A file whose session is still open belongs to its writer and
is left alone; an exclusive lock keeps two processes from importing one file twice. A row the
database refuses for what it holds is set aside as the writer does (`writer.set_aside`), and
the rest of its file imported.

A file is rewritten without the rows stored only after they are: a crash (or a full disk)
between a batch's commit and that rewrite leaves them in it, and the next import writes them
again. Each table skips a row it holds already, by the row's key (`spill_files`): messages and
screen events by the `ROW_KEY` they were given when made. A row kept before rows had keys (a
file of an earlier version) gets one made from its place in the file (`legacy_row_key`), the
same at every import until the file is rewritten, which writes the keys of the rows it keeps
into it; such a row stored by an import of the earlier version before a crash, without a key,
cannot be told from its copy, and is stored once more.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .conversation import store_messages
from .embeddings import Embedder
from .screen_timeline import ScreenTimeline
from .spill_files import (
    ROW_KEY,
    SpillKind,
    encode_rows,
    event_log_path,
    keyed_file,
    last_event,
    legacy_row_key,
    parse_spill_name,
    read_event_log,
    replace_whole,
    spill_files,
)
from .store import Store
from .user_memory import UserMemory
from .writer import Row, set_aside, write_or_set_aside

log = logging.getLogger("sightline.db")

BATCH = 200


@dataclass
class RecoveryReport:
    files: int = 0
    rows: int = 0
    unreadable_lines: int = 0
    refused: int = 0  # rows the database refused for what they hold, set aside
    left: list[str] = field(default_factory=list)  # files not imported now, and why


def session_closed(costs_dir: Path, session_id: str) -> bool:
    """Whether the session's cost log ends with its summary (written last on close)."""
    event = last_event(event_log_path(costs_dir, session_id))
    return event is not None and event.get("kind") == "summary"


def _read_locked(path: Path) -> tuple[Any, list[Row], int] | None:
    """Open and lock `path`; its rows and the count of unreadable lines (a write cut off by a
    crash, bytes that are not UTF-8 JSON objects: a file edited or damaged by hand). None
    when another process holds the file. A row of a keyed file without its key (kept before
    rows had keys) gets one from its place in the file (`legacy_row_key`)."""
    fh = path.open("rb")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    if os.fstat(fh.fileno()).st_nlink == 0:  # imported and removed while we waited to open it
        fh.close()
        return None
    keyed = keyed_file(path)
    rows, bad = [], 0
    for number, line in enumerate(fh):
        if not line.strip():
            continue
        try:
            row = json.loads(line)  # bytes: UTF-8 or refused (UnicodeDecodeError is a ValueError)
        except ValueError:
            row = None
        if isinstance(row, dict):
            if keyed and ROW_KEY not in row:
                row[ROW_KEY] = legacy_row_key(path.name, number, line)
            rows.append(row)
        else:
            bad += 1
    return fh, rows, bad


def _remove_locked(fh: Any, path: Path) -> None:
    path.unlink()
    fh.close()


def _keep_locked(fh: Any, path: Path, rows: list[Row]) -> None:
    """Leave only `rows` (the ones not stored yet) in the file, then let go of it. A new file
    is put in place whole (`replace_whole`; the old one stays locked until then, and unlinked
    it is skipped by whoever opened it meanwhile). The rows keep their keys in it, those made
    from their old places too (`legacy_row_key`), which the new file would not give again."""
    try:
        replace_whole(path, encode_rows(rows))
    finally:
        fh.close()


# the tenant whose spilled rows (messages, memory, screen events) are being embedded and
# written back: what embedding them costs is that tenant's, and the embedder's `record` reads
# it here to bill it so (agent/spill_billing.py)
IMPORTING_FOR: ContextVar[str | None] = ContextVar("importing_spilled_rows_for", default=None)


@dataclass(frozen=True)
class SpillTargets:
    """Where each kind of spilled row is written back."""

    store: Store
    memory: UserMemory
    screen: ScreenTimeline
    embedder: Embedder

    @classmethod
    def on(cls, pool: asyncpg.Pool, embedder: Embedder) -> SpillTargets:
        """The targets on `pool`, imported rows embedded with `embedder`."""
        return cls(Store(pool), UserMemory(pool, embedder), ScreenTimeline(pool, embedder),
                   embedder)


async def recover_spills(costs_dir: Path, targets: SpillTargets) -> RecoveryReport:
    """Import every closed session's spill files; a file that fails stays for the next try."""
    report = RecoveryReport()
    paths = await asyncio.to_thread(spill_files, costs_dir)
    for path in paths:
        named = parse_spill_name(path)
        assert named is not None  # spill_files lists only spill files
        session_id, kind = named
        if not await asyncio.to_thread(session_closed, costs_dir, session_id):
            report.left.append(f"{path.name}: its session is still open (or ended without "
                               "closing)")
            continue
        try:
            opened = await asyncio.to_thread(_read_locked, path)
        except OSError as exc:  # a folder by that name, a file it may not read
            report.left.append(f"{path.name}: {exc.strerror or exc}")
            log.error("could not read %s: %s", path, exc.strerror or exc)
            continue
        if opened is None:
            report.left.append(f"{path.name}: another process is importing it")
            continue
        fh, rows, bad = opened
        done = 0  # rows written, or refused and set aside
        try:
            write = await _writer_for(kind, session_id, targets, rows)
            while done < len(rows):
                written = await write_or_set_aside(write, rows[done:done + BATCH])
                if written.refused:
                    report.refused += len(written.refused)
                    await asyncio.to_thread(set_aside, path.name, path, written.refused)
                done += written.done
                if written.error is not None:
                    raise written.error
            if kind in (SpillKind.SESSION, SpillKind.COST_EVENTS):
                await _import_log(kind, costs_dir, session_id, targets.store)
        except BaseException as exc:  # cancelled too: what was stored must leave the file
            try:
                _keep_locked(fh, path, rows[done:])
            except OSError as kept:  # the old file stands: its rows stored come again, and
                # are skipped by their keys
                log.error("could not rewrite %s: %s", path, kept.strerror or kept)
            if not isinstance(exc, Exception):
                raise
            report.rows += done
            report.left.append(f"{path.name}: {exc!r}")
            log.error("could not import %s yet: %r", path, exc)
            continue
        await asyncio.to_thread(_remove_locked, fh, path)
        report.files += 1
        report.rows += len(rows)
        report.unreadable_lines += bad
        if bad:
            log.error("%s: %d unreadable lines (a write cut off) could not be imported", path,
                      bad)
        log.info("imported %d rows spilled by session %s (%s)", len(rows), session_id, path.name)
    return report


async def _import_log(kind: SpillKind, costs_dir: Path, session_id: str, store: Store) -> None:
    """What only the closed session's cost log holds: for a session that ran without the
    database, every event (the log is its ledger); and the summary, on its row if that is
    still open (it never is for a session whose database answered at its close)."""
    path = event_log_path(costs_dir, session_id)
    if kind is SpillKind.SESSION:
        events = await asyncio.to_thread(read_event_log, path)
        summary = events.pop() if events and events[-1]["kind"] == "summary" else None
        for start in range(0, len(events), BATCH):
            await store.add_cost_events(events[start:start + BATCH])
    else:  # the summary alone: the tail, not the whole log again
        last = await asyncio.to_thread(last_event, path)
        summary = (last if last is not None and last.get("kind") == "summary"
                   and "seq" in last else None)  # an event, as read_event_log has them
    if summary is not None:
        await store.close_session(session_id, summary["detail"]["total_cost_usd"],
                                  summary["detail"], ended_at=summary["ts"])


async def _writer_for(
    kind: SpillKind, session_id: str, targets: SpillTargets, rows: list[Row],
) -> Callable[[list[Row]], Awaitable[None]]:
    if kind is SpillKind.SESSION:
        async def write_session(batch: list[Row]) -> None:
            for row in batch:
                await targets.store.start_session(session_id, **row)
        return write_session
    if kind is SpillKind.COST_EVENTS:
        return targets.store.add_cost_events
    if kind is SpillKind.EXCHANGES:
        return targets.memory.defer
    store = targets.store
    tenant = str((rows[0].get("tenant") if rows else None)
                 or await store.session_tenant(session_id))

    async def write_messages(batch: list[Row]) -> None:
        await store_messages(store, targets.embedder, session_id, tenant, batch)
    write = {SpillKind.MEMORY: targets.memory.apply,
             SpillKind.SCREEN_EVENTS: targets.screen.write}.get(kind, write_messages)

    async def write_embedded(batch: list[Row]) -> None:
        token = IMPORTING_FOR.set(tenant)
        try:
            await write(batch)
        finally:
            IMPORTING_FOR.reset(token)
    return write_embedded
