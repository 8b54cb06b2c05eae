"""`sightline report` as one self-contained HTML file: each chart is a static SVG drawn by
matplotlib (the `ops` extra) and embedded as a data URI, so the page needs no script, no CDN and
no network, and charts' SVG ids cannot collide. Charts: cost per day by model, savings against
the top tier and against no frame de-duplication, frames kept and dropped by content type, the
latency distribution, quality signals by day, the top open knowledge gaps."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from datetime import date
from typing import Any

# Figure without pyplot: no global figure registry or display backend, safe in any thread
from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
figure { margin: 1em 0; } img.chart { width: 100%; max-width: 960px; border: 1px solid #eee; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } .note { color: #666; font-size: 0.9em; }
"""


def _svg(fig: Figure) -> str:
    """The figure as an <img> holding its SVG (a data URI: no file beside the page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="chart" alt="" src="data:image/svg+xml;base64,{data}">'


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(9.6, 3.6))
    ax = fig.subplots()
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _literal(text: str) -> str:
    """Stored text (a question, a model's name, a content type) as matplotlib draws it
    verbatim: text between two `$` would be read as TeX, mis-drawn or, when it does not parse,
    fail the whole report. An escaped `\\$` is drawn as `$`."""
    return text.replace("$", r"\$")


def _day(d: date | str) -> str:
    return d.isoformat() if isinstance(d, date) else d[:10]


def cost_chart(rows: list[dict[str, Any]]) -> str:
    days = sorted({_day(r["day"]) for r in rows})
    by_model: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        by_model[r["model"]][_day(r["day"])] = r["cost_usd"]
    fig, ax = _figure()
    bottom = [0.0] * len(days)
    for model, costs in sorted(by_model.items()):
        values = [costs.get(d, 0.0) for d in days]
        ax.bar(days, values, bottom=bottom, label=_literal(model))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("USD")
    ax.legend(fontsize="small")
    return _svg(fig)


def savings_chart(rows: list[dict[str, Any]]) -> str:
    days = [_day(r["day"]) for r in rows]
    actual = [r["cascade_usd"] for r in rows]
    fig, ax = _figure()
    width = 0.2
    xs = range(len(days))
    series = (
        ("cascade (what it cost)", actual),
        ("top tier alone", [r["top_tier_usd"] for r in rows]),
        ("screens sent again when unchanged",
         [a + r["unsent_usd"] for a, r in zip(actual, rows, strict=True)]),
        ("frames at full resolution",
         [a + r["downscale_usd"] for a, r in zip(actual, rows, strict=True)]),
    )
    for i, (label, values) in enumerate(series):
        ax.bar([x + (i - 1.5) * width for x in xs], values, width, label=label)
    ax.set_xticks(list(xs), days)
    ax.set_ylabel("USD")
    ax.legend(fontsize="small")
    return _svg(fig)


def frames_chart(rows: list[dict[str, Any]]) -> str:
    kinds = [_literal(r["content_type"]) for r in rows]
    fig, ax = _figure()
    ax.bar(kinds, [r["kept"] for r in rows], label="kept")
    ax.bar(kinds, [r["dropped"] for r in rows], bottom=[r["kept"] for r in rows],
           label="dropped")
    ax.set_ylabel("sampled frames")
    ax.legend(fontsize="small")
    return _svg(fig)


def latency_chart(first: list[float], end: list[float]) -> str:
    fig, ax = _figure()
    top = max([*first, *end, 1.0])
    bins = [top * i / 30 for i in range(31)]
    ax.hist(end, bins=bins, alpha=0.6, label="end of turn")
    ax.hist(first, bins=bins, alpha=0.6, label="first words")
    ax.set_xlabel("ms")
    ax.set_ylabel("turns")
    ax.legend(fontsize="small")
    return _svg(fig)


def quality_chart(series: list[dict[str, Any]]) -> str:
    days = [q["since"][:10] for q in series]
    fig, ax = _figure()
    for label, values in (
        ("retry rate", [q["retry_rate"] for q in series]),
        ("escalation rate", [q["escalation_rate"] for q in series]),
        ("mean confidence", [q["mean_confidence"] for q in series]),
        ("session completion", [q["sessions"]["completion_rate"] for q in series]),
        ("lookups lost", [q["lookups"]["lost_rate"] for q in series]),
    ):
        ax.plot(days, [float("nan") if v is None else v for v in values], marker="o",
                label=label)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    return _svg(fig)


def gaps_chart(gaps: list[dict[str, Any]]) -> str:
    fig = Figure(figsize=(9.6, 0.6 + 0.45 * len(gaps)))
    ax = fig.subplots()
    labels = [_literal(g["canonical_question"][:70]) for g in reversed(gaps)]
    ax.barh(labels, [g["score"] for g in reversed(gaps)])
    ax.set_xlabel("score (questions x mean severity)")
    return _svg(fig)


def _section(title: str, chart: str | None, empty: str, note: str = "") -> str:
    body = f"<figure>{chart}</figure>" if chart else f'<p class="note">{html.escape(empty)}</p>'
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{body}{extra}</section>"


def render(
    data: dict[str, Any], quality: dict[str, Any], prices_note: str, gaps: list[dict[str, Any]],
) -> str:
    """The report page. A section with nothing to chart says so instead of an empty chart.
    `gaps`: the top open knowledge gaps."""
    total = sum(r["cost_usd"] for r in data["cost_by_day_model"])
    first, end = quality["first_token_ms"], quality["turn_latency_ms"]
    unpriced = data["unpriced_models"]
    sections = [
        _section("Cost per day by model",
                 cost_chart(data["cost_by_day_model"]) if data["cost_by_day_model"] else None,
                 "No model calls in the window.",
                 f"Total ${total:.6f}. {prices_note}"
                 + (f" Not priced (counted as $0): {', '.join(unpriced)}." if unpriced else "")),
        _section("Savings: against the top tier alone and without frame de-duplication",
                 savings_chart(data["savings_by_day"]) if data["savings_by_day"] else None,
                 "No answered turns in the window.",
                 "Top tier alone: the answers' tokens at the top tier's price. Screens sent "
                 "again: each question re-sending a screen that had not changed. Full "
                 "resolution: the frames sent as captured."),
        _section("Frames kept and dropped by content type",
                 frames_chart(data["frames_by_content_type"])
                 if data["frames_by_content_type"] else None,
                 "No screen share in the window."),
        _section("Latency distribution",
                 latency_chart(data["first_token_ms"], data["turn_latency_ms"])
                 if data["turn_latency_ms"] else None,
                 "No timed turns in the window.",
                 "First words p50/p95/p99: " + " / ".join(
                     "-" if v is None else f"{v:.0f}" for v in first.values())
                 + " ms; end of turn: " + " / ".join(
                     "-" if v is None else f"{v:.0f}" for v in end.values()) + " ms."),
        _section("Quality by day",
                 quality_chart(data["quality_by_day"])
                 if any(q["turns"] for q in data["quality_by_day"]) else None,
                 "No turns in the window."),
        _section("Top knowledge gaps", gaps_chart(gaps) if gaps else None,
                 "No open knowledge gaps (`sightline gaps refresh` finds them).",
                 "; ".join(f"#{g['id']} {g['canonical_question']} ({g['frequency']} questions)"
                           for g in gaps)),
    ]
    title = f"Sightline report: {data['tenant']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(data['since'][:19])} .. {html.escape(data['until'][:19])} UTC; "
        f"{quality['turns']} turns, {quality['sessions']['started']} sessions.</p>"
        + "".join(sections) + "</body></html>\n"
    )
