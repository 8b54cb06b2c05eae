"""Decode a screen recording (WebM/MP4) into timestamped I420 frames, for replay and tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
from livekit import rtc

from .frames import InvalidFrame, frame_from_yuv420p


class VideoUnreadable(ValueError):
    """The file is missing, not a video, or has no decodable video stream."""


def probe_duration(path: Path) -> float:
    """Duration in seconds, checked up front so a bad file fails before a session starts."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoUnreadable(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
            return max((f.time or 0.0) for f in container.decode(stream))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoUnreadable(f"{path}: cannot read video ({exc})") from None


def iter_frames(path: Path) -> Iterator[tuple[float, rtc.VideoFrame]]:
    """Yield (seconds, frame) in presentation order; a corrupt frame ends decoding with an error."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoUnreadable(f"{path}: cannot open video ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoUnreadable(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for decoded in container.decode(stream):
                if decoded.time is None:
                    continue
                if decoded.format.name != "yuv420p":
                    decoded = decoded.reformat(format="yuv420p")
                try:
                    frame = frame_from_yuv420p(
                        decoded.to_ndarray(), decoded.width, decoded.height
                    )
                except InvalidFrame:
                    continue
                yield float(decoded.time), frame
        except av.error.FFmpegError as exc:
            raise VideoUnreadable(f"{path}: decoding failed ({exc})") from None
