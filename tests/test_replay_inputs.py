"""Bad inputs to replay and sessions: each gets one clear line and leaves nothing half-written.

Protects: configuration that cannot work (prices, reranker key, cost-log directory) fails before
a session's row is written; a replay cancelled or interrupted with Ctrl-C closes its session
(outcome in the summary, cost log ending with it) and prints one line, exit 130; a session whose
process was killed is closed by `sightline costs ID --close`, which refuses while that process
may still run it; a truncated or damaged recording is decoded to its real end and named as such
by replay and `vision scan`, one whose stream holds no frame is one line; `replay --fresh`
prints the same on every run; the summary's turn counts agree; an unknown tool is refused at
fixture load and loops no more at run time; a replay that fails part way prints the turns and
summaries of the sessions it closed, then one line (never a traceback), and closes its video
decoder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import DEMO_FIXTURE, SIGHTLINE, cli_env, run_cli
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from livekit import rtc
from test_replay import demo_clip, drive, one_tier, read_jsonl, write_fixture

import agent.replay as replay_module
from agent import cli_replay
from agent.cli import _parser
from agent.cli_costs import format_summary
from agent.config import Settings, parse_tiers
from agent.replay import ReplayResult, replay
from agent.replay_script import FixtureError, load_fixture
from agent.session import SessionRuntime
from agent.wire_format_server import ScriptedModelServer, ScriptedReply, ScriptedToolCall
from memory.db import Database
from memory.store import Store
from vision.frames import as_i420
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, ScreenWatcher
from vision.video_file import VideoFrames, VideoUnreadable, probe_duration

DEMO_VIDEO = DEMO_FIXTURE / "screen.webm"


async def sessions(db: Database) -> list[dict[str, Any]]:
    return await Store(db.pool).list_sessions(100)


def one_turn_fixture(root: Path, video: Path | None = None, t: float = 3.0) -> Path:
    root = write_fixture(root, [
        {"t": t, "tenant": "acme", "user": "u1", "text": "What is on my screen?",
         "response": {"origin": "scripted", "text": "A terminal."}},
    ])
    if video is not None:
        (root / "screen.webm").write_bytes(video.read_bytes())
    return root


@pytest.mark.parametrize(("env", "says"), [
    ({"SIGHTLINE_PRICES": "{not json"}, "SIGHTLINE_PRICES"),
    ({"SIGHTLINE_RERANKER": "cohere"}, "COHERE_API_KEY"),
    ({"SIGHTLINE_COST_LOG_DIR": "FILE"}, "SIGHTLINE_COST_LOG_DIR"),
])
async def test_unusable_configuration_writes_no_session(
    settings: Settings, db: Database, tmp_path: Path, env: dict[str, str], says: str,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    prices = tmp_path / "prices.json"
    prices.write_text(env.get("SIGHTLINE_PRICES", "{}"))
    if "SIGHTLINE_PRICES" in env:
        env = {"SIGHTLINE_PRICES": str(prices)}
    if "SIGHTLINE_COST_LOG_DIR" in env:
        env = {"SIGHTLINE_COST_LOG_DIR": str(blocker / "costs")}
    fixture = one_turn_fixture(tmp_path / "fx")
    code, _, err = await run_cli("replay", str(fixture), env=cli_env(settings) | env)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert says in err
    assert await sessions(db) == []  # nothing was opened, so nothing is left open


def find_events(directory: Path, kind: str) -> Path | None:
    for path in directory.glob("replay_*.jsonl"):
        if f'"kind": "{kind}"' in path.read_text(errors="replace"):
            return path
    return None


async def wait_for_events(directory: Path, kind: str, timeout_s: float = 60.0) -> Path:
    """The first cost log in `directory` that holds an event of `kind`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(find_events, directory, kind)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event in {directory} within {timeout_s}s")


async def start_replay(settings: Settings, fixture: Path) -> asyncio.subprocess.Process:
    # Ctrl-C as a terminal sends it: a suite started in the background by a shell without job
    # control runs with SIGINT ignored, which the replay would inherit (and rightly ignore)
    return await asyncio.create_subprocess_exec(
        str(SIGHTLINE), "replay", str(fixture), env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


async def test_ctrl_c_closes_the_session_with_one_line(settings: Settings, db: Database) -> None:
    proc = await start_replay(settings, DEMO_FIXTURE)
    log = await wait_for_events(settings.costs_dir, "frame")
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    lines = err.decode().strip().splitlines()
    session_id = log.stem
    assert proc.returncode == 130
    assert lines == [f"interrupted: session {session_id} closed"]
    events = read_jsonl(log)
    assert events[-1]["kind"] == "summary"
    assert events[-1]["detail"]["outcome"] == "interrupted"
    stored = await Store(db.pool).get_session(session_id)
    assert stored is not None and stored["ended_at"] is not None
    assert stored["summary"]["outcome"] == "interrupted"
    assert not [s for s in await sessions(db) if s["ended_at"] is None]


async def test_cancelled_replay_closes_its_session(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    result = ReplayResult("demo")
    task = asyncio.create_task(replay(load_fixture(DEMO_FIXTURE), settings, db, result))
    log = await wait_for_events(settings.costs_dir, "context")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [summary] = result.sessions
    assert summary["session_id"] == log.stem and summary["outcome"] == "interrupted"
    assert read_jsonl(log)[-1]["detail"]["outcome"] == "interrupted"
    [row] = await sessions(db)
    assert row["ended_at"] is not None and row["outcome"] == "interrupted"


def two_users_fixture(root: Path) -> Path:
    """Two sessions: u1's one turn, then u2's."""
    return write_fixture(root, seconds=8, turns=[
        {"t": 3.0, "tenant": "acme", "user": "u1", "text": "What is on my screen?",
         "response": {"origin": "scripted", "text": "A terminal."}},
        {"t": 6.0, "tenant": "acme", "user": "u2", "text": "And on mine?",
         "response": {"origin": "scripted", "text": "The same terminal."}},
    ])


def failing_for_u2(monkeypatch: pytest.MonkeyPatch) -> None:
    """u2's turns fail as no fixture can make them fail (those it could are refused at load)."""
    run_turn = replay_module._run_turn

    async def failing(session: Any, runtime: SessionRuntime, turn: Any,
                      events: list[Any]) -> Any:
        if turn.user == "u2":
            raise RuntimeError("the scripted failure\nand a second line")
        return await run_turn(session, runtime, turn, events)

    monkeypatch.setattr(replay_module, "_run_turn", failing)


async def test_a_database_failure_mid_replay_prints_the_sessions_it_closed(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The database refuses the second session's row: what the first did (its turn, its summary
    and what it cost) is printed as a finished replay prints it, then the failure in one line.
    It was the line alone: the first session's cost log was on disk, but nobody was told."""
    await db.pool.execute("""
        CREATE FUNCTION refuse_u2() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.user_id = 'u2' THEN RAISE EXCEPTION 'no sessions for u2 today'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_u2 BEFORE INSERT ON sessions
            FOR EACH ROW EXECUTE FUNCTION refuse_u2();""")
    env = cli_env(settings)
    code, out, err = await run_cli("replay", str(two_users_fixture(tmp_path / "fx")), env=env)
    assert code == 1
    assert err.splitlines() == ["sightline: the database failed: no sessions for u2 today"]
    [row] = await sessions(db)
    assert row["user"] == "u1" and row["outcome"] == "completed"
    assert out.startswith("Replayed fixture 'fx' (screen.webm, 8.0s)\n")
    assert "u1: What is on my screen?" in out and "Sightline: A terminal." in out
    assert "u2" not in out and out.count("Session ") == 1
    code, shown, _ = await run_cli("costs", row["id"], env=env)
    assert code == 0 and "Session " + out.split("Session ")[1].strip() == shown.strip()


async def test_an_unexpected_failure_mid_replay_is_one_line_after_what_ran(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failure nobody foresaw (a bug: before the loader refused lone surrogates, the
    provider SDK's UnicodeEncodeError) is one line too, after the sessions it ended: the
    completed one and the failed one, whose summary says why. It was a raw traceback."""
    failing_for_u2(monkeypatch)
    args = argparse.Namespace(path=two_users_fixture(tmp_path / "fx"), json=False, fresh=False)
    code = await cli_replay.run(settings, args)
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == ["sightline: the replay stopped: RuntimeError: the scripted "
                                "failure"]
    assert "u1: What is on my screen?" in out and "Sightline: A terminal." in out
    first, second = out.split("Session ")[1:]
    assert "ended:" not in first
    assert "ended: failed (RuntimeError: the scripted failure)" in second
    rows = await sessions(db)
    assert sorted((r["user"], r["outcome"]) for r in rows) == [
        ("u1", "completed"), ("u2", "failed")]
    # with --json too, the video as far as it was decoded (it was null)
    failing_for_u2(monkeypatch)
    code = await cli_replay.run(settings, argparse.Namespace(
        path=two_users_fixture(tmp_path / "fx2"), json=True, fresh=False))
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert code == 1 and printed["video"]["decoded_frames"] > 0
    assert [s["outcome"] for s in printed["sessions"]] == ["completed", "failed"]


def open_files(path: Path) -> list[str]:
    """This process's file descriptors open on `path`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return found


async def test_a_failed_replay_closes_its_video_decoder(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decoder (its file, its threads) was closed only when the garbage collector got to
    it: after a failure, not while anything held the error (its traceback holds the replay)."""
    failing_for_u2(monkeypatch)
    fixture = load_fixture(two_users_fixture(tmp_path / "fx"))
    with pytest.raises(RuntimeError, match="the scripted failure") as info:
        await replay(fixture, settings, db)
    assert info.traceback  # still held, as a caller reporting the failure holds it
    assert open_files(fixture.video) == []


async def wait_for_rows(db: Database, session_id: str, kind: str) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if await db.pool.fetchval("SELECT count(*) FROM cost_events WHERE session_id = $1"
                                  " AND kind = $2", session_id, kind):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} row of {session_id} in cost_events within 30s")


async def killed_replay(settings: Settings, db: Database | None = None) -> tuple[str, Path]:
    """A replay SIGKILLed mid-session (and reaped): its session is left open. With `db`, once
    Postgres holds the session's first events (they reach it in batches, a second apart)."""
    proc = await start_replay(settings, DEMO_FIXTURE)
    log = await wait_for_events(settings.costs_dir, "context")
    if db is not None:
        await wait_for_rows(db, log.stem, "context")
    proc.kill()
    await proc.wait()
    return log.stem, log


async def test_costs_close_ends_a_session_whose_process_was_killed(
    settings: Settings, db: Database,
) -> None:
    session_id, log = await killed_replay(settings)
    with log.open("r+b") as torn:  # killed while writing: its last line half there
        torn.truncate(log.stat().st_size - 40)
    env = cli_env(settings)
    code, out, _ = await run_cli("costs", env=env)
    assert code == 0 and re.search(rf"{session_id}.*\(open\)", out)

    code, out, err = await run_cli("costs", session_id, "--close", env=env)
    assert code == 0, err
    assert f"Session {session_id}" in out
    assert "ended: abandoned" in out and "no longer running" in out
    lines = log.read_text().splitlines()
    with pytest.raises(json.JSONDecodeError):  # the torn line stays itself, a line apart
        json.loads(lines[-2])
    events = [json.loads(line) for line in lines[:-2] + lines[-1:]]
    assert events[-1]["kind"] == "summary" and events[-1]["seq"] == events[-2]["seq"] + 1
    summary = events[-1]["detail"]
    assert summary["outcome"] == "abandoned" and summary["recomputed_from"] == "cost log"
    model_calls = [e for e in events if e["kind"] == "model_call"]
    assert sum(m["calls"] for m in summary["by_model"].values()) == len(model_calls)
    stored = await Store(db.pool).get_session(session_id)
    assert stored is not None and stored["summary"] == summary
    assert stored["total_cost_usd"] == pytest.approx(summary["total_cost_usd"], abs=1e-8)
    code, out, _ = await run_cli("costs", env=env)
    assert re.search(rf"{session_id}.*abandoned", out) and "(open)" not in out

    code, _, err = await run_cli("costs", session_id, "--close", env=env)  # not twice
    assert code == 2 and err.strip().splitlines() == [
        f"sightline: session {session_id} has ended already (abandoned): nothing to close"]


async def test_costs_close_ends_a_session_that_ran_without_the_database(
    settings: Settings, db: Database,
) -> None:
    """A session opened while Postgres was down, whose process then died: its row is only in
    its spill file, and its cost log has no summary, so no import takes it. `--close` writes
    the row from the spill and closes it from the cost log; the next import (here `memory
    show`) brings in its conversation."""
    runtime = await SessionRuntime.open(
        settings.with_overrides(gemini_api_key="test-key", anthropic_api_key="test-key",
                                embeddings="offline"),
        None, tenant="acme", user_id="u1", source="live")
    try:
        runtime.conversation.add("u1", "user", "said before the process died")
        # as if its process had died: the log names a process of this host that has ended
        ended = await asyncio.create_subprocess_exec("true")
        await ended.wait()
        log = runtime.record.events.path
        events = read_jsonl(log)
        for event in events:
            if event["kind"] == "session":
                event["detail"]["pid"] = ended.pid
        log.write_text("".join(json.dumps(e) + "\n" for e in events))
        assert await Store(db.pool).get_session(runtime.session_id) is None

        env = cli_env(settings)
        code, out, err = await run_cli("costs", runtime.session_id, "--close", env=env)
        assert code == 0, err
        assert "ended: abandoned" in out
        stored = await Store(db.pool).get_session(runtime.session_id)
        assert stored is not None and stored["outcome"] == "abandoned"
        assert (stored["tenant"], stored["user"], stored["source"]) == ("acme", "u1", "live")
        code, out, err = await run_cli("memory", "show", "--tenant", "acme", "--user", "u1",
                                       env=env)
        assert code == 0 and "user: said before the process died" in out, err
        kinds = [e["kind"] for e in (await Store(db.pool).get_session(
            runtime.session_id) or {})["events"]]
        assert kinds == [e["kind"] for e in events]  # its whole ledger, once
    finally:
        await runtime.close()


async def test_costs_close_recomputes_from_postgres_without_the_cost_log(
    settings: Settings, db: Database,
) -> None:
    session_id, log = await killed_replay(settings, db)
    log.unlink()  # as when the session ran on another machine's disk
    code, out, err = await run_cli("costs", session_id, "--close", "--json",
                                   env=cli_env(settings))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["outcome"] == "abandoned" and summary["recomputed_from"] == "cost_events"
    calls = await db.pool.fetchval("SELECT count(*) FROM cost_events WHERE session_id = $1"
                                   " AND kind LIKE 'model%'", session_id)
    assert sum(m["calls"] for m in summary["by_model"].values()) == calls
    stored = await Store(db.pool).get_session(session_id)
    assert stored is not None and stored["outcome"] == "abandoned"


async def test_costs_close_refuses_a_session_whose_process_lives(
    settings: Settings, db: Database,
) -> None:
    # this test's own process runs the session: it is alive while `--close` is tried
    runtime = await SessionRuntime.open(
        settings.with_overrides(gemini_api_key="test-key", anthropic_api_key="test-key",
                                embeddings="offline"),
        db, tenant="acme", user_id="u1", source="live")
    code, _, err = await run_cli("costs", runtime.session_id, "--close", env=cli_env(settings))
    await runtime.close()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"its process {os.getpid()} lives on this host" in err
    [row] = await sessions(db)
    assert row["outcome"] == "completed"  # it closed itself, with its own summary


async def test_costs_close_waits_for_a_session_of_another_host_to_be_idle(
    settings: Settings, db: Database,
) -> None:
    session_id, log = await killed_replay(settings)
    # the same cost log as if another host's worker had written it, 2 hours ago
    events = read_jsonl(log)
    for event in events:
        if event["kind"] == "session":
            event["detail"]["host"] = f"not-{socket.gethostname()}"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    env = cli_env(settings)
    code, _, err = await run_cli("costs", session_id, "--close", env=env)
    assert code == 2 and "may still be running" in err and "--idle-minutes" in err
    assert (await sessions(db))[0]["ended_at"] is None

    aged = [{**e, "ts": e["ts"] - 7200} for e in events]
    log.write_text("".join(json.dumps(e) + "\n" for e in aged))
    code, out, err = await run_cli("costs", session_id, "--close", env=env)
    assert code == 0, err
    assert f"on host not-{socket.gethostname()}, idle for 120 min" in out


def truncated(tmp_path: Path) -> Path:
    data = DEMO_VIDEO.read_bytes()
    path = tmp_path / "truncated.webm"
    path.write_bytes(data[: len(data) // 2])
    return path


def damaged(tmp_path: Path) -> Path:
    """The demo with 2000 bytes flipped after its first tenth: packets fail to decode."""
    data = bytearray(DEMO_VIDEO.read_bytes())
    rng = random.Random(1)
    for _ in range(2000):
        data[rng.randrange(len(data) // 10, len(data))] ^= 0xFF
    path = tmp_path / "damaged.webm"
    path.write_bytes(bytes(data))
    return path


def time_warped(tmp_path: Path) -> Path:
    """The demo with one byte changed (found by bisecting a random flip) so that a damaged
    packet decodes to a frame stamped 25.9 s after frames of 37 s."""
    data = bytearray(DEMO_VIDEO.read_bytes())
    data[701000] ^= 0xEE
    path = tmp_path / "time-warped.webm"
    path.write_bytes(bytes(data))
    return path


async def scan_json(path: Path, tmp_path: Path) -> tuple[dict[str, Any], str]:
    code, out, err = await run_cli("vision", "scan", str(path), "--json",
                                   env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out.strip().splitlines()[-1]), err


async def test_scan_names_a_truncated_video(tmp_path: Path) -> None:
    summary, err = await scan_json(truncated(tmp_path), tmp_path)
    video = summary["video"]
    assert video["header_duration_s"] == pytest.approx(40.0, abs=0.05)
    assert video["ends_early"] and video["last_frame_t"] < 30
    assert summary["sampled"] == pytest.approx(video["last_frame_t"], abs=1.5)
    assert err.strip().splitlines() == [f"warning: {video['problem']}"]
    assert "header says 40.0s" in video["problem"]

    whole, err = await scan_json(DEMO_VIDEO, tmp_path)
    assert whole["video"]["problem"] is None and not whole["video"]["ends_early"] and not err


async def test_scan_decodes_past_damaged_packets(tmp_path: Path) -> None:
    summary, err = await scan_json(damaged(tmp_path), tmp_path)
    video = summary["video"]
    assert video["skipped_packets"] > 0
    assert video["last_frame_t"] > 39  # to the end, not aborted at the first bad packet
    assert summary["sampled"] >= 30  # one a second, as far as the frames go
    assert "undecodable" in err and len(err.strip().splitlines()) == 1


def test_a_frame_stamped_before_the_last_is_skipped(tmp_path: Path) -> None:
    frames = VideoFrames(time_warped(tmp_path))
    times = [t for t, _ in frames]
    assert times == sorted(times) and times[-1] > 39  # forward only, to the end
    assert frames.report.skipped_frames >= 1 and frames.report.problem() is not None


async def test_replay_of_a_truncated_video_says_where_it_ends(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    fixture = one_turn_fixture(tmp_path / "fx", truncated(tmp_path), t=35.0)
    code, out, err = await run_cli("replay", str(fixture), env=cli_env(settings))
    assert code == 0, err
    header, warning = out.splitlines()[:2]
    assert header == "Replayed fixture 'fx' (screen.webm, 40.0s)"
    assert warning.startswith("warning: screen.webm: its frames end at ")
    assert "though its header says 40.0s" in warning
    assert "  video: screen.webm: its frames end at " in out  # in the session's summary

    [row] = await sessions(db)
    code, out, err = await run_cli("replay", str(fixture), "--json", env=cli_env(settings))
    assert code == 0, err
    problem = json.loads(out)["video"]["problem"]
    assert problem.startswith("screen.webm: its frames end at ")
    assert f"warning: {problem}" in err.splitlines()
    events = read_jsonl(settings.costs_dir / f"{row['id']}.jsonl")
    [video] = [e["detail"] for e in events if e["kind"] == "video"]
    assert video["ends_early"] and video["last_frame_t"] < 30
    assert events[-1]["detail"]["video"] == video


async def test_replay_says_what_its_knowledge_folder_could_not_give(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """A fixture's knowledge file that cannot be ingested was skipped without a word, so its
    turns answered without it and nothing said why; a document holding what looks like a
    secret is ingested with a note, as `kb ingest` says (tests/test_kb_inputs.py). Both once,
    though each of the fixture's tenants gets the folder; in JSON, and on stderr."""
    fixture = write_fixture(tmp_path / "fx", seconds=5, knowledge="kb", turns=[
        {"t": 3.0, "tenant": tenant, "user": "u1", "text": "What is on my screen?",
         "response": {"origin": "scripted", "text": "A terminal."}}
        for tenant in ("acme", "globex")])
    (fixture / "kb").mkdir()
    (fixture / "kb" / "broken.md").write_bytes(b"\x00\x01\x02garbage\xff" * 50)
    (fixture / "kb" / "creds.md").write_text("# Staging\n\nDB_PASSWORD=hunter2\n")
    skipped = f"warning: knowledge file skipped: {fixture / 'kb' / 'broken.md'}: binary, not text"
    note = ('note: kb/creds.md holds what looks like a secret (1 assigned secret), first in '
            '"DB_PASSWORD=[secret hidden]": ingested as it is, so the agent may read it to any '
            'user of tenants acme, globex; if they should not see it, take it out of the file '
            'and ingest it again')
    code, out, err = await run_cli("replay", str(fixture), "--fresh", env=cli_env(settings))
    assert code == 0, err
    assert out.splitlines()[:3] == ["Replayed fixture 'fx' (screen.webm, 5.0s)", skipped, note]
    assert "hunter2" not in out
    code, out, err = await run_cli("replay", str(fixture), "--fresh", "--json",
                                   env=cli_env(settings))
    assert code == 0, err
    knowledge = json.loads(out)["knowledge"]
    assert knowledge["skipped"] == [skipped.removeprefix("warning: knowledge file skipped: ")]
    assert [(s["source"], s["kinds"]) for s in knowledge["secrets"]] == [
        ("kb/creds.md", {"assigned secret": 1})]
    assert err.splitlines() == [skipped, note]


async def test_a_video_without_decodable_frames_fails_before_any_session(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    headless = tmp_path / "header-only.webm"
    headless.write_bytes(DEMO_VIDEO.read_bytes()[:2000])  # its header says 40 s: it loads
    fixture = one_turn_fixture(tmp_path / "fx", headless)
    code, _, err = await run_cli("replay", str(fixture), env=cli_env(settings))
    assert code == 2
    assert err.strip().splitlines() == [
        f"sightline: {fixture / 'screen.webm'}: no decodable video frames"]
    assert await sessions(db) == []


async def test_a_video_whose_stream_holds_no_frame_is_one_line(tmp_path: Path) -> None:
    """A recording cut after its stream is declared, before its first whole frame: probing
    took the latest of no frames' times, and `replay` ended in a traceback."""
    whole = tmp_path / "whole.ts"
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("mpeg2video", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for n in range(10):
            image = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 9 * n, np.uint8),
                                               format="rgb24")
            image.pts = n
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))
    fixture = tmp_path / "fx"
    fixture.mkdir()
    video = fixture / "screen.ts"
    video.write_bytes(whole.read_bytes()[:3 * 188])  # three transport-stream packets
    (fixture / "session.json").write_text('{"video": "screen.ts", "turns": []}')
    with av.open(str(video)) as cut:
        assert cut.streams.video, "the cut must still declare its stream"
    with pytest.raises(VideoUnreadable, match="no decodable video frames"):
        probe_duration(video)
    code, _, err = await run_cli("replay", str(fixture),
                                 env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert code == 2
    assert err.strip().splitlines() == [
        f"sightline: {fixture / 'session.json'}: {video}: no decodable video frames"]


def normalized(output: str) -> str:
    """A replay's output without what differs by design: session ids, their cost-log paths,
    the measured OCR CPU time and the day an earlier message was said."""
    output = re.sub(r"replay_[0-9a-f]{16}", "replay_ID", output)
    output = re.sub(r"cost log: .*", "cost log: PATH", output)
    output = re.sub(r"earlier \d{4}-\d{2}-\d{2} ", "earlier DAY ", output)
    return re.sub(r"[0-9.]+ s of OCR CPU", "N s of OCR CPU", output)


def readme_demo() -> str:
    """The output of `make demo` as the README shows it."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    found = re.search(r"```\n(Replayed fixture 'demo'.*?)```", readme, re.DOTALL)
    assert found is not None, "the README shows no demo output"
    return found.group(1)


async def test_fresh_replay_prints_the_same_on_every_run(settings: Settings) -> None:
    """Two runs at once, on one database and data directory: each in its own scratch schema
    and cost-log directory, so neither sees the other; and what they print is the README's
    `make demo` output."""
    env = cli_env(settings)
    runs = await asyncio.gather(*(run_cli("replay", "--fresh", str(DEMO_FIXTURE), env=env)
                                  for _ in range(2)))
    assert [code for code, _, _ in runs] == [0, 0], [err for _, _, err in runs]
    first, second = (normalized(out) for _, out, _ in runs)
    assert first == second
    assert first.count("Sightline: ") == 5 and "total: $" in first
    # the README shows it as it is (it once kept an earlier ranking's recall for days)
    assert first.strip() == normalized(readme_demo()).strip()


async def test_summary_counts_user_turns_and_tool_rounds_alike(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    lite = "gemini-2.5-flash-lite"
    fixture = write_fixture(tmp_path / "tools", tiers=f"gemini:{lite}:0:512", turns=[
        {"t": 9.0, "tenant": "acme", "user": "u1", "text": "What changed on screen?",
         "response": {"origin": "scripted", "tiers": [
             {"model": lite, "tool_call": {"name": "screen_changes", "args": {"minutes": 1}}},
             {"model": lite, "confidence": 0.9, "text": "A terminal opened."}]}},
        {"t": 12.0, "tenant": "acme", "user": "u1", "text": "Which pip version is shown?",
         "response": {"origin": "scripted", "text": "pip 23.2.1."}},
    ])
    result = await replay(load_fixture(fixture), settings, db)
    [summary] = result.sessions
    turns = summary["turns"]
    assert turns["user_turns"] == summary["vs_top_tier"]["user_turns"] == 2
    assert turns["model_rounds"] == summary["vs_top_tier"]["model_rounds"] == 3
    assert sum(turns["started_at_tier"].values()) == turns["user_turns"]
    assert sum(turns["answered_by_tier"].values()) == turns["user_turns"]
    assert turns["escalated"] == 0 and turns["tool_calls"] == {"screen_changes": 1}
    text = format_summary(summary)
    assert "{" not in text and "'" not in text  # readable text, no Python dicts
    assert "turns: 2 started (2 at tier 0); answered 2 by tier 0" in text


async def test_costs_shows_the_summary_as_replay_printed_it(
    settings: Settings, db: Database,
) -> None:
    env = cli_env(settings)
    code, replayed, err = await run_cli("replay", str(DEMO_FIXTURE), env=env)
    assert code == 0, err
    blocks = replayed.split("Session ")[1:]
    assert len(blocks) == 2
    for block in blocks:
        session_id = block.split()[0]
        code, shown, err = await run_cli("costs", session_id, env=env)
        assert code == 0, err
        assert "Session " + block.strip() == shown.strip()
    models = [line.split(":")[0].strip() for line in blocks[0].splitlines()
              if re.search(r": \d+ calls? \(", line)]
    assert models == ["gemini-2.5-flash-lite", "gemini-2.5-flash", "claude-sonnet-4-6"]


async def test_costs_for_an_unknown_tenant_says_so(settings: Settings, db: Database) -> None:
    code, out, _ = await run_cli("costs", "--tenant", "nobody", env=cli_env(settings))
    assert code == 0 and out.strip() == "No sessions for tenant nobody."


async def test_an_unpriced_model_is_marked(settings: Settings, db: Database,
                                           tmp_path: Path) -> None:
    prices = json.loads((Path(__file__).parent.parent / "agent" / "prices.json").read_text())
    # a model neither the table nor genai-prices knows
    model = "gemini-unreleased-test"
    assert model not in prices["models"]
    table = tmp_path / "prices.json"
    table.write_text(json.dumps(prices))
    fixture = write_fixture(tmp_path / "fx", tiers=f"gemini:{model}:0:512", seconds=5, turns=[
        {"t": 3.0, "tenant": "acme", "user": "u1", "text": "Hi",
         "response": {"origin": "scripted", "text": "Hello."}}])
    code, out, err = await run_cli("replay", str(fixture),
                                   env=cli_env(settings) | {"SIGHTLINE_PRICES": str(table)})
    assert code == 0, err
    [line] = [x for x in out.splitlines() if x.startswith(f"  {model}:")]
    assert line.endswith(", unpriced") and "$" not in line
    assert "not priced" in out and model in out.split("not priced")[1]


async def test_knowledge_beside_the_fixture_is_refused_with_how_to_link_it_in(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """A fixture may play the video of the fixture beside it (`../demo/screen.webm`), but
    `"knowledge": "../demo/knowledge"` is refused: a folder named outside the fixture's is
    not ingested (`"/"` would ingest the filesystem), a link in it is. The refusal used to
    say only the rule; it now says the link to make and the name to give, and that done as
    it says, the replay answers with those documents."""
    fixtures = tmp_path / "fixtures"
    (fixtures / "demo").mkdir(parents=True)
    demo_clip(fixtures / "demo" / "screen.webm", seconds=5)
    shutil.copytree(DEMO_FIXTURE / "knowledge", fixtures / "demo" / "knowledge")
    mine = write_fixture(fixtures / "mine", [
        {"t": 3.0, "tenant": "acme", "user": "u1",
         "text": "How do I validate a config file before I commit it?",
         "response": {"origin": "scripted", "text": "Run python3 -m json.tool on it."}},
    ], video="../demo/screen.webm", knowledge="../demo/knowledge")
    (mine / "screen.webm").unlink()
    code, out, err = await run_cli("replay", str(mine), "--fresh", env=cli_env(settings))
    assert (code, out, err.count("\n")) == (2, "", 1), err
    target = fixtures / "demo" / "knowledge"
    assert err.startswith(f"sightline: {mine / 'session.json'}: knowledge '../demo/knowledge' "
                          f"must be a folder inside the fixture's folder (a relative path "
                          f"without '..'); to ingest {target}, link it in (")
    link = re.search(r"\((ln -s .+?)\) and name the link: \"knowledge\": (\S+)$", err.strip())
    assert link, err
    made = await asyncio.create_subprocess_exec(*shlex.split(link[1]))  # as typed
    assert await made.wait() == 0
    session = json.loads((mine / "session.json").read_text())
    (mine / "session.json").write_text(json.dumps({**session, "knowledge": json.loads(link[2])}))
    code, out, err = await run_cli("replay", str(mine), "--fresh", env=cli_env(settings))
    assert code == 0, err
    assert os.readlink(mine / "knowledge") == "../demo/knowledge"  # it moves with the fixtures
    assert "knowledge: knowledge/config-files.md" in out


def test_fixture_with_an_unknown_tool_is_refused_at_load(tmp_path: Path) -> None:
    lite = "gemini-2.5-flash-lite"
    fixture = write_fixture(tmp_path / "fx", turns=[
        {"t": 3.0, "tenant": "acme", "user": "u1", "text": "Open it",
         "response": {"origin": "scripted", "tiers": [
             {"model": lite, "tool_call": {"name": "open_browser", "args": {}}}]}}])
    with pytest.raises(FixtureError) as info:
        load_fixture(fixture)
    message = str(info.value)
    assert str(fixture / "session.json") in message and "'open_browser'" in message
    assert "\n" not in message and ("earlier_screen, forget, handoff_to_human, look_closer, "
                                     "remember, screen_changes, search_knowledge") in message


@pytest.mark.parametrize(("provider", "model"), [
    ("gemini", "gemini-2.5-flash"), ("anthropic", "claude-sonnet-4-6")])
async def test_a_model_asking_for_an_unknown_tool_gets_one_error_result(
    settings: Settings, db: Database, provider: str, model: str,
) -> None:
    call = ScriptedReply(tool_calls=(ScriptedToolCall("open_browser", {"url": "x"}),))
    tiered = settings.with_overrides(tiers=parse_tiers(one_tier(provider, model)))
    async with ScriptedModelServer([call] * 5) as server:
        replies, summary = await drive(tiered, db, server, ["Open the docs"])
        # the call, then its error result; asked again for it, the model is not looped
        assert len(server.requests) == 2
        assert "Unknown function: open_browser" in server.requests[1].text
    assert replies == [f"Sorry, the model ({model}) kept asking for a tool it does not have, "
                       "so I have no answer. Please ask again."]
    assert summary["turns"]["user_turns"] == 1 and summary["turns"]["model_rounds"] == 2


def test_costs_options_have_help() -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    costs = sub.choices["costs"]  # type: ignore[index]
    for action in costs._actions:
        assert action.help, f"sightline costs {action.option_strings or action.dest}"



# --- fuzzing: fixtures and frames ------------------------------------------------------------

DEMO_SESSION_JSON = json.loads((DEMO_FIXTURE / "session.json").read_text())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (the value itself included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated_sessions(draw: st.DrawFn) -> str:
    """The demo's session.json with a few values replaced or removed, or random text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    session = json.loads(json.dumps(DEMO_SESSION_JSON))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths(session)[1:]))
        parent = session
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return json.dumps(session)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-fixture")
    (root / "screen.webm").symlink_to(DEMO_VIDEO)
    (root / "knowledge").symlink_to(DEMO_FIXTURE / "knowledge")
    return root


@fuzzing(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=mutated_sessions())
def test_fuzzed_fixtures_fail_with_one_fixture_error_line(fuzz_dir: Path, content: str) -> None:
    (fuzz_dir / "session.json").write_text(content)
    try:
        fixture = load_fixture(fuzz_dir)
    except FixtureError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(fuzz_dir) in message
        return
    assert fixture.turns and all(t.text.strip() for t in fixture.turns)


frame_types = st.sampled_from([
    rtc.VideoBufferType.I420, rtc.VideoBufferType.NV12, rtc.VideoBufferType.RGBA,
    rtc.VideoBufferType.BGRA, rtc.VideoBufferType.ARGB, rtc.VideoBufferType.ABGR,
    rtc.VideoBufferType.RGB24, rtc.VideoBufferType.I420A, rtc.VideoBufferType.I422,
    rtc.VideoBufferType.I444, rtc.VideoBufferType.I010])


@st.composite
def frames(draw: st.DrawFn) -> rtc.VideoFrame:
    width, height = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    kind = draw(frame_types)
    need = width * height * 4
    size = draw(st.sampled_from([0, 1, need // 4, need // 2, need, need + 7]))
    return rtc.VideoFrame(width, height, kind, draw(st.binary(min_size=size, max_size=size)))


@fuzzing(max_examples=200, deadline=None)
@given(offered=st.lists(frames(), min_size=1, max_size=6))
def test_fuzzed_frames_never_stop_the_screen_watcher(offered: list[rtc.VideoFrame]) -> None:
    decisions: list[FrameDecision] = []
    watcher = ScreenWatcher(FrameSampler(1.0), decisions.append)
    for index, frame in enumerate(offered):
        watcher.offer(float(index), frame)  # raises nothing, whatever the frame holds
    assert len(decisions) <= len(offered)
    assert all(d.kept or d.reason for d in decisions)


def test_an_abgr_frame_is_converted_without_aborting_the_process() -> None:
    """Found by the fuzz test above: the SDK's ABGR conversion aborted the process."""
    abgr = rtc.VideoFrame(2, 2, rtc.VideoBufferType.ABGR, bytes([255, 10, 50, 200]) * 4)
    rgba = rtc.VideoFrame(2, 2, rtc.VideoBufferType.RGBA, bytes([200, 50, 10, 255]) * 4)
    assert bytes(as_i420(abgr).data) == bytes(as_i420(rgba).data)


@fuzzing(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=4096), cut=st.integers(0, 200_000))
def test_fuzzed_video_files_fail_only_as_unreadable(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cut: int,
) -> None:
    path = tmp_path_factory.mktemp("video") / "screen.webm"
    # random bytes, or the demo's first bytes followed by random ones
    path.write_bytes(DEMO_VIDEO.read_bytes()[:cut] + data)
    try:
        decoded = VideoFrames(path)
        count = sum(1 for _ in decoded)
    except VideoUnreadable as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert count == decoded.report.frames > 0
