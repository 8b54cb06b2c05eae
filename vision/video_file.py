"""Decode a screen recording (WebM/MP4) into timestamped I420 frames, for replay and tools.

A damaged recording is decoded as far as it goes, as ffmpeg would: a packet the decoder
rejects is skipped and counted, and the `VideoReport` says where the frames really end
against the duration the file's header claims, so a truncated or corrupted recording is named
as such instead of passing for a whole one (or ending a scan at its first bad packet).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from livekit import rtc

from .frames import InvalidFrame, frame_from_yuv420p

# frames ending this much before the header's duration mean the file lost its end (one frame
# interval of a 1 fps recording, plus rounding)
ENDS_EARLY_S = 1.5


class VideoUnreadable(ValueError):
    """The file is missing, not a video, or has no decodable video stream."""


def probe_duration(path: Path) -> float:
    """Duration in seconds, checked up front so a bad file fails before a session starts."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoUnreadable(f"{path}: no video stream")
            duration = _header_duration(container) or max(
                ((f.time or 0.0) for f in container.decode(container.streams.video[0])),
                default=None)
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoUnreadable(f"{path}: cannot read video ({exc})") from None
    if duration is None:  # a stream, but not one frame decodes (a file cut after its header)
        raise VideoUnreadable(f"{path}: no decodable video frames")
    return duration


def _header_duration(container: Any) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / 1_000_000)
    return None


@dataclass
class VideoReport:
    """What decoding a recording found, filled in as its frames are read."""

    name: str
    header_duration_s: float | None = None
    frames: int = 0
    last_t: float | None = None
    skipped_packets: int = 0  # packets the decoder rejected (corrupt data)
    skipped_frames: int = 0  # decoded frames unusable as images, or stamped before the last
    stopped: str | None = None  # why reading stopped before the container's end, if it did
    finished: bool = False

    @property
    def ends_early(self) -> bool:
        """Its frames stop well before the duration its header claims (a truncated file)."""
        if self.header_duration_s is None:
            return self.stopped is not None
        return (self.last_t or 0.0) < self.header_duration_s - ENDS_EARLY_S

    def problem(self) -> str | None:
        """One line saying what is wrong with the recording, or None when it decoded whole."""
        if not self.finished or not (self.ends_early or self.skipped_packets
                                     or self.skipped_frames):
            return None
        parts = []
        if self.ends_early:
            header = (f", though its header says {self.header_duration_s:.1f}s"
                      if self.header_duration_s is not None else "")
            end = f"{self.last_t:.1f}s" if self.last_t is not None else "its start"
            parts.append(f"its frames end at {end}{header} (the file is truncated or damaged; "
                         "later moments see the screen as it was then)")
        skipped = self.skipped_packets + self.skipped_frames
        if skipped:
            parts.append(f"{skipped} undecodable packets or frames skipped"
                         if skipped != 1 else "1 undecodable packet or frame skipped")
        return f"{self.name}: " + "; ".join(parts)

    def as_record(self) -> dict[str, Any]:
        return {
            "file": self.name, "header_duration_s": self.header_duration_s,
            "decoded_frames": self.frames, "last_frame_t": self.last_t,
            "ends_early": self.ends_early, "skipped_packets": self.skipped_packets,
            "skipped_frames": self.skipped_frames, "stopped": self.stopped,
            "problem": self.problem(),
        }


class VideoFrames(Iterator[tuple[float, rtc.VideoFrame]]):
    """(seconds, frame) in presentation order; `report` tells what decoding found. Opening
    checks the file is a video; a bad packet later is skipped, never raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoUnreadable(f"{path}: cannot open video ({exc})") from None
        if not container.streams.video:
            container.close()
            raise VideoUnreadable(f"{path}: no video stream")
        self.report = VideoReport(path.name, _header_duration(container))
        self._frames = self._decode(container)

    def __next__(self) -> tuple[float, rtc.VideoFrame]:
        return next(self._frames)

    def close(self) -> None:
        """Close the container, its file and its decoding threads now; left to the garbage
        collector, they stay open for as long as anything holds these frames (a failure's
        traceback). Not while a `next` runs in another thread: a running generator cannot be
        closed (the caller waits for it)."""
        self._frames.close()

    def _decode(self, container: Any) -> Generator[tuple[float, rtc.VideoFrame]]:
        report = self.report
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:  # the container itself is damaged here
                    report.stopped = f"demuxing failed ({exc})"
                    break
                try:
                    decoded_frames = packet.decode()
                except av.error.FFmpegError:
                    report.skipped_packets += 1
                    continue
                for decoded in decoded_frames:
                    frame = self._image(decoded)
                    if frame is not None:
                        yield frame
        report.finished = True
        if not report.frames:
            raise VideoUnreadable(f"{self.path}: no decodable video frames")

    def _image(self, decoded: Any) -> tuple[float, rtc.VideoFrame] | None:
        if decoded.time is None:
            return None
        if self.report.last_t is not None and decoded.time < self.report.last_t:
            self.report.skipped_frames += 1  # a damaged timestamp: screen time never goes back
            return None
        try:
            if decoded.format.name != "yuv420p":
                decoded = decoded.reformat(format="yuv420p")
            frame = frame_from_yuv420p(decoded.to_ndarray(), decoded.width, decoded.height)
        except (InvalidFrame, av.error.FFmpegError, ValueError):
            self.report.skipped_frames += 1
            return None
        self.report.frames += 1
        self.report.last_t = max(self.report.last_t or 0.0, float(decoded.time))
        return float(decoded.time), frame


def iter_frames(path: Path) -> VideoFrames:
    """The file's frames, decoded past damaged packets (see `VideoFrames`)."""
    return VideoFrames(path)
