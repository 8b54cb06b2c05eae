"""Run a recording through the live screen path offline: `sightline vision scan` and the eval.

The frames go through the same `ScreenWatcher` (sampler, frame checks, change detector) a live
session uses, so what a scan prints is what a session with that screen would have decided.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from livekit import rtc
from PIL import Image, UnidentifiedImageError

from .change import ChangeDetector, DetectorConfig
from .sampler import FrameSampler
from .screen import FrameDecision, FrameTally, ScreenWatcher
from .video_file import VideoFrames, VideoReport, VideoUnreadable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_frames(directory: Path, spacing: float) -> Iterator[tuple[float, rtc.VideoFrame]]:
    """Images sorted by name, `spacing` seconds apart. An unreadable image becomes an empty frame,
    which the watcher reports as invalid, so one bad file does not end the scan."""
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise VideoUnreadable(f"{directory}: no PNG or JPEG frames")
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                rgba = np.asarray(image.convert("RGBA"))
        except (UnidentifiedImageError, OSError):
            yield index * spacing, rtc.VideoFrame(0, 0, rtc.VideoBufferType.RGBA, b"")
            continue
        height, width = rgba.shape[:2]
        yield index * spacing, rtc.VideoFrame(
            width, height, rtc.VideoBufferType.RGBA, rgba.tobytes()
        )


def source_frames(path: Path, fps: float) -> Iterator[tuple[float, rtc.VideoFrame]]:
    """A video file's decoded frames, or a directory of images taken as one frame per sample."""
    if path.is_dir():
        return image_frames(path, 1.0 / fps)
    if not path.exists():
        raise VideoUnreadable(f"{path}: no such file or directory")
    if not path.is_file():  # a pipe or a device: reading it could wait forever
        raise VideoUnreadable(f"{path}: not a file or a directory of images")
    return VideoFrames(path)


def video_report(frames: Iterator[tuple[float, rtc.VideoFrame]]) -> VideoReport | None:
    """What decoding found, when the frames came from a video file (see `VideoReport`)."""
    return frames.report if isinstance(frames, VideoFrames) else None


def summary_line(tally: FrameTally, video: VideoReport | None = None) -> dict[str, object]:
    """The closing JSON line of `sightline vision scan --json`; `video` says where a damaged
    recording's frames really end and what was skipped."""
    sampled = tally.sampled
    return {
        "summary": True,
        "sampled": sampled,
        "kept": tally.kept,
        "invalid": tally.invalid,
        "reduction": round(1 - tally.kept / sampled, 4) if sampled else 0.0,
        "dropped": {r: n for r, n in tally.dropped.items() if r != "invalid"},
        "by_content_type": tally.by_content_type(),
        **({"video": video.as_record()} if video is not None else {}),
    }


def watch(
    frames: Iterator[tuple[float, rtc.VideoFrame]], fps: float, config: DetectorConfig | None
) -> Iterator[tuple[FrameDecision, rtc.VideoFrame]]:
    """Each decision with the frame it was made on, through the live session's watcher."""
    decisions: list[FrameDecision] = []
    watcher = ScreenWatcher(FrameSampler(fps), decisions.append, ChangeDetector(config))
    for t, frame in frames:
        watcher.offer(t, frame)
        for decision in decisions:
            yield decision, frame
        decisions.clear()


def scan(
    path: Path, fps: float = 1.0, config: DetectorConfig | None = None
) -> Iterator[FrameDecision]:
    """Every decision for a recording, in order, as a live session would have made them."""
    for decision, _ in watch(source_frames(path, fps), fps, config):
        yield decision
