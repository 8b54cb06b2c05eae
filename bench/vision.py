"""Change-detector speed on 1920x1080 I420 frames, against the full-resolution reference path.

Both sides see the same frames, decoded from the bundled evaluation recordings (real screen
content at 1080p, one frame per second), in the same run, on one thread:

- Sightline: `ChangeDetector.decide` on the I420 frame (luma downscale, content type, pHash,
  local change, the decision);
- reference: full-resolution BGR -> gray, Laplacian CV_64F variance, Canny, BGR -> RGB,
  PIL.Image, `imagehash.phash`, then the adaptive-threshold decision. Its BGR input is prepared
  outside the timing, which only flatters the reference.

It also runs the detector over many more frames and reports the process's memory before and
after, to show a session does not grow it.

    .venv/bin/python -m bench.vision [--frames 120] [--rounds 5]

Verdict (`TARGETS`): the detector must beat the reference path in the same run (`speedup`, the
reference's ms per frame over ours, > 1; README: Change detection, Speed), or the run fails with
a `target missed:` line and exit status 1.

The last line is JSON: {"ms_per_frame", "reference_ms_per_frame", "speedup", "width", "height",
"frames", "targets_met", "missed"}.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
from livekit import rtc

from agent.cli_common import positive_int
from bench.verdict import Target, exit_status, parser, ratio, verdict
from bench.vision_references import PhashReference, i420_to_bgr, reference_features
from vision.change import ChangeDetector
from vision.sampler import FrameSampler
from vision.video_file import iter_frames

REPO = Path(__file__).resolve().parent.parent

EVAL_SESSIONS = REPO / "fixtures" / "vision_eval" / "sessions"
TARGETS: dict[str, Target] = {"speedup": (">", 1.0)}  # the reference path, the same frames


def load_frames(count: int) -> list[rtc.VideoFrame]:
    """`count` 1080p frames, one per second, from the bundled recordings in name order (all of
    them, fewer than `count`, when the recordings hold fewer)."""
    frames: list[rtc.VideoFrame] = []
    for video in sorted(EVAL_SESSIONS.glob("*.webm")) + sorted(EVAL_SESSIONS.glob("*.mp4")):
        sampler = FrameSampler(1.0)
        for t, frame in iter_frames(video):
            if (frame.width, frame.height) != (1920, 1080):
                break
            if sampler.offer(t):
                frames.append(frame)
                if len(frames) == count:
                    return frames
    if not frames:
        raise SystemExit(f"no 1920x1080 recordings under {EVAL_SESSIONS}")
    return frames


def time_per_frame(step: Callable[[Any], object], inputs: Sequence[Any], rounds: int) -> float:
    """Median over rounds of the mean milliseconds per frame."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for item in inputs:
            step(item)
        results.append((time.perf_counter() - started) * 1000 / len(inputs))
    return statistics.median(results)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    cli = parser("bench.vision", __doc__)
    cli.add_argument("--frames", type=positive_int, default=120,
                     help="1080p frames to time, one per second of the recordings (default 120)")
    cli.add_argument("--rounds", type=positive_int, default=5,
                     help="passes over the frames; the median pass counts (default 5)")
    args = cli.parse_args()
    cv2.setNumThreads(1)
    frames = load_frames(args.frames)
    bgr = [i420_to_bgr(f) for f in frames]

    detector = ChangeDetector()
    clock = iter(range(10**9))
    ours = time_per_frame(lambda f: detector.decide(float(next(clock)), f), frames, args.rounds)
    reference = PhashReference(adaptive=True)
    ref = time_per_frame(lambda b: reference.offer(reference_features(b)), bgr, args.rounds)

    before = rss_mb()
    for _ in range(20):
        for frame in frames:
            detector.decide(float(next(clock)), frame)
    after = rss_mb()
    print(f"{len(frames)} frames of 1920x1080, {args.rounds} rounds, one thread")
    print(f"sightline detector: {ours:.2f} ms/frame; reference path: {ref:.2f} ms/frame; "
          f"speed-up {ref / ours:.1f}x")
    print(f"memory over {20 * len(frames)} more frames: {before:.1f} MB -> {after:.1f} MB RSS")
    result: dict[str, Any] = {
        "ms_per_frame": round(ours, 3),
        "reference_ms_per_frame": round(ref, 3),
        "speedup": ratio(ref, ours),
        "width": 1920,
        "height": 1080,
        "frames": len(frames),
    }
    result |= verdict(result, TARGETS)
    print(json.dumps(result))
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
