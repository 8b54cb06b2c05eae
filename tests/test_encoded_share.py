"""bench/load.py's users send a share encoded once (bench/encoded_share.py): each still is a
keyframe and the deltas that hold it, the repeated delta checked to leave the picture as it was;
published through the rtc SDK's EncodedVideoSource, a subscriber on a real LiveKit server
decodes the still from it, and a keyframe request restarts the current still."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import DEMO_FIXTURE
from livekit import api, rtc

from bench.encoded_share import EncodedShare, Segment, _decoded, encode_still
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer
from bench.load_users import screen_frames

FPS, HOLD_S = 5.0, 2.0


def _luma(frame: rtc.VideoFrame) -> np.ndarray:
    i420 = frame.convert(rtc.VideoBufferType.I420)
    plane = np.frombuffer(i420.data, dtype=np.uint8)[:i420.width * i420.height]
    return plane.reshape(i420.height, i420.width).astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / max(float(np.mean((a - b) ** 2)), 1e-9)))


def _stills() -> list[rtc.VideoFrame]:
    return screen_frames(DEMO_FIXTURE / "screen.webm")[:3]


def test_a_still_holds_for_its_frames_and_decodes_to_itself() -> None:
    still = _stills()[2]
    segment = encode_still(still, FPS, HOLD_S)
    frames = segment.frames()
    assert len(frames) == round(FPS * HOLD_S)
    assert [key for _, key in frames] == [True] + [False] * (len(frames) - 1)
    pictures = _decoded([data for data, _ in frames])
    assert len(pictures) == len(frames)
    # every frame of the hold shows the same picture, and that picture is the still, sharp
    assert all(np.array_equal(pictures[0], picture) for picture in pictures)
    assert _psnr(pictures[0][:720].astype(np.float64), _luma(still)) > 40


async def _token(room: str, identity: str) -> str:
    return (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())


async def test_a_subscriber_on_livekit_sees_the_stills_in_turn(livekit: LiveKitServer) -> None:
    stills = _stills()
    segments: list[Segment] = [encode_still(still, FPS, 1.0) for still in stills]
    share = EncodedShare(segments, FPS)
    sender, viewer = rtc.Room(), rtc.Room()
    arrived: asyncio.Queue[rtc.Track] = asyncio.Queue()
    viewer.on("track_subscribed", lambda track, *_: arrived.put_nowait(track))
    try:
        await viewer.connect(livekit.ws_url, await _token("encoded", "viewer"))
        await sender.connect(livekit.ws_url, await _token("encoded", "sender"))
        track = rtc.LocalVideoTrack.create_video_track("screen", share.source)
        await sender.local_participant.publish_track(
            track, share.publish_options(rtc.TrackSource.SOURCE_SCREENSHARE))

        async def send() -> None:
            while True:
                share.send_next()
                await asyncio.sleep(1 / FPS)

        sending = asyncio.create_task(send())
        remote = await asyncio.wait_for(arrived.get(), 30)
        seen: list[np.ndarray] = []
        async with asyncio.timeout(30):
            async for event in rtc.VideoStream(remote, format=rtc.VideoBufferType.I420):
                seen.append(_luma(event.frame))
                if len(seen) >= 4 * len(stills) * FPS:
                    break
        sending.cancel()
    finally:
        await sender.disconnect()
        await viewer.disconnect()
    assert (seen[0].shape[1], seen[0].shape[0]) == (1280, 720)
    # each still was received, whole: some frame matches it closely
    for still in stills:
        assert max(_psnr(frame, _luma(still)) for frame in seen) > 40
    # the subscriber's first frame needed a keyframe, which the share sent (first, or asked)
    assert share.published > len(seen) / 2


def test_a_keyframe_request_restarts_the_current_still() -> None:
    segments = [Segment(b"k0", (b"d0", b"d0")), Segment(b"k1", (b"d1", b"d1"))]
    share = EncodedShare(segments, FPS)
    sent: list[bytes] = []
    asked = iter([False, False, True, False, False, False, False])
    share.source.capture_frame = lambda frame: sent.append(frame.data) or True  # type: ignore[method-assign]
    share.source.take_feedback = lambda: rtc.EncodedVideoSourceFeedback(  # type: ignore[method-assign]
        next(asked), None)
    for _ in range(7):
        share.send_next()
    assert sent == [b"k0", b"d0", b"k0", b"d0", b"d0", b"k1", b"d1"]
    assert share.keyframes_requested == 1
