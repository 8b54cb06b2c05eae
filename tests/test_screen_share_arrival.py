"""A published screen share whose track never arrives is subscribed again, on a real LiveKit
server, and the session's summary counts it. The stalled subscription is made by joining
without auto-subscribe: the share is published and nothing subscribes to it, as when the server
never binds the track."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from livekit import api, rtc

from agent.pricing import BUNDLED_PRICES
from agent.session_record import recompute_summary
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer, User
from tests.synthetic_screen import flat_frame
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, ScreenWatcher
from vision.track_source import RESUBSCRIBE_TRIES, ScreenShareSubscriber

pytestmark = [pytest.mark.e2e, pytest.mark.realtime]


async def _agent_room(livekit: LiveKitServer, room: str, *, auto_subscribe: bool) -> rtc.Room:
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity("agent")
             .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
    agent = rtc.Room()
    await agent.connect(livekit.ws_url, token, rtc.RoomOptions(auto_subscribe=auto_subscribe))
    return agent


async def _until(condition: object, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_a_share_that_never_arrives_is_subscribed_again(
    livekit: LiveKitServer, caplog: pytest.LogCaptureFixture,
) -> None:
    user = User(livekit, "stalled-share", agent_name="none", metadata={},
                frames=[flat_frame(320, 240, 90), flat_frame(320, 240, 200)])
    await user.connect("user")
    agent = await _agent_room(livekit, "stalled-share", auto_subscribe=False)
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=lambda _decision: None)
    caplog.set_level(logging.WARNING, logger="sightline.vision")
    # 3 s: on a busy machine a subscription made again can take over a second to arrive, and
    # each one made again replaces the one still on its way
    subscriber = ScreenShareSubscriber(agent, "user", screen, resubscribe_after_s=3.0)
    try:
        await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
        await asyncio.sleep(0.5)
        assert screen.stats()["received"] == 0  # published, and nothing subscribed to it
        assert await _until(lambda: screen.stats()["received"] >= 3, 30.0)
        assert 1 <= screen.share_resubscribed <= RESUBSCRIBE_TRIES
        assert "has not arrived 3 s after it was published or subscribed" in caplog.text
    finally:
        await subscriber.aclose()
        await agent.disconnect()
        await user.leave()


async def test_a_share_that_arrives_is_left_alone(livekit: LiveKitServer) -> None:
    user = User(livekit, "arriving-share", agent_name="none", metadata={},
                frames=[flat_frame(320, 240, 90)])
    await user.connect("user")
    # auto-subscribe, as the worker's rooms do
    agent = await _agent_room(livekit, "arriving-share", auto_subscribe=True)
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=lambda _decision: None)
    subscriber = ScreenShareSubscriber(agent, "user", screen, resubscribe_after_s=1.0)
    try:
        await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
        assert await _until(lambda: screen.stats()["received"] >= 3, 20.0)
        await asyncio.sleep(1.5)  # past the arrival check
        assert screen.share_resubscribed == 0
    finally:
        await subscriber.aclose()
        await agent.disconnect()
        await user.leave()


async def test_a_share_made_again_goes_on_in_screen_time(livekit: LiveKitServer) -> None:
    """The user stops sharing and shares again: the new stream's capture times start anew, and
    its frames' screen times go on after the first share's (they started from 0 again)."""
    user = User(livekit, "shared-again", agent_name="none", metadata={},
                frames=[flat_frame(320, 240, 90), flat_frame(320, 240, 200)])
    await user.connect("user")
    agent = await _agent_room(livekit, "shared-again", auto_subscribe=True)
    decisions: list[FrameDecision] = []
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=decisions.append)
    subscriber = ScreenShareSubscriber(agent, "user", screen)

    async def share_until(decided: int) -> None:
        await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
        assert await _until(lambda: len(decisions) >= decided, 20.0)
        assert user._publisher is not None
        user._publisher.cancel()
        for publication in list(user.room.local_participant.track_publications.values()):
            await user.room.local_participant.unpublish_track(publication.sid)
        assert await _until(lambda: screen.freshest is None, 10.0)  # the share ended

    try:
        await share_until(3)
        await share_until(len(decisions) + 3)
        times = [decision.t for decision in decisions]
        assert times == sorted(set(times)), times
    finally:
        await subscriber.aclose()
        await agent.disconnect()
        await user.leave()


async def _share(user: User, width: int, height: int) -> tuple[str, asyncio.Task[None]]:
    """Publish a screen share of flat `width`x`height` frames at 5 fps beside the user's others;
    its publication's sid and the task that feeds it."""
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track(f"screen-{width}", source)
    publication = await user.room.local_participant.publish_track(track, rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_SCREENSHARE, simulcast=False))
    frame = flat_frame(width, height, 120)

    async def feed() -> None:
        while True:
            source.capture_frame(frame)
            await asyncio.sleep(0.2)

    return publication.sid, asyncio.create_task(feed())


async def test_of_two_shares_at_once_the_newest_alone_is_watched(livekit: LiveKitServer) -> None:
    """A user who shares a second screen beside the first: frames of both in turn would each be
    a change of screen. The session watches the newer alone, the first again once the newer
    ends, and a share set aside that ends leaves the watched one's screen as it was. The shares
    are told apart by their frames' widths."""
    user = User(livekit, "two-shares", agent_name="none", metadata={},
                frames=[flat_frame(320, 240, 90)])
    await user.connect("user")
    agent = await _agent_room(livekit, "two-shares", auto_subscribe=True)
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=lambda _decision: None)
    offered: list[int] = []  # the width of each frame the session analyses
    offer, clear = screen.offer, screen.clear
    cleared: list[int] = []  # how many frames had been offered at each clearing
    screen.offer = lambda t, frame: (offered.append(frame.width), offer(t, frame))[1]  # type: ignore[method-assign]
    screen.clear = lambda: (cleared.append(len(offered)), clear())[0]  # type: ignore[method-assign]
    subscriber = ScreenShareSubscriber(agent, "user", screen)
    feeds: list[asyncio.Task[None]] = []

    async def unpublish(sid: str, feed: asyncio.Task[None]) -> None:
        feed.cancel()
        await user.room.local_participant.unpublish_track(sid)
        assert await _until(
            lambda: sid not in agent.remote_participants["user"].track_publications, 10.0)
        await asyncio.sleep(0.5)  # the agent's side handles the unsubscription

    try:
        first, first_feed = await _share(user, 320, 240)
        feeds.append(first_feed)
        assert await _until(lambda: 320 in offered, 20.0)
        second, second_feed = await _share(user, 640, 360)
        feeds.append(second_feed)
        assert await _until(lambda: 640 in offered, 20.0)
        switched = offered.index(640)
        await asyncio.sleep(2.0)
        assert set(offered[switched:]) == {640}, offered[switched:]
        assert len(cleared) == 1  # at the switch: the first screen is not the one shown now

        await unpublish(second, second_feed)
        assert await _until(lambda: offered[-1] == 320, 10.0)  # the first share again
        feeds.append((await _share(user, 480, 272))[1])
        assert await _until(lambda: offered[-1] == 480, 20.0)
        before = len(cleared)
        await unpublish(first, first_feed)  # the share set aside ends
        assert len(cleared) == before and screen.freshest is not None
        now = len(offered)
        assert await _until(lambda: len(offered) >= now + 3, 10.0)
        assert set(offered[offered.index(480):]) == {480}
    finally:
        for feed in feeds:
            feed.cancel()
        await subscriber.aclose()
        await agent.disconnect()
        await user.leave()


def test_the_session_summary_counts_the_subscriptions_again(tmp_path: Path) -> None:
    events = [{"kind": "frame_count", "ts": 1.0,
               "detail": {"received": 0, "failed": 0, "resubscribed": 2}}]
    summary = recompute_summary(events, session_id="s", tenant="t", source="live",
                                prices=BUNDLED_PRICES, cost_log=tmp_path / "s.jsonl")
    assert summary["frames"]["share_resubscribed"] == 2
    events[0]["detail"]["resubscribed"] = 0  # type: ignore[index]
    quiet = recompute_summary(events, session_id="s", tenant="t", source="live",
                              prices=BUNDLED_PRICES, cost_log=tmp_path / "s.jsonl")
    assert "share_resubscribed" not in quiet["frames"]
