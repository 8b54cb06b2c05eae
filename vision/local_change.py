"""Where the screen changed, and whether that change is content or noise.

A whole-frame hash cannot see one new line of text; a pixel diff sees everything, including the
things that do not matter. This module diffs the work image against the last kept frame and
removes the noise a screen share is full of:

- small groups of tiles that keep changing on their own (a ticking clock, a spinner) are
  learned over the last samples and masked out, with their left and right neighbours; a large
  group is content (scrolling output, a video), never masked;
- changed regions no bigger than a mouse pointer or a text cursor, and upright like them, are
  ignored (a pointer that moves leaves two such blobs; two typed characters are wider than tall);
- per-pixel differences below a threshold are codec noise (area downscaling already averaged
  each work pixel over about 16 screen pixels, which flattens most of it);
- an encoder refining its picture (it sends a coarse keyframe when a share starts or the screen
  changes a lot, and sharpens it over the next second) changes a few pixels, faintly, in each of
  hundreds of tiles; content changes many pixels per tile, strongly. Faint, sparse tiles are
  codec noise when there are many of them at once; alone (one faint character) they count.

What remains is measured in changed pixels and tiles of the work image, and located as the few
separate areas it falls in (a typed line and a status bar's clock far above it are two areas, so
whoever reads them reads two lines rather than the screen between them).
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
    tiny_width_px: int = 32  # screen pixels: a pointer (also one that moved a little, its two
    tiny_height_px: int = 64  # positions overlapping) or a text cursor fits in this box
    line_height_px: int = 40  # screen pixels: what moved fits one line of text (typing)
    # an encoder's refinement: tiles with at most `refine_max_px` changed work pixels (of 64),
    # none differing by more than `refine_max_delta` levels, when `refine_min_tiles` or more
    # (measured on live shares at 720p: refinement 12-51 levels, 1-12 pixels a tile; text
    # 60-190 levels, 10-25 pixels a tile)
    refine_max_delta: int = 48
    refine_max_px: int = 12
    refine_min_tiles: int = 12


@dataclass(frozen=True)
class Motion:
    """What moved since the previous sample."""

    share: float  # share of tiles that changed
    region_share: float  # share of tiles moving now within a large, persistently moving region
    region_edge_ratio: float  # Canny edge density there (scrolling text has many, video few)
    region: np.ndarray  # bool per tile: the persistently moving region, moving now or not
    strip: tuple[int, int] | None = None  # work rows of what moved, if it is one line of text


Box = tuple[int, int, int, int]  # x, y, width, height

# screen pixels: changed strokes this close are one area (along a line: a few characters' gap;
# across: the gap between lines of text, so a block of changed lines is one area)
JOIN_ALONG_PX, JOIN_ACROSS_PX = 64, 24
MAX_PARTS = 4  # more separate areas than this are located as one box around them all


@dataclass(frozen=True)
class LocalChange:
    changed_px: int  # work pixels that differ from the kept frame (noise removed)
    changed_tiles: int
    noise_px: int  # differing pixels in volatile tiles, a masked video region, or pointer blobs
    boxes: tuple[Box, ...] = ()  # work pixels: the separate areas of the changed content
    refined: bool = False  # an encoder's refinement was among the noise


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
        self._near = np.ones((5, 5), np.uint8)
        self._along_line = np.ones((1, 7), np.uint8)
        # a dilation by half of each gap from both sides closes it
        self._join = np.ones((max(1, round(JOIN_ACROSS_PX * scale)) | 1,
                              max(1, round(JOIN_ALONG_PX * scale)) | 1), np.uint8)
        # a drawn line: a straight run across two tiles (see _refinement)
        self._run_h, self._run_v = (
            np.ones((1, 2 * TILE), np.uint8), np.ones((2 * TILE, 1), np.uint8))

    def _tile_share(self, mask: np.ndarray) -> np.ndarray:
        """Share of marked pixels per tile, for a mask of the work image or a scaled copy."""
        return cv2.resize(
            mask.view(np.uint8).astype(np.float32), (self._cols, self._rows),
            interpolation=cv2.INTER_AREA,
        )

    def _tile_counts(self, mask: np.ndarray) -> np.ndarray:
        """Marked pixels per tile: an exact 8x area average (the work image is whole tiles)."""
        return self._tile_share(mask) * (TILE * TILE)

    def _changed(self, diff: np.ndarray) -> np.ndarray:
        """The pixels of an absolute difference that count as changed."""
        return diff > self._limits.pixel_threshold

    def _refinement(
        self, content: np.ndarray, counts: np.ndarray, diff: np.ndarray
    ) -> np.ndarray | None:
        """The tiles of an encoder's refinement in the content (`counts` per tile), if there
        is one: its faint, sparse tiles, when there are at least `refine_min_tiles` of them and
        they are most of the changed tiles. Strong or dense tiles beside them are not part of
        it, so content that changes while the encoder sharpens is still seen."""
        limits = self._limits
        sparse = (counts > 0) & (counts <= limits.refine_max_px)
        if np.count_nonzero(sparse) < limits.refine_min_tiles:
            return None
        strongest = (diff * content).reshape(self._rows, TILE, self._cols, TILE).max(axis=(1, 3))
        # a straight run across two tiles is a drawn line (an editor's current-line highlight,
        # an underline), however faint; an encoder's refinement is mostly specks along edges
        marked = content.view(np.uint8)
        runs = cv2.morphologyEx(marked, cv2.MORPH_OPEN, self._run_h) | cv2.morphologyEx(
            marked, cv2.MORPH_OPEN, self._run_v)
        faint = sparse & (strongest <= limits.refine_max_delta) & (self._tile_counts(runs) == 0)
        # and most of what changed: within a real change of many tiles, its faint edges (a
        # digit's anti-aliased strokes) are part of it and keep their place in its region
        if np.count_nonzero(faint) < max(limits.refine_min_tiles, np.count_nonzero(counts) / 2):
            return None
        return faint

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
        # pointer-sized, small next to the screen (on a tiny frame a blob is the content), and
        # upright like a pointer or a text cursor: two characters of text are wider than tall
        upright = height - (rows - 1) >= width - (cols - 1)
        tiny = (
            (width <= tiny_w) & (height <= tiny_h) & (width * height * 100 <= mask.size) & upright
        )
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
            diff = self._changed(cv2.absdiff(current, previous))
            moved = self._tile_counts(diff) >= 1.0
            strip = self._strip(diff & ~self._pixels(self._widgets))
        self._history = (self._history << 1) | moved.astype(np.uint8)
        counts = np.unpackbits(self._history[..., None], axis=-1).sum(axis=-1)
        # a clock ticks every sample: three in a row mark it before five of eight would
        steady = (self._history & 0b111) == 0b111
        volatile = ((counts >= self._limits.volatile_changes) | steady).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(volatile, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= self._limits.volatile_max_tiles
        small[0] = False
        self._widgets = cv2.dilate(small[labels].astype(np.uint8), self._widen).astype(bool)
        region = self._playing_region()
        region_tiles = int(np.count_nonzero(region & moved))
        edge_ratio = 0.0
        if region_tiles:
            # the edge map is the half-size one from content_type.texture
            edge_share = self._tile_share(edges > 0)
            edge_ratio = float(edge_share[region & moved].mean())
        return Motion(
            share=float(np.count_nonzero(moved)) / moved.size,
            region_share=region_tiles / moved.size,
            region_edge_ratio=edge_ratio,
            region=region,
            strip=strip,
        )

    def _playing_region(self) -> np.ndarray:
        """Tiles of a playing video: a large area that moved in each of the last three samples,
        widened to the bounding box of everything that moved around it lately (a video's calm
        parts, like slow clouds over moving hills, change less often)."""
        playing = ((self._history & 0b111) == 0b111).astype(np.uint8)  # large groups only
        _, labels, stats, _ = cv2.connectedComponentsWithStats(playing, connectivity=8)
        large = stats[:, cv2.CC_STAT_AREA] > self._limits.volatile_max_tiles
        large[0] = False
        region = np.zeros(playing.shape, bool)
        if not large.any():
            return region
        around = cv2.dilate((self._history != 0).astype(np.uint8), self._near)
        _, nearby, boxes, _ = cv2.connectedComponentsWithStats(around, connectivity=8)
        for label in np.unique(nearby[large[labels]]):
            x, y, w, h, _ = boxes[label]
            region[y : y + h, x : x + w] = True
        return region

    def _strip(self, moved: np.ndarray) -> tuple[int, int] | None:
        """The rows (first, last) of what moved, when most of it is on one line of text. "Most":
        an editor's "Ln 12, Col 40" and similar small echoes of typing move elsewhere too."""
        content = self._without_small(moved).view(np.uint8)
        x, y, w, h = cv2.boundingRect(content)
        if w == 0:
            return None
        # joined along the line only, so a component's height is the text's own
        grown = cv2.dilate(content[y : y + h, x : x + w], self._along_line)
        _, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        main = 1 + int(np.argmax(areas))
        top, height = stats[main, cv2.CC_STAT_TOP], stats[main, cv2.CC_STAT_HEIGHT]
        if areas.max() < 0.4 * areas.sum() or height > self._line_height:
            return None
        return int(y + top), int(y + top + height - 1)

    def compare(
        self, current: np.ndarray, kept: np.ndarray, ignore: np.ndarray | None = None
    ) -> LocalChange:
        """The content change between the kept frame and this one, with noise removed;
        `ignore` marks further tiles to leave out (a playing video's region)."""
        diff = cv2.absdiff(current, kept)
        mask = self._changed(diff)
        total = int(np.count_nonzero(mask))
        if total == 0:
            return LocalChange(0, 0, 0)
        masked = self._widgets if ignore is None else self._widgets | ignore
        content = self._without_small(mask & ~self._pixels(masked))
        counts = self._tile_counts(content)
        refinement = self._refinement(content, counts, diff)
        if refinement is not None:  # whole tiles: their counts go with them
            content = content & ~self._pixels(refinement)
            counts[refinement] = 0
        changed = int(np.count_nonzero(content))
        if not changed:
            return LocalChange(0, 0, total, refined=refinement is not None)
        tiles = int(np.count_nonzero(counts > 0))
        return LocalChange(changed, tiles, total - changed, self._parts(content),
                           refinement is not None)

    def _parts(self, content: np.ndarray) -> tuple[Box, ...]:
        """The bounding boxes of the content's separate areas (strokes within the join gaps
        are one area); one box around everything when there are more than `MAX_PARTS`."""
        marked = content.view(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            cv2.dilate(marked, self._join), connectivity=8)
        if count - 1 > MAX_PARTS:
            return (cv2.boundingRect(marked),)
        parts = []
        for label in range(1, count):  # each area's box shrunk back to its own strokes
            x, y, w, h = (int(v) for v in stats[label, :4])
            mine = marked[y:y + h, x:x + w] & (labels[y:y + h, x:x + w] == label)
            px, py, pw, ph = cv2.boundingRect(mine.view(np.uint8))
            parts.append((x + px, y + py, pw, ph))
        return tuple(parts)
