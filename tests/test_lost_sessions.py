"""The record of a session lost with its worker, closed by the worker that re-dispatched its room;
and a re-dispatch whose LiveKit call fails.

Protects: a lost session still open and silent for `SIGHTLINE_LOST_SESSION_CLOSE_S` is closed
as abandoned, its summary folded from the cost events Postgres holds; one still recording (a
worker still ending it) and one that ended by itself are left as they are; a database that
does not answer is one line. A claimed re-dispatch whose LiveKit call fails (a 503 while
LiveKit restarts, a timeout, Postgres dropping its connection) is tried again until the user
has an agent, once, and a room's dispatch that no worker took is never deleted before its
replacement exists. A worker that asks about a lost agent another holds finds it taken, even at
the room's last allowed re-dispatch, and goes on watching: the room is dispatched when the
claimant shuts down. A user who comes back to their room gets an agent each time, without using
up the 3 restarts of a session that fails at every start (which stay capped), nor taking the
memory exchanges of their session that is still closing, even when back before their agent left;
a newcomer who joined after the user left gets one while that session still closes. The live
path (a SIGKILLed worker, the webhook, the re-dispatch) is tests/test_fleet.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

import asyncpg
import pytest
from livekit import api
from livekit.protocol import agent, agent_dispatch, models

from agent.config import Settings
from agent.redispatch import (
    AGENT_JOIN_S,
    AGENT_NAME_ATTRIBUTE,
    MAX_PER_ROOM,
    WITHIN_S,
    Redispatcher,
)
from memory import backlog
from memory.db import Database
from memory.redispatches import Claim, claim
from memory.store import Store

LIVEKIT = {"livekit_url": "ws://127.0.0.1:9", "livekit_api_key": "k",
           "livekit_api_secret": "s" * 32, "lost_session_close_s": 0.5}


def _event(session_id: str, seq: int, ts: float, kind: str = "chat") -> dict:
    return {"session_id": session_id, "tenant": "acme", "seq": seq, "ts": ts, "kind": kind,
            "cost_usd": 0.0, "detail": {}}


async def test_a_silent_lost_session_is_closed_and_the_others_are_left(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sightline.redispatch")
    store = Store(db.pool)
    for session_id in ("s-silent", "s-recording", "s-ended"):
        await store.start_session(session_id, tenant="acme", user_id="u-1", room="r1",
                                  source="live", provider="gemini", model="m")
    long_ago = time.time() - 600
    await store.add_cost_events([_event("s-silent", 1, long_ago, "session"),
                                 _event("s-silent", 2, long_ago + 1),
                                 _event("s-recording", 1, long_ago, "session"),
                                 _event("s-recording", 2, time.time() + 5)])
    await store.end_session("s-ended", 0.25, {"outcome": "completed", "by": "itself"})
    redispatcher = Redispatcher(settings.with_overrides(**LIVEKIT), settings.database_url or "")
    try:
        await redispatcher.close_lost("r1", ["s-silent", "s-recording", "s-ended", "s-gone"])
    finally:
        await redispatcher.aclose()

    rows = {r["id"]: r for r in await db.pool.fetch("SELECT * FROM sessions")}
    closed = json.loads(rows["s-silent"]["summary"])
    assert rows["s-silent"]["ended_at"] is not None and closed["outcome"] == "abandoned"
    assert "its agent left room r1 while the user stayed" in closed["error"]
    assert closed["recomputed_from"] == "cost_events" and closed["duration_s"] == 1.0
    assert rows["s-recording"]["ended_at"] is None
    assert json.loads(rows["s-ended"]["summary"]) == {"outcome": "completed", "by": "itself"}
    assert any(m.startswith("closed the record of session s-silent of room r1, lost with its "
                            "worker: $0.000000 over 2 recorded events") for m in caplog.messages)
    assert any(m.startswith("session s-recording of room r1, whose agent was lost, recorded an "
                            "event") for m in caplog.messages)


async def test_a_database_that_does_not_answer_is_one_line(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    redispatcher = Redispatcher(settings.with_overrides(**LIVEKIT),
                                "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    try:
        await redispatcher.close_lost("r1", ["s-1"])
    finally:
        await redispatcher.aclose()
    [line] = [m for m in caplog.messages if "could not close" in m]
    assert line.startswith("could not close the sessions s-1 lost with room r1's agent: ")
    assert "sightline costs ID --close" in line
    assert not any(r.exc_info for r in caplog.records)


AGENT = "sightline"
UNAVAILABLE = api.TwirpError(api.TwirpErrorCode.UNAVAILABLE, "livekit restarting", status=503)


class FakeLiveKit:
    """LiveKit's room and dispatch API for one room where a user waits without an agent.
    `create_dispatch` fails `fail` times with `error` (after LiveKit took the dispatch when
    `reached`: a timeout that lost the answer), then works: the dispatch is placed and its
    agent joins. `calls` is what was asked, in order."""

    def __init__(self, dispatches: list[agent_dispatch.AgentDispatch], *, fail: int,
                 error: Exception = UNAVAILABLE, reached: bool = False) -> None:
        self.dispatches = list(dispatches)
        self.fail, self.error, self.reached = fail, error, reached
        self.calls: list[str] = []
        self._created = asyncio.Condition()  # notified as a dispatch is asked for
        self.participants = [models.ParticipantInfo(
            identity="user-1", kind=models.ParticipantInfo.Kind.STANDARD)]
        self.room = SimpleNamespace(list_participants=self._list_participants,
                                    remove_participant=self._remove_participant)
        self.agent_dispatch = SimpleNamespace(list_dispatch=self._list_dispatch,
                                              create_dispatch=self._create,
                                              delete_dispatch=self._delete)

    async def _list_participants(self, request: api.ListParticipantsRequest) -> SimpleNamespace:
        return SimpleNamespace(participants=list(self.participants))

    async def _remove_participant(self, request: api.RoomParticipantIdentity) -> None:
        """As LiveKit does: NOT_FOUND for one not in the room (the claimant's removal of a lost
        agent that joins late, after its dispatch anew)."""
        if not any(p.identity == request.identity for p in self.participants):
            raise api.TwirpError(api.TwirpErrorCode.NOT_FOUND, "participant not found",
                                 status=404)
        self.participants = [p for p in self.participants if p.identity != request.identity]

    async def _list_dispatch(self, room_name: str) -> list[agent_dispatch.AgentDispatch]:
        return list(self.dispatches)

    async def _create(self, request: api.CreateAgentDispatchRequest) -> None:
        try:
            if self.fail:
                self.fail -= 1
                self.calls.append(f"create {request.room}: failed")
                if self.reached:
                    self._placed(request)
                raise self.error
            self.calls.append(f"create {request.room} {request.metadata}")
            self._placed(request)
        finally:
            async with self._created:
                self._created.notify_all()

    async def created_until(self, done: Callable[[], bool]) -> None:
        """Wait for the calls to create a dispatch until `done()`."""
        async with self._created:
            await self._created.wait_for(done)

    def _placed(self, request: api.CreateAgentDispatchRequest) -> None:
        dispatch = agent_dispatch.AgentDispatch(id=f"AD_new{len(self.dispatches)}",
                                                agent_name=request.agent_name,
                                                room=request.room, metadata=request.metadata)
        dispatch.state.created_at = time.time_ns()
        job = dispatch.state.jobs.add()
        job.state.status = agent.JobStatus.JS_RUNNING
        job.state.started_at = dispatch.state.created_at
        job.state.participant_identity = f"agent-{dispatch.id}"
        self.dispatches.append(dispatch)
        self.participants.append(models.ParticipantInfo(
            identity=f"agent-{dispatch.id}", kind=models.ParticipantInfo.Kind.AGENT,
            attributes={AGENT_NAME_ATTRIBUTE: request.agent_name}))

    async def _delete(self, dispatch_id: str, room: str) -> None:
        self.calls.append(f"delete {dispatch_id}")
        self.dispatches = [d for d in self.dispatches if d.id != dispatch_id]

    def agents_gone(self) -> None:
        """The room's agents left a while ago (LiveKit goes on listing their jobs as running,
        assigned long before)."""
        self.participants = [p for p in self.participants
                             if p.kind != models.ParticipantInfo.Kind.AGENT]
        for dispatch in self.dispatches:
            for job in dispatch.state.jobs:
                job.state.started_at -= int(2 * AGENT_JOIN_S * 1e9)

    def created(self) -> list[str]:
        return [call for call in self.calls if call.startswith("create")]

    async def __aenter__(self) -> FakeLiveKit:
        return self

    async def __aexit__(self, *exc: object) -> bool:
        return False


def a_dispatch(dispatch_id: str, room: str, *, age_s: float,
               job: agent.JobStatus.ValueType | None = None,
               agent_identity: str = "") -> agent_dispatch.AgentDispatch:
    """A dispatch of ours, with a `job` whose agent was `agent_identity` (none: it never had
    one) when given."""
    dispatch = agent_dispatch.AgentDispatch(id=dispatch_id, agent_name=AGENT, room=room,
                                            metadata='{"tenant": "acme"}')
    dispatch.state.created_at = time.time_ns() - int(age_s * 1e9)
    if job is not None:
        ran = dispatch.state.jobs.add()
        ran.state.status = job
        ran.state.participant_identity = agent_identity
    return dispatch


@pytest.fixture
def fleet_of_two(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                 ) -> tuple[Settings, list[Redispatcher]]:
    """Two workers' redispatchers, looking again at short waits."""
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 0.05)
    worker_settings = settings.with_overrides(agent_name=AGENT,
                                              **{**LIVEKIT, "lost_session_close_s": 0.0})
    return worker_settings, [Redispatcher(worker_settings, settings.database_url or "")
                             for _ in range(2)]


def on(workers: list[Redispatcher], lk: FakeLiveKit) -> None:
    for worker in workers:
        worker._api = lambda: lk  # type: ignore[method-assign]


async def claims(db: Database) -> list[tuple[str, str]]:
    return [(r["lost_identity"], r["reason"]) for r in
            await db.pool.fetch("SELECT lost_identity, reason FROM redispatches ORDER BY at")]


async def test_a_lost_agent_whose_dispatch_fails_after_the_claim_is_dispatched_on_a_later_try(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The webhook of the lost agent reaches both workers; the claimant's call to LiveKit
    fails (503). The claimant tries again on the backoff and the room gets its agent, once,
    with the lost dispatch's metadata; the other worker found the claim taken."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    _, workers = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_lost", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING)],
                     fail=1)
    on(workers, lk)
    try:
        async with asyncio.timeout(30):  # it would loop on a bug; not a measure of time
            done = await asyncio.gather(*(w.recover("r1", "RM_1", "agent-AJ_1")
                                          for w in workers))
    finally:
        for worker in workers:
            await worker.aclose()
    assert sorted(done) == [False, True]
    assert lk.calls == ["create r1: failed", 'create r1 {"tenant": "acme"}']
    assert any(p.kind == models.ParticipantInfo.Kind.AGENT for p in lk.participants)
    assert await claims(db) == [("agent-AJ_1", "lost")]
    assert any(m.startswith("could not dispatch the agent again to room r1, whose agent "
                            "agent-AJ_1 was lost: ") and "; trying again in " in m
               for m in caplog.messages)
    assert any("dispatched it again" in m for m in caplog.messages)


async def test_a_dispatch_call_that_reached_livekit_but_lost_its_answer_is_not_asked_twice(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
) -> None:
    """A timeout after LiveKit took the dispatch: the next try finds the dispatch it asked for
    (one that was not in the room before) instead of dispatching a second agent."""
    _, workers = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_lost", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING)],
                     fail=1, error=TimeoutError(), reached=True)
    on(workers[:1], lk)
    try:
        async with asyncio.timeout(30):
            assert await workers[0].recover("r1", "RM_1", "agent-AJ_1") is True
    finally:
        for worker in workers:
            await worker.aclose()
    assert lk.calls == ["create r1: failed"]  # and the agent it asked for is there
    assert [d.id for d in lk.dispatches] == ["AD_lost", "AD_new1"]
    assert await claims(db) == [("agent-AJ_1", "lost")]


async def test_the_claim_of_a_lost_agent_is_handed_back_when_its_user_leaves_undispatched(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LiveKit keeps failing and the user leaves: the worker stops, and the claim of a
    re-dispatch that never happened is handed back (it would count against the room's
    MAX_PER_ROOM, and keep the next webhook naming this agent out)."""
    _, workers = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_lost", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING)],
                     fail=1_000)
    on(workers[:1], lk)
    try:
        async with asyncio.timeout(30):
            recovering = asyncio.create_task(workers[0].recover("r1", "RM_1", "agent-AJ_1"))
            while not any(m.startswith("could not dispatch the agent again to room r1")
                          for m in caplog.messages):
                assert not recovering.done(), recovering
                await asyncio.sleep(0.01)
            assert await claims(db) == [("agent-AJ_1", "lost")]  # held while it tries again
            lk.participants.clear()  # the user leaves
            assert await recovering is False
    finally:
        for worker in workers:
            await worker.aclose()
    assert lk.calls and set(lk.calls) == {"create r1: failed"}
    assert await claims(db) == []


@pytest.mark.parametrize("handing_back", [
    None, OSError("connection refused"), asyncpg.InterfaceError("connection is closed"),
], ids=["works", "fails", "connection closed"])
async def test_an_unplaced_dispatch_is_deleted_only_once_its_replacement_exists(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    handing_back: Exception | None,
) -> None:
    """A user's dispatch that no worker took; both workers look. Creating its replacement
    fails once: the old dispatch stays in the room, and a later look creates the replacement,
    then deletes the old one. When handing the failed claim back fails too (Postgres away for
    a moment, or its connection closed under the query), the claimant goes on with its claim
    rather than finding it taken by itself."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    if handing_back is not None:
        async def database_away(*args: object, **kwargs: object) -> bool:
            raise handing_back
        monkeypatch.setattr("agent.redispatch.release", database_away)
    _, workers = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_old", "r2", age_s=60)], fail=1)
    on(workers, lk)
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(w.place_when_free("r2", "RM_2", rejoin=True)
                                   for w in workers))
    finally:
        for worker in workers:
            await worker.aclose()
    assert lk.calls == ["create r2: failed", 'create r2 {"tenant": "acme"}', "delete AD_old"]
    assert [d.id for d in lk.dispatches] == ["AD_new1"]
    assert await claims(db) == [("dispatch AD_old", "unplaced")]
    assert any(m.startswith("could not check whether a worker took the agent of room r2: ")
               and m.endswith("; looking again later") for m in caplog.messages)
    assert any(m.startswith("no worker had room for the agent of room r2") for m in
               caplog.messages)
    if handing_back is not None:
        assert any(m.startswith("could not hand back the claim on dispatch AD_old of room "
                                f"RM_2: {handing_back}") for m in caplog.messages)
    assert not any(r.exc_info for r in caplog.records)


async def test_a_claim_taken_at_the_room_s_last_re_dispatch_is_watched_until_handed_back(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The room was dispatched again twice already when its agent is lost once more. Worker A
    claims it (the room's last re-dispatch allowed) and LiveKit keeps failing A's dispatch;
    worker B, asking about the same agent, finds it taken, not "too often", and watches the
    room. A shuts down and hands its claim back: B claims it at its next look, and the user
    gets an agent."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    _, (a, b) = fleet_of_two
    for earlier in range(MAX_PER_ROOM - 1):
        assert await claim(db.pool, room="r1", room_sid="RM_1",
                           lost_identity=f"agent-AJ_{earlier}", max_per_room=MAX_PER_ROOM,
                           within_s=WITHIN_S) is Claim.CLAIMED
    lk = FakeLiveKit([a_dispatch("AD_lost", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING,
                                 agent_identity="agent-AJ_lost")], fail=1_000)
    on([a, b], lk)
    try:
        async with asyncio.timeout(30):  # the user would wait for ever on the bug
            a._track(a.recover("r1", "RM_1", "agent-AJ_lost"), "redispatch")
            await lk.created_until(lambda: bool(lk.calls))  # A holds it; LiveKit fails A
            assert await b.recover("r1", "RM_1", "agent-AJ_lost") is False
            await a.aclose()
            lk.fail = 0  # LiveKit answers again
            await lk.created_until(lambda: any(
                p.kind == models.ParticipantInfo.Kind.AGENT for p in lk.participants))
    finally:
        for worker in (a, b):
            await worker.aclose()
    assert lk.created()[-1] == 'create r1 {"tenant": "acme"}'
    assert len([p for p in lk.participants if p.kind == models.ParticipantInfo.Kind.AGENT]) == 1
    assert await claims(db) == [("agent-AJ_0", "lost"), ("agent-AJ_1", "lost"),
                                ("agent-AJ_lost", "lost")]
    assert not any("so not again" in m for m in caplog.messages)


async def test_a_user_who_keeps_coming_back_gets_an_agent_and_a_failing_session_stays_capped(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user leaves their room (their session ends with it) and comes back, more often than a
    failing session is restarted: each time, the look that follows their arrival dispatches
    the agent anew. Agents lost while the user stays are restarted `MAX_PER_ROOM` times in
    `WITHIN_S` as before, whatever the comings back: the next is one line, not dispatched."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 3600.0)  # only the looks below
    _, (worker, _) = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_1", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING,
                                 agent_identity="agent-AJ_1")], fail=0)
    on([worker], lk)

    def serving() -> str:
        [now] = [p.identity for p in lk.participants
                 if p.kind == models.ParticipantInfo.Kind.AGENT]
        return now

    try:
        async with asyncio.timeout(30):
            for _ in range(MAX_PER_ROOM + 1):
                lk.agents_gone()  # the user left, their session ended, and they came back
                assert await worker.place_again("r1", "RM_1", rejoin=True) is True
            for _ in range(MAX_PER_ROOM):
                lost = serving()
                lk.agents_gone()  # the agent left while the user stayed
                assert await worker.recover("r1", "RM_1", lost) is True
            lost = serving()
            lk.agents_gone()
            assert await worker.recover("r1", "RM_1", lost) is False
    finally:
        await worker.aclose()
    assert len(lk.created()) == 2 * MAX_PER_ROOM + 1
    assert [reason for _, reason in await claims(db)] == (
        ["rejoin"] * (MAX_PER_ROOM + 1) + ["lost"] * MAX_PER_ROOM)
    assert [m for m in caplog.messages if "so not again" in m] == [
        f"room r1 lost its agent {lost} again: it was dispatched {MAX_PER_ROOM} times in 10 "
        "minutes already, so not again"]


@pytest.mark.parametrize(("served_by", "ended", "dispatched"), [
    ("agent-AJ_1", True, True), ("agent-AJ_1", False, True), ("agent-AJ_0", True, False)],
    ids=["its agent served a session", "its agent's session still closing",
         "another agent's session: its agent is coming"])
async def test_a_user_who_comes_back_soon_after_their_session_is_dispatched_at_the_first_look(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    monkeypatch: pytest.MonkeyPatch, served_by: str, ended: bool, dispatched: bool,
) -> None:
    """A user leaves their room and comes back within `AGENT_JOIN_S` of their agent's
    assignment: LiveKit lists its job as running, assigned seconds ago, as it lists a job whose
    agent is on its way. An agent that served a session of the room, ended or still closing,
    and is not in the room came and went: the agent is dispatched anew at the first look (the
    user waited for a look past `AGENT_JOIN_S`, up to 40 s). A job whose agent served no
    session (another agent did) is an agent on its way: not dispatched twice."""
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 3600.0)  # only the look below
    _, (worker, _) = fleet_of_two
    store = Store(db.pool)
    await store.start_session("s-back", tenant="acme", user_id="user-1", room="r-back",
                              source="live", provider="gemini", model="m", agent=served_by)
    if ended:
        await store.end_session("s-back", 0.0, {})
    dispatch = a_dispatch("AD_1", "r-back", age_s=60, job=agent.JobStatus.JS_RUNNING,
                          agent_identity="agent-AJ_1")
    dispatch.state.jobs[0].state.started_at = time.time_ns() - int(10e9)
    lk = FakeLiveKit([dispatch], fail=0)
    on([worker], lk)
    try:
        assert await worker.place_again("r-back", "RM_back", rejoin=True) is True
    finally:
        await worker.aclose()
    assert lk.created() == (['create r-back {"tenant": "acme", "user": "user-1"}']
                            if dispatched else [])


@pytest.mark.parametrize(("look", "user_left", "served_by", "reason"), [
    ("arrival", True, "agent-AJ_1", "rejoin"), ("agent left", True, "agent-AJ_1", "rejoin"),
    ("arrival", False, "agent-AJ_1", "lost"), ("agent left", False, "agent-AJ_1", "lost"),
    ("agent left", True, "agent-AJ_0", "lost")],
    ids=["user came back", "page reloaded: back before their agent left",
         "worker died, then someone arrived", "agent lost",
         "another agent's session saw its user leave: this one was lost"])
async def test_a_closing_session_keeps_its_memory_exchanges_and_a_lost_one_hands_them_on(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    monkeypatch: pytest.MonkeyPatch, look: str, user_left: bool, served_by: str, reason: str,
) -> None:
    """The session that ended when its user left is still closing (livekit-agents takes its
    agent out of the room before the session's shutdown callbacks run): its keeper analyses
    an exchange it claimed. The user comes back and gets an agent anew, whose session must not
    analyse that exchange as well (a second model call, its memory written twice), whichever
    look finds them: their arrival's, or, when they are back before their agent left (a page
    reloaded), the agent-left webhook's, which used to count it as a lost agent and hand the
    exchange on. A session that neither ended nor saw its user leave lost its worker: its
    exchanges go to the next session, and it counts against `MAX_PER_ROOM`, whichever look
    finds the room (an arrival's used to count it as a coming back)."""
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 3600.0)
    _, (worker, _) = fleet_of_two
    store = Store(db.pool)
    await store.start_session("s-old", tenant="acme", user_id="user-1", room="r1",
                              source="live", provider="gemini", model="m", agent=served_by)
    if user_left:
        await store.mark_user_left("s-old", time.time() - 2)
    async with db.pool.acquire() as conn:
        await backlog.apply_op(conn, {
            "op": "backlog_add", "tenant": "acme", "user_id": "user-1", "session_id": "s-old",
            "seq": 0, "user": "I use vim", "assistant": "Noted.", "said_at": time.time(),
            "claimed": True})
    lk = FakeLiveKit([a_dispatch("AD_1", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING,
                                 agent_identity="agent-AJ_1")], fail=0)
    lk.agents_gone()
    on([worker], lk)
    try:
        if look == "arrival":
            assert await worker.place_again("r1", "RM_1", rejoin=True) is True
        else:
            assert await worker.recover("r1", "RM_1", "agent-AJ_1") is True
    finally:
        await worker.aclose()
    # the room's user, as its session recorded them, named for the new agent to wait for
    assert lk.created() == ['create r1 {"tenant": "acme", "user": "user-1"}']
    assert await claims(db) == [("agent-AJ_1", reason)]
    taken_over = [d.user for d in await backlog.claim(db.pool, "acme", "user-1", "s-new")]
    assert taken_over == ([] if reason == "rejoin" else ["I use vim"])


@pytest.mark.parametrize(("joined_s", "dispatched"), [(1.0, True), (-1.0, False)],
                         ids=["joined after the user left", "was there with the user"])
async def test_a_newcomer_while_the_user_s_session_still_closes_is_dispatched_an_agent(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    monkeypatch: pytest.MonkeyPatch, joined_s: float, dispatched: bool,
) -> None:
    """The user left (their session wrote when) and someone joins while that session still
    closes, before its row is ended (its memory updates are model calls): a newcomer, or the
    user on another device under another identity. They came after the user left: dispatched
    an agent, named in its dispatch (they used to be taken for a bystander, and get none).
    One who joined before the user left was in the room with them: none."""
    monkeypatch.setattr("agent.redispatch.UNPLACED_CHECK_S", 3600.0)
    _, (worker, _) = fleet_of_two
    store = Store(db.pool)
    await store.start_session("s-1", tenant="acme", user_id="user-1", room="r-new",
                              source="live", provider="gemini", model="m", agent="agent-AJ_1")
    left_at = time.time() - 5
    await store.mark_user_left("s-1", left_at)
    lk = FakeLiveKit([a_dispatch("AD_1", "r-new", age_s=60, job=agent.JobStatus.JS_RUNNING,
                                 agent_identity="agent-AJ_1")], fail=0)
    lk.agents_gone()
    lk.participants = [models.ParticipantInfo(
        identity="phone", kind=models.ParticipantInfo.Kind.STANDARD,
        joined_at_ms=int((left_at + joined_s) * 1000))]
    on([worker], lk)
    try:
        assert await worker.place_again("r-new", "RM_new", rejoin=True) is dispatched
    finally:
        await worker.aclose()
    assert lk.created() == (['create r-new {"tenant": "acme", "user": "phone"}']
                            if dispatched else [])
    assert await claims(db) == ([("agent-AJ_1", "rejoin")] if dispatched else [])


async def test_a_database_connection_closed_under_a_claim_is_one_line_and_tried_again(
    fleet_of_two: tuple[Settings, list[Redispatcher]], db: Database,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Postgres drops the connection while a worker claims a lost agent (asyncpg's
    `InterfaceError`, not a `PostgresError`): one line, and the worker tries again on its
    backoff and dispatches the agent, instead of ending its watch with a traceback."""
    caplog.set_level(logging.INFO, "sightline.redispatch")
    dropped: list[bool] = []

    async def closed_once(*args: object, **kwargs: object) -> Claim:
        if not dropped:
            dropped.append(True)
            raise asyncpg.InterfaceError("connection is closed")
        return await claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("agent.redispatch.claim", closed_once)
    _, (worker, _) = fleet_of_two
    lk = FakeLiveKit([a_dispatch("AD_lost", "r1", age_s=60, job=agent.JobStatus.JS_RUNNING)],
                     fail=0)
    on([worker], lk)
    try:
        async with asyncio.timeout(30):
            assert await worker.recover("r1", "RM_1", "agent-AJ_1") is True
    finally:
        await worker.aclose()
    assert lk.created() == ['create r1 {"tenant": "acme"}']
    assert await claims(db) == [("agent-AJ_1", "lost")]
    [failed] = [m for m in caplog.messages if m.startswith("could not")]
    assert failed.startswith("could not dispatch the agent again to room r1, whose agent "
                             "agent-AJ_1 was lost: connection is closed; trying again in ")
    assert not any(r.exc_info for r in caplog.records)
