"""What the `sightline` commands print of stored text: it reaches the terminal as data.

Protects: document names, chunks, chat, facts, the text read off a screen, users' questions,
alerts and session ids may hold terminal escape sequences (a window-title change, a screen
clear, colours); every human-readable command prints them escaped (ESC as `\\x1b`), so none
reaches the operator's terminal, and the `--json` outputs carry them intact as JSON escapes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from conftest import cli_env, run_cli

from agent.components import embedder_on_use
from agent.config import Settings
from memory.alert_log import claim
from memory.db import Database
from memory.gaps import FailedQuestion, add_gap
from memory.screen_timeline import ScreenTimeline, event_row
from memory.store import Store

ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\x1b[31m"  # retitle the window, clear it, turn red
SESSION = "s-acme-1"
ODD_SESSION = f"s-acme-{ESCAPES}2"  # a session id is a room's or a job's: not ours to choose


def write_docs(docs: Path) -> None:
    """A folder holding a document whose name and text hold `ESCAPES`."""
    docs.mkdir()
    (docs / f"router{ESCAPES}.md").write_text(f"# Router\n\nReset the {ESCAPES}router.\n")


async def seed(settings: Settings, db: Database, docs: Path) -> None:
    """One user's chat, screen event, knowledge gap and alert, each holding `ESCAPES`, and
    the documents of `write_docs`."""
    store = Store(db.pool)
    for sid in (SESSION, ODD_SESSION):
        await store.start_session(sid, tenant="acme", user_id="u1", room="r", source="live",
                                  provider="gemini", model="m")
    await store.add_messages(SESSION, "acme", [
        {"user_id": "u1", "role": "user", "content": f"hello {ESCAPES}there"}])
    embedder = embedder_on_use(settings)
    try:
        await ScreenTimeline(db.pool, embedder).write([event_row(
            session_id=SESSION, tenant="acme", user_id="u1", t=1.0, wall_time=time.time(),
            content_type="code", reason="changed", region=[0, 0, 10, 10],
            lines=[f"Traceback {ESCAPES}JSONDecodeError"], is_error=True)])
    finally:
        await embedder.aclose()
    question = FailedQuestion(f"where is the {ESCAPES}router?", SESSION, 1,
                              datetime.now(UTC), 1.0, ("unanswered",))
    await add_gap(db.pool, "acme", canonical_question=question.text,
                  outline=[f"step {ESCAPES}one"], questions=[question], embed_model="m",
                  centroid=np.ones(4, dtype=np.float32))
    await claim(db.pool, "acme:retry_rate:3600s:1", {
        "tenant": "acme", "alert": "retry_rate", "severity": "warning",
        "message": f"retry rate {ESCAPES}high"})
    await asyncio.to_thread(write_docs, docs)


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            yield from strings(item)


async def seeded(settings: Settings, db: Database, tmp_path: Path) -> dict[str, str]:
    """The stored text seeded and its documents ingested; the CLI's environment."""
    await seed(settings, db, tmp_path / "docs")
    env = cli_env(settings)
    code, _, err = await run_cli("kb", "ingest", str(tmp_path / "docs"), "--tenant", "acme",
                                 env=env)
    assert code == 0, err
    return env


async def test_stored_text_reaches_the_terminal_escaped(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    env = await seeded(settings, db, tmp_path)
    commands = [
        ("kb", "list", "--tenant", "acme"),
        ("kb", "search", "reset the router", "--tenant", "acme"),
        ("memory", "show", "--tenant", "acme", "--user", "u1"),
        ("screen", "timeline", SESSION, "--tenant", "acme"),
        ("screen", "search", "JSONDecodeError", "--tenant", "acme"),
        ("gaps", "list", "--tenant", "acme"),
        ("alerts", "list", "--tenant", "acme"),
        ("costs", "--tenant", "acme"),
        ("quality", "--tenant", "acme", "--sessions"),
    ]
    runs = await asyncio.gather(*(run_cli(*args, env=env) for args in commands))
    for args, (code, out, err) in zip(commands, runs, strict=True):
        assert code == 0, (args, err)
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        assert "\\x1b" in out, (args, out)  # what was stored is shown, escaped


async def test_json_outputs_carry_stored_text_as_json_escapes(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    env = await seeded(settings, db, tmp_path)
    commands = [
        ("kb", "list", "--tenant", "acme", "--json"),
        ("kb", "search", "reset the router", "--tenant", "acme", "--json"),
        ("memory", "show", "--tenant", "acme", "--user", "u1", "--json"),
        ("screen", "timeline", SESSION, "--tenant", "acme", "--json"),
        ("screen", "search", "JSONDecodeError", "--tenant", "acme", "--json"),
        ("gaps", "list", "--tenant", "acme", "--json"),
        ("alerts", "list", "--tenant", "acme", "--json"),
        ("costs", "--tenant", "acme", "--json"),
    ]
    runs = await asyncio.gather(*(run_cli(*args, env=env) for args in commands))
    for args, (code, out, err) in zip(commands, runs, strict=True):
        assert code == 0, (args, err)
        assert "\x1b" not in out, (args, out)
        assert any(ESCAPES in text for text in strings(json.loads(out))), args


async def test_alerts_list_says_when_there_are_none(settings: Settings) -> None:
    code, out, err = await run_cli("alerts", "list", "--tenant", "acme", env=cli_env(settings))
    assert code == 0, err
    assert out == "No alerts raised for tenant acme.\n"
