"""The frame archive on disk: what it does when the disk or another process gets in its way.

Protects: a frame file that cannot be removed when the archive trims to its cap is one warning
(its path and the error) and a count, and the archive goes on writing the frames that follow;
`prune` never removes the frames of a session whose archive is open (in this process or
another, however long ago its last frame was written), and removes those of a session that
ended, or whose process died, once they are older than the retention; the boxes a read covers
(the lines whose text held a secret) are filled in the frames archived from its screen time on,
until a read of that part of the screen lifts them, and a frame that cannot be covered is
removed.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_screen import Desk

from vision import frame_archive
from vision.frame_archive import FrameArchive, prune
from vision.frames import SampledFrame
from vision.jpeg import COVER_BGR
from vision.local_change import Box
from vision.screen_text import RedactedOnScreen, ScreenText

REPO = Path(__file__).resolve().parent.parent
DAY_S = 86400.0


def frame(t: float) -> SampledFrame:
    desk = Desk(width=320, height=180, pointer=None, cursor_on=False)
    desk.lines = [f"Deploy {t} done"]
    return SampledFrame(desk.frame(), t)


def name(t: float) -> str:
    return f"{t:010.3f}.jpg"


@pytest.mark.parametrize("obstacle", ["directory", "permission"])
async def test_a_frame_file_that_cannot_be_removed_is_one_warning_and_archiving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    obstacle: str,
) -> None:
    """Past its cap the archive removes its oldest frame's file. Any error but a missing file
    (a directory where the file was, a permission taken away, EIO) ended the archive's writer:
    the frame waiting behind the trim was never written. Now it is said once, counted, and
    the frames that follow are archived. (The tests run as root, which permissions do not
    stop, so the permission case has `unlink` refuse as a non-root worker's would.)"""
    archive = FrameArchive(tmp_path / "frames", "s-trim", max_bytes=1)  # holds its newest only
    archive.save(frame(1.0))
    await archive.aclose()
    stuck = archive.directory / name(1.0)
    if obstacle == "directory":
        stuck.unlink()
        stuck.mkdir()  # unlink: IsADirectoryError
    else:
        real_unlink = Path.unlink

        def refusing_unlink(path: Path, missing_ok: bool = False) -> None:
            if path == stuck:
                raise PermissionError(13, "Permission denied", str(path))
            real_unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refusing_unlink)

    writing, release = threading.Event(), threading.Event()
    real_write = archive._write

    def held_write(kept: SampledFrame, cover: tuple[Box, ...]) -> int:  # t=2 written, t=3 comes
        if kept.t == 2.0:
            writing.set()
            release.wait(10)
        return real_write(kept, cover)

    monkeypatch.setattr(archive, "_write", held_write)
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        archive.save(frame(2.0))  # its write trims t=1, which fails
        await asyncio.to_thread(writing.wait, 10)
        archive.save(frame(3.0))  # waits behind t=2's write and trim
        release.set()
        await archive.aclose()
        assert archive.times() == [3.0], "the frame waiting behind the failed trim was lost"
        archive.save(frame(4.0))
        await archive.aclose()

    assert archive.times() == [4.0] and archive.failed == 0
    assert archive.unremoved == 1
    assert sorted(p.name for p in archive.directory.iterdir()) == [name(1.0), name(4.0)]
    said = [r.getMessage() for r in caplog.records]
    error = "IsADirectoryError" if obstacle == "directory" else "PermissionError"
    assert len(said) == 1 and str(stuck) in said[0] and error in said[0], said


SECRET_BOX = (40, 60, 120, 30)


def covered(archive: FrameArchive, t: float) -> bool:
    """Whether the frame archived at `t` shows the cover's grey over `SECRET_BOX`."""
    bgr = cv2.imread(str(archive.directory / name(t)))
    x, y, w, h = SECRET_BOX
    return bool(np.abs(bgr[y:y + h, x:x + w].astype(int) - COVER_BGR).max() <= 8)


async def test_covered_boxes_are_filled_in_frames_written_since_and_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A read comes back after its frame was archived: the frames from its screen time on are
    written again with the boxes filled, and so is each frame after, until the cover is
    lifted; the frame before is as shared. A frame that cannot be covered is removed (said
    once), not kept as it was."""
    archive = FrameArchive(tmp_path / "frames", "s-cover", max_bytes=2**30)
    for t in (1.0, 2.0):
        archive.save(frame(t))
        await wait_archived(archive, [1.0, 2.0][:int(t)])
    archive.cover(2.0, (SECRET_BOX,))
    archive.save(frame(3.0))
    await wait_archived(archive, [1.0, 2.0, 3.0])
    await archive.aclose()
    assert [covered(archive, t) for t in (1.0, 2.0, 3.0)] == [False, True, True]
    archive.cover(4.0, ())  # a read of that part of the screen found nothing to hide
    archive.save(frame(4.0))
    await archive.aclose()
    assert not covered(archive, 4.0)

    (archive.directory / name(4.0)).write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        archive.cover(4.0, (SECRET_BOX,))
        await archive.aclose()
    assert archive.times() == [1.0, 2.0, 3.0] and archive.failed == 1
    assert not (archive.directory / name(4.0)).exists()
    [said] = [r.getMessage() for r in caplog.records]
    assert "frame archived at t=4.0s" in said and "the frame is removed" in said


def test_what_is_covered_follows_the_reads() -> None:
    """A read's redacted lines are covered until a read of that part of the screen; a read
    elsewhere leaves them."""
    def read(regions: tuple[Box, ...], redacted: tuple[Box, ...] = ()) -> ScreenText:
        return ScreenText(0.0, 0.0, "changed", "code", regions, [], 0, 0.0, 0,
                          redacted=redacted)

    shown = RedactedOnScreen()
    assert shown.after(read(((0, 0, 320, 180),), (SECRET_BOX,)))
    assert not shown.after(read(((200, 150, 50, 20),)))  # elsewhere
    assert shown.boxes == (SECRET_BOX,)
    assert shown.after(read(((0, 50, 320, 40),)))  # re-read: nothing hidden there now
    assert shown.boxes == ()


def test_what_was_covered_is_remembered_by_screen_time() -> None:
    """An earlier frame shown again is covered as the reads up to its time left the screen:
    a secret read at t=2 and gone at t=5 is covered in the frames of 2 to 5, not before, not
    after. Past the history kept, a time before it gets every box remembered."""
    def read(t: float, regions: tuple[Box, ...], redacted: tuple[Box, ...] = ()) -> ScreenText:
        return ScreenText(t, 0.0, "changed", "code", regions, [], 0, 0.0, 0, redacted=redacted)

    shown = RedactedOnScreen()
    assert shown.at(1.0) == ()
    shown.after(read(2.0, ((0, 0, 320, 180),), (SECRET_BOX,)))
    shown.after(read(3.0, ((200, 150, 50, 20),)))  # elsewhere: nothing changes
    shown.after(read(5.0, ((0, 50, 320, 40),)))  # the line is gone
    assert [shown.at(t) for t in (1.0, 2.0, 4.9, 5.0, 9.0)] == [
        (), (SECRET_BOX,), (SECRET_BOX,), (), ()]
    other = (0, 200, 100, 20)
    for index in range(RedactedOnScreen.HISTORY):  # a long session: the oldest are dropped
        shown.after(read(10.0 + index, ((0, 0, 320, 240),), (other,) if index % 2 else ()))
    assert shown.at(1.0) == (other,)  # unknown by now: every box remembered
    assert shown.at(10.0 + RedactedOnScreen.HISTORY) == shown.boxes
    # a read that frames folded into (t=7 read at t=8's): what it found covers t=7 on
    folded = RedactedOnScreen()
    folded.after(ScreenText(8.0, 0.0, "changed", "code", ((0, 0, 320, 180),), [], 0, 0.0, 1,
                            redacted=(SECRET_BOX,), first_t=7.0))
    assert [folded.at(t) for t in (6.9, 7.0, 8.0)] == [(), (SECRET_BOX,), (SECRET_BOX,)]


def backdate(directory: Path, seconds: float) -> None:
    """Make a session's directory and everything in it look untouched for `seconds`."""
    then = time.time() - seconds
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (then, then))


def prune_elsewhere(root: Path, retention_days: float) -> list[str]:
    """`prune` run by another process (a second worker, `memory forget`'s neighbour)."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from vision.frame_archive import prune; "
         "print(' '.join(sorted(prune(Path(sys.argv[1]), float(sys.argv[2])))))",
         str(root), str(retention_days)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.split()


async def wait_archived(archive: FrameArchive, times: list[float]) -> None:
    """Wait for the archive's writes without closing it (closing is what ends its session)."""
    for _ in range(500):
        if archive.times() == times:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"archived {archive.times()}, not {times}")


async def test_prune_never_removes_the_frames_of_a_session_still_open(tmp_path: Path) -> None:
    """Prune went by the directory's modification time alone: with a short retention it
    removed the frames of a session still open whose screen had not changed for a while (a
    paused share: nothing new is written), and `earlier_screen` found nothing. An open
    session's directory is left alone, by this process's prune and another's; once the session
    ends it goes when it is older than the retention."""
    root = tmp_path / "frames"
    live = FrameArchive(root, "s-live", max_bytes=60_000_000)
    live.save(frame(1.0))
    await wait_archived(live, [1.0])
    ended = FrameArchive(root, "s-ended", max_bytes=60_000_000)
    ended.save(frame(1.0))
    await ended.aclose()
    older = root / "s-older"  # a session archived before sessions marked their directory
    older.mkdir()
    (older / name(1.0)).write_bytes(b"jpeg")
    for directory in root.iterdir():
        backdate(directory, DAY_S)

    assert sorted(prune(root, 0.01)) == ["s-ended", "s-older"]
    assert await asyncio.to_thread(prune_elsewhere, root, 0.01) == []
    assert live.times() == [1.0] and (live.directory / name(1.0)).is_file()
    assert live.load(1.0).size == (320, 180)

    live.save(frame(2.0))  # the share goes on: the archive is still open
    await wait_archived(live, [1.0, 2.0])
    await live.aclose()
    assert prune(root, 0.01) == [], "ended now: newer than the retention"
    backdate(live.directory, DAY_S)
    assert await asyncio.to_thread(prune_elsewhere, root, 0.01) == ["s-live"]
    assert not root.joinpath("s-live").exists()


CHILD = """
import asyncio, sys
from pathlib import Path
from livekit import rtc
from vision.frame_archive import FrameArchive
from vision.frames import SampledFrame
from vision.jpeg import COVER_BGR
from vision.local_change import Box
from vision.screen_text import RedactedOnScreen, ScreenText

async def main() -> None:
    archive = FrameArchive(Path(sys.argv[1]), "s-child", max_bytes=60_000_000)
    pixels = bytes(64 * 64 * 4)
    archive.save(SampledFrame(rtc.VideoFrame(64, 64, rtc.VideoBufferType.RGBA, pixels), 1.0))
    while archive.times() != [1.0]:
        await asyncio.sleep(0.01)
    print("archived", flush=True)
    await asyncio.sleep(600)  # open until killed

asyncio.run(main())
"""


async def test_prune_keeps_another_processes_open_session_and_not_a_dead_ones(
    tmp_path: Path,
) -> None:
    """The archive's own process marks it open; when that process dies without closing it
    (killed, out of memory) the mark goes with it, and the frames are pruned as any ended
    session's."""
    root = tmp_path / "frames"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(root),
                                                 cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"archived\n"
        backdate(root / "s-child", DAY_S)
        assert prune(root, 0.01) == [] and (root / "s-child" / name(1.0)).is_file()
        assert await asyncio.to_thread(prune_elsewhere, root, 0.01) == []
    finally:
        child.kill()  # as the kernel's OOM killer would: no aclose
        await asyncio.wait_for(child.wait(), 30)
    assert prune(root, 0.01) == ["s-child"] and not (root / "s-child").exists()


def nfs_like_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock as NFS emulates it: an exclusive lock only on a descriptor open for writing."""
    real = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == (
                os.O_RDONLY):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real(fd, operation)
    monkeypatch.setattr(frame_archive.fcntl, "flock", flock)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_prune_takes_its_lock_as_nfs_grants_it_and_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NFS grants an exclusive flock only on a descriptor open for writing: prune opened the
    mark read-only, so one crashed session's leftover mark raised out of every prune (no
    frames were ever pruned again) and leaked a descriptor each time."""
    root = tmp_path / "frames"
    crashed = root / "s-crashed"
    crashed.mkdir(parents=True)
    (crashed / ".live").write_bytes(b"")
    (crashed / name(1.0)).write_bytes(b"jpeg")
    backdate(crashed, DAY_S)
    nfs_like_flock(monkeypatch)
    before = open_descriptors()
    assert prune(root, 0.01) == ["s-crashed"] and not crashed.exists()
    assert open_descriptors() == before


async def test_a_filesystem_without_locks_still_archives_and_prunes_by_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Where flock is refused (NFS without a lock daemon, some FUSE filesystems), the mark was
    a failed write: no frame was archived at all, and prune raised at the first mark. Now the
    frames are archived, the session is marked open in its own process, once said; prune goes
    by age there, as it did before the marks."""
    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(frame_archive.fcntl, "flock", refused)
    root = tmp_path / "frames"
    archive = FrameArchive(root, "s-open", max_bytes=60_000_000)
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        for t in (1.0, 2.0, 3.0):
            archive.save(frame(t))
            await wait_archived(archive, [x for x in (1.0, 2.0, 3.0) if x <= t])
    assert archive.failed == 0
    assert [r.getMessage() for r in caplog.records if "takes no file locks" in r.getMessage()
            ] and len(caplog.records) == 1
    crashed = root / "s-crashed"
    crashed.mkdir()
    (crashed / ".live").write_bytes(b"")  # left by a session of a build with locks
    for directory in (root / "s-open", crashed):
        backdate(directory, DAY_S)
    assert prune(root, 0.01) == ["s-crashed"]  # the open one is this process's
    await archive.aclose()
    assert prune(root, 0.01) == ["s-open"]
