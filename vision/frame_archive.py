"""Kept frames on disk, so the model can look further back than the last few changes.

Each session's kept frames go to `<root>/<session_id>/<t>.jpg` (JPEG, quality 85: legible screen
text at a tenth of the raw size), encoded and written off the event loop, one at a time; a frame
that arrives while another waits replaces it (counted). The session's directory is capped in
bytes: past the cap the oldest frames go first. Screen time only grows within a session
(`ScreenWatcher.start_stream`): a frame that would not be the newest is refused (said once,
counted as failed) rather than overwrite an earlier frame's file or put the oldest-first order
out. A frame file that cannot be removed when trimming to the cap is said once and counted
(`unremoved`); the archive goes on. `prune` removes whole session directories untouched for
longer than the retention, never the directory of an archive still open (see `prune`), and
`remove_sessions` those of a user who asked to be forgotten.

A frame is archived with the boxes of `cover` filled: where the screen's text showed what its
reader took out (a password in a `.env` file; vision/screen_text.py `RedactedOnScreen`). A read
comes back after its frame was kept, so `cover` also fills them in the frames already written
from that screen time on, each written again whole (`os.replace`: `earlier_screen` never loads
half a file). A frame that cannot be covered is removed rather than kept as it was (counted as
failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
from livekit import rtc

from .frames import SampledFrame
from .jpeg import covered_jpeg, jpeg_bytes
from .local_change import Box

log = logging.getLogger("sightline.vision")

JPEG_QUALITY = 85
LIVE_FILE = ".live"  # in a session's directory: shared-locked while its archive is open
# what flock answers on a filesystem that takes no file locks (NFS mounted `local_lock=none`
# without a lock daemon, some FUSE filesystems): archiving goes on without the mark
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})

# directories of the archives open in this process (see `prune`), and what guards the set: prune
# runs on a worker thread, archives open and close on their sessions' loops
_open_here: set[Path] = set()
_open_here_lock = threading.Lock()


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
        self.unremoved = 0  # trimmed frames whose file could not be removed (said once)
        self._live: int | None = None  # descriptor of LIVE_FILE, shared-locked while open
        self._cover: tuple[Box, ...] = ()  # filled in each frame written from now on
        # (screen time, boxes): the frames written from that time on to cover, oldest first
        self._patches: deque[tuple[float, tuple[Box, ...]]] = deque()
        self._unlockable = False  # its filesystem takes no locks: marked in this process only

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
        self._start_writer()

    def cover(self, t: float, boxes: tuple[Box, ...]) -> None:
        """Fill `boxes` (in the frame's pixels) in every frame archived from screen time `t` on,
        until covered otherwise: those written already are written again off the loop, the
        rest as they come. Returns at once (called on the loop)."""
        self._cover = boxes
        if boxes and self._max_bytes > 0:
            self._patches.append((t, boxes))
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name="frame-archive")

    async def _write_waiting(self) -> None:
        while self._waiting is not None or self._patches:
            if self._patches:  # first: the frames on disk still show what was hidden
                await self._patch(*self._patches.popleft())
                continue
            frame, self._waiting = self._waiting, None
            try:
                size = await asyncio.to_thread(self._write, frame, self._cover)
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

    async def _patch(self, t: float, boxes: tuple[Box, ...]) -> None:
        """Cover `boxes` in the frames written from screen time `t` on; one that cannot be is
        removed (the first of them said)."""
        said = False
        for written in [w for w in self._sizes if w >= t]:
            try:
                self._sizes[written] = await asyncio.to_thread(self._cover_file, written, boxes)
            except (OSError, ValueError) as exc:
                self.failed += 1
                del self._sizes[written]
                if not said:
                    said = True
                    log.warning("could not cover what the screen's text hid in the frame "
                                "archived at t=%.1fs (%r): the frame is removed", written, exc)
                with contextlib.suppress(OSError):
                    (self.directory / _name(written)).unlink(missing_ok=True)

    def _cover_file(self, t: float, boxes: tuple[Box, ...]) -> int:
        return write_covered(self.directory / _name(t), boxes)

    def _write(self, frame: SampledFrame, cover: tuple[Box, ...]) -> int:
        data = jpeg_bytes(frame.frame, JPEG_QUALITY, cover=cover)
        self._mark_live()
        path = self.directory / _name(frame.t)
        try:
            path.write_bytes(data)
        except OSError:
            path.unlink(missing_ok=True)  # no torn image for `earlier_screen` to show
            raise
        return len(data)

    def _mark_live(self) -> None:
        """Mark the directory as an open session's, for `prune` in any process: a shared lock
        on its LIVE_FILE, taken with the first frame written (before it there is nothing to
        keep) and held until `aclose`. The kernel drops the lock with the process, so a session
        that died never looks open. Checked before each write: if the directory went
        (`memory forget`, or a prune that took the file's lock just before this did), the file
        held is no longer the directory's, and the directory is made and marked again."""
        path = self.directory / LIVE_FILE
        if self._unlockable:
            self.directory.mkdir(parents=True, exist_ok=True)
            return
        if self._live is not None:
            if _same_file(self._live, path):
                return
            self._unmark_live()
        for _ in range(3):  # a prune removes a directory only while nothing in it is new
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune holds it
                marked = _same_file(fd, path)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _NO_LOCKS:
                    raise
                self._without_locks(path, exc)
                return
            except BaseException:
                os.close(fd)
                raise
            if marked:
                self._live = fd
                with _open_here_lock:
                    _open_here.add(self.directory.absolute())
                return
            os.close(fd)
        raise OSError(f"{self.directory}: removed each time it was made")

    def _without_locks(self, path: Path, exc: OSError) -> None:
        """Archive on a filesystem that takes no locks: the frames matter more than the mark.
        This process's prunes still see the session open (`_open_here`); another process's
        go by the directory's age alone, as before the marks (said once)."""
        self._unlockable = True
        with contextlib.suppress(OSError):
            path.unlink()
        with _open_here_lock:
            _open_here.add(self.directory.absolute())
        log.warning("%s takes no file locks (%s): frames are archived, but a prune in another "
                    "process may remove this open session's frames once they are older than "
                    "the retention", self.directory.parent, os.strerror(exc.errno or 0))

    def _unmark_live(self) -> None:
        """Remove LIVE_FILE (if still this archive's), then let its lock go. Removing it first
        changes the directory's time, so a prune that takes the lock next sees the directory
        as just touched and leaves it for the next prune."""
        with _open_here_lock:
            _open_here.discard(self.directory.absolute())
        if self._live is None:
            return
        path = self.directory / LIVE_FILE
        if _same_file(self._live, path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(self._live)
        self._live = None

    def _trim(self) -> None:
        """Remove the oldest frames past the cap. A file that cannot be removed (a permission
        taken away, a directory in its place, EIO) must not end the writer: that lost the frame
        waiting behind it. It is said once, with its path and the error (the same cause
        usually stops every later one), the rest counted in `unremoved`; the frame is no
        longer the archive's (not in `times`, not in the cap's sum), so the file stays on disk
        outside the cap until the directory is pruned."""
        while len(self._sizes) > 1 and sum(self._sizes.values()) > self._max_bytes:
            oldest = next(iter(self._sizes))
            del self._sizes[oldest]
            path = self.directory / _name(oldest)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self.unremoved += 1
                if self.unremoved == 1:
                    log.warning("could not remove the archived frame %s (%r): it stays on disk "
                                "outside the archive's cap; archiving goes on", path, exc)

    def times(self) -> list[float]:
        """Screen times of the frames on disk, oldest first."""
        return list(self._sizes)

    def load(self, t: float) -> SampledFrame:
        return load(self.directory / _name(t), t)

    async def aclose(self) -> None:
        """Finish the pending write and close the archive: its directory is no longer marked
        live, so `prune` may remove it once it is older than the retention. (A frame saved
        after this opens it again.) Cancelled while a write is still running, the mark stays
        until the process ends: the write's thread may still use the directory."""
        if self._writer is not None:
            # the writer's own cancellation is its result; the caller's is not swallowed
            await asyncio.gather(self._writer, return_exceptions=True)
        self._unmark_live()


def _untouched_since(directory: Path, cutoff: float) -> bool:
    """Whether neither a session's directory nor anything in it changed since `cutoff`. The
    directory's own time moves with each file made or removed in it; its files are looked at
    too (only when that time is old, so only for directories about to go), as a file written
    again in place leaves the directory's time as it was."""
    if directory.stat().st_mtime >= cutoff:
        return False
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):  # trimmed meanwhile
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                return False
    return True


def write_covered(path: Path, boxes: Sequence[Box]) -> int:
    """Write the archived frame at `path` again with `boxes` filled, whole (`os.replace`:
    `earlier_screen` never loads half a file); its new size."""
    data = covered_jpeg(path.read_bytes(), boxes, JPEG_QUALITY)
    scratch = path.with_suffix(".covering")
    try:
        scratch.write_bytes(data)
        os.replace(scratch, path)
    except OSError:
        scratch.unlink(missing_ok=True)
        raise
    return len(data)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd` (not removed, nor made again)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _lock_unless_open(directory: Path) -> int | None:
    """None when the directory's archive is open somewhere, else an open descriptor holding
    its LIVE_FILE exclusively (-1 when there is none: never marked, or its session closed; or
    its filesystem takes no locks, where age alone decides), so no archive marks it while it is
    removed. Opened for writing: NFS grants an exclusive lock only on such a descriptor."""
    with _open_here_lock:
        if directory.absolute() in _open_here:
            return None
    try:
        fd = os.open(directory / LIVE_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno in _NO_LOCKS:
            return -1
        raise
    return fd


@contextlib.contextmanager
def held_closed(directory: Path) -> Iterator[bool]:
    """Whether the archive of `directory` is open in no process, as `prune` judges it; its
    mark (LIVE_FILE), when it has one, held exclusively while the block runs."""
    fd = _lock_unless_open(directory)
    try:
        yield fd is not None
    finally:
        if fd is not None and fd >= 0:
            os.close(fd)


def prune(root: Path, retention_days: float) -> list[str]:
    """Delete the frame directories of sessions that ended and were untouched for longer than
    the retention; returns their session ids.

    Age alone removed a live session's frames under a short retention: a paused share writes
    nothing, and the byte cap, not the retention, is what bounds an open session. So an open
    archive marks its directory live with a shared `flock` on LIVE_FILE (`_mark_live`), and
    prune skips a directory whose lock it cannot take. A lock, not a marker file or a
    heartbeat, because prune runs in every session's process (a worker's sessions, a second
    worker on the same data directory) and a lock is seen by all of them, needs no clock, and
    is dropped by the kernel with a process that dies, so a crashed session's frames still go.
    flock (not fcntl's record locks) because its locks conflict between two opens in one
    process too; this process's open archives are also kept in a set, for filesystems (NFS)
    that emulate flock with record locks, which a process never conflicts with itself on.

    A directory's age is the newest modification time of it and its files
    (`_untouched_since`), looked at again once the lock is held: a session that closed or
    opened meanwhile has just changed the directory."""
    if not root.is_dir():
        return []
    cutoff = time.time() - retention_days * 86400
    gone = []
    said = False
    for directory in root.iterdir():
        try:
            if not directory.is_dir() or not _untouched_since(directory, cutoff):
                continue
            fd = _lock_unless_open(directory)
        except FileNotFoundError:  # removed meanwhile (`memory forget`, another prune)
            continue
        except OSError as exc:  # one directory that cannot be looked at holds up no other
            if not said:
                log.warning("could not look at %s to prune it: %s", directory, exc)
            said = True
            continue
        if fd is None:
            continue
        try:
            if _untouched_since(directory, cutoff):
                shutil.rmtree(directory, ignore_errors=True)
                gone.append(directory.name)
        except FileNotFoundError:
            continue
        finally:
            if fd >= 0:
                os.close(fd)
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
