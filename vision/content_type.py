"""What kind of screen this is: code or text, static UI, documentation, or video.

The type picks the thresholds the change detector uses. It is read from two cheap statistics of
the work image (Laplacian variance and Canny edge ratio) plus the persistently moving region the
tile tracker found (video flows with few edges; scrolling text moves with many), and it only
switches after three consecutive samples agree, so one odd frame (a flash, a half-drawn window)
does not flip the thresholds.

The cut-offs are calibrated on what this module sees: the limited-range (16-235) luma plane at
240x136 (the work image halved). Both statistics shrink with downscaling and with the narrower
range, so full-resolution figures do not carry over. On the evaluation recordings, dense text
has an edge ratio of 0.04-0.14 and sparse UI below 0.03; dark-theme editors and terminals have a
Laplacian variance of 100-1200 and light documentation pages 1300-1800, which is what separates
"code" from "docs" (a light-theme editor therefore reads as docs: its pHash threshold is 15
instead of 10, while the local change rule, which catches edits, is the same for both).
`sightline vision scan --json` prints both statistics per frame for tuning.
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

    video_min_share: float = 0.05  # of the screen, moving in each of the last 3 samples
    video_max_edge_ratio: float = 0.18  # inside the moving region (scrolling text: 0.24+)
    text_min_edge_ratio: float = 0.03  # below: sparse static UI
    docs_min_laplacian: float = 1250.0  # above: high-contrast pages of prose (documentation)


def texture(work: np.ndarray) -> tuple[float, np.ndarray]:
    """Laplacian variance and Canny edge map, on the work image halved once more: the type
    needs only the texture's statistics, and Canny is the costliest step at the full work size."""
    half = cv2.resize(
        work, (max(1, work.shape[1] // 2), max(1, work.shape[0] // 2)),
        interpolation=cv2.INTER_AREA,
    )
    _, std = cv2.meanStdDev(cv2.Laplacian(half, cv2.CV_16S))
    return float(std[0, 0]) ** 2, cv2.Canny(half, 60, 160)


def classify(stats: ContentStats, limits: TypeThresholds) -> ContentType:
    if (
        stats.moving_share >= limits.video_min_share
        and stats.moving_edge_ratio < limits.video_max_edge_ratio
    ):
        return ContentType.VIDEO
    if stats.edge_ratio < limits.text_min_edge_ratio:
        return ContentType.UI
    if stats.laplacian_var >= limits.docs_min_laplacian:
        return ContentType.DOCS
    return ContentType.CODE


@dataclass
class StableContentType:
    """The current type, switched only when `agree` consecutive samples name the same new type."""

    limits: TypeThresholds = field(default_factory=TypeThresholds)
    agree: int = 3
    current: ContentType | None = None
    _candidate: ContentType | None = None
    _streak: int = 0

    seen: ContentType | None = None  # this sample's own type, before the stability rule

    def update(self, stats: ContentStats) -> ContentType:
        return self.settle(classify(stats, self.limits))

    def settle(self, seen: ContentType) -> ContentType:
        """The type after one more sample that looks like `seen`."""
        self.seen = seen
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
        self.current, self.seen, self._candidate, self._streak = None, None, None, 0
