"""A turn's screenshot as JPEG: ours (OpenCV, vision/jpeg.py) against livekit-agents' Pillow
encode (the reference, what the worker used before), on the same frames in the same run.

    .venv/bin/python -m bench.screenshot_encode [--frames 40] [--sizes 1280x720,1365x768]

The frames are real screen recordings of the bundled vision set (their frames as a session
receives them: I420), scaled to 1080p for the 1080p rows. Per system and size: the CPU of one
encode (the process's, mean: the probe's share is the same for both), and how long a probe
thread that only sleeps 0.5 ms at a time was held up while encodes ran in another thread (its
longest gaps, p99 and max): a worker's sessions share one GIL, so an encode that holds it
holds up every session of the process. Ratios are the reference's over ours. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
from livekit import rtc
from livekit.agents.utils.images import EncodeOptions, ResizeOptions, encode

from agent.images import JPEG_QUALITY
from bench.vision_eval import EVAL_SET
from vision.frames import as_i420
from vision.jpeg import jpeg_bytes
from vision.video_file import VideoFrames

PROBE_SLEEP_S = 0.0005


def pillow(frame: rtc.VideoFrame, size: tuple[int, int]) -> bytes:
    """The reference: the worker's encode before vision/jpeg.py."""
    return encode(frame, EncodeOptions(format="JPEG", quality=JPEG_QUALITY, resize_options=(
        ResizeOptions(width=size[0], height=size[1], strategy="skew"))))


def ours(frame: rtc.VideoFrame, size: tuple[int, int]) -> bytes:
    return jpeg_bytes(frame, JPEG_QUALITY, size)


def frames_of(count: int, width: int, height: int) -> list[rtc.VideoFrame]:
    """`count` frames spread over the terminal and docs recordings, as I420 of this size."""
    frames = []
    for name in ("dev2-terminal.webm", "dev1-docs-editor.webm"):
        every = list(VideoFrames(EVAL_SET / name))
        step = max(1, len(every) // (count // 2))
        for _, frame in every[::step][: count // 2]:
            rgba = frame.convert(rtc.VideoBufferType.RGBA)
            pixels = np.frombuffer(rgba.data, np.uint8).reshape(frame.height, frame.width, 4)
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_NEAREST)
            frames.append(as_i420(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                                                 pixels.tobytes())))
    return frames


def measure(system: Callable[[rtc.VideoFrame, tuple[int, int]], bytes],
            frames: list[rtc.VideoFrame], size: tuple[int, int]) -> dict[str, float]:
    sizes: list[int] = []

    def run() -> None:
        for frame in frames:
            sizes.append(len(system(frame, size)))

    worker = threading.Thread(target=run)
    gaps: list[float] = []
    cpu_started = time.process_time()  # every thread's: OpenCV may use more than the caller's
    worker.start()
    last = time.perf_counter()
    while worker.is_alive():
        time.sleep(PROBE_SLEEP_S)
        now = time.perf_counter()
        gaps.append(1000 * (now - last))
        last = now
    worker.join()
    cpu_ms = 1000 * (time.process_time() - cpu_started) / len(frames)
    gaps.sort()
    return {"cpu_ms": round(cpu_ms, 2),
            "held_ms_p99": round(gaps[int(0.99 * (len(gaps) - 1))], 2),
            "held_ms_max": round(gaps[-1], 2),
            "jpeg_kb": round(statistics.median(sizes) / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--sizes", default="1280x720:1280x720,1920x1080:1365x768",
                        help="frame size:sent size pairs (Gemini, medium detail, by default)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as a worker runs it (agent/cli_worker.py)
    rows = []
    for pair in args.sizes.split(","):
        source, sent = ((int(n) for n in part.split("x")) for part in pair.split(":"))
        width, height = source
        sent_size = tuple(sent)
        frames = frames_of(args.frames, width, height)
        measure(ours, frames[:4], sent_size)  # warm both up
        measure(pillow, frames[:4], sent_size)
        reference, mine = measure(pillow, frames, sent_size), measure(ours, frames, sent_size)
        row = {"frame": f"{width}x{height}", "sent": f"{sent_size[0]}x{sent_size[1]}",
               "pillow": reference, "ours": mine,
               "cpu_ratio": round(reference["cpu_ms"] / mine["cpu_ms"], 2),
               "held_p99_ratio": round(reference["held_ms_p99"] / mine["held_ms_p99"], 2)}
        rows.append(row)
        print(f"{row['frame']} sent as {row['sent']}: CPU {mine['cpu_ms']} ms against "
              f"{reference['cpu_ms']} ({row['cpu_ratio']}x); the probe thread held up "
              f"{mine['held_ms_p99']} / {mine['held_ms_max']} ms p99 / max against "
              f"{reference['held_ms_p99']} / {reference['held_ms_max']} "
              f"({row['held_p99_ratio']}x); {mine['jpeg_kb']} KB against {reference['jpeg_kb']}")
    print(json.dumps({"bench": "screenshot_encode", "frames": args.frames, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
