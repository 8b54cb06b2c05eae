"""What kind of screen this is: code or text, static UI, documentation, or video.

The type picks the thresholds the change detector uses. It is read from two cheap statistics of
the work image (Laplacian variance and Canny edge ratio) plus the persistently moving region the
tile tracker found (video flows with few edges; scrolling text moves with many), and it only
switches after three consecutive samples agree, so one odd frame (a flash, a half-drawn window)
does not flip the thresholds.

The cut-offs are calibrated on the 480x270 limited-range (16-235) luma plane this module sees;
both statistics shrink with downscaling and with the narrower range, so full-resolution
figures do not carry over (see `sightline vision scan --json`, which prints them per frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np


class ContentType(StrEnum):
    CODE = "code"
    UI = "ui"
    DOCS = "docs"
    VIDEO = "video"


@dataclass(frozen=True)
class ContentStats:
    laplacian_var: float
    edge_ratio: float
    motion: float  # share of tiles that changed since the previous sample
    moving_share: float = 0.0  # share of tiles in a persistently moving region
    moving_edge_ratio: float = 0.0  # edge density inside that region


@dataclass(frozen=True)
class TypeThresholds:
    """Cut-offs on the work image; see the module docstring for why they are not the usual ones."""

    video_min_share: float = 0.05
    video_max_edge_ratio: float = 0.12
    code_min_edge_ratio: float = 0.10
    code_min_laplacian: float = 2500.0
    docs_min_edge_ratio: float = 0.04


def texture(work: np.ndarray) -> tuple[float, np.ndarray]:
    """Laplacian variance and the Canny edge map of the work image."""
    laplacian_var = float(cv2.Laplacian(work, cv2.CV_32F).var())
    return laplacian_var, cv2.Canny(work, 60, 160)


def classify(stats: ContentStats, limits: TypeThresholds) -> ContentType:
    if (
        stats.moving_share >= limits.video_min_share
        and stats.moving_edge_ratio < limits.video_max_edge_ratio
    ):
        return ContentType.VIDEO
    if (
        stats.edge_ratio >= limits.code_min_edge_ratio
        and stats.laplacian_var >= limits.code_min_laplacian
    ):
        return ContentType.CODE
    if stats.edge_ratio >= limits.docs_min_edge_ratio:
        return ContentType.DOCS
    return ContentType.UI


@dataclass
class StableContentType:
    """The current type, switched only when `agree` consecutive samples name the same new type."""

    limits: TypeThresholds = field(default_factory=TypeThresholds)
    agree: int = 3
    current: ContentType | None = None
    _candidate: ContentType | None = None
    _streak: int = 0

    def update(self, stats: ContentStats) -> ContentType:
        seen = classify(stats, self.limits)
        if self.current is None:
            self.current = seen  # the first frame has nothing to be stable against
        if seen == self.current:
            self._candidate, self._streak = None, 0
            return self.current
        if seen == self._candidate:
            self._streak += 1
        else:
            self._candidate, self._streak = seen, 1
        if self._streak >= self.agree:
            self.current, self._candidate, self._streak = seen, None, 0
        return self.current

    def reset(self) -> None:
        self.current, self._candidate, self._streak = None, None, 0
