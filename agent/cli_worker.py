"""`sightline dev|start`: run the LiveKit worker."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .config import DEFAULT_TIERS, Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, help_text in (
        ("dev", "run the worker in development mode (colored logs)"),
        ("start", "run the worker in production mode (JSON logs, graceful drain on SIGTERM)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--log-level", default=os.environ.get("LIVEKIT_LOG_LEVEL", "INFO"),
                       help="DEBUG, INFO, WARNING or ERROR (default: LIVEKIT_LOG_LEVEL or INFO)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run livekit-agents' own worker loop (the one its CLI runs) with Sightline's server.

    The database is prepared here, once: migrations run, and an embedded Postgres is started
    and its URL handed to the job processes, which LiveKit runs as separate processes.
    """
    from livekit.agents.cli import proto
    from livekit.agents.cli.cli import _run_worker

    from memory.db import start_embedded

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
    from memory.db import Database

    db = await Database.open(url, settings.data_dir)
    await db.close()
