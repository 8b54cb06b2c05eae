"""The live frame source: the user's screen-share track, read with `rtc.VideoStream` in I420.

LiveKit's built-in video input only feeds realtime models, so Sightline subscribes itself. Only a
track whose source is SCREENSHARE is watched, one at a time (the newest of the user's shares); a
camera is noted (the model is told it cannot see the screen) but never sampled.

A published share whose track has not arrived within `RESUBSCRIBE_AFTER_S` is subscribed again,
up to `RESUBSCRIBE_TRIES` times, so that a session never answers a whole call without the screen
when a subscription stalls. Over the rtc SDK's single peer connection, 30-session runs of
`bench/load.py` had late shares in four runs of five: the server asked the agent for a new offer
and none came (some never, LiveKit then logging "track not bound after timeout" every 3 s). A new
subscription asks again, and brought six of nine. The worker now connects with two peer
connections (agent/worker.py), where the server offers each subscription itself; this check
stays as the net under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from livekit import rtc

from .screen import ScreenWatcher

log = logging.getLogger("sightline.vision")

STREAM_QUEUE_FRAMES = 4  # frames a stalled session holds at most (a 1080p I420 frame is 3 MB)
RESUBSCRIBE_AFTER_S = 10.0
RESUBSCRIBE_TRIES = 3

# Which frames each open video stream wants, by the stream's rtc handle: the process's rtc
# event router (agent/rtc_events.py) asks before waking a session for a frame. Called on the
# rtc SDK's callback thread; unused where no router is installed (every frame is delivered).
FrameGate = Callable[[int], bool]  # the frame's capture time (us) -> deliver it?
frame_gates: dict[int, FrameGate] = {}


class SamplingGate:
    """Delivers a frame only when the sampler would take it and the session has taken the last
    one delivered: at 5 fps four frames in five never wake the session (nor are copied out of
    the rtc SDK), and a session that falls behind holds one frame, not a growing backlog of
    them. Asked on the SDK's thread while the session samples on its own: reading the
    sampler's schedule there races harmlessly (a frame more or less at a period's edge; the
    sampler still decides)."""

    def __init__(self, screen: ScreenWatcher) -> None:
        self._screen = screen
        self._start: float | None = None  # the screen time of the stream's first frame
        self._first_us: int | None = None
        self._first_arrival: float | None = None
        self._in_flight = False

    def t(self, timestamp_us: int) -> float:
        """Screen time: where the session's screen time stood at the stream's first frame (a
        share or subscription made again goes on after the last, `ScreenWatcher.start_stream`)
        plus the time since that frame, by capture time, or by arrival time for a publisher
        that sends none."""
        if self._start is None:
            self._start = self._screen.start_stream()
        if timestamp_us > 0:
            if self._first_us is None:
                self._first_us = timestamp_us
            return self._start + (timestamp_us - self._first_us) / 1_000_000
        now = time.monotonic()
        if self._first_arrival is None:
            self._first_arrival = now
        return self._start + now - self._first_arrival

    def __call__(self, timestamp_us: int) -> bool:
        if timestamp_us <= 0:  # no capture time to schedule by: the session sees every frame
            return True
        if not self._in_flight and self._screen.wants(self.t(timestamp_us)):
            self._in_flight = True
            return True
        self._screen.frames_skipped += 1
        return False

    def taken(self) -> None:
        """The session has done with the frame delivered last."""
        self._in_flight = False


class ScreenShareSubscriber:
    def __init__(self, room: rtc.Room, user_identity: str, screen: ScreenWatcher, *,
                 resubscribe_after_s: float = RESUBSCRIBE_AFTER_S) -> None:
        self._room = room
        self._identity = user_identity
        self._screen = screen
        self._resubscribe_after_s = resubscribe_after_s
        # the user's screen-share tracks that arrived, by track sid, in the order they did; the
        # latest is the one watched (`_watching`, its track sid and frame pump)
        self._shares: dict[str, rtc.Track] = {}
        self._watching: tuple[str, asyncio.Task[None]] | None = None
        self._arrivals: dict[str, asyncio.Task[None]] = {}  # by publication sid
        room.on("track_subscribed", self._on_subscribed)
        room.on("track_unsubscribed", self._on_unsubscribed)
        room.on("track_published", self._on_published)
        participant = room.remote_participants.get(user_identity)
        for publication in participant.track_publications.values() if participant else []:
            if publication.track is not None and publication.subscribed:
                self._on_subscribed(publication.track, publication, participant)  # type: ignore[arg-type]
            self._on_published(publication, participant)  # type: ignore[arg-type]

    def _on_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (participant.identity != self._identity
                or publication.source != rtc.TrackSource.SOURCE_SCREENSHARE):
            return
        waiting = self._arrivals.get(publication.sid)
        if waiting is None or waiting.done():
            self._arrivals[publication.sid] = asyncio.create_task(
                self._see_it_arrive(publication, participant),
                name=f"screen-share-arrival:{publication.sid}")

    def _arrived(self, publication: rtc.RemoteTrackPublication) -> bool:
        return publication.track is not None and publication.track.sid in self._shares

    async def _see_it_arrive(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        """Subscribe again to a published share whose track has not arrived in time."""
        for attempt in range(1, RESUBSCRIBE_TRIES + 2):
            await asyncio.sleep(self._resubscribe_after_s)
            if self._arrived(publication) or publication.sid not in participant.track_publications:
                return
            if attempt > RESUBSCRIBE_TRIES:
                log.error("the screen share %s of %s never arrived (%d subscriptions): the "
                          "session goes on without the screen", publication.sid,
                          participant.identity, attempt)
                return
            log.warning("the screen share %s of %s has not arrived %.0f s after it was "
                        "published or subscribed: subscribing again (%d of %d)", publication.sid,
                        participant.identity, self._resubscribe_after_s, attempt,
                        RESUBSCRIBE_TRIES)
            self._screen.share_resubscribed += 1
            publication.set_subscribed(False)
            publication.set_subscribed(True)

    def _on_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if participant.identity != self._identity or track.kind != rtc.TrackKind.KIND_VIDEO:
            return
        if publication.source != rtc.TrackSource.SOURCE_SCREENSHARE:
            source_name = rtc.TrackSource.Name(publication.source)
            log.warning("%s publishes a %s video track: Sightline only watches screen shares",
                        participant.identity, source_name)
            self._screen.camera_only = not self._shares
            return
        if track.sid in self._shares:
            return
        self._screen.camera_only = False
        self._shares[track.sid] = track
        if self._watching is not None:
            log.info("%s shares another screen, %s: watching it, and %s (set aside) again if "
                     "it ends first", participant.identity, track.sid, self._watching[0])
        else:
            log.info("watching the screen share %s of %s", track.sid, participant.identity)
        self._watch(track)

    def _on_unsubscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if self._shares.pop(track.sid, None) is None:
            return
        log.info("screen share %s ended", track.sid)
        if self._watching is not None and self._watching[0] == track.sid:
            self._watch(next(reversed(self._shares.values()), None))
            if self._watching is not None:
                log.info("watching the screen share %s of %s again", self._watching[0],
                         participant.identity)
        # still published (the subscription was lost, not the share): it should come back
        if publication.sid in participant.track_publications:
            self._on_published(publication, participant)

    def _watch(self, track: rtc.Track | None) -> None:
        """Watch `track` alone (none: no share is left). Two shares at once (a second screen, a
        window beside the screen) are two screens: frames of both in turn would each look like
        a change of screen to the detector (archived and read for text), and a turn could see
        either. The newest is what the user means to show; the screen ends with the one watched,
        so a turn never answers from the screen it left."""
        if self._watching is not None:
            self._watching[1].cancel()
            self._screen.clear()
        self._watching = None if track is None else (
            track.sid, asyncio.create_task(self._pump(track), name=f"screen-share:{track.sid}"))

    async def _pump(self, track: rtc.Track) -> None:
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420,
                                 capacity=STREAM_QUEUE_FRAMES)
        gate = SamplingGate(self._screen)
        handle = stream._ffi_handle.handle  # the pinned livekit 1.2.1's, see tests
        frame_gates[handle] = gate
        try:
            async for event in stream:
                try:
                    self._screen.offer(gate.t(event.timestamp_us), event.frame)
                except Exception as exc:  # one bad frame or a bug must not end the share
                    self._screen.frames_failed += 1
                    if self._screen.frames_failed == 1:
                        log.error("screen share %s: a frame could not be analysed (%r); the "
                                  "session goes on without such frames (counted in its log)",
                                  track.sid, exc)
                finally:
                    gate.taken()
        finally:
            frame_gates.pop(handle, None)
            await stream.aclose()

    async def aclose(self) -> None:
        for task in self._arrivals.values():
            task.cancel()
        watching, self._watching = self._watching, None
        self._shares.clear()
        if watching is not None:
            watching[1].cancel()
            # the pump may have ended with an error of its own (a watchdog's interruption, which
            # the watchdog reported): closing goes on regardless, so the session writes its log
            await asyncio.gather(watching[1], return_exceptions=True)
