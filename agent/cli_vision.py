"""`sightline vision scan|eval|settings`: run the change detector on recordings, and score it
on labels. `vision eval` runs the evaluation harness in `bench/` (a source checkout, with the
eval extra); the other two need only the runtime."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vision.ranges import Range

from .cli_common import UserError, in_range, key_value, one_line

if TYPE_CHECKING:
    from vision.change import DetectorConfig

SYSTEMS = ("sightline", "phash_fixed10", "phash_adaptive", "scenedetect_hash",
           "scenedetect_content")  # bench.vision_eval.SYSTEMS, without importing it for --help


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    vision = sub.add_parser("vision", help="screen change detection: scan a recording, evaluate")
    commands = vision.add_subparsers(dest="vision_command", required=True)
    tuning = argparse.ArgumentParser(add_help=False)
    # a rate so near 0 that a sample's time overflows to inf (and NaN in --json) is no rate
    tuning.add_argument("--fps", type=in_range(Range(float, 0.01, 60)),
                        default=1.0, help="samples per second, in [0.01, 60]")
    tuning.add_argument(
        "--set", dest="settings", type=key_value, action="append", default=[], metavar="NAME=VALUE",
        help="override a detector setting (repeatable; `sightline vision settings` lists them)",
    )
    tuning.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p = commands.add_parser(
        "settings", help="every detector setting: default, unit, valid range and meaning")
    p.add_argument("--json", action="store_true",
                   help="one JSON object: name -> default, unit, low, high, meaning")
    p = commands.add_parser(
        "scan", parents=[tuning], help="keep/drop decision for every sampled frame of a recording"
    )
    p.add_argument("path", type=Path, help="a WebM/MP4 file or a directory of PNG/JPEG frames")
    p.add_argument("--text", action="store_true",
                   help="also read each kept frame's changed region (local OCR): the lines "
                        "that newly appeared (`text_added` in --json)")
    p = commands.add_parser(
        "eval", parents=[tuning], help="recall, reduction and noise vs the reference detectors"
    )
    p.add_argument("paths", type=Path, nargs="*",
                   help="*.labels.json files or directories of them (default: the bundled set)")
    p.add_argument("--split", choices=("dev", "holdout"), help="only sessions of this split")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)}")


def run(args: argparse.Namespace) -> int:
    """Raises UserError and the source/label errors, for the caller to print."""
    from vision.change import DetectorConfig

    config = DetectorConfig()
    if args.vision_command == "settings":
        _print_settings(config, as_json=args.json)
        return 0
    try:
        config = config.with_values(dict(args.settings))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.vision_command == "scan":
        return _scan(args, config)
    return _eval(args, config)


def _print_settings(config: DetectorConfig, *, as_json: bool) -> None:
    from vision.change import SETTINGS

    defaults = config.settings()
    if as_json:
        print(json.dumps({
            name: {"default": defaults[name], "unit": s.unit, "low": s.range.low,
                   "high": s.range.high, "low_included": not s.range.open_low,
                   "meaning": s.meaning}
            for name, s in SETTINGS.items()}, indent=2))
        return
    rows = [(f"{name}={defaults[name]}", s.unit, str(s.range), s.meaning)
            for name, s in SETTINGS.items()]
    header = ("NAME=DEFAULT", "UNIT", "RANGE", "MEANING")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[3])


def _scan(args: argparse.Namespace, config: DetectorConfig) -> int:
    from vision.frames import SampledFrame, as_i420
    from vision.scan import source_frames, summary_line, video_report, watch
    from vision.screen import FrameTally
    from vision.screen_text import FrameTextReader

    summary = FrameTally()
    reader = FrameTextReader() if args.text else None
    frames = source_frames(args.path, args.fps)
    for decision, frame in watch(frames, args.fps, config):
        summary.add(decision.as_dict())
        added = None
        if reader is not None and decision.kept and decision.change is not None:
            added = reader.read(SampledFrame(as_i420(frame), decision.t), decision.change).lines
        if args.json:
            line = decision.as_dict() | ({"text_added": added} if added is not None else {})
            print(json.dumps(line), flush=False)
        else:
            change = decision.change
            detail = (
                f"{change.content_type:<6} phash={change.phash_distance:<3} "
                f"changed={change.changed_px}px/{change.changed_tiles} tiles "
                f"noise={change.noise_px}px" if change else ""
            )
            verdict = "KEEP" if decision.kept else "drop"
            print(f"{decision.t:8.2f}s  {verdict}  {decision.reason:<17} {detail}")
            for text in added or []:
                print(f"           + {one_line(text)}")
    video = video_report(frames)
    result = summary_line(summary, video)
    if args.json:
        print(json.dumps(result))
    else:
        dropped = ", ".join(f"{n} as {why}" for why, n in sorted(result["dropped"].items()))
        kinds = ", ".join(f"{kind} {c['kept']}/{c['sampled']} kept"
                          for kind, c in sorted(result["by_content_type"].items()))
        print(
            f"{result['sampled']} sampled, {result['kept']} kept "
            f"({100 * result['reduction']:.1f}% dropped), {result['invalid']} invalid; "
            f"dropped: {dropped or 'none'}; by content type: {kinds or 'none'}"
        )
    if video is not None and video.problem():
        print(f"warning: {one_line(video.problem())}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace, config: DetectorConfig) -> int:
    try:
        from bench.vision_eval import EVAL_SET, evaluate, find_sessions, format_table
    except ImportError as exc:
        raise UserError(f"`sightline vision eval` runs from a source checkout with the eval "
                        f"dependencies (`make install` there): {exc}") from None
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or "sightline" not in systems:
        raise UserError(f"--systems must include sightline and only name {list(SYSTEMS)}")
    paths = args.paths or [EVAL_SET]
    sessions = [s for s in find_sessions(paths) if args.split in (None, s.split)]
    if not sessions:
        raise UserError(f"no {args.split} sessions under {paths}")
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # one INFO line per video
    report = evaluate(
        sessions, config, args.fps, systems,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if not args.json:
        print(format_table(report))
    print(json.dumps(report))
    return 0
