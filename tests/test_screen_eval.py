"""Screen text on the bundled labelled sessions: the issue's targets, held.

Protects: on fixtures/vision_eval (eight sessions, two of them full of errors, three held
apart from tuning), the lines that appear on screen (typed code, commands, output, dialogs,
toasts) are found in the text the session reads from its kept frames at >= 95%, and error
lines are read with >= 98% of their characters right; every labelled session has text labels.
(The OCR's CPU cost is measured in `bench/screen.py`, not asserted here.)
"""

from __future__ import annotations

from bench.screen_eval import TARGETS, evaluate_text
from bench.vision_eval import EVAL_SET, find_sessions
from vision.screen_text import FrameTextReader


def test_text_recall_and_error_accuracy_meet_the_targets() -> None:
    sessions = find_sessions([EVAL_SET])
    assert len(sessions) == 8 and all(any(e.text for e in s.events) for s in sessions)
    score = evaluate_text(sessions, FrameTextReader).summary()
    assert score["lines"] > 600 and score["error_lines"] >= 18
    assert score["text_recall"] >= TARGETS["text_recall"], score
    assert score["error_char_accuracy"] >= TARGETS["error_char_accuracy"], score
    assert all(recall >= 0.7 for recall in score["by_kind"].values()), score["by_kind"]
