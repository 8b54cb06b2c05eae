"""The web console in a real browser, end to end.

Debian's Chromium (headed, under Xvfb) with fake media devices and the capture picker
auto-answered, driven by Playwright over CDP (its Python wheel carries its driver; no browser is
downloaded), opens `sightline console` (a real process), which creates the room and dispatches a
real `sightline start` worker on a real `livekit-server`. The page calls getDisplayMedia (answered
by Chromium's fake capture device: a generated test pattern) and getUserMedia (a fake
microphone) and publishes both; a question is typed in the chat box, and the scripted model (the
wire-format server, reached through the real google-genai client) answers.

Protects: the page joins through the console (room, dispatch, token), the agent joins and sees
the shared screen (the model's request carries the image), the answer streams into the page,
the live-assist panel follows the question while it is typed (`sightline.draft`) and once sent,
with the intent and the tenant's matching article, the cost meter moves,
and the page is not blank (a screenshot with real content); asking for a person makes the model
call `handoff_to_human` in the live worker, and the page shows the handoff the room received.
When starting a session fails below the console's own errors (headless Chromium, a real
`sightline console`): the console stopped after the page loaded (the request fails) or a proxy in
front of it answering its own HTML page, the status line says so and **Start session** can be
clicked again, with no uncaught error in the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from conftest import answering, fresh_database
from PIL import Image, ImageStat
from playwright.async_api import Page, async_playwright, expect
from test_cascade import tool_results
from test_user_tools import NO_MEMORY_UPDATE

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
    start_worker,
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
    return ScriptedReply(text=f"[[confidence: 0.95]] {ANSWER}", chunk_delay_s=0.05)


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
    proc = start_worker(tmp_path_factory.mktemp("worker"), console_env)
    yield proc
    await proc.astop()


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
            await expect(page.locator("#assist-heard")).to_contain_text(
                f"Heard (typed): “{QUESTION}”", timeout=15_000)
            answer = page.locator("#messages li.agent.done")
            await expect(answer).to_have_text(ANSWER, timeout=60_000)
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
    port = free_port()
    env = {**os.environ, "LIVEKIT_URL": f"ws://127.0.0.1:{free_port()}",
           "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET,
           "SIGHTLINE_DATA_DIR": str(tmp_path / "data")}
    with (tmp_path / "console.log").open("w") as out:
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
