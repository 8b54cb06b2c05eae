"""The change detector on drawn 1080p screens: what must be kept, what is noise, and odd input.

Protects: a completed code line, a short pasted line, a toast opening and closing, an app switch
are kept within the 2 s the evaluation allows, and changes far apart are located as separate
regions; a blinking cursor, a ticking clock and a wandering mouse pointer are dropped; an
encoder sharpening its first, coarse keyframe is not a change, but content that changes while
it sharpens is, and so is a faint line drawn across the screen; video plays at a bounded rate;
resolution changes, odd, tiny and huge frames and black, white and flashing screens are decided
without error; `--set` overrides work and bad names are refused; the detector's state does not
grow with the session.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from livekit import rtc
from synthetic_screen import Desk, coarse_keyframe, flat_frame, rgb_frame

from vision.change import ChangeDecision, ChangeDetector, DetectorConfig
from vision.content_type import ContentType
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, FrameTally, ScreenChange, ScreenWatcher

BLINK_HALF_PERIOD = 0.53  # a typical text cursor: 530 ms on, 530 ms off


def play(
    seconds: int, step: Callable[[Desk, float], None], desk: Desk | None = None
) -> list[ChangeDecision]:
    """One frame per second through a live screen watcher; `step` changes the desk first."""
    desk = desk or Desk()
    decisions: list[FrameDecision] = []
    watcher = ScreenWatcher(FrameSampler(1.0), decisions.append)
    for second in range(seconds):
        t = float(second)
        desk.cursor_on = (t % (2 * BLINK_HALF_PERIOD)) < BLINK_HALF_PERIOD
        desk.clock_s = second
        step(desk, t)
        watcher.offer(t, desk.frame())
    assert all(d.change is not None for d in decisions)
    return [d.change for d in decisions if d.change is not None]


def kept_times(decisions: list[ChangeDecision]) -> list[float]:
    return [d.t for d in decisions if d.kept]


def caught(decisions: list[ChangeDecision], at: float) -> bool:
    return any(at <= t <= at + 2.0 for t in kept_times(decisions))


def idle(_desk: Desk, _t: float) -> None:
    pass


def test_clock_and_blinking_cursor_alone_are_dropped() -> None:
    decisions = play(30, idle)
    assert kept_times(decisions) == [0.0]
    assert decisions[0].reason == "first"
    assert {d.reason for d in decisions[1:]} <= {"noise", "no_change"}


def test_a_wandering_pointer_is_dropped() -> None:
    def wander(desk: Desk, t: float) -> None:
        if 5 <= t < 15:
            desk.pointer = (900 + int(t - 5) * 37, 600 - int(t - 5) * 11)

    decisions = play(20, wander)
    assert kept_times(decisions) == [0.0]


def test_a_typed_line_is_kept_when_completed() -> None:
    line = "    total = sum(r.value for r in readings)"

    def type_line(desk: Desk, t: float) -> None:
        typed = int(max(0.0, t - 5) * 15)  # 15 characters a second from t=5
        if t >= 5:
            if len(desk.lines) == len(Desk().lines):
                desk.lines.append("")
            desk.lines[-1] = line[:typed]

    decisions = play(16, type_line)
    done = 5 + len(line) / 15
    assert caught(decisions, done), kept_times(decisions)
    assert all(t >= 5 for t in kept_times(decisions)[1:]), "nothing kept before typing began"


def test_a_short_pasted_line_is_kept() -> None:
    def paste(desk: Desk, t: float) -> None:
        if t == 6:
            desk.lines.append("    pass")

    decisions = play(12, paste)
    # one line appearing may be the start of more (typing, output): kept once it stops growing
    assert kept_times(decisions) == [0.0, 7.0]
    assert decisions[6].reason == "typing" and decisions[7].reason == "local_change"


def test_a_line_being_typed_is_kept_when_a_question_shows_it() -> None:
    """A question asked mid-line keeps the sample it shows (`keep_shown`): it is handed on to
    be read, recorded again as kept (`was`: why it was held back), and the tally moves it from
    dropped to kept; later samples are compared with it, so the rest of the line is what the
    next kept frame adds. Nothing to keep once kept, nor for a sample without a change."""
    desk = Desk(pointer=None, cursor_on=False)
    records: list[dict[str, object]] = []
    kept: list[ScreenChange] = []
    watcher = ScreenWatcher(FrameSampler(1.0), lambda d: records.append(d.as_record()),
                            on_kept=kept.append)
    watcher.offer(0.0, desk.frame())
    watcher.offer(1.0, desk.frame())
    assert not watcher.keep_shown()  # no change since the kept frame
    line = "    total = sum(r.value for r in readings)"
    desk.lines = [*desk.lines, line[:12]]
    watcher.offer(2.0, desk.frame())
    desk.lines[-1] = line[:30]
    watcher.offer(3.0, desk.frame())
    assert [r["reason"] for r in records] == ["first", "no_change", "typing", "typing"]
    assert watcher.keep_shown() and not watcher.keep_shown()
    assert watcher.latest is watcher.freshest and watcher.latest.t == 3.0
    [_, asked] = kept
    assert asked.decision.kept and asked.decision.reason == "asked" and asked.frame.t == 3.0
    [(_, y, _, height)] = asked.decision.regions
    line_y = 70 + (len(desk.lines) - 1) * 22  # synthetic_screen's TEXT_Y and LINE_HEIGHT
    assert y <= line_y + 16 and y + height >= line_y
    assert records[-1]["kept"] and records[-1]["was"] == "typing" and records[-1]["t"] == 3.0
    tally = FrameTally()
    for record in records:
        tally.add(record)
    assert (tally.sampled, tally.kept, dict(tally.dropped)) == (4, 2, {"no_change": 1,
                                                                       "typing": 1})
    assert tally.by_content_type() == {"ui": {"sampled": 4, "kept": 2, "dropped": 2}}
    watcher.offer(4.0, desk.frame())
    assert records[-1]["reason"] == "no_change"  # compared with the frame kept when asked
    desk.lines[-1] = line
    watcher.offer(5.0, desk.frame())
    watcher.offer(6.0, desk.frame())
    assert records[-1]["reason"] == "local_change"
    [(x, *_)] = kept[-1].decision.regions
    # the rest of the line (synthetic_screen's TEXT_X): what the question's frame lacked
    assert x >= 90 + desk.font.getlength(line[:30]) - 8


def test_only_the_frame_decided_last_and_held_back_can_be_kept_after_all() -> None:
    detector = ChangeDetector()
    desk = Desk(pointer=None, cursor_on=False)
    first = detector.decide(0.0, desk.frame())
    with pytest.raises(ValueError, match="not the last one decided, held back"):
        detector.keep_last(first)  # kept already
    desk.lines = [*desk.lines, "    pass"]
    typing = detector.decide(1.0, desk.frame())
    detector.decide(2.0, desk.frame())
    with pytest.raises(ValueError, match=r"t=1\.0 is not the last one decided"):
        detector.keep_last(typing)


def test_a_toast_is_kept_when_it_opens_and_when_it_closes() -> None:
    def toast(desk: Desk, t: float) -> None:
        desk.toast = "Build finished: 3 warnings" if 5 <= t < 9 else None

    decisions = play(14, toast)
    assert kept_times(decisions) == [0.0, 5.0, 9.0]


def test_an_app_switch_is_kept_by_phash() -> None:
    def switch(desk: Desk, t: float) -> None:
        if t == 4:
            desk.lines = [f"docs line {i}: " + "lorem ipsum dolor sit amet " * 3 for i in range(40)]

    decisions = play(8, switch)
    assert kept_times(decisions) == [0.0, 4.0]
    assert decisions[4].phash_distance > 0 and decisions[4].changed_px > 1000


def sharpened(desk: Desk) -> tuple[rtc.VideoFrame, rtc.VideoFrame]:
    """The desk as a share starts (a real VP8 keyframe at 200 kbps) and the source itself,
    which is what the encoder refines it to over the next second."""
    rgb = np.asarray(desk.image())
    return coarse_keyframe(rgb), rgb_frame(rgb)


def test_an_encoder_sharpening_its_keyframe_is_not_a_change() -> None:
    detector = ChangeDetector()
    coarse, sharp = sharpened(Desk(pointer=None, cursor_on=False))
    assert detector.decide(0.0, coarse).reason == "first"
    decisions = [detector.decide(t, sharp) for t in (1.0, 2.0, 3.0)]
    assert [d.kept for d in decisions] == [False] * 3
    # the refinement is many faint specks: noise, not content; from then on the sharper
    # picture is what later samples are compared with
    assert decisions[0].reason == "refined" and decisions[0].noise_px >= 100
    assert [d.reason for d in decisions[1:]] == ["no_change", "no_change"]
    # the same frames with the rule switched off: what the rule is for
    plain = ChangeDetector(DetectorConfig().with_values({"refine_min_tiles": "100000"}))
    plain.decide(0.0, coarse)
    assert plain.decide(1.0, sharp).kept


def test_content_that_changes_while_the_encoder_sharpens_is_kept() -> None:
    desk = Desk(pointer=None, cursor_on=False)
    coarse, _ = sharpened(desk)
    desk.lines = [*desk.lines, "    return summary"]
    detector = ChangeDetector()
    detector.decide(0.0, coarse)
    decision = detector.decide(1.0, desk.frame())
    assert decision.kept and decision.reason == "local_change"
    [(_, y, _, height)] = decision.regions
    line_y = 70 + (len(desk.lines) - 1) * 22  # synthetic_screen's TEXT_Y and LINE_HEIGHT
    assert y <= line_y + 16 and y + height >= line_y  # the new line, not the whole screen


def test_changes_far_apart_are_located_as_separate_regions() -> None:
    """A line typed mid-screen and a clock that ticked once since the kept frame (a share that
    only sends changed frames, or a clock of minutes): two small regions, not the screen
    between them."""
    desk = Desk(pointer=None, cursor_on=False)
    detector = ChangeDetector()
    detector.decide(0.0, desk.frame())
    desk.lines = [*desk.lines, "    return summary"]
    desk.clock_s = 3600 + 11 * 60 + 11  # every digit changed: one wide blob, not a pointer's
    assert detector.decide(1.0, desk.frame()).reason == "typing"
    decision = detector.decide(2.0, desk.frame())  # the line stopped growing
    assert decision.kept
    clock, line = sorted(decision.regions, key=lambda box: box[1])
    line_y = 70 + (len(desk.lines) - 1) * 22  # synthetic_screen's TEXT_Y and LINE_HEIGHT
    assert clock[0] >= desk.width - 140 and clock[1] + clock[3] <= 40  # the clock's seconds
    assert line[1] <= line_y + 16 and line[1] + line[3] >= line_y and line[3] < 60
    assert line[0] + line[2] < desk.width - 140  # the line alone, not up to the clock
    # more separate areas than a few are located as one box around them all
    scattered = Desk(pointer=None, cursor_on=False)
    detector = ChangeDetector()
    detector.decide(0.0, scattered.frame())
    scattered.lines = [line if n % 3 else line + " # changed" for n, line in
                       enumerate(scattered.lines)]
    [whole] = detector.decide(1.0, scattered.frame()).regions
    assert whole[3] > 300


def test_a_faint_line_drawn_across_the_screen_is_kept() -> None:
    """An editor's current-line highlight moving is about as faint as the encoder's specks
    (11 luma levels on one work row in the evaluation set), but a straight line."""
    rgb = np.asarray(Desk(pointer=None, cursor_on=False).image())
    detector = ChangeDetector()
    detector.decide(0.0, rgb_frame(rgb))
    banded = rgb.copy()
    banded[600:604, 80:1800] += 16  # one work row (1080p is downscaled 4x), 1720 px wide
    decision = detector.decide(1.0, rgb_frame(banded))
    assert decision.kept and decision.reason == "local_change"


def test_video_is_kept_at_a_bounded_rate() -> None:
    def video(desk: Desk, t: float) -> None:
        desk.video_seed = int(t) if 5 <= t < 35 else None

    decisions = play(40, video)
    during = [d for d in decisions if 5 <= d.t < 35]
    kept = [d.t for d in during if d.kept]
    interval = DetectorConfig().video_interval
    assert any(d.content_type is ContentType.VIDEO for d in during)
    assert 30 / interval - 2 <= len(kept) <= 30 / interval + 4, kept
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert max(gaps) <= interval + 1 and min(gaps) >= 1, gaps
    assert any(d.reason == "video_rate_limit" for d in during)
    assert caught(decisions, 35.0), "the video ending is a change too"


def test_resolution_change_mid_stream_restarts_and_keeps() -> None:
    detector = ChangeDetector()
    big, small = Desk(), Desk(width=1280, height=720)
    assert detector.decide(0.0, big.frame()).reason == "first"
    assert not detector.decide(1.0, big.frame()).kept
    switched = detector.decide(2.0, small.frame())
    assert switched.kept and switched.reason == "resolution_change"
    assert not detector.decide(3.0, small.frame()).kept
    assert detector.decide(4.0, big.frame()).reason == "resolution_change"


@pytest.mark.parametrize(
    ("width", "height"),
    [(1, 1), (3, 5), (17, 9), (641, 361), (1919, 1079), (3001, 1), (7680, 4320)],
)
def test_odd_tiny_and_huge_frames(width: int, height: int) -> None:
    detector = ChangeDetector()
    first = detector.decide(0.0, flat_frame(width, height, 40))
    assert first.kept and first.reason == "first"
    assert detector.decide(1.0, flat_frame(width, height, 40)).reason == "no_change"
    changed = detector.decide(2.0, flat_frame(width, height, 200))
    assert changed.kept


@pytest.mark.parametrize(("width", "height"), [(1, 16383), (16383, 1)])
def test_a_frame_of_an_extreme_shape_is_compared_at_its_own_scale(width: int,
                                                                  height: int) -> None:
    """Its narrow side is stretched to the work size's least width: the tile tracker's kernels
    were scaled by that stretch (a joining kernel of 192 x 512 pixels for a 1 x 16,383 frame,
    tens of ms a frame on the event loop); they are those of a frame small enough to be
    compared at its own size."""
    own_size, odd = ChangeDetector(), ChangeDetector()
    own_size.decide(0.0, flat_frame(400, 300, 40))
    assert odd.decide(0.0, flat_frame(width, height, 40)).kept
    assert odd.decide(1.0, flat_frame(width, height, 200)).kept
    assert odd._tiles._join.shape == own_size._tiles._join.shape


@pytest.mark.parametrize("value", [0, 255])
def test_all_black_and_all_white_screens_are_stable(value: int) -> None:
    detector = ChangeDetector()
    decisions = [detector.decide(float(t), flat_frame(1920, 1080, value)) for t in range(10)]
    assert kept_times(decisions) == [0.0]
    assert decisions[-1].stats.edge_ratio == 0.0


def test_a_flashing_screen_is_rate_limited_like_video() -> None:
    detector = ChangeDetector()
    frames = [flat_frame(1280, 720, 0), flat_frame(1280, 720, 255)]
    decisions = [detector.decide(float(t), frames[t % 2]) for t in range(30)]
    kept = kept_times(decisions)
    assert decisions[-1].content_type is ContentType.VIDEO
    assert len(kept) <= 30 / DetectorConfig().video_interval + 4, kept


def test_settings_override_by_name_and_refuse_unknown_names() -> None:
    config = DetectorConfig().with_values(
        {"pixel_threshold": "30", "video_interval": "5", "video_min_share": "0.5"}
    )
    assert config.noise.pixel_threshold == 30
    assert config.video_interval == 5.0
    assert config.types.video_min_share == 0.5
    assert config.settings()["pixel_threshold"] == 30
    with pytest.raises(ValueError, match="unknown detector setting 'bogus'"):
        DetectorConfig().with_values({"bogus": "1"})
    with pytest.raises(ValueError, match="min_changed_px='many' is invalid"):
        DetectorConfig().with_values({"min_changed_px": "many"})
    with pytest.raises(ValueError, match="unknown detector setting 'types'"):
        DetectorConfig().with_values({"types": "1"})


def test_detector_state_does_not_grow() -> None:
    detector = ChangeDetector()
    desk = Desk()
    frames = [desk.frame()]
    desk.toast = "hello"
    frames.append(desk.frame())
    sizes = []
    for t in range(200):
        detector.decide(float(t), frames[t % 2])
        sizes.append(sum(
            v.nbytes for v in vars(detector._tiles).values() if hasattr(v, "nbytes")
        ))
    assert sizes[-1] == sizes[10]
