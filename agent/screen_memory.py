"""A session's screen memory: each kept frame archived on disk and read into text, what appeared
recorded as events and written to the user's screen timeline, and new errors signalled.

The text is read with every secret's value hidden (passwords, keys, tokens, card numbers;
memory/secret_text.py), on the reading thread: no text the session keeps (the event log, the
timeline that later sessions search, the story each question's digest is made from) holds one.
The archived frames, for this session to look back at, have the lines that held one covered
from the read that found them until a read of that part of the screen finds none; they are
pruned after `SIGHTLINE_FRAME_RETENTION_DAYS`. The screenshot a question sends and a closer look
are covered the same way (`cover_at`), once the reads up to their frame are done.

The screen watcher hands every kept frame to `on_kept` (on the event loop; both the archive and
the reader return at once and work off the loop). Each read that comes back is a `screen_text`
event in the session's log; one that found new lines is also a row of the screen timeline
(through a bounded writer that spills during a database outage, like messages) and goes into
`story`, the session's recent screen text that each question's digest is made from. (A session
without the database, `timeline` None, appends those rows straight to its spill file, as its
conversation does; the spill import writes them to the timeline once Postgres is back.) A read
whose new lines hold an error the session has not seen yet is a `screen_error` event and goes to the
`error_listeners` (the room's data topic, the proactive offer of help). The errors seen are
remembered by fingerprint, the most recent `ERRORS_REMEMBERED` of them: a long session showing
ever new errors must not grow without bound, and one forgotten that long ago may be offered again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from memory.screen_timeline import ScreenTimeline, event_row
from memory.secret_text import hide_secrets
from memory.spill_files import SpillKind, append_rows, spill_path
from memory.writer import BackgroundWriter
from vision.cpu_gate import CpuGate
from vision.frame_archive import FrameArchive, prune
from vision.screen import ScreenChange
from vision.screen_signals import ScreenError
from vision.screen_text import (
    RedactedOnScreen,
    ScreenCover,
    ScreenText,
    ScreenTextReader,
    hurry_pool,
    shared_pool,
)

from .config import Settings
from .event_log import EventLog

log = logging.getLogger("sightline.screen")

STORY_READS = 200  # recent reads kept in memory for the digest and the tools
DRAIN_S = 5.0  # how long a closing session waits for its pending reads
SETTLE_S = 30.0  # how long a replay waits for a kept frame's read, or for the timeline rows
ERRORS_REMEMBERED = 256  # distinct error fingerprints a session remembers as seen

ErrorListener = Callable[[ScreenError, ScreenText], None]


class SessionScreenMemory:
    def __init__(
        self, settings: Settings, events: EventLog, *, session_id: str, tenant: str,
        user_id: str, timeline: ScreenTimeline | None, spill_dir: Path,
        read_gate: CpuGate | None = None,
    ) -> None:
        self._events = events
        self._who = {"session_id": session_id, "tenant": tenant, "user_id": user_id}
        self.story: deque[ScreenText] = deque(maxlen=STORY_READS)
        self.archive = FrameArchive(settings.frames_dir, session_id,
                                    settings.frame_archive_mb * 2**20)
        self.reader = (ScreenTextReader(
            self._on_text, executor=shared_pool(settings.ocr_threads),
            hurry_executor=hurry_pool() if settings.cover_hurry else None,
            gate=read_gate, redact=hide_secrets) if settings.screen_text else None)
        self._spill = spill_path(spill_dir, session_id, SpillKind.SCREEN_EVENTS)
        self._writer = (BackgroundWriter("screen_events", timeline.write, self._spill)
                        if timeline is not None else None)
        self._kept_offline = 0  # rows appended to the spill file by a session without Postgres
        self._errors_seen: OrderedDict[str, None] = OrderedDict()  # oldest seen first
        self._secrets_shown = RedactedOnScreen()  # covered in the archived frames
        self._cover_wait_s = settings.cover_wait_s
        self.error_listeners: list[ErrorListener] = []
        self._prune = asyncio.create_task(
            asyncio.to_thread(prune, settings.frames_dir, settings.frame_retention_days),
            name="frame-archive-prune")

    async def cover_at(self, t: float) -> ScreenCover:
        """Where the screen at time `t` shows what its text's reader hid: covered in the
        screenshot a question sends, in a closer look and in an earlier screen shown again (as
        the reads up to `t` left it, `RedactedOnScreen.at`), as in the archived frames. A
        frame kept moments before `t` may not be read yet (a read takes ~0.2-1 s): the reads up
        to `t` are waited for, `SIGHTLINE_COVER_WAIT_S` at most, so a line that appeared just
        before the question is covered too; those still not done are counted. A read that waits its
        turn (the process's OCR threads busy with other sessions' reads, or its CPU gate
        holding reads back while the machine is busy) is not waited for: with bench/load.py at
        30 sessions, waiting for those took the replies' p95 overhead from 159 to 699 ms, and
        half of them did not come in time anyway. With SIGHTLINE_COVER_HURRY a small one is
        hurried past them instead (README: Many sessions per worker)."""
        if self.reader is None:  # nothing is read, so nothing is known to cover
            return ScreenCover()
        started = time.perf_counter()
        unread, hurried, held = await self.reader.read_through(t, self._cover_wait_s)
        return ScreenCover(self._secrets_shown.at(t), unread,
                           round((time.perf_counter() - started) * 1000, 1), hurried, held)

    def on_kept(self, change: ScreenChange) -> None:
        """A kept frame: archive it and read its changed region (both off the loop)."""
        self.archive.save(change.frame)
        if self.reader is not None:
            self.reader.submit(change.frame, change.decision)

    def _on_text(self, read: ScreenText) -> None:
        if self._secrets_shown.after(read):  # from the oldest frame it read for (folded)
            self.archive.cover(read.since, self._secrets_shown.boxes)
        error = read.error  # worked out once here, kept on the read for every later digest
        self._events.record("screen_text", detail={
            "t": read.t, "reason": read.reason, "content_type": read.content_type,
            "regions": [list(box) for box in read.regions], "lines": read.lines,
            "lines_read": read.lines_read, "cpu_ms": read.cpu_ms, "coalesced": read.coalesced,
            "waited_ms": read.waited_ms, "forced": read.forced,
            **({"hurried": True} if read.hurried else {}),
            **({"secrets_hidden": dict(read.hidden)} if read.hidden else {})})
        if not read.lines:
            return
        self.story.append(read)
        row = event_row(**self._who, t=read.t, wall_time=read.wall_time,
                        content_type=read.content_type, reason=read.reason,
                        region=read.region, lines=read.lines, is_error=error is not None)
        if self._writer is not None:
            self._writer.put(row)
        elif append_rows(self._spill, [row]) is not None:
            self._kept_offline += 1
        if error is None or not self._first_seen(error.fingerprint):
            return
        self._events.record("screen_error", detail={
            "t": read.t, "headline": error.headline, "lines": error.lines,
            "fingerprint": error.fingerprint})
        for listener in self.error_listeners:
            try:
                listener(error, read)
            except Exception:  # an app's listener must not stop the screen memory
                log.exception("a screen-error listener failed")

    def _first_seen(self, fingerprint: str) -> bool:
        """Whether this error is new to the session; either way it is now the latest seen."""
        if fingerprint in self._errors_seen:
            self._errors_seen.move_to_end(fingerprint)
            return False
        self._errors_seen[fingerprint] = None
        if len(self._errors_seen) > ERRORS_REMEMBERED:
            self._errors_seen.popitem(last=False)
        return True

    async def read(self) -> None:
        """The kept frames so far are read (replay waits here after each: in a live session,
        the second between samples gives the reader that time)."""
        if self.reader is not None:
            await self.reader.drain(timeout_s=SETTLE_S)

    async def written(self) -> None:
        """What the reads so far found is in the screen timeline, which a question's recall
        searches (replay waits here before each question: a live question comes seconds
        after the screen it asks about)."""
        if self._writer is not None:
            await self._writer.settled(timeout_s=SETTLE_S)

    async def aclose(self) -> int:
        """Finish the pending reads and writes; returns the timeline rows spilled to disk."""
        if self.reader is not None:
            await self.reader.aclose(DRAIN_S)
            stats = self.reader.stats
            self._events.record("screen_reader", detail={
                "submitted": stats.submitted, "read": stats.read, "coalesced": stats.coalesced,
                "failed": stats.failed, "undelivered": stats.undelivered,
                "abandoned": stats.abandoned, "waited_s": round(stats.waited_ms / 1000, 1),
                "forced": stats.forced, "hurried": stats.hurried,
                "secrets_hidden": stats.secrets_hidden,
                "archived_frames": len(self.archive.times()),
                "archive_replaced": self.archive.replaced, "archive_failed": self.archive.failed,
                "archive_unremoved": self.archive.unremoved})
        await self.archive.aclose()
        try:
            await self._prune
        except OSError as exc:  # old frames stay for the next session to prune
            log.warning("could not prune old archived frames: %r", exc)
        return await self._writer.close() if self._writer is not None else self._kept_offline
