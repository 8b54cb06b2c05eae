"""The processes `bench/load.py` starts besides LiveKit and the worker: the users, and the models.

Each users process drives its share of the users with the rtc SDK, as people would: the user's
app dispatches the agent, joins, shares a 1280x720 screen at 5 fps (the demo recording's
frames, one new frame a second), asks a question every `ask_every_s` seconds and waits for the
reply. A user's screen changes every `change_every_s` seconds, to the next second of the
recording. The share is sent as VP8 encoded once per process (`encoded`, the default: a real
user's encoder runs on their own machine, not on the worker's cores) or encoded live by each
user's libwebrtc (`raw`). What each user saw goes back to the coordinator as plain data. The
models are the
wire-format server, answering at once with a scripted reply, in a process of its own so that
neither the users nor the coordinator slow its answers down.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from livekit import rtc

from agent.rtc_events import rtc_logs_to_stderr
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from vision.video_file import iter_frames

from .encoded_share import EncodedShare, Segment, encode_share
from .livekit_harness import LiveKitServer, User

# different questions: a user who repeats one is taken to be unhappy with the answer, and the
# cascade starts one tier higher
QUESTIONS = (
    "What is on my screen right now?",
    "Is there an error anywhere on my screen?",
    "Which file am I editing?",
    "What did the last command print?",
    "Summarise what I am working on.",
    "What changed on screen since I last asked?",
)
ANSWER = ScriptedReply(text="[[confidence: 0.95]] (scripted) The editor shows the parser; "
                            "no error is visible.")
MEMORY_UPDATE = ScriptedReply(text=json.dumps({
    "facts": [{"key": "project", "text": "(scripted) The user works on a JSON parser."}],
    "summary": "(scripted) The user asked what is on screen."}))
REPLY_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 60.0


@dataclass
class Plan:
    """One users process's work: its users and how they behave. When each arrives and when
    they all leave (epoch seconds) follow once every users process is ready."""

    livekit_ws: str
    livekit_http: str
    agent_name: str
    video: str
    rooms: list[str]
    ask_every_s: float
    fps: float
    change_every_s: float
    seed: int
    # "encoded": each still encoded once per process and sent as it is (a user's own machine
    # encodes their share; bench/encoded_share.py); "raw": each user's libwebrtc encoder runs here
    publish: str = "encoded"


@dataclass
class UserResult:
    room: str
    joined: bool = False
    join_s: float | None = None  # from the dispatch request to the agent in the room
    asked: int = 0
    answered: int = 0
    round_trips_s: list[float] = field(default_factory=list)
    asked_at: list[float] = field(default_factory=list)  # epoch seconds of each question
    # each answered question's (asked, answer arrived) in epoch seconds, to match with the
    # worker's log (the same machine's clock)
    answered_at: list[tuple[float, float]] = field(default_factory=list)
    frames_published: int = 0
    error: str | None = None


def screen_frames(video: Path, every_s: float = 1.0) -> list[rtc.VideoFrame]:
    """One frame of the recording per `every_s` seconds, decoded once per process."""
    frames, next_t = [], 0.0
    for t, frame in iter_frames(video):
        if t >= next_t:
            frames.append(frame)
            next_t = t + every_s
    return frames


async def _sleep_until(epoch: float) -> None:
    await asyncio.sleep(max(0.0, epoch - time.time()))


async def _one_user(plan: Plan, index: int, arrive_at: float, leave_at: float,
                    frames: list[rtc.VideoFrame], segments: list[Segment],
                    rng: random.Random) -> UserResult:
    room = plan.rooms[index]
    result = UserResult(room)
    livekit = LiveKitServer(plan.livekit_ws, plan.livekit_http, Path())
    offset = rng.randrange(len(frames))  # users do not all show the same screen at once
    user = User(livekit, room, agent_name=plan.agent_name, metadata={"tenant": "load"},
                frames=frames[offset:] + frames[:offset], hold_s=plan.change_every_s)
    await _sleep_until(arrive_at)
    started = time.monotonic()
    try:
        await user.join(f"user-{room}")
        await user.wait_for_agent(JOIN_TIMEOUT_S)
    except Exception as exc:  # reported, not raised: the other users go on
        result.error = f"join: {exc!r}"
        await user.leave()
        return result
    result.joined, result.join_s = True, time.monotonic() - started
    try:
        if segments:
            share = EncodedShare(segments[offset:] + segments[:offset], plan.fps)
            await user.publish_encoded(rtc.TrackSource.SOURCE_SCREENSHARE, share, plan.fps)
        else:
            await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=plan.fps)
    except Exception as exc:  # LiveKit timed the publication out under load: reported
        result.error = f"publish: {exc!r}"
        await user.leave()
        return result
    next_ask = time.time() + rng.uniform(2.0, plan.ask_every_s)
    while next_ask < leave_at - REPLY_TIMEOUT_S / 3:
        await _sleep_until(next_ask)
        result.asked += 1
        result.asked_at.append(time.time())
        sent = time.monotonic()
        try:
            await user.say(QUESTIONS[(result.asked + offset) % len(QUESTIONS)])
        except Exception as exc:  # the rtc SDK could not send (its connection restarting on
            # saturated cores): asked and unanswered, reported, and the user goes on
            result.error = result.error or f"ask: {exc!r}"
            next_ask += plan.ask_every_s
            continue
        try:
            _, arrived = await user.next_reply(REPLY_TIMEOUT_S)
        except AssertionError:
            pass
        else:
            result.answered += 1
            result.round_trips_s.append(arrived - sent)
            result.answered_at.append((result.asked_at[-1],
                                       time.time() - (time.monotonic() - arrived)))
        next_ask += plan.ask_every_s
    await _sleep_until(leave_at)
    result.frames_published = user.frames_published
    await user.leave()
    return result


async def _run_users(plan: Plan, conn: Connection) -> None:
    frames = screen_frames(Path(plan.video))
    segments = (encode_share(frames, plan.fps, plan.change_every_s)
                if plan.publish == "encoded" else [])
    conn.send("ready")
    arrive_at, leave_at = await asyncio.to_thread(conn.recv)
    rng = random.Random(plan.seed)
    results = await asyncio.gather(*(
        _one_user(plan, i, arrive_at[i], leave_at, frames, segments, random.Random(rng.random()))
        for i in range(len(plan.rooms))))
    conn.send([asdict(r) for r in results])


def run_users(plan: Plan, conn: Connection) -> None:
    """A users process's entry point (multiprocessing). Its rtc library's log records stay in
    the library, as in the worker: clients in a browser do not pay for them."""
    rtc_logs_to_stderr()
    asyncio.run(_run_users(plan, conn))


def _reply(request: CapturedRequest) -> ScriptedReply:
    return MEMORY_UPDATE if request.purpose == "memory" else ANSWER


SERVICE_TIMES = "service times"  # asks the models process for its answers' times


async def _serve_models(conn: Connection) -> None:
    async with ScriptedModelServer(replies=_reply) as server:
        conn.send(server.base_url)
        while True:
            server.requests.clear()  # nobody reads them here; a soak must not grow on them
            if conn.poll():
                if conn.recv() != SERVICE_TIMES:
                    return
                conn.send([s.seconds for s in server.served if s.purpose != "memory"])
                server.served.clear()
            await asyncio.sleep(0.1)


def serve_models(conn: Connection) -> None:
    """The models process's entry point: serves until the coordinator sends anything but
    `SERVICE_TIMES`, which it answers with the seconds each answering request (memory updates
    left out) took in the server since it was last asked."""
    asyncio.run(_serve_models(conn))
