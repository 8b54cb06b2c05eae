"""What appeared on screen, as text: the changed region of each kept frame, read locally, and
only the lines that were not on screen before.

A kept frame's decision says where the content changed since the last kept frame, as the few
separate areas it fell in (`ChangeDecision.regions`: a typed line and a clock far above it are
two). `changed_boxes` pads each to whole glyphs; `plan_read` narrows each to the band that
scrolled into view when its content only moved (a terminal printing output, a page scrolled:
phase correlation against the frame read before), takes the whole frame when most of it changed,
and widens it to the whole text lines it touches; `vision.ocr` reads each box;
`SeenLines` keeps what is new: a typed line, an error, a dialog's text, output lines. A page
change reads the new view once, and the lines that were already on screen drop out, so only the
newly visible ones count. Two reads of
one line can differ in what OCR confuses (`l`/`1`/`I`, `O`/`0`, `rn`/`m`, spacing); lines are
compared in a canonical form that folds exactly those, so such jitter is not a new line while a
line that differs in any other character (the next step of a log) is.

`ScreenTextReader` runs this off the event loop. `submit` is called on the loop for each kept
frame and returns at once: pending reads are bounded and coalesce (a read of a region that
overlaps a pending one replaces it, on the newest frame, with the union of both regions; past
`max_pending`, everything pending folds into one read of the newest frame), so sampling never
waits and the latest screen is always what gets read. One task per session takes the reads in
order (the new-line diff depends on it) and hands them to a thread pool shared by the process;
each thread owns one Tesseract engine. A small read a question waits for (`read_through`: its
screenshot has the secrets those reads find covered) is hurried: it skips the pool's queue and
the CPU gate for a lane of its own. What was folded away is counted, and so is what a closing
session did not wait for. A read the session fails to take (its `on_text` raising) is counted
and logged in one line, and reading goes on: one bad read must not end the session's screen
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property

import cv2
import numpy as np
from setproctitle import setthreadtitle

from .change import ChangeDecision
from .content_type import ContentType
from .cpu_gate import UNGATED, CpuGate, GateWait
from .frames import SampledFrame
from .local_change import Box
from .luma import luma_plane
from .ocr import Layout, TextLine, thread_engine
from .screen_signals import ScreenError, find_error

log = logging.getLogger("sightline.screen_text")

PAD_X, PAD_Y = 16, 4  # frame pixels around a changed region: whole glyphs, not the next line
MIN_SCROLL_PX = 48  # a region this small is read whole rather than checked for a scroll
SCROLL_RESPONSE = 0.25  # phase correlation's peak strength for a real shift
SCROLL_MISMATCH = 0.05  # share of a row's text pixels that may differ once shifted back
MIN_CHANGED_ROW_PX = 8  # pixels of a row that differ after the shift: a real change, not codec
SCROLL_ROWS_MATCH = 0.85  # share of the rows with text that must match once shifted back
NEAR_BAND_PX = 96  # changed rows this close to the scrolled-in band are read with it
SCROLL_BAND_EXTRA = 28  # and one more line of it: an editor fills blank rows as it scrolls
INK_GAP = 48  # frame pixels of blank between words of one line (a few characters' width)
INK_CONTRAST = 48  # luma levels from the background that count as text
PAGE_SHARE = 0.4  # a change this large (of the frame's area) is read as a whole page
SEEN_FOR_S = 300.0  # a line seen on screen within this long is not new when it shows again
SEEN_LIMIT = 4000
_CONFUSABLE = str.maketrans({"1": "l", "I": "l", "|": "l", "!": "l", "i": "l", "0": "o",
                             "O": "o", "‘": "'", "’": "'", "`": "'", "“": '"', "”": '"'})


def changed_boxes(regions: tuple[Box, ...], size: tuple[int, int]) -> list[Box]:
    """The changed regions, each padded to whole glyphs, those that then overlap joined (the
    whole frame when none is known)."""
    width, height = size
    if not regions:
        return [(0, 0, width, height)]
    padded = []
    for x, y, w, h in regions:
        x0, y0 = max(0, x - PAD_X), max(0, y - PAD_Y)
        x1, y1 = min(width, x + w + PAD_X), min(height, y + h + PAD_Y)
        padded.append((x0, y0, x1 - x0, y1 - y0))
    return merged(padded)


@dataclass(frozen=True)
class Scroll:
    """A region's content moved vertically by `shift` rows (negative: up); `changed` are the
    rows that also changed besides moving (a command typed, then Enter), edges left out."""

    shift: int
    changed: np.ndarray


def scroll_shift(before: np.ndarray, after: np.ndarray) -> Scroll | None:
    """How the content of a region moved vertically between two frames, when it mostly just
    moved: phase correlation of the two crops at half resolution, checked by comparing the
    overlap once shifted back (on the text's pixels: text is a small share of the area)."""
    height, width = after.shape
    if height < MIN_SCROLL_PX or width < MIN_SCROLL_PX:
        return None
    half = (width // 2, height // 2)
    a, b = (cv2.resize(crop.astype(np.float32), half, interpolation=cv2.INTER_AREA)
            for crop in (before, after))
    (dx, dy), response = cv2.phaseCorrelate(a, b)
    shift = round(dy * 2)
    if response < SCROLL_RESPONSE or abs(dx) > 1 or abs(shift) < 2 or abs(shift) >= height:
        return None
    top = max(0, shift)  # the overlap's first row, in `after`
    moved = after[top:height + min(0, shift)].astype(np.int16)
    source = before[max(0, -shift):height - max(0, shift)].astype(np.int16)
    background = np.median(moved)
    ink = ((np.abs(moved - background) > INK_CONTRAST)
           | (np.abs(source - background) > INK_CONTRAST)).sum(axis=1)
    differs = (np.abs(moved - source) > INK_CONTRAST).sum(axis=1)
    # judged row by row, on the text's pixels: a fixed header, the prompt or a cursor differ
    # on a few rows while the rest of the text matches once shifted back
    text_rows = ink > 0
    changed = text_rows & (differs > np.maximum(MIN_CHANGED_ROW_PX, SCROLL_MISMATCH * ink))
    if np.count_nonzero(changed) > (1 - SCROLL_ROWS_MATCH) * max(1, np.count_nonzero(text_rows)):
        return None
    rows = np.flatnonzero(changed)
    edge = 2 * PAD_Y  # the region's borders cut through glyphs that moved across them
    rows = rows[(rows >= edge) & (rows < len(changed) - edge)]
    return Scroll(shift, top + rows)


def layout_for(content: ContentType) -> Layout:
    """Documentation is read as a page (it has columns); everything else as a block, which
    keeps a terminal's or an editor's lines whole."""
    return Layout.PAGE if content is ContentType.DOCS else Layout.BLOCK


def plan_read(before: np.ndarray | None, luma: np.ndarray, box: Box) -> Box:
    """What to read of a changed box: when its content only scrolled, just the band that
    scrolled into view; else the whole frame when most of it changed; widened to the whole
    text lines it touches."""
    x, y, w, h = box
    height, width = luma.shape
    scroll = None
    if before is not None and before.shape == luma.shape:
        scroll = scroll_shift(before[y:y + h, x:x + w], luma[y:y + h, x:x + w])
    if scroll is not None:  # new rows at the bottom (content moved up) or at the top (down)
        band = abs(scroll.shift) + 2 * PAD_Y + SCROLL_BAND_EXTRA
        first, last = (h - band, h) if scroll.shift < 0 else (0, band)
        # and the lines next to it that changed as they moved (the command above its output)
        near = scroll.changed[(scroll.changed >= first - NEAR_BAND_PX)
                              & (scroll.changed < last + NEAR_BAND_PX)]
        if near.size:
            first = min(first, int(near[0]) - PAD_Y)
            last = max(last, int(near[-1]) + 1 + PAD_Y)
        y, h = y + max(0, first), min(h, last) - max(0, first)
    elif w * h >= PAGE_SHARE * width * height:
        return 0, 0, width, height
    x0, x1 = _line_extent(luma[y:y + h], x, x + w)
    return x0, y, x1 - x0, h


def _line_extent(band: np.ndarray, x0: int, x1: int) -> tuple[int, int]:
    """Widen [x0, x1) over the text on the same rows: a line whose start did not change (a
    scrolled line with the same prefix as the one before it) is still read whole. Text goes
    on while ink is never more than `INK_GAP` pixels away; other windows beyond a wider gap
    stay out."""
    background = np.median(band)
    ink = np.flatnonzero((np.abs(band.astype(np.int16) - background) > INK_CONTRAST).any(0))
    if ink.size == 0:
        return x0, x1
    left = ink[ink < x0]
    while left.size and x0 - left[-1] <= INK_GAP:
        x0 = int(left[-1])
        left = left[:-1]
    right = ink[ink >= x1]
    while right.size and right[0] - x1 <= INK_GAP:
        x1 = int(right[0]) + 1
        right = right[1:]
    return max(0, x0 - PAD_X), min(band.shape[1], x1 + PAD_X)


def merged(boxes: list[Box]) -> list[Box]:
    """The boxes with every overlapping pair replaced by its union, until none overlap (so no
    line is read twice), top to bottom."""
    apart: list[Box] = []  # no two of these overlap
    for box in boxes:
        while (hit := next((other for other in apart if overlaps(other, box)), None)):
            apart.remove(hit)
            box = union(box, hit)
        apart.append(box)
    return sorted(apart, key=lambda box: (box[1], box[0]))


def bounds(boxes: Iterable[Box]) -> Box:
    """The box around all of `boxes`."""
    return functools.reduce(union, boxes)


def union(a: Box, b: Box) -> Box:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def normalized(text: str) -> str:
    return " ".join(text.split())


def canonical(text: str) -> str:
    """A line as it compares with another read of it: OCR's usual confusions folded, case,
    spacing and underscores (often read as spaces) ignored."""
    return "".join(text.translate(_CONFUSABLE).lower().replace("rn", "m").replace("_", "")
                   .split())


class SeenLines:
    """The lines read on this screen lately, so that only new ones count as appeared."""

    def __init__(self, seen_for_s: float = SEEN_FOR_S, limit: int = SEEN_LIMIT) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()  # canonical line -> last seen
        self._seen_for_s, self._limit = seen_for_s, limit

    def new(self, lines: list[str], t: float) -> list[str]:
        """The lines of one read that were not on screen lately, in order; all of them are
        remembered as seen at `t`."""
        added = []
        for line in dict.fromkeys(normalized(text) for text in lines if text.strip()):
            key = canonical(line)
            last = self._seen.pop(key, None)
            if last is None or t - last > self._seen_for_s:
                added.append(line)
            self._seen[key] = t
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return added


@dataclass(frozen=True)
class ScreenText:
    """What one read found: the lines that appeared in a region of a kept frame."""

    t: float  # screen time of the frame read
    wall_time: float  # when that frame was kept (epoch seconds)
    reason: str  # why the detector kept it
    content_type: str
    regions: tuple[Box, ...]  # the boxes read, top to bottom
    lines: list[str]  # the lines that appeared, top to bottom
    lines_read: int
    cpu_ms: float  # the read's CPU time on its thread
    coalesced: int  # earlier reads folded into this one
    waited_ms: float = 0.0  # how long the read waited for the machine to have CPU to spare
    forced: bool = False  # it started after the longest wait, the machine still busy
    hidden: Mapping[str, int] = field(default_factory=dict)  # redacted in the lines read, by kind
    redacted: tuple[Box, ...] = ()  # the boxes of the lines read that `redact` changed
    hurried: bool = False  # a question waited for it (`ScreenTextReader.read_through`)
    first_t: float | None = None  # the oldest kept frame it reads for, when one folded in

    @property
    def since(self) -> float:
        """The screen time of the oldest kept frame this read stands for: what it found may
        have been on screen from then on (a frame whose own read was folded into it)."""
        return self.t if self.first_t is None else self.first_t

    @property
    def region(self) -> Box:
        """The box around everything read."""
        return bounds(self.regions)

    @cached_property
    def error(self) -> ScreenError | None:
        """The error among the lines that appeared, if any. Worked out once, when the session
        first asks (as the read arrives), and kept: every question's digest looks at the
        session's recent reads (up to 200), and the error pattern over all their lines took
        10-130 ms of the event loop per question."""
        return find_error(self.lines)


class RedactedOnScreen:
    """Where the screen shows what the reader's `redact` took out of its text, as far as the
    reads tell. A part of the screen that does not change is not read again, so a secret in it
    is in every frame kept after it: the frame archive covers these boxes
    (vision/frame_archive.py `cover`). Each read replaces what it re-read (the boxes its
    regions overlap) with the lines it redacted there. The boxes are remembered by screen time
    too (`at`): an earlier frame shown again is covered as the screen was then, so a secret
    since closed or scrolled away is still covered in a frame that showed it."""

    HISTORY = 256  # changes remembered by screen time: far more than the frames held to show

    def __init__(self) -> None:
        # (the oldest frame the read stands for, the boxes from then on), in the order the
        # reads came (`ScreenTextReader` reads one after another)
        self._history: deque[tuple[float, tuple[Box, ...]]] = deque(maxlen=self.HISTORY)

    @property
    def boxes(self) -> tuple[Box, ...]:
        """The boxes as the reads so far left them."""
        return self._history[-1][1] if self._history else ()

    def after(self, read: ScreenText) -> bool:
        """Take in `read`; whether the boxes changed."""
        boxes = tuple(box for box in self.boxes
                      if not any(overlaps(box, region) for region in read.regions))
        boxes += read.redacted
        changed = boxes != self.boxes
        if changed:
            self._history.append((read.since, boxes))
        return changed

    def at(self, t: float) -> tuple[Box, ...]:
        """The boxes as the reads of the frames up to screen time `t` left them: those after
        the last change whose read stands for a frame kept at or before `t` (a folded read
        stands for its oldest frame, so the frames between are covered by what it found); for
        a time before the oldest change remembered, every box remembered (covering too much
        rather than too little)."""
        for since, boxes in reversed(self._history):
            if since <= t:
                return boxes
        if len(self._history) < self.HISTORY:
            return ()
        return tuple(dict.fromkeys(box for _, boxes in self._history for box in boxes))


@dataclass(frozen=True)
class ScreenCover:
    """What to cover in a screenshot of the screen at some time: the boxes of the lines whose
    text held a secret, once the reads of the frames kept up to then were waited for; how many
    of those reads were still not done when the wait ended (their lines show as shared), how
    long it waited, how many reads it hurried, and whether it ended because a read too large to
    hurry was waiting its turn (`ScreenTextReader.read_through`)."""

    boxes: tuple[Box, ...] = ()
    unread: int = 0
    waited_ms: float = 0.0
    hurried: int = 0
    held: bool = False


CoverAt = Callable[[float], Awaitable[ScreenCover]]  # what to cover in a screenshot of time t


async def nothing_to_cover(_t: float) -> ScreenCover:
    """For a screen without a text reader: nothing is known to hide."""
    return ScreenCover()


@dataclass
class _Read:
    frame: SampledFrame
    decision: ChangeDecision
    boxes: list[Box]  # what changed, padded (what coalescing compares)
    wall_time: float
    coalesced: int = 0
    first_t: float = field(init=False)  # the oldest kept frame it reads for (older ones fold in)
    # a question waits for it: set on the loop (`asked`) and for the reading thread (`hurry`)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)  # in the OCR engine

    def __post_init__(self) -> None:
        self.first_t = self.frame.t

    @property
    def small(self) -> bool:
        """Small enough to hurry: its changed boxes cover at most `HURRY_MAX_SHARE` of the
        frame."""
        width, height = self.frame.size
        return sum(w * h for _x, _y, w, h in self.boxes) <= HURRY_MAX_SHARE * width * height

    def hurry_up(self) -> None:
        self.asked.set()
        self.hurry.set()


def read_region(luma: np.ndarray, box: Box, layout: Layout) -> tuple[list[TextLine], float]:
    """Read one region on this thread's engine; (lines top to bottom, CPU ms)."""
    started = time.thread_time()
    lines = thread_engine().read(luma, box, layout)
    return sorted(lines, key=lambda line: line.top), (time.thread_time() - started) * 1000


def read_change(
    before: np.ndarray | None, luma: np.ndarray, boxes: list[Box], content: ContentType,
) -> tuple[list[TextLine], list[Box]]:
    """Plan and read one change's boxes on this thread: (lines top to bottom, the boxes read).
    Planned boxes that overlap are read as one (a plan of the whole frame takes in all the
    others)."""
    read_boxes = merged([plan_read(before, luma, box) for box in boxes])
    layout = layout_for(content)
    lines = [line for box in read_boxes for line in read_region(luma, box, layout)[0]]
    lines.sort(key=lambda line: line.top)
    return lines, read_boxes


# Replaces what must not be kept in a read's lines: (the lines, how many were replaced of each
# kind). The session's screen memory hides secrets with it (memory/secret_text.py).
Redactor = Callable[[list[str]], tuple[list[str], Mapping[str, int]]]


@dataclass(frozen=True)
class TextRead:
    """A read done on the reading thread, redacted there."""

    lines: list[str]  # the text of every line read, top to bottom
    boxes: list[Box]
    cpu_ms: float  # reading and redacting
    hidden: Mapping[str, int]
    redacted: list[Box]  # the boxes of the lines `redact` changed
    waited: GateWait = UNGATED


def read_text(
    redact: Redactor | None, before: np.ndarray | None, luma: np.ndarray, boxes: list[Box],
    content: ContentType,
) -> TextRead:
    """`read_change`, its lines then put through `redact`, on this thread."""
    started = time.thread_time()
    lines, read_boxes = read_change(before, luma, boxes, content)
    texts = [line.text for line in lines]
    texts, hidden = redact(texts) if redact is not None else (texts, {})
    redacted = [line.box for line, text in zip(lines, texts, strict=True) if text != line.text]
    return TextRead(texts, read_boxes, (time.thread_time() - started) * 1000, hidden, redacted)


def gated_read(gate: CpuGate | None, job: _Read, read: Callable[[], TextRead]) -> TextRead | None:
    """`read` once `gate` lets it start; None when a question hurried it meanwhile: the hurry
    lane reads it then, at the replies' priority rather than this thread's low one."""
    waited = gate.wait(job.hurry) if gate is not None else UNGATED
    if job.hurry.is_set():
        return None
    job.started.set()
    return replace(read(), waited=waited)


def hurried_read(job: _Read, read: Callable[[], TextRead]) -> TextRead:
    """`read` on the hurry lane: no gate, since a reply waits for it."""
    job.started.set()
    return read()


class FrameTextReader:
    """The same reading, synchronously and in order: for offline scans and evaluations."""

    def __init__(self, redact: Redactor | None = None) -> None:
        self._redact = redact  # as `ScreenTextReader`'s
        self._seen = SeenLines()
        self._before: np.ndarray | None = None  # the last frame read

    def read(self, frame: SampledFrame, decision: ChangeDecision) -> ScreenText:
        luma = luma_plane(frame.frame)
        done = read_text(self._redact, self._before, luma,
                         changed_boxes(decision.regions, frame.size), decision.content_type)
        self._before = luma
        added = self._seen.new(done.lines, frame.t)
        return ScreenText(frame.t, time.time(), decision.reason, str(decision.content_type),
                          tuple(done.boxes), added, len(done.lines), round(done.cpu_ms, 1), 0,
                          hidden=dict(done.hidden), redacted=tuple(done.redacted))


_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


OCR_NICE = 10  # reading screen text yields the CPU to replies and frames
# the reader threads' name as the OS sees it (`top -H`, /proc/PID/task/TID/comm; at most 15
# bytes): Python 3.11 names its threads for itself only, and on a busy worker about half its
# CPU is this reading, which ops and benchmarks want to see apart
OCR_THREAD_NAME = "sightline-ocr"


def _reader_thread(nice: int) -> None:
    """Set this thread's CPU priority (Linux schedules threads by their own nice value) and
    name it for the OS."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    setthreadtitle(OCR_THREAD_NAME)


def _process_pool(name: str, threads: int, nice: int) -> ThreadPoolExecutor:
    """The process's pool `name`, shared by all its sessions (made on first use; sessions start
    in threads of their own, hence the lock)."""
    with _pools_lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix=name,
                initializer=functools.partial(_reader_thread, nice))
        return _pools[name]


def shared_pool(threads: int = 1) -> ThreadPoolExecutor:
    """The process's OCR threads. They run at a lower priority: when the machine is busy, reads
    wait and coalesce (counted in each session's log) rather than slowing anyone's reply."""
    return _process_pool("ocr", threads, OCR_NICE)


def hurry_pool() -> ThreadPoolExecutor:
    """The process's lane for the reads a question waits for (`ScreenTextReader.read_through`),
    past the OCR threads' queue, at the replies' priority: one thread, since a question waits
    for the reads of one session and questions seldom come together."""
    return _process_pool("ocr-hurry", 1, 0)


# the share of a frame up to which a read a question waits for is hurried: measured with
# bench/load.py at 30 sessions, reads of at most an eighth of a 720p frame took 58 / 106 ms of
# CPU at p50 / p95, a whole frame's 256 / 336 ms; hurrying every read held the first questions
# of a burst of sessions for whole-screen reads (overhead p95 631-815 ms, against 155-265)
HURRY_MAX_SHARE = 1 / 8


@dataclass
class ReaderStats:
    submitted: int = 0
    read: int = 0
    coalesced: int = 0  # reads folded into a newer one (never read on their own)
    failed: int = 0  # reads OCR could not do
    undelivered: int = 0  # reads done whose result the session failed to take (`on_text` raised)
    abandoned: int = 0  # reads pending or under way when the reader closed, past its wait
    cpu_ms: float = 0.0
    waited_ms: float = 0.0
    forced: int = 0  # reads that started after the gate's longest wait, the machine still busy
    hurried: int = 0  # reads a question waited for, hurried past the OCR queue and the CPU gate
    lines_added: int = 0
    secrets_hidden: int = 0  # replaced by the reader's `redact` in the lines read


# how long a question waits for a read that waits its turn (the OCR threads, the CPU gate)
TURN_WAIT_S = 0.05


class ScreenTextReader:
    """Reads kept frames' changed regions off the loop; `on_text` gets each result on it."""

    def __init__(
        self, on_text: Callable[[ScreenText], None], *, executor: Executor | None = None,
        hurry_executor: Executor | None = None, gate: CpuGate | None = None,
        redact: Redactor | None = None, max_pending: int = 4,
    ) -> None:
        """`executor` reads (the process's `shared_pool` if None); `hurry_executor` reads the
        small reads a question waits for and `executor` has not started (None: a question does
        not hurry reads; the process's is `hurry_pool`). `gate`:
        reads start when it allows (None: as soon as the executor takes them). `redact`: what
        the lines read must not keep is replaced on the reading thread, before anything sees
        them (None: kept as read)."""
        self._on_text = on_text
        self._executor = executor or shared_pool()
        self._hurry_executor = hurry_executor
        self._gate = gate
        self._redact = redact
        self._max_pending = max_pending
        self._pending: list[_Read] = []
        self._reading: _Read | None = None  # the read handed to the executor, until it is back
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing pending and nothing being read
        self._idle.set()
        self._progress = asyncio.Event()  # set, and replaced, as each read ends
        self._seen = SeenLines()
        self._before: np.ndarray | None = None  # the last frame read
        self.stats = ReaderStats()
        self._task = asyncio.create_task(self._run(), name="screen-text")

    def submit(self, frame: SampledFrame, decision: ChangeDecision) -> None:
        """Queue a kept frame's changed region; returns at once (called on the loop)."""
        self.stats.submitted += 1
        read = _Read(frame, decision, changed_boxes(decision.regions, frame.size), time.time())
        for index, pending in enumerate(self._pending):
            if pending.frame.size == frame.size and any(
                    overlaps(a, b) for a in pending.boxes for b in read.boxes):
                self._pending.pop(index)
                self._fold(read, pending)
                break
        if len(self._pending) >= self._max_pending:  # far behind: read the newest screen once
            for pending in self._pending:
                self._fold(read, pending)
            self._pending.clear()
        self._pending.append(read)
        self._idle.clear()
        self._wake.set()

    def _fold(self, newer: _Read, older: _Read) -> None:
        """`newer` reads what `older` would have, on the newer frame."""
        if older.frame.size == newer.frame.size:
            newer.boxes = merged(newer.boxes + older.boxes)
        newer.coalesced += older.coalesced + 1  # the submissions this read now stands for
        newer.first_t = min(newer.first_t, older.first_t)
        self.stats.coalesced += 1  # one read fewer

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                job = self._reading = self._pending.pop(0)
                try:
                    luma = luma_plane(job.frame.frame)
                    done = await self._read(job, functools.partial(
                        read_text, self._redact, self._before, luma, job.boxes,
                        job.decision.content_type))
                except Exception as exc:  # one unreadable frame must not stop the reader
                    self.stats.failed += 1
                    log.warning("could not read the screen at t=%.1fs: %r", job.frame.t, exc)
                    continue
                finally:
                    self._reading = None
                    # the waiters run after this step, once the read is delivered
                    self._progress.set()
                    self._progress = asyncio.Event()
                self._before = luma
                try:
                    self._deliver(job, done)
                except Exception as exc:  # nor one read the session could not take
                    self.stats.undelivered += 1
                    log.warning("the screen read at t=%.1fs was lost, its recording failed: %r",
                                job.frame.t, exc)

    async def _read(self, job: _Read, read: Callable[[], TextRead]) -> TextRead:
        """`read` on the OCR threads through the CPU gate; on the hurry lane, ungated, once a
        question waits for it (`job.asked`) and it is not in the OCR engine yet: taken off
        the threads' queue, or passed on by the gate (`gated_read`)."""
        if not job.asked.is_set():
            reading: Future[TextRead | None] = self._executor.submit(gated_read, self._gate, job,
                                                                     read)
            waiting, asked = asyncio.wrap_future(reading), asyncio.ensure_future(job.asked.wait())
            try:
                await asyncio.wait((waiting, asked), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the reader closing: a read not started never is
                reading.cancel()
                raise
            finally:
                asked.cancel()
            # a cancelled future never started; one that did is read there, unless passed on
            if not reading.cancel() and (done := await waiting) is not None:
                return done
        lane = self._hurry_executor
        assert lane is not None  # `read_through` hurries reads only with a lane
        return await asyncio.wrap_future(lane.submit(hurried_read, job, read))

    def _deliver(self, job: _Read, done: TextRead) -> None:
        added = self._seen.new(done.lines, job.frame.t)
        waited_ms = done.waited.seconds * 1000
        self.stats.read += 1
        self.stats.cpu_ms += done.cpu_ms
        self.stats.waited_ms += waited_ms
        self.stats.forced += done.waited.forced
        self.stats.hurried += job.asked.is_set()
        self.stats.lines_added += len(added)
        self.stats.secrets_hidden += sum(done.hidden.values())
        self._on_text(ScreenText(
            job.frame.t, job.wall_time, job.decision.reason, str(job.decision.content_type),
            tuple(done.boxes), added, len(done.lines), round(done.cpu_ms, 1), job.coalesced,
            round(waited_ms, 1), done.waited.forced, dict(done.hidden), tuple(done.redacted),
            job.asked.is_set(), job.first_t if job.first_t < job.frame.t else None))

    def _unread(self, t: float) -> list[_Read]:
        """The reads not done yet (pending or under way) that read for a frame kept at or
        before screen time `t`."""
        jobs = [*self._pending, *([self._reading] if self._reading is not None else [])]
        return [job for job in jobs if job.first_t <= t]

    def unread(self, t: float) -> int:
        return len(self._unread(t))

    async def read_through(self, t: float, timeout_s: float) -> tuple[int, int, bool]:
        """Wait up to `timeout_s` for the reads of the frames kept up to screen time `t` (a
        screenshot of `t` is covered as far as they tell): (how many are still not done, how
        many it hurried, whether it stopped for a read waiting its turn). Reads of later frames
        are not waited for, nor a reader that stopped, nor a read that has not started
        `TURN_WAIT_S` after it was asked for: it waits for the shared OCR threads or for the CPU
        gate, which holds reads back while the machine is busy for the replies' sake, and a
        reply is what waits here. With a hurry lane, each small read not in the OCR engine yet
        (`HURRY_MAX_SHARE`) skips that wait (`_read`): it is read at once there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiting_turn_since: float | None = None
        hurried = 0
        hurrying = self._hurry_executor is not None and timeout_s > 0
        while (jobs := self._unread(t)) and not self._task.done():
            for job in jobs if hurrying else ():
                if job.small and not (job.asked.is_set() or job.started.is_set()):
                    job.hurry_up()
                    hurried += 1
            now = loop.time()
            reading = self._reading
            if reading is None or reading.started.is_set() or reading.asked.is_set():
                waiting_turn_since = None
            elif waiting_turn_since is None:
                waiting_turn_since = now
            elif now - waiting_turn_since >= TURN_WAIT_S:
                return len(jobs), hurried, True
            progress = self._progress
            try:  # whether the read has started is looked at again every TURN_WAIT_S
                await asyncio.wait_for(progress.wait(), min(deadline - now, TURN_WAIT_S))
            except TimeoutError:
                if loop.time() >= deadline:
                    break
        return self.unread(t), hurried, False

    async def drain(self, timeout_s: float) -> None:
        """Let the pending reads finish (a session closing wants its last screen read); a
        reader that stopped has nothing more to finish."""
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait((idle, self._task), timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Wait up to `timeout_s` for the pending reads, then stop; the reads still pending or
        under way are dropped, counted as `abandoned`."""
        await self.drain(timeout_s)
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            log.error("the screen reader had stopped: %r", self._task.exception())
        if not self._idle.is_set():
            self.stats.abandoned = len(self._pending) + (self._reading is not None)
            log.warning("closing with %d screen reads not done, dropped (waited %.1f s)",
                        self.stats.abandoned, timeout_s)
        self._task.cancel()
        # the task's cancellation is its result; a cancellation of the caller goes on up
        await asyncio.gather(self._task, return_exceptions=True)
