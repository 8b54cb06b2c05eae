"""Covering what the screen's text hid in frames archived before the archive covered it
(vision/archive_cover.py, run by `sightline memory hide-secrets`).

Protects: a frame archived as shared, showing a password and a token, is read again whole with
the real OCR and the session's redactor, and written again with those lines filled, the rest of
the screen still readable; a frame with nothing to hide is left byte for byte; a file that is no
JPEG is counted and left; a directory read whole is marked, so a second pass reads nothing; an
archive open in this process is left for a later pass, and read once it closes; a frame that
cannot be written again is counted, said once, and read again on the next pass; covering
keeps the times the retention goes by; frames are read on several threads and the pass says how
far it is.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_screen import CODE, Desk
from test_frame_archive import wait_archived

from memory.secret_text import hide_secrets
from vision import archive_cover
from vision.archive_cover import COVERED_FILE, ArchiveCover, archived_luma, cover_archived
from vision.frame_archive import FrameArchive, prune
from vision.frames import SampledFrame
from vision.ocr import Layout
from vision.screen_text import read_region

DAY_S = 86400.0
SECRETS = ['DB_PASSWORD="hunter2-Zq9xT"', "API_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789"]


def desk(*extra: str) -> Desk:
    return Desk(lines=[*CODE[:8], *extra, "    return results"], pointer=None, cursor_on=False)


def archived(directory: Path, t: float, shown: Desk) -> Path:
    """`shown` archived at screen time `t` as the archive wrote frames before it covered any."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{t:010.3f}.jpg"
    bgr = np.asarray(shown.image())[:, :, ::-1]
    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return path


def text_of(path: Path) -> str:
    """Everything the OCR reads in an archived frame, nothing hidden."""
    luma = archived_luma(path)
    height, width = luma.shape
    lines, _ = read_region(luma, (0, 0, width, height), Layout.BLOCK)
    return "\n".join(line.text for line in lines)


def test_a_secret_archived_as_shared_is_covered_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "frames"
    shown = archived(root / "s1", 1.0, desk(*SECRETS))
    plain = archived(root / "s1", 2.0, desk())
    (root / "s1" / "0000003.000.jpg").write_bytes(b"half a frame")
    before = plain.read_bytes()
    assert "hunter2" in text_of(shown) and "ghp_" in text_of(shown)

    told: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        done = cover_archived(root, hide_secrets, ["s1", "never-archived"], threads=2,
                              progress=lambda *at: told.append(at))
    assert done == ArchiveCover(frames_read=2, frames_covered=1, lines_covered=2, unreadable=1)
    assert told == [(3, 3)], "told after the session's frames, of all there were to read"
    after = text_of(shown)
    assert "hunter2" not in after and "ghp_" not in after
    assert "import asyncio" in after and "return results" in after
    assert plain.read_bytes() == before, "nothing to hide: not written again"
    assert (root / "s1" / COVERED_FILE).exists()
    [said] = [r.getMessage() for r in caplog.records]
    assert "0000003.000.jpg is not a readable JPEG" in said

    covered_bytes = shown.read_bytes()
    assert cover_archived(root, hide_secrets, ["s1"]) == ArchiveCover(), "read once"
    assert shown.read_bytes() == covered_bytes


def test_covering_keeps_the_frames_no_longer_than_the_retention(tmp_path: Path) -> None:
    """The retention goes by the times of a session's directory and its files: covering
    wrote the frames and a mark, which made a session archived ten days ago look new, and
    `prune` kept its frames another week."""
    root = tmp_path / "frames"
    archived(root / "s1", 1.0, desk(*SECRETS))
    archived(root / "s2", 1.0, desk())
    old = time.time() - 10 * DAY_S
    for path in (*root.glob("*/*"), *root.glob("*")):
        os.utime(path, (old, old))
    done = cover_archived(root, hide_secrets, ["s1", "s2"])
    assert (done.frames_read, done.frames_covered) == (2, 1)
    assert sorted(prune(root, retention_days=7)) == ["s1", "s2"]


async def test_an_open_archive_is_left_until_it_closes(tmp_path: Path) -> None:
    root = tmp_path / "frames"
    archive = FrameArchive(root, "s-open", max_bytes=2**30)
    archive.save(SampledFrame(desk().frame(), 1.0))
    await wait_archived(archive, [1.0])
    shown = archived(root / "s-open", 0.5, desk(*SECRETS))  # archived before covering
    assert cover_archived(root, hide_secrets, ["s-open"]) == ArchiveCover(still_open=["s-open"])
    assert "hunter2" in text_of(shown)
    await archive.aclose()
    done = cover_archived(root, hide_secrets, ["s-open"])
    assert (done.frames_read, done.frames_covered) == (2, 1)
    assert "hunter2" not in text_of(shown)


def test_a_frame_that_cannot_be_written_is_read_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "frames"
    shown = [archived(root / "s1", t, desk(*SECRETS)) for t in (1.0, 2.0)]

    def full_disk(path: Path, boxes: object) -> int:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(archive_cover, "write_covered", full_disk)
    with caplog.at_level(logging.WARNING, logger="sightline.vision"):
        done = cover_archived(root, hide_secrets, ["s1"])
    assert (done.failed, done.frames_read) == (2, 0)
    [said] = [r.getMessage() for r in caplog.records]
    assert "No space left on device" in said and "read again on the next run" in said
    assert not (root / "s1" / COVERED_FILE).exists()
    monkeypatch.undo()
    done = cover_archived(root, hide_secrets, ["s1"])
    assert (done.failed, done.frames_covered) == (0, 2)
    assert all("hunter2" not in text_of(path) for path in shown)
