"""`sightline console` when something is missing or in the way, and its session endpoint when
LiveKit cannot be reached.

Protects: missing LiveKit settings and a taken port are one line and exit 2, never a traceback;
an unreachable LiveKit server makes `POST /api/session` answer 502 with one readable error (the
page shows it) while the console keeps serving the page, and so does one that takes the call and
never answers (after `agent.livekit_api.TIMEOUT_S`, not never); a password in LIVEKIT_URL is never
shown; Ctrl-C, the way the console says to stop it, stops it cleanly (exit 0); a request
without the page's header, or naming another host, starts nothing (403); a session is the user's
whose id the page keeps, and an id that is not one starts nothing (400).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import SIGHTLINE, run_cli
from livekit import api
from test_livekit_api_timeouts import never_answering

from agent.config import Settings
from agent.console_server import BUNDLE, Console
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer, free_port


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
            "SIGHTLINE_DATA_DIR": str(tmp_path / "data"), **extra}


async def test_missing_livekit_settings_are_one_line(tmp_path: Path) -> None:
    code, out, err = await run_cli("console", env=env(tmp_path))
    assert code == 2 and out == ""
    assert err == "sightline: LIVEKIT_URL is required by `sightline console` (README: Console)\n"


async def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    assert BUNDLE.is_file(), "the console's script is built by `make install` / `make test`"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _out, err = await run_cli("console", "--port", str(port), env=env(
            tmp_path, LIVEKIT_URL="ws://127.0.0.1:9", LIVEKIT_API_KEY="k",
            LIVEKIT_API_SECRET="s"))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"sightline: cannot listen on 127.0.0.1:{port}: ")


def console_settings(livekit_url: str, tmp_path: Path) -> Settings:
    return Settings.from_env({"LIVEKIT_URL": livekit_url, "LIVEKIT_API_KEY": "k",
                              "LIVEKIT_API_SECRET": "s", "SIGHTLINE_DATA_DIR": str(tmp_path)})


async def test_an_unreachable_livekit_is_a_readable_error_on_the_page(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    settings = console_settings(url, tmp_path)
    async with TestClient(TestServer(Console(settings, "acme").app())) as client:
        response = await client.post("/api/session", headers={"X-Sightline-Console": "1"})
        assert response.status == 502
        error = (await response.json())["error"]
        assert error.startswith(f"LiveKit at {url} refused or could not be reached")
        page = await client.get("/")
        assert page.status == 200 and "Sightline console" in await page.text()


async def test_a_livekit_that_never_answers_is_a_readable_error_on_the_page(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.livekit_api.TIMEOUT_S", 0.2)
    async with never_answering() as silent:
        url = silent.url.replace("http://", "ws://")
        async with TestClient(TestServer(Console(console_settings(url, tmp_path),
                                                 "acme").app())) as client:
            async with asyncio.timeout(30):  # the SDK alone would wait for ever
                response = await client.post("/api/session",
                                             headers={"X-Sightline-Console": "1"})
            assert response.status == 502
            assert await response.json() == {
                "error": f"LiveKit at {url} did not answer within 0.2 s"}
            page = await client.get("/")
            assert page.status == 200
    assert silent.asked == ["POST /twirp/livekit.RoomService/CreateRoom HTTP/1.1"]
    [logged] = [r for r in caplog.records if r.name == "sightline.console"]
    assert logged.getMessage() == (f"could not create a room on {url}: LiveKitTimeout('LiveKit "
                                   f"at {silent.url} did not answer within 0.2 s')")
    assert logged.exc_info is None


async def test_only_the_console_s_own_page_starts_sessions(tmp_path: Path) -> None:
    settings = console_settings("ws://127.0.0.1:9", tmp_path)
    async with TestClient(TestServer(Console(settings, "acme").app())) as client:
        another_site = await client.post("/api/session")  # a form post from elsewhere
        assert another_site.status == 403
        rebound = await client.post("/api/session", headers={
            "X-Sightline-Console": "1", "Host": "attacker.example:8090"})
        assert rebound.status == 403


PASSWORD = "lk-pass-w0rd-zz"


async def test_a_password_in_livekit_s_url_is_refused_and_never_shown(tmp_path: Path) -> None:
    """A LiveKit URL with a user and password fails every call to LiveKit (its requests are
    signed in their Authorization header), so the console refuses it at start, in one line
    that hides the password."""
    proc = await asyncio.create_subprocess_exec(
        str(SIGHTLINE), "console", "--port", "0", env=env(
            tmp_path, LIVEKIT_URL=f"ws://lk:{PASSWORD}@127.0.0.1:{free_port()}",
            LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 2 and out == b""
    assert len(lines) == 1 and "LIVEKIT_URL='ws://lk:***@127.0.0.1:" in lines[0]
    assert "must not hold a user name or password" in lines[0]
    assert PASSWORD not in err.decode()


async def test_ctrl_c_stops_the_console_cleanly(tmp_path: Path) -> None:
    assert BUNDLE.is_file(), "the console's script is built by `make install` / `make test`"
    proc = await asyncio.create_subprocess_exec(
        str(SIGHTLINE), "console", "--port", "0", env=env(
            tmp_path, LIVEKIT_URL="ws://127.0.0.1:9", LIVEKIT_API_KEY="k",
            LIVEKIT_API_SECRET="s"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    serving = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
    assert "(LiveKit ws://127.0.0.1:9, agent sightline); Ctrl-C to stop" in serving
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert (proc.returncode, out, err) == (0, b"", b"")


async def test_a_session_is_started_for_the_user_id_the_page_keeps(
    tmp_path: Path, livekit: LiveKitServer,
) -> None:
    """The page keeps its user's id in the browser and sends it: each of its sessions is
    that user's, whom Sightline remembers. A request with none gets a new user; an id that is
    not one (path characters, too short, not a string, a body that is not a JSON object) is
    refused in one line before anything is created."""
    settings = Settings.from_env({"LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
                                  "LIVEKIT_API_SECRET": API_SECRET,
                                  "SIGHTLINE_DATA_DIR": str(tmp_path)})
    page = {"X-Sightline-Console": "1"}
    async with TestClient(TestServer(Console(settings, "acme").app())) as client:
        sessions = [await (await client.post("/api/session", headers=page,
                                              json={"user": "a1b2c3d4e5f6"})).json()
                    for _ in range(2)]
        assert [s["identity"] for s in sessions] == ["console-user-a1b2c3d4e5f6"] * 2
        assert sessions[0]["room"] != sessions[1]["room"]
        new = [await (await client.post("/api/session", headers=page, **body)).json()
               for body in ({}, {"json": {}})]
        assert all(re.fullmatch(r"console-user-[0-9a-f]{12}", s["identity"]) for s in new)
        assert new[0]["identity"] != new[1]["identity"]
        async with livekit.client() as lk:
            rooms = {room.name for room in (await lk.room.list_rooms(
                api.ListRoomsRequest())).rooms}
        for body in ({"json": {"user": "../../etc"}}, {"json": {"user": "abc"}},
                     {"json": {"user": 123456}}, {"json": ["a1b2c3d4e5f6"]},
                     {"data": "not json", "headers": {**page, "Content-Type": "text/plain"}}):
            refused = await client.post("/api/session", **{"headers": page, **body})
            assert refused.status == 400, body
            assert await refused.json() == {
                "error": "the page's user id must be 6 to 64 letters, digits, - or _"}
        async with livekit.client() as lk:
            assert {room.name for room in (await lk.room.list_rooms(
                api.ListRoomsRequest())).rooms} == rooms, "a refused request creates no room"
