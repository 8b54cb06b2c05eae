"""The background writer through a long database outage, without a database.

Protects: a row put `now` skips the linger; the queue in memory stays bounded; the overflow
goes to the spill file; when writes work again every row is written exactly once and in the
order it was put, and the spill file is gone (rows spilled by an earlier session stay
untouched); closing during an outage keeps every row, in order, in the spill file.
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

    async def write(self, batch: list[dict]) -> None:
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
