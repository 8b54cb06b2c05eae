"""The price table: turns a model call's token usage into US dollars.

Prices live in a JSON file (bundled `prices.json`, or `SIGHTLINE_PRICES`) with the date and the
source of every figure, so a cost log can always say which prices produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

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


class PriceTable:
    def __init__(self, prices: dict[str, ModelPrice], path: Path) -> None:
        self._prices = prices
        self.path = path

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
        if not prices:
            raise ConfigError(f"SIGHTLINE_PRICES: {path} prices no model: every call would be "
                              "unpriced")
        return cls(prices, path)

    def get(self, model: str) -> ModelPrice | None:
        """Exact id first, then the longest known id the model id starts with (dated variants)."""
        if model in self._prices:
            return self._prices[model]
        candidates = [m for m in self._prices if model.startswith(m)]
        return self._prices[max(candidates, key=len)] if candidates else None

    def cache_savings(self, model: str, cached_input_tokens: int) -> float:
        """Dollars the cached tokens saved against paying for them as fresh input."""
        price = self.get(model)
        if price is None:
            return 0.0
        saved = price.input_per_mtok - price.cached_input_per_mtok
        return cached_input_tokens * saved / 1_000_000

    def input_cost(self, model: str, tokens: int) -> float | None:
        """Dollars for `tokens` of fresh input, such as a request's images."""
        price = self.get(model)
        return None if price is None else tokens * price.input_per_mtok / 1_000_000

    def cost(self, model: str, usage: Usage) -> float | None:
        """Dollars for one call; None when the model is not in the table (logged, not guessed)."""
        price = self.get(model)
        if price is None:
            return None
        return (
            usage.input_tokens * price.input_per_mtok
            + usage.cached_input_tokens * price.cached_input_per_mtok
            + usage.cache_write_tokens * price.cache_write_per_mtok
            + usage.output_tokens * price.output_per_mtok
        ) / 1_000_000 + usage.search_units * price.per_search_unit_usd + (
            usage.audio_seconds / 60 * price.per_audio_minute_usd
            + usage.characters * price.per_mchar_usd / 1_000_000)
