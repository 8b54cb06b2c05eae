"""Write rows to Postgres off the reply path, and lose none of them when the database is down.

Callers `put()` without waiting. A background task writes batches; a failed batch stays queued
and is retried with backoff. The queue in memory is bounded: during a long outage its oldest rows
move to a JSONL spill file, and when the database is back they are written first, before the
queue, so rows reach the database in the order they were put. On `close()` whatever still cannot
be written is appended to the spill file and reported, so a database outage costs latency for
nobody and records for nobody. A row the database refuses for what it holds (a constraint, a
value past a limit) is not an outage: its batch is written row by row, and that row is set
aside in `<session>.<kind>-refused.jsonl` with why, so it holds up nothing behind it.

A batch whose answer is lost after the database committed it (the connection dropped then) is
retried, and spilled rows stay in the file until it is rewritten without them: either way a
row can be written twice. The tables skip a row they hold already by its key: its own (cost
events' `seq`), or, for messages and screen events, the `ROW_KEY` it gets in `put()`, before
its first write, and keeps in the spill file (`spill_files.KEYED_KINDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .db import error_reason
from .spill_files import (
    append_rows,
    encode_rows,
    keyed_file,
    refused_path,
    replace_whole,
    with_row_key,
)

log = logging.getLogger("sightline.db")

Row = dict[str, Any]
WriteBatch = Callable[[list[Row]], Awaitable[None]]

# What Postgres refuses for what a row holds rather than for its own state: a data exception
# (22), an integrity constraint (23), a limit such as a tsvector's 1 MB (54). Such a batch
# would fail however often it is tried, and hold up every row queued behind it.
REFUSED_ROW_CLASSES = ("22", "23", "54")


def refuses_rows(exc: BaseException) -> bool:
    return (isinstance(exc, asyncpg.PostgresError)
            and str(getattr(exc, "sqlstate", "") or "")[:2] in REFUSED_ROW_CLASSES)


@dataclass
class Written:
    """How far a batch got: `done` rows from its start are written or refused (`refused`, each
    with why); `error` is what stopped it before its end (the database went away)."""

    done: int = 0
    refused: list[Row] = field(default_factory=list)
    error: Exception | None = None


async def write_or_set_aside(write_batch: WriteBatch, rows: list[Row]) -> Written:
    """Write `rows`; when the database refuses what one of them holds, write them one at a
    time and set the refused ones aside, so one bad row costs only itself."""
    try:
        await write_batch(rows)
        return Written(len(rows))
    except Exception as exc:
        if not refuses_rows(exc):
            return Written(error=exc)
    written = Written()
    for row in rows:
        try:
            await write_batch([row])
        except Exception as exc:
            if not refuses_rows(exc):
                written.error = exc
                return written
            written.refused.append({**row, "refused": error_reason(exc)})
        written.done += 1
    return written


def set_aside(name: str, spill_path: Path, refused: list[Row]) -> None:
    """Keep rows the database refused beside the spill file (never imported again), said in
    one line."""
    path = refused_path(spill_path)
    kept = append_rows(path, refused) is not None
    log.error("%s: the database refused %d rows (%s)%s; the others are written", name,
              len(refused), refused[0]["refused"], f": kept in {path}" if kept else "")


class BackgroundWriter:
    def __init__(
        self,
        name: str,
        write_batch: WriteBatch,
        spill_path: Path,
        *,
        max_batch: int = 200,
        max_backoff_s: float = 5.0,
        max_pending: int = 5000,
        linger_s: float = 0.0,
    ) -> None:
        self._name = name
        self._write_batch = write_batch
        self._spill_path = spill_path
        # rows of a table with no key of its own get one as they are put (spill_files.ROW_KEY)
        self._keyed = keyed_file(spill_path)
        self._max_batch = max_batch
        self._max_backoff_s = max_backoff_s
        self._pending: list[Row] = []
        self._max_pending = max_pending
        self._linger_s = linger_s  # gather rows this long before a write: fewer, larger writes
        # rows this writer moved to the spill file and still owes the database: bytes
        # `_spill_offset` to `_spill_end` of the file (rows before it are from earlier sessions,
        # left alone); those before `_written_to` are written already, and leave the file when
        # the rest has been written too, or at `close()`
        self._spilled = 0
        self._spill_offset = 0
        self._written_to = 0
        self._spill_end = 0
        # rows at the head of `_pending` that stay in memory: a batch being written, or what is
        # left of one that failed while rows after it were spilled (they go first, for order)
        self._head = 0
        self._rewriting = False  # `close()` rewriting the spill file: rows wait in memory
        self._wake = asyncio.Event()
        # nothing to do for now: every row put is written, or writes fail (the rows wait)
        self._settled = asyncio.Event()
        self._settled.set()
        self._urgent = asyncio.Event()  # a row that should not linger (`put(row, now=True)`)
        self._closing = False
        self._failing_since: str | None = None
        self.written = 0
        self.lost = 0  # rows neither the database nor the disk took
        self.refused = 0  # rows the database refused for what they hold (set aside)
        self._task = asyncio.create_task(self._run(), name=f"writer:{name}")

    def put(self, row: Row, *, now: bool = False) -> None:
        """Queue `row`; `now`: write it without lingering (a priced event, which a worker
        killed within the linger would otherwise take along; the rows before it go too). A row
        for a table without a key of its own is given one now (a copy of it), before any write
        of it, so that a retry of a write that did reach the database is skipped there."""
        self._pending.append(with_row_key(row) if self._keyed else row)
        self._settled.clear()
        if now:
            self._urgent.set()
        if len(self._pending) > self._max_pending and not self._rewriting:
            # a quarter at a time: a few ms of JSON, and not again for a while; the oldest rows
            # but those at the head, which a write may be taking from the list as it returns
            oldest = slice(self._head, self._head + self._max_pending // 4)
            self._spill(self._pending[oldest])
            del self._pending[oldest]
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + self._spilled

    @property
    def spilled(self) -> int:
        """Rows on disk now, waiting for the database to come back."""
        return self._spilled

    def _spill(self, rows: list[Row]) -> None:
        start = append_rows(self._spill_path, rows)
        if start is None:  # the disk refused them too (said by append_rows): they are lost
            self.lost += len(rows)
            return
        if not self._spilled:
            self._spill_offset = self._written_to = start
            log.warning("%s: database still unreachable, queue full: spilling to %s",
                        self._name, self._spill_path)
        self._spilled += len(rows)
        # appends happen on the loop alone, so the file ends where these rows end
        self._spill_end = self._spill_path.stat().st_size

    def _read_spilled(self, start: int, end: int) -> list[tuple[Row, int]]:
        """The rows between two byte offsets, each with the offset where its line ends. Rows
        spilled while this runs (on its thread) go after `end` and are not read."""
        with self._spill_path.open("rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        rows, end_of_line = [], start
        for line in data.splitlines(keepends=True):
            end_of_line += len(line)
            if line.strip():
                rows.append((json.loads(line), end_of_line))
        return rows

    def _drop_written(self) -> None:
        """Every spilled row is written: they leave the file. On the loop, between two
        appends, so no row spilled meanwhile is cut off."""
        with self._spill_path.open("r+b") as fh:
            fh.truncate(self._spill_offset)
        if self._spill_offset == 0:
            self._spill_path.unlink()
        self._spill_end = self._written_to = self._spill_offset

    def _rewrite_spilled(self, first: list[Row]) -> None:
        """Closing with spilled rows written, or rows older than them still in memory (`first`,
        left of a batch that failed after them): the file keeps the rows not written, in the
        order they were put, for a later session to import. A new file is put in place whole
        (`replace_whole`): a crash meanwhile leaves the old one, its rows written imported
        again, not lost, and skipped by the table as rows it holds (by their keys)."""
        with self._spill_path.open("rb") as old:
            kept = old.read(self._spill_offset) + encode_rows(first)
            old.seek(self._written_to)
            kept += old.read(self._spill_end - self._written_to)
        replace_whole(self._spill_path, kept)
        self._spill_end = len(kept)
        self._written_to = self._spill_offset

    async def _write(self, batch: list[Row]) -> Written:
        written = await write_or_set_aside(self._write_batch, batch)
        if written.refused:
            self.refused += len(written.refused)
            await asyncio.to_thread(set_aside, self._name, self._spill_path, written.refused)
        self.written += written.done - len(written.refused)
        return written

    async def _flush_spilled(self) -> bool:
        """Write the spilled rows, oldest first, until none is left (rows put meanwhile may
        spill after them); False when the database fails again, the rest kept."""
        while self._spilled:
            rows = await asyncio.to_thread(self._read_spilled, self._written_to, self._spill_end)
            for start in range(0, len(rows), self._max_batch):
                batch = rows[start:start + self._max_batch]
                written = await self._write([row for row, _ in batch])
                if written.done:
                    self._written_to = batch[written.done - 1][1]
                    self._spilled -= written.done
                if written.error is not None:
                    return False
            if self._written_to == self._spill_end:
                self._drop_written()
            log.info("%s: %d spilled rows written after the outage", self._name, len(rows))
        return True

    async def _flush_once(self) -> bool:
        if self._spilled and not self._head and not await self._flush_spilled():
            return False
        batch = self._pending[: self._head or self._max_batch]
        if not batch:
            return True
        self._head = len(batch)
        written = await self._write(batch)
        del self._pending[: written.done]
        self._head = len(batch) - written.done if self._spilled else 0
        if written.error is not None:
            if self._failing_since is None:
                self._failing_since = repr(written.error)
                log.error("%s: database write failed, keeping %d rows queued: %r",
                          self._name, len(self._pending), written.error)
            return False
        if self._failing_since is not None:
            log.info("%s: database writes recovered", self._name)
            self._failing_since = None
        return True

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            await self._wake.wait()
            if self._linger_s and not self._closing and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), timeout=self._linger_s)
            self._wake.clear()
            self._urgent.clear()
            while self._pending or self._spilled:
                if await self._flush_once():
                    backoff = 0.2
                    continue
                if self._closing:
                    return
                self._settled.set()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                self._wake.clear()
                backoff = min(backoff * 2, self._max_backoff_s)
            self._settled.set()
            if self._closing:
                return

    async def settled(self, timeout_s: float) -> None:
        """Wait, `timeout_s` at most, until every row put so far is written or the writes are
        failing (those rows then wait, queued or spilled): a replay reads back what it put
        before it goes on, where a live session has the seconds between its steps."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout=timeout_s)

    async def close(self, timeout_s: float = 10.0) -> int:
        """Flush what can be flushed; spill the rest. Returns the number of rows spilled."""
        self._closing = True
        self._wake.set()
        self._urgent.set()  # ends a linger under way
        try:
            await asyncio.wait_for(self._task, timeout=timeout_s)
        except TimeoutError:
            self._task.cancel()
        if self._pending or self._spilled:
            await self._flush_once()
        if not self._pending and not self._spilled:
            return 0
        first = self._pending[: self._head] if self._spilled else []
        if first or self._written_to > self._spill_offset:
            self._rewriting = True
            try:
                await asyncio.to_thread(self._rewrite_spilled, first)
                del self._pending[: len(first)]
                self._spilled += len(first)
            except OSError as exc:  # the old file stands: its rows written come again (and
                # the tables skip them by their keys)
                log.error("%s: %s could not be rewritten (%s): its rows written already may "
                          "be imported again", self._name, self._spill_path,
                          exc.strerror or exc)
            finally:
                self._rewriting = False
        self._spill(self._pending)  # after the rows spilled earlier: the order holds
        self._pending.clear()
        spilled = self._spilled
        if spilled:
            log.error("%s: database unreachable, %d rows kept in %s", self._name, spilled,
                      self._spill_path)
        return spilled
