"""`sightline vision eval`: score change detectors on labelled screen recordings.

A labelled session is a recording plus `<name>.labels.json` (format: fixtures/vision_eval/README.md)
saying when meaningful changes happened. Every detector sees the same 1 FPS samples, and is scored:

- event recall: an event is caught when a frame within `CATCH_WINDOW` seconds after it is kept;
- frame reduction: the share of sampled frames dropped;
- noise kept: the share of noise frames kept, where a noise frame is a sample outside every
  event's catch window, every busy interval (typing in progress) and every video segment, and
  not the first sample (every detector keeps the first frame: it is the screen's starting state);
- video coverage: the share of samples inside video segments that have a kept frame at most
  `VIDEO_STALE` seconds old; and the video keep rate, the share of those samples kept.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vision.change import DetectorConfig
from vision.scan import watch
from vision.video_file import iter_frames

from .vision_references import (
    PhashReference,
    i420_to_bgr,
    kept_from_cuts,
    reference_features,
    scenedetect_cuts,
)

EVAL_SET = Path(__file__).resolve().parents[1] / "fixtures" / "vision_eval" / "sessions"

CATCH_WINDOW = 2.0
VIDEO_STALE = 5.0
TARGETS = {"recall": 0.98, "reduction": 0.80, "noise_kept": 0.05}
SYSTEMS = ("sightline", "phash_fixed10", "phash_adaptive", "scenedetect_hash",
           "scenedetect_content")
EVENT_KINDS = ("doc_navigation", "doc_scroll", "code_line", "terminal_line", "dialog_open",
               "dialog_close", "toast_open", "toast_close", "app_switch")


class LabelError(ValueError):
    """A labels file that cannot be used, with what is wrong in it."""


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    text: tuple[str, ...] = ()  # the lines the change made appear on screen (text events)


@dataclass(frozen=True)
class Span:
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class LabelledSession:
    name: str
    split: str
    video: Path
    events: tuple[Event, ...]
    busy: tuple[Span, ...]
    video_segments: tuple[Span, ...]
    duration: float = 0.0  # seconds


def _spans(raw: Any, key: str, where: Path) -> tuple[Span, ...]:
    try:
        spans = tuple(Span(float(s["start"]), float(s["end"])) for s in raw.get(key, []))
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelError(f"{where}: bad {key!r} entry ({exc!r})") from None
    if any(s.end < s.start for s in spans):
        raise LabelError(f"{where}: a {key!r} span ends before it starts")
    _require_times(where, key, [x for s in spans for x in (s.start, s.end)])
    return spans


def _require_times(where: Path, what: str, seconds: list[float]) -> None:
    """A time on the recording is a finite number of seconds from its start, never negative."""
    if not all(math.isfinite(x) and x >= 0 for x in seconds):
        raise LabelError(f"{where}: {what} must be finite numbers of seconds >= 0")


def _text(event: dict[str, Any], where: Path) -> tuple[str, ...]:
    text = event.get("text", [])
    if not isinstance(text, list) or not all(isinstance(line, str) for line in text):
        raise LabelError(f"{where}: an event's 'text' must be a list of lines")
    return tuple(text)


def load_labels(path: Path) -> LabelledSession:
    try:
        raw = json.loads(path.read_text())
        events = tuple(Event(float(e["t"]), str(e["kind"]), _text(e, path))
                       for e in raw["events"])
        video = path.parent / str(raw["video"])
        duration = float(raw.get("duration", 0.0))
    except (OSError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nesting
        raise LabelError(f"{path}: cannot read labels ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise LabelError(f"{path}: missing or bad field ({what})") from None
    _require_times(path, "'duration' and the events' 't'", [duration, *(e.t for e in events)])
    unknown = sorted({e.kind for e in events} - set(EVENT_KINDS))
    if unknown:
        raise LabelError(f"{path}: unknown event kinds {unknown}; known: {list(EVENT_KINDS)}")
    if not video.is_file():
        raise LabelError(f"{path}: its video {video} does not exist")
    return LabelledSession(
        name=str(raw.get("name", path.stem)),
        split=str(raw.get("split", "dev")),
        video=video,
        events=tuple(sorted(events, key=lambda e: e.t)),
        busy=_spans(raw, "busy", path),
        video_segments=_spans(raw, "video_segments", path),
        duration=duration,
    )


def find_sessions(paths: list[Path]) -> list[LabelledSession]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.labels.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise LabelError(f"{path}: no such file or directory")
    if not files:
        raise LabelError(f"no *.labels.json under {', '.join(map(str, paths))}")
    return [load_labels(f) for f in files]


@dataclass
class Tally:
    """Counts that add up across sessions; `metrics()` turns them into the reported rates."""

    sampled: int = 0
    kept: int = 0
    noise: int = 0
    noise_kept: int = 0
    video: int = 0
    video_kept: int = 0
    video_covered: int = 0
    events: Counter[str] = field(default_factory=Counter)
    caught: Counter[str] = field(default_factory=Counter)

    def add(self, session: LabelledSession, times: list[float], kept: list[bool]) -> None:
        kept_times = [t for t, k in zip(times, kept, strict=True) if k]
        for event in session.events:
            self.events[event.kind] += 1
            if any(event.t - 1e-6 <= k <= event.t + CATCH_WINDOW for k in kept_times):
                self.caught[event.kind] += 1
        last_kept = float("-inf")
        for index, (t, k) in enumerate(zip(times, kept, strict=True)):
            self.sampled += 1
            self.kept += k
            last_kept = t if k else last_kept
            if any(s.holds(t) for s in session.video_segments):
                self.video += 1
                self.video_kept += k
                self.video_covered += t - last_kept <= VIDEO_STALE
            elif index > 0 and not any(s.holds(t) for s in session.busy) and not any(
                e.t - 1e-6 <= t <= e.t + CATCH_WINDOW for e in session.events
            ):
                self.noise += 1
                self.noise_kept += k

    def metrics(self) -> dict[str, Any]:
        events = sum(self.events.values())

        def rate(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {
            "recall": rate(sum(self.caught.values()), events),
            "reduction": rate(self.sampled - self.kept, self.sampled),
            "noise_kept": rate(self.noise_kept, self.noise),
            "video_coverage": rate(self.video_covered, self.video),
            "video_keep_rate": rate(self.video_kept, self.video),
            "events": events,
            "missed": events - sum(self.caught.values()),
            "sampled": self.sampled,
            "kept": self.kept,
            "per_kind_recall": {k: rate(self.caught[k], n) for k, n in sorted(self.events.items())},
        }


def run_session(
    session: LabelledSession, config: DetectorConfig, fps: float = 1.0,
    systems: tuple[str, ...] = SYSTEMS,
) -> dict[str, tuple[list[float], list[bool]]]:
    """One decode of the recording; every system decides on the same sampled frames."""
    fixed, adaptive = PhashReference(adaptive=False), PhashReference(adaptive=True)
    times: list[float] = []
    ours: list[bool] = []
    need_reference = {"phash_fixed10", "phash_adaptive"} & set(systems)
    for decision, frame in watch(iter_frames(session.video), fps, config):
        if decision.change is None:
            continue
        times.append(decision.t)
        ours.append(decision.kept)
        if need_reference:
            features = reference_features(i420_to_bgr(frame))
            fixed.offer(features)
            adaptive.offer(features)
    results = {"sightline": (times, ours)}
    if "phash_fixed10" in systems:
        results["phash_fixed10"] = (times, fixed.decisions)
    if "phash_adaptive" in systems:
        results["phash_adaptive"] = (times, adaptive.decisions)
    for name, detector in (("scenedetect_hash", "hash"), ("scenedetect_content", "content")):
        if name in systems:
            cuts = scenedetect_cuts(session.video, detector)
            results[name] = (times, kept_from_cuts(times, cuts))
    return results


def evaluate(
    sessions: list[LabelledSession], config: DetectorConfig, fps: float = 1.0,
    systems: tuple[str, ...] = SYSTEMS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Metrics per system, over all sessions and per split (dev / holdout)."""
    tallies: dict[str, dict[str, Tally]] = {}
    per_session: dict[str, dict[str, Any]] = {}
    for session in sessions:
        if progress:
            progress(f"evaluating {session.name} ({session.split})")
        results = run_session(session, config, fps, systems)
        per_session[session.name] = {}
        for system, (times, kept) in results.items():
            one = Tally()
            one.add(session, times, kept)
            per_session[session.name][system] = one.metrics()
            for split in ("all", session.split):
                tallies.setdefault(split, {}).setdefault(system, Tally()).add(
                    session, times, kept
                )
    by_split = {
        split: {system: tally.metrics() for system, tally in systems_.items()}
        for split, systems_ in tallies.items()
    }
    ours = by_split["all"]["sightline"]
    met = all(
        ours[k] is not None
        and (ours[k] <= v if k == "noise_kept" else ours[k] >= v)
        for k, v in TARGETS.items()
    )
    return {
        "sessions": len(sessions),
        "events": ours["events"],
        "targets": TARGETS,
        "targets_met": met,
        "splits": by_split,
        "per_session": per_session,
        "settings": config.settings(),
    }


def format_table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    splits = report["splits"]
    shown = splits if len(splits) > 2 else {"all": splits["all"]}  # one split is "all" again
    for split, systems in shown.items():
        lines.append(f"\n[{split}]  events={next(iter(systems.values()))['events']}")
        lines.append(f"{'system':<22}{'recall':>8}{'reduction':>11}{'noise kept':>12}"
                     f"{'video cov':>11}{'video keep':>12}{'kept/sampled':>14}")
        for name, m in systems.items():
            lines.append(
                f"{name:<22}{_pct(m['recall']):>8}{_pct(m['reduction']):>11}"
                f"{_pct(m['noise_kept']):>12}{_pct(m['video_coverage']):>11}"
                f"{_pct(m['video_keep_rate']):>12}{m['kept']:>7}/{m['sampled']:<6}"
            )
        kinds = sorted({k for m in systems.values() for k in m["per_kind_recall"]})
        lines.append("per-kind recall:")
        lines.append(f"{'system':<22}" + "".join(f"{k[:13]:>14}" for k in kinds))
        for name, m in systems.items():
            lines.append(f"{name:<22}" + "".join(
                f"{_pct(m['per_kind_recall'].get(k)):>14}" for k in kinds))
    verdict = "met" if report["targets_met"] else "NOT met"
    lines.append(f"\nSightline targets (recall >= 98%, reduction >= 80%, noise kept <= 5%, all "
                 f"sessions): {verdict}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
