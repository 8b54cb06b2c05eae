"""`sightline costs [SESSION_ID]`: sessions and what they cost, and the summary's text form."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_common import UserError, identifier, positive_int
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("costs", help="list sessions with their costs, or show one")
    p.add_argument("session_id", nargs="?", help="show this session (default: list sessions)")
    p.add_argument("--tenant", type=identifier, help="only this tenant's sessions")
    p.add_argument("--limit", type=positive_int, default=50,
                   help="how many sessions to list, newest first (default 50)")
    p.add_argument("--json", action="store_true",
                   help="JSON: the list, or one session with every event")


def format_summary(summary: dict[str, Any]) -> str:
    frames = summary["frames"]
    lines = [
        f"Session {summary['session_id']}  tenant={summary['tenant']}  ({summary['source']})",
        f"  frames: {frames['received']} received, {frames['sampled']} sampled, "
        f"{frames['kept']} kept"
        + (f", dropped {frames['dropped']}" if frames["dropped"] else ""),
    ]
    if frames.get("by_content_type"):
        lines.append("  frames by content type: " + ", ".join(
            f"{kind} {c['kept']}/{c['sampled']} kept"
            for kind, c in frames["by_content_type"].items()))
    for model, t in summary["by_model"].items():
        lines.append(
            f"  {model}: {t['calls']} calls ({t['errors']} failed), "
            f"{t['input_tokens']} in + {t['cached_input_tokens']} cached + "
            f"{t['output_tokens']} out tokens, {t['images']} images, ${t['cost_usd']:.6f}"
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
        lines.append(f"  image policy: {images['questions_with_new_image']} questions with a new "
                     f"screenshot, {images['questions_screen_unchanged']} with the screen "
                     f"unchanged ({images['unsent_tokens']} tokens not sent again, "
                     f"${images['unsent_saved_usd']:.6f} saved)")
    screen = summary.get("screen")
    if screen and screen["reads"]:
        lines.append(f"  screen text: {screen['reads']} kept frames read, "
                     f"{screen['lines_added']} lines appeared, {screen['errors']} new errors, "
                     f"{screen['recalled']} screen events recalled; "
                     f"{screen['ocr_cpu_s']:.1f} s of OCR CPU")
    vs_top = summary.get("vs_top_tier")
    if vs_top and vs_top["savings"] is not None:
        rounds = vs_top["model_rounds"]
        extra = f" in {rounds} model rounds" if rounds != vs_top["user_turns"] else ""
        lines.append(f"  cascade: {vs_top['user_turns']} turns{extra} for "
                     f"${vs_top['cost_usd']:.6f}, "
                     f"${vs_top['top_tier_cost_usd']:.6f} on the top tier alone "
                     f"({100 * vs_top['savings']:.1f}% saved)")
    memory = summary.get("memory")
    if memory and (memory["recalled"] or memory["updates"] or memory["failed_updates"]):
        failed = f" ({memory['failed_updates']} failed)" if memory["failed_updates"] else ""
        lines.append(f"  memory: {memory['recalled']} facts and earlier messages recalled; "
                     f"{memory['updates']} updates by tier 0{failed}, ${memory['cost_usd']:.6f}")
    budget = summary.get("budget")
    if budget and budget["escalation_capped_at_tier"] is not None:
        crossed = ", ".join(budget["thresholds_crossed"])
        lines.append(f"  budget used up: escalation capped at tier "
                     f"{budget['escalation_capped_at_tier']} ({crossed})")
    if summary["unpriced_models"]:
        lines.append(f"  not priced (missing from {summary['prices']}): "
                     + ", ".join(summary["unpriced_models"]))
    lines.append(f"  total: ${summary['total_cost_usd']:.6f}")
    lines.append(f"  cost log: {summary['cost_log']}")
    return "\n".join(lines)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from memory.db import Database, masked_url
    from memory.store import Store

    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        store = Store(db.pool)
        if args.session_id:
            session = await store.get_session(args.session_id)
            if session is None:
                raise UserError(f"no session {args.session_id!r} in "
                                f"{masked_url(db.url)}")
            if args.json:
                print(json.dumps(session, indent=2))
            elif session["summary"]:
                print(format_summary(session["summary"]))
            else:
                print(f"Session {session['id']} has not ended yet "
                      f"({session['model_calls']} model calls so far).")
            return 0
        sessions = await store.list_sessions(args.limit, args.tenant)
    finally:
        await db.close()
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    if not sessions:
        print("No sessions yet.")
        return 0
    print(f"{'session':<30} {'tenant':<12} {'source':<7} {'started (UTC)':<20} "
          f"{'calls':>5} {'cost USD':>12}")
    for s in sessions:
        cost = f"{s['total_cost_usd']:.6f}" if s["total_cost_usd"] is not None else "(open)"
        print(f"{s['id']:<30} {s['tenant']:<12} {s['source']:<7} {s['started_at'][:19]:<20} "
              f"{s['model_calls']:>5} {cost:>12}")
    return 0
