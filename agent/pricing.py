"""The price table: turns a model call's token usage into US dollars.

Gemini and Claude prices come from `genai-prices` (pinned; its bundled data only: its network
auto-update, `UpdatePrices`, is never started, so a price changes with a reviewed upgrade of the
package, not behind the worker's back). A JSON file (bundled `prices.json`, or
`SIGHTLINE_PRICES`) overrides them and prices what genai-prices lacks (the reranker, speech),
with the date and the source of every figure, so a cost log can always say which prices produced
it. A model neither knows is unpriced, never guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as genai_types

from .config import ConfigError


def estimate_text_tokens(text: str) -> int:
    """Deterministic chars/4 estimate: what the local wire-format servers bill, and what a call
    cut off before the provider reported its usage is billed, labelled `estimated`."""
    return estimate_tokens(len(text))


def estimate_tokens(characters: int) -> int:
    """`estimate_text_tokens` for a text known by its length alone (an embedding call's)."""
    return math.ceil(characters / 4)

# the genai-prices providers Sightline calls, by model family; others are not looked up there
GENAI_PROVIDERS = {"gemini": "google", "claude": "anthropic"}
GENAI_SOURCE = f"genai-prices {genai_prices.__version__}"

BUNDLED_PRICES = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class ModelPrice:
    model: str
    input_per_mtok: float
    cached_input_per_mtok: float
    output_per_mtok: float
    cache_write_per_mtok: float
    per_search_unit_usd: float  # rerankers bill searches, not tokens
    per_audio_minute_usd: float  # speech-to-text bills audio minutes
    per_mchar_usd: float  # text-to-speech bills characters (per million)
    date: str
    source: str
    # genai-prices' model (and provider), whose own calculation prices a call: it knows
    # conditional and tiered prices the per-token rates above (its base tier) cannot express
    genai: tuple[genai_types.Provider, genai_types.ModelInfo] | None = field(
        default=None, compare=False, repr=False)

    def input_rate(self, usage: Usage, from_end: float) -> float:
        """Dollars a token of a call's prompt was billed at, `from_end` tokens before the
        prompt's end. A provider's report counts the prompt in three runs, in order: read from
        its cache, written to it, then fresh input (`Usage.input_tokens`), which ends the
        prompt. A place past the report's runs (an estimate that ran over) is in its first
        run; a prompt it billed nothing of (refused, never sent) cost nothing."""
        rate = 0.0
        for tokens, per_mtok in ((usage.input_tokens, self.input_per_mtok),
                                 (usage.cache_write_tokens, self.cache_write_per_mtok),
                                 (usage.cached_input_tokens, self.cached_input_per_mtok)):
            if tokens:
                rate = per_mtok
                if from_end < tokens:
                    break
                from_end -= tokens
        return rate / 1_000_000


@dataclass(frozen=True)
class Usage:
    """Tokens of one model call (`input_tokens` excludes the cached and cache-write parts), or
    the search units of a rerank call."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    search_units: float = 0.0
    audio_seconds: float = 0.0  # speech heard (STT)
    characters: int = 0  # text spoken (TTS)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.search_units + other.search_units,
            self.audio_seconds + other.audio_seconds,
            self.characters + other.characters,
        )


MAX_USD_PER_MTOK = 10_000.0  # far above any model's price: a larger figure is a typo


class _BadPrice(ValueError):
    """A figure of the table that is not a price; its message names the model and the field."""


def _dollars(model: str, key: str, raw: object) -> float:
    """A price of the table: a finite number of dollars, not negative, not absurd."""
    value = float(raw)  # type: ignore[arg-type]
    if not 0.0 <= value <= MAX_USD_PER_MTOK:  # also refuses NaN
        raise _BadPrice(f"{model}.{key} = {raw!r}: must be dollars in [0, {MAX_USD_PER_MTOK:g}]")
    return value


def _model_price(model: str, entry: dict[str, object]) -> ModelPrice:
    def price(key: str, default: object) -> float:
        return _dollars(model, key, entry.get(key, default))

    fresh = entry["input_per_mtok"]
    return ModelPrice(
        model=model,
        input_per_mtok=price("input_per_mtok", None),
        cached_input_per_mtok=price("cached_input_per_mtok", fresh),
        output_per_mtok=_dollars(model, "output_per_mtok", entry["output_per_mtok"]),
        cache_write_per_mtok=price("cache_write_per_mtok", fresh),
        per_search_unit_usd=price("per_search_unit_usd", 0.0),
        per_audio_minute_usd=price("per_audio_minute_usd", 0.0),
        per_mchar_usd=price("per_mchar_usd", 0.0),
        date=str(entry["date"]),
        source=str(entry["source"]),
    )


def _base_rate(value: Decimal | genai_types.TieredPrices | None) -> float | None:
    if isinstance(value, genai_types.TieredPrices):
        return float(value.base)
    return None if value is None else float(value)


def _genai_price(model: str) -> ModelPrice | None:
    """genai-prices' price of `model` (a Gemini or Claude id), at today's rates."""
    provider_id = next((p for family, p in GENAI_PROVIDERS.items() if model.startswith(family)),
                       None)
    if provider_id is None:
        return None
    snapshot = data_snapshot.get_snapshot()
    ref = model
    while True:  # a dated or versioned id (`gemini-2.5-flash-001`) is its model's variant
        try:
            provider, info = snapshot.find_provider_model(ref, None, provider_id, None)
            break
        except LookupError:
            shorter = ref.rpartition("-")[0]
            if not shorter.startswith(tuple(GENAI_PROVIDERS)) or shorter.count("-") < 1:
                return None
            ref = shorter
    rates = info.get_prices(datetime.now(UTC))
    fresh = _base_rate(rates.input_mtok)
    output = _base_rate(rates.output_mtok)
    if fresh is None or output is None:
        return None
    return ModelPrice(
        model=info.id, input_per_mtok=fresh,
        cached_input_per_mtok=_base_rate(rates.cache_read_mtok) or fresh,
        output_per_mtok=output,
        cache_write_per_mtok=_base_rate(rates.cache_write_mtok) or fresh,
        per_search_unit_usd=0.0, per_audio_minute_usd=0.0, per_mchar_usd=0.0, date=GENAI_SOURCE,
        source=(provider.pricing_urls or [GENAI_SOURCE])[0], genai=(provider, info),
    )


class PriceTable:
    def __init__(self, prices: dict[str, ModelPrice], path: Path) -> None:
        self._prices = prices  # the JSON file's: overrides, and what genai-prices lacks
        self.path = path
        self._genai: dict[str, ModelPrice | None] = {}

    def describe(self) -> str:
        """Where the prices come from, for `sightline config` and the report."""
        return f"{GENAI_SOURCE} (bundled data, no auto-update), overridden by {self.path}"

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        path = path or BUNDLED_PRICES
        try:
            raw = json.loads(path.read_text())
            prices = {model: _model_price(model, entry) for model, entry in raw["models"].items()}
        except OSError as exc:
            raise ConfigError(f"SIGHTLINE_PRICES: cannot read {path}: {exc.strerror}") from None
        except _BadPrice as exc:
            raise ConfigError(f"SIGHTLINE_PRICES: {path}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ConfigError(
                f"SIGHTLINE_PRICES: {path} is not a valid price table "
                f"(need models.<id>.input_per_mtok/output_per_mtok/date/source): {exc!r}"
            ) from None
        return cls(prices, path)

    def get(self, model: str) -> ModelPrice | None:
        """The JSON file's price (exact id first, then the longest id the model id starts with:
        dated variants), else genai-prices'."""
        if model in self._prices:
            return self._prices[model]
        candidates = [m for m in self._prices if model.startswith(m)]
        if candidates:
            return self._prices[max(candidates, key=len)]
        if model not in self._genai:
            self._genai[model] = _genai_price(model)
        return self._genai[model]

    def cache_savings(self, model: str, cached_input_tokens: int) -> float:
        """Dollars the cached tokens saved against paying for them as fresh input."""
        price = self.get(model)
        if price is None:
            return 0.0
        saved = price.input_per_mtok - price.cached_input_per_mtok
        return cached_input_tokens * saved / 1_000_000

    def cost(self, model: str, usage: Usage) -> float | None:
        """Dollars for one call; None when the model is not in the table (logged, not guessed)."""
        price = self.get(model)
        if price is None:
            return None
        if price.genai is not None:
            return _genai_cost(price.genai, usage)
        return (
            usage.input_tokens * price.input_per_mtok
            + usage.cached_input_tokens * price.cached_input_per_mtok
            + usage.cache_write_tokens * price.cache_write_per_mtok
            + usage.output_tokens * price.output_per_mtok
        ) / 1_000_000 + usage.search_units * price.per_search_unit_usd + (
            usage.audio_seconds / 60 * price.per_audio_minute_usd
            + usage.characters * price.per_mchar_usd / 1_000_000)


def _genai_cost(genai: tuple[genai_types.Provider, genai_types.ModelInfo], usage: Usage) -> float:
    """genai-prices' calculation; its input tokens include the cached and cache-write ones."""
    provider, info = genai
    counted: dict[str, Any] = {
        "input_tokens": usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens,
        "cache_read_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
    }
    return float(info.calc_price(genai_types.Usage(**counted), provider).total_price)
