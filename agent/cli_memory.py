"""`sightline memory show|forget|hide-secrets`: what Sightline remembers about one user, deleting
it (messages, facts, summary, exchanges waiting for the memory model, the screen timeline,
archived screenshots and the user's sessions' rows the database refused), and hiding the
secrets in what was stored before Sightline hid them (memory/stored_secrets.py, and the
archived screenshots: vision/archive_cover.py).

Each first imports the spill files of closed sessions (rows written while the database was
away), so that what is shown, forgotten or rewritten includes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from vision.ranges import Range

from .cli_common import counted, identifier, in_range, one_line
from .config import Settings

if TYPE_CHECKING:
    from memory.db import Database
    from memory.embeddings import Embedder, EmbeddingCall
    from memory.spill_recovery import RecoveryReport
    from memory.store import Store

    from .metering import CostMeter

SHOWN = 20
THREADS = Range(int, 1, 64)  # reading archived screenshots again (`memory hide-secrets`)
PROGRESS_S = 10.0  # how often a long `memory hide-secrets` says how far it is


class _Progress:
    """Says on stderr how many of a tenant's archived screenshots were read, at most every
    `PROGRESS_S` seconds: reading them again takes about half a second each, hours for a
    week of sessions."""

    def __init__(self, whose: str) -> None:
        self._whose = whose
        self._said = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self._said >= PROGRESS_S:
            self._said = time.monotonic()
            print(f"{self._whose}: {done:,} of {total:,} archived screenshots read again",
                  file=sys.stderr, flush=True)


class _BilledTo:
    """The embedder's `record`: a billed embedding (Gemini's) goes to the ledger of the tenant
    whose rows are embedded: spilled rows' tenants' as the import goes (agent/spill_billing.py),
    then the meter of the tenant whose rows `memory hide-secrets` is embedding again."""

    def __init__(self) -> None:
        from .spill_billing import billed_as_spill

        self.meter: CostMeter | None = None
        self._spilled = billed_as_spill

    def __call__(self, call: EmbeddingCall) -> None:
        if not self._spilled(call) and self.meter is not None:
            self.meter.embedding_call(call)


def add_parser(sub: argparse._SubParsersAction) -> None:
    memory = sub.add_parser("memory", help="what is remembered about a user; forget it")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True)
    for name, help_text in (
        ("show", "the user's summary, facts and latest messages"),
        ("forget", "delete everything remembered about the user (privacy requests)"),
    ):
        p = memory_sub.add_parser(name, help=help_text)
        p.add_argument("--tenant", type=identifier, required=True, help="the user's tenant")
        p.add_argument("--user", type=identifier,
                       required=True, help="the user's identity in the room")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    hide = memory_sub.add_parser(
        "hide-secrets", help="hide the passwords, keys, tokens and card numbers in what was "
        "stored before Sightline hid them (messages, screen text, memory, cost records, "
        "archived screenshots)")
    hide.add_argument("--tenant", type=identifier,
                      help="only this tenant (default: every tenant, one after another)")
    hide.add_argument("--threads", type=in_range(THREADS),
                      default=min(int(THREADS.high), os.cpu_count() or 1),
                      help="threads reading archived screenshots again (default: one a core)")
    hide.add_argument("--json", action="store_true", help="print the result as JSON")


def _unimported(report: RecoveryReport) -> list[str]:
    notes = [f"note: spill file not imported: {why}" for why in report.left]
    if report.refused:
        notes.append(f"note: set aside {counted(report.refused, 'spilled row')} the database "
                     "refused (in *-refused.jsonl beside the cost logs)")
    return notes


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from memory.db import Database
    from memory.forget import change_logs
    from memory.spill_files import remove_refused
    from memory.spill_recovery import SpillTargets, recover_spills
    from vision.frame_archive import remove_sessions

    from .components import embedder_on_use
    from .spill_billing import billing_spills

    db = await Database.open(settings.database_url, settings.data_dir)
    billed_to = _BilledTo()
    embedder = embedder_on_use(settings, record=billed_to)
    try:
        targets = SpillTargets.on(db.pool, embedder)
        store, memory = targets.store, targets.memory
        async with billing_spills(settings, store):
            report = await recover_spills(settings.costs_dir, targets)
        notes = _unimported(report)
        if args.memory_command == "hide-secrets":
            return await _hide_secrets(settings, args, db, store, embedder, billed_to, report,
                                       notes)
        if args.memory_command == "forget":
            sessions = await store.user_sessions(args.tenant, args.user)
            removed = await store.forget_user(args.tenant, args.user)
            removed["archived_frames"] = await asyncio.to_thread(
                remove_sessions, settings.frames_dir, sessions)
            removed["refused_row_files"] = await asyncio.to_thread(
                remove_refused, settings.costs_dir, sessions)
            removed["cost_logs_rewritten"], still_open = await asyncio.to_thread(
                change_logs, settings.costs_dir, sessions)
            if still_open:
                notes.append(f"note: {counted(len(still_open), 'session')} of the user still "
                             "open (" + ", ".join(still_open) + "): still linked to the user, "
                             "its cost log and what it records from now on quote them until "
                             "it ends; forget the user again then (or close a dead one with "
                             "`sightline costs ID --close` first)")
            if args.json:
                print(json.dumps({**removed, "unimported_spill_files": report.left,
                                  "open_sessions": still_open}))
            else:
                print(f"Forgot user {args.user} of tenant {args.tenant}: "
                      f"{removed['messages']} messages, {removed['facts']} facts, "
                      f"{counted(removed['summaries'], 'summary', 'summaries')}, "
                      f"{removed['deferred_exchanges']} "
                      f"exchanges waiting for the memory model, {removed['screen_events']} "
                      f"screen events, {removed['archived_frames']} archived screenshots and "
                      f"{removed['refused_row_files']} files of rows the database refused "
                      "deleted; what the cost records quoted of the user (their words, their "
                      f"screen's text, a hand-off's reason) taken out of "
                      f"{counted(removed['events_forgotten'], 'event')} and "
                      f"{counted(removed['cost_logs_rewritten'], 'cost log')}; "
                      f"{counted(removed['gap_questions'], 'question')} taken out of the "
                      "knowledge gaps; "
                      f"{removed['sessions_unlinked']} sessions no longer name the user (their "
                      "cost records stay).")
                for note in notes:
                    print(one_line(note))
            return 0
        total = await store.count_messages(args.tenant, args.user)
        recent = await store.recent_messages(args.tenant, args.user, SHOWN)
        facts = await memory.facts(args.tenant, args.user)
        summary = await memory.summary(args.tenant, args.user)
        screen_events = await store.count_screen_events(args.tenant, args.user)
        deferred = await memory.deferred_waiting(args.tenant, args.user)
    finally:
        await embedder.aclose()
        await db.close()
    if args.json:
        print(json.dumps({
            "tenant": args.tenant, "user": args.user, "summary": summary,
            "facts": [{"key": f.key, "text": f.text,
                       "updated_at": f.updated_at.isoformat() if f.updated_at else None}
                      for f in facts],
            "messages": total,
            "screen_events": screen_events,
            "deferred_exchanges": deferred,
            "recent": [{"role": m.role, "content": m.content, "at": m.created_at.isoformat()}
                       for m in recent],
            "unimported_spill_files": report.left,
        }))
        return 0
    if not (total or facts or summary or screen_events or deferred):
        print(f"Nothing is remembered about user {args.user} of tenant {args.tenant}.")
        return 0
    print(f"User {args.user} of tenant {args.tenant}:")
    print(f"  summary: {one_line(summary) if summary else '(none yet)'}")
    print(f"  facts ({len(facts)}):")
    for fact in facts:
        print(f"    [{one_line(fact.key)}] {one_line(fact.text)}")
    print(f"  {total} messages remembered"
          + (f", the last {len(recent)}:" if total > len(recent) else ":"))
    for message in recent:
        print(f"    {message.created_at:%Y-%m-%d %H:%M} "
              f"{one_line(message.role)}: {one_line(message.content)}")
    print(f"  {screen_events} screen events remembered (`sightline screen search` finds them)")
    if deferred:
        print(f"  {counted(deferred, 'exchange')} waiting for the memory model (of sessions "
              "that ran without "
              "the database, whose memory call failed or whose worker died first; the user's "
              "next session analyses them)")
    for note in notes:
        print(one_line(note))
    return 0


async def _hide_secrets(settings: Settings, args: argparse.Namespace, db: Database,
                        store: Store, embedder: Embedder, billed_to: _BilledTo,
                        report: RecoveryReport, notes: list[str]) -> int:
    from memory.secret_text import hide_secrets
    from memory.stored_secrets import (
        hide_stored_secrets,
        recorded_sessions,
        stored_tenants,
        tenant_sessions,
    )
    from vision.archive_cover import ArchiveCover, cover_archived, uncovered_sessions

    from .command_ledger import CommandLedger

    tenants = [args.tenant] if args.tenant else await stored_tenants(db.pool)
    done, still_open, frames = {}, [], ArchiveCover()

    async def cover(sessions: list[str], whose: str) -> ArchiveCover:
        """Cover the archived frames of `sessions`, their failures counted in `frames`."""
        covered = await asyncio.to_thread(
            cover_archived, settings.frames_dir, hide_secrets, sessions, threads=args.threads,
            progress=_Progress(whose))
        frames.unreadable += covered.unreadable
        frames.failed += covered.failed
        return covered

    for tenant in tenants:
        sessions = await tenant_sessions(db.pool, tenant)
        ledger, billed_to.meter = CommandLedger.metered(settings, tenant, "memory hide-secrets")
        try:
            async with ledger.saving(store):
                done[tenant], open_here = await hide_stored_secrets(
                    db.pool, embedder, tenant, sessions, settings.costs_dir)
        finally:
            billed_to.meter = None
        done[tenant]["cost_usd"] = ledger.cost_usd  # Gemini's embeddings; offline ones are free
        covered = await cover(sessions, f"Tenant {tenant}")
        done[tenant]["archived_frames_read"] = covered.frames_read
        done[tenant]["archived_frames_covered"] = covered.frames_covered
        still_open += dict.fromkeys([*open_here, *covered.still_open])
    # archived frames of sessions without a row (running without the database, or their spill
    # files lost): no tenant is known for them, so a pass over every tenant covers them (an
    # open one is left, as above), and a tenant's pass says they wait
    uncovered = await asyncio.to_thread(uncovered_sessions, settings.frames_dir)
    recorded = await recorded_sessions(db.pool) if uncovered else set()
    unrecorded = [s for s in uncovered if s not in recorded]
    unrecorded_done: dict[str, Any] = {"sessions": 0, "archived_frames_read": 0,
                                       "archived_frames_covered": 0, "left": []}
    if unrecorded and args.tenant:
        unrecorded_done["left"] = unrecorded
        notes.append(f"note: {counted(len(unrecorded), 'session')} without a session record "
                     "(running without the database, or their spill files lost) left archived "
                     "screenshots no tenant is known for: `sightline memory hide-secrets` "
                     "without --tenant covers them too")
    elif unrecorded:
        covered = await cover(unrecorded, "Sessions without a record")
        unrecorded_done.update(sessions=len(unrecorded), archived_frames_read=covered.frames_read,
                               archived_frames_covered=covered.frames_covered)
        still_open += dict.fromkeys(covered.still_open)
    if still_open:
        notes.append(f"note: {counted(len(still_open), 'session')} still open ("
                     + ", ".join(still_open) + "): their cost logs and archived screenshots "
                     "are left as they are (what they write from now on has its secrets "
                     "hidden); run it again once they have ended")
    if frames.failed:
        notes.append(f"note: {counted(frames.failed, 'archived screenshot')} could not be "
                     "written again with what they show covered; run it again")
    if frames.unreadable:
        notes.append(f"note: {counted(frames.unreadable, 'archived file')} not a readable "
                     "JPEG, left as they are (nothing can show them)")
    if args.json:
        print(json.dumps({"tenants": done, "unrecorded_sessions": unrecorded_done,
                          "unimported_spill_files": report.left,
                          "open_sessions": still_open}))
        return 0
    if not tenants and not unrecorded_done["sessions"]:
        print("Nothing is stored yet.")
    for tenant, counts in done.items():
        print(f"Tenant {tenant}: secrets hidden in {counted(counts['messages'], 'message')}, "
              f"{counted(counts['screen_events'], 'screen event')}, "
              f"{counted(counts['summaries'], 'summary', 'summaries')}, "
              f"{counted(counts['deferred_exchanges'], 'exchange')} waiting for the memory "
              f"model, {counted(counts['events'], 'cost event')} and "
              f"{counted(counts['cost_logs_rewritten'], 'cost log')}; "
              f"{counted(counts['facts_deleted'], 'fact')} holding one deleted; "
              f"{counted(counts['archived_frames_read'], 'archived screenshot')} read, "
              f"{counts['archived_frames_covered']} with lines covered."
              + (f" Embedding again cost ${counts['cost_usd']:.6f}." if counts["cost_usd"]
                 else ""))
    if unrecorded_done["sessions"]:
        print(f"{counted(unrecorded_done['sessions'], 'session')} without a session record: "
              f"{counted(unrecorded_done['archived_frames_read'], 'archived screenshot')} "
              f"read, {unrecorded_done['archived_frames_covered']} with lines covered.")
    for note in notes:
        print(one_line(note))
    return 0
