"""A small drawn desktop for detector tests: an editor with code, a top-bar clock, a text cursor,
a mouse pointer, toasts and a video region, rendered with PIL and handed over as I420 frames.

The evaluation set (fixtures/vision_eval) is the realistic material; this is for exact cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from livekit import rtc
from PIL import Image, ImageDraw, ImageFont

from vision.frames import as_i420

CODE = [
    "import asyncio",
    "from dataclasses import dataclass",
    "",
    "@dataclass",
    "class Reading:",
    "    sensor: str",
    "    value: float",
    "",
    "async def poll(sensors: list[str]) -> list[Reading]:",
    "    results = await asyncio.gather(*(read(s) for s in sensors))",
    "    return [Reading(s, v) for s, v in zip(sensors, results)]",
    "",
    "def summarize(readings: list[Reading]) -> dict[str, float]:",
    "    by_sensor: dict[str, list[float]] = {}",
    "    for reading in readings:",
    "        by_sensor.setdefault(reading.sensor, []).append(reading.value)",
    "    return {k: sum(v) / len(v) for k, v in by_sensor.items()}",
]
LINE_HEIGHT = 22
TEXT_X, TEXT_Y = 90, 70
POINTER = [(0, 0), (0, 17), (4, 13), (7, 19), (9, 18), (6, 12), (12, 12)]


@dataclass
class Desk:
    """State of the drawn screen; `frame()` renders it."""

    width: int = 1920
    height: int = 1080
    lines: list[str] = field(default_factory=lambda: list(CODE))
    clock_s: int = 0
    cursor_on: bool = True
    pointer: tuple[int, int] | None = (900, 600)
    toast: str | None = None
    video_seed: int | None = None

    def __post_init__(self) -> None:
        self.font = ImageFont.load_default(size=16)

    def image(self) -> Image.Image:
        img = Image.new("RGB", (self.width, self.height), (30, 32, 38))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, self.width, 30), fill=(45, 47, 55))
        hours, rest = divmod(9 * 3600 + self.clock_s, 3600)
        clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        draw.text((self.width - 110, 6), clock, font=self.font, fill=(220, 220, 220))
        draw.text((12, 6), "editor - readings.py", font=self.font, fill=(200, 200, 200))
        for i, line in enumerate(self.lines):
            y = TEXT_Y + i * LINE_HEIGHT
            draw.text((20, y), f"{i + 1:>3}", font=self.font, fill=(110, 110, 120))
            draw.text((TEXT_X, y), line, font=self.font, fill=(212, 212, 200))
        if self.cursor_on:
            last = len(self.lines) - 1
            x = TEXT_X + round(draw.textlength(self.lines[last], font=self.font)) + 1
            y = TEXT_Y + last * LINE_HEIGHT
            draw.rectangle((x, y, x + 1, y + 18), fill=(240, 240, 240))
        if self.video_seed is not None:
            rng = np.random.default_rng(self.video_seed)
            yy, xx = np.mgrid[0:360, 0:640]
            phase = self.video_seed * 0.7
            base = 120 + 60 * np.sin(xx / 37 + phase) * np.cos(yy / 23 - phase)
            noise = rng.normal(0, 12, (360, 640))
            tile = np.clip(np.stack([base + noise, base * 0.8, 200 - base], -1), 0, 255)
            img.paste(Image.fromarray(tile.astype(np.uint8)), (1200, 600))
        if self.toast:
            x0, y0 = self.width - 340, self.height - 110
            draw.rounded_rectangle((x0, y0, x0 + 320, y0 + 80), 8, fill=(60, 110, 200))
            draw.text((x0 + 16, y0 + 28), self.toast, font=self.font, fill=(255, 255, 255))
        if self.pointer is not None:
            px, py = self.pointer
            shape = [(px + x, py + y) for x, y in POINTER]
            draw.polygon(shape, fill=(0, 0, 0), outline=(255, 255, 255))
        return img

    def frame(self) -> rtc.VideoFrame:
        return rgb_frame(np.asarray(self.image()))


def rgb_frame(rgb: np.ndarray) -> rtc.VideoFrame:
    """An RGB array as the I420 frame a LiveKit track would deliver."""
    height, width = rgb.shape[:2]
    rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    return as_i420(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes()))


def flat_frame(width: int, height: int, value: int) -> rtc.VideoFrame:
    return rgb_frame(np.full((height, width, 3), value, np.uint8))


def write_recording(path: Path, desk_at: Callable[[float], Desk], seconds: int, fps: int) -> None:
    """A 720p VP8 recording of the desk as `desk_at(t)` draws it, at `fps`."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.bit_rate = 800_000
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(seconds * fps):
            rgb = np.asarray(desk_at(i / fps).image())
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def coarse_keyframe(rgb: np.ndarray, bit_rate: int = 200_000) -> rtc.VideoFrame:
    """The screen as a real VP8 encoder sends it first at a low bitrate (one keyframe, encoded
    and decoded): the picture a share starts with before the encoder sharpens it."""
    height, width = rgb.shape[:2]
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate = bit_rate
    encoder.time_base = Fraction(1, 5)
    encoder.options = {"deadline": "realtime", "cpu-used": "8"}
    source = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    decoder = av.CodecContext.create("libvpx", "r")
    decoded = [f for packet in encoder.encode(source) + encoder.encode(None)
               for f in decoder.decode(packet)]
    return rgb_frame(decoded[0].to_ndarray(format="rgb24"))
