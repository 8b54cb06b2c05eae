"""Screen-text evaluation: do the lines that appeared on screen end up in the timeline?

Each labelled session of fixtures/vision_eval runs through the live screen path (sampler, change
detector) and every kept frame is read as a session reads it (`FrameTextReader`: the changed
region, only newly appeared lines). A labelled line (typed code, a command, output, a dialog's
or toast's text) is *found* when a line that appeared in a kept frame within `WINDOW_S` seconds
after the event contains it, compared in OCR's canonical form (vision.screen_text.canonical)
with a fuzzy partial match of at least `MATCH` (rapidfuzz). Lines without a letter or digit
(a traceback's `^^^^` markers, a lone `\"\"\"`) carry no text to find and are not counted.
Error lines are also scored for character accuracy: 1 − edit distance / length against the
best-aligned part of the best line.

The reference reads every kept frame whole, as a page (what a reader that ignores the
detector's region would do), with the same new-line rule, in the same run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from vision.change import ChangeDecision
from vision.frames import SampledFrame, as_i420
from vision.luma import luma_plane
from vision.ocr import Layout
from vision.scan import source_frames, watch
from vision.screen import FrameDecision
from vision.screen_signals import find_error
from vision.screen_text import FrameTextReader, ScreenText, SeenLines, canonical, read_region

from .vision_eval import LabelledSession

WINDOW_S = 3.0
MATCH = 90.0
TARGETS = {"text_recall": 0.95, "error_char_accuracy": 0.98}


class WholeFrameReader:
    """The reference: every kept frame read whole, as a page, with the same new-line rule."""

    def __init__(self) -> None:
        self._seen = SeenLines()

    def read(self, frame: SampledFrame, decision: ChangeDecision) -> ScreenText:
        width, height = frame.size
        lines, cpu_ms = read_region(luma_plane(frame.frame), (0, 0, width, height), Layout.PAGE)
        added = self._seen.new([line.text for line in lines], frame.t)
        return ScreenText(frame.t, time.time(), decision.reason, str(decision.content_type),
                          ((0, 0, width, height),), added, len(lines), round(cpu_ms, 1), 0)


Reader = FrameTextReader | WholeFrameReader


@dataclass
class SessionRun:
    """One session through the screen path: every sampled decision, and each kept frame read."""

    decisions: list[FrameDecision]
    reads: list[ScreenText]
    size: tuple[int, int]


def run_session(session: LabelledSession, reader: Reader, fps: float = 1.0) -> SessionRun:
    decisions: list[FrameDecision] = []
    reads: list[ScreenText] = []
    size = (0, 0)
    for decision, frame in watch(source_frames(session.video, fps), fps, None):
        decisions.append(decision)
        size = (decision.width, decision.height)
        if decision.kept and decision.change is not None:
            reads.append(reader.read(SampledFrame(as_i420(frame), decision.t), decision.change))
    return SessionRun(decisions, reads, size)


def _best(label: str, candidates: list[str]) -> tuple[float, str]:
    """The best partial match of a labelled line among read lines: (score, line)."""
    target = canonical(label)
    scored = [(fuzz.partial_ratio(target, canonical(line)) if target else 0.0, line)
              for line in candidates]
    return max(scored, default=(0.0, ""))


def char_accuracy(label: str, line: str) -> float:
    """1 − edit distance / length of the label, against the part of `line` aligned with it."""
    label = " ".join(label.split())
    alignment = fuzz.partial_ratio_alignment(label, line)
    part = line[alignment.dest_start:alignment.dest_end] if alignment else line
    return max(0.0, 1 - Levenshtein.distance(label, part) / max(1, len(label)))


@dataclass
class TextScore:
    lines: int = 0
    found: int = 0
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    error_lines: int = 0
    error_accuracy_sum: float = 0.0
    missed: list[str] = field(default_factory=list)
    reads: int = 0
    cpu_ms: float = 0.0
    duration_s: float = 0.0

    def add(self, other: TextScore) -> None:
        self.lines += other.lines
        self.found += other.found
        for kind, counts in other.by_kind.items():
            self.by_kind.setdefault(kind, Counter()).update(counts)
        self.error_lines += other.error_lines
        self.error_accuracy_sum += other.error_accuracy_sum
        self.missed += other.missed
        self.reads += other.reads
        self.cpu_ms += other.cpu_ms
        self.duration_s += other.duration_s

    def summary(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "text_recall": round(self.found / self.lines, 4) if self.lines else None,
            "by_kind": {k: round(c["found"] / c["lines"], 4)
                        for k, c in sorted(self.by_kind.items())},
            "error_lines": self.error_lines,
            "error_char_accuracy": (round(self.error_accuracy_sum / self.error_lines, 4)
                                    if self.error_lines else None),
            "reads": self.reads,
            "ocr_cpu_s": round(self.cpu_ms / 1000, 2),
            "ocr_cores": round(self.cpu_ms / 1000 / self.duration_s, 4)
            if self.duration_s else None,
        }


def score_session(session: LabelledSession, reads: list[ScreenText], duration_s: float
                  ) -> TextScore:
    score = TextScore(reads=len(reads), cpu_ms=sum(r.cpu_ms for r in reads),
                      duration_s=duration_s)
    for event in session.events:
        window = [line for read in reads if event.t <= read.t <= event.t + WINDOW_S
                  for line in read.lines]
        for label in event.text:
            if not any(ch.isalnum() for ch in label):
                continue
            matched, line = _best(label, window)
            found = matched >= MATCH
            counts = score.by_kind.setdefault(event.kind, Counter())
            counts["lines"] += 1
            counts["found"] += found
            score.lines += 1
            score.found += found
            if not found:
                score.missed.append(f"{session.name} t={event.t}: {label!r}")
            if find_error([label]):
                score.error_lines += 1
                score.error_accuracy_sum += char_accuracy(label, line) if window else 0.0
    return score


def evaluate_text(
    sessions: list[LabelledSession], make_reader: Callable[[], Reader],
    progress: Callable[[str], None] | None = None, threads: int | None = None,
) -> TextScore:
    """The sessions run on `threads` threads at once (default: the CPUs this process may use),
    each with its own reader: decoding, the detector's array work and Tesseract release the
    GIL, so two cores score the bundled set in a little over half the time of one."""

    def score(session: LabelledSession) -> TextScore:
        return score_session(session, run_session(session, make_reader()).reads,
                             session.duration)

    total = TextScore()
    with ThreadPoolExecutor(threads or len(os.sched_getaffinity(0))) as pool:
        for session, scored in zip(sessions, pool.map(score, sessions), strict=True):
            if progress is not None:
                progress(f"{session.name}: {scored.summary()}")
            total.add(scored)
    return total
