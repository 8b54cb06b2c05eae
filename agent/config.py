"""Sightline's one settings object, read from environment variables and validated at start.

Every setting is declared once in `_FIELDS` (variable, parser, default, whether it is a secret),
so validation, `sightline config` and the README's table cannot drift apart. A bad value raises
`ConfigError` naming the variable; the CLI prints it as one line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import platformdirs

from vision.ranges import Range


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the environment variable."""


PROVIDERS = ("gemini", "anthropic")
IMAGE_DETAILS = ("low", "medium", "high")
IMAGE_POLICIES = ("changed", "always")


def _text(raw: str) -> str:
    return raw.strip()


def _seconds(high: float) -> Range:
    """A duration of 0.1 to `high` seconds: a tenth of a second is shorter than any wait,
    timeout or check that means something, and "above zero" let 1e-300 through."""
    return Range(float, 0.1, high)


_THRESHOLD = Range(float, 0, 1)
_MAX_TOKENS = Range(int, 1, 65536)
_TIER_FORMAT = "provider:model:threshold:max_tokens"


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
    """`provider:model:threshold:max_tokens`, comma-separated, cheapest first. An error names
    the tier (counted from 0) and which of its fields is wrong."""
    tiers = []
    for index, part in enumerate(p.strip() for p in raw.split(",")):
        fields = [f.strip() for f in part.split(":")]
        if len(fields) != 4:
            raise ValueError(f"tier {index} {part!r} must be {_TIER_FORMAT} "
                             f"(4 fields, got {len(fields)})")
        values: list[Any] = []
        for name, parse, value in zip(
            _TIER_FORMAT.split(":"), (_provider, _text, _THRESHOLD, _MAX_TOKENS), fields,
            strict=True,
        ):
            try:
                values.append(parse(value))
            except ValueError as exc:
                raise ValueError(f"tier {index} {name} {value!r} {exc}") from None
            if name == "model" and not values[-1]:
                raise ValueError(f"tier {index} model is empty ({_TIER_FORMAT})")
        tiers.append(Tier(*values))
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


_PORT = Range(int, 0, 65535)


_provider = _choice(*PROVIDERS)


def _ws_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise ValueError("must look like wss://my-project.livekit.cloud or ws://127.0.0.1:7880")
    # the server API's requests carry a signed token in their Authorization header, which
    # aiohttp refuses to combine with a URL's own credentials: every call would fail
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password: LiveKit is signed in to "
                         "with LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    return raw.strip()


def _http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return raw.strip().rstrip("/")


_DATABASE_PORT = Range(int, 1, 65535)
# libpq's values of the parameters that take one of a few (asyncpg's own message for a wrong
# target_session_attrs prints a method's repr instead of them)
_DATABASE_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
}


def _postgres_url(raw: str) -> str:
    """A postgresql:// URL whose ports and choices asyncpg can use: it would fail on them
    only at the first connection, with a traceback."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// URL")
    query = dict(parse_qsl(parts.query))
    for name, accepted in _DATABASE_CHOICES.items():
        if query.get(name, accepted[0]) not in accepted:
            raise ValueError(f"its {name} must be one of {', '.join(accepted)}")
    # host[:port] or [ipv6][:port], comma-separated, in the URL's host or its `host` parameter
    hosts = f"{parts.netloc.rpartition('@')[2]},{query.get('host', '')}".split(",")
    ports = [h.rpartition("]")[2].partition(":")[2] for h in hosts if not h.startswith("/")]
    for port in filter(None, [*ports, *query.get("port", "").split(",")]):
        try:
            _DATABASE_PORT.parse(port)
        except ValueError as exc:
            raise ValueError(f"its port {port!r} {exc}") from None
    return url


def _path(raw: str) -> Path:
    try:
        return Path(raw.strip()).expanduser()
    except RuntimeError:  # `~someone` naming no user
        raise ValueError("its ~ names no home directory: write the path out") from None


SPEECH_FORMATS = {
    "stt": "local | openai:MODEL | deepgram:MODEL | a LiveKit Inference model (deepgram/nova-3)",
    "tts": "local | openai:MODEL[:VOICE] | cartesia:MODEL[:VOICE] | a LiveKit Inference model "
           "(cartesia/sonic-3)",
}
# the plugin providers each direction takes besides `local` and LiveKit Inference
SPEECH_PROVIDERS = {"stt": ("openai", "deepgram"), "tts": ("openai", "cartesia")}


@dataclass(frozen=True)
class SpeechBackend:
    """Where a session's speech goes in (`stt`) or comes out (`tts`): `provider` is `local`,
    `inference` (LiveKit Inference, `model` is its `provider/model` string) or a plugin."""

    provider: str
    model: str = ""
    voice: str = ""

    def __str__(self) -> str:
        if self.provider == "local":
            return "local"
        if self.provider == "inference":
            return self.model
        return ":".join(p for p in (self.provider, self.model, self.voice) if p)


def parse_speech(raw: str, direction: str) -> SpeechBackend:
    """`local`, `provider:model[:voice]` (a plugin provider) or a LiveKit Inference
    `provider/model[:voice]` string, for `direction` `stt` or `tts`."""
    value = raw.strip()
    if value.lower() == "local":
        return SpeechBackend("local")
    if "/" in value.split(":", 1)[0]:
        return SpeechBackend("inference", value)
    provider, _, rest = value.partition(":")
    provider = provider.strip().lower()
    if provider not in SPEECH_PROVIDERS[direction]:
        raise ValueError(f"must be {SPEECH_FORMATS[direction]}")
    model, _, voice = rest.partition(":")
    if not model.strip():
        raise ValueError(f"names no model: write {provider}:MODEL")
    if voice and direction == "stt":
        raise ValueError(f"must be {provider}:MODEL (a speech-to-text model has no voice)")
    return SpeechBackend(provider, model.strip(), voice.strip())


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

    def shown(self, raw: str) -> str:
        """`raw` fit to print: a URL without its password, a secret masked. The database's
        URL keeps its host (of use to ops); the alert webhook's is its secret (a chat
        webhook's path holds its token)."""
        if self.parse in (_ws_url, _http_url, _postgres_url) and (
                not self.secret or self.env == "DATABASE_URL"):
            return mask_url(raw)
        return mask_secret(raw) if self.secret else raw


_USD = Range(float, 0, 1_000_000, open_low=True)
LOG_LEVELS = ("debug", "info", "warning", "error")  # the worker's, any case
_DEFAULT_DATA_DIR = Path(platformdirs.user_data_dir("sightline"))
MAX_HISTORY_MESSAGES = 1000  # the most recent messages a session starts with

_FIELDS: tuple[_Field, ...] = (
    _Field("livekit_url", "LIVEKIT_URL", _ws_url, None, help="LiveKit server or Cloud URL"),
    _Field("livekit_api_key", "LIVEKIT_API_KEY", _text, None, secret=True),
    _Field("livekit_api_secret", "LIVEKIT_API_SECRET", _text, None, secret=True),
    _Field("log_level", "LIVEKIT_LOG_LEVEL", _choice(*LOG_LEVELS), "info",
        help="the worker's log level: " + " | ".join(LOG_LEVELS) + " (`--log-level` overrides)"),
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
    _Field("model_timeout_s", "SIGHTLINE_MODEL_TIMEOUT_S", _seconds(600), 20.0),
    _Field("model_retries", "SIGHTLINE_MODEL_RETRIES", Range(int, 0, 10), 1),
    _Field("image_detail", "SIGHTLINE_IMAGE_DETAIL", _choice(*IMAGE_DETAILS), "medium",
        help="low | medium | high: screen image size per provider (README: Images)"),
    _Field("sample_fps", "SIGHTLINE_SAMPLE_FPS", Range(float, 0.01, 30), 1.0,
        help="screen samples per second (a screen share sends at most ~30 frames a second)"),
    _Field("history_messages", "SIGHTLINE_HISTORY_MESSAGES", Range(int, 0, MAX_HISTORY_MESSAGES),
           10),
    _Field("data_dir", "SIGHTLINE_DATA_DIR", _path, _DEFAULT_DATA_DIR),
    _Field("cost_log_dir", "SIGHTLINE_COST_LOG_DIR", _path, None, help="default DATA_DIR/costs"),
    _Field("prices_file", "SIGHTLINE_PRICES", _path, None, help="price table override (JSON)"),
    _Field("stt", "SIGHTLINE_STT", lambda raw: parse_speech(raw, "stt"), None,
        help="speech in (README: Voice): local | openai:MODEL | deepgram:MODEL | a LiveKit "
             "Inference model such as deepgram/nova-3; unset: typed chat only"),
    _Field("tts", "SIGHTLINE_TTS", lambda raw: parse_speech(raw, "tts"), None,
        help="speech out (README: Voice): local | openai:MODEL[:VOICE] | "
             "cartesia:MODEL[:VOICE] | a LiveKit Inference model such as cartesia/sonic-3"),
    _Field("stt_base_url", "SIGHTLINE_STT_BASE_URL", _http_url, None,
        help="an OpenAI-compatible speech-to-text server for SIGHTLINE_STT=openai:MODEL"),
    _Field("tts_base_url", "SIGHTLINE_TTS_BASE_URL", _http_url, None,
        help="an OpenAI-compatible text-to-speech server for SIGHTLINE_TTS=openai:MODEL"),
    _Field("openai_api_key", "OPENAI_API_KEY", _text, None, secret=True,
        help="for openai: speech; a self-hosted server with a base URL may need none"),
    _Field("deepgram_api_key", "DEEPGRAM_API_KEY", _text, None, secret=True,
        help="for SIGHTLINE_STT=deepgram:MODEL"),
    _Field("cartesia_api_key", "CARTESIA_API_KEY", _text, None, secret=True,
        help="for SIGHTLINE_TTS=cartesia:MODEL"),
    _Field("turn_detection", "SIGHTLINE_TURN_DETECTION", _choice("model", "vad"), "model",
        help="model | vad: with speech in, the user's turn ends by LiveKit's local end-of-turn "
             "model (turn-detector v1-mini) or by silence alone (README: Voice)"),
    _Field("speech_retries", "SIGHTLINE_SPEECH_RETRIES", Range(int, 0, 10), 3,
        help="retries of a failed speech recognition or synthesis request (2 s apart, "
             "livekit-agents' default 3) before the session counts it failed and goes on in "
             "the chat"),
    _Field("synthesis_probe_s", "SIGHTLINE_SYNTHESIS_PROBE_S", _seconds(3600), 15.0,
        help="while speech synthesis is down (answers go to the chat as text), how often it "
             "is tried again with one short phrase"),
    _Field("health_port", "SIGHTLINE_HEALTH_PORT", _PORT, 8081, help="worker health endpoint"),
    _Field("tiers", "SIGHTLINE_TIERS", parse_tiers, None,
        help="cascade, cheapest first: provider:model:threshold:max_tokens,...; unset: "
             "Flash-Lite > Flash > Sonnet, minus the tiers whose provider has no key"),
    _Field("turn_deadline_s", "SIGHTLINE_TURN_DEADLINE_S", _seconds(600), 30.0,
        help="a turn's time for all its tiers"),
    _Field("session_budget_usd", "SIGHTLINE_SESSION_BUDGET_USD", _USD, None,
        help="USD per session; at 100% the cascade stops above SIGHTLINE_BUDGET_MAX_TIER"),
    _Field("tenant_budget_usd", "SIGHTLINE_TENANT_BUDGET_USD", _USD, None,
        help="USD per tenant per UTC day, across sessions"),
    _Field("budget_max_tier", "SIGHTLINE_BUDGET_MAX_TIER", Range(int, 0, 9), 0,
        help="highest cascade tier once a budget is used up; below the cascade's tier count"),
    _Field("embeddings", "SIGHTLINE_EMBEDDINGS",
           _choice("offline", "minilm", "bge", "mpnet", "wordllama", "gemini", "auto"), "auto",
        help="offline (= minilm) | minilm | bge | mpnet | wordllama | gemini | auto (the model a "
             "tenant's knowledge is stored with, else gemini when GOOGLE_API_KEY is set, else "
             "minilm)"),
    _Field("reranker", "SIGHTLINE_RERANKER", _choice("off", "cohere"), "off",
        help="off | cohere: rerank the fused knowledge candidates (a billed call per search)"),
    _Field("rerank_model", "SIGHTLINE_RERANK_MODEL", _text, "rerank-v3.5"),
    _Field("cohere_base_url", "SIGHTLINE_COHERE_BASE_URL", _http_url, None),
    _Field("memory_updates", "SIGHTLINE_MEMORY_UPDATES", _on_off, True,
        help="on | off: after each exchange tier 0 updates the user's facts and summary"),
    _Field("database_retry_s", "SIGHTLINE_DATABASE_RETRY_S", Range(float, 0, 3600), 10.0,
        help="a session opened while Postgres did not answer asks again this often and, once "
             "it answers, recalls from it for the rest of the session; 0: never"),
    _Field("max_sessions", "SIGHTLINE_MAX_SESSIONS", Range(int, 0, 10000), 0,
        help="sessions one worker hosts; 0: 15 per CPU core it may use (README: Many "
             "sessions per worker)"),
    _Field("worker_processes", "SIGHTLINE_WORKER_PROCESSES", Range(int, 0, 64), 0,
        help="processes `sightline start` hosts its sessions in, each registered with LiveKit "
             "and taking its share of the sessions; 0: one per CPU core it may use (README: "
             "Many sessions per worker)"),
    _Field("worker_memory_mb", "SIGHTLINE_WORKER_MEMORY_MB", Range(int, 0, 2**24), 0,
        help="memory a worker may fill before it refuses jobs; 0: 80% of the machine's "
             "(or its container's) memory"),
    _Field("malloc_arenas", "SIGHTLINE_MALLOC_ARENAS", Range(int, 0, 1024), 2,
        help="glibc malloc arenas of the worker process; 0: glibc's default (8 per core)"),
    _Field("drain_timeout_s", "SIGHTLINE_DRAIN_TIMEOUT_S", Range(int, 1, 86400), 3600,
        help="seconds a worker told to stop (SIGTERM) waits for its running sessions to end "
             "before it ends them (their logs are still written); set it within your "
             "orchestrator's grace period, less the 40 s the close may take"),
    _Field("livekit_retries", "SIGHTLINE_LIVEKIT_RETRIES", Range(int, 0, 10000), 16,
        help="times a worker that cannot reach LiveKit (at its start, or its connection lost) "
             "tries again, 0, 2, 4 ... then 10 s apart; then it exits with status 1 for its "
             "supervisor to start it again (16: about two minutes)"),
    _Field("session_stall_s", "SIGHTLINE_SESSION_STALL_S", _seconds(3600), 15.0,
        help="a session whose event loop has not turned for this long is ended"),
    _Field("participant_wait_s", "SIGHTLINE_PARTICIPANT_WAIT_S", _seconds(3600), 60.0,
        help="seconds a job waits for its user to join the room it was dispatched to; then it "
             "ends, freeing its session slot"),
    _Field("webhook_port", "SIGHTLINE_WEBHOOK_PORT", _PORT, 8082,
        help="where LiveKit's webhooks reach the worker, to dispatch the agent again to a room "
             "whose worker was lost (README: Deployment); 0: off"),
    _Field("lost_session_close_s", "SIGHTLINE_LOST_SESSION_CLOSE_S", Range(float, 0, 86400),
           120.0,
        help="seconds after dispatching a lost room's agent again that the worker which did "
             "closes the lost session's record, if it is still open and has recorded nothing "
             "for as long, its summary folded from its cost events; 0: never"),
    _Field("screen_text", "SIGHTLINE_SCREEN_TEXT", _on_off, True,
        help="on | off: read the text that appears on screen (local OCR) into the timeline"),
    _Field("ocr_threads", "SIGHTLINE_OCR_THREADS", Range(int, 1, 64), 1,
        help="threads reading screen text, shared by a process's sessions"),
    _Field("ocr_cpu_limit", "SIGHTLINE_OCR_CPU_LIMIT", Range(float, 0, 1, open_low=True), 0.7,
        help="a screen-text read starts only while the machine's CPU use (its container's, "
             "if any) over the last second is under this share of its cores; 1: no wait"),
    _Field("ocr_max_wait_s", "SIGHTLINE_OCR_MAX_WAIT_S", Range(float, 0, 3600), 10.0,
        help="seconds a screen-text read waits for that at most, then starts anyway"),
    _Field("cover_wait_s", "SIGHTLINE_COVER_WAIT_S", Range(float, 0, 60), 0.5,
        help="seconds a question waits at most, alongside its lookup, for the screen-text "
             "reads of the frame it sends, so that a secret shown just before is covered in "
             "its screenshot, not for a read still waiting its turn (the OCR threads, the CPU "
             "gate) unless hurried (SIGHTLINE_COVER_HURRY); 0: no wait (a line not read yet "
             "shows as shared)"),
    _Field("cover_hurry", "SIGHTLINE_COVER_HURRY", _on_off, False,
        help="on | off: a question hurries the small screen-text reads it waits for (at most "
             "an eighth of the frame changed) past the OCR threads' queue and the CPU gate, "
             "onto a thread of their own: fewer screenshots sent before their text was read, "
             "slower replies on a full worker"),
    _Field("image_policy", "SIGHTLINE_IMAGE_POLICY", _choice(*IMAGE_POLICIES), "changed",
        help="changed | always: send the screen image only when it changed since the last "
             "one the model saw, or on every turn"),
    _Field("proactive", "SIGHTLINE_PROACTIVE", _on_off, False,
        help="on | off: offer help, unasked, once per new error that appears on screen"),
    _Field("frame_archive_mb", "SIGHTLINE_FRAME_ARCHIVE_MB", Range(int, 0, 2**20), 100,
        help="MB of kept frames per session on disk, for earlier_screen; 0: none"),
    _Field("frame_retention_days", "SIGHTLINE_FRAME_RETENTION_DAYS",
        Range(float, 0, 3650, open_low=True), 7.0,
        help="days a session's archived frames are kept"),
    _Field("console_port", "SIGHTLINE_CONSOLE_PORT", _PORT, 8090,
        help="where `sightline console` serves its page, on localhost; 0: any free port"),
    _Field("metrics_port", "SIGHTLINE_METRICS_PORT", _PORT, 0,
        help="Prometheus /metrics of the worker (livekit-agents' and Sightline's); 0: off"),
    _Field("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", _http_url, None,
        help="OpenTelemetry collector (OTLP over HTTP): spans per turn; unset: no traces"),
    _Field("alert_webhook", "SIGHTLINE_ALERT_WEBHOOK", _http_url, None, secret=True,
        help="alerts (quality thresholds, budget crossings) are POSTed here as JSON"),
)


# each numeric variable's documented valid range (README: Configuration; `sightline config`)
RANGES: dict[str, Range] = {f.env: f.parse for f in _FIELDS if isinstance(f.parse, Range)}


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Build it with `Settings.from_env()`."""

    livekit_url: str | None
    livekit_api_key: str | None
    livekit_api_secret: str | None
    log_level: str
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
    stt: SpeechBackend | None
    tts: SpeechBackend | None
    stt_base_url: str | None
    tts_base_url: str | None
    openai_api_key: str | None
    deepgram_api_key: str | None
    cartesia_api_key: str | None
    turn_detection: str
    speech_retries: int
    synthesis_probe_s: float
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
    database_retry_s: float
    max_sessions: int
    worker_processes: int
    worker_memory_mb: int
    malloc_arenas: int
    drain_timeout_s: int
    livekit_retries: int
    session_stall_s: float
    participant_wait_s: float
    webhook_port: int
    lost_session_close_s: float
    screen_text: bool
    ocr_threads: int
    ocr_cpu_limit: float
    ocr_max_wait_s: float
    cover_wait_s: float
    cover_hurry: bool
    image_policy: str
    proactive: bool
    frame_archive_mb: int
    frame_retention_days: float
    console_port: int
    metrics_port: int
    otlp_endpoint: str | None
    alert_webhook: str | None

    def cascade_tiers(self) -> tuple[Tier, ...]:
        """The configured tiers; unset, the default cascade without the tiers whose provider
        has no key (a Gemini key alone runs Flash-Lite > Flash), or all of it when no key is
        set (`require_worker` then names the missing key)."""
        if self.tiers:
            return self.tiers
        usable = tuple(t for t in DEFAULT_TIERS if self.key_for(t.provider))
        return usable or DEFAULT_TIERS

    def embeddings_in_use(self) -> str:
        """What SIGHTLINE_EMBEDDINGS resolves to: `auto` is Gemini when its key is set."""
        if self.embeddings == "auto":
            return "gemini" if self.gemini_api_key else "offline"
        return self.embeddings

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
                shown = "***" if field.secret else repr(field.shown(raw))
                raise ConfigError(f"{field.env}={shown} is invalid: {exc}") from None
        settings = cls(**values)
        settings._check_together()
        return settings

    def _check_together(self) -> None:
        """What each value alone cannot tell: a budget tier the cascade has, and directories
        Sightline can create and write (checked, not created: `config` changes nothing)."""
        tiers = len(self.cascade_tiers())
        if self.budget_max_tier >= tiers:
            raise ConfigError(
                f"SIGHTLINE_BUDGET_MAX_TIER={self.budget_max_tier} is invalid: the cascade has "
                f"{tiers} tiers, numbered 0 to {tiers - 1}; set one of those")
        data_env = f"SIGHTLINE_DATA_DIR={str(self.data_dir)!r}"
        cost_env = f"SIGHTLINE_COST_LOG_DIR={str(self.cost_log_dir)!r}"
        for shown, what, path in (
            (data_env, "data directory", self.data_dir),
            (cost_env if self.cost_log_dir else data_env, "cost log directory", self.costs_dir),
        ):
            problem = _unusable_dir(path)
            if problem:
                raise ConfigError(f"{shown} is invalid: the {what} {str(path)!r} {problem}")

    @property
    def costs_dir(self) -> Path:
        return self.cost_log_dir or self.data_dir / "costs"

    @property
    def frames_dir(self) -> Path:
        return self.data_dir / "frames"

    def require_worker(self) -> None:
        """Check what a live worker needs beyond the defaults: LiveKit and the provider's key.
        With SIGHTLINE_TIERS unset either key alone is a usable cascade, so a missing key is
        only an error when neither is set, and the message says which keys run which tiers."""
        for env in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            if not getattr(self, _by_env(env).name):
                raise ConfigError(f"{env} is required to run the worker (README: Configuration)")
        if not self.tiers and not (self.gemini_api_key or self.anthropic_api_key):
            raise ConfigError(
                "no model key is set: GOOGLE_API_KEY alone runs Flash-Lite > Flash, "
                "ANTHROPIC_API_KEY alone runs Sonnet, both run all three; or set "
                "SIGHTLINE_TIERS to tiers of a provider whose key you have "
                "(`sightline replay` runs the fixtures without any key; README: Configuration)")
        for index, tier in enumerate(self.cascade_tiers()):
            if not self.key_for(tier.provider):
                key_env = KEY_ENV[tier.provider]
                raise ConfigError(
                    f"{key_env} is required by tier {index} ({tier}) of SIGHTLINE_TIERS: set "
                    f"{key_env}, or leave that tier out (README: Configuration)")
        for env, backend in (("SIGHTLINE_STT", self.stt), ("SIGHTLINE_TTS", self.tts)):
            if backend is not None:
                self.require_speech(env, backend)
        if self.reranker == "cohere" and not self.cohere_api_key:
            raise ConfigError("COHERE_API_KEY is required by SIGHTLINE_RERANKER=cohere "
                              "(README: Configuration)")

    def require_speech(self, env: str, backend: SpeechBackend) -> None:
        """What a speech backend needs beyond its setting: its plugin (the `voice` extra), its
        key, and for `local` speech out, the espeak-ng program. Checked without importing."""
        import importlib.util
        import shutil

        local_tts = backend.provider == "local" and env == "SIGHTLINE_TTS"
        module = None if local_tts else _SPEECH_MODULES.get(backend.provider)
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{env}={backend} is invalid: it needs the {module} package, which is not "
                "installed: install Sightline with its voice extra (pip install "
                "'sightline[voice]'; README: Voice)")
        if local_tts and not shutil.which("espeak-ng"):
            raise ConfigError(f"{env}=local is invalid: it speaks through the espeak-ng program, "
                              "which is not installed (apt-get install espeak-ng)")
        key_env, key = {
            "deepgram": ("DEEPGRAM_API_KEY", self.deepgram_api_key),
            "cartesia": ("CARTESIA_API_KEY", self.cartesia_api_key),
            "openai": ("OPENAI_API_KEY", self.openai_api_key),
        }.get(backend.provider, ("", "x"))
        base_url = self.stt_base_url if env == "SIGHTLINE_STT" else self.tts_base_url
        if not key and not (backend.provider == "openai" and base_url):
            own_server = (f" (or, for an OpenAI-compatible server of your own, set "
                          f"{env}_BASE_URL)" if backend.provider == "openai" else "")
            raise ConfigError(f"{key_env} is required by {env}={backend}{own_server} "
                              "(README: Voice)")

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value with secrets masked, note) for `sightline config`."""
        rows = []
        for field in _FIELDS:
            value = getattr(self, field.name)
            if value is None:
                shown = "(unset)"
            elif isinstance(value, bool):
                shown = "on" if value else "off"
            elif isinstance(value, tuple):
                shown = ",".join(map(str, value))
            else:
                shown = field.shown(str(value))
            limits = f"range {field.parse}" if isinstance(field.parse, Range) else ""
            note = "; ".join(part for part in (field.help, limits) if part)
            rows.append((field.env, shown, note))
        return rows


# the variable each provider's key is read from
KEY_ENV = {"gemini": "GOOGLE_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# the module each speech provider is imported from (the `voice` extra); inference is built in
_SPEECH_MODULES = {
    "local": "moonshine_voice", "openai": "livekit.plugins.openai",
    "deepgram": "livekit.plugins.deepgram", "cartesia": "livekit.plugins.cartesia",
}


def _unusable_dir(path: Path) -> str | None:
    """Why `path` cannot be a directory this process writes, or None: it, or the nearest part
    of it that exists (where it would be created), must be a writable directory."""
    try:
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            what = ("is a file" if existing == path.absolute()
                    else f"cannot be created: {str(existing)!r} is a file")
            return f"{what}: point the variable at a directory, or move the file away"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"is not writable by this user ({str(existing)!r}): choose another directory"
    except (OSError, ValueError) as exc:
        return f"cannot be checked ({exc}): point the variable at a usable directory"
    return None


def _by_env(env: str) -> _Field:
    return next(f for f in _FIELDS if f.env == env)


def mask_secret(value: str) -> str:
    """Show that a secret is set without revealing it."""
    return f"***{value[-2:]}" if len(value) >= 12 else "***"


def mask_url(url: str) -> str:
    """A URL with its host but not its password."""
    from memory.db import masked_url  # loads asyncpg: only when a URL is shown

    return masked_url(url)
