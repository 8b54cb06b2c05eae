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


def luma_plane(frame: rtc.VideoFrame) -> np.ndarray:
    """The Y plane of a checked I420 frame as a (height, width) view, without a copy."""
    return np.frombuffer(frame.data, np.uint8, count=frame.width * frame.height).reshape(
        frame.height, frame.width
    )


def work_size(width: int, height: int) -> tuple[int, int]:
    """The downscaled size for a frame: about WORK_AREA pixels, same aspect, never upscaled."""
    scale = min(1.0, math.sqrt(WORK_AREA / (width * height)))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def downscale(luma: np.ndarray) -> np.ndarray:
    """Area-average the luma plane to the work size (area averaging also smooths codec noise)."""
    height, width = luma.shape
    size = work_size(width, height)
    # halving by striding first keeps very large frames (4K and up) cheap to reduce; those are
    # HiDPI screens, whose thinnest lines are two pixels wide and survive it
    while luma.shape[1] >= 8 * size[0] and luma.shape[0] >= 8 * size[1]:
        luma = luma[::2, ::2]
    if (luma.shape[1], luma.shape[0]) == size:
        return np.ascontiguousarray(luma)
    shrinking = luma.shape[1] >= size[0]
    return cv2.resize(
        luma, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
