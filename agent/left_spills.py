"""Spill files a worker leaves behind: imported before it exits, when the database answers.

A session that ran without the database writes its rows to spill files beside its cost log,
and the next session that opens on the database imports them (memory/spill_recovery.py). A
worker stopped before any such session opened on it (scaled down after an outage) may take its
disk along: a container's filesystem goes with it. So a stopping worker imports what is left
itself, for at most `IMPORT_S`, and says in one line what stays, and where.
"""

from __future__ import annotations

import asyncio
import logging

from memory.db import Database, DatabaseUnavailable, error_reason
from memory.spill_files import spill_files
from memory.spill_recovery import SpillTargets, recover_spills
from memory.store import Store

from .components import make_embedder
from .config import Settings
from .spill_billing import billing_spills, record_spilled

log = logging.getLogger("sightline.worker")

IMPORT_S = 15.0  # within the stopping worker's deadline (agent/worker.py, 40 s)


async def import_left_spills(settings: Settings) -> None:
    """Import the spill files of closed sessions under the cost-log directory, if any."""
    left = await asyncio.to_thread(spill_files, settings.costs_dir)
    if not left:
        return
    where = f"{len(left)} spill files of sessions that ran without the database stay in " \
            f"{settings.costs_dir}"
    try:
        db = await Database.open(settings.database_url, settings.data_dir, migrate=False,
                                 connections=1)
    except DatabaseUnavailable as exc:
        log.error("%s: %s (the next session opened with this data directory imports them)",
                  where, exc)
        return
    embedder = make_embedder(settings, record=record_spilled)
    try:
        async with billing_spills(settings, Store(db.pool)):
            report = await asyncio.wait_for(
                recover_spills(settings.costs_dir, SpillTargets.on(db.pool, embedder)), IMPORT_S)
    except TimeoutError:
        log.error("%s: their import took over %.0f s (the next session opened with this data "
                  "directory imports the rest)", where, IMPORT_S)
    except Exception as exc:  # the database went away mid-way: the files stay, whole
        log.error("%s: their import failed (%s)", where, error_reason(exc))
    else:
        log.info("imported %d rows from %d spill files before exiting%s", report.rows,
                 report.files, f"; {len(report.left)} stay: " + "; ".join(report.left)
                 if report.left else "")
    finally:
        await embedder.aclose()
        await db.close()
