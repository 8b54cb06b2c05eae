"""How the user's microphone reached the agent, per spoken turn: WebRTC's jitter buffer counts.

A recogniser transcribes what arrived, not what was said. When packets come late or never (a
congested network, a sender whose audio thread stalled), WebRTC's jitter buffer (NetEq) makes
up audio to cover the gap (concealment), then cuts or stretches what follows to catch up or to
wait (acceleration, deceleration): the words change. Each spoken turn's `heard` event carries
the seconds of its audio altered that way, so a transcript gone wrong can be told apart from
speech said wrong (ops, in the cost log; the voice tests, in their failure messages).

The track's stats are read when the user starts and stops speaking (livekit-agents' user
state), not on a timer: two reads a question, nothing while the user is silent. The read at the
end of speech takes a millisecond or so beside the transcript's hundreds (Moonshine here); one
still in flight when a transcript lands is counted with the next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass

from livekit import rtc
from livekit.rtc._proto.stats_pb2 import RtcStats

OPUS_RATE = 48000  # NetEq counts samples at the codec's rate

log = logging.getLogger("sightline.audio_reception")


@dataclass(frozen=True)
class Reception:
    """A received audio track's counts so far, in seconds of audio."""

    received_s: float = 0.0
    concealed_s: float = 0.0  # made up for packets late or lost (concealed silence left out)
    accelerated_s: float = 0.0  # cut to catch up after late packets
    decelerated_s: float = 0.0  # stretched while waiting for late ones

    @classmethod
    def of(cls, stats: Iterable[RtcStats]) -> Reception:
        counts = [0, 0, 0, 0]
        for report in stats:
            if report.WhichOneof("stats") != "inbound_rtp":
                continue
            inbound = report.inbound_rtp.inbound
            for i, samples in enumerate((
                    inbound.total_samples_received,
                    inbound.concealed_samples - inbound.silent_concealed_samples,
                    inbound.removed_samples_for_acceleration,
                    inbound.inserted_samples_for_deceleration)):
                counts[i] += samples
        return cls(*(samples / OPUS_RATE for samples in counts))

    def since(self, earlier: Reception) -> Reception:
        return Reception(*(now - then for now, then in
                           zip(astuple(self), astuple(earlier), strict=True)))

    def altered_s(self) -> float:
        return self.concealed_s + self.accelerated_s + self.decelerated_s


class MicReception:
    """The user's microphone track's reception, read at the edges of their speech."""

    def __init__(self, room: rtc.Room, user_identity: str) -> None:
        self._room = room
        self._identity = user_identity
        self._latest = Reception()
        self._taken = Reception()
        self._track_sid = ""  # the track read last: one published again counts from zero
        self._reads: set[asyncio.Task[None]] = set()
        self.failed_reads = 0

    def _microphone(self) -> rtc.Track | None:
        participant = self._room.remote_participants.get(self._identity)
        for publication in participant.track_publications.values() if participant else []:
            if (publication.source == rtc.TrackSource.SOURCE_MICROPHONE
                    and publication.track is not None):
                return publication.track
        return None

    def read(self) -> None:
        """Reads the counts now (the user started or stopped speaking), off the caller."""
        task = asyncio.get_running_loop().create_task(self._read())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self) -> None:
        track = self._microphone()
        if track is None:
            return
        try:
            reception = Reception.of(await track.get_stats())
        except Exception as exc:  # a track gone between the look-up and the read
            self.failed_reads += 1
            log.info("could not read the microphone's reception: %s", exc)
            return
        if track.sid != self._track_sid:
            self._track_sid = track.sid
            self._taken = Reception()
        self._latest = reception

    def take(self) -> dict[str, float]:
        """What arrived since the last take (the turn before), for a `heard` event; on a
        microphone published since, what its new track received."""
        since = self._latest.since(self._taken)
        self._taken = self._latest
        return {name: round(seconds, 3) for name, seconds in
                {**asdict(since), "altered_s": since.altered_s()}.items()}

    async def aclose(self) -> None:
        for task in list(self._reads):
            task.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)
