"""`sightline memory show|forget`: what Sightline remembers about one user, and deleting it."""

from __future__ import annotations

import argparse
import json

from agent.config import Settings

from .db import Database
from .store import Store

SHOWN = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    memory = sub.add_parser("memory", help="what is remembered about a user; forget it")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True)
    for name, help_text in (
        ("show", "the user's remembered conversation"),
        ("forget", "delete everything remembered about the user (privacy requests)"),
    ):
        p = memory_sub.add_parser(name, help=help_text)
        p.add_argument("--tenant", required=True)
        p.add_argument("--user", required=True)
        p.add_argument("--json", action="store_true")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        store = Store(db.pool)
        if args.memory_command == "forget":
            removed = await store.forget_user(args.tenant, args.user)
            if args.json:
                print(json.dumps(removed))
            else:
                print(f"Forgot user {args.user} of tenant {args.tenant}: "
                      f"{removed['messages']} messages deleted, "
                      f"{removed['sessions_unlinked']} sessions no longer name the user "
                      "(their cost records stay).")
            return 0
        total = await store.count_messages(args.tenant, args.user)
        recent = await store.recent_messages(args.tenant, args.user, SHOWN)
    finally:
        await db.close()
    if args.json:
        print(json.dumps({"tenant": args.tenant, "user": args.user, "messages": total,
                          "recent": [{"role": m.role, "content": m.content,
                                      "at": m.created_at.isoformat()} for m in recent]}))
        return 0
    if not total:
        print(f"Nothing is remembered about user {args.user} of tenant {args.tenant}.")
        return 0
    print(f"User {args.user} of tenant {args.tenant}: {total} messages remembered"
          + (f", the last {len(recent)}:" if total > len(recent) else ":"))
    for message in recent:
        print(f"  {message.created_at:%Y-%m-%d %H:%M} {message.role}: {message.content}")
    return 0
