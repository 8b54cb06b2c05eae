"""The one picture the change detector works on: the frame's luma plane, downscaled once, early.

Everything after this step (content type, pHash, the tile diff) runs on roughly 480x270 pixels
instead of two million, which is where the detector's speed comes from. The Y plane of an I420
frame is read in place, so no colour conversion ever happens on the hot path.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from livekit import rtc

# 480x270 keeps a 1080p screen's text lines (about 4 work pixels tall) visible as structure
WORK_AREA = 480 * 270
MIN_SIDE = 8
TILE = 8  # work pixels; about 32 screen pixels on 1080p, three or four characters of code


def luma_plane(frame: rtc.VideoFrame) -> np.ndarray:
    """The Y plane of a checked I420 frame as a (height, width) view, without a copy."""
    return np.frombuffer(frame.data, np.uint8, count=frame.width * frame.height).reshape(
        frame.height, frame.width
    )


def work_size(width: int, height: int) -> tuple[int, int]:
    """The downscaled size for a frame: about WORK_AREA pixels, same aspect, never upscaled."""
    scale = min(1.0, math.sqrt(WORK_AREA / (width * height)))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def halve_down_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-halve while the image stays at least `width` x `height`. Exact halving is OpenCV's
    fast area-resize path, about ten times faster than one resize by an odd factor."""
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        half = (image.shape[1] // 2, image.shape[0] // 2)
        image = cv2.resize(
            image[: 2 * half[1], : 2 * half[0]], half, interpolation=cv2.INTER_AREA
        )
    return image


def downscale(luma: np.ndarray) -> np.ndarray:
    """Area-average the luma plane to the work size (which also smooths codec noise), then pad it
    by edge replication to whole 8x8 tiles so per-tile sums are exact reshapes."""
    height, width = luma.shape
    target_w, target_h = work_size(width, height)
    luma = halve_down_to(luma, target_w, target_h)
    if (luma.shape[1], luma.shape[0]) != (target_w, target_h):
        shrinking = luma.shape[1] >= target_w
        luma = cv2.resize(
            luma, (target_w, target_h),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    pad_h, pad_w = -target_h % TILE, -target_w % TILE
    if pad_h or pad_w:
        return cv2.copyMakeBorder(luma, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(luma)
