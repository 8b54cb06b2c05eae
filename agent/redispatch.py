"""A new agent for a user whose worker died under their session.

LiveKit Cloud re-dispatches the jobs of a worker that vanished; a self-hosted LiveKit server
(v1.13) does not, and its maintainers suggest a watcher outside the server (livekit/agents
#1472). This is that watcher, built from LiveKit's own parts: the server's webhook says a
participant left a room; when it was an agent of this name and the room still holds a user but
no such agent, the worker that first claims the lost agent in Postgres asks LiveKit for a new
dispatch with the original dispatch's metadata. LiveKit places that job on a worker with room,
like any other; the new session loads the user's conversation from Postgres.

Every worker serves the webhook on `SIGHTLINE_WEBHOOK_PORT`; LiveKit's `webhook.urls` lists
them (or a load balancer in front of them), so the fleet hears of a loss while any worker lives.

The lost session cannot close its own record: `SIGHTLINE_LOST_SESSION_CLOSE_S` later, the
worker that dispatched the room again closes it, its summary folded from the cost events that
reached Postgres, unless it ended meanwhile or is still recording (a worker still ending it).

LiveKit also drops a dispatch that no worker has room for (each is offered it once). A user's
arrival is a webhook too: a worker looks at the room a little later and, while the user waits
without an agent and the dispatch has run no job, the first worker to claim it dispatches the
agent again, and goes on looking until an agent is there or the user leaves.

Nor does LiveKit (v1.13.5, seen on the real server) dispatch a room's agent again when a user comes
back to a room still open after their session ended (the session ends when its user leaves): it
runs a dispatch's job once, and lists that job as running long after its agent left. So a look that
finds the user without an agent and every job of ours ended (or running, with its agent not in the
room, assigned more than `AGENT_JOIN_S` ago or with an agent that served a session of the room)
dispatches the agent anew with the latest dispatch's metadata, under the claim `recover` takes for
that job's agent: one worker dispatches it, whether it heard the agent leave or the user come back.
What it counts against is what the agent's session recorded (`_why_gone`). Its user left first (the
session writes when, `sessions.user_left_at`, the moment it sees them go, agent/user_presence.py):
the agent left with them, and this is their coming back (`rejoin`), however soon (a page reloaded
comes back before the agent has left). A person leaving and coming back is not a session failing, so
it has its own bound, `MAX_REJOINS` in `WITHIN_S`, which only something that is not a person reaches
(a session that fails before its agent joins, which no webhook names); and the session that ended
when they left may still be closing, so its memory exchanges are left to it. The session neither
ended nor recorded its user leaving: its worker died (or it ended on its own while they stayed, or
the leave could not be written), and this is that loss (`lost`), which counts against
`MAX_PER_ROOM`, so a session that ends as it starts is not restarted for ever, and hands the lost
session's memory exchanges to the next. With the room's latest session not that agent's (none
recorded: one without the database), or one that ended with no leaving written, what the look
followed decides: a user's arrival, `rejoin`; the agent leaving, `lost`.

The agent is for the room's user alone: the one its latest session served (Postgres records
whom each served), whom the new dispatch names in its metadata (`"user"`, merged into the latest
dispatch's: the new session waits for that identity, agent/worker.py); when only people who came
after the user left it (or after it ended) wait (a newcomer to a room its user left, the user on a
new device under another identity), the latest of them to join, named too; before any session,
whoever is there (the agent takes the first to join). One who was in the room with the user and
stays after they left (a second person, a recorder) is dispatched no agent, nor served by one.
An agent `AGENT_JOIN_S` late cannot be told from one that left before its session's row was written
(LiveKit lists both jobs as running): its job is dispatched anew under a claim on its identity,
which the claimant marks dispatched once LiveKit took the new dispatch. The claimant looks at the
room again after its claim, so one that joined before that look is kept (and the claim handed
back); one that joins after the mark is removed by the workers that hear it join (`turn_away`), and
one that joined in between, by the claimant once it marked the claim: never one the claimant kept.

Asking LiveKit or Postgres may fail (LiveKit restarting answers 503, a proxy times out, a
server takes the call and does not answer until `livekit_api` gives up, the database is away
for a moment), and no later webhook names the same loss or arrival: a worker that gave up at
the first failure would leave the user in the room without an agent, for good.
So a failure is one line and the worker tries again on the same backoff as its looks (10 s,
doubling up to a minute, ±25%), for as long as the user waits without an agent. A refusal that
asking again cannot change (a 4xx: a key LiveKit does not take or that may not dispatch agents,
a request it cannot read, a room it does not have) is one line too, and the worker stops there.
The claim in Postgres is taken before LiveKit is asked (it is what keeps two workers from
dispatching one room twice), so a claim whose dispatch LiveKit did not take is either kept by
its claimant, who asks again (a lost agent: `recover`), or handed back for the next look to
claim (an unplaced dispatch, or a refusal); a call that failed may still have reached LiveKit
(its answer lost to a timeout), which the next try checks for before asking a second time. The
workers that found a lost agent claimed watch the room as after an arrival, and a worker that
shuts down (`Redispatcher.aclose`) hands back the claims of the dispatches it had not made, so
that one of them takes the room over at its next look (those committed as it cancelled the
look that asked for them too: a claim is taken in a task of its own, which `aclose` waits for).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from livekit import api
from livekit.protocol import agent, agent_dispatch, models

from memory.db import Database, DatabaseUnavailable
from memory.redispatches import (
    Claim,
    RoomUser,
    claim,
    dispatched_anew,
    mark_dispatched,
    release,
    room_user,
    served,
)
from memory.spill_files import event_log_path
from memory.store import Store

from .config import Settings
from .livekit_api import livekit_api
from .observability import REDISPATCHES
from .pricing import BUNDLED_PRICES
from .session_record import close_abandoned

log = logging.getLogger("sightline.redispatch")

WEBHOOK_PATH = "/livekit/webhook"
AGENT_NAME_ATTRIBUTE = "lk.agent.name"  # set by livekit-agents on its agent participants
MAX_PER_ROOM = 3  # re-dispatches of one room whose agent was lost ...
WITHIN_S = 600.0  # ... in this many seconds
MAX_REJOINS = 20  # re-dispatches of one room whose user came back after their session, in WITHIN_S
MAX_UNPLACED = 60  # re-dispatches of one room's dispatch that no worker took, in WITHIN_S
UNPLACED_CHECK_S = 10.0  # a user's agent may take this long to be placed; then look again ...
UNPLACED_MAX_WAIT_S = 60.0  # ... at waits doubling up to this
DISPATCH_SETTLE_S = 5.0  # a dispatch younger than this may still be offered to the workers
AGENT_JOIN_S = 30.0  # a job's agent joins its room within this long of its assignment
# what a call to LiveKit (or Postgres) fails with; `_refusal` tells those asking again won't mend
LIVEKIT_FAILURES = (OSError, TimeoutError, aiohttp.ClientError, api.TwirpError)
# asyncpg raises InterfaceError, not a PostgresError, on a connection closed under a query
DATABASE_FAILURES = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                     TimeoutError)
FAILURES = (*DATABASE_FAILURES, *LIVEKIT_FAILURES)


def _refusal(exc: BaseException) -> str | None:
    """What LiveKit said when its answer is one that asking again does not change, else None.

    That is a 4xx (but a 408 timeout or a 429 "too many"): the request itself was refused, a
    key it does not take or that may not dispatch agents (401, 403), a request it cannot read
    (400), a room it does not have (404). By status rather than Twirp code: livekit-server
    v1.13.5 answers a token it does not take with a bare 401, which the SDK reads as code
    `unknown`."""
    if not (isinstance(exc, api.TwirpError) and 400 <= exc.status < 500
            and exc.status not in (408, 429)):
        return None
    said = f"{exc.code}, HTTP {exc.status}" + (f": {exc.message}" if exc.message else "")
    if exc.status in (401, 403):
        said += " (LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be the server's, with the right "
        said += "to dispatch agents)"
    return said


def _latest(ours: list[agent_dispatch.AgentDispatch]) -> agent_dispatch.AgentDispatch | None:
    """The most recent of `ours` (LiveKit lists a room's dispatches in no order)."""
    return max(ours, key=lambda d: d.state.created_at, default=None)


def _why_gone(user: RoomUser | None, agent_identity: str, *, arrival: bool) -> str:
    """Why `agent_identity`, the room's agent, is gone: the reason its claim counts under.
    When its session is the room's latest (`user`), by what that session recorded: its user
    left first (`left_at`), the agent with them: their coming back (`rejoin`); it neither ended
    nor saw its user leave: its worker died, or it ended on its own while they stayed
    (`lost`). Else (the latest session is another's, or none is recorded, or it ended with no
    leaving recorded) by what the look followed: a user's arrival (`rejoin`), or the agent leaving
    (`lost`)."""
    if user is not None and user.agent == agent_identity:
        if user.left_at is not None:
            return "rejoin"
        if user.ended_at is None:
            return "lost"
    return "rejoin" if arrival else "lost"


def _bound(reason: str) -> int:
    """How many claims for `reason` a room may have in `WITHIN_S`."""
    return MAX_REJOINS if reason == "rejoin" else MAX_PER_ROOM


def _too_often(people: list[models.ParticipantInfo], room: str, gone: str, bound: int) -> None:
    log.error("%s waits in room %s, whose agent %s is gone, but the room's agent was "
              "dispatched again %d times in %.0f minutes already, so not again",
              ", ".join(p.identity for p in people), room, gone, bound, WITHIN_S / 60)


def _naming(metadata: str, user: RoomUser | None, people: list[models.ParticipantInfo]) -> str:
    """The latest dispatch's `metadata` for a new dispatch, naming (`"user"`) the one identity
    its session waits for (agent/worker.py), so that a bystander in the room is not served in
    their place: the room's `user` when they are among the `people` it is for (`_theirs`); else,
    when the room has a user, the newcomer among them (the user on a new device under another
    identity), the latest to join when several are: the user coming back is the latest to
    arrive, and an earlier newcomer's arrival had a look of its own. With no user recorded
    (before any session) it names nobody, for the agent to take whoever joins first (a name an
    earlier re-dispatch put there would have it wait for someone not there). Metadata that is not a
    JSON object (or one too deep or with a number too long for `json` to read), which the
    worker reads as naming no tenant, becomes one that names no tenant either."""
    try:
        fields = json.loads(metadata) if metadata.strip() else {}
    except (ValueError, RecursionError):
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    fields.pop("user", None)
    if user is not None and people:
        named = next((p for p in people if p.identity == user.identity),
                     max(people, key=lambda p: p.joined_at_ms))
        fields["user"] = named.identity
    return json.dumps(fields)


class Redispatcher:
    """The webhook endpoint of one worker, and what it does on a lost or unplaced agent."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        assert settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret
        self._settings = settings
        self._livekit: tuple[str, str, str] = (
            settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret)
        self._database_url = database_url
        self._receiver = api.WebhookReceiver(
            api.TokenVerifier(settings.livekit_api_key, settings.livekit_api_secret))
        self._db: Database | None = None
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # claims (room sid, identity) taken for a dispatch not made yet, while it is being made
        self._working: set[tuple[str, str]] = set()
        # claims (room sid, identity) this worker could not hand back (Postgres away too): its
        # own, so its next look goes on with them instead of finding them TAKEN by itself
        self._unreleased: set[tuple[str, str]] = set()
        self._claiming: set[asyncio.Task[Claim]] = set()  # claims being taken (`_claim`)
        self._opening = asyncio.Lock()  # one pool, however many ask for it before it is open

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._on_webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, port=self._settings.webhook_port).start()
        log.info("listening for LiveKit webhooks on :%d%s", self._settings.webhook_port,
                 WEBHOOK_PATH)

    async def aclose(self) -> None:
        """Stop listening and looking, then hand back the claims of the dispatches this worker
        did not make (a recovery still asking LiveKit, a claim it could not hand back before,
        one committed as its look was cancelled): the other workers found them TAKEN, and only
        their release lets one of them claim the room's user at its next look."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        work = list(self._background)
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        await asyncio.gather(*self._claiming, return_exceptions=True)  # what they take is ours
        for room_sid, identity in sorted(self._working | self._unreleased):
            await self._release(room_sid, identity)
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _on_webhook(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = self._receiver.receive(body, request.headers.get("Authorization", ""))
        except Exception as exc:  # the SDK raises bare Exceptions for bad signatures
            log.warning("ignored a webhook that is not LiveKit's (signed with another key?): %s",
                        exc)
            return web.Response(status=401, text="invalid signature")
        if event.event == "participant_left" and self._is_ours(event.participant):
            self._track(self.recover(event.room.name, event.room.sid,
                                     event.participant.identity), "redispatch")
        elif event.event == "participant_joined" and self._is_ours(event.participant):
            self._track(self.turn_away(event.room.name, event.room.sid,
                                       event.participant.identity), "replaced")
        elif (event.event == "participant_joined"
              and event.participant.kind == models.ParticipantInfo.Kind.STANDARD):
            self._track(self.place_when_free(event.room.name, event.room.sid, rejoin=True),
                        "unplaced")
        return web.Response(text="ok")

    def _track(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """Run `work` in the background until this endpoint closes."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _is_ours(self, participant: models.ParticipantInfo) -> bool:
        return (participant.kind == models.ParticipantInfo.Kind.AGENT
                and participant.attributes.get(AGENT_NAME_ATTRIBUTE) == self._settings.agent_name)

    async def _waiting(self, lk: api.LiveKitAPI, room: str) -> list[models.ParticipantInfo]:
        """The people in `room` while no agent of ours is there (none: the room is gone, empty,
        or served); `_theirs` tells which of them the agent is for."""
        try:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return []  # the room is gone: everyone left
            raise
        if any(self._is_ours(p) for p in listed.participants):
            return []
        return [p for p in listed.participants
                if p.kind == models.ParticipantInfo.Kind.STANDARD]

    async def _user(self, room: str,
                    ours: list[agent_dispatch.AgentDispatch]) -> RoomUser | None:
        """Whom `room`'s agent is for: the user of its latest session since its first dispatch
        of ours, `ours` (`redispatches.room_user`); None before any, or with none recorded (a
        session that could not reach Postgres), when it is whoever joins first, as for the
        agent itself."""
        first = min((d.state.created_at for d in ours), default=None)
        if first is None:
            return None
        return await room_user(await self._pool(), room=room, since_ns=first)

    @staticmethod
    def _theirs(people: list[models.ParticipantInfo], user: RoomUser | None,
                room: str) -> list[models.ParticipantInfo]:
        """Those of `people` the agent of `room` is for: its `user`, and whoever joined after
        the user left their latest session, or after it ended (a newcomer to a room its user
        left, or the user on a new device under another identity: while that session still
        closes too); everyone, when None. One who joined before (a second person, a recorder,
        staying after the user left) was in the room with the user, and is not dispatched an
        agent under their own identity."""
        if user is None:
            return people
        since = user.gone_since
        theirs = [p for p in people if p.identity == user.identity or (
            since is not None and p.joined_at_ms / 1000 >= since)]
        if people and not theirs:
            log.info("%s, in room %s while the session of its user %s ran, get no agent of "
                     "their own", ", ".join(p.identity for p in people), room, user.identity)
        return theirs

    async def _ours(self, lk: api.LiveKitAPI, room: str) -> list[agent_dispatch.AgentDispatch]:
        """Our agent's dispatches in `room` (none when the room is gone)."""
        try:
            listed = await lk.agent_dispatch.list_dispatch(room_name=room)
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return []
            raise
        return [d for d in listed if d.agent_name == self._settings.agent_name]

    @staticmethod
    def _retry_in(wait_s: float) -> float:
        """The next wait of the backoff from `wait_s`: ±25%, so that the workers that heard one
        webhook do not ask at the same moments."""
        return wait_s * random.uniform(0.75, 1.25)

    async def _release(self, room_sid: str, identity: str) -> None:
        """Hand back a claim whose dispatch LiveKit did not take (`redispatches.release`);
        when Postgres does not answer either, it is remembered as still this worker's."""
        self._working.discard((room_sid, identity))
        try:
            await release(await self._pool(), room_sid=room_sid, lost_identity=identity)
            self._unreleased.discard((room_sid, identity))
        except DATABASE_FAILURES as exc:
            self._unreleased.add((room_sid, identity))
            log.error("could not hand back the claim on %s of room %s: %s", identity, room_sid,
                      exc)

    async def recover(self, room: str, room_sid: str, lost_identity: str) -> bool:
        """Dispatch the agent to `room` again if its user is still there without one; True when
        this worker did.

        No other webhook will name this loss, so a failure is tried again on the backoff while
        the user waits without an agent. Until the claim, every worker that heard the webhook
        tries (the first to claim dispatches; the others find it TAKEN and watch the room as
        after an arrival, `place_when_free`, whose looks claim the same agent should its
        claimant hand it back). The claimant keeps its claim while LiveKit fails (the rest of
        the fleet must not dispatch the room as well) and asks LiveKit again: only LiveKit, so
        a database that goes away after the claim does not hold the dispatch up. A dispatch of
        ours that was not in the room when it first asked is its failed call, which reached
        LiveKit after all: not asked for twice. Should the user leave before any dispatch, or
        LiveKit refuse it for good (`_refusal`), the claim is handed back: it does not count
        against its bound. An agent that left as its user did (`_why_gone`) is no loss: the
        user back already (a page reloaded) is their coming back (`rejoin`)."""
        held = False  # this worker has the claim
        reason = "lost"  # what the claim counts under (`_why_gone`), decided before it
        before: set[str] | None = None  # our dispatches in the room when LiveKit was first asked
        lost: list[str] = []
        people: list[models.ParticipantInfo] = []
        user: RoomUser | None = None  # whom the room's agent is for, read before the claim
        wait_s = UNPLACED_CHECK_S
        while True:
            delay_s = self._retry_in(wait_s)  # before the next try, should this one fail
            try:
                async with self._api() as lk:
                    people = await self._waiting(lk, room)
                    if before is not None and any(
                            d.id not in before for d in await self._ours(lk, room)):
                        break  # the call that failed reached LiveKit; its answer did not come
                    if people and not held:
                        user = await self._user(room, await self._ours(lk, room))
                    people = self._theirs(people, user, room)
                    if not people:
                        if held:
                            await self._release(room_sid, lost_identity)
                        return False
                    if not held:
                        reason = _why_gone(user, lost_identity, arrival=False)
                        # read before the claim, which needs the database as well
                        lost = [s["id"] for s in await Store(
                            await self._pool()).open_sessions(room)] if reason == "lost" else []
                        claimed = await self._claim(room, room_sid, lost_identity, reason,
                                                    _bound(reason))
                        if claimed is Claim.TOO_OFTEN and reason == "lost":
                            log.error("room %s lost its agent %s again: it was dispatched %d "
                                      "times in %.0f minutes already, so not again", room,
                                      lost_identity, MAX_PER_ROOM, WITHIN_S / 60)
                        elif claimed is Claim.TOO_OFTEN:
                            _too_often(people, room, lost_identity, MAX_REJOINS)
                        if claimed is Claim.TAKEN:
                            self._track(self.place_when_free(room, room_sid, rejoin=False),
                                        "unplaced")
                        if claimed is not Claim.CLAIMED:
                            return False
                        held = True
                        continue  # look again: an agent that joined before the claim is seen
                    ours = await self._ours(lk, room)
                    latest = _latest(ours)
                    before = {d.id for d in ours}
                    await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                        agent_name=self._settings.agent_name, room=room,
                        metadata=_naming(latest.metadata if latest else "", user, people)))
                    break
            except FAILURES as exc:
                if refusal := _refusal(exc):
                    log.error("LiveKit refused to dispatch the agent again to room %s, whose "
                              "agent %s was lost: %s; not asking again", room, lost_identity,
                              refusal)
                    if held:
                        await self._release(room_sid, lost_identity)
                    return False
                log.error("could not dispatch the agent again to room %s, whose agent %s was "
                          "lost: %s; trying again in %.0f s", room, lost_identity, exc, delay_s)
            await asyncio.sleep(delay_s)
            wait_s = min(wait_s * 2, UNPLACED_MAX_WAIT_S)
        await self._dispatched(room, room_sid, lost_identity)
        if reason == "rejoin":
            log.warning("%s waits in room %s, whose agent %s left as its user did: "
                        "dispatched it again", ", ".join(p.identity for p in people), room,
                        lost_identity)
        else:
            log.warning("the agent %s of room %s was lost while %s stayed: dispatched it "
                        "again", lost_identity, room,
                        ", ".join(p.identity for p in people) or "its user")
        REDISPATCHES.labels(reason).inc()
        # the fleet may be full
        self._track(self.place_when_free(room, room_sid, rejoin=False), "unplaced")
        if lost and self._settings.lost_session_close_s > 0:
            self._track(self.close_lost(room, lost), "close-lost-sessions")
        return True

    async def place_when_free(self, room: str, room_sid: str, *, rejoin: bool) -> None:
        """A user joined `room` (`rejoin`), or its agent was lost. LiveKit offers the agent's
        dispatch to each worker with room once and, when none has (the whole fleet full), drops
        it: the user would wait for an agent that never comes; nor does it dispatch the agent
        again to a user who comes back after their session ended. So look after
        `UNPLACED_CHECK_S`, then at doubling waits (up to a minute, ±25%), and dispatch it again
        while the user waits without one, until an agent is there, the user leaves, a bound or
        a refusal stops it. A look that fails (LiveKit or Postgres not answering) is looked
        again at the next wait."""
        wait_s = UNPLACED_CHECK_S
        while True:
            await asyncio.sleep(self._retry_in(wait_s))
            if not await self.place_again(room, room_sid, rejoin=rejoin):
                return
            wait_s = min(wait_s * 2, UNPLACED_MAX_WAIT_S)

    async def place_again(self, room: str, room_sid: str, *, rejoin: bool) -> bool:
        """Dispatch `room`'s agent again if a user waits there without one and no agent of
        ours is on its way; whether to look again later.

        Its dispatch may have found no worker (one with no job, older than `DISPATCH_SETTLE_S`):
        the new dispatch is created before the stale ones are deleted, so the room always has
        one of ours. Or every job of ours ended (LiveKit lists a job as running after its agent
        left: one not `_on_its_way` ended too): the user came back after their session
        (`rejoin`: the look follows their arrival), or its agent was lost; a new dispatch is
        claimed as the latest job's agent, as `recover` claims it. A creation that fails hands
        its claim back, so that the next look (this worker's, or another's) may claim it again;
        a claim another worker holds is looked at again too, in case it hands it back. A failure
        to ask is a look again later, not an end: the user is still waiting; a refusal
        (`_refusal`) is. While any unplaced dispatch is young (one just created, maybe by a call
        whose answer was lost) it may still be offered to the workers: wait."""
        try:
            async with self._api() as lk:
                people = await self._waiting(lk, room)
                if not people:
                    return False  # an agent of ours is there, or no user is
                ours = await self._ours(lk, room)
                user = await self._user(room, ours)
                people = self._theirs(people, user, room)
                if not people:
                    return False
                jobs = [job for d in ours for job in d.state.jobs]
                if await self._on_its_way(room, jobs):
                    return True  # a worker is taking it: its agent is on its way
                unplaced = [d for d in ours if not d.state.jobs]
                if unplaced:
                    return await self._place_unplaced(lk, room, room_sid, unplaced, people,
                                                      user)
                if jobs:
                    return await self._dispatch_anew(lk, room, room_sid, ours, people, user,
                                                     rejoin=rejoin)
                return False  # no dispatch of ours: the room never asked for our agent
        except FAILURES as exc:
            if refusal := _refusal(exc):
                log.error("LiveKit refused to dispatch the agent of room %s again: %s; not "
                          "asking again", room, refusal)
                return False
            log.error("could not check whether a worker took the agent of room %s: %s; "
                      "looking again later", room, exc)
            return True

    async def _on_its_way(self, room: str, jobs: list[agent.Job]) -> bool:
        """Whether a worker is taking one of `room`'s `jobs`, its agent on its way while none
        of ours is in the room: a job pending, or running, assigned less than `AGENT_JOIN_S`
        ago, whose agent served no session of the room (one that did came and went: its user
        left and came back within `AGENT_JOIN_S`, and waits for no one). Its session may still
        be closing, or its worker was killed mid-session: `_why_gone` tells which the claim
        is."""
        if any(job.state.status == agent.JobStatus.JS_PENDING for job in jobs):
            return True
        assigned = time.time_ns() - int(AGENT_JOIN_S * 1e9)
        coming = {job.state.participant_identity for job in jobs
                  if job.state.status == agent.JobStatus.JS_RUNNING
                  and job.state.started_at > assigned}
        if not coming:
            return False
        return bool(coming - await served(await self._pool(), room=room, agents=list(coming)))

    async def _place_unplaced(self, lk: api.LiveKitAPI, room: str, room_sid: str,
                              unplaced: list[agent_dispatch.AgentDispatch],
                              people: list[models.ParticipantInfo],
                              user: RoomUser | None) -> bool:
        """`place_again` for a room whose dispatches no worker took."""
        settled = time.time_ns() - int(DISPATCH_SETTLE_S * 1e9)
        if any(d.state.created_at > settled for d in unplaced):
            return True  # too young to tell
        dispatch = _latest(unplaced)
        assert dispatch is not None
        claimed = await self._dispatch(lk, room, room_sid, f"dispatch {dispatch.id}",
                                       "unplaced", MAX_UNPLACED,
                                       _naming(dispatch.metadata, user, people))
        if claimed is Claim.TOO_OFTEN:
            log.error("no worker has had room for the agent of room %s: dispatched again %d "
                      "times in %.0f minutes, so not again", room, MAX_UNPLACED, WITHIN_S / 60)
            return False
        if claimed is Claim.TAKEN:
            return True
        try:
            for stale in unplaced:  # a dispatch no worker took runs no job: nothing stops
                await lk.agent_dispatch.delete_dispatch(stale.id, room)
        except LIVEKIT_FAILURES as exc:
            log.error("dispatched the agent of room %s again but could not delete its "
                      "dispatch that no worker took: %s", room, exc)
        log.warning("no worker had room for the agent of room %s, where %s waits: "
                    "dispatched it again", room, ", ".join(p.identity for p in people))
        REDISPATCHES.labels("unplaced").inc()
        return True

    async def _dispatch_anew(self, lk: api.LiveKitAPI, room: str, room_sid: str,
                             ours: list[agent_dispatch.AgentDispatch],
                             people: list[models.ParticipantInfo], user: RoomUser | None, *,
                             rejoin: bool) -> bool:
        """`place_again` for a room whose jobs of ours all ended: claimed as the user's coming
        back (`rejoin`, bound by `MAX_REJOINS`) or as the loss of the agent (`MAX_PER_ROOM`),
        as `_why_gone` tells (`rejoin`: the look follows an arrival)."""
        had_agents = [job for d in ours for job in d.state.jobs
                      if job.state.participant_identity]
        if not had_agents:
            return False  # each ended at its offer, without an agent: none to replace
        gone = max(had_agents, key=lambda job: job.state.started_at).state.participant_identity
        latest = _latest(ours)
        assert latest is not None
        reason = _why_gone(user, gone, arrival=rejoin)
        claimed = await self._dispatch(lk, room, room_sid, gone, reason, _bound(reason),
                                       _naming(latest.metadata, user, people))
        if claimed is Claim.TOO_OFTEN:
            _too_often(people, room, gone, _bound(reason))
            return False
        if claimed is Claim.CLAIMED:
            log.warning("%s waits in room %s, whose agent %s is gone (its session ended): "
                        "dispatched it again", ", ".join(p.identity for p in people), room, gone)
            REDISPATCHES.labels(reason).inc()
        return True

    async def _dispatch(self, lk: api.LiveKitAPI, room: str, room_sid: str, identity: str,
                        reason: str, max_per_room: int, metadata: str) -> Claim:
        """Claim `identity` in `room` (`_claim`) and, when this worker has it and still finds
        no agent of ours there (one that joined before the claim: see `turn_away`), dispatch
        the agent with `metadata` (`_dispatched`); an agent found hands the claim back,
        `TAKEN`: the next look ends there. A creation LiveKit did not take hands the claim back
        and raises; a claim this worker could not hand back earlier is its own still."""
        if (room_sid, identity) in self._unreleased:
            self._working.add((room_sid, identity))
        elif (claimed := await self._claim(room, room_sid, identity, reason,
                                           max_per_room)) is not Claim.CLAIMED:
            return claimed
        if not await self._waiting(lk, room):
            await self._release(room_sid, identity)
            return Claim.TAKEN
        try:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name=self._settings.agent_name, room=room, metadata=metadata))
        except LIVEKIT_FAILURES:
            await self._release(room_sid, identity)
            raise
        await self._dispatched(room, room_sid, identity,
                               of_agent=reason != "unplaced")
        return Claim.CLAIMED

    async def _dispatched(self, room: str, room_sid: str, identity: str, *,
                          of_agent: bool = True) -> None:
        """LiveKit took the dispatch made under this worker's claim on `identity` in `room`:
        the claim is marked dispatched (`redispatches.mark_dispatched`), from when on the
        workers that hear that agent join remove it (`turn_away`); one that joined since the
        claimant's last look, before the mark, is removed here. Neither failing undoes the
        dispatch: each is one line (should that agent join after all, the user has two). A
        claim on a dispatch no worker took (not `of_agent`: "dispatch AD_…") has no agent
        to remove."""
        self._working.discard((room_sid, identity))
        self._unreleased.discard((room_sid, identity))
        try:
            await mark_dispatched(await self._pool(), room_sid=room_sid, lost_identity=identity)
        except DATABASE_FAILURES as exc:
            log.warning("could not record that room %s was dispatched its agent again in place "
                        "of %s: %s; should that agent join after all, it stays", room, identity,
                        exc)
        if of_agent:
            await self._remove_late(room, identity)

    async def _claim(self, room: str, room_sid: str, identity: str, reason: str,
                     max_per_room: int) -> Claim:
        """`redispatches.claim`, in a task of its own that a cancelled look does not cancel:
        `aclose` waits for it, and a claim it took (`_working`, from the moment it is taken) is
        handed back even when it was committed as the look that asked for it was cancelled."""
        async def claiming() -> Claim:
            taken = await claim(await self._pool(), room=room, room_sid=room_sid,
                                lost_identity=identity, max_per_room=max_per_room,
                                within_s=WITHIN_S, reason=reason)
            if taken is Claim.CLAIMED:
                self._working.add((room_sid, identity))
            return taken

        task = asyncio.create_task(claiming(), name="claim")
        self._claiming.add(task)
        task.add_done_callback(self._claiming.discard)
        return await asyncio.shield(task)

    async def turn_away(self, room: str, room_sid: str, identity: str) -> bool:
        """An agent of ours joined `room`: remove it when the room was dispatched its agent
        anew in its place (a claim on its identity, marked dispatched: its agent took longer
        than `AGENT_JOIN_S` to join, or left and came back), so that the user does not have
        two agents; True when this worker removed it. LiveKit cannot tell a job whose agent is
        still coming from one whose agent left (it lists both as running), but the claim can.
        A claim not marked yet is left to its claimant, which may find this agent at its look
        after the claim and keep it (`_dispatch`), or remove it once it marks it
        (`_dispatched`). Postgres not answering keeps the agent, with one line."""
        try:
            if not await dispatched_anew(await self._pool(), room_sid=room_sid,
                                         lost_identity=identity):
                return False
        except DATABASE_FAILURES as exc:
            log.warning("could not tell whether room %s was dispatched its agent again in place "
                        "of %s, which joined it: %s; the agent stays", room, identity, exc)
            return False
        return await self._remove_late(room, identity)

    async def _remove_late(self, room: str, identity: str) -> bool:
        """Remove the agent `identity`, given up for gone and dispatched anew, from `room`;
        True when this worker removed it (False: not there, or LiveKit failed, one line)."""
        try:
            async with self._api() as lk:
                await lk.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity=identity))
        except LIVEKIT_FAILURES as exc:
            if isinstance(exc, api.TwirpError) and exc.code == api.TwirpErrorCode.NOT_FOUND:
                return False  # not there: it never joined, left, or another worker removed it
            log.error("could not remove the agent %s from room %s, which was dispatched its "
                      "agent again in its place: %s", identity, room, exc)
            return False
        log.warning("removed the agent %s from room %s: it joined after the room was "
                    "dispatched its agent again", identity, room)
        return True

    async def close_lost(self, room: str, session_ids: list[str]) -> None:
        """Close the records of the sessions lost with `room`'s agent once they have had
        `lost_session_close_s` to close themselves: one still open and recording nothing for
        as long had its worker die (a worker still ending it records events; its own summary
        would replace this one anyway)."""
        wait_s = self._settings.lost_session_close_s
        await asyncio.sleep(wait_s)
        try:
            store = Store(await self._pool())
            for session in await store.open_sessions(room):
                session_id = session["id"]
                if session_id not in session_ids:
                    continue  # the session started in its place
                events = await store.session_events(session_id)
                idle_s = time.time() - max((float(e["ts"]) for e in events), default=0.0)
                if idle_s < wait_s:
                    log.info("session %s of room %s, whose agent was lost, recorded an event "
                             "%.0f s ago: left for its worker to close", session_id, room, idle_s)
                    continue
                summary = await close_abandoned(
                    store, session, events,
                    why=(f"its agent left room {room} while the user stayed, and its worker did "
                         "not close it (lost); closed by the worker that dispatched the room "
                         "again"),
                    prices=self._settings.prices_file or BUNDLED_PRICES,
                    cost_log=event_log_path(self._settings.costs_dir, session_id),
                    recomputed_from="cost_events")
                if summary is not None:
                    log.warning("closed the record of session %s of room %s, lost with its "
                                "worker: $%.6f over %d recorded events", session_id, room,
                                summary["total_cost_usd"], len(events))
        except DATABASE_FAILURES as exc:
            log.error("could not close the sessions %s lost with room %s's agent: %s (`sightline "
                      "costs ID --close` closes them)", ", ".join(session_ids), room, exc)

    def _api(self) -> AbstractAsyncContextManager[api.LiveKitAPI]:
        return livekit_api(*self._livekit)

    async def _pool(self) -> asyncpg.Pool:
        """This worker's pool for the fleet's records, opened by the first caller: a burst of
        webhooks arriving before it is open waits for that one instead of each opening its own
        (all but one of them never closed)."""
        async with self._opening:
            if self._db is None:
                # one claim at a time: the fleet's connection budget counts one per worker here
                self._db = await Database.open(self._database_url, self._settings.data_dir,
                                               migrate=False, connections=1)
        return self._db.pool
