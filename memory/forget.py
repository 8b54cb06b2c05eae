"""Forgetting a user in their sessions' cost records: what the records quote of them.

A privacy request (`sightline memory forget`) deletes what is remembered about a user
(memory/store.py `forget_user`). Their sessions keep their cost records (tokens, dollars,
timings: billing needs them), but not what those records quote: the words live assist looked
up, the text read off their screen, the reason a session was handed to a person and who it was.
`forget_detail` says per event kind what goes; it is applied alike to the `cost_events` rows,
the sessions' summaries and the closed sessions' JSONL cost logs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import asyncpg

from .spill_files import event_log_path, read_event_log

FORGOTTEN = "(forgotten)"
# the event kinds that quote the user or their screen, and the fields that do
QUOTING: dict[str, tuple[str, ...]] = {
    "assist": ("text",), "screen_text": ("lines",), "screen_error": ("headline", "lines"),
    "handoff": ("reason", "user"),
}


def _forgotten(field: str, value: Any) -> Any:
    if isinstance(value, list):
        return []
    return None if field == "user" else FORGOTTEN


def forget_detail(kind: str, detail: dict[str, Any]) -> dict[str, Any] | None:
    """`detail` without what it quotes of the user, or None when it quotes nothing (so a
    second request changes nothing)."""
    if kind == "summary":  # a summary quotes its handoff
        handoff = detail.get("handoff")
        forgotten = forget_detail("handoff", handoff) if isinstance(handoff, dict) else None
        return None if forgotten is None else {**detail, "handoff": forgotten}
    fields = [f for f in QUOTING.get(kind, ())
              if detail.get(f) not in (None, FORGOTTEN, [])]
    if not fields:
        return None
    return {**detail, **{f: _forgotten(f, detail[f]) for f in fields}}


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


async def forget_in_records(conn: asyncpg.Connection, session_ids: list[str]) -> int:
    """Take what they quote out of these sessions' `cost_events` rows, summaries and hand-off
    reasons (in the caller's transaction); the number of events changed."""
    rows = await conn.fetch(
        "SELECT session_id, seq, kind, detail FROM cost_events WHERE session_id = ANY($1::text[])"
        " AND kind = ANY($2::text[])", session_ids, [*QUOTING, "summary"])
    changed = [(r["session_id"], r["seq"], json.dumps(new)) for r in rows
               if (new := forget_detail(r["kind"], _as_dict(r["detail"]))) is not None]
    await conn.executemany(
        "UPDATE cost_events SET detail = $3::jsonb WHERE session_id = $1 AND seq = $2", changed)
    summaries = await conn.fetch(
        "SELECT id, summary FROM sessions WHERE id = ANY($1::text[]) AND summary IS NOT NULL",
        session_ids)
    await conn.executemany("UPDATE sessions SET summary = $2::jsonb WHERE id = $1", [
        (r["id"], json.dumps(new)) for r in summaries
        if (new := forget_detail("summary", _as_dict(r["summary"]))) is not None])
    await conn.execute(
        "UPDATE sessions SET escalation_reason = $2 WHERE id = ANY($1::text[])"
        " AND escalation_reason IS NOT NULL", session_ids, FORGOTTEN)
    return len(changed)


def forget_in_logs(costs_dir: Path, session_ids: list[str]) -> tuple[int, list[str]]:
    """Rewrite these sessions' closed cost logs without what they quote (blocking: a thread's
    work). Returns how many were rewritten, and the sessions still open, whose logs a running
    process appends to and which are left as they are (forget again once they have ended).
    A rewritten log keeps its events alone (a line torn by a killed process is none)."""
    rewritten, still_open = 0, []
    for session_id in session_ids:
        path = event_log_path(costs_dir, session_id)
        try:
            events = read_event_log(path)
        except FileNotFoundError:
            continue
        if not events or events[-1]["kind"] != "summary":
            still_open.append(session_id)
            continue
        forgotten = [forget_detail(e["kind"], e.get("detail") or {}) for e in events]
        if all(f is None for f in forgotten):
            continue
        kept = [e if f is None else {**e, "detail": f}
                for e, f in zip(events, forgotten, strict=True)]
        scratch = path.with_suffix(".forgetting")
        scratch.write_text("".join(json.dumps(e) + "\n" for e in kept))
        os.replace(scratch, path)
        rewritten += 1
    return rewritten, still_open
