"""The price table and a session's record (event log, meter, totals), on a real Postgres.

Protects: every bundled price says where and when it came from; dollars are computed exactly and
dated model ids find their base price; an unknown model is reported, never guessed; a price-file
override works and a broken one names SIGHTLINE_PRICES; every event lands both in the JSONL
log and in `cost_events`, with a summary that adds up from the events alone; `sightline costs`
reports the same totals.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import cli_env, run_cli

from agent.config import ConfigError, Settings
from agent.pricing import BUNDLED_PRICES, GENAI_SOURCE, PriceTable, Usage
from agent.session_record import SessionRecord, recompute_summary
from agent.worker import publish_costs
from memory.db import Database
from memory.store import Store
from vision.change import ChangeDecision
from vision.content_type import ContentStats, ContentType
from vision.screen import FrameDecision


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]




# -- price table ---------------------------------------------------------------------------


def test_bundled_table_has_date_and_source_for_every_model() -> None:
    raw = json.loads(BUNDLED_PRICES.read_text())
    table = PriceTable.load()
    assert table.path == BUNDLED_PRICES
    assert raw["models"], "the bundled table is empty"
    for model, entry in raw["models"].items():
        assert entry.get("date"), model
        assert entry.get("source"), model
        price = table.get(model)
        assert price is not None
        assert len(price.date) == 10 and price.date[4] == "-" and price.date[7] == "-"
        assert price.source.startswith("https://")
        if entry.get("per_search_unit_usd") is not None:  # a reranker: billed per search
            assert price.per_search_unit_usd > 0 and price.input_per_mtok == 0
        elif {"per_audio_minute_usd", "per_mchar_usd"} & entry.keys():  # a speech engine
            assert price.input_per_mtok == 0 and price.output_per_mtok == 0
            assert price.per_audio_minute_usd > 0 or price.per_mchar_usd > 0 or (
                entry["provider"] == "local")
        elif "embedding" in model:  # billed for its input alone: it answers with vectors
            assert price.input_per_mtok > 0 and price.output_per_mtok == 0
        else:
            assert price.input_per_mtok > 0 and price.output_per_mtok > 0


def test_bundled_table_prices_the_default_models() -> None:
    table = PriceTable.load()
    for tier in Settings.from_env({}).cascade_tiers():
        assert table.get(tier.model) is not None, tier.model


def test_cost_arithmetic_is_exact() -> None:
    table = PriceTable.load()
    # gemini-2.5-flash (genai-prices 0.2.3): $0.30 in, $0.03 cached, $2.50 out per 1M tokens
    usage = Usage(input_tokens=1000, cached_input_tokens=2000, output_tokens=500)
    assert table.cost("gemini-2.5-flash", usage) == pytest.approx(0.00161, abs=1e-12)
    million = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost("gemini-2.5-flash", million) == pytest.approx(2.8, abs=1e-12)
    # claude-haiku-4-5: $1 in, $0.10 cache read, $1.25 cache write, $5 out
    claude = Usage(
        input_tokens=10_000, cached_input_tokens=100_000, cache_write_tokens=4_000,
        output_tokens=2_000,
    )
    assert table.cost("claude-haiku-4-5", claude) == pytest.approx(0.035, abs=1e-12)
    assert table.cost("gemini-2.5-flash", Usage()) == 0.0


def test_a_place_in_the_prompt_is_billed_at_the_rate_of_its_run_in_the_report() -> None:
    """A provider counts a prompt in runs, in order: read from its cache, written to it, then
    fresh input, which ends the prompt. A place counted from the prompt's end is in one."""
    haiku = PriceTable.load().get("claude-haiku-4-5")  # $1 in, $0.10 read, $1.25 write
    assert haiku is not None
    claude = Usage(input_tokens=100, cache_write_tokens=1000, cached_input_tokens=2000)
    assert [haiku.input_rate(claude, place) * 1e6 for place in (0, 99.5, 100, 1099, 1100)] == [
        pytest.approx(rate) for rate in (1.0, 1.0, 1.25, 1.25, 0.10)]
    # past what the report counts (an estimate that ran over): its first run
    assert haiku.input_rate(claude, 10_000) * 1e6 == pytest.approx(0.10)
    written = Usage(input_tokens=100, cache_write_tokens=1000)
    assert haiku.input_rate(written, 10_000) * 1e6 == pytest.approx(1.25)
    # Gemini's implicit cache writes nothing: a cached prefix, then fresh input
    flash = PriceTable.load().get("gemini-2.5-flash")  # $0.30 in, $0.03 cached
    assert flash is not None
    gemini = Usage(input_tokens=500, cached_input_tokens=1500)
    assert [flash.input_rate(gemini, place) * 1e6 for place in (200, 600)] == [
        pytest.approx(0.30), pytest.approx(0.03)]
    # an estimated report is all fresh; a prompt billed nothing (refused) cost nothing
    assert flash.input_rate(Usage(input_tokens=50), 400) * 1e6 == pytest.approx(0.30)
    assert flash.input_rate(Usage(), 0) == 0.0


def test_prefix_matching_for_dated_ids() -> None:
    table = PriceTable.load()
    dated = table.get("gemini-2.5-flash-001")
    assert dated is not None and dated.model == "gemini-2.5-flash"
    # longest prefix wins: a flash-lite variant is not billed as flash
    lite = table.get("gemini-2.5-flash-lite-preview-09-2025")
    assert lite is not None and lite.model == "gemini-2.5-flash-lite"
    sonnet = table.get("claude-sonnet-4-5-20250929")
    assert sonnet is not None and sonnet.model == "claude-sonnet-4-5"
    usage = Usage(input_tokens=1000, output_tokens=1000)
    assert table.cost("gemini-2.5-flash-001", usage) == table.cost("gemini-2.5-flash", usage)


def test_unknown_model_is_not_priced() -> None:
    table = PriceTable.load()
    assert table.get("gpt-4o") is None
    assert table.get("gemini-2.5") is None  # a shorter id is not a dated variant
    assert table.cost("gpt-4o", Usage(input_tokens=10)) is None


def write_prices(path: Path, models: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"models": models}))
    return path


def test_prices_override_from_env(tmp_path: Path) -> None:
    path = write_prices(tmp_path / "prices.json", {
        "house-model": {"input_per_mtok": 2, "output_per_mtok": 10, "date": "2026-01-02",
                        "source": "contract #42"},
    })
    settings = Settings.from_env({"SIGHTLINE_PRICES": str(path)})
    table = PriceTable.load(settings.prices_file)
    assert table.path == path
    price = table.get("house-model")
    assert price is not None and price.source == "contract #42"
    # cached and cache-write prices default to the input price
    assert price.cached_input_per_mtok == 2 and price.cache_write_per_mtok == 2
    assert table.cost("house-model", Usage(input_tokens=500_000, cached_input_tokens=500_000,
                                           output_tokens=100_000)) == pytest.approx(3.0)
    # the file replaces the bundled overrides; genai-prices still prices what it does not list
    assert table.get("rerank-v3.5") is None
    flash = table.get("gemini-2.5-flash")
    assert flash is not None and flash.date.startswith("genai-prices ")
    # an entry of the file overrides genai-prices
    write_prices(path, {"gemini-2.5-flash": {"input_per_mtok": 9, "output_per_mtok": 9,
                                             "date": "2026-11-30", "source": "contract #43"}})
    assert PriceTable.load(path).cost("gemini-2.5-flash", Usage(output_tokens=10**6)) == 9


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"prices": {}}),
        json.dumps({"models": []}),
        json.dumps({"models": {"m": 5}}),
        json.dumps({"models": {"m": {"input_per_mtok": 1, "output_per_mtok": 2,
                                     "source": "x"}}}),
        json.dumps({"models": {"m": {"input_per_mtok": "cheap", "output_per_mtok": 2,
                                     "date": "2025-01-01", "source": "x"}}}),
        json.dumps({"models": {"m": {"output_per_mtok": 2, "date": "2025-01-01",
                                     "source": "x"}}}),
        "[" * 100_000,  # deeper than the JSON decoder recurses
    ],
)
def test_malformed_price_file_names_the_variable(tmp_path: Path, content: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    assert "SIGHTLINE_PRICES" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("figure", ["NaN", "Infinity", "-1", "1e999", "50000"])
def test_a_figure_that_is_not_a_price_names_the_model_and_field(tmp_path: Path,
                                                                figure: str) -> None:
    path = tmp_path / "prices.json"
    entry = f'{{"input_per_mtok": 1, "output_per_mtok": {figure}, "date": "d", "source": "x"}}'
    path.write_text(f'{{"models": {{"m": {entry}}}}}')  # NaN and Infinity: Python's JSON reads them
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    message = str(info.value)
    assert "m.output_per_mtok" in message and "must be dollars in [0, 10000]" in message
    assert "\n" not in message


def test_missing_price_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable.load(tmp_path / "nope.json")
    assert "SIGHTLINE_PRICES" in str(info.value)
    assert "nope.json" in str(info.value)


# -- the session record on Postgres ----------------------------------------------------------


async def open_record(
    db: Database, settings: Settings, session_id: str, prices: PriceTable | None = None
) -> tuple[Store, SessionRecord]:
    store = Store(db.pool)
    await store.start_session(
        session_id, tenant="acme", user_id="u-1", room="room-1", source="replay",
        provider="gemini", model="gemini-2.5-flash",
    )
    record = SessionRecord.open(
        session_id=session_id, tenant="acme", source="replay", costs_dir=settings.costs_dir,
        prices=prices or PriceTable.load(), store=store,
    )
    return store, record


def sampled(t: float, kept: bool, reason: str, content: ContentType) -> FrameDecision:
    stats = ContentStats(laplacian_var=900.0, edge_ratio=0.05, motion=0.01)
    change = ChangeDecision(t, kept, reason, content, 3, 40, 5, 2, stats)
    return FrameDecision(t, kept, reason, 1280, 720, change)


def frame(record: SessionRecord, decision: FrameDecision) -> None:
    record.events.record("frame", detail=decision.as_record())


def record_sample_events(record: SessionRecord) -> None:
    """Frames and model calls, then the count of frames received (as a session closes)."""
    meter = record.meter
    frame(record, sampled(0.0, True, "first", ContentType.CODE))
    meter.model_call(
        provider="gemini", model="gemini-2.5-flash",
        usage=Usage(input_tokens=1000, cached_input_tokens=2000, output_tokens=500),
        images=1, latency_ms=123.456,
    )
    frame(record, sampled(1.0, True, "local_change", ContentType.CODE))
    frame(record, sampled(1.5, False, "noise", ContentType.CODE))
    frame(record, sampled(1.7, False, "video_rate_limit", ContentType.VIDEO))
    frame(record, FrameDecision(2.0, False, "invalid", 0, 0))
    meter.model_call(
        provider="gemini", model="gemini-2.5-flash-001",
        usage=Usage(input_tokens=1_000_000, output_tokens=1_000_000), images=0, latency_ms=10,
    )
    meter.model_call(
        provider="anthropic", model="claude-haiku-4-5",
        usage=Usage(input_tokens=10_000, cached_input_tokens=100_000, cache_write_tokens=4_000,
                    output_tokens=2_000),
        images=2, latency_ms=50,
    )
    meter.model_call(
        provider="gemini", model="gemini-2.5-flash", usage=Usage(input_tokens=40),
        images=1, latency_ms=5000, error="gemini gemini-2.5-flash: HTTP 500: boom",
    )
    frame(record, FrameDecision(3.0, False, "invalid", 0, 0))
    record.events.record("frame_count", detail={"received": 17})


EXPECTED_TOTAL = 0.00161 + 2.8 + 0.035 + 40 * 0.3 / 1_000_000


async def test_events_go_to_jsonl_and_cost_events(db: Database, settings: Settings) -> None:
    store, record = await open_record(db, settings, "sess_record_1")
    record_sample_events(record)
    summary = await record.close()
    assert record.events.closed

    events = read_jsonl(record.events.path)
    assert record.events.path == settings.costs_dir / "sess_record_1.jsonl"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["kind"] for e in events] == [
        "frame", "model_call", "frame", "frame", "frame", "frame", "model_call", "model_call",
        "model_error", "frame", "frame_count", "summary",
    ]
    assert all(e["session_id"] == "sess_record_1" and e["tenant"] == "acme" for e in events)
    assert events[1]["cost_usd"] == pytest.approx(0.00161, abs=1e-12)
    assert events[1]["images"] == 1 and events[1]["latency_ms"] == 123.5
    assert events[8]["detail"]["error"].endswith("HTTP 500: boom")
    assert events[3]["detail"] == {
        "t": 1.5, "kept": False, "reason": "noise", "content_type": "code", "phash_distance": 3,
        "changed_px": 40, "changed_tiles": 5, "noise_px": 2, "motion": 0.01, "moving_share": 0.0,
        "moving_edge_ratio": 0.0,
        "laplacian_var": 900.0, "edge_ratio": 0.05, "regions": [], "width": 1280,
        "height": 720,
    }
    assert events[-1]["detail"] == json.loads(json.dumps(summary))
    # the summary is a fold of the events: the same totals from the JSONL file alone (what
    # `sightline costs ID --close` writes for a session its process left open)
    replayed = recompute_summary(events, session_id="sess_record_1", tenant="acme",
                                 source="replay", prices=BUNDLED_PRICES,
                                 cost_log=record.events.path)
    assert {k: v for k, v in replayed.items() if k != "duration_s"} == {
        k: v for k, v in summary.items()
        if k not in ("duration_s", "db_spilled_events", "outcome")}
    assert summary["outcome"] == "completed"

    # summary totals
    assert summary["total_cost_usd"] == pytest.approx(EXPECTED_TOTAL, abs=1e-8)
    flash = summary["by_model"]["gemini-2.5-flash"]
    assert flash["calls"] == 2 and flash["errors"] == 1
    assert flash["input_tokens"] == 1040 and flash["cached_input_tokens"] == 2000
    assert flash["output_tokens"] == 500 and flash["images"] == 2
    assert summary["by_model"]["gemini-2.5-flash-001"]["calls"] == 1
    haiku = summary["by_model"]["claude-haiku-4-5"]
    assert haiku["cache_write_tokens"] == 4000 and haiku["cost_usd"] == pytest.approx(0.035)
    assert sum(m["cost_usd"] for m in summary["by_model"].values()) == pytest.approx(
        summary["total_cost_usd"], abs=1e-7)
    # an invalid frame never takes a sampling slot, so it is dropped but not "sampled"
    assert summary["frames"] == {
        "received": 17, "sampled": 4, "kept": 2,
        "dropped": {"noise": 1, "video_rate_limit": 1, "invalid": 2},
        "by_content_type": {
            "code": {"sampled": 3, "kept": 2, "dropped": 1},
            "video": {"sampled": 1, "kept": 0, "dropped": 1},
        },
    }
    assert summary["unpriced_models"] == []
    assert summary["db_spilled_events"] == 0
    # prompt cache: 102k of 1.117M prompt tokens read from cache; saved vs fresh input prices
    assert summary["prompt_cache"] == {
        "hit_rate": 0.0913, "cached_input_tokens": 102_000, "prompt_tokens": 1_117_040,
        "saved_usd": pytest.approx(2000 * 0.27e-6 + 100_000 * 0.9e-6),
    }

    # the same events, minus the summary, are rows of cost_events
    rows = await db.pool.fetch(
        "SELECT seq, kind, model, input_tokens, cached_input_tokens, cache_write_tokens,"
        " output_tokens, images, cost_usd, detail FROM cost_events"
        " WHERE session_id = $1 ORDER BY seq", "sess_record_1",
    )
    assert [r["seq"] for r in rows] == [e["seq"] for e in events[:-1]]
    assert [r["kind"] for r in rows] == [e["kind"] for e in events[:-1]]
    for row, event in zip(rows, events[:-1], strict=True):
        assert row["input_tokens"] == event.get("input_tokens", 0)
        assert row["output_tokens"] == event.get("output_tokens", 0)
        assert row["images"] == event.get("images", 0)
        assert float(row["cost_usd"]) == pytest.approx(event["cost_usd"] or 0.0, abs=1e-8)
        assert json.loads(row["detail"]) == event["detail"]

    session = await store.get_session("sess_record_1")
    assert session is not None
    assert session["ended_at"] is not None
    assert session["total_cost_usd"] == pytest.approx(EXPECTED_TOTAL, abs=1e-8)
    assert session["model_calls"] == 3  # model_error rows are not counted as calls
    assert session["summary"]["frames"]["kept"] == 2
    assert not (settings.costs_dir / "sess_record_1.db-spill.jsonl").exists()


async def test_unknown_model_is_listed_as_unpriced(db: Database, settings: Settings) -> None:
    _, record = await open_record(db, settings, "sess_unpriced")
    event = record.meter.model_call(
        provider="gemini", model="gemini-9-ultra", usage=Usage(input_tokens=1000),
        images=0, latency_ms=1,
    )
    record.meter.model_call(
        provider="gemini", model="gemini-2.5-flash", usage=Usage(input_tokens=1_000_000),
        images=0, latency_ms=1,
    )
    assert event["cost_usd"] is None
    summary = await record.close()
    assert summary["unpriced_models"] == ["gemini-9-ultra"]
    assert summary["total_cost_usd"] == pytest.approx(0.3)
    assert summary["by_model"]["gemini-9-ultra"]["cost_usd"] == 0
    row = await db.pool.fetchrow(
        "SELECT cost_usd FROM cost_events WHERE session_id = $1 AND model = $2",
        "sess_unpriced", "gemini-9-ultra",
    )
    assert row is not None and row["cost_usd"] is None


async def test_the_meter_uses_a_price_override(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    path = write_prices(tmp_path / "custom.json", {
        "gemini-2.5-flash": {"input_per_mtok": 1, "output_per_mtok": 1, "date": "2026-01-01",
                             "source": "negotiated"},
    })
    _, record = await open_record(db, settings, "sess_override", PriceTable.load(path))
    record.meter.model_call(
        provider="gemini", model="gemini-2.5-flash",
        usage=Usage(input_tokens=1_000_000, output_tokens=1_000_000), images=0, latency_ms=1,
    )
    summary = await record.close()
    assert summary["total_cost_usd"] == pytest.approx(2.0)
    assert summary["prices"] == str(path)


async def test_cli_costs_lists_and_shows_the_session(
    db: Database, settings: Settings
) -> None:
    _, record = await open_record(db, settings, "sess_cli_1")
    record_sample_events(record)
    summary = await record.close()
    env = cli_env(settings)

    code, out, err = await run_cli("costs", "--json", env=env)
    assert code == 0, err
    sessions = json.loads(out)
    assert [s["id"] for s in sessions] == ["sess_cli_1"]
    listed = sessions[0]
    assert listed["tenant"] == "acme" and listed["source"] == "replay"
    assert listed["model_calls"] == 3
    assert listed["total_cost_usd"] == pytest.approx(summary["total_cost_usd"], abs=1e-8)

    code, out, err = await run_cli("costs", "sess_cli_1", "--json", env=env)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == "sess_cli_1"
    assert shown["total_cost_usd"] == pytest.approx(summary["total_cost_usd"], abs=1e-8)
    assert shown["summary"]["total_cost_usd"] == summary["total_cost_usd"]
    assert [e["seq"] for e in shown["events"]] == list(range(1, 12))

    code, out, err = await run_cli("costs", "sess_cli_1", env=env)
    assert code == 0, err
    assert f"total: ${summary['total_cost_usd']:.6f}" in out

    code, out, err = await run_cli("costs", "no_such_session", env=env)
    assert code == 2
    assert err.startswith("sightline: no session 'no_such_session'")
    assert "Traceback" not in err


async def test_cli_costs_negative_limit_is_one_line(db: Database, settings: Settings) -> None:
    env = cli_env(settings)
    code, _, err = await run_cli("costs", "--limit", "-1", env=env)
    assert "Traceback" not in err
    assert code == 2
    # a usage error: one line naming the argument
    assert ("argument --limit: must be a whole number from 1 to 2147483647, got '-1'"
            in err.strip().splitlines()[-1])


def test_gemini_and_claude_prices_come_from_genai_prices_without_auto_update() -> None:
    """genai-prices is the source for the cascade's models; its network update never runs, so
    the snapshot in use is the one the pinned package bundles."""
    from genai_prices import data_snapshot

    table = PriceTable.load()
    for tier in Settings.from_env({}).cascade_tiers():
        price = table.get(tier.model)
        assert price is not None and price.date == GENAI_SOURCE, tier.model
    assert data_snapshot.get_snapshot().from_auto_update is False
    assert "no auto-update" in table.describe()
    # its own calculation prices a call: haiku's cache read and write rates included
    haiku = Usage(input_tokens=10_000, cached_input_tokens=100_000, cache_write_tokens=4_000,
                  output_tokens=2_000)
    assert table.cost("claude-haiku-4-5", haiku) == pytest.approx(
        (10_000 * 1 + 100_000 * 0.1 + 4_000 * 1.25 + 2_000 * 5) / 1e6, abs=1e-12)
    # a dated variant is its model's; another vendor's model is not priced from there
    assert table.get("claude-sonnet-4-6-20261101").model == "claude-sonnet-4-6"  # type: ignore[union-attr]
    assert table.get("gpt-4o") is None


async def test_the_console_cost_meter_moves_with_speech_too(tmp_path: Path) -> None:
    """The console's meter was sent after model calls alone: after a spoken reply (TTS, most
    of a voice session's bill) its total stayed behind until the next model call."""
    record = SessionRecord.open(session_id="s-meter", tenant="acme", source="live",
                                costs_dir=tmp_path, prices=PriceTable.load(None), store=None)
    sent: list[dict[str, Any]] = []
    publish_costs(SimpleNamespace(record=record), sent.append)  # type: ignore[arg-type]
    record.meter.speech(SimpleNamespace(
        type="tts_metrics", metadata=SimpleNamespace(model_name="sonic-3",
                                                     model_provider="cartesia"),
        audio_duration=2.0, characters_count=400, duration=0.6, ttfb=0.2, cancelled=False),
        provider="cartesia")
    record.events.record("frame_count", detail={"received": 1, "failed": 0, "resubscribed": 0})
    [meter] = sent  # the speech, not the free event
    assert meter["model_calls"] == 0 and meter["last"]["kind"] == "speech"
    assert meter["total_usd"] > 0
    assert meter["total_usd"] == pytest.approx(record.totals.total_cost_usd)
    await record.close()
