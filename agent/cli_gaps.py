"""`sightline gaps refresh|list|dismiss|resolve --tenant T`: the questions the knowledge base
fails, clustered into gaps with a canonical question and an article outline (run `refresh` from
cron)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_common import UserError, counted, duration, identifier, one_line, positive_int
from .config import KEY_ENV, Settings

MARKED_BY_OPS = "marked by ops"  # who resolved a gap by hand


def _score(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {raw!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gaps", help="knowledge gaps: failed questions clustered, named by "
                                    "tier 0, scored; refresh (cron), list, dismiss, resolve")
    actions = p.add_subparsers(dest="action", required=True)
    refresh = actions.add_parser("refresh", help="find the window's failed questions, cluster "
                                                 "them into gaps, resolve the gaps a newer "
                                                 "document answers")
    refresh.add_argument("--tenant", type=identifier, required=True)
    refresh.add_argument("--since", type=duration, default=7 * 86400.0,
                         help="how far back to look for failed questions (default 7d)")
    refresh.add_argument("--confidence", type=_score, default=0.6,
                         help="an answer stated below this confidence failed (default 0.6)")
    refresh.add_argument("--resolve-score", type=_score, default=0.75,
                         help="cosine similarity between a gap's question and a newer "
                              "document's chunk that resolves it (default 0.75)")
    refresh.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="the tenant's gaps, best score first")
    listing.add_argument("--tenant", type=identifier, required=True)
    listing.add_argument("--status", choices=("open", "dismissed", "resolved"))
    listing.add_argument("--json", action="store_true")
    for action, what in (("dismiss", "not a gap worth an article: refresh leaves it alone"),
                         ("resolve", "answered now (e.g. an article was written)")):
        a = actions.add_parser(action, help=what)
        a.add_argument("gap_id", type=positive_int)
        a.add_argument("--tenant", type=identifier, required=True)


def _print_gaps(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("No knowledge gaps.")
    for g in rows:
        print(f"#{g['id']}  {g['status']:<9} score {g['score']:.2f} ({g['frequency']} questions, "
              f"severity {g['severity']:.2f})  {one_line(g['canonical_question'])}")
        for section in g["outline"]:
            print(f"      - {one_line(section)}")
        if g["resolved_by"]:
            by = one_line(g["resolved_by"])
            print(f"      resolved: {by}" if by == MARKED_BY_OPS else f"      resolved by {by}"
                  + (f" (score {g['resolved_score']:.2f})" if g["resolved_score"] else ""))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from memory.db import Database
    from memory.gaps import gaps, set_status

    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        if args.action in ("dismiss", "resolve"):
            status = "dismissed" if args.action == "dismiss" else "resolved"
            if not await set_status(db.pool, args.tenant, args.gap_id, status,
                                    MARKED_BY_OPS if status == "resolved" else None):
                raise UserError(f"no gap #{args.gap_id} for tenant {args.tenant} "
                                "(see `sightline gaps list`)")
            print(f"gap #{args.gap_id} {status}")
            return 0
        if args.action == "list":
            rows = await gaps(db.pool, args.tenant, args.status)
            for row in rows:
                row.pop("embedding")
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_gaps(rows)
            return 0
        try:
            import scipy  # noqa: F401  (checked here: one line instead of a traceback later)
        except ImportError:
            raise UserError("`gaps refresh` needs the `ops` extra (SciPy): "
                            "pip install 'sightline[ops]'") from None
        # refresh alone needs the model SDKs and the embedder: list, dismiss and resolve
        # answer in a second without importing them
        from memory.knowledge import stored_models
        from memory.store import Store

        from .command_ledger import CommandLedger
        from .components import make_embedder
        from .gaps import PURPOSE, GapNamer, refresh
        from .providers import make_provider

        tier = settings.cascade_tiers()[0]
        if not settings.key_for(tier.provider):
            raise UserError(f"`gaps refresh` asks tier 0 ({tier.model}) to name the gaps: set "
                            f"{KEY_ENV[tier.provider]} (README: Configuration)")
        # what naming (and Gemini embeddings) cost is the tenant's, recorded with no session
        ledger, meter = CommandLedger.metered(settings, args.tenant, "gaps refresh")
        embedder = make_embedder(settings, await stored_models(db.pool, args.tenant),
                                 record=meter.embedding_call)
        provider = make_provider(settings, tier)
        async with ledger.saving(Store(db.pool)):
            try:
                until = datetime.now(UTC)
                report = await refresh(
                    db.pool, args.tenant, until - timedelta(seconds=args.since), until,
                    embedder=embedder,
                    namer=GapNamer(provider, tier, meter, settings.model_timeout_s),
                    confidence_bar=args.confidence, resolve_score=args.resolve_score)
            finally:
                await provider.aclose()
                await embedder.aclose()
    finally:
        await db.close()
    naming = round(sum(e["cost_usd"] or 0.0 for e in ledger.events
                       if e["detail"].get("purpose") == PURPOSE), 8)
    if args.json:
        print(json.dumps({**report.__dict__, "naming_cost_usd": naming,
                          "cost_usd": ledger.cost_usd}, indent=2))
        return 0
    print(f"{counted(report.questions, 'failed question')} in "
          f"{counted(report.clusters, 'cluster')}: "
          f"{counted(len(report.new_gaps), 'new gap')}, {len(report.updated_gaps)} grown, "
          f"{report.dismissed_seen} dismissed seen again; naming by tier 0 ${naming:.6f}"
          + (f" ({report.naming_failures} failed)" if report.naming_failures else "")
          + (f", ${ledger.cost_usd:.6f} in all" if ledger.cost_usd != naming else ""))
    for gap_id, source, score in report.resolved:
        print(f"gap #{gap_id} resolved by {one_line(source)} (score {score:.2f})")
    return 0
