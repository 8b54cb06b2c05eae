"""Replaying spoken turns: a fixture's recordings go through the configured STT, then the same
pipeline as typed turns (fixtures/voice_demo mixes both)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from conftest import answering
from test_replay import read_jsonl
from test_speech import wer

from agent.config import Settings
from agent.replay import replay
from agent.replay_script import FixtureError, load_fixture
from memory.db import Database

REPO = Path(__file__).resolve().parent.parent
VOICE_FIXTURE = REPO / "fixtures" / "voice_demo"


async def test_spoken_turns_are_heard_by_the_configured_stt(settings: Settings,
                                                            db: Database) -> None:
    fixture = load_fixture(VOICE_FIXTURE)
    result = await replay(fixture, settings.with_overrides(stt=Settings.from_env(
        {"SIGHTLINE_STT": "local", "SIGHTLINE_DATA_DIR": str(settings.data_dir)}).stt), db)
    spoken = [t for t in result.turns if t.spoken is not None]
    assert len(spoken) == 2 and result.turns[2].spoken is None
    for turn in spoken:  # what the STT heard is the question (one word in four may be off)
        assert wer(turn.spoken, turn.text) < 0.35, turn.text
    assert [t.reply for t in result.turns] == [
        t.response.text for t in fixture.turns]
    events = read_jsonl(result.sessions[0]["cost_log"])
    speech = [e for e in events if e["kind"] == "speech"]
    assert [e["model"] for e in speech] == ["moonshine-tiny-en"] * 2
    assert sum(e["detail"]["audio_s"] for e in speech) == pytest.approx(4.0, abs=0.3)
    assert result.sessions[0]["voice"]["heard_s"] == pytest.approx(
        sum(e["detail"]["audio_s"] for e in speech), abs=0.01)


async def test_a_spoken_turn_the_stt_fails_on_is_one_line_and_the_replay_goes_on(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    """The STT refuses (here a 400 from an OpenAI-compatible server): the replay ended in a
    traceback and printed nothing; now each spoken turn it could not hear is one line, is not
    asked, and the typed turn after them is answered."""
    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "scripted: no transcription today"}},
                                 status=400)
    fixture = load_fixture(VOICE_FIXTURE)
    stt = Settings.from_env({"SIGHTLINE_STT": "openai:whisper-1",
                             "SIGHTLINE_DATA_DIR": str(settings.data_dir)}).stt
    async with answering(refuse) as url:
        with caplog.at_level(logging.ERROR, logger="sightline.replay"):
            result = await replay(fixture, settings.with_overrides(
                stt=stt, stt_base_url=f"{url}/v1", openai_api_key="test-key"), db)
    unheard = [t for t in result.turns if t.unheard is not None]
    assert [t.spoken for t in unheard] == [t.text for t in fixture.turns if t.audio]
    assert all(t.reply == "" and t.model_requests == 0 for t in unheard)
    typed = result.turns[2]
    assert typed.unheard is None and typed.reply == fixture.turns[2].response.text
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith("the spoken turn at t=8.0s was not heard: ")
    assert "no transcription today" in lines[0]


async def test_spoken_fixture_without_stt_is_one_line(settings: Settings, db: Database) -> None:
    with pytest.raises(FixtureError, match="its turns carry audio: set SIGHTLINE_STT"):
        await replay(load_fixture(VOICE_FIXTURE), settings, db)


def test_bad_audio_is_named(tmp_path: Path) -> None:
    session = json.loads((VOICE_FIXTURE / "session.json").read_text())
    session["video"] = str(REPO / "fixtures" / "demo" / "screen.webm")
    session["turns"][0]["audio"] = "missing.wav"
    (tmp_path / "session.json").write_text(json.dumps(session))
    with pytest.raises(FixtureError, match=r"turns\[0\]: audio 'missing.wav' does not exist"):
        load_fixture(tmp_path)
    (tmp_path / "missing.wav").write_text("not audio")
    with pytest.raises(FixtureError, match=r"turns\[0\]: audio 'missing.wav' is not a WAV"):
        load_fixture(tmp_path)


def test_replay_command_shows_what_was_heard(tmp_path: Path) -> None:
    """`sightline replay` of the spoken fixture, as a user runs it (embedded Postgres)."""
    cli = str(Path(sys.executable).with_name("sightline"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SIGHTLINE_DATA_DIR": str(tmp_path),
           "SIGHTLINE_STT": "local"}
    out = subprocess.run([cli, "replay", "--fresh", str(VOICE_FIXTURE)], env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(spoken; heard by the STT, the recording said: 'Why does this error show up?')" in (
        out.stdout)
    assert "  voice: " in out.stdout and "moonshine-tiny-en stt $0.000000" in out.stdout
    no_stt = subprocess.run([cli, "replay", str(VOICE_FIXTURE)], text=True, capture_output=True,
                            env={**env, "SIGHTLINE_STT": ""}, timeout=120)
    assert no_stt.returncode == 2 and no_stt.stderr.count("\n") == 1, no_stt.stderr
