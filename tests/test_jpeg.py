"""Frames as JPEG bytes (vision/jpeg.py).

Protects: every frame type a source may deliver (I420 of even or odd sides, NV12, RGBA, BGRA,
ABGR, RGB24) encodes to a JPEG of the same picture; a requested size is met exactly, shrunk
(bilinear down to half size, area averaging below) so the screen's text stays as sharp as
Pillow's resize makes it, without aliasing; quality is honoured; a frame whose buffer is too
short fails with the frame checker's error, not a crash.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from livekit import rtc
from PIL import Image
from synthetic_screen import Desk, rgb_frame

from vision.frames import InvalidFrame
from vision.jpeg import jpeg_bytes


def decoded_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return np.asarray(img.convert("RGB"))


def desk_rgb(width: int = 640, height: int = 360) -> np.ndarray:
    return np.asarray(Desk().image().convert("RGB").resize((width, height)))


def frame_of(rgb: np.ndarray, kind: rtc.VideoBufferType.ValueType) -> rtc.VideoFrame:
    height, width = rgb.shape[:2]
    alpha = np.full((height, width, 1), 255, np.uint8)
    rgba = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                          np.concatenate([rgb, alpha], axis=2).tobytes())
    if kind == rtc.VideoBufferType.RGBA:
        return rgba
    if kind == rtc.VideoBufferType.BGRA:
        bgra = np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
        return rtc.VideoFrame(width, height, kind, bgra.tobytes())
    if kind == rtc.VideoBufferType.ABGR:
        abgr = np.concatenate([alpha, rgb[:, :, ::-1]], axis=2)
        return rtc.VideoFrame(width, height, kind, abgr.tobytes())
    if kind == rtc.VideoBufferType.RGB24:
        return rtc.VideoFrame(width, height, kind, np.ascontiguousarray(rgb).tobytes())
    i420 = rgb_frame(rgb)
    if kind == rtc.VideoBufferType.I420:
        return i420
    # NV12: the same luma, then the two chroma planes interleaved
    luma, chroma = width * height, ((width + 1) // 2) * ((height + 1) // 2)
    planes = np.frombuffer(i420.data, np.uint8)
    uv = np.stack([planes[luma:luma + chroma], planes[luma + chroma:luma + 2 * chroma]], axis=1)
    return rtc.VideoFrame(width, height, kind, planes[:luma].tobytes() + uv.tobytes())


@pytest.mark.parametrize("kind", [
    rtc.VideoBufferType.I420, rtc.VideoBufferType.NV12, rtc.VideoBufferType.RGBA,
    rtc.VideoBufferType.BGRA, rtc.VideoBufferType.ABGR, rtc.VideoBufferType.RGB24,
])
@pytest.mark.parametrize("size", [(640, 360), (641, 361)])
def test_every_frame_type_encodes_the_same_picture(
    kind: rtc.VideoBufferType.ValueType, size: tuple[int, int]
) -> None:
    rgb = desk_rgb(*size)
    out = decoded_rgb(jpeg_bytes(frame_of(rgb, kind), 90))
    assert out.shape == rgb.shape
    # JPEG and I420's chroma subsampling cost ~0.8 a channel on average; red and blue swapped
    # cost ~5, the picture a row off ~1.6
    assert np.abs(out.astype(int) - rgb).mean() < 1.3


@pytest.mark.parametrize("size", [(1365, 768), (816, 459)])  # bilinear, area averaging
def test_a_requested_size_is_met_as_sharp_as_pillows_resize_and_without_aliasing(
    size: tuple[int, int],
) -> None:
    """Pillow's bicubic resize is what the screenshots went through before (livekit-agents'
    encode)."""
    rgb = desk_rgb(1920, 1080)
    out = decoded_rgb(jpeg_bytes(frame_of(rgb, rtc.VideoBufferType.I420), 95, size))
    assert out.shape == (size[1], size[0], 3)
    reference = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    assert np.abs(out.astype(int) - reference).mean() < 1.3

    def edges(image: np.ndarray) -> float:  # the strokes of the text
        return float(np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
                                          cv2.CV_32F)).mean())

    # blurred text has fewer edges; pixels skipped (aliasing) leave more, jagged ones: bilinear
    # at 816×459 gives 1.6× the reference's
    assert 0.85 < edges(out) / edges(reference) < 1.25


def test_a_larger_size_is_met_too() -> None:
    rgb = desk_rgb(320, 180)
    out = decoded_rgb(jpeg_bytes(frame_of(rgb, rtc.VideoBufferType.RGBA), 90, (400, 225)))
    assert out.shape == (225, 400, 3)


def test_quality_is_honoured() -> None:
    frame = frame_of(desk_rgb(), rtc.VideoBufferType.I420)
    assert len(jpeg_bytes(frame, 30)) < 0.7 * len(jpeg_bytes(frame, 95))


def test_a_short_buffer_fails_with_the_frame_checkers_error() -> None:
    short = rtc.VideoFrame(64, 64, rtc.VideoBufferType.RGBA, bytes(64 * 10 * 4))
    with pytest.raises(InvalidFrame, match="too short"):
        jpeg_bytes(short, 80)
