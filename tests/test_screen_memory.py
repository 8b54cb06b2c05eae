"""Screen memory: what appears on screen is read locally, kept as a timeline, and shapes turns.

Protects: a kept frame's changed regions are read with the bundled Tesseract (changes far apart
each on its own, overlapping boxes once) and only the lines that newly appeared count (a typed
line, an error; a scroll gives the new lines once); error
text becomes one signal per distinct error; under load pending reads coalesce onto the newest
frame, are counted, and the screen watcher never waits; the image policy sends the frame only
when the screen changed (the earlier screenshot stays on its message, the unsent frame is
priced), `always` sends it every time; kept frames are archived on disk within their cap and
`earlier_screen` reaches past the in-memory history; a session writes its reads to the event log
and the timeline, and with SIGHTLINE_PROACTIVE offers help once per new error.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from conftest import (
    assert_bm25_statistics_exact,
    bm25_score,
    lexemes,
    scripted_screen_settings,
)
from livekit.agents import llm
from PIL import ImageFont
from synthetic_screen import CODE, Desk

from agent.config import Settings
from agent.images import ImageEncoder
from agent.screen_context import UNSENT_FRAME, ScreenContext
from agent.session import SessionRuntime
from agent.turn_context import TurnContext
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.screen_timeline import ScreenTimeline, event_row, search_words
from memory.store import Store
from tools.screen_history import ScreenHistoryTools, ShownScreen
from vision.frame_archive import FrameArchive
from vision.frames import SampledFrame, as_i420
from vision.local_change import Box
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, ScreenChange, ScreenWatcher
from vision.screen_signals import find_error, fingerprint
from vision.screen_text import (
    FrameTextReader,
    ScreenText,
    ScreenTextReader,
    SeenLines,
    merged,
)
from vision.track_source import SamplingGate

ERROR_LINE = "KeyError: 'port' in load_settings"


def typed_desk() -> list[Desk]:
    """An editor; a line is typed; then a terminal-style error line appears under it. (Text a
    little larger than the detector tests' desk: PIL's default font is proportional and thin.)"""
    base = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    typed = Desk(width=1280, height=720, pointer=None, cursor_on=False,
                 lines=[*base.lines, "    return summarize(await poll(sensors))"])
    failed = Desk(width=1280, height=720, pointer=None, cursor_on=False,
                  lines=[*typed.lines, "", ERROR_LINE])
    for desk in (base, typed, failed):
        desk.font = ImageFont.load_default(size=20)
    return [base, typed, failed]


def watch_and_read(desks: list[Desk]) -> list[ScreenText]:
    reader = FrameTextReader()
    reads: list[ScreenText] = []

    def on_kept(change: ScreenChange) -> None:
        reads.append(reader.read(change.frame, change.decision))
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None, on_kept=on_kept)
    for t, desk in enumerate(desks):  # each shown for two samples: a typed line is kept once
        screen.offer(2.0 * t, desk.frame())  # it stops growing
        screen.offer(2.0 * t + 1, desk.frame())
    return reads


def test_what_appeared_is_read_and_only_the_new_lines_count() -> None:
    first, typed, failed = watch_and_read(typed_desk())
    assert first.region == (0, 0, 1280, 720) and len(first.lines) >= 10  # the whole screen
    assert any("import asyncio" in line for line in first.lines)
    # the new line and its number in the gutter; just the changed strip was read
    [line] = typed.lines
    assert line.endswith("return summarize(await poll(sensors))"), typed.lines
    assert typed.region[2] < 1280 and typed.region[3] < 100
    [error_line] = failed.lines  # the whole line as shown: its number in the gutter too
    assert error_line.endswith(ERROR_LINE), failed.lines
    error = find_error(failed.lines)
    assert error is not None and error.headline == error_line


def test_changes_far_apart_are_read_apart() -> None:
    """A typed line and the clock far above it: both read, not the screen between them."""
    base, typed, _ = typed_desk()
    typed.clock_s = 3600 + 11 * 60 + 11  # every digit changed
    _, read = watch_and_read([base, typed])
    assert len(read.regions) == 2, read.regions
    assert sum(w * h for _, _, w, h in read.regions) < 0.1 * 1280 * 720
    clock, line = read.lines
    assert clock.endswith("10:11:11") and line.endswith("return summarize(await poll(sensors))")
    assert read.region[1] == read.regions[0][1]  # the box around both, as stored
    assert read.region[3] > 100


def test_overlapping_boxes_are_read_once() -> None:
    # a chain of overlaps is one box; a box apart stays apart; top to bottom
    assert merged([(300, 300, 10, 10), (0, 0, 20, 20), (10, 10, 20, 20), (25, 25, 10, 10)]) == [
        (0, 0, 35, 35), (300, 300, 10, 10)]


def test_a_scroll_gives_the_newly_visible_lines_once() -> None:
    seen = SeenLines()
    page = [f"line {n} of the document" for n in range(30)]
    assert seen.new(page[0:20], t=1.0) == page[0:20]
    assert seen.new(page[10:30], t=2.0) == page[20:30]  # scrolled: only the new ones
    assert seen.new(["Line l2 of  the docurnent"], t=3.0) == []  # OCR jitter: the same line
    assert seen.new(["line 13 of the document!"], t=3.0) == ["line 13 of the document!"]
    assert seen.new(page[0:10], t=500.0) == page[0:10]  # long gone, shown again: new again


def test_errors_are_found_with_a_headline_and_a_fingerprint_per_distinct_error() -> None:
    lines = ["$ python3 app.py", "Traceback (most recent call last):",
             '  File "app.py", line 3, in <module>',
             "json.decoder.JSONDecodeError: Expecting value: line 1 column 5 (char 4)"]
    error = find_error(lines)
    assert error is not None and error.headline == lines[-1]
    assert error.lines == [lines[1], lines[3]]
    again = find_error(["json.decoder.JSONDecodeError: Expecting value: line 9 column 2 (char 8)"])
    assert again is not None and again.fingerprint == error.fingerprint
    assert fingerprint("12:03:44 cat: '/etc/shadow': Permission denied") == (
        "cat: '': permission denied")
    assert fingerprint("20 KeyError: 'port'") == fingerprint("KeyError: 'host'")
    for harmless in (["All 12 tests passed"], ["$ ls -la"], ["error handling is described"]):
        assert find_error(harmless) is None, harmless
    for failing in (["npm ERR! code ELIFECYCLE"], ["fatal: not a git repository"],
                    ["bash: foo: command not found"], ["FAILED tests/test_x.py::test_y"],
                    ["Process exited with code 2"]):
        assert find_error(failing) is not None, failing


async def test_reads_coalesce_under_load_and_the_watcher_never_waits() -> None:
    """One OCR thread, held busy: the kept frames keep coming, the pending reads stay within
    their bound by folding onto the newest frame, and what was folded is counted."""
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    blocker = pool.submit(release.wait)
    results: list[ScreenText] = []
    reader = ScreenTextReader(results.append, executor=pool, max_pending=3)
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None,
                           on_kept=lambda c: reader.submit(c.frame, c.decision))
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    kept = 0
    for t in range(12):  # a new page every second (the lines shift): each frame is kept
        desk.lines = [f"Build {t} finished", *CODE[t:], *CODE[:t]]
        kept += screen.offer(float(t), desk.frame()) is not None
    assert kept == 12 and screen.frames_received == 12  # sampling went on while reads waited
    assert len(reader._pending) <= 3
    release.set()
    blocker.result()
    await reader.drain(timeout_s=30)
    await reader.aclose()
    pool.shutdown()
    stats = reader.stats
    assert stats.submitted == 12 and stats.read + stats.coalesced == 12 and stats.coalesced > 0
    assert sum(r.coalesced for r in results) == stats.coalesced
    assert results[-1].t == 11.0  # the newest screen is always what gets read
    assert any("Build 11 finished" in line for line in results[-1].lines)


def question(ctx: llm.ChatContext, text: str) -> None:
    ctx.add_message(role="user", content=text)


def images(ctx: llm.ChatContext) -> list[llm.ImageContent]:
    return [c for item in ctx.items if item.type == "message" for c in item.content
            if isinstance(c, llm.ImageContent)]


@pytest.mark.parametrize("policy", ["changed", "always"])
async def test_the_image_goes_only_when_the_screen_changed(policy: str) -> None:
    notes: list[dict] = []
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    turn = TurnContext(ScreenContext(screen, policy), note=notes.append)
    base, typed, _ = typed_desk()
    screen.offer(0.0, base.frame())
    ctx = llm.ChatContext.empty()
    question(ctx, "What is this file?")
    first = await turn.build(ctx)
    ctx.add_message(role="assistant", content="A Python module.")
    screen.offer(1.0, base.frame())  # nothing changed on screen
    question(ctx, "And what does poll do?")
    second = await turn.build(ctx)
    ctx.add_message(role="assistant", content="It reads sensors.")
    screen.offer(2.0, typed.frame())  # a line was typed
    question(ctx, "Is the new line right?")
    third = await turn.build(ctx)

    assert len(images(first)) == 1
    if policy == "always":
        assert [n["image"] for n in notes] == ["sent", "sent", "sent"]
        assert len(images(second)) == 1 and images(second)[0].image is not images(first)[0].image
        return
    assert [n["image"] for n in notes] == ["sent", "unchanged", "sent"]
    # the first screenshot stays on the first question, where the second request still has it
    assert images(second)[0].image is images(first)[0].image
    assert second.items[0].content == first.items[0].content  # the same prefix: cacheable
    last = second.items[-1]
    assert any("has not changed since the screenshot captured at t=0.0s" in c
               for c in last.content if isinstance(c, str))
    assert last.extra[UNSENT_FRAME] == [1280, 720]
    _, bill = await ImageEncoder("medium").prepare(second, "gemini")
    assert bill.images == 1 and bill.unsent_tokens == 516  # 1280x720: two Gemini tiles
    # a change: a new screenshot, and only the newest stays attached
    assert len(images(third)) == 1 and images(third)[0].image is not images(first)[0].image
    assert any("no longer attached" in c for c in third.items[0].content if isinstance(c, str))


async def test_a_long_conversation_holds_one_screenshot_not_one_per_question() -> None:
    """Questions keep their captions; only the attached screenshot keeps its frame (a frame is
    1-3 MB: the soak of bench/load.py grew 1.4 MB per question before)."""
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    turn = TurnContext(ScreenContext(screen, "changed"))
    desk = Desk(width=640, height=360, pointer=None, cursor_on=False)
    ctx = llm.ChatContext.empty()
    sent = []
    for t in range(ScreenWatcher.KEPT_HISTORY + 4):  # a new screen before every question
        desk.lines = [f"Step {t}", *CODE[t % 10:]]
        screen.offer(float(t), desk.frame())
        question(ctx, f"And now, at step {t}?")
        sent.append(weakref.ref(images(await turn.build(ctx))[0].image))
        ctx.add_message(role="assistant", content="(scripted) Fine.")
    gc.collect()
    assert sent[-1]() is not None
    assert all(ref() is None for ref in sent[:3]), "detached screenshots are let go"


async def test_a_screenshot_on_an_early_reply_thrown_away_is_sent_again() -> None:
    """livekit-agents starts a reply before the user has finished (preemptive generation) on a
    message of its own; when the words change, that reply and its message are thrown away. The
    screenshot it carried was never seen: the question actually asked carries it, and the next
    one is told the screen has not changed since that one."""
    notes: list[dict] = []
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    turn = TurnContext(ScreenContext(screen, "changed"), note=notes.append)
    base, _, _ = typed_desk()
    screen.offer(0.0, base.frame())
    ctx = llm.ChatContext.empty()
    early = ctx.copy()
    question(early, "Why does the build")
    await turn.build(early)
    question(ctx, "Why does the build fail?")
    asked = await turn.build(ctx)
    ctx.add_message(role="assistant", content="A missing import.")
    screen.offer(1.0, base.frame())  # nothing changed on screen
    question(ctx, "Which import?")
    next_one = await turn.build(ctx)

    assert [n["image"] for n in notes] == ["sent", "sent", "unchanged"]
    assert len(images(asked)) == 1
    assert images(asked)[0] in asked.items[-1].content, "on the question asked"
    assert images(next_one)[0].image is images(asked)[0].image
    _, bill = await ImageEncoder("medium").prepare(next_one, "gemini")
    assert bill.images == 1


async def test_a_full_disk_is_one_warning_for_the_run_of_frames_it_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk refused every frame, one warning each (16 in the demo), and could leave a
    torn image behind; now the first refusal and the recovery are said, the rest counted, and
    nothing torn stays. /dev/full refuses every write with ENOSPC, as a full disk does."""
    archive = FrameArchive(tmp_path / "frames", "s-full", max_bytes=60_000_000)
    archive.directory.mkdir(parents=True)
    desk = Desk(width=640, height=360, pointer=None, cursor_on=False)
    for t in (1.0, 2.0, 3.0):
        (archive.directory / f"{t:010.3f}.jpg").symlink_to("/dev/full")
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        for t in (1.0, 2.0, 3.0, 4.0):
            desk.lines = [f"Deploy {t} done", *CODE]
            archive.save(SampledFrame(desk.frame(), t))
            await archive.aclose()
    assert archive.failed == 3 and archive.times() == [4.0]
    assert sorted(p.name for p in archive.directory.iterdir()) == [f"{4.0:010.3f}.jpg"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("could not archive the frame at t=1.0s (")
    assert said[1] == "archiving frames again at t=4.0s, after 3 that could not be"


async def test_earlier_screen_reaches_the_archive_beyond_the_in_memory_history(
    tmp_path: Path,
) -> None:
    archive = FrameArchive(tmp_path / "frames", "s-archive", max_bytes=60_000_000)
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None,
                           on_kept=lambda c: archive.save(c.frame))
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    desk.font = ImageFont.load_default(size=20)
    for t in range(20):  # a new page every second: each frame is kept
        desk.lines = [f"Deploy {t} done", *CODE[t % 10:], *CODE[:t % 10]]
        screen.offer(float(t), desk.frame())
        await asyncio.sleep(0.05)  # the archive writes in the background, one at a time
    await archive.aclose()
    assert len(screen.changes) == ScreenWatcher.KEPT_HISTORY < 20
    assert archive.times()[0] == 0.0 and len(list((tmp_path / "frames").rglob("*.jpg"))) == len(
        archive.times())
    shown = ShownScreen()
    tools = ScreenHistoryTools(screen, shown, archive)
    said = await tools.earlier_screen(seconds_ago=17)  # now t=19: t=2 is only on disk
    assert "t=2.0s" in said and shown.frame is not None and shown.frame.t == 2.0
    assert shown.frame.size == (1280, 720)
    read = FrameTextReader().read(SampledFrame(as_i420(shown.frame.frame), 2.0),
                                  screen.changes[0].decision)
    assert any("Deploy 2 done" in line for line in read.lines), read.lines

    capped = FrameArchive(tmp_path / "frames", "s-capped", max_bytes=150_000)
    for t in range(6):
        desk.lines = [f"Deploy {t} done", *CODE]
        capped.save(SampledFrame(desk.frame(), float(t)))
        await capped.aclose()
    on_disk = sorted(p.stat().st_size for p in (tmp_path / "frames" / "s-capped").glob("*.jpg"))
    assert sum(on_disk) <= 150_000 and capped.times()[-1] == 5.0 and capped.times()[0] > 0.0


async def _share(screen: ScreenWatcher, desks: list[Desk], seconds: int) -> None:
    """One stream of a share, read as the source's pump reads it: 5 fps whose capture times
    run on the publisher's own clock, each desk shown for an equal part of `seconds`."""
    gate = SamplingGate(screen)
    for n in range(seconds * 5):
        timestamp_us = 7_000_000 + n * 200_000
        if gate(timestamp_us):
            screen.offer(gate.t(timestamp_us), desks[n * len(desks) // (seconds * 5)].frame())
            gate.taken()
        await asyncio.sleep(0.005)  # the archive writes in the background, one at a time


async def test_a_share_made_again_goes_on_in_screen_time(tmp_path: Path) -> None:
    """A user who stops sharing and shares again (or a subscription made again) brings a stream
    whose own clock starts at 0. Screen time started from 0 again while the session kept the
    first share's times: the model was told the new screen had not changed since the first
    share's last screenshot, the archive wrote the new frames over the old ones' files."""
    archive = FrameArchive(tmp_path / "frames", "s-again", max_bytes=60_000_000)
    decisions: list[FrameDecision] = []
    screen = ScreenWatcher(FrameSampler(1.0), decisions.append,
                           on_kept=lambda c: archive.save(c.frame))
    context = ScreenContext(screen, "changed")
    editor = Desk(width=640, height=360, pointer=None, cursor_on=False)
    pages = [Desk(width=640, height=360, pointer=None, cursor_on=False,
                  lines=[f"Page {n} of the manual", *CODE[3 * n:]]) for n in range(4)]

    await _share(screen, pages[:2], 10)
    assert (await context.for_question("q1")).note["image"] == "sent"
    screen.clear()  # the share ended (the source's unsubscription)
    await _share(screen, pages[2:], 10)
    asked = await context.for_question("q2")
    await archive.aclose()

    times = [decision.t for decision in decisions]
    assert times == sorted(set(times)) and times[10] == 10.0, times  # one period on
    assert asked.note["image"] == "sent" and asked.note["screen_t"] == 19.0
    assert archive.times() == [0.0, 5.0, 10.0, 15.0]
    assert sorted(p.name for p in archive.directory.iterdir()) == [
        f"{t:010.3f}.jpg" for t in archive.times()]
    assert archive.load(10.0).size == (640, 360) and archive.failed == 0

    now = [100.0]  # a pause in sharing: the next share's times say how long ago this one was
    paused = ScreenWatcher(FrameSampler(1.0), lambda _d: None, clock=lambda: now[0])
    await _share(paused, [editor], 3)
    now[0] += 300.0
    gate = SamplingGate(paused)
    assert gate.t(1_000) == 300.0 and gate.t(201_000) == 300.2


async def test_the_archive_refuses_a_frame_that_is_not_its_newest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Screen time only grows in a session: a frame at a time the archive holds, or before its
    newest, would overwrite a file or put the oldest-first order out. It is refused and said
    once; the rest are counted."""
    archive = FrameArchive(tmp_path / "frames", "s-order", max_bytes=60_000_000)
    desk = Desk(width=320, height=180, pointer=None, cursor_on=False)
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        for t in (1.0, 2.0, 3.0, 0.0, 3.0, 4.0):
            archive.save(SampledFrame(desk.frame(), t))
            await archive.aclose()
    assert archive.times() == [1.0, 2.0, 3.0, 4.0] and archive.failed == 2
    assert [r.getMessage() for r in caplog.records] == [
        "not archiving the frame at t=0.0s: the archive already took t=3.0s, and screen time "
        "only grows"]


async def test_a_session_records_its_screen_and_offers_help_once_per_new_error(
    settings: Settings, db: Database,
) -> None:
    offers: list[CapturedRequest] = []

    def serve(request: CapturedRequest) -> ScriptedReply:
        offers.append(request)
        return ScriptedReply(text="[[confidence: 0.9]] I see a KeyError; want help with it?")

    async with ScriptedModelServer(serve) as server:
        runtime = await SessionRuntime.open(
            scripted_screen_settings(settings, server.base_url, proactive=True),
            db, tenant="acme", user_id="u-9", source="replay")
        session = runtime.agent_session()
        await session.start(runtime.agent, record=False)
        base, typed, failed = typed_desk()
        for t, desk in enumerate([base, typed, failed, base, failed]):
            for second in (0, 1):  # each screen for two samples: a typed line is kept at once
                runtime.screen.offer(t * 10.0 + second, desk.frame())
                await runtime.screen_settled()
            await asyncio.sleep(0.3)  # the offer of help is spoken meanwhile
        await session.aclose()
        summary = await runtime.close()

    assert len(offers) == 1, "one offer for one distinct error, however often it shows"
    assert offers[0].purpose == "answer" and ERROR_LINE in offers[0].text
    kept = summary["frames"]["kept"]
    assert kept >= 5 and summary["screen"]["reads"] == kept  # every kept frame was read
    assert summary["screen"]["errors"] == 1  # the error showed twice: one screen_error
    assert summary["vs_top_tier"]["user_turns"] == 0  # an offer nobody asked for is not a turn
    timeline = await ScreenTimeline(db.pool, runtime.memory.embedder).session_events(  # type: ignore[union-attr]
        "acme", runtime.session_id)
    assert next(e.t for e in timeline if e.is_error) in (20.0, 21.0)
    assert any(ERROR_LINE in e.text for e in timeline)


async def test_closing_the_archive_does_not_swallow_its_callers_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C cancels the task closing a session; the archive's close, waiting for its last
    write, once suppressed that cancellation and the replay ran on to the end."""
    writing, release = threading.Event(), threading.Event()
    archive = FrameArchive(tmp_path / "frames", "s-cancel", max_bytes=10_000_000)
    real_write = archive._write

    def slow_write(frame: SampledFrame, cover: tuple[Box, ...]) -> int:
        writing.set()
        release.wait(10)
        return real_write(frame, cover)

    monkeypatch.setattr(archive, "_write", slow_write)
    archive.save(SampledFrame(Desk(width=320, height=180).frame(), 1.0))
    closing = asyncio.create_task(archive.aclose())
    await asyncio.to_thread(writing.wait, 10)
    closing.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await closing
    finally:
        release.set()


# what one user's screens showed, each a property of BM25 that ts_rank_cd lacks
SCREENS = {
    "short": ["ECONNREFUSED on port 8080"],  # written before "long": ts_rank_cd ties them
    "rare": ["Traceback: ZeroDivisionError in ratio()"],
    "common": ["WARN retry WARN retry WARN retry WARN"],
    "long": ["ECONNREFUSED on port 8080", *(f"log line {n} of the service" for n in range(12))],
    **{f"warn{n}": [f"WARN disk {n} nearly full"] for n in range(6)},
}


async def _screen_scores(timeline: ScreenTimeline, tenant: str, user: str | None, query: str,
                         ) -> dict[str, float]:
    async with timeline._pool.acquire() as conn:
        rows = await ScreenTimeline._keyword_rows(conn, tenant, user, query, 50)
    return {r["text"]: r["score"] for r in rows}


async def _write_screens(timeline: ScreenTimeline, session_id: str, tenant: str,
                         user: str | None, screens: list[list[str]]) -> None:
    await Store(timeline._pool).start_session(session_id, tenant=tenant, user_id=user,
                                              room=None, source="replay", provider="gemini",
                                              model="m")
    await timeline.write([event_row(
        session_id=session_id, tenant=tenant, user_id=user, t=float(n), wall_time=1.7e9 + n,
        content_type="terminal", reason="local_change", region=(0, 0, 640, 40), lines=lines,
        is_error=False) for n, lines in enumerate(screens)])


async def test_screen_search_ranks_by_bm25_over_the_users_own_screens(db: Database) -> None:
    """A rare word outranks a common one repeated (idf), a short read one with the same match
    and more words (length); the scores are BM25's over the user's screens (another user's or
    tenant's change none of them), and over all the tenant's screens for a tenant-wide search."""
    timeline = ScreenTimeline(db.pool, WordLlamaEmbedder())
    await _write_screens(timeline, "s-1", "acme", "u-1", list(SCREENS.values()))
    query = "ZeroDivisionError WARN ECONNREFUSED"
    scores = await _screen_scores(timeline, "acme", "u-1", query)
    order = sorted(scores, key=lambda text: -scores[text])
    texts = {key: "\n".join(lines) for key, lines in SCREENS.items()}
    assert order.index(texts["rare"]) < order.index(texts["common"])
    assert order.index(texts["short"]) < order.index(texts["long"])
    by_rank_cd = [r["text"] for r in await db.pool.fetch(
        "SELECT text FROM screen_events, to_tsquery('english', 'zerodivisionerror | warn |"
        " econnrefused') q WHERE tsv @@ q ORDER BY ts_rank_cd(tsv, q) DESC, id DESC")]
    assert by_rank_cd.index(texts["common"]) < by_rank_cd.index(texts["rare"])
    assert by_rank_cd.index(texts["long"]) < by_rank_cd.index(texts["short"])
    searched = await timeline.search("acme", query, user_id="u-1", k=3)
    assert texts["rare"] in [e.text for e in searched]

    async def expected(scope: list[str]) -> dict[str, float]:
        docs = {text: await lexemes(db.pool, search_words(text)) for text in scope}
        words = await lexemes(db.pool, search_words(query))
        return {text: score for text, doc in docs.items()
                if (score := bm25_score(words, doc, list(docs.values()))) > 0}
    assert scores == pytest.approx(await expected(list(texts.values())), rel=1e-9)

    others = [[f"ZeroDivisionError ZeroDivisionError WARN {n}"] for n in range(15)]
    await _write_screens(timeline, "s-2", "acme", "u-2", others)
    await _write_screens(timeline, "s-3", "globex", "u-1", others)
    await _write_screens(timeline, "s-4", "acme", None, [["ECONNREFUSED again"]])
    assert await _screen_scores(timeline, "acme", "u-1", query) == scores
    acme = [*texts.values(), *("\n".join(lines) for lines in others), "ECONNREFUSED again"]
    tenant_wide = await _screen_scores(timeline, "acme", None, query)
    assert tenant_wide == pytest.approx(await expected(acme), rel=1e-9)


async def test_screen_statistics_stay_exact_through_writes_and_deletes(db: Database) -> None:
    """Writes (one with no user), a user forgotten, a session deleted (its events go by
    cascade): the statistics always equal a recount; the words are never rewritten in place."""
    timeline = ScreenTimeline(db.pool, WordLlamaEmbedder())
    for session_id, tenant, user in (("s-1", "acme", "u-1"), ("s-2", "acme", "u-1"),
                                     ("s-3", "acme", "u-2"), ("s-4", "globex", "u-1"),
                                     ("s-5", "acme", None), ("s-6", "acme", None)):
        await _write_screens(timeline, session_id, tenant, user, [
            [f"{session_id}: KeyError port {n}"] for n in range(3)] + [["pytest passed"]])
    await assert_bm25_statistics_exact(db.pool, "screen_bm25", "screen_events",
                                       "tenant, user_id")
    assert await db.pool.fetchval(
        "SELECT docs FROM screen_bm25_terms WHERE tenant = 'acme' AND user_id IS NULL"
        " AND lexeme = 'keyerror'") == 6
    await Store(db.pool).forget_user("acme", "u-2")
    await db.pool.execute("DELETE FROM sessions WHERE id IN ('s-1', 's-5')")
    await assert_bm25_statistics_exact(db.pool, "screen_bm25", "screen_events",
                                       "tenant, user_id")
    with pytest.raises(asyncpg.RaiseError, match=re.escape("not updated in place")):
        await db.pool.execute("UPDATE screen_events SET words = 'modem'")
    with pytest.raises(asyncpg.RaiseError, match=re.escape("not updated in place")):
        await db.pool.execute("UPDATE screen_events SET user_id = 'u-9'")
    await db.pool.execute("UPDATE screen_events SET is_error = true")  # the rest may change
    await assert_bm25_statistics_exact(db.pool, "screen_bm25", "screen_events",
                                       "tenant, user_id")
