"""Kept frames on disk, so the model can look further back than the last few changes.

Each session's kept frames go to `<root>/<session_id>/<t>.jpg` (JPEG, quality 85: legible screen
text at a tenth of the raw size), encoded and written off the event loop, one at a time; a frame
that arrives while another waits replaces it (counted). The session's directory is capped in
bytes: past the cap the oldest frames go first. Screen time only grows within a session
(`ScreenWatcher.start_stream`): a frame that would not be the newest is refused (said once,
counted as failed) rather than overwrite an earlier frame's file or put the oldest-first order
out. `prune` removes whole session directories older than the retention, and `remove_sessions`
those of a user who asked to be forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path

import cv2
from livekit import rtc

from .frames import SampledFrame
from .jpeg import jpeg_bytes

log = logging.getLogger("sightline.vision")

JPEG_QUALITY = 85


def _name(t: float) -> str:
    return f"{t:010.3f}.jpg"


def load(path: Path, t: float) -> SampledFrame:
    """An archived frame, as a frame the turn context can attach."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: not a readable JPEG")
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    height, width = rgba.shape[:2]
    return SampledFrame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                                       rgba.tobytes()), t)


class FrameArchive:
    def __init__(self, root: Path, session_id: str, max_bytes: int) -> None:
        self.directory = root / session_id
        self._max_bytes = max_bytes
        self._sizes: dict[float, int] = {}  # t -> bytes on disk, oldest first
        self._waiting: SampledFrame | None = None
        self._newest_t: float | None = None  # of the frames taken to be written
        self._writer: asyncio.Task[None] | None = None
        self.replaced = 0  # frames that waited and were replaced by a newer one
        self.failed = 0  # frames not archived: a write failed, or refused as out of order
        self._failing = 0  # frames not archived since the last that was (a full disk)
        self._said_refused = False  # a frame out of order was refused: said once

    def save(self, frame: SampledFrame) -> None:
        """Archive a kept frame; returns at once (called on the loop)."""
        if self._max_bytes <= 0:
            return
        if self._newest_t is not None and frame.t <= self._newest_t:
            self.failed += 1
            if not self._said_refused:  # a bug upstream: said once, the rest counted
                self._said_refused = True
                log.warning("not archiving the frame at t=%.1fs: the archive already took "
                            "t=%.1fs, and screen time only grows", frame.t, self._newest_t)
            return
        self._newest_t = frame.t
        if self._waiting is not None:
            self.replaced += 1
        self._waiting = frame
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name="frame-archive")

    async def _write_waiting(self) -> None:
        while self._waiting is not None:
            frame, self._waiting = self._waiting, None
            try:
                size = await asyncio.to_thread(self._write, frame)
            except (OSError, ValueError) as exc:
                self.failed += 1
                self._failing += 1
                if self._failing == 1:  # the first of a run: the rest are counted till it ends
                    log.warning("could not archive the frame at t=%.1fs (%r): frames are not "
                                "archived until this clears", frame.t, exc)
                continue
            if self._failing:
                log.warning("archiving frames again at t=%.1fs, after %d that could not be",
                            frame.t, self._failing)
                self._failing = 0
            self._sizes[frame.t] = size
            await asyncio.to_thread(self._trim)

    def _write(self, frame: SampledFrame) -> int:
        data = jpeg_bytes(frame.frame, JPEG_QUALITY)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _name(frame.t)
        try:
            path.write_bytes(data)
        except OSError:
            path.unlink(missing_ok=True)  # no torn image for `earlier_screen` to show
            raise
        return len(data)

    def _trim(self) -> None:
        while len(self._sizes) > 1 and sum(self._sizes.values()) > self._max_bytes:
            oldest = next(iter(self._sizes))
            del self._sizes[oldest]
            with contextlib.suppress(FileNotFoundError):
                (self.directory / _name(oldest)).unlink()

    def times(self) -> list[float]:
        """Screen times of the frames on disk, oldest first."""
        return list(self._sizes)

    def load(self, t: float) -> SampledFrame:
        return load(self.directory / _name(t), t)

    async def aclose(self) -> None:
        if self._writer is not None:
            # the writer's own cancellation is its result; the caller's is not swallowed
            await asyncio.gather(self._writer, return_exceptions=True)


def prune(root: Path, retention_days: float) -> list[str]:
    """Delete the frame directories of sessions untouched for longer than the retention;
    returns their session ids."""
    if not root.is_dir():
        return []
    cutoff = time.time() - retention_days * 86400
    gone = []
    for directory in root.iterdir():
        if directory.is_dir() and directory.stat().st_mtime < cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            gone.append(directory.name)
    return gone


def remove_sessions(root: Path, session_ids: list[str]) -> int:
    """Delete the archived frames of these sessions; returns how many files went."""
    removed = 0
    for session_id in session_ids:
        directory = root / session_id
        if directory.is_dir():
            removed += sum(1 for _ in directory.glob("*.jpg"))
            shutil.rmtree(directory, ignore_errors=True)
    return removed
