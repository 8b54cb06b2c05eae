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

The last line is JSON: {"ms_per_frame", "reference_ms_per_frame", "speedup", "width", "height"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import cv2

from bench.vision_references import PhashReference, i420_to_bgr, reference_features
from vision.change import ChangeDetector
from vision.sampler import FrameSampler
from vision.video_file import iter_frames

REPO = Path(__file__).resolve().parent.parent

EVAL_SESSIONS = REPO / "fixtures" / "vision_eval" / "sessions"


def load_frames(count: int) -> list:
    """`count` 1080p frames, one per second, from the bundled recordings in name order."""
    frames = []
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


def time_per_frame(step, inputs: list, rounds: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
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
    print(json.dumps({
        "ms_per_frame": round(ours, 3),
        "reference_ms_per_frame": round(ref, 3),
        "speedup": round(ref / ours, 2),
        "width": 1920,
        "height": 1080,
    }))


if __name__ == "__main__":
    main()
