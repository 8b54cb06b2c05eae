"""Is this sampled frame new enough to be worth a vision-model call? Keep it or drop it, and why.

Per frame, on the downscaled luma plane (`vision.luma`):
1. the content type, stable over three samples (`vision.content_type`);
2. the pHash distance to the last kept frame, against a threshold chosen by content type;
3. the local change against the last kept frame with noise removed (`vision.local_change`);
4. for video, a bounded rate: one frame every `video_interval` seconds, never every frame.

Comparing with the last *kept* frame, not the previous sample, lets slow changes accumulate:
a line typed over several seconds is kept once enough of it differs from what the model saw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

from .content_type import (
    ContentStats,
    ContentType,
    StableContentType,
    TypeThresholds,
    texture,
)
from .local_change import Box, LocalChange, Motion, NoiseLimits, TileTracker
from .luma import downscale, luma_plane, work_size
from .phash import hamming, phash
from .ranges import Range

ASKED = "asked"  # the reason of a held-back frame kept because a question shows it (keep_last)


@dataclass(frozen=True)
class Setting:
    """What a detector setting means, its unit, and the values it may take: `--set` refuses
    the others, so a typo cannot silently turn every sample into "video"."""

    meaning: str
    unit: str
    range: Range


_PHASH = Range(int, 0, 64)
_PIXELS = Range(int, 0, 100_000)
_SHARE = Range(float, 0, 1)

# every tunable of DetectorConfig, TypeThresholds and NoiseLimits, by its `--set` name
SETTINGS: dict[str, Setting] = {
    "phash_code": Setting("pHash distance to the last kept frame that keeps a code screen",
                          "bits of 64", _PHASH),
    "phash_ui": Setting("the same, for an application UI", "bits of 64", _PHASH),
    "phash_docs": Setting("the same, for a page of documentation", "bits of 64", _PHASH),
    "phash_video": Setting("the same, while video plays", "bits of 64", _PHASH),
    "min_changed_px": Setting("changed pixels outside noise that keep a frame",
                              "work pixels", _PIXELS),
    "video_interval": Setting("time between kept frames while video plays", "seconds",
                              Range(float, 0, 3600, open_low=True)),
    "video_outside_px": Setting("change beside a playing video that is kept at once",
                                "work pixels", _PIXELS),
    "typing_max_tiles": Setting("a change this small, moving along one line, is typing",
                                "tiles", Range(int, 0, 10_000)),
    "typing_max_wait": Setting("typing is kept when the line is done, or after this long",
                               "seconds", Range(float, 0, 3600)),
    "video_min_share": Setting("screen moving in each of the last 3 samples that makes video",
                               "share of the screen", _SHARE),
    "video_max_edge_ratio": Setting("edge density inside the moving region below which it is "
                                    "video (scrolling text is denser)", "ratio", _SHARE),
    "text_min_edge_ratio": Setting("edge density below which a static screen is UI, not text",
                                   "ratio", _SHARE),
    "docs_min_laplacian": Setting("texture above which a text screen is documentation",
                                  "Laplacian variance", Range(float, 0, 1e7)),
    "pixel_threshold": Setting("luma difference that counts a pixel as changed; 0 would "
                               "count encoder noise, 255 nothing", "luma levels",
                               Range(int, 1, 254)),
    "volatile_changes": Setting("changes within the last 8 samples that make a tile volatile "
                                "(a clock, a spinner)", "changes", Range(int, 1, 8)),
    "volatile_max_tiles": Setting("a larger group of volatile tiles is content, not a widget",
                                  "tiles", Range(int, 0, 10_000)),
    "tiny_width_px": Setting("a pointer or text cursor fits in this box: its width",
                             "screen pixels", _PIXELS),
    "tiny_height_px": Setting("the same box's height", "screen pixels", _PIXELS),
    "line_height_px": Setting("what moved fits one line of text (typing)", "screen pixels",
                              Range(int, 1, 100_000)),
    "refine_max_delta": Setting("an encoder sharpening its picture changes tiles this faintly "
                                "at most", "luma levels", Range(int, 0, 255)),
    "refine_max_px": Setting("...and this sparsely at most", "work pixels of 64 per tile",
                             Range(int, 0, 64)),
    "refine_min_tiles": Setting("this many such tiles at once are the encoder, not content",
                                "tiles", Range(int, 1, 100_000)),
}


@dataclass(frozen=True)
class DetectorConfig:
    """Every tunable of the detector; `sightline vision scan --set NAME=VALUE` overrides them."""

    phash_code: int = 10
    phash_ui: int = 12
    phash_docs: int = 15
    phash_video: int = 20
    min_changed_px: int = 10  # work pixels outside noise: one or two characters of text
    video_interval: float = 5.0  # seconds between kept frames while video plays
    video_outside_px: int = 40  # change beside a playing video that is kept at once (its
    # player's clock and progress bar move too, so more than `min_changed_px`)
    typing_max_tiles: int = 40  # a change this small, moving along one line, is typing...
    typing_max_wait: float = 8.0  # ...kept when the line is done, or after this many seconds
    types: TypeThresholds = field(default_factory=TypeThresholds)
    noise: NoiseLimits = field(default_factory=NoiseLimits)

    def phash_threshold(self, content: ContentType) -> int:
        return {
            ContentType.CODE: self.phash_code,
            ContentType.UI: self.phash_ui,
            ContentType.DOCS: self.phash_docs,
            ContentType.VIDEO: self.phash_video,
        }[content]

    def with_values(self, values: dict[str, str]) -> DetectorConfig:
        """A copy with settings set by name (nested ones too: `pixel_threshold`); ValueError,
        one line naming the setting, the value and its range, for a value outside `SETTINGS`."""
        top: dict[str, object] = {}
        nested: dict[str, dict[str, object]] = {"types": {}, "noise": {}}
        for name, raw in values.items():
            if name not in SETTINGS:
                raise ValueError(f"unknown detector setting {name!r} "
                                 "(`sightline vision settings` lists them)")
            try:
                value = SETTINGS[name].range.parse(raw)
            except ValueError as exc:
                raise ValueError(f"detector setting {name}={raw!r} is invalid: {exc}") from None
            group = next((g for g, target in (("types", self.types), ("noise", self.noise))
                          if name in {f.name for f in dataclasses.fields(target)}), None)
            (nested[group] if group else top)[name] = value
        return dataclasses.replace(
            self,
            types=dataclasses.replace(self.types, **nested["types"]),  # type: ignore[arg-type]
            noise=dataclasses.replace(self.noise, **nested["noise"]),  # type: ignore[arg-type]
            **top,  # type: ignore[arg-type]
        )

    def settings(self) -> dict[str, float]:
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("types", "noise")}
        return {**flat, **dataclasses.asdict(self.types), **dataclasses.asdict(self.noise)}


@dataclass(frozen=True)
class ChangeDecision:
    """One sampled frame's verdict; `reason` says which rule kept or dropped it."""

    t: float
    kept: bool
    reason: str
    content_type: ContentType
    phash_distance: int
    changed_px: int
    changed_tiles: int
    noise_px: int
    stats: ContentStats
    # frame pixels: the separate areas where the content changed since the last kept frame (the
    # whole frame for the first one), none when nothing did
    regions: tuple[Box, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "t": round(self.t, 3),
            "kept": self.kept,
            "reason": self.reason,
            "content_type": str(self.content_type),
            "phash_distance": self.phash_distance,
            "changed_px": self.changed_px,
            "changed_tiles": self.changed_tiles,
            "noise_px": self.noise_px,
            "motion": round(self.stats.motion, 3),
            "moving_share": round(self.stats.moving_share, 3),
            "moving_edge_ratio": round(self.stats.moving_edge_ratio, 4),
            "laplacian_var": round(self.stats.laplacian_var, 1),
            "edge_ratio": round(self.stats.edge_ratio, 4),
            "regions": [list(box) for box in self.regions],
        }


@dataclass
class _Kept:
    work: np.ndarray
    hash: np.ndarray
    t: float


class ChangeDetector:
    """Decides per sampled frame; holds only the last kept and last decided work images
    (~130 KB)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._types = StableContentType(self.config.types)
        self._kept: _Kept | None = None
        self._last: _Kept | None = None  # the frame decided last, kept or not
        self._tiles: TileTracker | None = None
        self._size: tuple[int, int] | None = None
        self._typing: tuple[tuple[int, int], float] | None = None  # (rows, since)

    def decide(self, t: float, frame: rtc.VideoFrame) -> ChangeDecision:
        """`frame` must be a checked I420 frame (see `vision.frames.as_i420`)."""
        work = downscale(luma_plane(frame))
        size = (frame.width, frame.height)
        if size != self._size:
            return self._restart(t, work, size)
        assert self._tiles is not None and self._kept is not None
        laplacian_var, edges = texture(work)
        motion = self._tiles.observe(work, self._last.work if self._last else None, edges)
        stats = content_stats(laplacian_var, edges, motion)
        content = self._types.update(stats)
        frame_hash = phash(work)
        self._last = _Kept(work, frame_hash, t)
        distance = hamming(frame_hash, self._kept.hash)
        playing = self._types.seen is ContentType.VIDEO
        # the bounded rate starts with the playing region, itself three samples of motion; the
        # type (and its pHash threshold) follows the three-sample stability rule
        if content is ContentType.VIDEO or playing:
            local, kept, reason = self._video_rule(t, work, motion, playing)
        else:
            local = self._tiles.compare(work, self._kept.work)
            kept, reason = self._rule(t, content, distance, local, motion)
            if local.refined and reason in ("noise", "small_change"):
                # the encoder sharpened the kept screen: later samples are compared with the
                # sharper picture, so the refinement's leftover specks never add up to a change
                self._kept = _Kept(work, frame_hash, self._kept.t)
                reason = "refined"
        if kept:
            self._kept = self._last
        return ChangeDecision(
            t, kept, reason, content, distance, local.changed_px, local.changed_tiles,
            local.noise_px, stats, self._frame_boxes(local.boxes, size),
        )

    def keep_last(self, decision: ChangeDecision) -> ChangeDecision:
        """Keep the frame decided last after all: it was held back (`decision`, a line still
        being typed or a change too small to keep), and a question is showing it to the model.
        What the model sees, screen memory reads and covers; later frames are compared with
        it, so the rest of a typed line is what the next kept frame adds."""
        if self._last is None or self._last.t != decision.t or decision.kept:
            raise ValueError(f"the frame at t={decision.t} is not the last one decided, "
                             "held back")
        self._kept, self._typing = self._last, None
        return dataclasses.replace(decision, kept=True, reason=ASKED)

    @classmethod
    def _frame_boxes(cls, boxes: tuple[Box, ...], size: tuple[int, int]) -> tuple[Box, ...]:
        return tuple(box for box in (cls._frame_box(work, size) for work in boxes) if box)

    @staticmethod
    def _frame_box(box: Box, size: tuple[int, int]) -> Box | None:
        """A work-image box in frame pixels, rounded outwards (the work image may be padded)."""
        width, height = size
        work_w, _ = work_size(width, height)
        scale = width / work_w
        x0, y0 = int(box[0] * scale), int(box[1] * scale)
        x1 = min(width, math.ceil((box[0] + box[2]) * scale))
        y1 = min(height, math.ceil((box[1] + box[3]) * scale))
        return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None

    def _rule(
        self, t: float, content: ContentType, distance: int, local: LocalChange, motion: Motion
    ) -> tuple[bool, str]:
        assert self._kept is not None
        typing, self._typing = self._typing, None
        if distance >= self.config.phash_threshold(content):
            return True, "phash"
        if local.changed_px >= self.config.min_changed_px:
            if self._still_typing(t, local, motion.strip, typing):
                return False, "typing"
            return True, "local_change"
        if local.changed_px == 0 and local.noise_px == 0:
            return False, "no_change"
        return False, "noise" if local.changed_px == 0 else "small_change"

    def _still_typing(
        self, t: float, local: LocalChange, strip: tuple[int, int] | None,
        typing: tuple[tuple[int, int], float] | None,
    ) -> bool:
        """A small change still growing along one line of text is a line being typed (or
        output arriving): wait for it to finish, so the kept frame shows the whole line. It is
        kept once nothing moves, when the activity moves to another line, or after a while."""
        assert self._tiles is not None
        small = local.changed_tiles <= min(self.config.typing_max_tiles, self._tiles.count / 20)
        if strip is None or not small:
            return False
        if typing is None:
            self._typing = (strip, t)
            return True
        (first, last), since = typing
        same_line = strip[0] <= last and first <= strip[1]
        if same_line and t - since < self.config.typing_max_wait:
            self._typing = (strip, since)
            return True
        return False

    def _video_rule(
        self, t: float, work: np.ndarray, motion: Motion, playing: bool
    ) -> tuple[LocalChange, bool, str]:
        """While video plays: changes outside its region count as usual; the region itself is
        kept once per `video_interval`, and as soon as it stops moving."""
        assert self._tiles is not None and self._kept is not None
        enough = self.config.min_changed_px
        outside = self._tiles.compare(work, self._kept.work, ignore=motion.region)
        if outside.changed_px >= self.config.video_outside_px:
            return outside, True, "local_change"
        whole = self._tiles.compare(work, self._kept.work)
        if whole.changed_px < enough:
            return whole, False, "video_rate_limit" if motion.region_share else "no_change"
        if not playing:
            return whole, True, "video_ended"  # do not wait three samples for the type to settle
        if t - self._kept.t >= self.config.video_interval:
            return whole, True, "video_rate"
        return whole, False, "video_rate_limit"

    def _restart(self, t: float, work: np.ndarray, size: tuple[int, int]) -> ChangeDecision:
        """First frame, or the resolution changed: start over from this frame, and keep it."""
        reason = "first" if self._size is None else "resolution_change"
        self._size = size
        # work pixels per frame pixel along the less magnified side: a frame of an extreme
        # shape (1 x 16,000) is stretched to the work size's least width alone, and scaling its
        # kernels by that made them hundreds of pixels long (tens of ms a frame on the loop)
        scale = min(work.shape[1] / size[0], work.shape[0] / size[1])
        self._tiles = TileTracker(work.shape, scale, self.config.noise)
        self._types.reset()
        laplacian_var, edges = texture(work)
        stats = content_stats(laplacian_var, edges, None)
        content = self._types.update(stats)
        self._kept = self._last = _Kept(work, phash(work), t)
        return ChangeDecision(t, True, reason, content, 0, work.size, 0, 0, stats,
                              ((0, 0, *size),))


def content_stats(laplacian_var: float, edges: np.ndarray, motion: Motion | None
                  ) -> ContentStats:
    """What the content type is read from (vision/content_type.py): a frame's texture, and
    the motion the tile tracker saw (None: a first frame, or a still on its own)."""
    return ContentStats(
        laplacian_var=laplacian_var,
        edge_ratio=float(np.count_nonzero(edges)) / edges.size,
        motion=motion.share if motion else 0.0,
        moving_share=motion.region_share if motion else 0.0,
        moving_edge_ratio=motion.region_edge_ratio if motion else 0.0,
    )
