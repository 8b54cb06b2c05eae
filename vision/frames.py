"""Frames as `rtc.VideoFrame` in I420, whether they came from a LiveKit track or a video file.

One frame type for live and replay keeps the rest of the pipeline unaware of the source. I420 is
what WebRTC decoders produce, so live frames are used as they are, with no RGB conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from .local_change import Box

# what covers a part of the screen a model or the archive must not show: mid grey, seen on a
# dark theme and a light one, a few pixels past the box (a text line's box is tight on its glyphs)
COVER_GREY = 128
NEUTRAL_CHROMA = 128
COVER_MARGIN = 3


class InvalidFrame(ValueError):
    """A frame that cannot be used: empty, or its buffer does not match its size."""


@dataclass(frozen=True)
class SampledFrame:
    """A frame chosen by the sampler, with its time in seconds from the start of the source."""

    frame: rtc.VideoFrame
    t: float

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.width, self.frame.height


def i420_size(width: int, height: int) -> int:
    chroma = ((width + 1) // 2) * ((height + 1) // 2)
    return width * height + 2 * chroma


_BYTES_PER_PIXEL = {
    rtc.VideoBufferType.RGBA: 4,
    rtc.VideoBufferType.ABGR: 4,
    rtc.VideoBufferType.ARGB: 4,
    rtc.VideoBufferType.BGRA: 4,
    rtc.VideoBufferType.RGB24: 3,
}


def expected_size(frame: rtc.VideoFrame) -> int:
    """Bytes a frame of this type and size must hold; unknown types are rejected."""
    if frame.type in (rtc.VideoBufferType.I420, rtc.VideoBufferType.NV12):
        return i420_size(frame.width, frame.height)
    if frame.type in _BYTES_PER_PIXEL:
        return frame.width * frame.height * _BYTES_PER_PIXEL[frame.type]
    raise InvalidFrame(f"unsupported frame type {rtc.VideoBufferType.Name(frame.type)}")


def check_frame(frame: rtc.VideoFrame) -> None:
    """Reject a frame whose buffer cannot hold its pixels, before anything reads it."""
    if frame.width <= 0 or frame.height <= 0:
        raise InvalidFrame(f"frame has no pixels ({frame.width}x{frame.height})")
    need = expected_size(frame)
    if len(frame.data) < need:
        raise InvalidFrame(
            f"{rtc.VideoBufferType.Name(frame.type)} buffer of {len(frame.data)} bytes is too "
            f"short for {frame.width}x{frame.height} (needs {need})"
        )


def as_i420(frame: rtc.VideoFrame) -> rtc.VideoFrame:
    """Check a frame and return it in I420 (converting only when the source sent another type)."""
    check_frame(frame)
    if frame.type == rtc.VideoBufferType.ABGR:
        # the SDK's ABGR conversion aborts the whole process (livekit-ffi colorcvt asserts the
        # buffer is RGBA): the same pixels, bytes reversed, are RGBA, which it converts
        frame = _abgr_as_rgba(frame)
    if frame.type != rtc.VideoBufferType.I420:
        frame = frame.convert(rtc.VideoBufferType.I420)
    return frame


def _abgr_as_rgba(frame: rtc.VideoFrame) -> rtc.VideoFrame:
    pixels = np.frombuffer(frame.data, np.uint8, count=frame.width * frame.height * 4)
    rgba = np.ascontiguousarray(pixels.reshape(-1, 4)[:, ::-1])
    return rtc.VideoFrame(frame.width, frame.height, rtc.VideoBufferType.RGBA, rgba.tobytes())


def frame_from_yuv420p(planes: np.ndarray, width: int, height: int) -> rtc.VideoFrame:
    """Wrap a decoder's packed yuv420p buffer (Y, then U, then V) as an I420 `rtc.VideoFrame`."""
    data = np.ascontiguousarray(planes).reshape(-1)
    if data.size < i420_size(width, height):
        raise InvalidFrame(f"decoded buffer too short for {width}x{height}")
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, data.tobytes())


def _planes(data: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """The Y, U and V planes of a packed I420 buffer, as views."""
    chroma_w, chroma_h = (width + 1) // 2, (height + 1) // 2
    y = data[:width * height].reshape(height, width)
    u, v = data[width * height:width * height + 2 * chroma_w * chroma_h].reshape(
        2, chroma_h, chroma_w)
    return y, u, v


def _cover(data: np.ndarray, width: int, height: int, boxes: Sequence[Box], left: int = 0,
           top: int = 0) -> None:
    """Fill each box of `boxes` (in the whole frame's pixels; this buffer's begin at `left`,
    `top`, both even) and `COVER_MARGIN` pixels around it with grey, in place: a solid fill, as
    a blur of text can be read back."""
    y, u, v = _planes(data, width, height)
    for x, box_y, w, h in boxes:
        x0, y0 = max(0, x - COVER_MARGIN - left), max(0, box_y - COVER_MARGIN - top)
        x1 = min(width, x + w + COVER_MARGIN - left)
        y1 = min(height, box_y + h + COVER_MARGIN - top)
        if x0 < x1 and y0 < y1:
            y[y0:y1, x0:x1] = COVER_GREY
            for chroma in (u, v):
                chroma[y0 // 2:(y1 + 1) // 2, x0 // 2:(x1 + 1) // 2] = NEUTRAL_CHROMA


def covered_i420(frame: rtc.VideoFrame, boxes: Sequence[Box]) -> rtc.VideoFrame:
    """A copy of an I420 frame with `boxes` filled (`_cover`): the screen as a model may see
    it, what its text had hidden covered."""
    width, height = frame.width, frame.height
    data = np.frombuffer(frame.data, np.uint8, count=i420_size(width, height)).copy()
    _cover(data, width, height, boxes)
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, data.tobytes())


def crop_i420(frame: rtc.VideoFrame, left: int, top: int, right: int, bottom: int,
              cover: Sequence[Box] = ()) -> rtc.VideoFrame:
    """The pixels of an I420 frame inside [left, right) × [top, bottom), at full resolution, as a
    new I420 frame, the boxes of `cover` (in the frame's pixels) filled. Edges are rounded to
    even pixels (chroma is subsampled 2×2) and clamped to the frame; an empty box is
    `InvalidFrame`."""
    width, height = frame.width, frame.height
    left, top = max(0, left) & ~1, max(0, top) & ~1
    right, bottom = min(width, right + (right & 1)), min(height, bottom + (bottom & 1))
    if right - left < 2 or bottom - top < 2:
        raise InvalidFrame(f"crop {left},{top}-{right},{bottom} of {width}x{height} is empty")
    y, u, v = _planes(np.frombuffer(frame.data, np.uint8, count=i420_size(width, height)),
                      width, height)
    u, v = (plane[top // 2:(bottom + 1) // 2, left // 2:(right + 1) // 2] for plane in (u, v))
    packed = np.concatenate([y[top:bottom, left:right].reshape(-1), u.reshape(-1),
                             v.reshape(-1)])
    _cover(packed, right - left, bottom - top, cover, left, top)
    return rtc.VideoFrame(right - left, bottom - top, rtc.VideoBufferType.I420, packed.tobytes())
