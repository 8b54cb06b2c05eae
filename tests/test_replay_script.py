"""Loading replay fixtures: the bundled demo, and every way a fixture can be wrong.

Protects: the demo loads as documented; a bad fixture fails up front with one FixtureError that
names the file and the field (before any session starts); `sightline replay` turns that into a
single `sightline:` line and exit status 2, never a traceback. That includes text that cannot be
stored or sent (NUL, lone surrogates), a session.json or audio that is not a file (a pipe would
hang the replay) and a knowledge folder outside the fixture's.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_FIXTURE

from agent.replay_script import ORIGINS, FixtureError, load_fixture

SIGHTLINE = Path(sys.executable).with_name("sightline")
DEMO_SESSION: dict[str, Any] = json.loads((DEMO_FIXTURE / "session.json").read_text())


def make_fixture(
    root: Path, edit: Callable[[dict[str, Any]], None] | None = None, *, video: bool = True
) -> Path:
    """A copy of the demo fixture in `root`, with `edit` applied to its session.json."""
    root.mkdir(parents=True, exist_ok=True)
    if video:
        shutil.copy(DEMO_FIXTURE / "screen.webm", root / "screen.webm")
        shutil.copytree(DEMO_FIXTURE / "knowledge", root / "knowledge")
    session = copy.deepcopy(DEMO_SESSION)
    if edit is not None:
        edit(session)
    (root / "session.json").write_text(json.dumps(session))
    return root


def test_demo_fixture_loads() -> None:
    fixture = load_fixture(DEMO_FIXTURE)
    assert fixture.name == "demo"
    assert fixture.tiers is not None and len(fixture.tiers) == 3
    assert fixture.video == DEMO_FIXTURE / "screen.webm"
    assert fixture.path == DEMO_FIXTURE / "session.json"
    assert fixture.duration_s == pytest.approx(40.0, abs=0.05)
    assert len(fixture.turns) == 5
    times = [turn.t for turn in fixture.turns]
    assert times == sorted(times) == [8.1, 25.9, 34.3, 39.5, 39.8]
    assert [turn.session for turn in fixture.turns] == ["first"] * 4 + ["later"]
    assert fixture.history_messages == 4
    assert json.loads(fixture.turns[0].memory or "")["facts"][0]["key"] == "python_setup"
    assert fixture.turns[3].memory is None
    for turn, raw in zip(fixture.turns, DEMO_SESSION["turns"], strict=True):
        assert turn.response.origin in ORIGINS
        assert turn.response.error_status is None
        assert turn.response.tiers[-1].text == raw["response"]["tiers"][-1]["text"]
        assert (turn.tenant, turn.user, turn.text) == (raw["tenant"], raw["user"], raw["text"])
        assert 0 <= turn.t < fixture.duration_s


def test_session_json_path_works_too() -> None:
    assert load_fixture(DEMO_FIXTURE / "session.json").turns == load_fixture(DEMO_FIXTURE).turns


def test_copied_fixture_is_valid(tmp_path: Path) -> None:
    fixture = load_fixture(make_fixture(tmp_path / "ok"))
    assert len(fixture.turns) == 5


def test_error_response_loads(tmp_path: Path) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["tiers"] = "anthropic:claude-sonnet-4-6:0:512"
        s["turns"][0]["response"] = {"origin": "scripted", "error": {"status": 503}}

    fixture = load_fixture(make_fixture(tmp_path / "err", edit))
    assert fixture.tiers is not None and fixture.tiers[0].provider == "anthropic"
    assert fixture.turns[0].response.error_status == 503
    assert fixture.turns[0].response.text == ""


def _del(key: str, turn: int | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(s: dict[str, Any]) -> None:
        del (s if turn is None else s["turns"][turn])[key]
    return edit


def _set(key: str, value: Any, turn: int | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(s: dict[str, Any]) -> None:
        (s if turn is None else s["turns"][turn])[key] = value
    return edit


def _unsort(s: dict[str, Any]) -> None:
    s["turns"][0], s["turns"][1] = s["turns"][1], s["turns"][0]


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        pytest.param(_del("turns"), ["'turns'"], id="missing-turns"),
        pytest.param(_set("turns", {}), ["'turns'"], id="turns-not-a-list"),
        pytest.param(_del("text", 1), ["turns[1]", "'text'"], id="turn-missing-text"),
        pytest.param(_del("tenant", 0), ["turns[0]", "'tenant'"], id="turn-missing-tenant"),
        pytest.param(_del("user", 2), ["turns[2]", "'user'"], id="turn-missing-user"),
        pytest.param(_del("t", 1), ["turns[1]", "'t'"], id="turn-missing-t"),
        pytest.param(_set("text", "  ", 0), ["turns[0]", "'text'"], id="turn-blank-text"),
        pytest.param(_set("t", "8.1", 0), ["turns[0]", "'t'"], id="t-not-a-number"),
        pytest.param(_set("t", 41.0, 2), ["turns[2]", "t=41.0"], id="t-beyond-video"),
        pytest.param(_set("t", -1, 0), ["turns[0]", "t=-1"], id="t-negative"),
        pytest.param(_unsort, ["turns[1]", "sorted"], id="unsorted"),
        pytest.param(
            _set("response", {"origin": "live", "text": "hi"}, 0), ["turns[0]", "origin"],
            id="origin-live",
        ),
        pytest.param(
            _set("response", {"origin": "scripted", "error": {"status": 200}}, 1),
            ["turns[1]", "error.status"], id="error-status-200",
        ),
        pytest.param(
            _set("response", {"origin": "scripted", "error": {}}, 1),
            ["turns[1]", "error.status"], id="error-without-status",
        ),
        pytest.param(
            _set("response", {"origin": "scripted"}, 2), ["turns[2]", "'text'"],
            id="response-without-text",
        ),
        pytest.param(_del("response", 0), ["turns[0]", "'response'"], id="missing-response"),
        pytest.param(_set("provider", "gemini"), ["'provider' is replaced by 'tiers'"],
                     id="provider-field-retired"),
        pytest.param(
            _set("response", {"origin": "scripted", "tiers": [
                {"model": "gemini-2.5-flash", "tool_call": {"args": {}}}]}, 0),
            ["tiers[0].tool_call", "'name'"], id="tool-call-without-name",
        ),
        pytest.param(
            _set("response", {"origin": "scripted", "tiers": [
                {"model": "gemini-2.5-flash", "tool_call": {"name": "x", "args": [1]}}]}, 0),
            ["tiers[0]", "tool_call must be"], id="tool-call-args-not-an-object",
        ),
        pytest.param(_set("tiers", "gemini:flash"), ["tiers", "tier 0"], id="bad-tiers"),
        pytest.param(
            _set("response", {"origin": "scripted", "tiers": [
                {"model": "gemini-2.5-flash", "confidence": 1.5, "text": "x"}]}, 0),
            ["turns[0].response.tiers[0]", "confidence"], id="tier-confidence-out-of-range",
        ),
        pytest.param(
            _set("response", {"origin": "scripted", "tiers": [{"text": "x"}]}, 0),
            ["tiers[0]", "'model'"], id="tier-without-model",
        ),
        pytest.param(
            _set("response", {"origin": "scripted", "tiers": [
                {"model": "m", "error": {"status": 99}}]}, 1),
            ["tiers[0]", "error.status"], id="tier-bad-error",
        ),
        pytest.param(_set("knowledge", "wiki"), ["knowledge 'wiki' does not exist"],
                     id="knowledge-missing"),
        pytest.param(_set("memory", {"facts": []}, 0), ["turns[0].memory", "scripted"],
                     id="memory-not-labelled-scripted"),
        pytest.param(_set("memory", {"origin": "scripted", "facts": [{"key": "k"}]}, 0),
                     ["turns[0].memory.facts"], id="memory-fact-without-text"),
        pytest.param(_set("memory", {"origin": "scripted", "forget": "k"}, 1),
                     ["turns[1].memory.forget"], id="memory-forget-not-a-list"),
        pytest.param(_set("memory", {"origin": "scripted", "summary": 3}, 1),
                     ["turns[1].memory.summary"], id="memory-summary-not-text"),
        pytest.param(_set("history_messages", -1), ["history_messages"],
                     id="history-negative"),
        pytest.param(_set("history_messages", 10**30), ["history_messages", "0 to 1000"],
                     id="history-absurd"),
        pytest.param(_del("video"), ["'video'"], id="missing-video-field"),
        pytest.param(_set("video", "other.webm"), ["other.webm"], id="video-missing"),
    ],
)
def test_bad_fixture_names_file_and_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], names: list[str]
) -> None:
    root = make_fixture(tmp_path / "bad", edit)
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    message = str(info.value)
    assert str(root / "session.json") in message
    for name in names:
        assert name in message, message


def test_missing_session_json(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    assert str(root / "session.json") in str(info.value)
    assert "not found" in str(info.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [('{"name": "demo", "turns": [', "not valid JSON"), ("[1, 2]", "must hold a JSON object"),
     (b'{"name": "d\xe9mo"}', "not UTF-8 text"), ("[" * 100_000, "nested deeper")],
)
def test_session_json_that_is_not_a_json_object(tmp_path: Path, content: str | bytes,
                                                says: str) -> None:
    root = make_fixture(tmp_path / "bad")
    session = root / "session.json"
    if isinstance(content, bytes):
        session.write_bytes(content)
    else:
        session.write_text(content)
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    assert str(root / "session.json") in str(info.value)
    assert says in str(info.value)


def test_video_file_absent(tmp_path: Path) -> None:
    root = make_fixture(tmp_path / "novideo", video=False)
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    assert str(root / "session.json") in str(info.value)
    assert "screen.webm" in str(info.value)


def test_a_video_name_that_would_break_the_line_is_shown_escaped(tmp_path: Path) -> None:
    """Found by the fuzzed fixtures: a video named "0\\n" made the error two lines."""
    root = make_fixture(tmp_path / "fx", lambda s: s.update(video="0\n\x1b[2J.webm"))
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    assert str(info.value) == (f"{root / 'session.json'}: video '0\\n\\x1b[2J.webm' does not "
                               "exist next to it")


def test_a_video_that_is_a_directory_or_a_pipe_is_named_so(tmp_path: Path) -> None:
    root = make_fixture(tmp_path / "notafile", video=False)
    (root / "screen.webm").mkdir()
    with pytest.raises(FixtureError, match=r"video 'screen\.webm' is not a file"):
        load_fixture(root)
    (root / "screen.webm").rmdir()
    os.mkfifo(root / "screen.webm")  # read, it would block until someone wrote to it
    with pytest.raises(FixtureError, match=r"video 'screen\.webm' is not a file"):
        load_fixture(root)


def test_video_unreadable(tmp_path: Path) -> None:
    root = make_fixture(tmp_path / "garbage", video=False)
    (root / "screen.webm").write_bytes(random.Random(3).randbytes(32 * 1024))
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    message = str(info.value)
    assert str(root / "session.json") in message
    assert str(root / "screen.webm") in message


def test_cli_replay_bad_fixture_is_one_line(tmp_path: Path) -> None:
    root = make_fixture(tmp_path / "bad", _del("text", 1))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.run(
        [str(SIGHTLINE), "replay", str(root)], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sightline: ")
    assert "turns[1]" in lines[0] and "'text'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    # the fixture was rejected before anything started: no embedded database, no cost log
    assert not (tmp_path / "data").exists()



def _tier_text(turn: int, tier: int, text: str) -> Callable[[dict[str, Any]], None]:
    def edit(s: dict[str, Any]) -> None:
        s["turns"][turn]["response"]["tiers"][tier]["text"] = text
    return edit


def _fact_text(turn: int, text: str) -> Callable[[dict[str, Any]], None]:
    def edit(s: dict[str, Any]) -> None:
        s["turns"][turn]["memory"]["facts"][0]["text"] = text
    return edit


# JSON can spell what no text holds: `\u0000` (Postgres stores no NUL) and a lone surrogate
# (`\ud800`: not a character, so not UTF-8). Loaded as they were, the replay failed in its
# second session with "the database failed" (the first session's output lost) or in the
# provider SDK with a 160-line traceback.
@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        pytest.param(_set("text", "Why \ud800 this?", 2), "turns[2].text", "\\ud800",
                     id="lone-surrogate-in-text"),
        pytest.param(_set("user", "dev\u00001", 3), "turns[3].user", "NUL",
                     id="nul-in-user"),
        pytest.param(_set("tenant", "\udc80demo", 0), "turns[0].tenant", "\\udc80",
                     id="surrogate-in-tenant"),
        pytest.param(_tier_text(1, 1, "a\u0000b"), "turns[1].response.tiers[1].text", "NUL",
                     id="nul-in-a-scripted-reply"),
        pytest.param(_fact_text(0, "half an emoji: \ud83d"), "turns[0].memory.facts[0].text",
                     "\\ud83d", id="surrogate-in-a-memory-fact"),
        pytest.param(_set("not\u0000used", 1), '["not\\u0000used"]', "NUL",
                     id="nul-in-a-field-name"),
    ],
)
def test_text_that_cannot_be_stored_or_sent_is_refused_naming_its_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], field: str, says: str,
) -> None:
    root = make_fixture(tmp_path / "bad", edit)
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'session.json'}: {field}: "), message
    assert says in message and "\n" not in message


def test_cli_replay_of_text_that_cannot_be_stored_is_one_line(tmp_path: Path) -> None:
    """The reviewer's case: the second session's user is `dev\\u00001`."""
    root = make_fixture(tmp_path / "nul", _set("user", "dev\u00001", 4))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SIGHTLINE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([str(SIGHTLINE), "replay", str(root)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"sightline: {root / 'session.json'}: turns[4].user: holds a NUL character (\\u0000),"
        " which cannot be stored"]
    assert proc.stdout == ""
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_fixture_folder_whose_name_is_not_utf8_needs_a_name(tmp_path: Path) -> None:
    """Without a `name`, the folder's name names the fixture, and goes into each session's
    row (its room): a name of bytes that are not UTF-8 cannot be stored."""
    root = make_fixture(tmp_path / os.fsdecode(b"fx\xff"), _del("name"))
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    message = str(info.value)
    assert "\n" not in message and "'name'" in message and "not UTF-8" in message
    (root / "session.json").write_text(json.dumps(DEMO_SESSION))  # with the demo's "name"
    assert load_fixture(root).name == "demo"


# a named pipe blocks whoever opens it for reading until something writes to it: the replay
# hung there for good (the video was already checked, test_a_video_that_is_a_directory_...)
@pytest.mark.parametrize("what", ["session.json-pipe", "session.json-directory", "audio-pipe"])
def test_a_session_json_or_audio_that_is_not_a_file_is_named_so(
    tmp_path: Path, what: str,
) -> None:
    root = make_fixture(tmp_path / "fx")
    session = root / "session.json"
    if what == "audio-pipe":
        spoken = copy.deepcopy(DEMO_SESSION)
        spoken["turns"][1]["audio"] = "q.wav"
        session.write_text(json.dumps(spoken))
        os.mkfifo(root / "q.wav")
        says = f"{session}: turns[1]: audio 'q.wav' is not a file"
    else:
        session.unlink()
        if what.endswith("directory"):
            session.mkdir()
        else:
            os.mkfifo(session)
        says = (f"{session}: is not a file (a fixture is a directory with session.json and a "
                "video)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SIGHTLINE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([str(SIGHTLINE), "replay", str(root)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [f"sightline: {says}"]
    assert proc.stdout == "" and not (tmp_path / "data").exists()


# `knowledge` is a folder ingested whole into every tenant's knowledge base: `/` would ingest the
# filesystem. It must be named inside the fixture's folder; a link in it is followed, as `kb
# ingest` follows one (a shared folder linked in), unless it leads to a folder that holds the
# fixture. The video and audio may lie outside (fixtures/voice_demo uses the demo's): each is one
# file, refused unless it is one.
@pytest.mark.parametrize(
    "knowledge", ["/", "../shared", "ABSOLUTE", "knowledge/../../shared", "LINK:/",
                  "LINK:..", "LINK:../.."],
)
def test_knowledge_outside_the_fixture_folder_is_refused(tmp_path: Path, knowledge: str) -> None:
    shared = tmp_path / "shared"
    shutil.copytree(DEMO_FIXTURE / "knowledge", shared)
    root = tmp_path / "fx"
    if knowledge == "ABSOLUTE":
        knowledge = str(shared)
    if knowledge.startswith("LINK:"):
        make_fixture(root, _set("knowledge", "docs"))
        (root / "docs").symlink_to(knowledge.removeprefix("LINK:"))
        says = f"knowledge 'docs' leads to {(root / 'docs').resolve()}, a folder that holds"
    else:
        make_fixture(root, _set("knowledge", knowledge))
        says = f"knowledge '{knowledge}' must be a folder inside the fixture's folder"
    with pytest.raises(FixtureError) as info:
        load_fixture(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'session.json'}: {says}"), message
    assert "\n" not in message


def test_knowledge_may_link_a_shared_folder_in_and_a_video_lie_outside(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shutil.copytree(DEMO_FIXTURE / "knowledge", shared)
    root = make_fixture(tmp_path / "fx")
    shutil.rmtree(root / "knowledge")
    (root / "knowledge").symlink_to(shared)
    assert load_fixture(root).knowledge == root / "knowledge"
    voice = load_fixture(DEMO_FIXTURE.parent / "voice_demo")  # "video": "../demo/screen.webm"
    assert voice.video.resolve() == (DEMO_FIXTURE / "screen.webm").resolve()
