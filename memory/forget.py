"""What sessions' cost records quote of a user, rewritten: forgotten, or its secrets hidden.

A privacy request (`sightline memory forget`) deletes what is remembered about a user
(memory/store.py `forget_user`). Their sessions keep their cost records (tokens, dollars,
timings: billing needs them), but not what those records quote: the words live assist looked
up, the text read off their screen, the reason a session was handed to a person and who it was.
`QUOTING` says per event kind which fields quote; a `Change` says what becomes of each
(`forgotten`; `memory/stored_secrets.py` hides the secrets in them instead), and it is applied
alike to the `cost_events` rows, the sessions' summaries and hand-off reasons, and the closed
sessions' JSONL cost logs.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
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


# what becomes of a quoting field's value, given the field's name (`QUOTING`, or "reason" for
# a session's hand-off reason)
Change = Callable[[str, Any], Any]


def forgotten(field: str, value: Any) -> Any:
    """A privacy request's `Change`: nothing of the user is left."""
    if isinstance(value, list):
        return []
    return None if field == "user" else FORGOTTEN


def changed_detail(kind: str, detail: dict[str, Any], change: Change) -> dict[str, Any] | None:
    """`detail` with what it quotes changed, or None when that changes nothing (so a second
    request changes nothing)."""
    if kind == "summary":  # a summary quotes its handoff
        handoff = detail.get("handoff")
        new = changed_detail("handoff", handoff, change) if isinstance(handoff, dict) else None
        return None if new is None else {**detail, "handoff": new}
    fields = {f: change(f, detail[f]) for f in QUOTING.get(kind, ())
              if detail.get(f) not in (None, FORGOTTEN, [])}
    fields = {f: value for f, value in fields.items() if value != detail[f]}
    return {**detail, **fields} if fields else None


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def _changed_rows(events: list[asyncpg.Record], sessions: list[asyncpg.Record],
                  change: Change) -> tuple[list[tuple[Any, ...]], ...]:
    """The `cost_events` rows, sessions' summaries and hand-off reasons that `change` changes,
    as the parameters of their updates."""
    details = [(r["session_id"], r["seq"], json.dumps(new)) for r in events
               if (new := changed_detail(r["kind"], _as_dict(r["detail"]), change)) is not None]
    summaries = [(r["id"], json.dumps(new)) for r in sessions if r["summary"] is not None
                 and (new := changed_detail("summary", _as_dict(r["summary"]), change))
                 is not None]
    reasons = [(r["id"], new) for r in sessions if (reason := r["escalation_reason"]) is not None
               and (new := change("reason", reason)) != reason]
    return details, summaries, reasons


async def change_records(conn: asyncpg.Connection, session_ids: list[str],
                         change: Change = forgotten) -> int:
    """Change what these sessions' `cost_events` rows, summaries and hand-off reasons quote
    (in the caller's transaction, `change` on a thread: hiding secrets scans every line); the
    number of events changed."""
    events = await conn.fetch(
        "SELECT session_id, seq, kind, detail FROM cost_events WHERE session_id = ANY($1::text[])"
        " AND kind = ANY($2::text[])", session_ids, [*QUOTING, "summary"])
    sessions = await conn.fetch(
        "SELECT id, summary, escalation_reason FROM sessions WHERE id = ANY($1::text[])",
        session_ids)
    details, summaries, reasons = await asyncio.to_thread(_changed_rows, events, sessions,
                                                          change)
    await conn.executemany(
        "UPDATE cost_events SET detail = $3::jsonb WHERE session_id = $1 AND seq = $2", details)
    await conn.executemany("UPDATE sessions SET summary = $2::jsonb WHERE id = $1", summaries)
    await conn.executemany("UPDATE sessions SET escalation_reason = $2 WHERE id = $1", reasons)
    return len(details)


def change_logs(costs_dir: Path, session_ids: list[str], change: Change = forgotten,
                ) -> tuple[int, list[str]]:
    """Rewrite these sessions' closed cost logs with what they quote changed (blocking: a
    thread's work). Returns how many were rewritten, and the sessions still open, whose logs a
    running process appends to and which are left as they are (ask again once they have
    ended). A rewritten log keeps its events alone (a line torn by a killed process is none)."""
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
        details = [changed_detail(e["kind"], e.get("detail") or {}, change) for e in events]
        if all(d is None for d in details):
            continue
        kept = [e if d is None else {**e, "detail": d}
                for e, d in zip(events, details, strict=True)]
        scratch = path.with_suffix(".rewriting")
        scratch.write_text("".join(json.dumps(e) + "\n" for e in kept))
        os.replace(scratch, path)
        rewritten += 1
    return rewritten, still_open
