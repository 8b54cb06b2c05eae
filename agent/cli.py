"""`sightline` — the command line: run the worker, replay fixtures, read costs, show config.

Errors a user can fix (configuration, an unreachable database, a bad fixture) print one line
naming the problem and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from memory import kb_cli, memory_cli
from memory.db import Database, DatabaseUnavailable, start_embedded
from memory.knowledge import KnowledgeError
from memory.store import Store
from vision import cli as vision_cli
from vision.evaluation import LabelError
from vision.video_file import VideoUnreadable

from .config import DEFAULT_TIERS, ConfigError, Settings, mask_secret
from .fixture import FixtureError, load_fixture

log = logging.getLogger("sightline")


class UserError(Exception):
    """Any failure the user can fix; printed as one line."""


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {raw!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("dev", "run the worker in development mode (colored logs)"),
        ("start", "run the worker in production mode (JSON logs, graceful drain on SIGTERM)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--log-level", default=os.environ.get("LIVEKIT_LOG_LEVEL", "INFO"))
    sub.add_parser("config", help="print the effective configuration, secrets masked")
    p = sub.add_parser("replay", help="replay a fixture session offline and print its costs")
    p.add_argument("path", type=Path, help="fixture directory (with session.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = sub.add_parser("costs", help="list sessions with their costs, or show one")
    p.add_argument("session_id", nargs="?")
    p.add_argument("--tenant")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true")
    vision_cli.add_parser(sub)
    kb_cli.add_parser(sub)
    memory_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in ("dev", "start"):  # the worker sets up livekit-agents' own logging
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    try:
        if args.command == "vision":  # offline analysis: no settings, services or keys
            return vision_cli.run(args)
        settings = Settings.from_env()
        if args.command == "config":
            return _config(settings)
        if args.command in ("dev", "start"):
            return _worker(settings, args)
        if args.command == "replay":
            return asyncio.run(_replay(settings, args))
        if args.command == "kb":
            return asyncio.run(kb_cli.run(settings, args))
        if args.command == "memory":
            return asyncio.run(memory_cli.run(settings, args))
        return asyncio.run(_costs(settings, args))
    except (ConfigError, DatabaseUnavailable, FixtureError, UserError, LabelError,
            VideoUnreadable, vision_cli.VisionUsageError, KnowledgeError) as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2


def _config(settings: Settings) -> int:
    rows = settings.describe()
    width = max(len(env) for env, _, _ in rows)
    for env, value, note in rows:
        print(f"{env:<{width}}  {value}" + (f"    # {note}" if note else ""))
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run livekit-agents' own worker loop (the one its CLI runs) with Sightline's server.

    The database is prepared here, once: migrations run, and an embedded Postgres is started
    and its URL handed to the job processes, which LiveKit runs as separate processes.
    """
    from livekit.agents.cli import proto
    from livekit.agents.cli.cli import _run_worker

    from .worker import build_server

    settings.require_worker()
    tiers = settings.cascade_tiers()
    print("cascade: " + " > ".join(f"{t.model} ({t.provider})" for t in tiers), file=sys.stderr)
    skipped = [] if settings.tiers else [t for t in DEFAULT_TIERS if t not in tiers]
    for tier in skipped:
        print(f"  skipped {tier.model}: no {tier.provider} API key in the environment",
              file=sys.stderr)
    embedded = None
    if settings.database_url is None:
        embedded = start_embedded(settings.data_dir / "pgdata")
        os.environ["DATABASE_URL"] = embedded.get_uri()
    try:
        asyncio.run(_migrate(os.environ["DATABASE_URL"], settings))
        _run_worker(
            build_server(settings),
            proto.CliArgs(
                log_level=args.log_level.upper(),
                url=settings.livekit_url,
                api_key=settings.livekit_api_key,
                api_secret=settings.livekit_api_secret,
                dev=args.command == "dev",
                log_format="colored" if args.command == "dev" else "json",
            ),
        )
    finally:
        if embedded is not None:
            embedded.cleanup()
    return 0


async def _migrate(url: str, settings: Settings) -> None:
    db = await Database.open(url, settings.data_dir)
    await db.close()


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from .replay import replay

    fixture = load_fixture(args.path)
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        result = await replay(fixture, settings, db)
    finally:
        await db.close()
    if args.json:
        print(json.dumps({"fixture": result.fixture,
                          "turns": [t.__dict__ for t in result.turns],
                          "sessions": result.sessions}, indent=2))
        return 0
    print(f"Replayed fixture '{result.fixture}' ({fixture.video.name}, "
          f"{fixture.duration_s:.1f}s)\n")
    for turn in result.turns:
        screen = f"screen at t={turn.screen_t:.0f}s" if turn.screen_t is not None else "no screen"
        print(f"[{turn.t:6.1f}s] {turn.user}: {turn.text}")
        asked = " > ".join(turn.models_asked) or "no model"
        if turn.tools_called:
            asked += f" (tools called: {', '.join(turn.tools_called)})"
        if turn.knowledge_used:
            asked += f"; knowledge: {', '.join(turn.knowledge_used)}"
        if turn.memory_used:
            asked += f"; memory: {', '.join(turn.memory_used)}"
        print(f"         asked {asked}; {turn.origin} response, {screen}, "
              f"{turn.images_sent} image{'s' if turn.images_sent != 1 else ''} sent")
        print(f"         Sightline: {turn.reply}\n")
    for summary in result.sessions:
        print(format_summary(summary))
    return 0


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


async def _costs(settings: Settings, args: argparse.Namespace) -> int:
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        store = Store(db.pool)
        if args.session_id:
            session = await store.get_session(args.session_id)
            if session is None:
                raise UserError(f"no session {args.session_id!r} in "
                                f"{mask_secret(db.url, url=True)}")
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


if __name__ == "__main__":
    sys.exit(main())
