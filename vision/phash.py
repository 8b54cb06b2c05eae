"""Perceptual hash of the downscaled luma plane, bit-compatible with `imagehash.phash`'s method.

imagehash needs a PIL image (an RGB conversion and a full-resolution resize on the hot path);
this computes the same DCT hash from the work image with OpenCV in a few microseconds.
"""

from __future__ import annotations

import cv2
import numpy as np

from .luma import halve_down_to

HASH_SIZE = 8
_DCT_SIZE = HASH_SIZE * 4
# cv2.dct is orthonormal; scipy's unnormalized DCT-II (what imagehash uses) weights the DC row
# and column by sqrt(2) relative to the others, which matters for the median comparison
_SCIPY_SCALE = np.ones((HASH_SIZE, HASH_SIZE), np.float32)
_SCIPY_SCALE[0, :] *= np.sqrt(2)
_SCIPY_SCALE[:, 0] *= np.sqrt(2)


def phash(work: np.ndarray) -> np.ndarray:
    """64 booleans: low-frequency DCT coefficients above their median."""
    work = halve_down_to(work, 2 * _DCT_SIZE, 2 * _DCT_SIZE)
    small = cv2.resize(work, (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small.astype(np.float32))[:HASH_SIZE, :HASH_SIZE] * _SCIPY_SCALE
    return (low > np.median(low)).reshape(-1)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))
