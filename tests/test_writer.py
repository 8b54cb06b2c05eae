"""The background writer through a long database outage, without a database.

Protects: a row put `now` skips the linger; the queue in memory stays bounded; the overflow
goes to the spill file; when writes work again every row is written exactly once and in the
order it was put, and the spill file is gone (rows spilled by an earlier session stay
untouched); closing during an outage keeps every row, in order, in the spill file. Writes take
time: rows that spill while a batch or the spilled rows are being written are neither lost nor
written twice, and a batch that fails with rows spilled behind it still goes first. A batch
retried after its answer was lost (stored, but the connection dropped) carries the keys its rows
got when put, from the queue as from the spill file, so a table with those keys skips them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from memory.writer import BackgroundWriter


class FlakyTable:
    def __init__(self) -> None:
        self.down = True
        self.rows: list[dict] = []

        self.gate = asyncio.Event()  # a write waits here while it is clear: a slow database
        self.gate.set()
        self.waiting = 0
        self.goes_down_after: int | None = None  # writes that still work

    async def write(self, batch: list[dict]) -> None:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        if self.goes_down_after is not None:
            self.down = self.goes_down_after == 0
            self.goes_down_after = max(0, self.goes_down_after - 1)
        if self.down:
            raise ConnectionError("database is down")
        self.rows.extend(batch)


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_long_outage_spills_then_everything_lands_in_order(tmp_path: Path) -> None:
    spill = tmp_path / "sess-spill.jsonl"
    spill.write_text('{"n": "from an earlier session"}\n')
    table = FlakyTable()
    writer = BackgroundWriter("test", table.write, spill, max_batch=7, max_backoff_s=0.05,
                              max_pending=20)
    for n in range(95):
        writer.put({"n": n})
        assert len(writer._pending) <= 20, "the queue in memory is bounded"
    await asyncio.sleep(0.1)
    assert table.rows == [] and writer.pending == 95
    assert len(spill.read_text().splitlines()) > 1 + 60

    table.down = False
    await wait_for(lambda: writer.pending == 0)
    assert [r["n"] for r in table.rows] == list(range(95))
    assert spill.read_text() == '{"n": "from an earlier session"}\n'
    assert await writer.close() == 0


async def test_closing_during_an_outage_keeps_every_row_in_order(tmp_path: Path) -> None:
    spill = tmp_path / "sess-spill.jsonl"
    table = FlakyTable()
    writer = BackgroundWriter("test", table.write, spill, max_batch=5, max_backoff_s=0.05,
                              max_pending=8)
    for n in range(30):
        writer.put({"n": n})
    assert await writer.close(timeout_s=0.5) == 30
    assert [json.loads(line)["n"] for line in spill.read_text().splitlines()] == list(range(30))


async def test_a_row_put_now_does_not_wait_for_the_linger(tmp_path: Path) -> None:
    """Rows linger to be written together; one put with `now` (a priced event) goes at once,
    with the rows queued before it, in order."""
    table = FlakyTable()
    table.down = False
    writer = BackgroundWriter("test", table.write, tmp_path / "s-spill.jsonl", linger_s=30)
    writer.put({"n": 0})
    await asyncio.sleep(0.2)
    assert table.rows == [], "a row lingers"
    writer.put({"n": 1}, now=True)
    await wait_for(lambda: len(table.rows) == 2, timeout_s=5)
    assert [r["n"] for r in table.rows] == [0, 1]
    writer.put({"n": 2})
    await asyncio.sleep(0.2)
    assert len(table.rows) == 2, "the next row lingers again"
    assert await writer.close() == 0
    assert [r["n"] for r in table.rows] == [0, 1, 2]


def numbers(rows: list[dict]) -> list[int]:
    return [r["n"] for r in rows]


def spilled_numbers(spill: Path) -> list[int]:
    return [json.loads(line)["n"] for line in spill.read_text().splitlines()]


def small_writer(table: FlakyTable, spill: Path) -> BackgroundWriter:
    """Batches of 5; past 12 rows queued the oldest spill; a failed write is retried soon."""
    return BackgroundWriter("test", table.write, spill, max_batch=5, max_backoff_s=0.05,
                            max_pending=12)


def put(writer: BackgroundWriter, numbers: range) -> None:
    for n in numbers:
        writer.put({"n": n})


async def test_rows_spilled_while_a_batch_is_written_are_each_written_once(
        tmp_path: Path) -> None:
    spill = tmp_path / "sess-spill.jsonl"
    table = FlakyTable()
    table.down = False
    table.gate.clear()
    writer = small_writer(table, spill)
    put(writer, range(5))
    await wait_for(lambda: table.waiting == 1)  # rows 0-4 on their way
    put(writer, range(5, 40))
    assert spill.exists(), "the queue overflowed while the batch was written"
    table.gate.set()
    await wait_for(lambda: writer.pending == 0)
    assert numbers(table.rows) == list(range(40))
    assert not spill.exists()
    assert await writer.close() == 0


async def test_rows_spilled_while_spilled_rows_are_written_are_each_written_once(
        tmp_path: Path) -> None:
    spill = tmp_path / "sess-spill.jsonl"
    spill.write_text('{"n": "from an earlier session"}\n')
    table = FlakyTable()
    writer = small_writer(table, spill)
    put(writer, range(40))
    await wait_for(lambda: table.waiting == 0)
    table.gate.clear()
    table.down = False
    await wait_for(lambda: table.waiting == 1)  # the first spilled rows on their way
    put(writer, range(40, 80))  # the queue overflows into the file meanwhile
    table.gate.set()
    await wait_for(lambda: writer.pending == 0)
    assert numbers(table.rows) == list(range(80))
    assert spill.read_text() == '{"n": "from an earlier session"}\n'
    assert await writer.close() == 0


async def test_a_batch_that_fails_with_rows_spilled_behind_it_stays_first(
        tmp_path: Path) -> None:
    """The database goes away while a batch is being written and the queue overflows behind
    it: that batch is older than every spilled row, in the file at close as in the table."""
    for comes_back in (False, True):
        spill = tmp_path / f"sess-{comes_back}-spill.jsonl"
        table = FlakyTable()
        table.down = False
        table.gate.clear()
        writer = small_writer(table, spill)
        put(writer, range(5))
        await wait_for(lambda: table.waiting == 1)  # noqa: B023 (awaited in the loop)
        put(writer, range(5, 30))
        table.down = True
        table.gate.set()
        await asyncio.sleep(0.1)
        if comes_back:
            table.down = False
            await wait_for(lambda: writer.pending == 0)  # noqa: B023
            assert numbers(table.rows) == list(range(30))
            assert not spill.exists()
        assert await writer.close(timeout_s=0.5) == (0 if comes_back else 30)
        assert comes_back or spilled_numbers(spill) == list(range(30))


async def test_closing_keeps_the_spilled_rows_not_yet_written_and_only_those(
        tmp_path: Path) -> None:
    spill = tmp_path / "sess-spill.jsonl"
    spill.write_text('{"n": -1}\n')
    table = FlakyTable()
    writer = small_writer(table, spill)
    put(writer, range(40))
    await asyncio.sleep(0.1)
    table.goes_down_after = 3  # three batches of the spilled rows get through, then it fails
    await wait_for(lambda: len(table.rows) == 15)
    await asyncio.sleep(0.1)
    assert await writer.close(timeout_s=0.5) == 25
    assert numbers(table.rows) == list(range(15))
    assert spilled_numbers(spill) == [-1, *range(15, 40)]


class AckLostTable:
    """A table with a key of the client's on each row, as `messages` and `screen_events` have
    (migration 0018): a row whose `row_key` it holds already is skipped, as `ON CONFLICT DO
    NOTHING` skips it; a row without one is always inserted (a NULL key conflicts with
    nothing). `acks_lost`: how many of the next writes commit and then lose their answer (the
    connection dropped after COMMIT), so the writer takes them for failed."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.keys: set[str] = set()
        self.down = False
        self.acks_lost = 0

    async def write(self, batch: list[dict]) -> None:
        if self.down:
            raise ConnectionError("database is down")
        for row in batch:
            key = row.get("row_key")
            if key is None or key not in self.keys:
                self.rows.append(row)
            if key is not None:
                self.keys.add(key)
        if self.acks_lost:
            self.acks_lost -= 1
            raise ConnectionResetError("connection lost after COMMIT")


async def test_a_batch_stored_whose_answer_was_lost_is_not_stored_again(
        tmp_path: Path) -> None:
    """A batch the database committed but whose answer never came back is retried: from the
    queue, and from the spill file after an outage. Each row keeps the key it was given when
    put, so the retry stores nothing twice (seen: a message twice in the conversation)."""
    spill = tmp_path / "s1.messages-spill.jsonl"  # messages: their rows carry keys
    table = AckLostTable()
    writer = BackgroundWriter("messages", table.write, spill, max_batch=5, max_backoff_s=0.05,
                              max_pending=12)
    table.acks_lost = 1
    put(writer, range(5))
    await wait_for(lambda: writer.pending == 0)
    assert numbers(table.rows) == list(range(5)), "the queue's retry stored nothing twice"

    table.down = True
    put(writer, range(5, 40))  # past 12 queued: the oldest spill
    await asyncio.sleep(0.1)
    assert spill.exists()
    table.acks_lost = 2  # the first spilled batch and the one after: stored, answers lost
    table.down = False
    await wait_for(lambda: writer.pending == 0)
    assert await writer.close() == 0
    assert numbers(table.rows) == list(range(40)), "the spilled rows' retry stored nothing twice"
    assert not spill.exists()


async def test_settled_waits_for_the_rows_put_or_for_writes_to_fail(tmp_path: Path) -> None:
    """What a replay waits for before its next step reads the rows back: every row put so far
    written, however slow the database; a row put meanwhile is waited for too; a database
    that refuses the writes does not hold it up (the rows wait, queued)."""
    table = FlakyTable()
    table.down = False
    table.gate.clear()  # a slow database: the write waits
    writer = BackgroundWriter("test", table.write, tmp_path / "s-spill.jsonl", linger_s=0.05)
    await writer.settled(timeout_s=0.1)  # nothing put: settled at once
    writer.put({"n": 0})
    settled = asyncio.ensure_future(writer.settled(timeout_s=30))
    await wait_for(lambda: table.waiting == 1)
    writer.put({"n": 1})
    await asyncio.sleep(0.2)
    assert not settled.done(), "rows put are not written yet"
    table.gate.set()
    await asyncio.wait_for(settled, timeout=10)
    assert numbers(table.rows) == [0, 1]

    table.down = True
    writer.put({"n": 2})
    await asyncio.wait_for(writer.settled(timeout_s=30), timeout=10)  # failing: not held up
    assert writer.pending == 1 and numbers(table.rows) == [0, 1]
    table.down = False
    assert await writer.close() == 0
    assert numbers(table.rows) == [0, 1, 2]
