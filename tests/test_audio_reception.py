"""How the user's microphone reached the agent (agent/audio_reception.py): WebRTC's inbound
counts read into seconds, per spoken turn, and totalled in the session summary. The live path
(a real LiveKit room, the counts of a real track) is in tests/test_e2e_voice.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc._proto.stats_pb2 import RtcStats

from agent.audio_reception import OPUS_RATE, MicReception, Reception
from agent.cli_costs import format_summary
from agent.session_summary import ALTERED_TURN_S, SessionTotals


def inbound(received: int, concealed: int = 0, silent: int = 0, removed: int = 0,
            inserted: int = 0) -> RtcStats:
    report = RtcStats()
    counts = report.inbound_rtp.inbound
    counts.total_samples_received = received
    counts.concealed_samples = concealed
    counts.silent_concealed_samples = silent
    counts.removed_samples_for_acceleration = removed
    counts.inserted_samples_for_deceleration = inserted
    return report


def test_counts_read_as_seconds_of_audio() -> None:
    transport = RtcStats()
    transport.transport.SetInParent()  # other reports of the track are not audio counts
    reception = Reception.of([transport, inbound(
        5 * OPUS_RATE, concealed=OPUS_RATE // 2, silent=OPUS_RATE // 4, removed=OPUS_RATE // 10,
        inserted=OPUS_RATE // 20)])
    # concealed silence (the sender sent none) changes no word: left out
    assert reception == Reception(received_s=5.0, concealed_s=0.25, accelerated_s=0.1,
                                  decelerated_s=0.05)
    assert reception.altered_s() == pytest.approx(0.4)
    assert reception.since(Reception(received_s=1.0, concealed_s=0.25)) == Reception(
        received_s=4.0, concealed_s=0.0, accelerated_s=0.1, decelerated_s=0.05)


class ScriptedTrack:
    """A microphone track whose counts are scripted (SCRIPTED: no WebRTC behind it)."""

    def __init__(self, sid: str = "TR_1") -> None:
        self.sid = sid
        self.counts = inbound(0)
        self.fail = False

    async def get_stats(self) -> list[RtcStats]:
        if self.fail:
            raise RuntimeError("track closed")
        return [self.counts]


class ScriptedRoom:
    def __init__(self, track: ScriptedTrack) -> None:
        self.publication = type("Publication", (), {
            "source": rtc.TrackSource.SOURCE_MICROPHONE, "track": track})()
        participant = type("Participant", (), {
            "track_publications": {"PUB_1": self.publication}})()
        self.remote_participants = {"alice": participant}


async def settled(reception: MicReception) -> None:
    await asyncio.gather(*reception._reads)


async def test_each_turn_takes_what_arrived_since_the_turn_before() -> None:
    track = ScriptedTrack()
    microphone = MicReception(ScriptedRoom(track), "alice")  # type: ignore[arg-type]
    microphone.read()  # the user starts speaking
    await settled(microphone)
    track.counts = inbound(3 * OPUS_RATE, removed=OPUS_RATE // 5)
    microphone.read()  # and stops
    await settled(microphone)
    first = microphone.take()
    assert first == {"received_s": 3.0, "altered_s": 0.2, "concealed_s": 0.0,
                     "accelerated_s": 0.2, "decelerated_s": 0.0}
    track.counts = inbound(5 * OPUS_RATE, concealed=OPUS_RATE // 10, removed=OPUS_RATE // 5)
    microphone.read()
    await settled(microphone)
    assert microphone.take() == {"received_s": 2.0, "altered_s": 0.1, "concealed_s": 0.1,
                                 "accelerated_s": 0.0, "decelerated_s": 0.0}
    # a read that fails (the track went away) is counted and changes nothing taken
    track.fail = True
    microphone.read()
    await settled(microphone)
    assert microphone.failed_reads == 1
    assert microphone.take()["received_s"] == 0.0
    await microphone.aclose()


async def test_a_microphone_published_again_counts_from_its_new_track() -> None:
    track = ScriptedTrack()
    room = ScriptedRoom(track)
    microphone = MicReception(room, "alice")  # type: ignore[arg-type]
    track.counts = inbound(30 * OPUS_RATE, concealed=OPUS_RATE)
    microphone.read()
    await settled(microphone)
    assert microphone.take()["received_s"] == 30.0
    again = ScriptedTrack("TR_2")  # the user turned the microphone off and on: counts from 0
    again.counts = inbound(2 * OPUS_RATE, removed=OPUS_RATE // 10)
    room.publication.track = again
    microphone.read()
    await settled(microphone)
    assert microphone.take() == {"received_s": 2.0, "altered_s": 0.1, "concealed_s": 0.0,
                                 "accelerated_s": 0.1, "decelerated_s": 0.0}
    await microphone.aclose()


async def test_no_microphone_no_reading() -> None:
    room: Any = type("Room", (), {"remote_participants": {}})()
    microphone = MicReception(room, "alice")
    microphone.read()
    await settled(microphone)
    assert microphone.take()["received_s"] == 0.0 and microphone.failed_reads == 0


def test_the_summary_counts_the_turns_heard_altered(tmp_path: Path) -> None:
    totals = SessionTotals(session_id="s", tenant="t", source="live",
                           prices=tmp_path / "p.json", cost_log=tmp_path / "c.jsonl")
    for altered in (0.02, ALTERED_TURN_S, 0.5):
        totals.add({"kind": "heard", "cost_usd": None, "detail": {
            "characters": 20, "reception": {"received_s": 3.0, "altered_s": altered}}})
    totals.add({"kind": "heard", "cost_usd": None, "detail": {"characters": 9}})  # replayed
    totals.add({"kind": "speech", "model": "moonshine-tiny-en", "cost_usd": 0.0,
                "detail": {"direction": "stt", "audio_s": 9.0}})
    summary = totals.summary()
    assert summary["voice"]["heard_altered"] == {"turns": 2, "seconds": 0.62}
    assert ("  microphone: 2 spoken turns with audio altered in transit (0.62 s made up, cut "
            "or stretched by WebRTC's jitter buffer)") in format_summary(
                {**summary, "outcome": "completed"})
