"""Frame sampling, the screen watcher and video decoding, on real frames and the demo video.

Protects: one sample per period by the frames' own timestamps whatever the publisher's rate,
jitter or bursts; a stall re-anchors instead of bursting; a clock that goes backwards restarts;
unusable frames are dropped as "invalid" and never become the screen the model sees; frames of
other types and odd sizes are converted to I420; the demo video decodes to 1280x720 I420 frames
with increasing timestamps, and a garbage file fails with a message naming it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DEMO_FIXTURE
from livekit import rtc

from vision.frames import i420_size
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, ScreenWatcher
from vision.video_file import VideoUnreadable, iter_frames, probe_duration

DEMO_VIDEO = DEMO_FIXTURE / "screen.webm"


def run(sampler: FrameSampler, times: list[float]) -> list[float]:
    return [t for t in times if sampler.offer(t)]


def steady(fps: float, seconds: float, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(round(fps * seconds))]


def gaps(samples: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(samples)]


# -- FrameSampler --------------------------------------------------------------------------


def test_30fps_for_10s_gives_10_samples_1s_apart() -> None:
    sampler = FrameSampler(1.0)
    samples = run(sampler, steady(30, 10))
    assert len(samples) == 10
    assert samples[0] == 0.0
    assert all(0.95 <= g <= 1.05 for g in gaps(samples)), gaps(samples)
    assert sampler.offered == 300 and sampler.sampled == 10


def test_5fps() -> None:
    # accumulated float timestamps (0.2 + 0.2 + ...) must not skip or double a period
    times, t = [], 0.0
    for _ in range(50):
        times.append(t)
        t += 0.2
    samples = run(FrameSampler(1.0), times)
    assert len(samples) == 10
    assert all(0.8 - 1e-9 <= g <= 1.2 + 1e-9 for g in gaps(samples)), gaps(samples)


def test_fps_2() -> None:
    sampler = FrameSampler(2.0)
    assert sampler.period == 0.5
    samples = run(sampler, steady(30, 10))
    assert len(samples) == 20
    assert all(0.45 <= g <= 0.55 for g in gaps(samples)), gaps(samples)


def test_jittery_timestamps_do_not_drift() -> None:
    rng = random.Random(1234)
    times = [i / 30 + rng.uniform(-0.012, 0.012) for i in range(300)]
    times[0] = 0.0
    samples = run(FrameSampler(1.0), times)
    assert len(samples) == 10
    # on schedule: the k-th sample is the first frame at or after k seconds, not k * (1 + jitter)
    for k, t in enumerate(samples):
        assert k <= t < k + 1 / 30 + 0.025, (k, t)


def test_bursty_timestamps_give_one_sample_per_period() -> None:
    # 8 frames within 20 ms, every 0.5 s (a publisher that batches its frames)
    times = [burst * 0.5 + j * 0.0025 for burst in range(20) for j in range(8)]
    samples = run(FrameSampler(1.0), times)
    assert samples == [float(k) for k in range(10)]


def test_stall_reanchors_without_a_burst() -> None:
    before = steady(30, 3)  # 0 .. 2.967
    resume = before[-1] + 4.3  # a 4.3 s stall
    after = [resume + i / 30 for i in range(90)]  # 3 more seconds
    samples = run(FrameSampler(1.0), before + after)
    assert samples[:3] == [0.0, 1.0, 2.0]
    # the frame that ends the stall is sampled, then one per second from it: no catch-up burst
    assert samples[3] == pytest.approx(resume)
    assert len(samples) == 6
    assert all(g >= 0.99 for g in gaps(samples)), gaps(samples)
    assert samples[4] == pytest.approx(resume + 1, abs=1 / 30 + 1e-9)
    assert samples[5] == pytest.approx(resume + 2, abs=1 / 30 + 1e-9)


def test_clock_going_backwards_restarts_the_schedule() -> None:
    first = [i / 10 for i in range(51)]  # 0 .. 5.0
    second = [0.25 + i / 10 for i in range(31)]  # the publisher restarts its clock: 0.25 .. 3.25
    samples = run(FrameSampler(1.0), first + second)
    assert samples[:6] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    # sampled at once after the jump, then every second from there
    assert samples[6:] == pytest.approx([0.25, 1.25, 2.25, 3.25])


def test_timestamp_equal_to_previous_is_not_a_restart() -> None:
    sampler = FrameSampler(1.0)
    assert sampler.offer(0.0)
    assert not sampler.offer(0.5)
    assert not sampler.offer(0.5)
    assert sampler.offer(1.0)


# -- ScreenWatcher with real rtc.VideoFrame ------------------------------------------------


def i420(width: int, height: int, fill: int = 128) -> rtc.VideoFrame:
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.I420,
                          bytes([fill]) * i420_size(width, height))


def watcher(fps: float = 1.0) -> tuple[ScreenWatcher, list[FrameDecision]]:
    decisions: list[FrameDecision] = []
    return ScreenWatcher(FrameSampler(fps), decisions.append), decisions


def test_watcher_keeps_the_latest_kept_frame() -> None:
    screen, decisions = watcher()
    # the screen changes once a second (fill 0, 100, 200), plus one luma level per tenth
    frames = [(i / 10, i420(64, 48, fill=100 * (i // 10) + i % 10)) for i in range(25)]
    for t, frame in frames:
        screen.offer(t, frame)
    assert screen.frames_received == 25
    assert [d.t for d in decisions] == [0.0, 1.0, 2.0]
    assert [(d.kept, d.reason) for d in decisions] == [
        (True, "first"), (True, "local_change"), (True, "local_change"),
    ]
    assert (decisions[0].width, decisions[0].height) == (64, 48)
    assert screen.latest is not None
    assert screen.latest.t == 2.0
    assert screen.latest.frame.data[0] == 200  # the frame offered at t=2.0, not a later one
    assert screen.stats() == {"received": 25, "sampled": 3}


def test_an_unchanged_screen_keeps_its_first_frame() -> None:
    screen, decisions = watcher()
    for i in range(50):
        screen.offer(i / 10, i420(64, 48, fill=90 + i % 3))  # codec-like wobble only
    assert [(d.kept, d.reason) for d in decisions] == [(True, "first")] + [
        (False, "no_change")
    ] * 4
    assert screen.latest is not None and screen.latest.t == 0.0
    assert screen.freshest is not None and screen.freshest.t == 4.0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: rtc.VideoFrame(0, 0, rtc.VideoBufferType.I420, b""), id="0x0"),
        pytest.param(
            lambda: rtc.VideoFrame(64, 48, rtc.VideoBufferType.I420, bytes(64 * 48)),
            id="truncated-i420",
        ),
    ],
)
def test_invalid_frame_is_dropped_and_never_latest(bad: Callable[[], rtc.VideoFrame]) -> None:
    screen, decisions = watcher()
    assert screen.offer(0.0, bad()) is None
    assert screen.latest is None
    assert len(decisions) == 1
    assert decisions[0].kept is False and decisions[0].reason == "invalid"

    # a good frame becomes latest; a later invalid one does not replace it
    good = i420(64, 48)
    assert screen.offer(1.0, good) is not None
    assert screen.offer(2.0, bad()) is None
    assert screen.latest is not None and screen.latest.t == 1.0
    assert [(d.kept, d.reason) for d in decisions] == [
        (False, "invalid"), (True, "first"), (False, "invalid"),
    ]


def test_rgba_frame_is_converted_to_i420() -> None:
    screen, decisions = watcher()
    width, height = 64, 32
    red = bytes([255, 0, 0, 255]) * (width * height)
    sampled = screen.offer(0.0, rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, red))
    assert sampled is not None
    assert sampled.frame.type == rtc.VideoBufferType.I420
    assert sampled.size == (width, height)
    assert len(sampled.frame.data) >= i420_size(width, height)
    # BT.601 limited range: pure red has luma ~81 and a high V (Cr)
    y = sampled.frame.data[0]
    v = sampled.frame.data[width * height + (width // 2) * (height // 2)]
    assert 70 <= y <= 95 and v > 200
    assert decisions[0].kept


@pytest.mark.parametrize("kind", [rtc.VideoBufferType.I420, rtc.VideoBufferType.RGBA])
def test_odd_sizes_work(kind: rtc.VideoBufferType.ValueType) -> None:
    width, height = 641, 361
    if kind == rtc.VideoBufferType.I420:
        frame = i420(width, height)
    else:
        frame = rtc.VideoFrame(width, height, kind, bytes(width * height * 4))
    screen, decisions = watcher()
    sampled = screen.offer(0.0, frame)
    assert sampled is not None and sampled.size == (641, 361)
    assert sampled.frame.type == rtc.VideoBufferType.I420
    assert len(sampled.frame.data) == i420_size(641, 361) == 641 * 361 + 2 * 321 * 181
    assert decisions[0].kept and (decisions[0].width, decisions[0].height) == (641, 361)


_TRUNCATED_RGBA_PROBE = """
import json
from livekit import rtc
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher
decisions = []
screen = ScreenWatcher(FrameSampler(1.0), decisions.append)
screen.offer(0.0, rtc.VideoFrame(64, 64, rtc.VideoBufferType.RGBA, bytes(100)))
print(json.dumps({"latest": screen.latest is not None,
                  "decisions": [[d.kept, d.reason] for d in decisions]}))
"""


def test_truncated_rgba_frame_is_dropped_as_invalid() -> None:
    # run in a child process: the bug is an out-of-bounds read that may crash the interpreter
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATED_RGBA_PROBE], cwd=repo, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"latest": False, "decisions": [[False, "invalid"]]}


# -- video files ---------------------------------------------------------------------------


def test_demo_video_decodes_to_i420_720p_with_increasing_timestamps() -> None:
    assert probe_duration(DEMO_VIDEO) == pytest.approx(40.0, abs=0.05)
    count, last_t = 0, -1.0
    for t, frame in iter_frames(DEMO_VIDEO):
        assert t > last_t
        if count == 0:
            assert t == 0.0
        assert (frame.width, frame.height) == (1280, 720)
        assert frame.type == rtc.VideoBufferType.I420
        assert len(frame.data) == i420_size(1280, 720)
        last_t = t
        count += 1
    assert count == 400
    assert last_t == pytest.approx(39.9, abs=1e-6)


def test_demo_video_through_the_watcher_samples_40_frames() -> None:
    screen, decisions = watcher()
    for t, frame in iter_frames(DEMO_VIDEO):
        screen.offer(t, frame)
    assert screen.frames_received == 400
    assert len(decisions) == 40
    kept = [d for d in decisions if d.kept]
    assert kept[0].reason == "first" and 0 < len(kept) < 40
    assert {d.reason for d in decisions if not d.kept} <= {"no_change", "noise", "small_change",
                                                           "typing", "refined"}
    assert screen.latest is not None and screen.latest.size == (1280, 720)
    assert screen.latest.t == kept[-1].t
    assert screen.freshest is not None and screen.freshest.t == decisions[-1].t
    screen.clear()
    assert screen.latest is None and screen.freshest is None


def test_garbage_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.webm"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    with pytest.raises(VideoUnreadable) as info:
        list(iter_frames(path))
    assert str(path) in str(info.value)
    with pytest.raises(VideoUnreadable) as info:
        probe_duration(path)
    assert str(path) in str(info.value)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "nope.webm"
    with pytest.raises(VideoUnreadable) as info:
        next(iter_frames(path))
    assert str(path) in str(info.value)


def test_an_invalid_frame_does_not_use_up_the_sampling_slot() -> None:
    decisions: list[FrameDecision] = []
    screen = ScreenWatcher(FrameSampler(1.0), decisions.append)
    good = rtc.VideoFrame(64, 64, rtc.VideoBufferType.I420, bytes(i420_size(64, 64)))
    broken = rtc.VideoFrame(64, 64, rtc.VideoBufferType.I420, bytes(10))
    assert screen.offer(0.0, broken) is None
    assert screen.offer(0.1, broken) is None  # same period: not logged a second time
    kept = screen.offer(0.2, good)
    assert kept is not None and kept.t == 0.2, "the next good frame takes the open slot"
    assert [(d.kept, d.reason) for d in decisions] == [(False, "invalid"), (True, "first")]
