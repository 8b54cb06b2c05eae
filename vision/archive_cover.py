"""Covering what the screen's text hid in frames archived before the archive covered it.

A session's archive fills the boxes of the lines its screen reader hid (a password in a `.env`
file: vision/frame_archive.py `cover`). Frames archived before it did, and frames whose read
failed, still show the screen as it was, until the retention removes them. `sightline memory
hide-secrets` reads each such frame again here, whole, as the session's reader reads a change
(its content type picks the layout), puts the lines through the same redactor, and writes the
frame again with the changed lines' boxes filled.

A session's directory is read once: when each of its frames is done it is marked
(`COVERED_FILE`), so running again reads only what was not. Each frame, the mark and the
directory keep the times they had: the retention goes by them, and covering must not extend
it. A directory whose archive is open in any process is left for a later run (the session
covers what it reads as it goes). A file that is not a readable JPEG is left as it is and
counted: nothing can show it (`earlier_screen` refuses it too). A frame that cannot be written
again (a full disk, a permission) is counted, said once, and its directory left unmarked, so
the next run reads it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .change import content_stats
from .content_type import ContentType, TypeThresholds, classify, texture
from .frame_archive import held_closed, load, write_covered
from .frames import as_i420
from .luma import downscale, luma_plane
from .screen_text import Redactor, read_text

log = logging.getLogger("sightline.vision")

COVERED_FILE = ".covered"  # in a session's directory: every frame in it was read and covered


@dataclass
class ArchiveCover:
    """What one pass over the archived frames did."""

    frames_read: int = 0
    frames_covered: int = 0  # of those read, written again with boxes filled
    lines_covered: int = 0
    unreadable: int = 0  # files that are not a readable JPEG, left as they are
    failed: int = 0  # frames that could not be written again: read again on the next run
    still_open: list[str] = field(default_factory=list)  # sessions whose archive is open


def still_content(luma: np.ndarray) -> ContentType:
    """The content type of one frame on its own: no motion to tell video by, so the type a
    still of it reads as."""
    return classify(content_stats(*texture(downscale(luma)), None), TypeThresholds())


def archived_luma(path: Path) -> np.ndarray:
    """The luma plane of an archived frame, decoded as `earlier_screen` loads it and converted
    as a live frame is (limited range: what the content type's cut-offs and the reader
    expect). ValueError when it is no readable JPEG."""
    try:
        frame = load(path, 0.0).frame
    except FileNotFoundError as exc:  # `load`'s word for no readable JPEG, missing or not
        raise ValueError(f"{path.name} is not a readable JPEG") from exc
    return luma_plane(as_i420(frame))


def cover_frame(path: Path, redact: Redactor) -> int:
    """Read the archived frame at `path` whole, and write it again with the boxes of the lines
    `redact` changed filled; how many lines were. ValueError when it is no readable JPEG."""
    luma = archived_luma(path)
    height, width = luma.shape
    read = read_text(redact, None, luma, [(0, 0, width, height)], still_content(luma))
    if read.redacted:
        write_covered(path, read.redacted)
    return len(read.redacted)


# what `cover_archived` reports as it goes: (frames done, frames to do) of this pass
Progress = Callable[[int, int], None]


def cover_archived(root: Path, redact: Redactor, sessions: Iterable[str], *, threads: int = 1,
                   progress: Progress | None = None) -> ArchiveCover:
    """Cover what `redact` hides in the archived frames of `sessions` not covered yet, each
    frame a read of the whole screen (about half a second of CPU at 1080p) on one of `threads`
    threads (Tesseract lets go of the GIL while it reads); `progress` is told after each
    session's frames. Blocks: run it off an event loop."""
    done = ArchiveCover()
    todo = [d for d in (root / session for session in sessions) if _uncovered(d)]
    total = sum(len(_frames(d)) for d in todo)
    with ThreadPoolExecutor(threads, thread_name_prefix="sightline-cover") as pool:
        for directory in todo:
            try:
                with held_closed(directory) as closed:
                    if not closed:
                        done.still_open.append(directory.name)
                        continue
                    _cover_directory(directory, redact, pool, done)
            except FileNotFoundError:  # removed meanwhile: a user forgotten, a prune
                continue
            if progress is not None:
                progress(done.frames_read + done.unreadable + done.failed, total)
    return done


def uncovered_sessions(root: Path) -> list[str]:
    """The sessions with an archived-frame directory under `root` not covered yet."""
    try:
        return sorted(d.name for d in root.iterdir() if _uncovered(d))
    except OSError:  # no archive yet
        return []


def _uncovered(directory: Path) -> bool:
    try:
        return directory.is_dir() and not (directory / COVERED_FILE).exists()
    except OSError:
        return False


def _frames(directory: Path) -> list[Path]:
    try:
        return sorted(directory.glob("*.jpg"))
    except OSError:
        return []


def _cover_directory(directory: Path, redact: Redactor, pool: ThreadPoolExecutor,
                     done: ArchiveCover) -> None:
    failed = done.failed
    times = _times(directory)
    paths = _frames(directory)
    for path, outcome in zip(paths, pool.map(partial(_cover_one, redact=redact), paths),
                             strict=True):
        _count(path, outcome, done)
    if done.failed == failed:
        _mark_covered(directory, times)
    os.utime(directory, ns=times)


def _times(path: Path) -> tuple[int, int]:
    """`path`'s access and modification times, to put back once it is written again: the
    retention goes by them (vision/frame_archive.py `prune`), and covering a frame must not
    keep it any longer."""
    status = path.stat()
    return status.st_atime_ns, status.st_mtime_ns


def _mark_covered(directory: Path, times: tuple[int, int]) -> None:
    marker = directory / COVERED_FILE
    try:
        marker.touch()
        os.utime(marker, ns=times)
    except OSError as exc:
        log.warning("could not mark %s as covered (%s): it is read again on the next run",
                    directory, exc)


def _cover_one(path: Path, redact: Redactor) -> int | ValueError | OSError:
    """Cover one frame (`cover_frame`), its times kept; how many lines were covered, or what
    kept it from being read or written (counted on the caller's thread, `_count`)."""
    try:
        times = _times(path)
        lines = cover_frame(path, redact)
        os.utime(path, ns=times)
    except (ValueError, OSError) as exc:
        return exc
    return lines


def _count(path: Path, outcome: int | ValueError | OSError, done: ArchiveCover) -> None:
    if isinstance(outcome, ValueError):
        done.unreadable += 1
        if done.unreadable == 1:
            log.warning("left an archived frame as it is: %s", outcome)
    elif isinstance(outcome, OSError):
        done.failed += 1
        if done.failed == 1:
            log.warning("could not cover the archived frame %s (%s): it is read again on the "
                        "next run", path, outcome)
    else:
        done.frames_read += 1
        done.frames_covered += bool(outcome)
        done.lines_covered += outcome
