"""`sightline vision scan|eval|settings` as a user runs them, on recordings made in the test.

Protects: scan prints one JSON line per sampled frame (t from the start, kept, content type,
reason) and a summary last, for a WebM file and for a directory of PNG/JPEG frames; a corrupt
image in a directory is reported as invalid and the scan goes on; bad paths and settings exit 2
with one line; eval scores Sightline and every reference on a labelled recording and ends with
a JSON summary; malformed labels exit 2 naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from synthetic_screen import Desk, write_recording

from vision.change import SETTINGS, DetectorConfig

FPS = 2


async def sightline(*args: str) -> tuple[int, str, str]:
    """The offline vision commands need no database, keys or services: a bare environment."""
    return await run_cli(*args, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                     "HOME": os.environ.get("HOME", "/root")})


def desk_at(t: float) -> Desk:
    """A 720p desk: a toast from 6 s to 10 s, a pasted line at 14 s, the clock ticking."""
    desk = Desk(width=1280, height=720)
    desk.clock_s = int(t)
    desk.cursor_on = (t % 1.06) < 0.53
    desk.toast = "Deploy finished" if 6 <= t < 10 else None
    if t >= 14:
        desk.lines.append("    return summarize(await poll(sensors))")
    return desk



@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "desk.webm"
    write_recording(path, desk_at, 20, FPS)
    return path


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_scan_json_on_a_webm(recording: Path) -> None:
    code, out, err = await sightline("vision", "scan", str(recording), "--json")
    assert code == 0, err
    *frames, summary = json_lines(out)
    assert [f["t"] for f in frames] == [float(s) for s in range(20)]
    assert all({"t", "kept", "content_type", "reason"} <= f.keys() for f in frames)
    assert frames[0]["kept"] and frames[0]["reason"] == "first"
    kept = [f["t"] for f in frames if f["kept"]]
    # toast opens at 6 and closes at 10; the pasted line at 14 waits one sample to settle
    assert kept == [0.0, 6.0, 10.0, 15.0], kept
    assert summary["summary"] is True
    assert summary["sampled"] == 20 and summary["kept"] == 4
    assert summary["reduction"] == pytest.approx(0.8)
    assert sum(summary["dropped"].values()) == 16


async def test_scan_text_output_and_fps(recording: Path) -> None:
    code, out, err = await sightline("vision", "scan", str(recording), "--fps", "0.5")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 11  # 10 samples two seconds apart, then the summary
    assert lines[0].split()[:3] == ["0.00s", "KEEP", "first"]
    assert lines[-1].startswith("10 sampled, ")


async def test_scan_a_directory_of_frames_with_a_corrupt_one(tmp_path: Path) -> None:
    for i in range(8):
        desk_at(4.0 + i).image().save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "frame_008.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    desk_at(13.0).image().convert("RGB").save(tmp_path / "frame_009.jpg", quality=90)
    (tmp_path / "notes.txt").write_text("ignored")
    code, out, err = await sightline("vision", "scan", str(tmp_path), "--json")
    assert code == 0, err
    *frames, summary = json_lines(out)
    assert [f["t"] for f in frames] == [float(i) for i in range(10)]
    assert frames[8] == {"t": 8.0, "kept": False, "reason": "invalid", "content_type": None}
    assert [f["t"] for f in frames if f["kept"]] == [0.0, 2.0, 6.0]  # first, toast, toast gone
    assert summary["invalid"] == 1 and summary["sampled"] == 9
    assert "unusable frame" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vision", "scan", "/nope/screen.webm"], "/nope/screen.webm: no such file"),
        (["vision", "scan", "{rec}", "--set", "bogus=1"], "unknown detector setting 'bogus'"),
        (["vision", "scan", "{rec}", "--set", "pixel_threshold=x"],
         "pixel_threshold='x' is invalid: must be a whole number in [1, 254]"),
        (["vision", "scan", "{rec}", "--set", "pixel_threshold=-5"],
         "pixel_threshold='-5' is invalid: must be a whole number in [1, 254]"),
        (["vision", "scan", "{rec}", "--set", "typing_max_wait=nan"],
         "typing_max_wait='nan' is invalid: must be a number in [0, 3600]"),
        (["vision", "eval", "{rec}", "--set", "video_min_share=inf"],
         "video_min_share='inf' is invalid: must be a number in [0, 1]"),
        (["vision", "scan", "{rec}", "--fps", "0"],
         "argument --fps: must be a number in [0.01, 60]"),
        (["vision", "eval", "/nope"], "/nope: no such file or directory"),
        (["vision", "eval", "{rec}", "--systems", "phash_fixed10"], "must include sightline"),
    ],
)
async def test_bad_input_exits_2_with_one_line(
    recording: Path, args: list[str], message: str
) -> None:
    code, out, err = await sightline(*[a.replace("{rec}", str(recording)) for a in args])
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_scanning_a_pipe_is_one_line_not_a_wait(tmp_path: Path) -> None:
    pipe = tmp_path / "share.webm"
    os.mkfifo(pipe)  # nothing ever writes to it: reading it would wait forever
    code, out, err = await sightline("vision", "scan", str(pipe))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"sightline: {pipe}: not a file or a directory of images"]


async def test_settings_lists_every_tunable_with_unit_range_and_meaning() -> None:
    code, out, err = await sightline("vision", "settings")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME=DEFAULT", "UNIT", "RANGE", "MEANING"]
    by_name = {row.split("=")[0]: row for row in rows}
    assert set(by_name) == set(DetectorConfig().settings())
    assert "pixel_threshold=10" in by_name["pixel_threshold"]
    assert "luma levels" in by_name["pixel_threshold"] and "[1, 254]" in by_name["pixel_threshold"]
    assert "seconds" in by_name["video_interval"] and "(0, 3600]" in by_name["video_interval"]

    code, out, err = await sightline("vision", "settings", "--json")
    assert code == 0, err
    settings = json.loads(out)
    assert settings["typing_max_wait"] == {
        "default": 8.0, "unit": "seconds", "low": 0, "high": 3600, "low_included": True,
        "meaning": "typing is kept when the line is done, or after this long"}
    for name, default in DetectorConfig().settings().items():
        entry = settings[name]
        assert entry["default"] == default and entry["meaning"] and entry["unit"]
        assert entry["low"] <= default <= entry["high"]


def test_every_detector_setting_is_described_and_its_default_is_in_range() -> None:
    defaults = DetectorConfig().settings()
    assert set(SETTINGS) == set(defaults)
    for name, default in defaults.items():
        assert SETTINGS[name].range.contains(default), name
        assert isinstance(default, SETTINGS[name].range.kind), name


def write_labels(path: Path, video: Path, **extra: object) -> Path:
    labels = {
        "name": "desk", "split": "dev", "video": video.name, "width": 1280, "height": 720,
        "fps": FPS, "duration": 20.0,
        "events": [
            {"t": 6.0, "kind": "toast_open"}, {"t": 10.0, "kind": "toast_close"},
            {"t": 14.0, "kind": "code_line"},
        ],
        "busy": [], "video_segments": [],
        "noise": [{"start": 0, "end": 20, "kind": "clock"}],
        **extra,
    }
    path.write_text(json.dumps(labels))
    return path


async def test_eval_scores_sightline_and_every_reference(recording: Path) -> None:
    labels = write_labels(recording.parent / "desk.labels.json", recording)
    code, out, err = await sightline("vision", "eval", str(labels))
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    systems = report["splits"]["all"]
    assert set(systems) == {
        "sightline", "phash_fixed10", "phash_adaptive", "scenedetect_hash",
        "scenedetect_content",
    }
    ours = systems["sightline"]
    assert ours["recall"] == 1.0 and ours["missed"] == 0
    assert ours["per_kind_recall"] == {"code_line": 1.0, "toast_close": 1.0, "toast_open": 1.0}
    assert ours["reduction"] == pytest.approx(0.8)
    assert ours["noise_kept"] == 0.0
    assert report["events"] == 3 and report["sessions"] == 1
    for name, metrics in systems.items():
        assert metrics["sampled"] == 20, name
        assert 0.0 <= metrics["recall"] <= 1.0
    assert "sightline" in out and "per-kind recall" in out


async def test_eval_refuses_malformed_labels(recording: Path, tmp_path: Path) -> None:
    bad = write_labels(tmp_path / "bad.labels.json", recording,
                       events=[{"t": 1.0, "kind": "explosion"}])
    bad.with_name(recording.name).symlink_to(recording)
    code, _, err = await sightline("vision", "eval", str(bad))
    assert code == 2 and "unknown event kinds ['explosion']" in err
    broken = tmp_path / "broken.labels.json"
    broken.write_text("{not json")
    code, _, err = await sightline("vision", "eval", str(broken))
    assert code == 2 and "broken.labels.json: cannot read labels" in err
    nested = tmp_path / "nested.labels.json"
    nested.write_text("[" * 100_000)  # deeper than Python's JSON decoder recurses
    code, _, err = await sightline("vision", "eval", str(nested))
    assert code == 2 and "nested.labels.json: cannot read labels" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"duration": "long"}, "missing or bad field (could not convert string to float"),
        ({"duration": None}, "missing or bad field (float() argument must be"),
        ({"duration": -1}, "'duration' and the events' 't' must be finite numbers of seconds >= 0"),
        ({"events": [{"t": "NaN", "kind": "code_line"}]}, "events' 't' must be finite"),
        ({"busy": [{"start": -5, "end": 1}]}, "busy must be finite numbers of seconds >= 0"),
        ({"video_segments": [{"start": 1, "end": "Infinity"}]}, "video_segments must be finite"),
    ],
)
async def test_eval_refuses_label_times_that_are_not_seconds(
    recording: Path, tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    labels = write_labels(tmp_path / "odd.labels.json", recording, **extra)
    labels.with_name(recording.name).symlink_to(recording)
    code, out, err = await sightline("vision", "eval", str(labels), "--systems", "sightline")
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert f"{labels}: " in err and message in err


async def test_control_characters_in_arguments_stay_on_one_line() -> None:
    code, out, err = await sightline("vision", "scan", "/nope/a\nb.webm")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("sightline: /nope/a\\nb.webm: no such file")
    code, _, err = await sightline("vision", "scan", "x.webm", "--set", "a\x1b[31m=1")
    assert code == 2 and "\x1b" not in err and len(err.strip().splitlines()) == 1
