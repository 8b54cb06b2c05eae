"""`sightline report --tenant T --since 7d -o report.html`: one self-contained HTML page with
the tenant's costs, savings, frames, latency and quality as charts."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import UserError, duration, identifier
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="an HTML report with charts (one file, opens offline)")
    p.add_argument("--tenant", type=identifier, required=True)
    p.add_argument("--since", type=duration, default=7 * 86400.0,
                   help="how far back: 24h, 7d, 30d (default 7d)")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                   help="the HTML file to write (default report.html)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from memory.db import Database
    from memory.gaps import gaps
    from memory.quality import window_quality
    from memory.report_data import report_data

    from .pricing import PriceTable

    try:
        from .report import render
    except ImportError as exc:  # the worker image installs no charting library
        raise UserError(f"`report` needs the `ops` extra ({exc.name} is missing): "
                        "pip install 'sightline[ops]'") from None
    prices = PriceTable.load(settings.prices_file)
    until = datetime.now(UTC)
    since = until - timedelta(seconds=args.since)
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        data = await report_data(db.pool, args.tenant, since, until)
        quality = await window_quality(db.pool, args.tenant, since, until)
        top_gaps = (await gaps(db.pool, args.tenant, "open"))[:10]
    finally:
        await db.close()
    page = render(data, quality, f"Prices: {prices.path}.", top_gaps)
    try:
        args.output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"Report of tenant {args.tenant} written to {args.output} "
          f"({len(page) // 1024} KB, {page.count('<img class=')} charts)")
    return 0
