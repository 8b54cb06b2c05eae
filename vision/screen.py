"""The screen as the agent knows it: frames come in, the sampler picks one per period, and the
change detector keeps it only when the screen really changed. `latest` is the last kept frame
(the screen state that changed); `freshest` is the last sampled one, which a user turn looks at,
so a question asked while a line is still being typed sees the line (and keeps it first,
`keep_shown`: what the model sees is read and covered like every kept frame). `changes` holds
the last few kept frames, which the model can ask to look back at, and `changed_at` the screen
time of the last sample that showed any content change (kept, or held back while a line is
typed). Every decision goes to `on_decision` (the session's event log): a session's log says
how many frames arrived, were sampled and were kept, and why each was dropped; each kept frame
also goes to `on_kept` (the screen text reader, the frame archive).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

from .change import ChangeDecision, ChangeDetector
from .frames import InvalidFrame, SampledFrame, as_i420
from .sampler import FrameSampler

log = logging.getLogger("sightline.vision")


@dataclass(frozen=True)
class FrameDecision:
    t: float
    kept: bool
    reason: str
    width: int
    height: int
    change: ChangeDecision | None = None  # None when the frame was unusable
    was: str | None = None  # a sample decided before, kept now: why it was dropped then

    def as_dict(self) -> dict[str, object]:
        if self.change is None:
            return {"t": round(self.t, 3), "kept": False, "reason": self.reason,
                    "content_type": None}
        return {**self.change.as_dict(), **({"was": self.was} if self.was else {})}

    def as_record(self) -> dict[str, object]:
        """The decision as plain data for the session's event log, with the frame's size."""
        return {**self.as_dict(), "width": self.width, "height": self.height}


@dataclass
class FrameTally:
    """Decisions counted: kept, dropped by reason (an unusable frame as "invalid", which never
    counts as sampled), and sampled / kept / dropped per content type. It counts decisions as
    plain records (`FrameDecision.as_dict()`), so a log of them can be tallied too. A sample
    kept after it was dropped (`was`: a question showed it) moves from dropped to kept."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    by_type: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> None:
        kept, was = bool(record["kept"]), record.get("was")
        counts = (self.by_type.setdefault(str(record["content_type"]), Counter())
                  if record.get("content_type") is not None else Counter())
        if was is not None:  # counted as a dropped sample before: no sample more, one drop less
            self.dropped[str(was)] -= 1
            if not self.dropped[str(was)]:
                del self.dropped[str(was)]
            counts["dropped"] -= 1
        else:
            counts["sampled"] += 1
        if kept:
            self.kept += 1
        else:
            self.dropped[str(record["reason"])] += 1
        counts["kept" if kept else "dropped"] += 1

    @property
    def invalid(self) -> int:
        return self.dropped["invalid"]

    @property
    def sampled(self) -> int:
        return self.kept + sum(self.dropped.values()) - self.invalid

    def by_content_type(self) -> dict[str, dict[str, int]]:
        return {
            kind: {k: counts[k] for k in ("sampled", "kept", "dropped")}
            for kind, counts in sorted(self.by_type.items())
        }


@dataclass(frozen=True)
class ScreenChange:
    """A kept frame and the verdict that kept it."""

    frame: SampledFrame
    decision: ChangeDecision


# a dropped sample whose content is changing: a line being typed, a video playing
CHANGING = frozenset({"typing", "video_rate_limit"})
# a dropped sample whose text changed: kept when a question shows it (`ScreenWatcher.keep_shown`)
HELD_BACK = frozenset({"typing", "small_change"})


class ScreenWatcher:
    KEPT_HISTORY = 8  # kept frames held for looking back: a 1080p I420 frame is about 3 MB

    def __init__(
        self,
        sampler: FrameSampler,
        on_decision: Callable[[FrameDecision], None],
        detector: ChangeDetector | None = None,
        on_kept: Callable[[ScreenChange], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sampler = sampler
        self._detector = detector or ChangeDetector()
        self._on_decision = on_decision
        self._on_kept = on_kept
        self.latest: SampledFrame | None = None
        self.freshest: SampledFrame | None = None
        self._freshest_decision: FrameDecision | None = None
        self.changes: deque[ScreenChange] = deque(maxlen=self.KEPT_HISTORY)
        self.changed_at: float | None = None
        self.frames_received = 0
        self.frames_failed = 0  # frames whose analysis raised (the source counts them)
        self.frames_skipped = 0  # frames the source dropped unseen: not due for sampling
        self.share_resubscribed = 0  # the source's subscriptions again to a share that never came
        self.camera_only = False
        self._last_invalid_t: float | None = None
        self._clock = clock
        self._began: float | None = None  # by `clock`: when the session's first stream began
        self._newest_t: float | None = None  # the newest screen time offered

    def start_stream(self) -> float:
        """The screen time of a new stream's first frame; a live source asks once per stream.
        Screen time is the session's, not a stream's: a user who stops sharing and shares
        again, or a subscription made again, brings a stream whose own clock starts at 0, while
        the kept frames, the archive's file names, the screen text and the screenshot the model
        saw last all go by screen time. So a later stream goes on from the time since the first
        began (by `clock`: "5 min ago" stays true across a pause in sharing), and never from
        less than a period after the newest frame (the publisher's clock and `clock` drift
        apart). A recording's frames carry the recording's own times, and never ask."""
        now = self._clock()
        if self._began is None:
            self._began = now
        after_newest = 0.0 if self._newest_t is None else self._newest_t + self._sampler.period
        return max(now - self._began, after_newest)

    def wants(self, t: float) -> bool:
        """Whether a frame at `t` would be sampled (a source may drop the others unseen)."""
        return self._sampler.is_due(t)

    def offer(self, t: float, frame: rtc.VideoFrame) -> SampledFrame | None:
        """Returns the frame when it was kept. Cheap enough for the event loop: a timestamp check
        per frame, and once per period a buffer check plus about a millisecond of detection on
        the downscaled luma plane (see bench/vision.py)."""
        self.frames_received += 1
        self._newest_t = t if self._newest_t is None else max(self._newest_t, t)
        if not self._sampler.is_due(t):
            return None
        try:
            frame = as_i420(frame)
        except InvalidFrame as exc:
            # the slot stays open for the next good frame; the drop is logged once per period
            if self._last_invalid_t is None or t - self._last_invalid_t >= self._sampler.period:
                self._last_invalid_t = t
                log.warning("dropping an unusable frame at t=%.2fs: %s", t, exc)
                self._on_decision(FrameDecision(t, False, "invalid", frame.width, frame.height))
            return None
        self._sampler.take(t)
        change = self._detector.decide(t, frame)
        decision = FrameDecision(t, change.kept, change.reason, frame.width, frame.height, change)
        self._on_decision(decision)
        self.freshest, self._freshest_decision = SampledFrame(frame, t), decision
        if change.kept or change.reason in CHANGING:
            self.changed_at = t
        if not change.kept:
            return None
        return self._keep(change)

    def keep_shown(self) -> bool:
        """Keep the freshest sample now if its text changed since the last kept frame but it
        was held back (a line still being typed waits for the line, a change of a character
        or two is not kept): a question is about to show it to the model, and what the model
        sees, screen memory reads and covers, secrets included (a password typed in plain
        text). Whether it was kept now; its decision is recorded again, with `was`."""
        held = self._freshest_decision
        if (self.freshest is None or held is None or held.change is None or held.kept
                or held.reason not in HELD_BACK):
            return False
        change = self._detector.keep_last(held.change)
        self._freshest_decision = FrameDecision(held.t, True, change.reason, held.width,
                                                held.height, change, was=held.reason)
        self._on_decision(self._freshest_decision)
        self._keep(change)
        return True

    def _keep(self, change: ChangeDecision) -> SampledFrame:
        """The freshest sample is kept: the latest screen, one to look back at, and read."""
        assert self.freshest is not None
        self.latest = self.freshest
        kept = ScreenChange(self.latest, change)
        self.changes.append(kept)
        if self._on_kept is not None:
            self._on_kept(kept)
        return self.latest

    def clear(self) -> None:
        """The share ended: nothing on screen to answer from. Screen time goes on (the next
        stream continues it, `start_stream`)."""
        self.latest = self.freshest = self.changed_at = self._freshest_decision = None
        self.changes.clear()

    def stats(self) -> dict[str, int]:
        return {"received": self.frames_received + self.frames_skipped,
                "sampled": self._sampler.sampled}
