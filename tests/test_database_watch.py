"""The watch a session opened without the database keeps (agent/database_watch.py): quiet while
the database does not answer, one line when a join fails, tried again, done after one join; a
closed watch takes one last look. A real Postgres stopped and started is in
tests/test_database.py and test_e2e_database_join.py; here the database's answers are
scripted, to reach the failed join and the moment of closing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from agent.database_watch import DatabaseWatch
from memory.db import Database


class ScriptedDatabase:
    """Answers as scripted, then yes."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers_left = answers
        self.asked: list[bool] = []

    async def answers(self, *, quiet: bool = False) -> bool:
        self.asked.append(quiet)
        return self.answers_left.pop(0) if self.answers_left else True


async def test_the_watch_is_quiet_while_down_and_tries_a_failed_join_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = ScriptedDatabase([False, False])
    joins: list[float] = []
    joined = asyncio.Event()

    async def join(given: Database, offline_s: float) -> None:
        assert given is db
        joins.append(offline_s)
        if len(joins) == 1:
            raise ConnectionResetError("connection reset by peer")
        joined.set()

    with caplog.at_level(logging.INFO):
        watch = DatabaseWatch(cast(Any, db), join, every_s=0.01)
        await asyncio.wait_for(joined.wait(), 5)
        await asyncio.sleep(0.05)  # no more asking once joined
        await watch.aclose()
    assert len(joins) == 2 and joins[0] <= joins[1]
    assert db.asked == [True] * 4  # two noes, one yes whose join failed, one that joined
    [line] = [r.getMessage() for r in caplog.records if r.name.startswith("sightline")]
    assert line.startswith("the database answered, but joining it failed (")
    assert "connection reset by peer" in line and "trying again" in line


async def test_closing_the_watch_stops_it_while_the_database_is_down() -> None:
    db = ScriptedDatabase([False] * 1000)

    async def join(given: Database, offline_s: float) -> None:
        raise AssertionError("never joins a database that does not answer")

    watch = DatabaseWatch(cast(Any, db), join, every_s=0.01)
    await asyncio.sleep(0.1)
    await watch.aclose()
    asked = len(db.asked)
    await asyncio.sleep(0.05)
    assert asked >= 2 and len(db.asked) == asked


async def test_a_watch_closed_before_its_next_look_joins_a_database_that_answers_now() -> None:
    """The session closes between two looks: one last look, so that its own rows can be
    imported as it closes."""
    db = ScriptedDatabase([])
    joins: list[float] = []

    async def join(given: Database, offline_s: float) -> None:
        joins.append(offline_s)

    watch = DatabaseWatch(cast(Any, db), join, every_s=3600)
    await asyncio.sleep(0.01)
    await watch.aclose()
    assert len(joins) == 1 and db.asked == [True]
