"""`sightline report`: one self-contained HTML file, opened in Debian's headless Chromium
(through Playwright).

Protects: the page loads without a script or console error and asks for nothing beyond its own
file (no CDN); every chart is an image that decoded, and its screenshot is not blank (the same
check calls an empty part of the page blank); the figures behind the charts are the recorded
ones (cost per day by model sums to the calls' cost; savings against the top tier and the
unchanged screens not sent again come from the demo replay); a tenant with nothing in the
window gets a page that says so; stored text with `$` in it is drawn as written, not as TeX;
the quality-by-day points count only the window's turns, its first day's from `since` on.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DEMO_FIXTURE, cli_env, run_cli
from ops_fixture import record_plan
from PIL import Image, ImageStat
from playwright.async_api import Page, async_playwright

from agent.config import Settings
from agent.replay import replay
from agent.replay_script import load_fixture
from memory.db import Database
from memory.quality import window_quality
from memory.report_data import report_data
from memory.store import Store

CHROMIUM = "/usr/bin/chromium"

CHARTS = """JSON.stringify([...document.querySelectorAll('img.chart')].map(i => {
  const r = i.getBoundingClientRect();
  return {ok: i.complete && i.naturalWidth > 0, x: r.x + scrollX, y: r.y + scrollY,
          width: r.width, height: r.height};
}))"""


def blank(png: bytes) -> bool:
    """A picture with (almost) one colour: nothing was drawn."""
    image = Image.open(io.BytesIO(png)).convert("L")
    return max(ImageStat.Stat(image).stddev) < 2.0 or len(image.getcolors(1 << 16) or []) < 4


async def screenshot(page: Page, clip: dict[str, float]) -> bytes:
    return await page.screenshot(clip=clip, full_page=True)  # type: ignore[arg-type]


async def charts_render(page: Page) -> list[dict]:
    charts = json.loads(await page.evaluate(CHARTS))
    for chart in charts:
        assert chart["ok"], chart
        assert chart["width"] > 300 and chart["height"] > 100
        clip = {k: chart[k] for k in ("x", "y", "width", "height")}
        assert not blank(await screenshot(page, clip)), chart
    return charts


async def test_report_renders_in_headless_chromium(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    await record_plan(db, tmp_path / "costs")
    out = tmp_path / "report.html"
    code, stdout, err = await run_cli("report", "--tenant", "acme", "--since", "7d", "-o",
                                      str(out), env=cli_env(settings))
    assert code == 0, err
    assert f"written to {out}" in stdout and "5 charts" in stdout
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    errors: list[str] = []
    requests: list[str] = []
    async with async_playwright() as playwright:
        # Debian's chromium (debian-packages.txt): Playwright never downloads a browser here
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(out.as_uri(), wait_until="load")
        assert await page.title() == "Sightline report: acme"
        charts = await charts_render(page)
        assert len(charts) == 5
        assert errors == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        # the check can fail: the page's margin beside the first chart is blank
        first = charts[0]
        assert blank(await screenshot(page, {"x": 0, "y": first["y"], "width": 20,
                                             "height": first["height"]}))
        headings = await page.evaluate(
            "[...document.querySelectorAll('h2')].map(h => h.textContent).join('|')")
        assert "Top knowledge gaps" in headings and "Quality by day" in headings
        await browser.close()

    # a tenant with nothing in the window: sections say so, no empty charts
    empty = tmp_path / "empty.html"
    code, stdout, err = await run_cli("report", "--tenant", "nobody", "-o", str(empty),
                                      env=cli_env(settings))
    assert code == 0 and "0 charts" in stdout, err
    assert "No model calls in the window." in empty.read_text()
    code, _, err = await run_cli("report", "--tenant", "acme", "-o",
                                 str(tmp_path / "missing" / "r.html"), env=cli_env(settings))
    assert code == 2 and "cannot write" in err and "Traceback" not in err


async def test_report_figures_of_the_scripted_sessions_and_the_demo(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    await record_plan(db, tmp_path / "costs")
    result = await replay(load_fixture(DEMO_FIXTURE), settings, db)
    now = datetime.now(UTC)
    acme = await report_data(db.pool, "acme", now - timedelta(days=7), now)
    assert len({r["day"] for r in acme["cost_by_day_model"]}) == 3  # 2 days ago, 1, today
    calls = await db.pool.fetchval(
        "SELECT sum(cost_usd)::float8 FROM cost_events WHERE tenant = 'acme'"
        " AND kind IN ('model_call', 'model_error', 'speech')")
    assert sum(r["cost_usd"] for r in acme["cost_by_day_model"]) == pytest.approx(calls)
    assert acme["frames_by_content_type"] == [{"content_type": "code", "kept": 7,
                                               "dropped": 54}]
    assert len(acme["turn_latency_ms"]) == 9 and len(acme["quality_by_day"]) == 8

    demo = await report_data(db.pool, "demo", now - timedelta(days=1), now + timedelta(hours=1))
    [day] = demo["savings_by_day"]
    first, later = result.sessions
    assert day["unsent_usd"] == pytest.approx(first["images"]["unsent_saved_usd"]
                                              + later["images"]["unsent_saved_usd"])
    assert day["top_tier_usd"] > day["cascade_usd"] > 0
    kinds = {r["content_type"] for r in demo["frames_by_content_type"]}
    assert kinds and kinds <= {"code", "ui", "docs", "video"}
    assert sum(r["kept"] + r["dropped"] for r in demo["frames_by_content_type"]) == (
        first["frames"]["sampled"] + later["frames"]["sampled"])
    # per type as the summaries count them (a sample kept when a question showed it, once)
    summed: dict[str, tuple[int, int]] = {}
    for session in (first, later):
        for kind, counts in session["frames"]["by_content_type"].items():
            kept, dropped = summed.get(kind, (0, 0))
            summed[kind] = (kept + counts["kept"], dropped + counts["dropped"])
    assert {r["content_type"]: (r["kept"], r["dropped"])
            for r in demo["frames_by_content_type"]} == summed


async def test_stored_text_with_dollar_signs_is_drawn_as_written(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """A `$` pair in a gap's question, a model's name or a content type is text, not TeX: one
    that is no valid TeX (`a__b`) once failed the whole report."""
    question = "What is $a__b$ in the export template?"
    model, kind = "m$a__b$", "ui $x^^y$"
    await Store(db.pool).start_session("s-dollar", tenant="acme", user_id="u", room=None,
                                       source="replay", provider="cascade", model="cascade")
    await db.pool.execute(
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, model, cost_usd, detail)"
        " VALUES ('s-dollar', 'acme', 1, now(), 'model_call', $1, 0.001, '{}'),"
        " ('s-dollar', 'acme', 2, now(), 'frame', NULL, NULL, $2::jsonb)",
        model, json.dumps({"t": 0.0, "kept": True, "reason": "changed", "content_type": kind}))
    await db.pool.execute(
        "INSERT INTO knowledge_gaps (tenant, canonical_question, questions, frequency, severity,"
        " score, embed_model, embedding, first_seen, last_seen)"
        " VALUES ('acme', $1, '[]', 2, 0.9, 1.8, 'test', '[1, 0]', now(), now())", question)
    out = tmp_path / "report.html"
    code, stdout, err = await run_cli("report", "--tenant", "acme", "--since", "7d", "-o",
                                      str(out), env=cli_env(settings))
    assert code == 0 and "Traceback" not in err, err
    assert "3 charts" in stdout  # cost, frames, gaps
    # matplotlib's SVG names each text it drew in a comment: here, as stored
    drawn = "".join(base64.b64decode(data).decode()
                    for data in re.findall(r'base64,([^"]+)"', out.read_text()))
    for text in (question, model, kind):
        assert f"<!-- {text} -->" in drawn, text


async def test_quality_by_day_counts_only_the_windows_turns(
    db: Database, tmp_path: Path,
) -> None:
    """A window that starts mid-day: its first day's point once counted that day's turns
    before `since` (the day was read from midnight), so the chart disagreed with the window's
    totals. Here bob's session (1 day before `at`, 12:00 UTC) is on the first day but before
    `since`; carol's and alice's second (at `at`) are the window's only turns and sessions."""
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    await record_plan(db, tmp_path / "costs", at=at)
    started = await db.pool.fetchval(
        "SELECT started_at FROM sessions WHERE id = 's-alice-2'")
    since, until = started - timedelta(days=1), at + timedelta(hours=1)
    bob = await db.pool.fetchval(
        "SELECT max(ts) FROM cost_events WHERE session_id = 's-bob' AND kind = 'turn'")
    assert bob.date() == since.date() and bob < since  # the case: before `since`, same day
    data = await report_data(db.pool, "acme", since, until)
    window = await window_quality(db.pool, "acme", since, until)
    assert window["turns"] == 3 and window["sessions"]["started"] == 2  # carol's, alice's
    days = data["quality_by_day"]
    assert [(d["turns"], d["sessions"]["started"]) for d in days] == [(0, 0), (3, 2)]
    assert sum(d["turns"] for d in days) == window["turns"]
    midnight = datetime(2026, 11, 30, tzinfo=UTC).isoformat()
    assert [(d["since"], d["until"]) for d in days] == [
        (since.isoformat(), midnight), (midnight, until.isoformat())]
    assert days[0] == await window_quality(db.pool, "acme", since, datetime.fromisoformat(
        days[0]["until"]))
