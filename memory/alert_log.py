"""The `alerts` table: which alert was raised for which tenant and window, at its highest
severity, and whether the webhook took it. Claiming a key is how concurrent checks send an alert
once per severity it rises to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

_SEVERITIES = ("warning", "critical")  # in rising order


async def claim(pool: asyncpg.Pool, key: str, alert: dict[str, Any]) -> bool:
    """Record the alert under `key`; False when it was raised for that window already at the
    same or a higher severity. A warning that turns critical within the window is raised again:
    its row becomes the critical alert, not yet delivered (one atomic statement, so of two
    checks at once only one raises it)."""
    claimed = await pool.fetchval(
        "INSERT INTO alerts (key, tenant, name, severity, payload) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (key) DO UPDATE SET severity = excluded.severity,"
        " payload = excluded.payload, raised_at = now(), delivered_at = NULL"
        " WHERE array_position($6::text[], excluded.severity)"
        " > array_position($6::text[], alerts.severity) RETURNING key",
        key, alert["tenant"], alert["alert"], alert["severity"], json.dumps(alert),
        list(_SEVERITIES))
    return claimed is not None


@dataclass
class Undelivered:
    """Alerts the webhook has not taken yet, locked while they are sent."""

    alerts: dict[str, dict[str, Any]]  # by key
    _conn: asyncpg.Connection

    async def mark_delivered(self, keys: list[str]) -> None:
        await self._conn.execute(
            "UPDATE alerts SET delivered_at = now() WHERE key = ANY($1::text[])", keys)


@asynccontextmanager
async def undelivered(pool: asyncpg.Pool, tenant: str, since: datetime
                      ) -> AsyncIterator[Undelivered]:
    """The tenant's alerts raised since `since` that the webhook has not taken (a receiver
    that was down when they were raised), locked until the block ends so that a concurrent
    check skips them instead of sending them twice."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT key, payload FROM alerts WHERE tenant = $1 AND delivered_at IS NULL"
            " AND raised_at >= $2 ORDER BY raised_at FOR UPDATE SKIP LOCKED", tenant, since)
        yield Undelivered({r["key"]: json.loads(r["payload"]) for r in rows}, conn)


async def recent(pool: asyncpg.Pool, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT key, name, severity, payload, raised_at, delivered_at FROM alerts"
        " WHERE tenant = $1 ORDER BY raised_at DESC LIMIT $2", tenant, limit)
    return [{"key": r["key"], "alert": r["name"], "severity": r["severity"],
             "message": json.loads(r["payload"])["message"],
             "raised_at": r["raised_at"].isoformat(),
             "delivered_at": r["delivered_at"].isoformat() if r["delivered_at"] else None}
            for r in rows]
