"""Where the screen changed, and whether that change is content or noise.

A whole-frame hash cannot see one new line of text; a pixel diff sees everything, including the
things that do not matter. This module diffs the work image against the last kept frame and
removes the noise a screen share is full of:

- small groups of tiles that keep changing on their own (a ticking clock, a spinner) are
  learned over the last samples and masked out, with their left and right neighbours; a large
  group is content (scrolling output, a video), never masked;
- changed regions no bigger than a mouse pointer or a text cursor are ignored (a pointer that
  moves leaves two such blobs; a typed character moves the cursor and leaves a wider one);
- per-pixel differences below a threshold are codec noise (area downscaling already averaged
  each work pixel over about 16 screen pixels, which flattens most of it).

What remains is measured in changed pixels and tiles of the work image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

TILE = 8  # work pixels; about 32 screen pixels on 1080p, three or four characters of code
_HISTORY_BITS = 8


@dataclass(frozen=True)
class NoiseLimits:
    pixel_threshold: int = 18  # luma levels; the Y plane spans 16-235
    volatile_changes: int = 3  # changes within the last 8 samples that make a tile volatile
    volatile_max_tiles: int = 12  # a larger group of volatile tiles is content, not a widget
    tiny_width_px: int = 16  # screen pixels: a pointer or cursor fits in this box
    tiny_height_px: int = 26


@dataclass(frozen=True)
class Motion:
    """What moved since the previous sample."""

    share: float  # share of tiles that changed
    region_share: float  # share of tiles moving now within a large, persistently moving region
    region_edge_ratio: float  # Canny edge density there (scrolling text has many, video few)
    region: np.ndarray  # bool per tile: the persistently moving region, moving now or not


@dataclass(frozen=True)
class LocalChange:
    changed_px: int  # work pixels that differ from the kept frame (noise removed)
    changed_tiles: int
    noise_px: int  # differing pixels in volatile tiles, a masked video region, or pointer blobs


class TileTracker:
    """Per-tile change history for one stream of frames of a fixed size."""

    def __init__(self, work_shape: tuple[int, int], scale: float, limits: NoiseLimits) -> None:
        height, width = work_shape
        self._limits = limits
        self._rows, self._cols = math.ceil(height / TILE), math.ceil(width / TILE)
        self._work_shape = work_shape
        self._history = np.zeros((self._rows, self._cols), np.uint8)
        self._widgets = np.zeros((self._rows, self._cols), bool)
        self._tiny = (
            max(1, round(limits.tiny_width_px * scale)),
            max(1, round(limits.tiny_height_px * scale)),
        )
        self._dilate = np.ones((3, 3), np.uint8)
        self._widen = np.ones((1, 3), np.uint8)  # a clock's minutes sit beside its seconds

    def _tile_counts(self, mask: np.ndarray) -> np.ndarray:
        """Marked pixels per tile (area averaging of the 0/1 mask, rescaled to a count)."""
        fraction = cv2.resize(
            mask.astype(np.float32), (self._cols, self._rows), interpolation=cv2.INTER_AREA
        )
        return fraction * (mask.size / (self._rows * self._cols))

    def _diff_mask(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.absdiff(a, b) > self._limits.pixel_threshold

    def _pixels(self, tiles: np.ndarray) -> np.ndarray:
        height, width = self._work_shape
        grid = np.repeat(np.repeat(tiles, TILE, axis=0), TILE, axis=1)
        return grid[:height, :width].astype(bool)

    def observe(
        self, current: np.ndarray, previous: np.ndarray | None, edges: np.ndarray
    ) -> Motion:
        """Record which tiles changed since the previous sample and split the tiles that keep
        changing into small widgets (noise) and large moving regions (video or scrolling)."""
        if previous is None:
            moved = np.zeros((self._rows, self._cols), bool)
        else:
            moved = self._tile_counts(self._diff_mask(current, previous)) >= 1.0
        self._history = (self._history << 1) | moved.astype(np.uint8)
        counts = np.unpackbits(self._history[..., None], axis=-1).sum(axis=-1)
        volatile = (counts >= self._limits.volatile_changes).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(volatile, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= self._limits.volatile_max_tiles
        small[0] = False
        large = ~small
        large[0] = False
        self._widgets = cv2.dilate(small[labels].astype(np.uint8), self._widen).astype(bool)
        region = large[labels]
        region_tiles = int(np.count_nonzero(region & moved))
        edge_ratio = 0.0
        if region_tiles:
            edge_counts = self._tile_counts(edges > 0)
            edge_ratio = float(edge_counts[region & moved].sum()) / (region_tiles * TILE * TILE)
        return Motion(
            share=float(np.count_nonzero(moved)) / moved.size,
            region_share=region_tiles / moved.size,
            region_edge_ratio=edge_ratio,
            region=region,
        )

    def compare(
        self, current: np.ndarray, kept: np.ndarray, ignore: np.ndarray | None = None
    ) -> LocalChange:
        """The content change between the kept frame and this one, with noise removed;
        `ignore` marks further tiles to leave out (a playing video's region)."""
        mask = self._diff_mask(current, kept)
        total = int(np.count_nonzero(mask))
        if total == 0:
            return LocalChange(0, 0, 0)
        masked = self._widgets if ignore is None else self._widgets | ignore
        mask &= ~self._pixels(masked)
        grown = cv2.dilate(mask.astype(np.uint8), self._dilate)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        tiny_w, tiny_h = self._tiny
        width, height = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        # pointer-sized, and small next to the screen (on a tiny frame a blob is the content)
        tiny = (width <= tiny_w + 2) & (height <= tiny_h + 2) & (
            width * height * 100 <= mask.size
        )
        tiny[0] = True  # label 0 is the background
        if count > 1:
            mask &= ~tiny[labels]
        changed = int(np.count_nonzero(mask))
        tiles = int(np.count_nonzero(self._tile_counts(mask) >= 1.0)) if changed else 0
        return LocalChange(changed, tiles, total - changed)
