"""A session's connection to LiveKit lost and back: one event and one line each, however many
attempts the SDK makes, summed into the session's summary and said by `sightline costs`.

The room is a real `rtc.Room`, not connected: the SDK emits `reconnecting` and `reconnected`
on it as its FFI reports them; here they are emitted as it would. tests/test_fleet.py crashes
and restarts a real LiveKit server under a live session.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from livekit import rtc

from agent.cli_costs import format_summary
from agent.event_log import EventLog
from agent.livekit_connection import LiveKitConnection
from agent.room_publisher import RoomPublisher
from agent.session_summary import SessionTotals


async def test_each_outage_is_one_event_and_the_summary_sums_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sightline.session")
    events = EventLog(session_id="s-lk", tenant="t", costs_dir=tmp_path, store=None)
    totals = SessionTotals(session_id="s-lk", tenant="t", source="live",
                           prices=tmp_path / "p.json", cost_log=events.path)
    events.subscribe(totals.add)
    room = rtc.Room()
    connection = LiveKitConnection(room, events)
    room.emit("reconnected")  # nothing was lost: nothing to say
    for _ in range(3):  # the SDK's attempts at one outage
        room.emit("reconnecting")
    room.emit("reconnected")
    room.emit("reconnecting")  # a second outage, still on when the session closes
    await connection.aclose()
    room.emit("reconnected")  # after the close: not watched
    kinds = [json.loads(line)["kind"] for line in events.path.read_text().splitlines()]
    assert kinds == ["livekit_lost", "livekit_back", "livekit_lost"]
    summary = {**totals.summary(), "outcome": "completed"}
    assert summary["livekit"]["lost"] == 2 and summary["livekit"]["back"] == 1
    assert summary["livekit"]["offline_s"] >= 0
    assert (f"  LiveKit: connection lost 2 times, {summary['livekit']['offline_s']:.1f} s "
            "offline in all; still reconnecting when the session ended") in format_summary(
                summary)
    said = [r.getMessage() for r in caplog.records]
    assert said.count("session s-lk lost its connection to LiveKit (room ); LiveKit's SDK is "
                      "reconnecting, and the session goes on once it is back") == 2
    assert len([m for m in said if m.startswith("session s-lk is connected to LiveKit again "
                                                  "after ")]) == 1
    await events.close(summary)


def test_a_session_never_cut_off_says_nothing_of_livekit(tmp_path: Path) -> None:
    totals = SessionTotals(session_id="s", tenant="t", source="live",
                           prices=tmp_path / "p.json", cost_log=tmp_path / "c.jsonl")
    summary = {**totals.summary(), "outcome": "completed"}
    assert "livekit" not in summary and "LiveKit" not in format_summary(summary)


async def test_nothing_is_published_or_said_in_a_disconnected_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The session's last cost messages as it closes on a connection the SDK gave up on: no one
    can receive them, so no warning each (two followed the outage's line before)."""
    caplog.set_level(logging.DEBUG, logger="sightline.worker")
    publisher = RoomPublisher(rtc.Room(), "sightline.cost", to="alice")
    publisher({"total_cost_usd": 0.0001})
    await asyncio.gather(*publisher._sending)
    assert [r.getMessage() for r in caplog.records if r.name == "sightline.worker"] == [
        "not published on sightline.cost: the room is disconnected"]
