"""Every call Sightline makes to LiveKit's server API ends, though LiveKit never answers it.

livekit-api passes `timeout=None` on each request, which aiohttp reads as no timeout: the
`timeout` of `api.LiveKitAPI` never applies. Protects: a call to a server that takes the
connection and never answers, or answers a header and then nothing, ends after
`agent.livekit_api.TIMEOUT_S` with one line naming the server, on a LiveKit Cloud host too
(one request: no region failover); the fleet's watcher counts it as any failure to reach
LiveKit (a look is looked again; a lost agent's dispatch is tried again on its backoff); and a
dispatch whose answer was lost, though it reached the real LiveKit server, is found by the next
try and not made twice. The console's page is tests/test_console_cli.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from conftest import answering
from livekit import api, rtc

from agent.config import Settings
from agent.livekit_api import LiveKitTimeout, livekit_api
from agent.redispatch import Redispatcher
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer

TIMEOUT_S = 1.0  # what the tests give a call: short, so that they do not wait long; long
# enough for a real call through the proxy on a busy machine (0.2 s was not, once in CI)
AGENT = "sightline-unserved"  # no worker serves it: its dispatches stay without a job


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.livekit_api.TIMEOUT_S", TIMEOUT_S)


@dataclass
class NeverAnswering:
    url: str
    asked: list[str] = field(default_factory=list)  # the request line of each request read
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def heard(self, request: bytes) -> None:
        async with self._arrived:
            self.asked.append(request.split(b"\r\n", 1)[0].decode())
            self._arrived.notify_all()

    async def asked_times(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.asked) >= count)


@contextlib.asynccontextmanager
async def never_answering(head: bytes = b"") -> AsyncIterator[NeverAnswering]:
    """A server that takes each connection, reads its request and never answers it (but for
    `head`, the start of an answer): a LiveKit, or a proxy before it, that hangs."""
    writers: list[asyncio.StreamWriter] = []

    async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await server.heard(await reader.readuntil(b"\r\n\r\n"))
            writer.write(head)
            await reader.read()  # until the client gives up

    listening = await asyncio.start_server(take, "127.0.0.1", 0)
    server = NeverAnswering(f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}")
    try:
        yield server
    finally:
        listening.close()
        for writer in writers:
            writer.close()
        await listening.wait_closed()


def silent_line(url: str) -> str:
    return f"LiveKit at {url} did not answer within {TIMEOUT_S:g} s"


HEADER_ONLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\n"
               b"Content-Length: 64\r\n\r\n")


@pytest.mark.parametrize("head", [b"", HEADER_ONLY], ids=["nothing", "a header only"])
async def test_a_call_livekit_never_answers_ends_with_one_line(head: bytes) -> None:
    async with never_answering(head) as silent, livekit_api(silent.url, API_KEY,
                                                             API_SECRET) as lk:
        async with asyncio.timeout(30):  # the SDK alone would wait for ever
            with pytest.raises(LiveKitTimeout) as failed:
                await lk.room.list_rooms(api.ListRoomsRequest())
    assert str(failed.value) == silent_line(silent.url)
    assert isinstance(failed.value, aiohttp.ClientError | TimeoutError)  # as callers catch it
    assert silent.asked == ["POST /twirp/livekit.RoomService/ListRooms HTTP/1.1"]


async def test_a_call_to_a_livekit_cloud_host_that_never_answers_is_one_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a LiveKit Cloud host the SDK would make a call up to 3 requests and a lookup of the
    project's regions (each bounded: ~33 s at the 10 s default): the call is one request, so
    it ends within `TIMEOUT_S` too. The host is taken for a Cloud one as the SDK tells them
    (`*.livekit.cloud`), and its failover allowed at the tests' short bound (it is otherwise
    skipped below 5 s a request)."""
    monkeypatch.setattr("livekit.api._failover.is_cloud", lambda host: True)
    monkeypatch.setattr("livekit.api._failover.MIN_FAILOVER_TIMEOUT", 0.0)
    async with never_answering() as silent, livekit_api(silent.url, API_KEY,
                                                         API_SECRET) as lk:
        async with asyncio.timeout(30):
            with pytest.raises(LiveKitTimeout) as failed:
                await lk.room.list_rooms(api.ListRoomsRequest())
    assert str(failed.value) == silent_line(silent.url)
    assert silent.asked == ["POST /twirp/livekit.RoomService/ListRooms HTTP/1.1"]


def redispatcher(settings: Settings, livekit_url: str) -> Redispatcher:
    return Redispatcher(settings.with_overrides(
        livekit_url=livekit_url, livekit_api_key=API_KEY, livekit_api_secret=API_SECRET,
        agent_name=AGENT, lost_session_close_s=0.0, webhook_port=0), settings.database_url or "")


def redispatch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    assert not any(r.exc_info for r in caplog.records)
    return [r.getMessage() for r in caplog.records if r.name == "sightline.redispatch"]


async def test_a_look_livekit_never_answers_is_one_line_and_looked_again(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sightline.redispatch")
    async with never_answering() as silent:
        worker = redispatcher(settings, silent.url)
        try:
            async with asyncio.timeout(30):
                assert await worker.place_again("silent-room", "RM_silent", rejoin=True) is True
        finally:
            await worker.aclose()
    assert silent.asked == ["POST /twirp/livekit.RoomService/ListParticipants HTTP/1.1"]
    assert redispatch_lines(caplog) == [
        "could not check whether a worker took the agent of room silent-room: "
        f"{silent_line(silent.url)}; looking again later"]


async def test_a_lost_agent_s_dispatch_livekit_never_answers_is_tried_again_on_the_backoff(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 0.05)
    async with never_answering() as silent:
        worker = redispatcher(settings, silent.url)
        recovering = asyncio.create_task(worker.recover("silent-room", "RM_silent", "agent-AJ"))
        try:
            async with asyncio.timeout(30):
                await silent.asked_times(3)
            assert not recovering.done()  # the user may still be waiting: it keeps trying
        finally:
            recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovering
            await worker.aclose()
    assert set(silent.asked) == {"POST /twirp/livekit.RoomService/ListParticipants HTTP/1.1"}
    tries = redispatch_lines(caplog)
    assert len(tries) >= 2
    for line in tries:
        assert re.fullmatch(
            "could not dispatch the agent again to room silent-room, whose agent agent-AJ was "
            rf"lost: {re.escape(silent_line(silent.url))}; trying again in \d+ s", line), line


class AnswerLost:
    """The real LiveKit server's API behind a proxy that passes every call on, but holds the
    answer to the first `CreateDispatch` until `release`: the dispatch is made, its caller
    hears nothing. `asked` is the methods asked, in order."""

    def __init__(self, livekit: LiveKitServer) -> None:
        self._livekit = livekit
        self._released = asyncio.Event()
        self.asked: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        method = request.path.rsplit("/", 1)[-1]
        self.asked.append(method)
        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type")}
        async with aiohttp.ClientSession() as session, session.post(
                self._livekit.http_url + request.path, data=await request.read(),
                headers=headers) as passed:
            answer = web.Response(status=passed.status, body=await passed.read(),
                                  content_type=passed.content_type)
        if method == "CreateDispatch" and self.asked.count(method) == 1:
            await self._released.wait()
        return answer

    def release(self) -> None:
        self._released.set()


async def test_a_dispatch_whose_answer_never_came_is_found_and_not_made_twice(
    livekit: LiveKitServer, settings: Settings, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user waits in a room whose agent was lost; the claimant asks LiveKit for a dispatch,
    which LiveKit makes, but its answer never comes: the call ends, and the next try finds
    the dispatch it made instead of asking again."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 0.05)
    room_name = "answer-lost"
    user = rtc.Room()
    await user.connect(livekit.ws_url, api.AccessToken(API_KEY, API_SECRET)
                       .with_identity("waiting-user")
                       .with_grants(api.VideoGrants(room_join=True, room=room_name)).to_jwt())
    proxy = AnswerLost(livekit)
    try:
        async with livekit_api(livekit.http_url, API_KEY, API_SECRET) as lk:
            [room] = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room_name]))).rooms
        async with answering(proxy.handle) as proxy_url:
            worker = redispatcher(settings, proxy_url)
            try:
                async with asyncio.timeout(30):
                    assert await worker.recover(room_name, room.sid, "agent-AJ_gone") is True
                asked = list(proxy.asked)
            finally:
                proxy.release()
                await worker.aclose()
        async with livekit_api(livekit.http_url, API_KEY, API_SECRET) as lk:
            made = await lk.agent_dispatch.list_dispatch(room_name=room_name)
    finally:
        await user.disconnect()
    assert asked.count("CreateDispatch") == 1
    assert len([d for d in made if d.agent_name == AGENT]) == 1
    lines = redispatch_lines(caplog)
    [failed] = [line for line in lines if "did not answer" in line]
    assert re.fullmatch(
        f"could not dispatch the agent again to room {room_name}, whose agent agent-AJ_gone was "
        rf"lost: {re.escape(silent_line(proxy_url))}; trying again in \d+ s", failed), failed
    assert (f"the agent agent-AJ_gone of room {room_name} was lost while waiting-user stayed: "
            "dispatched it again") in lines
