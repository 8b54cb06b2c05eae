"""Run a recording through the live screen path offline: `sightline vision scan` and the eval.

The frames go through the same `ScreenWatcher` (sampler, frame checks, change detector) a live
session uses, so what a scan prints is what a session with that screen would have decided.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from livekit import rtc
from PIL import Image, UnidentifiedImageError

from .change import ChangeDetector, DetectorConfig
from .sampler import FrameSampler
from .screen import FrameDecision, ScreenWatcher
from .video_file import VideoUnreadable, iter_frames

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
    return iter_frames(path)


@dataclass
class ScanSummary:
    sampled: int = 0
    kept: int = 0
    invalid: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    by_content_type: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, decision: FrameDecision) -> None:
        if decision.change is None:
            self.invalid += 1
            return
        self.sampled += 1
        self.kept += decision.kept
        if not decision.kept:
            self.dropped[decision.reason] += 1
        counts = self.by_content_type.setdefault(str(decision.change.content_type), Counter())
        counts["sampled"] += 1
        counts["kept"] += decision.kept

    def as_dict(self) -> dict[str, object]:
        return {
            "summary": True,
            "sampled": self.sampled,
            "kept": self.kept,
            "invalid": self.invalid,
            "reduction": round(1 - self.kept / self.sampled, 4) if self.sampled else 0.0,
            "dropped": dict(self.dropped),
            "by_content_type": {k: dict(v) for k, v in sorted(self.by_content_type.items())},
        }


def scan(
    path: Path, fps: float = 1.0, config: DetectorConfig | None = None
) -> Iterator[FrameDecision]:
    """Every decision for a recording, in order, as a live session would have made them."""
    decisions: list[FrameDecision] = []
    watcher = ScreenWatcher(FrameSampler(fps), decisions.append, ChangeDetector(config))
    for t, frame in source_frames(path, fps):
        watcher.offer(t, frame)
        yield from decisions
        decisions.clear()
