"""A frame as JPEG bytes, optionally resized, with OpenCV.

A worker hosts many sessions in one process, each on its own event loop in its own thread, all
sharing one GIL. Pillow's JPEG encoder (what livekit-agents' `utils.images.encode` runs, and
what the model's screenshots went through before) holds the GIL for the whole encode: 3-10 ms
for a frame, longer when the thread is preempted, and every other session of the process waits
meanwhile. OpenCV releases the GIL inside each call (colour conversion, resize, encode), so the
process's other sessions run while a frame is encoded (`bench/screenshot_encode.py` measures
both). I420 frames, what WebRTC decoders produce, go to BGR in one conversion. Boxes can be
covered on the way (what the screen's text had hidden: the frame archive's `cover`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from livekit import rtc

from .frames import COVER_GREY, COVER_MARGIN, as_i420, check_frame, i420_size
from .local_change import Box

COVER_BGR = (COVER_GREY,) * 3  # the grey `covered_i420` fills an I420 frame with

# frame types OpenCV converts from directly, with their bytes per pixel
_TO_BGR = {
    rtc.VideoBufferType.RGBA: (cv2.COLOR_RGBA2BGR, 4),
    rtc.VideoBufferType.BGRA: (cv2.COLOR_BGRA2BGR, 4),
    rtc.VideoBufferType.RGB24: (cv2.COLOR_RGB2BGR, 3),
}


def _bgr_pixels(frame: rtc.VideoFrame) -> np.ndarray:
    """The frame as a height × width × 3 BGR array (a new array: the frame is not touched)."""
    check_frame(frame)
    width, height = frame.width, frame.height
    if frame.type == rtc.VideoBufferType.I420 and not (width % 2 or height % 2):
        yuv = np.frombuffer(frame.data, np.uint8, count=i420_size(width, height))
        return cv2.cvtColor(yuv.reshape(height * 3 // 2, width), cv2.COLOR_YUV2BGR_I420)
    if frame.type not in _TO_BGR:  # OpenCV's I420 conversion wants even sides; others go by RGBA
        frame = as_i420(frame).convert(rtc.VideoBufferType.RGBA)
    code, channels = _TO_BGR[frame.type]
    pixels = np.frombuffer(frame.data, np.uint8, count=width * height * channels)
    return cv2.cvtColor(pixels.reshape(height, width, channels), code)


def _interpolation(x_scale: float, y_scale: float) -> int:
    """Bilinear down to half size: as sharp as Pillow's bicubic resize (the reference in
    tests/test_jpeg.py) at a seventh of area averaging's cost (2.4 against 16.5 ms for 1080p to
    1365×768: area averaging is slow at fractional scales). Below half, bilinear skips pixels and
    aliases thin strokes of text, so area averaging; cubic when enlarging."""
    if x_scale > 1 or y_scale > 1:
        return cv2.INTER_CUBIC
    return cv2.INTER_LINEAR if min(x_scale, y_scale) >= 0.5 else cv2.INTER_AREA


def _covered(bgr: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """`bgr` with each box (x, y, width, height) and `COVER_MARGIN` pixels around it filled with
    `COVER_BGR`: a solid fill, as a blur of text can be read back."""
    height, width = bgr.shape[:2]
    for x, y, w, h in boxes:
        bgr[max(0, y - COVER_MARGIN):min(height, y + h + COVER_MARGIN),
            max(0, x - COVER_MARGIN):min(width, x + w + COVER_MARGIN)] = COVER_BGR
    return bgr


def _encoded(bgr: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def jpeg_bytes(frame: rtc.VideoFrame, quality: int,
               size: tuple[int, int] | None = None, cover: Sequence[Box] = ()) -> bytes:
    """The frame as a JPEG of `quality` (1-100), at `size` (width, height) when given: exactly
    that size (the caller keeps the aspect; a provider bills by the size sent); the boxes of
    `cover` (in the frame's pixels) filled first."""
    bgr = _covered(_bgr_pixels(frame), cover)
    if size is not None and size != (frame.width, frame.height):
        bgr = cv2.resize(bgr, size, interpolation=_interpolation(
            size[0] / frame.width, size[1] / frame.height))
    return _encoded(bgr, quality)


def covered_jpeg(data: bytes, cover: Sequence[Box], quality: int) -> bytes:
    """A JPEG with the boxes of `cover` (in its pixels) filled, encoded again at `quality`."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a readable JPEG")
    return _encoded(_covered(bgr, cover), quality)
