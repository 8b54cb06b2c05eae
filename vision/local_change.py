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

from dataclasses import dataclass

import cv2
import numpy as np

from .luma import TILE


@dataclass(frozen=True)
class NoiseLimits:
    pixel_threshold: int = 10  # luma levels after area averaging; the Y plane spans 16-235
    volatile_changes: int = 5  # changes within the last 8 samples that make a tile volatile
    volatile_max_tiles: int = 12  # a larger group of volatile tiles is content, not a widget
    tiny_width_px: int = 20  # screen pixels: a pointer or a text cursor fits in this box
    tiny_height_px: int = 32
    line_height_px: int = 28  # screen pixels: what moved fits one line of text (typing)


@dataclass(frozen=True)
class Motion:
    """What moved since the previous sample."""

    share: float  # share of tiles that changed
    region_share: float  # share of tiles moving now within a large, persistently moving region
    region_edge_ratio: float  # Canny edge density there (scrolling text has many, video few)
    region: np.ndarray  # bool per tile: the persistently moving region, moving now or not
    strip: tuple[int, int] | None = None  # work rows of what moved, if it is one line of text


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
        self._rows, self._cols = height // TILE, width // TILE
        self.count = self._rows * self._cols
        self._history = np.zeros((self._rows, self._cols), np.uint8)
        self._widgets = np.zeros((self._rows, self._cols), bool)
        self._tiny = (
            max(1, round(limits.tiny_width_px * scale)),
            max(1, round(limits.tiny_height_px * scale)),
        )
        self._line_height = max(2, round(limits.line_height_px * scale))
        # groups the strokes of one word or line of text into one blob
        self._group = np.ones((3, 5), np.uint8)
        self._widen = np.ones((1, 3), np.uint8)  # a clock's minutes sit beside its seconds

    def _tile_counts(self, mask: np.ndarray) -> np.ndarray:
        """Marked pixels per tile: an exact 8x area average (the work image is whole tiles)."""
        mean = cv2.resize(
            mask.view(np.uint8).astype(np.float32), (self._cols, self._rows),
            interpolation=cv2.INTER_AREA,
        )
        return mean * (TILE * TILE)

    def _diff_mask(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.absdiff(a, b) > self._limits.pixel_threshold

    def _pixels(self, tiles: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(tiles, TILE, axis=0), TILE, axis=1)

    def _without_small(self, mask: np.ndarray) -> np.ndarray:
        """The mask minus blobs no bigger than a pointer or a text cursor."""
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        if w == 0:
            return mask
        rows, cols = self._group.shape
        tiny_w, tiny_h = self._tiny[0] + cols - 1, self._tiny[1] + rows - 1
        # labelling only the changed area keeps this cheap: most changes are small
        x0, y0 = max(0, x - cols), max(0, y - rows)
        crop = mask[y0 : y + h + rows, x0 : x + w + cols]
        grown = cv2.dilate(crop.view(np.uint8), self._group)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        width, height = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        # pointer-sized, and small next to the screen (on a tiny frame a blob is the content)
        tiny = (width <= tiny_w) & (height <= tiny_h) & (width * height * 100 <= mask.size)
        tiny[0] = False  # label 0 is the background
        if not tiny.any():
            return mask
        kept = mask.copy()
        kept[y0 : y + h + rows, x0 : x + w + cols] &= ~tiny[labels]
        return kept

    def observe(
        self, current: np.ndarray, previous: np.ndarray | None, edges: np.ndarray
    ) -> Motion:
        """Record which tiles changed since the previous sample and split the tiles that keep
        changing into small widgets (noise) and large moving regions (video or scrolling)."""
        strip = None
        if previous is None:
            moved = np.zeros((self._rows, self._cols), bool)
        else:
            diff = self._diff_mask(current, previous)
            moved = self._tile_counts(diff) >= 1.0
            strip = self._strip(diff & ~self._pixels(self._widgets))
        self._history = (self._history << 1) | moved.astype(np.uint8)
        counts = np.unpackbits(self._history[..., None], axis=-1).sum(axis=-1)
        volatile = (counts >= self._limits.volatile_changes).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(volatile, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= self._limits.volatile_max_tiles
        small[0] = False
        self._widgets = cv2.dilate(small[labels].astype(np.uint8), self._widen).astype(bool)
        # a large area that moved in each of the last three samples is playing, not a widget
        playing = ((self._history & 0b111) == 0b111).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(playing, connectivity=8)
        large = stats[:, cv2.CC_STAT_AREA] > self._limits.volatile_max_tiles
        large[0] = False
        region = np.zeros_like(moved)
        for x, y, w, h, _ in stats[large]:
            # a video is a rectangle whose calmer parts do not change every sample
            region[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1] = True
        region_tiles = int(np.count_nonzero(region & moved))
        edge_ratio = 0.0
        if region_tiles:
            # the edge map may be smaller than the work image (see content_type.texture)
            edge_share = cv2.resize(
                (edges > 0).view(np.uint8).astype(np.float32), (self._cols, self._rows),
                interpolation=cv2.INTER_AREA,
            )
            edge_ratio = float(edge_share[region & moved].mean())
        return Motion(
            share=float(np.count_nonzero(moved)) / moved.size,
            region_share=region_tiles / moved.size,
            region_edge_ratio=edge_ratio,
            region=region,
            strip=strip,
        )

    def _strip(self, moved: np.ndarray) -> tuple[int, int] | None:
        """The rows (first, last) of what moved, when it all sits on one line of text."""
        content = self._without_small(moved)
        rows = np.flatnonzero(content.any(axis=1))
        if rows.size == 0 or rows[-1] - rows[0] + 1 > self._line_height:
            return None
        return int(rows[0]), int(rows[-1])

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
        content = self._without_small(mask & ~self._pixels(masked))
        changed = int(np.count_nonzero(content))
        tiles = int(np.count_nonzero(self._tile_counts(content) > 0)) if changed else 0
        return LocalChange(changed, tiles, total - changed)
