"""Which worker of a fleet dispatches a room again (its agent lost, or its dispatch taken by
no worker): the first to claim it. A claim is committed before LiveKit is asked (it is what
keeps two workers from dispatching the room twice), so a claim whose dispatch LiveKit never
took is handed back (`release`) by its claimant (agent/redispatch.py says when)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import asyncpg

from .backlog import release_lost

_IS_CLAIMED = "SELECT true FROM redispatches WHERE room_sid = $1 AND lost_identity = $2"


class Claim(Enum):
    CLAIMED = "claimed"  # this caller re-dispatches
    TAKEN = "taken"  # another worker claimed this lost agent
    TOO_OFTEN = "too_often"  # the room was re-dispatched too often lately


async def claim(pool: asyncpg.Pool, *, room: str, room_sid: str, lost_identity: str,
                max_per_room: int, within_s: float, reason: str = "lost") -> Claim:
    """`CLAIMED` for exactly one caller per lost agent (one that left its room while its user
    stayed, or whose session ended before its user came back: both name it, so only one of
    them dispatches it again) or, `reason="unplaced"`, per dispatch no worker took
    (`lost_identity` names it); and only while the room has had fewer than
    `max_per_room` re-dispatches for `reason` in the last `within_s` seconds (a session that
    fails at every start must not be restarted forever). A claim already taken is `TAKEN`
    whatever the count: its claimant may yet hand it back, and the others must go on watching
    for that rather than stop as if the room had been re-dispatched too often. The claimant of
    a lost agent (`reason="lost"`) also hands back the memory exchanges the room's lost
    session had claimed (`backlog.release_lost`); that of a user who came back
    (`reason="rejoin"`) does not: the session that ended when they left may still be closing,
    analysing those exchanges itself."""
    async with pool.acquire() as conn, conn.transaction():
        # one claimant per room at a time, so the count below cannot be raced past the limit
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", room_sid)
        if await conn.fetchval(_IS_CLAIMED, room_sid, lost_identity):
            return Claim.TAKEN
        recent = await conn.fetchval(
            "SELECT count(*) FROM redispatches WHERE room_sid = $1 AND reason = $3"
            " AND at > now() - make_interval(secs => $2)", room_sid, within_s, reason)
        if recent >= max_per_room:
            return Claim.TOO_OFTEN
        await conn.execute(
            "INSERT INTO redispatches (room_sid, lost_identity, room, reason)"
            " VALUES ($1, $2, $3, $4)", room_sid, lost_identity, room, reason)
        if reason == "lost":
            await release_lost(conn, room)
        return Claim.CLAIMED


async def release(pool: asyncpg.Pool, *, room_sid: str, lost_identity: str) -> bool:
    """Hand back a claim whose dispatch LiveKit never took, so that it does not count against
    the room's `max_per_room` (a re-dispatch that did not happen) and the next caller naming
    the same lost agent or unplaced dispatch gets `CLAIMED` again. What `claim` handed back of
    the lost session's memory claims stays handed back: those were free for the session that
    replaces it, whoever dispatches it. True when there was such a claim."""
    deleted = await pool.fetchval(
        "DELETE FROM redispatches WHERE room_sid = $1 AND lost_identity = $2 RETURNING true",
        room_sid, lost_identity)
    return bool(deleted)


async def mark_dispatched(pool: asyncpg.Pool, *, room_sid: str, lost_identity: str) -> None:
    """Record that LiveKit took the dispatch made under the claim on `lost_identity` in the room
    `room_sid`: from now on an agent that joins under that identity is one given up for gone
    (`dispatched_anew`). Until then its claimant may still find that agent in the room and keep
    it, handing the claim back."""
    await pool.execute(
        "UPDATE redispatches SET dispatched = true WHERE room_sid = $1 AND lost_identity = $2",
        room_sid, lost_identity)


async def dispatched_anew(pool: asyncpg.Pool, *, room_sid: str, lost_identity: str) -> bool:
    """Whether the room `room_sid` was dispatched its agent anew under a claim on
    `lost_identity` (`mark_dispatched`): an agent that joins under that identity was given up
    for gone, and agent/redispatch.py removes it, so that its user does not have two. A claim
    not dispatched yet is not enough: its claimant may keep that agent instead."""
    return bool(await pool.fetchval(
        "SELECT dispatched FROM redispatches WHERE room_sid = $1 AND lost_identity = $2",
        room_sid, lost_identity))


@dataclass(frozen=True)
class RoomUser:
    """The user of a room's latest session, the agent that served it, and, in seconds since
    the epoch, when the user left the room in a way the session ends on (`left_at`, migration
    0027: None while they are in it or it waits for them to come back, or when the session
    could not write it) and when the session ended (`ended_at`, once it has closed: None while
    it runs or closes)."""

    identity: str
    ended_at: float | None
    left_at: float | None = None
    agent: str | None = None

    @property
    def gone_since(self) -> float | None:
        """Since when the user has not been in the session: their leaving, else its end."""
        return self.left_at if self.left_at is not None else self.ended_at


async def served(pool: asyncpg.Pool, *, room: str, agents: list[str]) -> set[str]:
    """Those of `agents` (participant identities) that served a live session of `room`: each
    joined the room and took its user (migration 0026)."""
    rows = await pool.fetch(
        "SELECT DISTINCT agent FROM sessions WHERE room = $1 AND source = 'live'"
        " AND agent = ANY($2::text[])", room, agents)
    return {row["agent"] for row in rows}


async def room_user(pool: asyncpg.Pool, *, room: str, since_ns: int) -> RoomUser | None:
    """The user of the latest live session of `room` started since `since_ns` (nanoseconds
    since the epoch, LiveKit's time of the room's first dispatch of the agent: a room name used
    again does not name its earlier users), the one the room's agent is dispatched for, with
    its agent and when the user left and the session ended; None when there is none."""
    row = await pool.fetchrow(
        "SELECT user_id, agent, extract(epoch FROM ended_at)::float8 AS ended_at,"
        " extract(epoch FROM user_left_at)::float8 AS left_at FROM sessions"
        " WHERE room = $1 AND source = 'live' AND started_at >= to_timestamp($2)"
        " ORDER BY started_at DESC LIMIT 1", room, since_ns / 1e9)
    return None if row is None else RoomUser(row["user_id"], row["ended_at"], row["left_at"],
                                             row["agent"])
