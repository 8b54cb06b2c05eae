"""The web console in a real browser, end to end.

Debian's Chromium (headed, under Xvfb) with fake media devices and the capture picker
auto-answered, driven by Playwright over CDP (its Python wheel carries its driver; no browser is
downloaded), opens `sightline console` (a real process), which creates the room and dispatches a
real `sightline start` worker on a real `livekit-server`. The page calls getDisplayMedia (answered
by Chromium's fake capture device: a generated test pattern) and getUserMedia (a fake
microphone) and publishes both; a question is typed in the chat box, and the scripted model (the
wire-format server, reached through the real google-genai client) answers.

Protects: the page joins through the console (room, dispatch, token), the agent joins and sees
the shared screen (the model's request carries the image), the page shows Sightline thinking
until the answer streams into it, the live-assist panel follows the question while it is typed
(`sightline.draft`) and once sent, with the intent and the tenant's matching article, the cost
meter moves, and the page is not blank (a screenshot with real content); asking for a person
makes the model call `handoff_to_human` in the live worker, and the page shows the handoff the
room received.
When starting a session fails below the console's own errors (headless Chromium, a real
`sightline console`): the console stopped after the page loaded (the request fails) or a proxy in
front of it answering its own HTML page, the status line says so and **Start session** can be
clicked again, with no uncaught error in the page.
Against a stand-in agent (a test-owned participant of kind agent; no worker, no models): with
speech, the user's words and the agent's answer each one bubble, shown as who said them; Leave
then Start session shows only the new session; the page is the same user in each session
and after a reload; the agent leaving says so, closes the chat and
marks an answer it cut off; a question asked before the agent joins is queued and sent when it
does; a question the agent does not confirm is sent again under its id (its copy lost, late, or
every copy lost: then marked), and one the agent read but left before answering is marked and
sent to the agent that joins next, or back after a LiveKit restart; the agent's state thinking
is shown where its answer will appear, until the answer starts, the state changes or the agent
leaves; what another participant sends as Sightline (a receipt, a handoff, a cost, an answer,
words in the user's name) is not shown; the chat box stays at the conversation's foot, which
scrolls; a narrow window stacks the columns; long unbroken text wraps; the browser's own "Stop
sharing" updates the share button; a refused screen and a refused microphone are both noted; a
session ended (Leave, the server) while the screen picker is open does nothing more once it
answers, even to a newer session; the
LiveKit server killed under a session and started again: the page says it is reconnecting, a
question typed meanwhile goes out once the page and the agent are back; killed again and left
down: the page says the connection could not be restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from conftest import answering, fresh_database
from livekit import api, rtc
from livekit.agents.voice.room_io._output import _ParticipantTranscriptionOutput
from PIL import Image, ImageStat
from playwright.async_api import Page, async_playwright, expect
from test_cascade import tool_results
from test_user_tools import NO_MEMORY_UPDATE
from waits import eventually
from worker_fixture import running_worker

from agent.chat_inbox import MESSAGE_ID, RECEIVED_TOPIC, ChatInbox
from agent.components import make_embedder
from agent.config import Settings
from agent.console_server import BUNDLE
from agent.wire_format_server import (
    CapturedRequest,
    ScriptedModelServer,
    ScriptedReply,
    ScriptedToolCall,
)
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    Worker,
    free_port,
    wait_for_port,
)
from memory.db import Database
from memory.knowledge import KnowledgeBase, stored_models
from tools.handoff import REASON_LABEL

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
AGENT_NAME = "sightline-console-test"
TENANT = "console"
ANSWER = "(scripted) Your screen shows the console; reset the VPN client from Settings."
QUESTION = "Why does the VPN client show error 809?"


HANDOFF_QUESTION = "I would rather talk to a person."
HANDED_OFF = "(scripted) A person from support will join you shortly."


def reply(request: CapturedRequest) -> ScriptedReply:
    if request.purpose == "memory":
        return ScriptedReply(text=NO_MEMORY_UPDATE)
    if any("human support agent" in result for result in tool_results(request)):
        return ScriptedReply(text=f"[[confidence: 0.95]] {HANDED_OFF}")
    if HANDOFF_QUESTION in request.text:
        return ScriptedReply(text="", tool_calls=(ScriptedToolCall(
            "handoff_to_human", {"reason": "The user asked for a person."}),))
    # the answer waits a second: the page shows Sightline thinking meanwhile
    return ScriptedReply(text=f"[[confidence: 0.95]] {ANSWER}", delay_s=1.0, chunk_delay_s=0.05)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An X display for the headed browser (Xvfb picks a free display number)."""
    if not shutil.which("Xvfb") or not CHROMIUM.exists():
        pytest.fail("the console test needs Debian's chromium and xvfb (debian-packages.txt; "
                    "`make test` installs them)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24",
                             "-nolisten", "tcp"], pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
async def models() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(replies=reply) as server:
        yield server


@pytest.fixture(scope="module")
async def console_env(
    livekit: LiveKitServer, models: ScriptedModelServer, postgres_admin_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    workdir = tmp_path_factory.mktemp("console")
    env = {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": AGENT_NAME,
        "GOOGLE_API_KEY": "console-fake-key", "SIGHTLINE_GEMINI_BASE_URL": models.base_url,
        "SIGHTLINE_TIERS": "gemini:gemini-2.5-flash-lite:0:256",
        "SIGHTLINE_MODEL_RETRIES": "0",
        "DATABASE_URL": await fresh_database(postgres_admin_url, "console"),
        "SIGHTLINE_DATA_DIR": str(workdir / "data"),
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
        "SIGHTLINE_MAX_SESSIONS": "4", "SIGHTLINE_CONSOLE_PORT": str(free_port()),
    }
    settings = Settings.from_env(env)
    db = await Database.open(settings.database_url, settings.data_dir)
    try:  # the tenant's knowledge, embedded as its sessions will search it
        embedder = make_embedder(settings, await stored_models(db.pool, TENANT))
        await KnowledgeBase(db.pool, embedder).ingest_chunks(TENANT, "help/vpn-reset.md", [(
            "vpn#1", "VPN client error 809: reset the VPN client from Settings, Network.")])
        await embedder.aclose()
    finally:
        await db.close()
    return env


@pytest.fixture(scope="module")
async def worker(console_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Worker]:
    async with running_worker(tmp_path_factory.mktemp("worker"), console_env) as worker:
        yield worker


@pytest.fixture(scope="module")
def console(console_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    """`sightline console`, as a user runs it; its URL."""
    assert BUNDLE.is_file(), "the console's script is built by `make install` / `make test`"
    log = tmp_path_factory.mktemp("console-log") / "console.log"
    port = int(console_env["SIGHTLINE_CONSOLE_PORT"])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("sightline")), "console", "--tenant", TENANT],
            env={**os.environ, **console_env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_console_in_a_browser_shares_asks_and_shows_answer_and_assist(
    display: str, worker: Worker, console: str, models: ScriptedModelServer, tmp_path: Path,
) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=False, env={**os.environ, "DISPLAY": display},
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  "--auto-select-desktop-capture-source=Entire screen",
                  "--window-size=1280,800", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 760})
            await page.goto(console)
            await page.click("#start")
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=60_000)
            await expect(page.locator("#share")).to_have_text("Stop sharing", timeout=20_000)
            await expect(page.locator("#media-note")).to_have_text("")
            # no error on the test pattern: the panel says what it will list
            await expect(page.locator("#screen-events-empty")).to_be_visible()
            await asyncio.sleep(3)  # the agent samples the share about once a second
            await page.fill("#chat-input", QUESTION)  # typed, not sent: assist while typing
            await expect(page.locator("#assist-heard")).to_contain_text(
                f"Hearing (typed): “{QUESTION}”", timeout=15_000)
            await page.press("#chat-input", "Enter")
            thinking = page.locator("#messages li.thinking")
            await expect(thinking).to_have_text("Sightline is thinking…", timeout=15_000)
            await expect(page.locator("#assist-heard")).to_contain_text(
                f"Heard (typed): “{QUESTION}”", timeout=15_000)
            answer = page.locator("#messages li.agent.done")
            await expect(answer).to_have_text(ANSWER, timeout=60_000)
            await expect(thinking).to_have_count(0)
            await expect(page.locator("#suggestions li.suggestion").first).to_contain_text(
                "Vpn reset", timeout=10_000)
            await expect(page.locator("#assist-intent")).to_contain_text("troubleshoot_error")
            await expect(page.locator("#cost")).not_to_have_text("$0.000000 · 0 calls",
                                                                 timeout=10_000)
            shot = await page.screenshot(path=str(tmp_path / "console.png"))
            await page.fill("#chat-input", HANDOFF_QUESTION)
            await page.press("#chat-input", "Enter")
            await expect(page.locator("#handoff")).to_have_text(
                f"Handed over to a person: {REASON_LABEL}The user asked for a person.",
                timeout=30_000)
            await expect(page.locator("#messages li.agent.done").last).to_have_text(
                HANDED_OFF, timeout=30_000)
            # leaving says so to LiveKit, so the session ends now (a closed browser is only
            # noticed after LiveKit's timeouts, ~40 s)
            await page.click("#leave")
            await expect(page.locator("#status")).to_have_text("Disconnected", timeout=10_000)
        finally:
            await browser.close()
    answered = [r for r in models.requests if r.purpose == "answer"]
    assert answered and answered[-1].image_count == 1, (
        f"the agent must see the shared screen:\n{worker.log_text()[-3000:]}")
    assert QUESTION in answered[-1].text
    image = Image.open(io.BytesIO(shot)).convert("L")
    assert ImageStat.Stat(image).stddev[0] > 20, "the screenshot is blank"
    assert len(image.getcolors(maxcolors=1 << 16) or []) > 16


@contextlib.contextmanager
def bare_console(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`sightline console` with no LiveKit server or worker behind it (nothing is joined in
    these tests); its process, to stop it, and its URL."""
    if not CHROMIUM.exists():
        pytest.fail("the console test needs Debian's chromium (debian-packages.txt)")
    assert BUNDLE.is_file(), "the console's script is built by `make install` / `make test`"
    with console_process(tmp_path, f"ws://127.0.0.1:{free_port()}") as running:
        yield running


@contextlib.contextmanager
def console_process(workdir: Path, livekit_url: str, **env: str,
                    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`sightline console` on `livekit_url` with `env` added, logging to `workdir`; its process
    and its URL, until it is stopped."""
    port = free_port()
    env = {**os.environ, "LIVEKIT_URL": livekit_url, "LIVEKIT_API_KEY": API_KEY,
           "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_DATA_DIR": str(workdir / "data"), **env}
    with (workdir / "console.log").open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("sightline")), "console", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def start_fails_cleanly(page: Page, errors: list[str], message: str) -> None:
    """Start session was clicked and could not start: the status line says `message` as an
    error, and the button works again (the page is not stuck at "Starting…")."""
    await page.click("#start")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "error", timeout=15_000)
    await expect(status).to_contain_text(message)
    await expect(page.locator("#start")).to_be_enabled()
    assert errors == [], f"uncaught errors in the page: {errors}"


@contextlib.asynccontextmanager
async def page_with_its_errors() -> AsyncIterator[tuple[Page, list[str]]]:
    """A headless Chromium page, and the uncaught errors it throws."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            await browser.close()


async def test_start_with_the_console_server_gone_says_so_and_can_be_retried(
    tmp_path: Path,
) -> None:
    with bare_console(tmp_path) as (proc, url):
        async with page_with_its_errors() as (page, errors):
            await page.goto(url)
            proc.terminate()  # stopped after the page loaded: the request cannot be made
            proc.wait(10)
            await start_fails_cleanly(page, errors, "Could not reach the console server")


PROXY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"


async def test_start_answered_by_a_proxy_page_says_so_and_can_be_retried(
    tmp_path: Path,
) -> None:
    with bare_console(tmp_path) as (_proc, url):
        async with ClientSession() as client:
            async def proxy(request: web.Request) -> web.Response:
                """A reverse proxy in front of the console whose upstream fails on the session
                request: the page and script pass through; the session is its own HTML page."""
                if request.method == "POST":
                    return web.Response(status=502, text=PROXY_PAGE, content_type="text/html")
                async with client.get(url + request.path_qs) as upstream:
                    return web.Response(status=upstream.status, body=await upstream.read(),
                                        content_type=upstream.content_type)

            async with answering(proxy) as proxied, page_with_its_errors() as (page, errors):
                await page.goto(proxied + "/")
                await start_fails_cleanly(page, errors, "The console server answered "
                                          "502 Bad Gateway without a session")


# --- The page against a stand-in agent -----------------------------------------------------
# What the page does with what an agent sends (speech transcripts, an answer cut off, the agent
# leaving, long text) and what the user does (Leave then Start, the browser's own "Stop
# sharing", a question before Sightline joins), without a worker and models: a real
# `sightline console` and a real livekit-server, and in the room a STAND-IN AGENT, a test-owned
# rtc participant of kind agent (as the worker's is) that sends what the test tells it to. The
# console dispatches an agent name no worker serves, so the stand-in is the only agent there.

STAND_IN_AGENT_NAME = "sightline-console-no-worker"
STAND_IN = "stand-in-agent"


@pytest.fixture(scope="module")
def stand_in_console(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[str]:
    """`sightline console` on the test LiveKit server, dispatching an agent no worker serves;
    its URL."""
    assert BUNDLE.is_file(), "the console's script is built by `make install` / `make test`"
    with console_process(tmp_path_factory.mktemp("stand-in-console"), livekit.ws_url,
                         SIGHTLINE_AGENT_NAME=STAND_IN_AGENT_NAME) as (_, url):
        yield url + "/"


REFUSE_SCREEN = """navigator.mediaDevices.getDisplayMedia = () =>
  Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"""
REFUSE_MIC = """{ const ask = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => (c && c.audio)
    ? Promise.reject(new DOMException('Permission denied', 'NotAllowedError')) : ask(c); }"""


@contextlib.asynccontextmanager
async def console_page(display: str | None = None, *, screen: bool = False, mic: bool = True,
                       ) -> AsyncIterator[tuple[Page, list[str]]]:
    """Chromium with fake media devices, and the uncaught errors its page throws. Headless
    unless `display` is given: only a headed browser under Xvfb can answer the screen picker;
    headless, the screen is refused (as a user who cancels the picker). `mic=False`: the
    microphone is refused too."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=display is None,
            env={**os.environ, **({"DISPLAY": display} if display else {})},
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  "--auto-select-desktop-capture-source=Entire screen",
                  "--window-size=1280,800", "--disable-gpu"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 760})
            if not screen:
                await context.add_init_script(REFUSE_SCREEN)
            if not mic:
                await context.add_init_script(REFUSE_MIC)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            await browser.close()


async def join_session(page: Page, url: str) -> str:
    """Start session clicked (on a fresh page when `url` is given); the room it joined."""
    if url:
        await page.goto(url)
    await page.click("#start")
    status = page.locator("#status")
    await expect(status).to_contain_text("waiting for Sightline", timeout=30_000)
    match = re.search(r"console-[0-9a-f]+", await status.text_content() or "")
    assert match, await status.text_content()
    return match.group(0)


class Copies(ChatInbox):
    """The worker's inbox, told how the first `lost` chat streams fare: each is read and then
    lost (never confirmed nor handed on), or, with `late_s`, reaches the inbox that much later.
    `fates` gets what became of each stream (each copy) that came, as it happens."""

    def __init__(self, room: rtc.Room, *, fates: list[str], lost: int, late_s: float = 0.0
                 ) -> None:
        super().__init__(room)
        self.fates, self.lost, self.late_s = fates, lost, late_s
        self._losing: set[asyncio.Task[str]] = set()

    def _on_stream(self, reader: rtc.TextStreamReader, identity: str) -> None:
        if len(self.fates) >= self.lost:
            self.fates.append("to the inbox")
            super()._on_stream(reader, identity)
        elif self.late_s:
            self.fates.append("held back")
            asyncio.get_running_loop().call_later(self.late_s, self._late, reader, identity)
        else:
            self.fates.append("lost")
            reading = asyncio.create_task(reader.read_all())
            self._losing.add(reading)
            reading.add_done_callback(self._losing.discard)

    def _late(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self.fates.append("to the inbox, late")
        super()._on_stream(reader, identity)


async def stand_in_agent(livekit: LiveKitServer, room_name: str, chat: list[str] | None = None,
                         inbox: Callable[[rtc.Room], ChatInbox] = ChatInbox, *,
                         answers: bool = True, state: str | None = None) -> rtc.Room:
    """The STAND-IN AGENT joined to `room_name` (participant kind agent, as the worker's). It
    reads the page's chat with the worker's own inbox (or `inbox`, made for its room), set
    before it joins as the worker's is: each message is confirmed to the page, and what it
    hands on goes to `chat` and is confirmed answered at once (unless not `answers`: a worker
    that dies before its reply). `state`: its `lk.agent.state` as it joins."""
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity(STAND_IN).with_kind("agent")
             .with_grants(api.VideoGrants(room_join=True, room=room_name, agent=True,
                                          can_update_own_metadata=True))
             .with_attributes({"lk.agent.state": state} if state else {})).to_jwt()
    agent = rtc.Room()
    reader = inbox(agent)
    await agent.connect(livekit.ws_url, token)
    page = next(iter(agent.remote_participants))  # the page joined first: join_session

    async def read() -> None:
        async for message in reader.messages(page):
            if chat is not None:
                chat.append(message.text)
            if answers and message.id is not None:
                reader.answered(page, message.id)
    reading = asyncio.create_task(read())
    agent.on("disconnected", lambda _reason: reading.cancel())
    return agent


async def publish(agent: rtc.Room, topic: str, message: dict[str, object]) -> None:
    await agent.local_participant.publish_data(json.dumps(message), reliable=True, topic=topic)


async def speak(agent: rtc.Room) -> rtc.LocalTrackPublication:
    """The stand-in's speech track, as livekit-agents' audio output publishes it."""
    track = rtc.LocalAudioTrack.create_audio_track("roomio_audio", rtc.AudioSource(24000, 1))
    return await agent.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))


async def messages(page: Page) -> list[tuple[str, str]]:
    """The conversation as shown: each bubble's class and text."""
    return [tuple(item) for item in await page.eval_on_selector_all(
        "#messages li", "items => items.map((i) => [i.className, i.textContent])")]


async def test_speech_transcripts_show_who_spoke_one_bubble_per_segment(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """With speech, livekit-agents' own transcription output (the class its RoomIO uses) sends
    the user's words as one whole-text stream per interim guess, then the final text twice, and
    the agent's spoken answer as deltas stamped with the agent's speech track: the page shows one
    bubble for what the user said and one for the answer, each as who said it."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        await expect(page.locator("#mic")).to_have_text("Microphone off", timeout=15_000)
        agent = await stand_in_agent(livekit, room_name)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            user = next(iter(agent.remote_participants.values()))
            await eventually(lambda: bool(user.track_publications), "the page's microphone")
            await speak(agent)  # the answer's transcript is stamped with this track's id
            user_out = _ParticipantTranscriptionOutput(room=agent, is_delta_stream=False,
                                                       participant=user.identity)
            agent_out = _ParticipantTranscriptionOutput(room=agent, is_delta_stream=True,
                                                        participant=None)
            agent_out.set_participant(agent.local_participant.identity)  # as RoomIO does
            for guess in ("why does", "why does the vpn", "why does the vpn fail"):
                await user_out.capture_text(guess)
            user_out.flush()
            await expect(page.locator("#messages li.done").last).to_have_text(
                "why does the vpn fail", timeout=15_000)
            for delta in ("Reset the ", "VPN client ", "from Settings."):
                await agent_out.capture_text(delta)
            agent_out.flush()
            await expect(page.locator("#messages li.done").last).to_have_text(
                "Reset the VPN client from Settings.", timeout=15_000)
            shown = await messages(page)
            assert shown == [
                ("user voice done", "why does the vpn fail"),
                ("agent done", "Reset the VPN client from Settings."),
            ], f"the page shows: {shown}"
            assert errors == []
        finally:
            await agent.disconnect()


async def test_leave_then_start_shows_only_the_new_session(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Everything one session showed (cost, handoff, assist, screen events, its spoken answers'
    audio) is gone when Start session begins the next one; an answer's audio element goes
    when its track does."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            await speak(agent)
            await expect(page.locator("audio")).to_have_count(1, timeout=15_000)
            await publish(agent, "sightline.handoff", {
                "type": "handoff", "version": 1, "session_id": "s1", "user": "u",
                "reason": "The user asked for a person.", "at": 0})
            await publish(agent, "sightline.screen", {
                "type": "screen_error", "version": 1, "t": 12, "at": 0,
                "headline": "Error 809: VPN failed", "lines": [], "fingerprint": "f",
                "region": None})
            await publish(agent, "sightline.assist", {
                "type": "assist", "version": 1, "final": True, "input": "typed",
                "text": "why 809", "intent": {"name": "troubleshoot_error", "score": 0.9},
                "suggestions": [{"title": "Vpn reset", "source": "help/vpn.md", "page": None,
                                 "score": 0.5}]})
            await publish(agent, "sightline.cost", {
                "type": "cost", "version": 1, "total_usd": 0.0421, "model_calls": 7,
                "last": {}})
            await expect(page.locator("#cost")).to_have_text("$0.042100 · 7 calls",
                                                             timeout=15_000)
            await expect(page.locator("#handoff")).to_be_visible()
            await expect(page.locator("#screen-events li")).to_have_count(1)
            await expect(page.locator("#suggestions li")).to_have_count(1)
        finally:
            await agent.disconnect()
        await page.click("#leave")
        await expect(page.locator("#status")).to_have_text("Disconnected", timeout=15_000)
        second = await join_session(page, "")
        assert second != room_name
        await expect(page.locator("#cost")).to_have_text("$0.000000 · 0 calls")
        await expect(page.locator("#handoff")).to_be_hidden()
        await expect(page.locator("#screen-events li")).to_have_count(0)
        await expect(page.locator("#screen-events-empty")).to_be_visible()
        await expect(page.locator("#assist-heard")).to_have_text(
            "What you say or type appears here with its intent.")
        await expect(page.locator("#assist-intent")).to_have_text("")
        await expect(page.locator("#suggestions li")).to_have_count(0)
        await expect(page.locator("audio")).to_have_count(0)
        # in the new session, an answer's audio element goes when its track does
        agent = await stand_in_agent(livekit, second)
        try:
            spoken = await speak(agent)
            await expect(page.locator("audio")).to_have_count(1, timeout=15_000)
            await agent.local_participant.unpublish_track(spoken.sid)
            await expect(page.locator("audio")).to_have_count(0, timeout=15_000)
        finally:
            await agent.disconnect()
        assert errors == []


async def test_the_page_is_the_same_user_in_each_session_and_after_a_reload(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Sightline remembers a user by their identity: the page keeps its user's id in the
    browser, so Leave then Start session, and a reload, join as the same user (and says who);
    a kept id the server would refuse is replaced; another browser profile is another user."""
    async def user_in(page: Page) -> str:
        room_name = await join_session(page, "")
        agent = await stand_in_agent(livekit, room_name)
        try:
            [identity] = [p for p in agent.remote_participants if p != STAND_IN]
        finally:
            await agent.disconnect()
        await expect(page.locator("#who")).to_have_text(f"You are {identity}")
        await page.click("#leave")
        await expect(page.locator("#status")).to_have_text("Disconnected", timeout=15_000)
        return identity

    async with console_page() as (page, errors):
        await page.goto(stand_in_console)
        first = await user_in(page)
        assert re.fullmatch(r"console-user-[0-9a-f]{12}", first), first
        assert await user_in(page) == first
        await page.reload()
        assert await user_in(page) == first
        # an id the server would refuse (storage edited by hand) is replaced, not sent
        await page.evaluate("localStorage.setItem('sightline.console.user', '../x')")
        replaced = await user_in(page)
        assert replaced != first and re.fullmatch(r"console-user-[0-9a-f]{12}", replaced)
        assert errors == []
    async with console_page() as (page, errors):
        await page.goto(stand_in_console)
        assert await user_in(page) != first
        assert errors == []


async def test_the_agent_leaving_says_so_and_closes_the_chat(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Once no agent is left in the room the status line says Sightline left and the chat box
    takes no question nobody would answer; an agent joining again (a replacement) opens it."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                              timeout=15_000)
        await expect(page.locator("#chat-input")).to_be_enabled()
        await agent.disconnect()
        await expect(page.locator("#status")).to_contain_text("Sightline left", timeout=15_000)
        await expect(page.locator("#chat-input")).to_be_disabled()
        await expect(page.locator("#send")).to_be_disabled()
        chat: list[str] = []
        agent = await stand_in_agent(livekit, room_name, chat)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            await page.fill("#chat-input", QUESTION)
            await page.press("#chat-input", "Enter")
            await eventually(lambda: chat == [QUESTION], f"the new agent reads it: {chat}")
        finally:
            await agent.disconnect()
        assert errors == []


async def test_a_question_before_sightline_joins_is_queued_then_sent(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The worker reads the chat once its agent joined: a question typed while the page waits
    for Sightline is shown as queued and goes out, once, when the agent arrives."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        await expect(page.locator("#chat-input")).to_be_enabled()
        await page.fill("#chat-input", QUESTION)
        await page.press("#chat-input", "Enter")
        queued = page.locator("#messages li.user")
        await expect(queued).to_have_count(1)
        await expect(queued).to_have_class(re.compile(r"\bqueued\b"))
        await expect(queued).to_contain_text("queued")
        chat: list[str] = []
        agent = await stand_in_agent(livekit, room_name, chat)
        try:
            await eventually(lambda: chat == [QUESTION],
                             f"the agent reads the question asked before it joined: {chat}")
            await expect(queued).not_to_have_class(re.compile(r"\bqueued\b"), timeout=15_000)
            await expect(queued).to_have_text(QUESTION)
            await page.fill("#chat-input", HANDOFF_QUESTION)
            await page.press("#chat-input", "Enter")
            await eventually(lambda: chat == [QUESTION, HANDOFF_QUESTION],
                             f"later questions go out at once: {chat}")
        finally:
            await agent.disconnect()
        assert errors == []


@dataclass
class Asked:
    """A session in which QUESTION was asked (`asked_through_copies`)."""

    page: Page
    room: str
    agent: rtc.Room
    fates: list[str]  # what became of each copy of it that came: `Copies`


@contextlib.asynccontextmanager
async def asked_through_copies(livekit: LiveKitServer, console_url: str, chat: list[str] | None,
                               *, clock: bool = False, answers: bool = True, **fate: float
                               ) -> AsyncIterator[Asked]:
    """A session whose stand-in agent's inbox is `Copies(**fate)`, QUESTION asked once
    Sightline joined. The page throws no error. `clock`: the page's clock is Playwright's, to
    be run forward with `run_clock`; `answers`: the stand-in's."""
    async with console_page() as (page, errors):
        if clock:
            await page.clock.install()
        room_name = await join_session(page, console_url)
        fates: list[str] = []
        agent = await stand_in_agent(livekit, room_name, chat,
                                     functools.partial(Copies, fates=fates, **fate),
                                     answers=answers)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            await page.fill("#chat-input", QUESTION)
            await page.press("#chat-input", "Enter")
            yield Asked(page, room_name, agent, fates)
        finally:
            await agent.disconnect()
        assert errors == []


async def test_a_question_whose_first_copy_is_lost_is_sent_again_and_handed_on_once(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """LiveKit may drop what is sent to an agent whose connection is not up yet: a question the
    agent never confirms is sent again under its id; the agent hands it on once, confirms it,
    and the page shows it as sent (no label)."""
    chat: list[str] = []
    async with asked_through_copies(livekit, stand_in_console, chat, lost=1) as asked:
        await eventually(lambda: chat == [QUESTION], f"the copy sent again: {chat}")
        await expect(asked.page.locator("#messages li.user")).to_have_text(QUESTION)
        assert asked.fates == ["lost", "to the inbox"]


async def test_a_question_not_confirmed_when_sightline_leaves_goes_to_the_next_agent(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The agent loses the question and leaves: the page says Sightline left and marks the
    question not confirmed. A replacement agent joins: it is sent the question, hands it on
    once and confirms it, and the label goes."""
    async with asked_through_copies(livekit, stand_in_console, None, lost=10) as asked:
        await eventually(lambda: asked.fates == ["lost"], f"the first copy: {asked.fates}")
        async with replaced(livekit, asked, "not confirmed: Sightline left"):
            pass


@contextlib.asynccontextmanager
async def replaced(livekit: LiveKitServer, asked: Asked, left_label: str
                   ) -> AsyncIterator[list[str]]:
    """The stand-in agent leaves: the page says so and labels QUESTION `left_label`. A
    replacement joins, is sent QUESTION, hands it on once and answers it, and the label goes;
    yields what it handed on, then leaves."""
    question = asked.page.locator("#messages li.user")
    await asked.agent.disconnect()
    await expect(asked.page.locator("#status")).to_contain_text("Sightline left", timeout=15_000)
    await expect(question).to_have_text(f"{QUESTION} — {left_label}")
    chat: list[str] = []
    replacement = await stand_in_agent(livekit, asked.room, chat)
    try:
        await eventually(lambda: chat == [QUESTION], f"the replacement gets it: {chat}")
        await expect(question).to_have_text(QUESTION)
        yield chat
    finally:
        await replacement.disconnect()


async def test_a_question_read_but_not_answered_when_sightline_leaves_goes_to_the_next_agent(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The agent reads the question, confirms it, and leaves before answering (a worker that
    died): the page does not send it again while the agent is there, marks it not answered when
    it leaves, and sends it to the replacement agent, which answers it; the label goes, and the
    replacement leaving after its answer marks nothing."""
    chat: list[str] = []
    async with asked_through_copies(livekit, stand_in_console, chat, lost=0, answers=False
                                    ) as asked:
        question = asked.page.locator("#messages li.user")
        await eventually(lambda: chat == [QUESTION], f"the agent reads it: {chat}")
        await asyncio.sleep(4)  # past the page's first wait for a confirmation (3 s)
        assert asked.fates == ["to the inbox"], "confirmed: not sent again"
        await expect(question).to_have_text(QUESTION)
        async with replaced(livekit, asked, "not answered: Sightline left") as answered:
            await asyncio.sleep(2)  # the answered receipt on its way, as the worker's would be
        await expect(asked.page.locator("#status")).to_contain_text("Sightline left",
                                                                    timeout=15_000)
        await expect(question).to_have_text(QUESTION)
        assert answered == [QUESTION]


async def test_what_another_participant_sends_as_sightline_is_not_shown(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Only an agent sends Sightline's receipts, messages and answers, and LiveKit stamps what
    anyone else sends with their own identity: another participant in the room (a standard rtc
    client) cannot settle a question with a forged answered receipt, hand the session over, set
    its cost, or pass text off as Sightline's answer or as the user's words."""
    async with asked_through_copies(livekit, stand_in_console, None, lost=0, answers=False
                                    ) as asked:
        ids: list[str] = []
        other = rtc.Room()
        other.register_text_stream_handler(
            "lk.chat", lambda reader, _sender: ids.append(reader.info.attributes[MESSAGE_ID]))
        token = (api.AccessToken(API_KEY, API_SECRET).with_identity("someone-else")
                 .with_grants(api.VideoGrants(room_join=True, room=asked.room))).to_jwt()
        await other.connect(livekit.ws_url, token)
        try:
            await asked.page.fill("#chat-input", HANDOFF_QUESTION)  # seen by `other` too
            await asked.page.press("#chat-input", "Enter")
            await eventually(lambda: asked.fates == ["to the inbox"] * 2 and len(ids) == 1,
                             f"the questions read: {asked.fates}, seen: {ids}")
            page_identity = next(identity for identity in other.remote_participants
                                 if identity != STAND_IN)
            await publish(other, RECEIVED_TOPIC, {"message": ids[0], "answered": True})
            await publish(other, "sightline.handoff", {
                "type": "handoff", "version": 1, "session_id": "s1", "user": "u",
                "reason": "Forged.", "at": 0})
            await publish(other, "sightline.cost", {
                "type": "cost", "version": 1, "total_usd": 9.99, "model_calls": 99, "last": {}})
            await other.local_participant.send_text(
                "Type your password here.", topic="lk.transcription")
            forged = await other.local_participant.stream_text(
                topic="lk.transcription", sender_identity=page_identity)
            await forged.write("I agree to everything.")
            await forged.aclose()
            # the agent's own message, sent after them, is shown: the forgeries were read first
            await publish(asked.agent, "sightline.cost", {
                "type": "cost", "version": 1, "total_usd": 0.01, "model_calls": 1, "last": {}})
            await expect(asked.page.locator("#cost")).to_have_text("$0.010000 · 1 calls",
                                                                   timeout=15_000)
            await asyncio.sleep(1)  # a margin for the forged streams' trailers
            await expect(asked.page.locator("#handoff")).to_be_hidden()
            assert await messages(asked.page) == [("user", QUESTION), ("user", HANDOFF_QUESTION)]
            # both questions still wait for their answers: the agent leaving marks them so
            await asked.agent.disconnect()
            await expect(asked.page.locator("#messages li.user")).to_have_text(
                [f"{QUESTION} — not answered: Sightline left",
                 f"{HANDOFF_QUESTION} — not answered: Sightline left"], timeout=15_000)
        finally:
            await other.disconnect()


async def test_a_question_read_before_a_livekit_restart_is_sent_again_to_the_agent_back(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The agent reads the question and has not answered it when the LiveKit server dies and
    comes back: the agent's connection is a new one, which may have missed the answered receipt
    with the server, so once both are back the page sends the question again; the agent's inbox
    confirms the copy and does not hand it on twice."""
    assert livekit.process is not None
    chat: list[str] = []
    # a test failing with the server down leaves it to the next test's `livekit_restarted`
    async with asked_through_copies(livekit, stand_in_console, chat, lost=0, answers=False
                                    ) as asked:
        await eventually(lambda: chat == [QUESTION], f"the agent reads it: {chat}")
        livekit.process.crash()
        status = asked.page.locator("#status")
        await expect(status).to_contain_text("lost; reconnecting", timeout=15_000)
        await asyncio.to_thread(livekit.process.start)
        await eventually(lambda: asked.fates == ["to the inbox"] * 2,
                         f"sent again to the agent back: {asked.fates}", 60)
        await expect(status).to_contain_text("Sightline joined", timeout=15_000)
        await expect(asked.page.locator("#messages li.user")).to_have_text(QUESTION)
        assert chat == [QUESTION], "handed on once"


async def test_a_question_confirmed_late_is_sent_again_and_handed_on_once(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The first copy reaches the agent after the page has sent it again (a worker under load):
    both copies come, the agent hands the question on once, and the page shows it as sent."""
    chat: list[str] = []
    async with asked_through_copies(livekit, stand_in_console, chat, lost=1, late_s=8
                                    ) as asked:
        fates = asked.fates
        await eventually(lambda: chat == [QUESTION], f"the copy sent again: {chat}")
        await expect(asked.page.locator("#messages li.user")).to_have_text(QUESTION)
        assert fates[:2] == ["held back", "to the inbox"]  # handed on from the second copy
        await eventually(lambda: fates == ["held back", "to the inbox", "to the inbox, late"],
                         f"the first copy reaches the inbox: {fates}")
        # the inbox hands on in the order messages reach it: this one goes after the copy
        await asked.page.fill("#chat-input", HANDOFF_QUESTION)
        await asked.page.press("#chat-input", "Enter")
        await eventually(lambda: chat == [QUESTION, HANDOFF_QUESTION],
                         f"the late copy is not handed on: {chat}")


async def run_clock(page: Page, seconds: int) -> None:
    """The page's clock run forward (after `page.clock.install()`) a second at a time, each step
    given real time for livekit-client's pings to be answered."""
    for _ in range(seconds):
        await page.clock.run_for(1000)
        await asyncio.sleep(0.1)


async def test_a_question_never_confirmed_is_marked_so_after_its_fourth_copy(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """An agent that loses every copy: the page sends the question four times, each wait for
    its confirmation twice the last (3, 6, 12, 24 s), then marks it not confirmed and sends it
    no more. The page's clock is run forward (Playwright's clock), a second at a time, so that
    livekit-client's pings are still answered in time."""
    async with asked_through_copies(livekit, stand_in_console, None, clock=True, lost=10
                                    ) as asked:
        page, fates = asked.page, asked.fates
        question = page.locator("#messages li.user")
        await eventually(lambda: fates == ["lost"], f"the first copy: {fates}")
        for _ in range(60):  # 45 s of the page's time are enough: a margin over them
            if "not confirmed:" in (await question.text_content() or ""):
                break
            await run_clock(page, 1)
        await expect(question).to_have_text(
            f"{QUESTION} — not confirmed: Sightline may not have it; ask again")
        await run_clock(page, 30)
        assert fates == ["lost"] * 4
        await expect(page.locator("#status")).to_contain_text("Sightline joined")


async def test_an_answer_cut_off_by_the_agent_leaving_is_marked_so(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The agent leaves in the middle of a streamed answer: the half answer says it was cut off,
    and the page throws no error."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                              timeout=15_000)
        writer = await agent.local_participant.stream_text(
            topic="lk.transcription",
            attributes={"lk.transcription_final": "false", "lk.segment_id": "SG_cut"})
        await writer.write("To fix error 809, first open Settings, then ")
        answer = page.locator("#messages li.agent")
        await expect(answer).to_contain_text("first open Settings", timeout=15_000)
        await agent.disconnect()
        await expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=15_000)
        assert errors == [], f"uncaught errors in the page: {errors}"
        await expect(answer).to_have_class(re.compile(r"\binterrupted\b"))
        await expect(answer).not_to_have_class(re.compile(r"\bdone\b"))
        await expect(answer).to_contain_text("cut off")
        await expect(page.locator("#status")).to_contain_text("Sightline left")
        assert errors == []


async def test_sightline_thinking_is_shown_where_its_answer_will_appear(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The agent's state (`lk.agent.state`, the attribute livekit-agents publishes) turns to
    thinking: the conversation's last item says "Sightline is thinking…", and stays last when a
    question is typed meanwhile; it goes when the answer starts streaming, comes back with the
    next thinking, goes when the state changes, and goes when the agent leaves thinking. An
    agent that joins thinking (one back after a reconnection) shows it at once. The conversation
    and the status line have the roles a screen reader announces (log, status)."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        # found by their roles, as a screen reader finds them: the conversation a live log
        indicator = page.get_by_role("log").locator("li.thinking")
        status = page.get_by_role("status")

        async def state(value: str) -> None:
            await agent.local_participant.set_attributes({"lk.agent.state": value})
        try:
            await expect(status).to_contain_text("Sightline joined", timeout=15_000)
            await state("thinking")
            await expect(indicator).to_have_text("Sightline is thinking…")
            await page.fill("#chat-input", QUESTION)
            await page.press("#chat-input", "Enter")
            await expect(page.locator("#messages li.user")).to_have_text(QUESTION)
            assert await messages(page) == [("user", QUESTION),
                                            ("thinking", "Sightline is thinking…")]
            writer = await agent.local_participant.stream_text(
                topic="lk.transcription",
                attributes={"lk.transcription_final": "false", "lk.segment_id": "SG_think"})
            await writer.write("Open Settings.")
            await expect(page.locator("#messages li.agent")).to_have_text("Open Settings.")
            await expect(indicator).to_have_count(0)
            await writer.aclose()
            await state("listening")  # the answer is done; the next question
            await state("thinking")
            await expect(indicator).to_have_count(1)
            await state("speaking")  # an answer spoken: its transcript may come after
            await expect(indicator).to_have_count(0)
            await state("thinking")
            await expect(indicator).to_have_count(1)
        finally:
            await agent.disconnect()
        await expect(status).to_contain_text("Sightline left", timeout=15_000)
        await expect(indicator).to_have_count(0)
        replacement = await stand_in_agent(livekit, room_name, state="thinking")
        try:
            await expect(indicator).to_have_count(1, timeout=15_000)
        finally:
            await replacement.disconnect()
        assert errors == []


async def test_the_chat_box_stays_at_the_foot_of_the_conversation(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """As a chat reads: with few messages the box to type in is at the conversation panel's
    foot, not under them with the panel's rest empty below it; with many, the conversation
    scrolls within its panel, its latest message and the box both in view. Send clicked, the
    cursor is back in the box."""
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        chat: list[str] = []
        agent = await stand_in_agent(livekit, room_name, chat)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            geometry = """() => {
              const box = (id) => document.getElementById(id).getBoundingClientRect();
              const list = document.getElementById('messages');
              return { panel: box('conversation').bottom, chat: box('chat').bottom,
                       aside: document.querySelector('aside').getBoundingClientRect().height,
                       conversation: box('conversation').height, window: innerHeight,
                       list: box('messages'), scrolls: list.scrollHeight > list.clientHeight,
                       last: list.lastElementChild?.getBoundingClientRect() ?? null };
            }"""
            few = await page.evaluate(geometry)
            await page.fill("#chat-input", "question by click")
            await page.click("#send")
            await page.keyboard.type("typed straight after")  # the cursor is back in the box
            await expect(page.locator("#chat-input")).to_have_value("typed straight after")
            await page.fill("#chat-input", "")
            assert few["aside"] > few["conversation"] - 40, "the column beside is as tall"
            assert few["panel"] - few["chat"] < 20, f"space under the chat box: {few}"
            for n in range(30):
                await page.fill("#chat-input", f"question {n}")
                await page.press("#chat-input", "Enter")
            await eventually(lambda: len(chat) == 31, f"read: {len(chat)}")
            many = await page.evaluate(geometry)
            assert many["scrolls"], many
            assert many["panel"] - many["chat"] < 20, f"space under the chat box: {many}"
            assert many["chat"] <= many["window"], f"the chat box is out of view: {many}"
            last, shown = many["last"], many["list"]
            assert shown["top"] <= last["top"] and last["bottom"] <= shown["bottom"] + 1, many
        finally:
            await agent.disconnect()
        assert errors == []


async def test_a_narrow_window_stacks_the_columns(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """A user sharing their screen keeps the console in a narrow window beside what they
    share: below 720 px the live-assist column goes under the conversation, each the window's
    width, and nothing scrolls sideways."""
    async with console_page() as (page, errors):
        await page.set_viewport_size({"width": 420, "height": 800})
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            await page.fill("#chat-input", QUESTION)
            await page.press("#chat-input", "Enter")
            await expect(page.locator("#messages li.user")).to_have_text(QUESTION)
            layout = await page.evaluate("""() => {
              const box = (selector) => document.querySelector(selector).getBoundingClientRect();
              return { scroll: document.documentElement.scrollWidth,
                       width: document.documentElement.clientWidth,
                       conversation: box('#conversation'), aside: box('aside'),
                       cost: box('#cost'), send: box('#send') };
            }""")
            assert layout["scroll"] <= layout["width"], f"scrolls sideways: {layout}"
            conversation, aside = layout["conversation"], layout["aside"]
            assert aside["top"] >= conversation["bottom"], f"side by side: {layout}"
            for column in (conversation, aside):
                assert column["width"] > layout["width"] - 60, f"a narrow column: {layout}"
            for control in (layout["cost"], layout["send"]):
                assert control["right"] <= layout["width"], f"cut off: {layout}"
        finally:
            await agent.disconnect()
        assert errors == []


async def test_long_unbroken_text_wraps_inside_the_window(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """A path in a screen event, a URL in a question and in live assist (OCR'd headlines and
    pasted questions often are one long word) wrap in their column: the page never scrolls
    sideways and the columns keep their share of the window."""
    path = ("C:\\Users\\dana\\AppData\\Local\\Packages\\Microsoft.VPNClient_8wekyb3d8bbwe\\"
            "LocalState\\Logs\\" + "x" * 60 + "\\rasclient-error-809.log")
    url = ("https://vpn.example.com/oauth2/authorize?client_id=9f1c2e3d4b5a6978&redirect_uri="
           "https%3A%2F%2Fportal.example.com%2Fcallback&state=" + "a1b2" * 20)
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        try:
            await expect(page.locator("#status")).to_contain_text("Sightline joined",
                                                                  timeout=15_000)
            widths = ("() => [document.documentElement.scrollWidth, "
                      "document.documentElement.clientWidth, "
                      "document.querySelector('#conversation').getBoundingClientRect().width, "
                      "document.querySelector('aside').getBoundingClientRect().width]")
            _, _, conversation, aside = await page.evaluate(widths)
            await publish(agent, "sightline.screen", {
                "type": "screen_error", "version": 1, "t": 5, "at": 0,
                "headline": f"FileNotFoundError: {path}", "lines": [], "fingerprint": "f",
                "region": None})
            await publish(agent, "sightline.assist", {
                "type": "assist", "version": 1, "final": True, "input": "typed",
                "text": url, "intent": None,
                "suggestions": [{"title": path, "source": url, "page": None, "score": 0.5}]})
            await page.fill("#chat-input", f"why does {url} fail?")
            await page.press("#chat-input", "Enter")
            await expect(page.locator("#screen-events li")).to_have_count(1, timeout=15_000)
            await expect(page.locator("#suggestions li")).to_contain_text("rasclient",
                                                                          timeout=15_000)
            await expect(page.locator("#messages li.user")).to_have_count(1)
            scroll_width, client_width, after_conversation, after_aside = await page.evaluate(
                widths)
            assert scroll_width <= client_width, (
                f"the page scrolls sideways: {scroll_width} px wide in {client_width}")
            # the columns keep their 2:1 share (a page scrollbar may narrow both alike)
            assert abs(conversation / aside - 2) < 0.05
            assert abs(after_conversation / after_aside - 2) < 0.05, (
                f"columns {after_conversation:.0f} and {after_aside:.0f} px wide")
            overflowing = await page.eval_on_selector_all(
                "#messages li, #screen-events li, #suggestions li, #assist-heard",
                "items => items.filter((i) => i.scrollWidth > i.clientWidth)"
                ".map((i) => i.textContent.slice(0, 40))")
            assert overflowing == []
        finally:
            await agent.disconnect()
        assert errors == []


async def test_stopping_the_share_from_the_browser_updates_the_button(
    display: str, livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Chromium's own "Stop sharing" bar ends the capture: LiveKit unpublishes the share, and
    the button offers to share again (and does), the preview emptied."""
    async with console_page(display, screen=True) as (page, errors):
        room_name = await join_session(page, stand_in_console)
        agent = await stand_in_agent(livekit, room_name)
        try:
            await expect(page.locator("#share")).to_have_text("Stop sharing", timeout=20_000)
            user = next(iter(agent.remote_participants.values()))

            def sharing() -> bool:
                return any(p.source == rtc.TrackSource.SOURCE_SCREENSHARE
                           for p in user.track_publications.values())

            await eventually(sharing, "the agent sees the share")
            # what the browser's bar does: the capture track ends
            await page.evaluate("""() => {
              const track = document.querySelector('#preview').srcObject.getVideoTracks()[0];
              track.stop();
              track.dispatchEvent(new Event('ended'));
            }""")
            await eventually(lambda: not sharing(), "the share is unpublished")
            await expect(page.locator("#share")).to_have_text("Share screen", timeout=15_000)
            assert await page.evaluate("() => document.querySelector('#preview').srcObject") is None
            await page.click("#share")
            await expect(page.locator("#share")).to_have_text("Stop sharing", timeout=20_000)
            await eventually(sharing, "clicking Share screen shares again")
        finally:
            await agent.disconnect()
        assert errors == []


async def test_screen_and_microphone_both_refused_are_both_noted(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    async with console_page(mic=False) as (page, errors):
        await join_session(page, stand_in_console)
        note = page.locator("#media-note")
        await expect(note).to_contain_text("Microphone unavailable (NotAllowedError)",
                                           timeout=15_000)
        await expect(note).to_contain_text("Screen not shared (NotAllowedError)")
        await expect(page.locator("#share")).to_have_text("Share screen")
        await expect(page.locator("#mic")).to_have_text("Microphone on")
        assert errors == []


# The screen picker, made to take 3 s by the test: the first three times it opens it stays open
# 3 s (a user choosing a screen), then refuses; later it refuses at once. Each slow one that has
# answered is counted in `window.slowPickersAnswered`, a task after its refusal: once the page
# has done all it does on that refusal.
SLOW_PICKER = """{ let opened = 0;
  window.slowPickersAnswered = 0;
  navigator.mediaDevices.getDisplayMedia = () => new Promise((_, reject) => {
    const refuse = () => reject(new DOMException('Permission denied', 'NotAllowedError'));
    if (++opened > 3) { refuse(); return; }
    setTimeout(() => {
      refuse();
      setTimeout(() => { window.slowPickersAnswered += 1; }, 0);
    }, 3000);
  }); }"""


async def slow_picker_answered(page: Page, times: int) -> None:
    """Waits until the slow screen picker has answered `times` times in all, and the page has
    reacted."""
    await page.wait_for_function(f"() => window.slowPickersAnswered >= {times}",
                                 timeout=30_000)


async def test_a_session_ended_while_the_screen_picker_is_open_does_nothing_more(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """Leave, or the server ending the room, while the screen picker (made to take 3 s by the
    test) is still open: once it answers, the ended session does nothing more (no uncaught
    error), and when Start session began a new session meanwhile, the old one leaves the new
    session's microphone alone (on)."""
    async with console_page() as (page, errors):
        await page.context.add_init_script(SLOW_PICKER)
        status = page.locator("#status")
        # Leave while the picker is open
        await join_session(page, stand_in_console)
        await page.click("#leave")
        await expect(status).to_have_text("Disconnected", timeout=15_000)
        await slow_picker_answered(page, 1)
        assert errors == [], f"uncaught errors in the page after Leave: {errors}"
        await expect(status).to_have_text("Disconnected")
        await expect(page.locator("#start")).to_be_enabled()
        await expect(page.locator("#mic")).to_be_disabled()
        # the server ends the room (an admin, `lk room delete`) while the picker is open
        room_name = await join_session(page, "")
        async with livekit.client() as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        await expect(status).to_have_text("Disconnected", timeout=15_000)
        await slow_picker_answered(page, 2)
        assert errors == [], f"uncaught errors in the page after the room ended: {errors}"
        await expect(page.locator("#start")).to_be_enabled()
        # Leave, then Start session again, while the first session's picker is still open
        first = await join_session(page, "")
        await page.click("#leave")
        await expect(status).to_have_text("Disconnected", timeout=15_000)
        second = await join_session(page, "")  # its picker refuses at once
        assert second != first
        mic = page.locator("#mic")
        await expect(mic).to_have_text("Microphone off", timeout=15_000)  # the new one's is on
        await expect(page.locator("#media-note")).to_contain_text(
            "Screen not shared (NotAllowedError)")
        await slow_picker_answered(page, 3)  # the first session's picker answers now
        await page.evaluate("() => 0")  # a round trip: what the page did meanwhile has arrived
        assert errors == [], f"uncaught errors in the page: {errors}"
        await expect(mic).to_have_text("Microphone off")
        await expect(mic).to_be_enabled()
        await expect(status).to_contain_text(f"Connected to {second}; waiting for Sightline")


async def test_a_lost_connection_says_reconnecting_queues_the_chat_and_sends_it_once_back(
    livekit: LiveKitServer, stand_in_console: str,
) -> None:
    """The LiveKit server dies under a session (SIGKILL) and is started again: the status line
    says the page is reconnecting, a question typed meanwhile is queued, not lost; once the
    page and the agent are back (each reconnects on its own) it goes out, once. Killed again
    and left down: once livekit-client gives up, the status line says the connection could not
    be restored and the question typed meanwhile is marked not sent."""
    assert livekit.process is not None
    async with console_page() as (page, errors):
        room_name = await join_session(page, stand_in_console)
        chat: list[str] = []
        agent = await stand_in_agent(livekit, room_name, chat)
        status = page.locator("#status")
        try:
            await expect(status).to_contain_text("Sightline joined", timeout=15_000)
            livekit.process.crash()
            await expect(status).to_contain_text("lost; reconnecting", timeout=15_000)
            await page.fill("#chat-input", QUESTION)
            await page.press("#chat-input", "Enter")
            asked = page.locator("#messages li.user").last
            await expect(asked).to_contain_text("queued: sent once the connection is back")
            await asyncio.to_thread(livekit.process.start)
            try:
                await eventually(lambda: chat == [QUESTION],
                                 f"the question goes out once both are back: {chat}", 60)
            except AssertionError as missed:  # what the page showed, for a failure to be read
                raise AssertionError(f"{missed}; the page says {await status.text_content()!r}"
                                     f", the question {await asked.text_content()!r}") from None
            await expect(status).to_contain_text("Sightline joined", timeout=15_000)
            await expect(asked).to_have_text(QUESTION)

            livekit.process.crash()
            await expect(status).to_contain_text("lost; reconnecting", timeout=15_000)
            await page.fill("#chat-input", HANDOFF_QUESTION)
            await page.press("#chat-input", "Enter")
            await expect(status).to_contain_text(
                "Disconnected: the connection to LiveKit could not be restored",
                timeout=90_000)
            await expect(page.locator("#messages li.user").last).to_contain_text(
                "not sent: the connection was lost")
            await expect(page.locator("#start")).to_be_enabled()
        finally:
            await agent.disconnect()
            if livekit.process.exit_code() is not None:
                await asyncio.to_thread(livekit.process.start)
        assert chat == [QUESTION]
        assert errors == []
