"""Many sessions per worker and a fleet of two, on a real LiveKit server.

Two `sightline start` workers (tests/fault_worker.py: the real CLI, with faults injected by
room name) register with one LiveKit server whose webhooks reach both. Users are rtc SDK
clients sharing a loop of still screens; the models are the local wire-format server, scripted.
In order: one worker takes a burst of six dispatches; two workers share a burst; a session
whose frame analysis raises and one that spins forever leave the others answering (the
watchdog ends the stuck one, and its user gets a new agent); a worker killed with SIGKILL
mid-session is replaced by the other, which recalls the conversation from Postgres and
analyses the exchange whose memory call the killed one never heard back from; the LiveKit
server killed under a session and started again, the session rides it out, and killed again
for good, the session ends; a user who
comes while the fleet is full gets an agent once a worker has room, and one who comes back
after their session ended gets an agent again; a worker that shuts down while asking LiveKit
again hands the room to another; a refusal LiveKit will not change is one line, not retried;
a bystander who stays after the user left gets no agent, the user coming back gets one that
serves them, a newcomer to a room its user left gets one while that session still closes; a page
reloaded as its session closes is the user's coming back, their exchange analysed once; a session
records its user leaving and coming back; an agent that joins after its job was
dispatched anew is removed, one its claimant found and kept is not; a claim committed as its
worker shuts down is handed back; the user on a new device beside a bystander is named in the
dispatch made again; a burst of webhooks opens one pool; Postgres away keeps a joining agent
with one warning.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from conftest import answering, fresh_database
from google.protobuf.json_format import MessageToJson
from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType
from livekit.protocol import models as lk_models
from PIL import Image, ImageDraw
from test_e2e_livekit import sample, scrape
from worker_fixture import started_worker, worker_env

from agent.cli_costs import format_summary
from agent.config import Settings
from agent.redispatch import AGENT_NAME_ATTRIBUTE, WEBHOOK_PATH, Redispatcher
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    User,
    Worker,
    free_port,
    run_livekit_server,
)
from memory.db import Database
from memory.redispatches import Claim, claim, mark_dispatched
from memory.store import Store

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
AGENT_NAME = "sightline-fleet"
CAPACITY = 6  # sessions per worker
LOST_SESSION_CLOSE_S = 10  # a lost session's record is closed this long after the re-dispatch
ANSWER = "[[confidence: 0.95]] (scripted) The editor shows the parser."
MEMORY_UPDATE = '{"facts": [], "summary": "(scripted) The user asked about the screen."}'


def still_screens(count: int = 3) -> list[rtc.VideoFrame]:
    """A few different 1280x720 screens to loop (cheap to publish: no video decoding)."""
    frames = []
    for i in range(count):
        image = Image.new("RGBA", (1280, 720), (250, 250, 250, 255))
        ImageDraw.Draw(image).text((40, 40 + 60 * i), f"def parse_{i}(text): ...",
                                   fill=(20, 20, 20, 255))
        frames.append(rtc.VideoFrame(1280, 720, rtc.VideoBufferType.RGBA, image.tobytes()))
    return frames


SCREENS = still_screens()


MID_ANALYSIS = "my release is called"  # its first memory call is out when the worker dies
RELOAD_ANALYSIS = "my reload marker is"  # ... outlasts its user's leaving (the page reloaded)
NEWCOMER_ANALYSIS = "my newcomer marker is"  # ... outlasts its user's leaving (a newcomer)
# the first memory call about an exchange saying each marker is answered this late
SLOW_ANALYSIS_S = {MID_ANALYSIS: 20.0, RELOAD_ANALYSIS: 4.0, NEWCOMER_ANALYSIS: 6.0}
_thinking: dict[str, CapturedRequest] = {}  # by marker: the slow call, once it arrived


def _reply(request: CapturedRequest) -> ScriptedReply:
    if request.purpose != "memory":
        return ScriptedReply(text=ANSWER)
    for marker, delay_s in SLOW_ANALYSIS_S.items():
        if marker in request.text and marker not in _thinking:
            _thinking[marker] = request
            return ScriptedReply(text=MEMORY_UPDATE, delay_s=delay_s)
    return ScriptedReply(text=MEMORY_UPDATE)


async def thinking(marker: str, timeout_s: float = 30) -> None:
    """Wait until the memory model has the slow call about `marker`'s exchange."""
    deadline = time.monotonic() + timeout_s
    while marker not in _thinking:
        assert time.monotonic() < deadline, "the session never asked the memory model"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def webhook_ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory,
            webhook_ports: tuple[int, int]) -> Iterator[LiveKitServer]:
    urls = [f"http://127.0.0.1:{port}{WEBHOOK_PATH}" for port in webhook_ports]
    with run_livekit_server(tmp_path_factory.mktemp("livekit"), webhook_urls=urls) as server:
        yield server


@pytest.fixture(scope="module")
async def models() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(replies=_reply) as server:
        yield server


@pytest.fixture(scope="module")
async def fleet_database_url(postgres_admin_url: str) -> str:
    return await fresh_database(postgres_admin_url, "fleet")


class Fleet:
    """The module's workers, started on demand: `a` alone first, then `b` too."""

    def __init__(self, livekit: LiveKitServer, models: ScriptedModelServer, database_url: str,
                 workdir: Path, webhook_ports: tuple[int, int]) -> None:
        self._livekit, self._models, self._database_url = livekit, models, database_url
        self._workdir, self._webhook_ports = workdir, webhook_ports
        self.workers: dict[str, Worker] = {}

    async def start(self, name: str, capacity: int = CAPACITY) -> Worker:
        """Worker `name`, started unless it was: on a webhook port no running worker has, with
        the settings of the faults these tests inject (tests/fault_worker.py)."""
        if name not in self.workers:
            taken = {w.env["SIGHTLINE_WEBHOOK_PORT"] for w in self.running()}
            port = next(p for p in self._webhook_ports if str(p) not in taken)
            env = worker_env(
                self._livekit, self._models, agent_name=AGENT_NAME,
                database_url=self._database_url, data_dir=self._workdir / f"data-{name}",
                SIGHTLINE_WEBHOOK_PORT=str(port), SIGHTLINE_MAX_SESSIONS=str(capacity),
                SIGHTLINE_SESSION_STALL_S="3",
                SIGHTLINE_SCREEN_TEXT="off",  # OCR is not what these tests are about
                SIGHTLINE_FAULT_DIR=str(self._workdir),
                SIGHTLINE_LOST_SESSION_CLOSE_S=str(LOST_SESSION_CLOSE_S))
            self.workers[name] = await started_worker(
                self._workdir, env, name=f"worker-{name}",
                launcher=(sys.executable, str(REPO / "tests" / "fault_worker.py")))
        return self.workers[name]

    def running(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.proc.poll() is None]

    async def alone(self, name: str) -> Worker:
        """One worker of the fleet, of `CAPACITY`, running alone: the one that runs, when just
        one such does (a start is seconds of waiting), else `name`, started once the others
        stopped. Its log may hold earlier tests' sessions: only a room's own lines count."""
        running = self.running()
        if len(running) == 1 and running[0].env["SIGHTLINE_MAX_SESSIONS"] == str(CAPACITY):
            return running[0]
        await self.stop()
        return await self.start(name)

    def hosting(self, room: str) -> list[str]:
        """The workers whose log shows a session started in `room`."""
        return [name for name, worker in self.workers.items()
                if f" room={room}," in worker.log_text()]

    async def settled(self, timeout_s: float = 60) -> None:
        """Wait until every session started has ended (users of the last test have left, and
        their sessions close in the background)."""
        deadline = time.monotonic() + timeout_s
        for worker in self.workers.values():
            while (worker.proc.poll() is None
                   and worker.log_text().count(" started (tenant=")
                   > len(re.findall(r"session \S+ ended \(", worker.log_text()))):
                assert time.monotonic() < deadline, "sessions of the last test never ended"
                await asyncio.sleep(0.3)

    async def logged(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        """The first match of `pattern` in the workers' logs, once it is there."""
        deadline = time.monotonic() + timeout_s
        while not (found := re.search(pattern, "".join(
                w.log_text() for w in self.workers.values()))):
            assert time.monotonic() < deadline, f"no {pattern!r} in the workers' logs"
            await asyncio.sleep(0.3)
        return found

    async def registered_again(self, timeout_s: float = 60) -> None:
        """Once the LiveKit server is back after it crashed: each running worker registered
        with it again (livekit-agents retries by itself, 10 s apart at most). A worker that gave
        up, or has not registered by `timeout_s`, is killed and forgotten: `start` starts it
        anew."""
        deadline = time.monotonic() + timeout_s

        def back(worker: Worker) -> bool:
            log = worker.log_text()
            return log.rfind("registered worker") > log.rfind("failed to connect to livekit")

        for name, worker in list(self.workers.items()):
            while worker.proc.poll() is None and not back(worker):
                if time.monotonic() > deadline:
                    worker.proc.kill()
                    worker.proc.wait()
                await asyncio.sleep(0.3)
            if worker.proc.poll() is not None:
                del self.workers[name]

    async def stop(self) -> None:
        """SIGTERM, and wait off the loop: the model server on this loop answers the
        sessions' last calls while the workers drain."""
        await asyncio.gather(*(worker.astop() for worker in self.running()))


@pytest.fixture(scope="module")
async def fleet(livekit: LiveKitServer, models: ScriptedModelServer, fleet_database_url: str,
                tmp_path_factory: pytest.TempPathFactory,
                webhook_ports: tuple[int, int]) -> AsyncIterator[Fleet]:
    fleet = Fleet(livekit, models, fleet_database_url, tmp_path_factory.mktemp("fleet"),
                  webhook_ports)
    yield fleet
    await fleet.stop()


@pytest.fixture(autouse=True)
async def fleet_registered(livekit_restarted: bool, fleet: Fleet) -> None:
    """After the module's LiveKit server was started again (conftest.py), a test begins once
    the fleet's workers are registered with it."""
    if livekit_restarted:
        await fleet.registered_again()


def new_user(livekit: LiveKitServer, room: str) -> User:
    return User(livekit, room, agent_name=AGENT_NAME, metadata={"tenant": "fleet"},
                frames=SCREENS, hold_s=2.0)


async def joined_and_sharing(user: User, identity: str) -> rtc.RemoteParticipant:
    await user.join(identity)
    agent = await user.wait_for_agent(timeout_s=60)
    await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=2)
    return agent


async def asks_and_is_answered(user: User, question: str) -> None:
    await user.say(question)
    assert await user.wait_for_reply(timeout_s=60) == ANSWER.split("]] ", 1)[1]


async def leave_all(users: list[User]) -> None:
    await asyncio.gather(*(user.leave() for user in users), return_exceptions=True)


def dispatch_failures(livekit: LiveKitServer, fleet: Fleet) -> str:
    """The workers' refusals and LiveKit's failed assignments: why a dispatched job has no
    agent (LiveKit drops a job that every worker refused)."""
    lines = [line for worker in fleet.workers.values() for line in worker.log_text().splitlines()
             if "refused the job" in line]
    lines += [line for line in livekit.log_path.read_text(errors="replace").splitlines()
              if "failed to assign job" in line or "no worker available" in line]
    return "\n".join(lines) or "(none logged)"


async def test_one_worker_takes_a_burst_of_six(livekit: LiveKitServer, fleet: Fleet) -> None:
    worker = await fleet.start("a")
    users = [new_user(livekit, f"fleet-burst-{i}") for i in range(CAPACITY)]
    try:
        await asyncio.gather(*(user.dispatch() for user in users))  # all within a moment
        await asyncio.gather(*(user.connect(f"burst-{i}") for i, user in enumerate(users)))
        try:
            await asyncio.gather(*(user.wait_for_agent(timeout_s=60) for user in users))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; refusals and failed assignments:\n"
                                 f"{dispatch_failures(livekit, fleet)}") from exc
        await asyncio.gather(*(user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=2)
                               for user in users))
        await asyncio.gather(*(asks_and_is_answered(user, "What is on my screen?")
                               for user in users))
    finally:
        await leave_all(users)
    assert all(fleet.hosting(user.room_name) == ["a"] for user in users)
    assert worker.proc.poll() is None


async def test_two_workers_share_a_burst(livekit: LiveKitServer, fleet: Fleet) -> None:
    await fleet.start("a")
    await fleet.start("b")
    await fleet.settled()
    users = [new_user(livekit, f"fleet-shared-{i}") for i in range(CAPACITY + 3)]
    try:
        await asyncio.gather(*(user.dispatch() for user in users))
        await asyncio.gather(*(user.connect(f"shared-{i}") for i, user in enumerate(users)))
        await asyncio.gather(*(user.wait_for_agent(timeout_s=60) for user in users))
        await asyncio.gather(*(asks_and_is_answered(user, "Anything new?") for user in users))
    finally:
        await leave_all(users)
    where = [fleet.hosting(user.room_name) for user in users]
    assert all(len(hosts) == 1 for hosts in where), where
    per_worker = {name: sum(hosts == [name] for hosts in where) for name in ("a", "b")}
    assert per_worker["a"] <= CAPACITY and per_worker["b"] <= CAPACITY, per_worker
    assert per_worker["b"] >= 3, f"the second worker took its share: {per_worker}"


async def test_a_failing_and_a_stuck_session_leave_the_others_answering(
    livekit: LiveKitServer, fleet: Fleet,
) -> None:
    await fleet.start("a")
    await fleet.start("b")
    await fleet.settled()
    crash, stuck = new_user(livekit, "fleet-crash"), new_user(livekit, "fleet-stuck")
    healthy = [new_user(livekit, f"fleet-healthy-{i}") for i in range(2)]
    everyone = [crash, stuck, *healthy]
    try:
        await asyncio.gather(*(joined_and_sharing(user, f"faults-{i}")
                               for i, user in enumerate(everyone)))
        stuck_agent = (await stuck.wait_for_agent()).identity
        await fleet.logged(r"a frame could not be analysed \(RuntimeError\(.{1,2}injected fault")
        ended = await fleet.logged(r"session (\S+) \(room fleet-stuck\) has not run for \d+ s "
                                   r"\(its event loop is blocked at .*faulty_offer")
        await fleet.logged(rf"session {ended[1]} ended \(watchdog: the session stopped running")
        for _ in range(2):  # the failing session and the others answer on
            await asyncio.gather(*(asks_and_is_answered(user, "Still there?")
                                   for user in [crash, *healthy]))
        # the stuck session's agent left while its user stayed: a new one is dispatched
        deadline = time.monotonic() + 60
        while (await stuck.wait_for_agent()).identity == stuck_agent:
            assert time.monotonic() < deadline, "no new agent for the stuck session's user"
            await asyncio.sleep(0.5)
        await asks_and_is_answered(stuck, "Are you back?")
    finally:
        await leave_all(everyone)
    assert all(w.proc.poll() is None for w in fleet.workers.values())


async def _stored(database_url: str, text: str, timeout_s: float = 30,
                  query: str = "SELECT count(*) FROM messages WHERE content = $1") -> Any:
    """Wait until `query` counts `text` in Postgres (or finds what it selects: returned)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while not (found := await conn.fetchval(query, text)):
            assert time.monotonic() < deadline, f"{text!r} never reached Postgres"
            await asyncio.sleep(0.3)
    finally:
        await conn.close()
    return found


BACKLOG_CLAIMED = ("SELECT count(*) FROM memory_backlog WHERE user_text = $1"
                   " AND claimed_by = session_id AND attempts = 0")
BACKLOG_GONE = "SELECT count(*) = 0 FROM memory_backlog WHERE user_text = $1"
CLOSED_AS_LOST = (
    "SELECT count(*) FROM sessions s WHERE id = $1 AND summary->>'outcome' = 'abandoned'"
    " AND summary->>'error' LIKE '%lost%' AND total_cost_usd > 0 AND total_cost_usd ="
    " (SELECT sum(cost_usd) FROM cost_events WHERE session_id = s.id)")


async def test_a_killed_worker_is_replaced_and_the_conversation_recalled(
    livekit: LiveKitServer, fleet: Fleet, models: ScriptedModelServer, fleet_database_url: str,
) -> None:
    await fleet.start("a")
    await fleet.start("b")
    await fleet.settled()
    user = new_user(livekit, "fleet-failover")
    said = f"Remember that {MID_ANALYSIS} Bluebird-7."
    try:
        first_agent = (await joined_and_sharing(user, "failover-user")).identity
        await asks_and_is_answered(user, said)
        await _stored(fleet_database_url, said)
        await _stored(fleet_database_url, said, query=BACKLOG_CLAIMED)
        await thinking(MID_ANALYSIS)  # its memory call reached the model, which answers in 20 s
        [lost] = fleet.hosting(user.room_name)
        [lost_session] = re.findall(rf"session (\S+) started \(tenant=fleet user=failover-user "
                                    rf"room={user.room_name},", fleet.workers[lost].log_text())
        fleet.workers[lost].proc.send_signal(signal.SIGKILL)

        deadline = time.monotonic() + 90
        while (await user.wait_for_agent()).identity == first_agent:
            assert time.monotonic() < deadline, "LiveKit never got a new agent to the room"
            await asyncio.sleep(0.5)
        seen = len(models.requests)
        await asks_and_is_answered(user, "What is my release called?")
        # the new session analyses what the killed one had not, in the background, while the
        # user stays: the row goes once it has
        await _stored(fleet_database_url, said, query=BACKLOG_GONE)
    finally:
        await leave_all([user])
    assert sorted(fleet.hosting(user.room_name)) == ["a", "b"], "a session on each, in turn"
    asked = [r for r in models.requests[seen:] if r.purpose == "answer"]
    assert asked and said in asked[0].text, "the new session carries what the user said before"
    survivor = fleet.workers["b" if lost == "a" else "a"]
    assert "dispatched it again" in survivor.log_text()
    # the exchange whose memory call the killed worker never heard back from was handed to
    # the new session, which analysed it
    assert "exchanges the lost session(s)" in survivor.log_text()
    memory_calls = [r for r in models.requests if r.purpose == "memory" and said in r.text]
    assert len(memory_calls) == 2, "the new session asked about the exchange the killed one had"
    # the killed session's record, which its worker could not close, is closed by the survivor
    # with its cost from the events that reached Postgres
    await _stored(fleet_database_url, lost_session, query=CLOSED_AS_LOST,
                  timeout_s=LOST_SESSION_CLOSE_S + 30)
    assert f"closed the record of session {lost_session} of room {user.room_name}" in (
        survivor.log_text())


SESSION_CLOSED = (
    "SELECT summary FROM sessions s WHERE id = $1 AND ended_at IS NOT NULL"
    " AND summary->>'outcome' = 'completed' AND total_cost_usd > 0 AND total_cost_usd ="
    " (SELECT sum(cost_usd) FROM cost_events WHERE session_id = s.id)")


async def test_a_session_rides_out_its_livekit_server_crashing_and_ends_when_it_stays_down(
    livekit: LiveKitServer, fleet: Fleet, fleet_database_url: str,
) -> None:
    """The LiveKit server dies mid-session (SIGKILL, as its panic ended it once here) and is
    started again: LiveKit's SDK reconnects the session, which answers its user again. It dies
    again and stays down: the SDK gives up and the session ends, its record closed. Both
    outages are on the record; the worker registers again and takes a new user."""
    worker = await fleet.alone("a")
    await fleet.settled()
    user = new_user(livekit, "fleet-restart")
    assert livekit.process is not None
    try:
        agent = (await joined_and_sharing(user, "restart-user")).identity
        await asks_and_is_answered(user, "What does the editor show?")
        [session] = re.findall(r"session (\S+) started \(tenant=fleet user=restart-user ",
                               worker.log_text())
        livekit.process.crash()
        await asyncio.sleep(2)  # the worker and the session see it gone, and retry
        await asyncio.to_thread(livekit.process.start)
        await fleet.registered_again()
        assert worker in fleet.workers.values(), "the worker registered again by itself"
        await fleet.logged(rf"session {session} is connected to LiveKit again after")
        assert (await user.wait_for_agent()).identity == agent, "the same session, back"
        await asks_and_is_answered(user, "And now?")

        livekit.process.crash()
        await fleet.logged(rf"session {session} ended \(room disconnected\)", timeout_s=90)
        await asyncio.to_thread(livekit.process.start)
        await fleet.registered_again()
    finally:
        await leave_all([user])
    newcomer = new_user(livekit, "fleet-restart-new")
    try:
        await joined_and_sharing(newcomer, "restart-newcomer")
        await asks_and_is_answered(newcomer, "Is anyone there?")
    finally:
        await leave_all([newcomer])
    log = worker.log_text()
    assert log.count(f"session {session} lost its connection to LiveKit "
                     f"(room {user.room_name})") == 2
    assert "could not publish" not in log  # its last messages, to a room it cannot reach
    recorded = await _stored(fleet_database_url, session, query=SESSION_CLOSED)
    assert sample(await scrape(worker), "sightline_livekit_connection_lost_total",
                  tenant="fleet") >= 2
    summary = json.loads(recorded)
    livekit_seen = summary["livekit"]
    assert (livekit_seen["lost"], livekit_seen["back"]) == (2, 1)
    assert livekit_seen["offline_s"] >= 2  # the first outage lasted that long at least
    assert (f"LiveKit: connection lost 2 times, {livekit_seen['offline_s']:.1f} s offline in "
            "all; still reconnecting when the session ended\n") in format_summary(summary)


async def test_a_user_who_comes_while_the_fleet_is_full_gets_an_agent_once_there_is_room(
    livekit: LiveKitServer, fleet: Fleet,
) -> None:
    """LiveKit drops a dispatch no worker has room for; the fleet dispatches it again once
    one has."""
    await fleet.stop()
    solo = await fleet.start("solo", capacity=1)
    first, waiting = new_user(livekit, "fleet-full-first"), new_user(livekit, "fleet-full-wait")
    try:
        await first.dispatch()
        await first.connect("full-first")
        await first.wait_for_agent(timeout_s=60)
        await waiting.dispatch()
        await waiting.connect("full-waiting")
        deadline = time.monotonic() + 30
        while not re.search(rf"no worker available to handle job.*{waiting.room_name}\b",
                            livekit.log_path.read_text(errors="replace")):
            assert time.monotonic() < deadline, "LiveKit placed the second user's agent"
            await asyncio.sleep(0.3)
        assert not any(p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                       for p in waiting.room.remote_participants.values())
        await leave_all([first])  # its session ends: the worker has room again
        await waiting.wait_for_agent(timeout_s=90)
        await asks_and_is_answered(waiting, "Is anyone there?")
    finally:
        await leave_all([first, waiting])
    assert (f"no worker had room for the agent of room {waiting.room_name}, where full-waiting "
            "waits: dispatched it again") in solo.log_text()
    assert sample(await scrape(solo), "sightline_redispatches_total", reason="unplaced") >= 1


async def room_sid(livekit: LiveKitServer, room: str) -> str:
    """The id of `room` as it is now: the claims and webhooks of a room name it by this."""
    async with livekit.client() as lk:
        [listed] = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
    return listed.sid


async def open_room(livekit: LiveKitServer, room: str) -> None:
    """Create `room` to stay open for minutes once its last participant left (LiveKit's
    default is 20 s), as an app whose users come back to their room would."""
    async with livekit.client() as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room, departure_timeout=300))


async def emptied(livekit: LiveKitServer, room: str, timeout_s: float = 30) -> None:
    """Wait until `room` (still open) has no participant: its agent left too."""
    deadline = time.monotonic() + timeout_s
    async with livekit.client() as lk:
        while (await lk.room.list_participants(api.ListParticipantsRequest(room=room))
               ).participants:
            assert time.monotonic() < deadline, f"{room} still has participants"
            await asyncio.sleep(0.3)


async def test_a_user_who_comes_back_after_their_session_ended_gets_an_agent(
    livekit: LiveKitServer, fleet: Fleet, fleet_database_url: str,
) -> None:
    """A session ends when its user leaves, and LiveKit runs a dispatch's job once (it lists
    the job as running long after its agent left): a user who comes back to the room while it
    is still open gets an agent only because the fleet dispatches it anew, claimed as their
    coming back (`rejoin`), not as a lost agent's restart."""
    worker = await fleet.alone("rejoin")
    room = "fleet-rejoin"
    await open_room(livekit, room)
    first = new_user(livekit, room)
    try:
        first_agent = (await joined_and_sharing(first, "rejoin-user")).identity
        await asks_and_is_answered(first, "What is on my screen?")
    finally:
        await leave_all([first])
    await fleet.settled()
    await emptied(livekit, room)
    back = new_user(livekit, room)
    try:
        await back.connect("rejoin-user")
        second_agent = (await back.wait_for_agent(timeout_s=90)).identity
        assert second_agent != first_agent
        await asks_and_is_answered(back, "Are you back?")
        sid = await room_sid(livekit, room)
    finally:
        await leave_all([back])
    assert await claims(fleet_database_url, sid) == [(first_agent, "rejoin")]
    # each session records the agent that served it: by it the fleet knew the first had gone
    conn = await asyncpg.connect(fleet_database_url)
    try:
        assert [r["agent"] for r in await conn.fetch(
            "SELECT agent FROM sessions WHERE room = $1 ORDER BY started_at", room)] == [
            first_agent, second_agent]
    finally:
        await conn.close()
    assert (f"rejoin-user waits in room {room}, whose agent {first_agent} is gone (its session "
            "ended): dispatched it again") in worker.log_text()
    assert len(re.findall(rf"started \(tenant=fleet user=rejoin-user room={room},",
                          worker.log_text())) == 2


class LiveKitProxy:
    """The real LiveKit server's API behind a proxy that answers each `CreateDispatch` as
    `answers` says: `unavailable`, a 503 (LiveKit restarting); `refused`, the call passed on
    with a token the server does not take (its own 401, as for a key that may not dispatch
    agents); `None`, passed on as it is. `asked` is the methods asked, in order."""

    def __init__(self, livekit: LiveKitServer, answers: Iterator[str | None]) -> None:
        self._livekit, self._answers = livekit, answers
        self.asked: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        method = request.path.rsplit("/", 1)[-1]
        self.asked.append(method)
        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type")}
        answer = next(self._answers) if method == "CreateDispatch" else None
        if answer == "unavailable":
            return web.json_response({"code": "unavailable", "msg": "livekit restarting"},
                                     status=503)
        if answer == "refused":
            headers["Authorization"] = "Bearer not-a-token-of-this-server"
        async with aiohttp.ClientSession() as session, session.post(
                self._livekit.http_url + request.path, data=await request.read(),
                headers=headers) as passed:
            return web.Response(status=passed.status, body=await passed.read(),
                                content_type=passed.content_type)


def redispatcher(settings: Settings, database_url: str, livekit_url: str, agent_name: str,
                 webhook_port: int = 0) -> Redispatcher:
    """A worker's redispatcher, in this process."""
    return Redispatcher(settings.with_overrides(
        livekit_url=livekit_url, livekit_api_key=API_KEY, livekit_api_secret=API_SECRET,
        agent_name=agent_name, lost_session_close_s=0.0, webhook_port=webhook_port),
        database_url)


async def agent_left(port: int, room: str, sid: str, identity: str) -> None:
    """LiveKit's webhook, signed as it signs them: the agent `identity` left `room`."""
    body = MessageToJson(api.WebhookEvent(
        event="participant_left", room=lk_models.Room(name=room, sid=sid),
        participant=lk_models.ParticipantInfo(
            identity=identity, kind=lk_models.ParticipantInfo.Kind.AGENT,
            attributes={AGENT_NAME_ATTRIBUTE: AGENT_NAME})))
    token = api.AccessToken(API_KEY, API_SECRET).with_sha256(
        base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()).to_jwt()
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}{WEBHOOK_PATH}", data=body,
            headers={"Authorization": token}) as answer:
        assert answer.status == 200, await answer.text()


async def claims(database_url: str, sid: str) -> list[tuple[str, str]]:
    """The re-dispatch claims on the room `sid` (`memory/redispatches.py`)."""
    conn = await asyncpg.connect(database_url)
    try:
        return [(r["lost_identity"], r["reason"]) for r in await conn.fetch(
            "SELECT lost_identity, reason FROM redispatches WHERE room_sid = $1 ORDER BY at",
            sid)]
    finally:
        await conn.close()


async def test_a_worker_that_shuts_down_while_asking_again_hands_the_room_to_another(
    livekit: LiveKitServer, fleet: Fleet, settings: Settings, fleet_database_url: str,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A room's agent is gone while its user is there; workers A and B hear it. A claims it,
    but LiveKit answers A 503 and A asks again, keeping its claim; B finds it taken and
    watches the room. A shuts down meanwhile: it hands its claim back, and B claims it at its
    next look and dispatches the agent, which a worker of the fleet takes. (The user had left
    that agent's session, as it recorded: the claim is their coming back, `rejoin`.)"""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 0.2)
    monkeypatch.setattr("agent.redispatch.UNPLACED_MAX_WAIT_S", 1.0)
    monkeypatch.setattr("agent.redispatch.AGENT_JOIN_S", 1.0)
    await fleet.alone("handover-first")
    room = "fleet-handover"
    await open_room(livekit, room)
    user = new_user(livekit, room)
    try:
        await user.join("handover-user")
        first_agent = (await user.wait_for_agent(timeout_s=60)).identity
    finally:
        await leave_all([user])
    await fleet.settled()
    await fleet.stop()  # no worker of the fleet hears what follows
    await emptied(livekit, room)
    user = new_user(livekit, room)
    await user.connect("handover-user")
    sid = await room_sid(livekit, room)
    to_a = LiveKitProxy(livekit, itertools.repeat("unavailable"))
    to_b = LiveKitProxy(livekit, itertools.repeat(None))
    a_port, b_port = free_port(), free_port()
    async with answering(to_a.handle) as a_url, answering(to_b.handle) as b_url:
        a = redispatcher(settings, fleet_database_url, a_url, AGENT_NAME, a_port)
        b = redispatcher(settings, fleet_database_url, b_url, AGENT_NAME, b_port)
        try:
            for worker in (a, b):
                await worker.start()
            await agent_left(a_port, room, sid, first_agent)
            deadline = time.monotonic() + 30
            while to_a.asked.count("CreateDispatch") < 2:  # A asks again
                assert time.monotonic() < deadline, to_a.asked
                await asyncio.sleep(0.1)
            await agent_left(b_port, room, sid, first_agent)
            while to_b.asked.count("ListDispatch") < 2:  # B's recovery, then a look
                assert time.monotonic() < deadline, to_b.asked
                await asyncio.sleep(0.1)
            assert await claims(fleet_database_url, sid) == [(first_agent, "rejoin")]
            await fleet.start("handover-serving")
            assert "CreateDispatch" not in to_b.asked
            assert not any(p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                           for p in user.room.remote_participants.values())
            await a.aclose()
            assert (await user.wait_for_agent(timeout_s=60)).identity != first_agent
            await asks_and_is_answered(user, "Is anyone there?")
        finally:
            await leave_all([user])
            await a.aclose()
            await b.aclose()
    assert to_b.asked.count("CreateDispatch") == 1
    assert await claims(fleet_database_url, sid) == [(first_agent, "rejoin")]
    assert (f"handover-user waits in room {room}, whose agent {first_agent} is gone (its "
            "session ended): dispatched it again") in caplog.messages


REFUSED_AGENT = "sightline-refused"  # no worker serves it: its dispatch stays without a job


@pytest.mark.parametrize("work", ["lost", "unplaced"])
async def test_a_refusal_that_asking_again_cannot_change_is_one_line_and_no_more_asking(
    livekit: LiveKitServer, settings: Settings, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, work: str,
) -> None:
    """LiveKit answers a worker's dispatch with a 503 (restarting: asked again), then refuses
    it with a 401, which asking again does not change: one line says so and why, the worker
    asks no more, and hands its claim back (a lost agent's claimant kept it over the 503)."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 0.05)
    monkeypatch.setattr("agent.redispatch.DISPATCH_SETTLE_S", 0.2)
    room = f"fleet-refused-{work}"
    user = User(livekit, room, agent_name=REFUSED_AGENT, metadata={"tenant": "fleet"},
                frames=SCREENS)
    refusing = LiveKitProxy(livekit, itertools.chain(["unavailable"],
                                                     itertools.repeat("refused")))
    try:
        await user.join("refused-user")  # a dispatch no worker takes
        sid = await room_sid(livekit, room)
        async with answering(refusing.handle) as proxy_url:
            worker = redispatcher(settings, settings.database_url or "", proxy_url,
                                  REFUSED_AGENT)
            try:
                async with asyncio.timeout(30):  # it would ask for ever on a bug
                    if work == "lost":
                        assert await worker.recover(room, sid, "agent-AJ_gone") is False
                    else:
                        await worker.place_when_free(room, sid, rejoin=True)
            finally:
                await worker.aclose()
        async with livekit.client() as lk:
            kept = await lk.agent_dispatch.list_dispatch(room_name=room)
    finally:
        await leave_all([user])
    assert refusing.asked.count("CreateDispatch") == 2
    assert len([d for d in kept if d.agent_name == REFUSED_AGENT]) == 1  # nor deleted
    assert await claims(settings.database_url or "", sid) == []
    [refusal] = [m for m in caplog.messages if m.startswith("LiveKit refused")]
    assert f"room {room}" in refusal and "unknown, HTTP 401 (LIVEKIT_API_KEY" in refusal
    assert refusal.endswith("; not asking again")
    assert len([m for m in caplog.messages if "again" in m and room in m]) == 2  # 503, refusal
    assert not any(r.exc_info for r in caplog.records)


async def agents_in(livekit: LiveKitServer, room: str) -> list[str]:
    """The identities of the agents in `room` now, as LiveKit lists them."""
    async with livekit.client() as lk:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return [p.identity for p in listed.participants
            if p.kind == lk_models.ParticipantInfo.Kind.AGENT]


async def test_a_bystander_who_stays_after_the_user_left_is_dispatched_no_agent(
    livekit: LiveKitServer, fleet: Fleet, settings: Settings, fleet_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second person stays in the room when its user leaves: the session ends and its agent
    leaves with it, and neither the agent's leaving nor a look at the room dispatches an agent
    for the bystander. The user coming back is dispatched one, named in its dispatch, which
    serves them and not the bystander (the agent used to take whoever the SDK listed first)."""
    monkeypatch.setattr("agent.redispatch.AGENT_JOIN_S", 1.0)
    await fleet.alone("bystander")
    room = "fleet-bystander"
    await open_room(livekit, room)
    user, bystander, back = (new_user(livekit, room) for _ in range(3))
    watcher = redispatcher(settings, fleet_database_url, livekit.http_url, AGENT_NAME)
    try:
        await user.join("bystander-user")
        first_agent = (await user.wait_for_agent(timeout_s=60)).identity
        await _stored(fleet_database_url, room,
                      query="SELECT count(*) FROM sessions WHERE room = $1")
        await bystander.connect("bystander-guest")
        await leave_all([user])
        deadline = time.monotonic() + 30
        while first_agent in await agents_in(livekit, room):  # its session ended
            assert time.monotonic() < deadline, "the agent stayed after its user left"
            await asyncio.sleep(0.3)
        sid = await room_sid(livekit, room)
        assert await watcher.recover(room, sid, first_agent) is False
        assert await watcher.place_again(room, sid, rejoin=True) is False
        assert await claims(fleet_database_url, sid) == []
        await back.connect("bystander-user")
        assert await watcher.place_again(room, sid, rejoin=True) is True
        assert (await back.wait_for_agent(timeout_s=60)).identity != first_agent
        async with livekit.client() as lk:
            latest = max(await lk.agent_dispatch.list_dispatch(room_name=room),
                         key=lambda d: d.state.created_at)
        await fleet.logged(rf"(?s)started \(tenant=fleet user=\S+ room={room},.*"
                           rf"started \(tenant=fleet user=\S+ room={room},", timeout_s=60)
    finally:
        await leave_all([user, bystander, back])
        await watcher.aclose()
    assert json.loads(latest.metadata) == {"tenant": "fleet", "user": "bystander-user"}
    assert re.findall(rf"started \(tenant=fleet user=(\S+) room={room},",
                      "".join(w.log_text() for w in fleet.workers.values())) == [
        "bystander-user", "bystander-user"]
    assert await claims(fleet_database_url, sid) == [(first_agent, "rejoin")]


async def test_a_newcomer_to_a_room_its_user_left_is_dispatched_an_agent(
    livekit: LiveKitServer, fleet: Fleet, settings: Settings, fleet_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone who joins a room after its user left (a newcomer to a room still open, the user
    on another device under another identity) was not in it with the user: they are dispatched
    an agent, not refused as a bystander, even while the session that ended with the user
    still closes (its memory call slow), its row not ended yet: the session wrote when its user
    left the moment they did."""
    monkeypatch.setattr("agent.redispatch.AGENT_JOIN_S", 1.0)
    await fleet.alone("newcomer")
    room = "fleet-newcomer"
    await open_room(livekit, room)
    first, newcomer = new_user(livekit, room), new_user(livekit, room)
    watcher = redispatcher(settings, fleet_database_url, livekit.http_url, AGENT_NAME)
    try:
        await joined_and_sharing(first, "newcomer-first")
        await asks_and_is_answered(first, f"Remember that {NEWCOMER_ANALYSIS} Osprey-2.")
        await thinking(NEWCOMER_ANALYSIS)
        await leave_all([first])
        await emptied(livekit, room)  # its agent left; its session closes for seconds yet
        await newcomer.connect("newcomer-second")
        sid = await room_sid(livekit, room)
        assert await watcher.place_again(room, sid, rejoin=True) is True
        closing = await session_rows(fleet_database_url, room)
        await newcomer.wait_for_agent(timeout_s=60)
    finally:
        await leave_all([first, newcomer])
        await watcher.aclose()
    assert closing[0]["ended_at"] is None and closing[0]["user_left_at"] is not None, (
        "the newcomer came while the first session still closed")


async def session_rows(database_url: str, room: str) -> list[asyncpg.Record]:
    """The sessions of `room`, oldest first: who, which agent, when the user left, the end."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT id, user_id, agent, user_left_at, ended_at FROM sessions"
                                " WHERE room = $1 ORDER BY started_at", room)
    finally:
        await conn.close()


async def test_a_page_reloaded_as_its_session_closes_is_a_coming_back_not_a_lost_agent(
    livekit: LiveKitServer, fleet: Fleet, models: ScriptedModelServer, settings: Settings,
    fleet_database_url: str,
) -> None:
    """A user reloads the page: they leave and are back before the agent-left webhook's look
    (here, a look made once they are back), while the session that ended with them still
    closes, analysing their exchange (its memory call slow). That is their coming back
    (`rejoin`), as the session wrote when its user left: the new session leaves the exchange
    to the closing one, which alone asks the memory model about it (a lost agent's claim handed
    it on, and the model was asked twice)."""
    await fleet.alone("reload")
    room = "fleet-reload"
    await open_room(livekit, room)
    user, back = new_user(livekit, room), new_user(livekit, room)
    said = f"Remember that {RELOAD_ANALYSIS} Kestrel-4."
    watcher = redispatcher(settings, fleet_database_url, livekit.http_url, AGENT_NAME)
    try:
        first_agent = (await joined_and_sharing(user, "reload-user")).identity
        await asks_and_is_answered(user, said)
        await thinking(RELOAD_ANALYSIS)
        await leave_all([user])
        await emptied(livekit, room)  # its agent left; its session closes for seconds yet
        await back.connect("reload-user")
        sid = await room_sid(livekit, room)
        assert await watcher.recover(room, sid, first_agent) is True
        await back.wait_for_agent(timeout_s=60)
        await asks_and_is_answered(back, "Are you back?")
    finally:
        await leave_all([user, back])
        await watcher.aclose()
    await fleet.settled()
    assert await claims(fleet_database_url, sid) == [(first_agent, "rejoin")]
    memory_calls = [r for r in models.requests if r.purpose == "memory" and said in r.text]
    assert len(memory_calls) == 1, "only the closing session asked about its exchange"


async def test_a_session_records_when_its_user_left_and_came_back(
    livekit: LiveKitServer, fleet: Fleet, fleet_database_url: str,
) -> None:
    """Removed by the server (not a leave the session ends on), the user comes back under the
    same identity and is answered by the same agent: the session waited for them, its row not
    marked. Their leave of their own is written on the row the moment it happens, before the
    session's end. Each change is an event in its log, with LiveKit's reason for a leaving."""
    await fleet.alone("presence")
    room = "fleet-presence"
    await open_room(livekit, room)
    user, back = new_user(livekit, room), new_user(livekit, room)
    seen = ("SELECT count(*) FROM cost_events e JOIN sessions s ON s.id = e.session_id"
            " WHERE s.room = $1 AND e.kind = '{}'")
    try:
        first_agent = (await joined_and_sharing(user, "presence-user")).identity
        async with livekit.client() as lk:
            await lk.room.remove_participant(api.RoomParticipantIdentity(
                room=room, identity="presence-user"))
        await _stored(fleet_database_url, room, query=seen.format("left"))
        await back.connect("presence-user")
        assert (await back.wait_for_agent(timeout_s=30)).identity == first_agent
        await _stored(fleet_database_url, room, query=seen.format("back"))
        await asks_and_is_answered(back, "Are you still there?")
        [away] = await session_rows(fleet_database_url, room)
    finally:
        await leave_all([user, back])
    await fleet.settled()
    assert away["user_left_at"] is None, "a removal the session waits through marks nothing"
    [row] = await session_rows(fleet_database_url, room)
    assert row["user_left_at"] is not None and row["user_left_at"] <= row["ended_at"]
    conn = await asyncpg.connect(fleet_database_url)
    try:
        changes = [(r["kind"], json.loads(r["detail"]).get("reason")) for r in await conn.fetch(
            "SELECT kind, detail FROM cost_events WHERE session_id = $1"
            " AND kind IN ('left', 'back') ORDER BY seq", row["id"])]
    finally:
        await conn.close()
    assert changes == [("left", "PARTICIPANT_REMOVED"), ("back", None),
                       ("left", "CLIENT_INITIATED")]


LATE_AGENT = "sightline-late"  # served by this process's own worker, whose first agent is late


async def test_an_agent_that_joins_after_its_job_was_dispatched_anew_is_removed(
    livekit: LiveKitServer, fleet: Fleet, settings: Settings, webhook_ports: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LiveKit lists a job whose agent is still coming as it lists one whose agent left: as
    running. A job whose agent has not joined `AGENT_JOIN_S` after its assignment is
    dispatched anew, claimed as that agent; when the late agent joins after all, the watcher
    that hears it join removes it: the user has one agent, the new one."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.AGENT_JOIN_S", 0.5)
    await fleet.stop()  # LiveKit's webhooks reach the watcher in this process instead
    late = threading.Event()  # set: the first job's agent joins at last
    jobs: list[str] = []
    joined: list[str] = []
    server = AgentServer(ws_url=livekit.ws_url, api_key=API_KEY, api_secret=API_SECRET,
                         job_executor_type=JobExecutorType.THREAD, num_idle_processes=1,
                         load_fnc=lambda: 0.0, load_threshold=1.0, port=free_port())

    @server.rtc_session(agent_name=LATE_AGENT)
    async def agent_late_at_first(ctx: JobContext) -> None:
        jobs.append(ctx.job.id)
        if len(jobs) == 1:
            await asyncio.to_thread(late.wait, 30)
        await ctx.connect()
        joined.append(ctx.job.id)

    running = asyncio.create_task(server.run())
    room = "fleet-late-agent"
    user = User(livekit, room, agent_name=LATE_AGENT, metadata={"tenant": "fleet"},
                frames=SCREENS)
    database_url = settings.database_url or ""
    watcher = redispatcher(settings, database_url, livekit.http_url, LATE_AGENT,
                           webhook_ports[0])
    try:
        deadline = time.monotonic() + 30
        while server.id == "unregistered":
            assert time.monotonic() < deadline, "the late agent's worker never registered"
            await asyncio.sleep(0.1)
        await user.join("late-user")
        await watcher.start()
        async with livekit.client() as lk:
            while not (assigned := [
                    job.state.participant_identity
                    for d in await lk.agent_dispatch.list_dispatch(room_name=room)
                    for job in d.state.jobs if job.state.participant_identity]):
                assert time.monotonic() < deadline, "no worker took the late agent's job"
                await asyncio.sleep(0.1)
        [late_agent] = assigned
        await asyncio.sleep(0.6)  # past AGENT_JOIN_S: its agent is given up for gone
        sid = await room_sid(livekit, room)
        assert await watcher.place_again(room, sid, rejoin=True) is True
        assert await claims(database_url, sid) == [(late_agent, "rejoin")]
        new_agent = (await user.wait_for_agent(timeout_s=30)).identity
        assert new_agent != late_agent
        late.set()
        deadline = time.monotonic() + 30
        while len(joined) < 2 or await agents_in(livekit, room) != [new_agent]:
            assert time.monotonic() < deadline, (joined, await agents_in(livekit, room))
            await asyncio.sleep(0.2)
    finally:
        late.set()
        await leave_all([user])
        await watcher.aclose()
        await server.aclose()
        await asyncio.gather(running, return_exceptions=True)
    assert (f"removed the agent {late_agent} from room {room}: it joined after the room was "
            "dispatched its agent again") in caplog.messages


async def test_a_claim_committed_as_the_worker_shuts_down_is_handed_back(
    livekit: LiveKitServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker shutting down cancels its recoveries; one whose claim on a lost agent Postgres
    had committed, its answer still on its way back, hands that claim back too, so that
    another worker may claim the room's user at its next look."""
    committed = asyncio.Event()

    async def answered_late(*args: Any, **kwargs: Any) -> Claim:
        taken = await claim(*args, **kwargs)
        committed.set()
        await asyncio.sleep(0.5)  # the answer on its way back from Postgres
        return taken

    monkeypatch.setattr("agent.redispatch.claim", answered_late)
    room = "fleet-claim-at-close"
    user = new_user(livekit, room)
    port = free_port()
    database_url = settings.database_url or ""
    watcher = redispatcher(settings, database_url, livekit.http_url, AGENT_NAME, port)
    try:
        await user.connect("claim-at-close-user")
        sid = await room_sid(livekit, room)
        await watcher.start()
        await agent_left(port, room, sid, "agent-AJ_lost")
        await asyncio.wait_for(committed.wait(), 30)
        await watcher.aclose()
        assert await claims(database_url, sid) == []
    finally:
        await leave_all([user])
        await watcher.aclose()


KEPT_AGENT = "sightline-kept"  # served by no worker: only the test's own agents join as it


async def agent_joins(livekit: LiveKitServer, room: str, identity: str) -> rtc.Room:
    """A participant that joins `room` as an agent of `KEPT_AGENT` (as livekit-agents marks its
    agents) under `identity`."""
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_kind("agent")
             .with_attributes({AGENT_NAME_ATTRIBUTE: KEPT_AGENT})
             .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
    joined = rtc.Room()
    await joined.connect(livekit.ws_url, token)
    return joined


async def test_an_agent_its_claimant_found_after_the_claim_is_kept(
    livekit: LiveKitServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker A claims a room's agent for gone; the agent joins just then, and worker B, which
    hears it join, looks it up before A looks at the room again. A finds it and keeps it (hands
    its claim back): B must not remove it, nor may the user be left with no agent."""
    room, identity = "fleet-kept", "agent-AJ_kept"
    user = new_user(livekit, room)
    database_url = settings.database_url or ""
    a, b = (redispatcher(settings, database_url, livekit.http_url, KEPT_AGENT) for _ in "ab")
    looked_up, go = asyncio.Event(), asyncio.Event()
    real_api = b._api

    @asynccontextmanager
    async def held() -> AsyncIterator[api.LiveKitAPI]:  # B's removal waits for A's look
        looked_up.set()
        await go.wait()
        async with real_api() as lk:
            yield lk

    monkeypatch.setattr(b, "_api", held)
    joined: list[rtc.Room] = []
    heard: list[asyncio.Task[bool]] = []

    async def claimed_as_it_joins(*args: Any, **kwargs: Any) -> Claim:
        taken = await claim(*args, **kwargs)
        joined.append(await agent_joins(livekit, room, identity))
        heard.append(asyncio.create_task(b.turn_away(room, sid, identity)))
        heard[0].add_done_callback(lambda _: looked_up.set())
        await looked_up.wait()  # B decided: it returned, or it asks LiveKit to remove it
        return taken

    monkeypatch.setattr("agent.redispatch.claim", claimed_as_it_joins)
    try:
        await user.connect("kept-user")
        sid = await room_sid(livekit, room)
        assert await a.recover(room, sid, identity) is False
        go.set()
        assert await heard[0] is False
        assert await agents_in(livekit, room) == [identity]
        assert await claims(database_url, sid) == []
    finally:
        go.set()
        await leave_all([user])
        await asyncio.gather(*(r.disconnect() for r in joined))
        await a.aclose()
        await b.aclose()


async def test_an_agent_that_joins_as_its_claimant_dispatches_is_removed_by_the_claimant(
    livekit: LiveKitServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent given up for gone joins after its claimant's look and before the claim is
    marked dispatched: the worker that hears it join leaves it to the claimant, which removes
    it once it marked the claim."""
    room, identity = "fleet-between", "agent-AJ_between"
    user = new_user(livekit, room)
    database_url = settings.database_url or ""
    a, b = (redispatcher(settings, database_url, livekit.http_url, KEPT_AGENT) for _ in "ab")
    joined: list[rtc.Room] = []
    heard: list[bool] = []

    async def marked_after_it_joined(*args: Any, **kwargs: Any) -> None:
        joined.append(await agent_joins(livekit, room, identity))
        heard.append(await b.turn_away(room, sid, identity))
        await mark_dispatched(*args, **kwargs)

    monkeypatch.setattr("agent.redispatch.mark_dispatched", marked_after_it_joined)
    try:
        await user.connect("between-user")
        sid = await room_sid(livekit, room)
        assert await a.recover(room, sid, identity) is True
        assert heard == [False]
        assert await agents_in(livekit, room) == []
        assert await claims(database_url, sid) == [(identity, "lost")]
    finally:
        await leave_all([user])
        await asyncio.gather(*(r.disconnect() for r in joined))
        await a.aclose()
        await b.aclose()


async def test_the_user_on_a_new_device_beside_a_bystander_is_named_in_the_dispatch_again(
    livekit: LiveKitServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A room's user left with a bystander there and comes back under another identity (a new
    device), whose agent's dispatch no worker takes. The look dispatches it again naming the
    newcomer (it named nobody, and the agent served whoever the SDK listed first, maybe the
    bystander), and removes no agent for the claim on that dispatch (it asked LiveKit to
    remove the participant "dispatch AD_…")."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.DISPATCH_SETTLE_S", 0.0)
    room = "fleet-new-device"
    database_url = settings.database_url or ""
    bystander, phone = (User(livekit, room, agent_name=KEPT_AGENT, metadata={"tenant": "fleet"},
                             frames=SCREENS) for _ in range(2))
    watcher = redispatcher(settings, database_url, livekit.http_url, KEPT_AGENT)
    removing: list[str] = []
    remove_late = watcher._remove_late

    async def removed(room: str, identity: str) -> bool:
        removing.append(identity)
        return await remove_late(room, identity)

    monkeypatch.setattr(watcher, "_remove_late", removed)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await phone.dispatch()  # no worker takes it
        store = Store(pool)
        await store.start_session(f"session-{room}", tenant="fleet", user_id="new-device-user",
                                  room=room, source="live", provider="scripted", model="scripted")
        await bystander.connect("new-device-bystander")
        await store.end_session(f"session-{room}", 0.0, {})
        await asyncio.sleep(0.1)
        await phone.connect("new-device-phone")
        sid = await room_sid(livekit, room)
        async with livekit.client() as lk:
            [unplaced] = [d for d in await lk.agent_dispatch.list_dispatch(room_name=room)
                          if d.agent_name == KEPT_AGENT]
            assert await watcher.place_again(room, sid, rejoin=True) is True
            [dispatch] = [d for d in await lk.agent_dispatch.list_dispatch(room_name=room)
                          if d.agent_name == KEPT_AGENT]
    finally:
        await leave_all([bystander, phone])
        await watcher.aclose()
        await pool.close()
    assert json.loads(dispatch.metadata) == {"tenant": "fleet", "user": "new-device-phone"}
    assert await claims(database_url, sid) == [(f"dispatch {unplaced.id}", "unplaced")]
    assert removing == [] and not any("could not remove" in m for m in caplog.messages)


async def test_a_burst_of_agent_joins_opens_one_pool(
    livekit: LiveKitServer, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents joining at once before the worker's pool is open (a burst of dispatches) open one
    pool between them, not one each that nothing closes."""
    opened: list[Database] = []
    real_open = Database.open

    async def counted(*args: Any, **kwargs: Any) -> Database:
        opened.append(await real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("agent.redispatch.Database.open", counted)
    watcher = redispatcher(settings, settings.database_url or "", livekit.http_url, KEPT_AGENT)
    try:
        assert await asyncio.gather(*(watcher.turn_away("fleet-burst", "RM_burst",
                                                        f"agent-AJ_{i}") for i in range(6))
                                    ) == [False] * 6
    finally:
        await watcher.aclose()
    assert len(opened) == 1


async def test_an_agent_that_joins_while_postgres_is_away_is_kept_with_one_warning(
    livekit: LiveKitServer, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    """An agent joins while Postgres does not answer: whether it was dispatched anew cannot be
    told, so it stays, and one warning says so (not an error about removing it)."""
    caplog.set_level(logging.INFO)
    watcher = redispatcher(settings, "postgresql://nobody@127.0.0.1:1/none", livekit.http_url,
                           KEPT_AGENT)
    try:
        assert await watcher.turn_away("fleet-away", "RM_away", "agent-AJ_away") is False
    finally:
        await watcher.aclose()
    [said] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert said.levelno == logging.WARNING and not said.exc_info
    assert said.getMessage().startswith("could not tell whether room fleet-away was dispatched "
                                        "its agent again in place of agent-AJ_away")

