"""The detectors Sightline is measured against, run on the same frames in the same evaluation.

- `phash_fixed`: keep a sampled frame when `imagehash.phash` moved by >= 10 bits since the last
  kept frame.
- `phash_adaptive`: the design Sightline started from. The threshold (10/12/15/20) follows the
  content type (code and text / static UI / documentation / video), taken from full-resolution
  Laplacian variance and Canny edge ratio, switching type only after 3 samples agree.
- `scenedetect_hash` / `scenedetect_content`: PySceneDetect's HashDetector and ContentDetector with
  their defaults, run on every decoded frame; a sampled frame counts as kept when a cut fell
  since the previous sample.

The pHash references use the full-resolution path on purpose (BGR -> gray, Laplacian CV_64F,
Canny, BGR -> RGB, PIL, imagehash): that is what they are a reference for, in quality and speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagehash
import numpy as np
from livekit import rtc
from PIL import Image

from vision.content_type import ContentType, StableContentType
from vision.frames import as_i420

# The original design's cut-offs, for full-resolution 8-bit gray from a BGR frame
_REF_CODE_LAPLACIAN = 2000.0
_REF_CODE_EDGES = 0.08
_REF_DOCS_EDGES = 0.03
_REF_VIDEO_LAPLACIAN = 400.0
_REF_THRESHOLDS = {ContentType.CODE: 10, ContentType.UI: 12, ContentType.DOCS: 15,
                   ContentType.VIDEO: 20}


def i420_to_bgr(frame: rtc.VideoFrame) -> np.ndarray:
    """Full-resolution BGR, as a frame grabbed by OpenCV would arrive in the reference path."""
    rgba = as_i420(frame).convert(rtc.VideoBufferType.RGBA)
    pixels = np.frombuffer(rgba.data, np.uint8).reshape(frame.height, frame.width, 4)
    return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR)


@dataclass(frozen=True)
class ReferenceFeatures:
    phash: imagehash.ImageHash
    laplacian_var: float
    edge_ratio: float


def reference_features(bgr: np.ndarray) -> ReferenceFeatures:
    """The reference path, step by step, at full resolution."""
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    laplacian_var = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    edges = cv2.Canny(gray, 100, 200)
    edge_ratio = float(np.count_nonzero(edges)) / edges.size
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return ReferenceFeatures(imagehash.phash(Image.fromarray(rgb)), laplacian_var, edge_ratio)


def reference_content_type(features: ReferenceFeatures) -> ContentType:
    if features.laplacian_var >= _REF_CODE_LAPLACIAN and features.edge_ratio >= _REF_CODE_EDGES:
        return ContentType.CODE
    if features.edge_ratio >= _REF_DOCS_EDGES:
        return ContentType.DOCS
    if features.laplacian_var >= _REF_VIDEO_LAPLACIAN:
        return ContentType.VIDEO
    return ContentType.UI


@dataclass
class PhashReference:
    """Fixed (`adaptive=False`, threshold 10) or content-type-adaptive pHash vs last kept frame."""

    adaptive: bool
    _kept: imagehash.ImageHash | None = None
    _types: StableContentType = field(default_factory=StableContentType)
    decisions: list[bool] = field(default_factory=list)

    def offer(self, features: ReferenceFeatures) -> bool:
        threshold = 10
        if self.adaptive:
            threshold = _REF_THRESHOLDS[self._types.settle(reference_content_type(features))]
        keep = bool(self._kept is None or features.phash - self._kept >= threshold)
        if keep:
            self._kept = features.phash
        self.decisions.append(keep)
        return keep


def scenedetect_cuts(path: Path, detector_name: str) -> list[float]:
    """Cut times (seconds) from PySceneDetect with the named detector's defaults."""
    from scenedetect import ContentDetector, HashDetector, detect

    detector = HashDetector() if detector_name == "hash" else ContentDetector()
    scenes = detect(str(path), detector, backend="pyav")
    return [start.seconds for start, _ in scenes[1:]]


def kept_from_cuts(sample_times: list[float], cuts: list[float]) -> list[bool]:
    """A sample is kept when it is the first, or a cut fell after the previous sample."""
    kept: list[bool] = []
    previous = float("-inf")
    for t in sample_times:
        kept.append(previous == float("-inf") or any(previous < c <= t + 1e-6 for c in cuts))
        previous = t
    return kept

