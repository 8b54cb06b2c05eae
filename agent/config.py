"""Sightline's one settings object, read from environment variables and validated at start.

Every setting is declared once in `_FIELDS` (variable, parser, default, whether it is a secret),
so validation, `sightline config` and the README's table cannot drift apart. A bad value raises
`ConfigError` naming the variable; the CLI prints it as one line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the environment variable."""


PROVIDERS = ("gemini", "anthropic")
IMAGE_DETAILS = ("low", "medium", "high")
IMAGE_POLICIES = ("changed", "always")


def _text(raw: str) -> str:
    return raw.strip()


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a finite number > 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


@dataclass(frozen=True)
class Tier:
    """One model of the cascade: who answers, and how sure it must be to answer alone."""

    provider: str
    model: str
    threshold: float
    max_output_tokens: int

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}:{self.threshold:g}:{self.max_output_tokens}"


def parse_tiers(raw: str) -> tuple[Tier, ...]:
    """`provider:model:threshold:max_tokens`, comma-separated, cheapest first."""
    tiers = []
    for index, part in enumerate(p.strip() for p in raw.split(",")):
        fields = [f.strip() for f in part.split(":")]
        if len(fields) != 4 or not fields[1]:
            raise ValueError(f"tier {index} must be provider:model:threshold:max_tokens, "
                             f"got {part!r}")
        threshold = float(fields[2])
        if not 0 <= threshold <= 1:
            raise ValueError(f"tier {index}: threshold must be between 0 and 1")
        tiers.append(Tier(_provider(fields[0]), fields[1], threshold, _positive_int(fields[3])))
    return tuple(tiers)


def _choice(*values: str) -> Callable[[str], str]:
    """A parser that accepts one of `values`, in any case."""
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return value
    return parse


def _on_off(raw: str) -> bool:
    return _choice("on", "off")(raw) == "on"


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535)")
    return value


_provider = _choice(*PROVIDERS)


def _ws_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise ValueError("must look like wss://my-project.livekit.cloud or ws://127.0.0.1:7880")
    return raw.strip()


def _http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return raw.strip().rstrip("/")


def _postgres_url(raw: str) -> str:
    if urlsplit(raw.strip()).scheme not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// URL")
    return raw.strip()


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


DEFAULT_TIERS = parse_tiers(
    "gemini:gemini-2.5-flash-lite:0.7:512,"
    "gemini:gemini-2.5-flash:0.7:512,"
    "anthropic:claude-sonnet-4-6:0:1024"
)


@dataclass(frozen=True)
class _Field:
    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    secret: bool = False
    help: str = ""


_DEFAULT_DATA_DIR = Path(platformdirs.user_data_dir("sightline"))

_FIELDS: tuple[_Field, ...] = (
    _Field("livekit_url", "LIVEKIT_URL", _ws_url, None, help="LiveKit server or Cloud URL"),
    _Field("livekit_api_key", "LIVEKIT_API_KEY", _text, None, secret=True),
    _Field("livekit_api_secret", "LIVEKIT_API_SECRET", _text, None, secret=True),
    _Field("gemini_api_key", "GOOGLE_API_KEY", _text, None, secret=True, help="or GEMINI_API_KEY"),
    _Field("anthropic_api_key", "ANTHROPIC_API_KEY", _text, None, secret=True),
    _Field("cohere_api_key", "COHERE_API_KEY", _text, None, secret=True,
        help="needed by SIGHTLINE_RERANKER=cohere"),
    _Field(
        "database_url", "DATABASE_URL", _postgres_url, None, secret=True,
        help="unset: embedded Postgres under SIGHTLINE_DATA_DIR",
    ),
    _Field("agent_name", "SIGHTLINE_AGENT_NAME", _text, "sightline", help="explicit dispatch name"),
    _Field("tenant", "SIGHTLINE_TENANT", _text, "default", help="tenant when a job names none"),
    _Field("gemini_base_url", "SIGHTLINE_GEMINI_BASE_URL", _http_url, None),
    _Field("anthropic_base_url", "SIGHTLINE_ANTHROPIC_BASE_URL", _http_url, None),
    _Field("model_timeout_s", "SIGHTLINE_MODEL_TIMEOUT_S", _positive_float, 20.0),
    _Field("model_retries", "SIGHTLINE_MODEL_RETRIES", _non_negative_int, 1),
    _Field("image_detail", "SIGHTLINE_IMAGE_DETAIL", _choice(*IMAGE_DETAILS), "medium",
        help="low | medium | high: screen image size per provider (README: Images)"),
    _Field("sample_fps", "SIGHTLINE_SAMPLE_FPS", _positive_float, 1.0),
    _Field("history_messages", "SIGHTLINE_HISTORY_MESSAGES", _non_negative_int, 10),
    _Field("data_dir", "SIGHTLINE_DATA_DIR", _path, _DEFAULT_DATA_DIR),
    _Field("cost_log_dir", "SIGHTLINE_COST_LOG_DIR", _path, None, help="default DATA_DIR/costs"),
    _Field("prices_file", "SIGHTLINE_PRICES", _path, None, help="price table override (JSON)"),
    _Field("stt", "SIGHTLINE_STT", _text, None, help="LiveKit Inference STT, e.g. deepgram/nova-3"),
    _Field("tts", "SIGHTLINE_TTS", _text, None,
        help="LiveKit Inference TTS, e.g. cartesia/sonic-3"),
    _Field("health_port", "SIGHTLINE_HEALTH_PORT", _port, 8081, help="worker health endpoint"),
    _Field("tiers", "SIGHTLINE_TIERS", parse_tiers, None,
        help="cascade, cheapest first: provider:model:threshold:max_tokens,...; unset: "
             "Flash-Lite > Flash > Sonnet, minus the tiers whose provider has no key"),
    _Field("turn_deadline_s", "SIGHTLINE_TURN_DEADLINE_S", _positive_float, 30.0,
        help="a turn's time for all its tiers"),
    _Field("session_budget_usd", "SIGHTLINE_SESSION_BUDGET_USD", _positive_float, None,
        help="USD per session; at 100% the cascade stops above SIGHTLINE_BUDGET_MAX_TIER"),
    _Field("tenant_budget_usd", "SIGHTLINE_TENANT_BUDGET_USD", _positive_float, None,
        help="USD per tenant per UTC day, across sessions"),
    _Field("budget_max_tier", "SIGHTLINE_BUDGET_MAX_TIER", _non_negative_int, 0,
        help="highest cascade tier once a budget is used up"),
    _Field("embeddings", "SIGHTLINE_EMBEDDINGS", _choice("offline", "gemini", "auto"), "auto",
        help="offline | gemini | auto (gemini when GOOGLE_API_KEY is set)"),
    _Field("reranker", "SIGHTLINE_RERANKER", _choice("off", "cohere"), "off",
        help="off | cohere: rerank the fused knowledge candidates (a billed call per search)"),
    _Field("rerank_model", "SIGHTLINE_RERANK_MODEL", _text, "rerank-v3.5"),
    _Field("cohere_base_url", "SIGHTLINE_COHERE_BASE_URL", _http_url, None),
    _Field("memory_updates", "SIGHTLINE_MEMORY_UPDATES", _on_off, True,
        help="on | off: after each exchange tier 0 updates the user's facts and summary"),
    _Field("max_sessions", "SIGHTLINE_MAX_SESSIONS", _non_negative_int, 0,
        help="sessions one worker hosts; 0: 8 per CPU core it may use (README: Many "
             "sessions per worker)"),
    _Field("worker_memory_mb", "SIGHTLINE_WORKER_MEMORY_MB", _non_negative_int, 0,
        help="memory a worker may fill before it refuses jobs; 0: 80% of the machine's "
             "(or its container's) memory"),
    _Field("session_stall_s", "SIGHTLINE_SESSION_STALL_S", _positive_float, 15.0,
        help="a session whose event loop has not turned for this long is ended"),
    _Field("webhook_port", "SIGHTLINE_WEBHOOK_PORT", _port, 8082,
        help="where LiveKit's webhooks reach the worker, to dispatch the agent again to a room "
             "whose worker was lost (README: Deployment); 0: off"),
    _Field("screen_text", "SIGHTLINE_SCREEN_TEXT", _on_off, True,
        help="on | off: read the text that appears on screen (local OCR) into the timeline"),
    _Field("ocr_threads", "SIGHTLINE_OCR_THREADS", _positive_int, 1,
        help="threads reading screen text, shared by a process's sessions"),
    _Field("image_policy", "SIGHTLINE_IMAGE_POLICY", _choice(*IMAGE_POLICIES), "changed",
        help="changed | always: send the screen image only when it changed since the last "
             "one the model saw, or on every turn"),
    _Field("proactive", "SIGHTLINE_PROACTIVE", _on_off, False,
        help="on | off: offer help, unasked, once per new error that appears on screen"),
    _Field("frame_archive_mb", "SIGHTLINE_FRAME_ARCHIVE_MB", _non_negative_int, 100,
        help="MB of kept frames per session on disk, for earlier_screen; 0: none"),
    _Field("frame_retention_days", "SIGHTLINE_FRAME_RETENTION_DAYS", _positive_float, 7.0,
        help="days a session's archived frames are kept"),
)


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Build it with `Settings.from_env()`."""

    livekit_url: str | None
    livekit_api_key: str | None
    livekit_api_secret: str | None
    gemini_api_key: str | None
    anthropic_api_key: str | None
    cohere_api_key: str | None
    database_url: str | None
    agent_name: str
    tenant: str
    gemini_base_url: str | None
    anthropic_base_url: str | None
    model_timeout_s: float
    model_retries: int
    image_detail: str
    sample_fps: float
    history_messages: int
    data_dir: Path
    cost_log_dir: Path | None
    prices_file: Path | None
    stt: str | None
    tts: str | None
    health_port: int
    tiers: tuple[Tier, ...] | None
    turn_deadline_s: float
    session_budget_usd: float | None
    tenant_budget_usd: float | None
    budget_max_tier: int
    embeddings: str
    reranker: str
    rerank_model: str
    cohere_base_url: str | None
    memory_updates: bool
    max_sessions: int
    worker_memory_mb: int
    session_stall_s: float
    webhook_port: int
    screen_text: bool
    ocr_threads: int
    image_policy: str
    proactive: bool
    frame_archive_mb: int
    frame_retention_days: float

    def cascade_tiers(self) -> tuple[Tier, ...]:
        """The configured tiers; unset, the default cascade without the tiers whose provider
        has no key (a Gemini key alone runs Flash-Lite > Flash), or all of it when no key is
        set (`require_worker` then names the missing key)."""
        if self.tiers:
            return self.tiers
        usable = tuple(t for t in DEFAULT_TIERS if self.key_for(t.provider))
        return usable or DEFAULT_TIERS

    def key_for(self, provider: str) -> str | None:
        return self.gemini_api_key if provider == "gemini" else self.anthropic_api_key

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in _FIELDS:
            raw = env.get(field.env)
            if field.env == "GOOGLE_API_KEY" and not raw:
                raw = env.get("GEMINI_API_KEY")
            if raw is None or raw.strip() == "":
                values[field.name] = field.default
                continue
            try:
                values[field.name] = field.parse(raw)
            except ValueError as exc:
                shown = "***" if field.secret else repr(raw)
                raise ConfigError(f"{field.env}={shown} is invalid: {exc}") from None
        return cls(**values)

    @property
    def costs_dir(self) -> Path:
        return self.cost_log_dir or self.data_dir / "costs"

    @property
    def frames_dir(self) -> Path:
        return self.data_dir / "frames"

    def require_worker(self) -> None:
        """Check what a live worker needs beyond the defaults: LiveKit and the provider's key."""
        for env in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            if not getattr(self, _by_env(env).name):
                raise ConfigError(f"{env} is required to run the worker (README: Configuration)")
        for index, tier in enumerate(self.cascade_tiers()):
            if not self.key_for(tier.provider):
                key_env = "GOOGLE_API_KEY" if tier.provider == "gemini" else "ANTHROPIC_API_KEY"
                where = f"tier {index} ({tier})" if self.tiers else "the default cascade"
                raise ConfigError(f"{key_env} is required by {where} (README: Configuration)")
        if self.reranker == "cohere" and not self.cohere_api_key:
            raise ConfigError("COHERE_API_KEY is required by SIGHTLINE_RERANKER=cohere "
                              "(README: Configuration)")

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value with secrets masked, note) for `sightline config`."""
        rows = []
        for field in _FIELDS:
            value = getattr(self, field.name)
            if value is None:
                shown = "(unset)"
            elif field.secret:
                shown = mask_secret(str(value), url=field.env == "DATABASE_URL")
            elif isinstance(value, bool):
                shown = "on" if value else "off"
            elif isinstance(value, tuple):
                shown = ",".join(map(str, value))
            else:
                shown = str(value)
            rows.append((field.env, shown, field.help))
        return rows


def _by_env(env: str) -> _Field:
    return next(f for f in _FIELDS if f.env == env)


def mask_secret(value: str, *, url: bool = False) -> str:
    """Show that a secret is set without revealing it; a URL keeps its host but not its password."""
    if url:
        from memory.db import masked_url  # loads asyncpg: only when a URL is shown

        return masked_url(value)
    return f"***{value[-2:]}" if len(value) >= 12 else "***"
