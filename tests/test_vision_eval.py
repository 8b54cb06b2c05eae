"""The change detector against its targets on the bundled labelled recordings.

Protects: event recall >= 0.98, frame reduction >= 0.80 and noise frames kept <= 5% over
fixtures/vision_eval (the issue's targets), every event kind caught, video still covered; and
that the label files all load. A detector change that trades recall for reduction fails here.
"""

from __future__ import annotations

from bench.vision_eval import EVAL_SET, EVENT_KINDS, TARGETS, evaluate, find_sessions
from vision.change import DetectorConfig


def test_bundled_set_loads_with_both_splits() -> None:
    sessions = find_sessions([EVAL_SET])
    assert len(sessions) == 8  # two of them errors sessions (dev5, holdout3)
    assert {s.split for s in sessions} == {"dev", "holdout"}
    kinds = {e.kind for s in sessions for e in s.events}
    assert kinds == set(EVENT_KINDS)
    assert all(s.video_segments for s in sessions if "video" in s.name)


def test_detector_meets_the_targets_on_the_bundled_set() -> None:
    report = evaluate(find_sessions([EVAL_SET]), DetectorConfig(), systems=("sightline",))
    ours = report["splits"]["all"]["sightline"]
    assert ours["recall"] >= TARGETS["recall"], ours
    assert ours["reduction"] >= TARGETS["reduction"], ours
    assert ours["noise_kept"] <= TARGETS["noise_kept"], ours
    assert min(ours["per_kind_recall"].values()) >= 0.9, ours["per_kind_recall"]
    assert ours["video_coverage"] >= 0.95 and ours["video_keep_rate"] <= 0.5, ours
    assert report["targets_met"] is True
