"""`sightline costs [SESSION_ID]`: sessions and what they cost, and the summary's text form."""

from __future__ import annotations

import argparse
import json
import socket
import time
from datetime import datetime
from typing import Any

from .cli_common import UserError, counted, identifier, one_line, positive_int, utf8_text
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("costs", help="list sessions with their costs, or show one")
    p.add_argument("session_id", nargs="?", type=utf8_text,
                   help="show this session (default: list sessions)")
    p.add_argument("--tenant", type=identifier, help="only this tenant's sessions")
    p.add_argument("--limit", type=positive_int, default=50,
                   help="how many sessions to list, newest first (default 50)")
    p.add_argument("--json", action="store_true",
                   help="JSON: the list, or one session with every event")
    p.add_argument("--close", action="store_true",
                   help="close SESSION_ID, left open by a process that died: its summary is "
                        "recomputed from its cost log (or its cost_events rows) and marked "
                        "'abandoned'. Refused while the process that ran it lives (same host) "
                        "or, from another host, until it has been idle for --idle-minutes")
    p.add_argument("--idle-minutes", type=positive_int, default=60,
                   help="with --close: minutes without an event after which a session that "
                        "ran on another host counts as dead (default 60)")


def _counts(counts: dict[str, int], unit: str = "") -> str:
    """`{"typing": 2, "noise": 13}` as `13 noise, 2 typing` (by name: Postgres' JSONB does not
    keep the order the summary was written in)."""
    return ", ".join(f"{counts[name]} {unit}{name}" for name in sorted(counts))


def _dollars(cost: float | None, unpriced: bool) -> str:
    """A cost, or `unpriced` for a model the price table does not list (never a silent $0)."""
    return "unpriced" if unpriced else f"${cost or 0.0:.6f}"


def _unsent_saving(usd: float) -> str:
    """What leaving an unchanged screen's frame out saved. Less than nothing on Claude when the
    screenshot carried instead was written to its cache (at more than fresh input) and not read
    back enough to make up for it: said as the extra it cost, never as "$-… saved" (nor as
    "$-0.000000", which a sum that rounds to nothing from below would print)."""
    usd = round(usd, 6) + 0.0  # + 0.0: -0.0 is 0.0
    if usd < 0:
        return f"${-usd:.6f} more: the carried screenshot was written to the cache"
    return f"${usd:.6f} saved"


def _turns_line(turns: dict[str, Any]) -> str:
    """The user turns: where they started, which tier's answer ended them, how many climbed."""
    started = ", ".join(f"{n} at tier {t}" for t, n in turns["started_at_tier"].items())
    answered = ", ".join(f"{n} by tier {t}" if t != "none" else f"{n} by no tier (each failed)"
                         for t, n in turns["answered_by_tier"].items())
    return (f"  turns: {turns['user_turns']} started ({started}); answered {answered}; "
            f"{turns['escalated']} escalated within the turn")


def _memory_line(memory: dict[str, Any]) -> str:
    """What memory did: recalled, updated (some for earlier sessions' exchanges), deferred."""
    failed = f" ({memory['failed_updates']} failed)" if memory["failed_updates"] else ""
    earlier = memory.get("earlier_sessions", 0)
    earlier = (f" ({earlier} for exchanges earlier sessions could not analyse)"
               if earlier else "")
    line = (f"  memory: {memory['recalled']} facts and earlier messages recalled; "
            f"{counted(memory['updates'], 'update')} by tier 0{failed}{earlier}, "
            f"${memory['cost_usd']:.6f}")
    if memory.get("deferred"):
        line += (f"; {counted(memory['deferred'], 'exchange')} kept for the user's next "
                 "session with the database")
    return line


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text: the same lines after a replay and from `sightline costs ID`, with
    what the session recorded (an error, a hand-off's reason, model names) escaped."""
    from .session_record import COMPLETED
    from .session_summary import model_order

    frames = summary["frames"]
    lines = [
        f"Session {summary['session_id']}  tenant={summary['tenant']}  ({summary['source']})",
    ]
    outcome = summary.get("outcome", COMPLETED)
    if outcome != COMPLETED:
        lines.append(f"  ended: {outcome}" + (f" ({summary['error']})" if "error" in summary
                                               else ""))
    if summary.get("handoff"):
        lines.append(f"  handed to a person: {summary['handoff']['reason']}")
    database = summary.get("database")
    if database:
        joined = database["joined_after_s"]
        lines.append(
            f"  database: down when the session opened; answered after {joined:.0f} s, "
            "recalled from then on (what it wrote to disk meanwhile, imported as it closed)"
            if joined is not None else
            "  database: down for the whole session (its rows wait on disk for the import)")
    connection = summary.get("livekit")
    if connection:
        lines.append(
            f"  LiveKit: connection lost {counted(connection['lost'], 'time')}, "
            f"{connection['offline_s']:.1f} s offline in all"
            + ("; still reconnecting when the session ended"
               if connection["lost"] > connection["back"] else ""))
    video = summary.get("video")
    if video and video.get("problem"):
        lines.append(f"  video: {video['problem']}")
    received = ("received: not counted (the session ended without its count)"
                if frames["received"] is None else f"{frames['received']} received")
    lines.append(
        f"  frames: {received}, {frames['sampled']} sampled, {frames['kept']} kept"
        + (f", dropped {_counts(frames['dropped'], 'as ')}" if frames["dropped"] else ""))
    if frames.get("by_content_type"):
        lines.append("  frames by content type: " + ", ".join(
            f"{kind} {c['kept']}/{c['sampled']} kept"
            for kind, c in sorted(frames["by_content_type"].items())))
    unpriced = set(summary["unpriced_models"])
    by_model = summary["by_model"]
    for model in model_order(by_model, {m: t.get("tier") for m, t in by_model.items()}):
        t = by_model[model]
        lines.append(
            f"  {model}: {counted(t['calls'], 'call')} ({t['errors']} failed), "
            f"{t['input_tokens']} in + {t['cached_input_tokens']} cached + "
            f"{t['output_tokens']} out tokens, {counted(t['images'], 'image')}, "
            f"{_dollars(t['cost_usd'], model in unpriced)}"
        )
    cache = summary.get("prompt_cache")
    if cache and cache["prompt_tokens"]:
        lines.append(f"  prompt cache: {100 * cache['hit_rate']:.1f}% of prompt tokens read from "
                     f"cache, ${cache['saved_usd']:.6f} saved")
    images = summary.get("images")
    if images and images["sent"]:
        lines.append(f"  images: {images['sent']} sent, {images['tokens']} tokens "
                     f"(${images['cost_usd']:.6f}); {images['tokens_at_full_resolution']} tokens "
                     f"at full resolution, ${images['saved_usd']:.6f} saved")
    if images and images.get("questions_screen_unchanged"):
        new = counted(images["questions_with_new_image"], "question")
        lines.append(f"  image policy: {new} with a new screenshot, "
                     f"{images['questions_screen_unchanged']} with the screen "
                     f"unchanged ({images['unsent_tokens']} tokens not sent again, "
                     f"{_unsent_saving(images['unsent_saved_usd'])})")
    screen = summary.get("screen")
    if screen and screen["reads"]:
        lines.append(f"  screen text: {counted(screen['reads'], 'kept frame')} read, "
                     f"{counted(screen['lines_added'], 'line')} appeared, "
                     f"{counted(screen['errors'], 'new error')}, "
                     f"{counted(screen['recalled'], 'screen event')} recalled"
                     + (f", {counted(screen['secrets_hidden'], 'secret')} hidden"
                        if screen.get("secrets_hidden") else "")
                     + (f", {counted(screen['screenshots_unread'], 'screenshot')} sent before "
                        "the screen text was read"
                        if screen.get("screenshots_unread") else "") + "; "
                     f"{screen['ocr_cpu_s']:.1f} s of OCR CPU")
    turns = summary.get("turns", {})
    if turns.get("user_turns"):
        lines.append(_turns_line(turns))
    vs_top = summary.get("vs_top_tier")
    if vs_top and vs_top["savings"] is not None:
        rounds = vs_top["model_rounds"]
        extra = f" in {rounds} model rounds" if rounds != vs_top["user_turns"] else ""
        lines.append(f"  cascade: {counted(vs_top['user_turns'], 'turn')}{extra} for "
                     f"${vs_top['cost_usd']:.6f}, "
                     f"${vs_top['top_tier_cost_usd']:.6f} on the top tier alone "
                     f"({100 * vs_top['savings']:.1f}% saved)")
    memory = summary.get("memory")
    if memory and (memory["recalled"] or memory["updates"] or memory["failed_updates"]
                   or memory.get("deferred")):
        lines.append(_memory_line(memory))
    voice = summary.get("voice")
    if voice:
        engines = ", ".join(
            f"{e['model']} {e['direction']} {_dollars(e['cost_usd'], e['model'] in unpriced)}"
            for e in voice["engines"])
        lines.append(f"  voice: {voice['heard_s']:.1f} s heard, "
                     f"{counted(voice['spoken_characters'], 'character')} spoken in "
                     f"{voice['spoken_s']:.1f} s ({engines}); "
                     f"{voice['interrupted_replies']} of {voice['replies']} replies interrupted")
        if voice.get("failed"):
            failed = ", ".join(f"{count} {direction}" for direction, count
                               in voice["failed"].items())
            lines.append(f"  speech failures: {failed} (the session went on in the chat)")
        altered = voice.get("heard_altered") or {}
        if altered.get("turns"):
            lines.append(f"  microphone: {counted(altered['turns'], 'spoken turn')} with audio "
                         f"altered in transit ({altered['seconds']:.2f} s made up, cut or "
                         "stretched by WebRTC's jitter buffer)")
    budget = summary.get("budget")
    if budget and budget["escalation_capped_at_tier"] is not None:
        crossed = ", ".join(budget["thresholds_crossed"])
        lines.append(f"  budget used up: escalation capped at tier "
                     f"{budget['escalation_capped_at_tier']} ({crossed})")
    if unpriced:
        lines.append(f"  not priced (missing from {summary['prices']}, counted as $0 in the "
                     "total): " + ", ".join(sorted(unpriced)))
    lines.append(f"  total: ${summary['total_cost_usd']:.6f}")
    lines.append(f"  cost log: {summary['cost_log']}"
                 + (f" (incomplete: {summary['cost_log_error']}; the database has every event)"
                    if summary.get("cost_log_error") else ""))
    return "\n".join(map(one_line, lines))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from memory.db import Database, masked_url
    from memory.store import Store

    if args.close and not args.session_id:
        raise UserError("--close needs the SESSION_ID to close (see `sightline costs`)")
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        store = Store(db.pool)
        if args.session_id:
            session = await store.get_session(args.session_id)
            if session is None and args.close:
                from .left_open import offline_session

                session = await offline_session(store, settings, args.session_id)
            if session is None:
                raise UserError(f"no session {args.session_id!r} in "
                                f"{masked_url(db.url)}")
            if args.close:
                summary = await _close(store, settings, session, args.idle_minutes * 60)
                print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
            elif args.json:
                print(json.dumps(session, indent=2))
            elif session["summary"]:
                print(format_summary(session["summary"]))
            else:
                print(one_line(
                    f"Session {session['id']} has not ended yet ({session['model_calls']} "
                    "model calls so far); if the process running it died, "
                    f"`sightline costs {session['id']} --close` closes it."))
            return 0
        sessions = await store.list_sessions(args.limit, args.tenant)
    finally:
        await db.close()
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    if not sessions:
        print(f"No sessions for tenant {args.tenant}." if args.tenant else "No sessions yet.")
        return 0
    print(f"{'session':<30} {'tenant':<12} {'source':<7} {'started (UTC)':<20} "
          f"{'calls':>5} {'voice min':>9} {'cost USD':>12}  ended")
    for s in sessions:
        cost = f"{s['total_cost_usd']:.6f}" if s["total_cost_usd"] is not None else "-"
        ended = "(open)" if s["ended_at"] is None else s["outcome"] or "completed"
        print(one_line(f"{s['id']:<30} {s['tenant']:<12} {s['source']:<7} "
                       f"{s['started_at'][:19]:<20} {s['model_calls']:>5} "
                       f"{s['voice_s'] / 60:>9.2f} {cost:>12}  {ended}"))
    if args.tenant:
        minutes = sum(s["voice_s"] for s in sessions) / 60
        listed = "this session" if len(sessions) == 1 else f"these {len(sessions)} sessions"
        print(f"tenant {args.tenant}: {minutes:.2f} voice minutes (speech heard and spoken) in "
              f"{listed}")
    return 0


async def _close(
    store: Any, settings: Settings, session: dict[str, Any], idle_s: float,
) -> dict[str, Any]:
    """Close one session its process left open, unless that process may still be running it:
    on this host, while its process id lives; from another host, until it has been idle for
    `idle_s` (its process cannot be seen from here)."""
    from memory.spill_files import event_log_path, read_event_log

    from .left_open import process_lives, session_process
    from .pricing import BUNDLED_PRICES
    from .session_record import append_summary, close_abandoned

    session_id = session["id"]
    if session["ended_at"] is not None:
        ended = session["outcome"] or "completed"
        raise UserError(f"session {session_id} has ended already ({ended}): nothing to close")
    path = event_log_path(settings.costs_dir, session_id)
    local = path.is_file()
    events = read_event_log(path) if local else await store.session_events(session_id)
    host, pid = session_process(events)
    if host == socket.gethostname() and pid is not None:
        if process_lives(pid):
            raise UserError(f"session {session_id} may still be running: its process {pid} "
                            "lives on this host; stop that process (it closes its sessions) "
                            "and try again")
        ran = f"pid {pid} on this host, no longer running"
    else:
        last = max((float(e["ts"]) for e in events), default=0.0) or datetime.fromisoformat(
            session["started_at"]).timestamp()
        idle = time.time() - last
        where = f"on host {host}" if host else "elsewhere"
        if idle < idle_s:
            raise UserError(f"session {session_id} ran {where} and recorded an event "
                            f"{idle / 60:.0f} min ago: it may still be running; close it from "
                            f"that host, or once it has been idle for --idle-minutes "
                            f"{idle_s / 60:.0f}")
        ran = f"{where}, idle for {idle / 60:.0f} min"
    summary = await close_abandoned(
        store, session, events,
        why=f"its process ({ran}) did not close it; closed by `sightline costs --close`",
        prices=settings.prices_file or BUNDLED_PRICES, cost_log=path,
        recomputed_from="cost log" if local else "cost_events")
    if summary is None:
        raise UserError(f"session {session_id} ended by itself meanwhile: nothing to close")
    if local:
        append_summary(path, events, summary)
    return summary
