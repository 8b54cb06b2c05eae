"""Sessions a killed worker left open on this machine, closed by the next worker started here.

A worker killed (SIGKILL, the OOM killer, a power cut) cannot close its sessions: their rows stay
open in Postgres (`sightline costs` shows them `(open)`), and one that ran without the database
never closes at all, so the rows it spilled beside its cost log are never imported (only a
closed session's are). The next worker started with the same data directory on the same host
looks once it runs: a session whose cost log is here and names a process of this host that no
longer runs is closed as `sightline costs ID --close` would close it (its summary folded from
its cost log, outcome `abandoned`), and its spill files become importable (by the next session,
or by this worker as it stops: `left_spills.py`). A session of another host, or whose process
id runs again (a container restarted numbers its processes from 1 again), is left alone:
`costs --close` with its idle rule decides those.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from memory.db import Database, DatabaseUnavailable, error_reason
from memory.spill_files import (
    SpillKind,
    event_log_path,
    parse_spill_name,
    read_event_log,
    read_spill_rows,
    spill_files,
    spill_path,
)
from memory.store import Store

from .config import Settings
from .pricing import BUNDLED_PRICES
from .session_record import append_summary, close_abandoned

log = logging.getLogger("sightline.worker")

SWEEP_S = 15.0  # at most this long, once, as the worker starts


def process_lives(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_process(events: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """The host and process id that ran a session, from its first `session` event."""
    process = next((e["detail"] for e in events if e["kind"] == "session"), {})
    pid = process.get("pid")
    return process.get("host"), pid if isinstance(pid, int) else None


async def offline_session(store: Store, settings: Settings, session_id: str,
                          ) -> dict[str, Any] | None:
    """A session that ran without the database and whose process died before it closed (its
    row still spilled, so no import will take it): its row is written from the spill, so that
    it can be closed; the next import then brings in its ledger and messages."""
    rows = read_spill_rows(spill_path(settings.costs_dir, session_id, SpillKind.SESSION))
    if not rows:
        return None
    await store.start_session(session_id, **rows[0])
    return await store.get_session(session_id)


async def close_left_open(settings: Settings) -> list[str]:
    """Close the sessions of this host's killed workers found under the cost-log directory
    (at most `SWEEP_S`); the ids closed."""
    try:
        return await asyncio.wait_for(_sweep(settings), SWEEP_S)
    except TimeoutError:
        log.error("closing the sessions a killed worker left open took over %.0f s: the rest "
                  "stay open (`sightline costs ID --close` closes one)", SWEEP_S)
    except DatabaseUnavailable as exc:
        log.error("could not look for sessions a killed worker left open: %s", exc)
    except Exception as exc:  # the database went away mid-way: what is closed stays closed
        log.error("closing the sessions a killed worker left open failed: %s",
                  error_reason(exc))
    return []


async def _sweep(settings: Settings) -> list[str]:
    spilled = {named[0] for path in await asyncio.to_thread(spill_files, settings.costs_dir)
               if (named := parse_spill_name(path)) is not None
               and named[1] is SpillKind.SESSION}
    db = await Database.open(settings.database_url, settings.data_dir, migrate=False,
                             connections=1)
    closed = []
    try:
        store = Store(db.pool)
        open_live = {s["id"]: s for s in await store.open_sessions() if s["source"] == "live"}
        for session_id in sorted(open_live.keys() | spilled):
            path = event_log_path(settings.costs_dir, session_id)
            if not path.is_file():
                continue  # another data directory's
            events = await asyncio.to_thread(read_event_log, path)
            if events and events[-1]["kind"] == "summary":
                continue  # closed by its worker: the spill import writes the rest back
            host, pid = session_process(events)
            if host != socket.gethostname() or pid is None or pid == os.getpid() \
                    or process_lives(pid):
                continue
            session = (open_live.get(session_id)
                       or await offline_session(store, settings, session_id))
            if session is None or session.get("ended_at") is not None:
                continue
            summary = await close_abandoned(
                store, session, events,
                why=f"its worker (pid {pid} on this host) was killed before it closed it; "
                    "closed by the worker started after it",
                prices=settings.prices_file or BUNDLED_PRICES, cost_log=path,
                recomputed_from="cost log")
            if summary is not None:
                await asyncio.to_thread(append_summary, path, events, summary)
                closed.append(session_id)
    finally:
        await db.close()
    if closed:
        log.warning("closed %d sessions a killed worker left open here (abandoned, their "
                    "summaries from their cost logs): %s", len(closed), ", ".join(closed))
    return closed
