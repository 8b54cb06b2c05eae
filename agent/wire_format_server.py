"""A local HTTP server that impersonates the Gemini, Anthropic, Cohere and OpenAI speech APIs.

Why: tests and the product's offline "replay" mode must exercise the *real* SDK clients
(``google.genai.Client`` and ``anthropic.AsyncAnthropic``) end to end -- URL building, SSE
parsing, error mapping, timeouts -- without internet access or API spend. Pointing the SDKs'
``base_url`` at this server gives exactly that, while every request is captured for assertions.

Wire formats (verified against google-genai 3.4.0 and anthropic 2.11.0 sources):

* Gemini Developer API: ``POST /{api_version}/models/{model}:generateContent`` and
  ``:streamGenerateContent?alt=sse``. google-genai 3.4.0 defaults to ``v1`` (``v1beta`` only
  when configured), so any ``v1*`` version prefix is accepted. SSE events are
  ``data: <GenerateContentResponse JSON>\\r\\n\\r\\n``; the SDK splits on blank lines and accepts
  ``\\n`` or ``\\r\\n``.
* Anthropic Messages API: ``POST /v1/messages``; with ``"stream": true`` the reply is SSE
  ``event: <type>\\ndata: <json>\\n\\n`` (message_start, content_block_start,
  content_block_delta*, content_block_stop, message_delta, message_stop).

* OpenAI speech (also what self-hosted Whisper / Kokoro servers speak), verified against
  livekit-plugins-openai 1.8.9 and openai's client: ``POST /v1/audio/transcriptions`` (multipart:
  ``file`` a WAV, ``model``, ``response_format`` json or verbose_json) answers ``{"text": ...}``;
  ``POST /v1/audio/speech`` (JSON: ``input``, ``model``, ``voice``, ``response_format``,
  ``stream_format``) answers raw audio (``stream_format: audio``) or SSE
  ``speech.audio.delta`` / ``speech.audio.done`` events with base64 audio. The transcript is
  SCRIPTED (``transcripts``), not recognised; the speech is a SCRIPTED tone,
  ``SPEECH_SECONDS_PER_CHAR`` long per character of the input, 24 kHz 16-bit mono (``pcm``, or
  ``wav`` with its header); other formats are refused with a 400, as a server without that
  encoder would.

Usage numbers are ESTIMATES computed deterministically by this scripted server, not figures
billed by any provider: text is ceil(chars / 4) tokens; images follow each provider's documented
rule on the decoded image size -- Gemini 258 tokens up to 384x384, else 258 per started 768x768
tile; Anthropic ceil(width * height / 750) (1600 if an image cannot be decoded); output is
ceil(len(reply) / 4) tokens, at least 1. Tool calls and results count as their JSON text, and so
do the tool definitions, which both providers bill as input and cache at the prompt's start
(Anthropic's prefix: tools, system, messages; Gemini's key: system, tools, contents). A Claude
request with tools is billed Anthropic's tool-use system prompt too, its documented size
(``TOOL_PROMPT_TOKENS``), cached with the tools.

API keys are never stored: ``x-goog-api-key``, ``x-api-key`` and ``authorization`` (anthropic
2.11 sends ``Authorization: Bearer <key>``) are masked as ``***`` in :class:`CapturedRequest`
headers, and the aiohttp access log is disabled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import hashlib
import io
import itertools
import json
import math
import re
import time
import wave
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .pricing import estimate_text_tokens

GEMINI_IMAGE_TOKENS = 258  # per image up to 384x384, else per 768x768 tile
GEMINI_SMALL_IMAGE_PX = 384
GEMINI_TILE_PX = 768
ANTHROPIC_IMAGE_FALLBACK_TOKENS = 1600
WORDS_PER_CHUNK = 4
# anthropic 2.11 sends its key as "Authorization: Bearer ..." rather than x-api-key.
SPEECH_RATE = 24000  # OpenAI's pcm: 24 kHz, 16-bit, mono
SPEECH_SECONDS_PER_CHAR = 0.06  # the scripted speech's length: about 12 characters a second
# what Sightline asks for (`answer`, `memory`), named in each request (agent/providers.py)
_PURPOSE_HEADER = "x-sightline-purpose"
_MASKED_HEADERS = frozenset({"x-goog-api-key", "x-api-key", "authorization", "proxy-authorization"})
_GEMINI_TARGET = re.compile(r"^(?:models/)*(?P<model>[^/:]+):(?P<method>\w+)$")
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ScriptedToolCall:
    """A function call the scripted model makes after its text, in the provider's wire form."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted answer; a non-200 ``status`` yields the provider's JSON error instead,
    and a ``proxy_page`` a 200 whose body is that page (what a proxy in front of the provider
    answers with), not the API's JSON."""

    text: str = ""
    status: int = 200
    proxy_page: str | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    words_per_chunk: int = WORDS_PER_CHUNK  # streaming granularity (live APIs: a few tokens)
    tool_calls: tuple[ScriptedToolCall, ...] = ()

    def output_tokens(self) -> int:
        calls = "".join(c.name + json.dumps(c.args) for c in self.tool_calls)
        return max(1, estimate_text_tokens(self.text + calls))


@dataclass
class CapturedRequest:
    """What the server saw, normalised across providers so tests can assert uniformly."""

    provider: str
    model: str
    stream: bool
    body: dict
    image_count: int
    text: str
    headers: dict[str, str]
    image_tokens: int = 0  # this server's estimate, by the provider's documented rule
    # the tool definitions', which both providers bill as input (with Anthropic's tool-use
    # system prompt)
    tool_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """The request's input as the provider bills it: text, images and tool definitions."""
        return estimate_text_tokens(self.text) + self.image_tokens + self.tool_tokens

    @property
    def purpose(self) -> str:
        """What Sightline asked for (`answer`, `memory`), from its request header."""
        return self.headers.get(_PURPOSE_HEADER, "")


@dataclass(frozen=True)
class Served:
    """One request's time inside this server: from its handler's start to the end of its
    reply (a stream's last chunk written). What the model took, as a client cannot measure it:
    a client's clock also runs while it builds the request, waits for its event loop or its
    GIL, and parses the chunks."""

    purpose: str  # what Sightline asked for (`answer`, `memory`), from its request header
    seconds: float


ReplyFn = Callable[[CapturedRequest], ScriptedReply]
TranscriptFn = Callable[[float], str]  # seconds of audio heard -> the scripted transcript


def scripted_speech(text: str) -> bytes:
    """The SCRIPTED speech of `text`: a 220 Hz tone, SPEECH_SECONDS_PER_CHAR per character,
    as 24 kHz 16-bit mono PCM (what a test can measure against the text's length)."""
    samples = int(SPEECH_RATE * SPEECH_SECONDS_PER_CHAR * len(text))
    t = [i / SPEECH_RATE for i in range(samples)]
    tone = (int(8000 * math.sin(2 * math.pi * 220 * x)) for x in t)
    return b"".join(v.to_bytes(2, "little", signed=True) for v in tone)


def wav_seconds(data: bytes) -> float | None:
    """How long a WAV file plays, or None when it is not one."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError):
        return None


def split_chunks(text: str, words_per_chunk: int = WORDS_PER_CHUNK) -> list[str]:
    """Split on word boundaries so ``"".join(chunks) == text`` (whitespace preserved)."""
    pieces = [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]
    if not pieces:
        return [""]
    return ["".join(pieces[i:i + words_per_chunk]) for i in range(0, len(pieces), words_per_chunk)]


def _image_size(data: str) -> tuple[int, int] | None:
    """An inline image's size; PIL only reads the header. Standard or URL-safe base64."""
    try:
        from PIL import Image

        raw = base64.b64decode(data.replace("-", "+").replace("_", "/") + "==")
        with Image.open(io.BytesIO(raw)) as img:
            return img.size
    except (ImportError, OSError, ValueError, binascii.Error):
        return None


def _gemini_image_tokens(blob: dict[str, Any]) -> int:
    size = _image_size(str(blob.get("data", "")))
    if size is None or max(size) <= GEMINI_SMALL_IMAGE_PX:
        return GEMINI_IMAGE_TOKENS
    columns, rows = (-(-side // GEMINI_TILE_PX) for side in size)
    return GEMINI_IMAGE_TOKENS * columns * rows


def _anthropic_image_tokens(block: dict[str, Any]) -> int:
    """Bill like Anthropic's documented w*h/750 rule."""
    size = _image_size(str((block.get("source") or {}).get("data", "")))
    if size is None:
        return ANTHROPIC_IMAGE_FALLBACK_TOKENS
    return math.ceil(size[0] * size[1] / 750)


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's tool definitions (Gemini's function declarations, Anthropic's tools)."""
    return [tool for tool in body.get("tools") or [] if isinstance(tool, dict)]


def _tool_text(tool: dict[str, Any]) -> str:
    """A tool definition as text, as it is sent but for a cache mark: billed as input, and in
    the cached prefix."""
    return json.dumps({k: v for k, v in tool.items() if k != "cache_control"}, sort_keys=True)


def _tool_definitions(body: dict[str, Any]) -> list[str]:
    """The request's tool definitions as text (`_tool_text`)."""
    return [_tool_text(tool) for tool in _tools(body)]


def _gemini_inspect(body: dict[str, Any]) -> tuple[list[str], int, int, str]:
    """Collect text parts (system first), count image/* inline parts and their tokens; and the
    prompt as Gemini's implicit cache compares it: the same parts in order (the tool
    definitions after the system instruction, as a cached content holds them), each image as a
    marker naming its digest and tokens, so a prefix that holds the same image is shared, one
    that holds another diverges there, and an image's tokens count in the prefix read."""
    texts: list[str] = []
    key: list[str] = []
    images = image_tokens = 0
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    contents = [system, *(body.get("contents") or [])]
    system_parts = len((system or {}).get("parts") or [])
    for at, part in enumerate(
            itertools.chain.from_iterable((c or {}).get("parts") or [] for c in contents)):
        if at == system_parts:
            key.extend(_tool_definitions(body))
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
            key.append(part["text"].replace("\x00", ""))
        for name in ("functionCall", "function_call", "functionResponse", "function_response"):
            if isinstance(part.get(name), dict):  # counted as text in the token estimate
                texts.append(json.dumps(part[name], sort_keys=True))
                key.append(texts[-1])
        blob = part.get("inlineData") or part.get("inline_data") or {}
        if str(blob.get("mimeType") or blob.get("mime_type") or "").startswith("image/"):
            tokens = _gemini_image_tokens(blob)
            images += 1
            image_tokens += tokens
            digest = hashlib.sha256(str(blob.get("data", "")).encode()).hexdigest()
            key.append(f"\x00{tokens}:{digest}\x00")
    return texts, images, image_tokens, "\n".join(key)


def _anthropic_inspect(body: dict[str, Any]) -> tuple[list[str], int, int]:
    """Collect text (system first), count image blocks and their estimated tokens."""
    texts: list[str] = []
    counts = [0, 0]  # images, image tokens

    def walk(content: Any) -> None:
        if isinstance(content, str):
            texts.append(content)
            return
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "image":
                counts[0] += 1
                counts[1] += _anthropic_image_tokens(block)
            elif kind == "tool_result":  # screenshots can come back inside tool results
                walk(block.get("content"))
            elif kind == "tool_use":
                texts.append(json.dumps(block.get("input"), sort_keys=True))

    walk(body.get("system"))
    for message in body.get("messages") or []:
        walk(message.get("content"))
    return texts, counts[0], counts[1]


def _anthropic_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt's content blocks in the order Anthropic caches them: tools (each a text
    block of its definition, with its mark), system, then messages (a plain string content is
    one text block)."""
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": _tool_text(tool),
         **({"cache_control": tool["cache_control"]} if tool.get("cache_control") else {})}
        for tool in _tools(body)]
    system = body.get("system")
    blocks += [{"type": "text", "text": system}] if isinstance(system, str) else [
        b for b in system or [] if isinstance(b, dict)]
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            blocks.append({"type": "text", "text": content})
        elif isinstance(content, list):
            blocks.extend(b for b in content if isinstance(b, dict))
    return blocks


# Anthropic's tool-use system prompt, which it adds to every request with tools and bills as
# input: (tokens with `tool_choice` auto or none, with any or tool), by the longest matching
# start of the model's name. Anthropic's tool-use page (2026-02): every Claude 4 model and
# Sonnet 3.7 346 / 313; Haiku 3.5 and 3 264 / 340; Opus 3 530 / 281; Sonnet 3 159 / 235.
TOOL_PROMPT_TOKENS = {
    "claude": (346, 313), "claude-3-5-haiku": (264, 340), "claude-3-haiku": (264, 340),
    "claude-3-opus": (530, 281), "claude-3-sonnet": (159, 235),
}


def anthropic_tool_prompt_tokens(model: str, body: dict[str, Any]) -> int:
    """The tokens of Anthropic's tool-use system prompt in this request (none without tools)."""
    if not _tools(body):
        return 0
    chosen, forced = TOOL_PROMPT_TOKENS[_longest_start(TOOL_PROMPT_TOKENS, model) or "claude"]
    choice = body.get("tool_choice")
    return forced if isinstance(choice, dict) and choice.get("type") in ("any", "tool") else chosen


def _anthropic_prefixes(body: dict[str, Any], tool_prompt_tokens: int = 0
                        ) -> list[tuple[str, int, bool]]:
    """Each block's prefix up to the last `cache_control` mark: its digest, its tokens (text
    and images, as the request is billed; from the last tool on, the tool-use system prompt's
    `tool_prompt_tokens` too) and whether a mark ends it."""
    blocks = _anthropic_blocks(body)
    marks = [i for i, block in enumerate(blocks) if block.get("cache_control")]
    if not marks:
        return []
    digest, texts, beside_text = hashlib.sha256(), [], 0  # beside: images, tool-use prompt
    last_tool = len(_tools(body)) - 1
    # Anthropic's prompt-caching page: a change of `tool_choice` invalidates the cached
    # messages, not the tools and system before them
    first_message = len(blocks) - len(_anthropic_blocks({"messages": body.get("messages")}))
    prefixes: list[tuple[str, int, bool]] = []
    for at, block in enumerate(blocks[:marks[-1] + 1]):
        if at == first_message:
            digest.update(json.dumps(body.get("tool_choice"), sort_keys=True).encode())
        unmarked = {k: v for k, v in block.items() if k != "cache_control"}
        digest.update(json.dumps(unmarked, sort_keys=True).encode())
        block_texts, _, block_image_tokens = _anthropic_inspect({"messages": [
            {"content": [block]}]})
        texts.extend(block_texts)
        beside_text += block_image_tokens + (tool_prompt_tokens if at == last_tool else 0)
        prefixes.append((digest.hexdigest(), estimate_text_tokens("\n".join(texts)) + beside_text,
                         bool(block.get("cache_control"))))
    return prefixes


_IMAGE_KEY = re.compile("\x00(\\d+):[0-9a-f]+\x00")  # an image in `_gemini_inspect`'s cache key


def _gemini_key_tokens(prefix: str) -> int:
    """The tokens of a cache key's prefix: its text's and its whole images' (a marker cut
    short is an image that differed)."""
    text = _IMAGE_KEY.sub("", prefix)
    return (estimate_text_tokens(text.split("\x00", 1)[0])
            + sum(int(m.group(1)) for m in _IMAGE_KEY.finditer(prefix)))


def _shared_chars(a: str, b: str) -> int:
    """Length of the common prefix of two strings: a binary search whose comparisons run in C
    (a prompt of thousands of characters is compared with each remembered one on every
    request; character by character in Python, a 10-minute load run's model server slowed
    request after request)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a.startswith(b[:mid]):
            low = mid
        else:
            high = mid - 1
    return low


# The shortest prefix each model caches, by the longest matching start of its name. Gemini: the
# Gemini API's 400 for a shorter explicit cache ("min_total_token_count=1024" for 2.5 Flash, 2048
# for 2.5 Flash-Lite, as reported on Google's developer forum, 2026) and its caching page (2.5
# Pro 2,048, 2026-10), whose floors are those of implicit caching too. Anthropic's
# prompt-caching page: 1,024 for the Sonnet 4 models, 4,096 for Opus 4.5 and 4.6 and Haiku 4.5.
CACHE_MIN_TOKENS = {
    "gemini": 1024, "gemini-2.5-flash-lite": 2048, "gemini-2.5-pro": 2048,
    "claude": 1024, "claude-opus-4-5": 4096, "claude-opus-4-6": 4096, "claude-haiku-4-5": 4096,
}


def _longest_start(names: Iterable[str], model: str) -> str | None:
    """The longest of `names` that the model's name starts with (its most specific entry)."""
    return max((name for name in names if model.startswith(name)), key=len, default=None)


def cache_min_tokens(model: str) -> int:
    """The shortest prefix the model caches (`CACHE_MIN_TOKENS`; 1,024 for a model of neither
    provider)."""
    name = _longest_start(CACHE_MIN_TOKENS, model)
    return CACHE_MIN_TOKENS[name] if name else 1024


class PromptCache:
    """Emulates one model's prompt caching for the scripted server (token counts are
    estimates). Each model has its own: a provider caches a prefix for the model that read it,
    so a question escalated to the next tier reads nothing that the tier below it cached. A
    prefix shorter than the model's floor (`cache_min_tokens`) is neither written nor read.

    Anthropic: the prompt up to each `cache_control` mark is written on first sight; a request
    reads the longest prefix written before that ends at any of its blocks up to its last mark,
    and writes the rest up to that mark, images included, as Anthropic bills it; the
    `ANTHROPIC_REMEMBERED` most recently used prefixes are remembered.
    Gemini (implicit caching): the longest prefix of the request (text and images) shared with
    an earlier request is read from the cache; the last `GEMINI_REMEMBERED` requests are
    remembered. A provider's cache expires too, and so a long run's server neither grows nor
    slows."""

    GEMINI_REMEMBERED = 512
    ANTHROPIC_REMEMBERED = 4096

    def __init__(self, min_tokens: int = 1024) -> None:
        self.min_tokens = min_tokens
        self._anthropic: OrderedDict[str, None] = OrderedDict()  # written prefixes' digests
        self._gemini: deque[str] = deque()  # in the order seen, to forget the oldest
        self._gemini_sorted: list[str] = []  # the same prompts in lexicographic order

    def anthropic(self, body: dict[str, Any], tool_prompt_tokens: int = 0) -> tuple[int, int]:
        """(cache write tokens, cache read tokens) of a Messages API request, whose tool-use
        system prompt (`anthropic_tool_prompt_tokens`) is cached with its tools."""
        prefixes = _anthropic_prefixes(body, tool_prompt_tokens)
        if not prefixes or prefixes[-1][1] < self.min_tokens:
            return 0, 0
        read = max((tokens for digest, tokens, _ in prefixes if digest in self._anthropic),
                   default=0)
        for digest, tokens, marked in prefixes:
            if marked and tokens >= self.min_tokens:
                self._anthropic[digest] = None
                self._anthropic.move_to_end(digest)
        while len(self._anthropic) > self.ANTHROPIC_REMEMBERED:
            self._anthropic.popitem(last=False)
        return prefixes[-1][1] - read, read

    def gemini(self, key: str) -> int:
        """Cached tokens of a request (its key from `_gemini_inspect`): the longest prefix shared
        with an earlier request, if long enough. Of prompts in lexicographic order, the one
        sharing the longest prefix with `key` is next to where `key` would go, so two
        comparisons find it (comparing with every remembered prompt cost ~7 ms a request once
        512 were remembered, and the model server answers one request at a time)."""
        at = bisect.bisect_left(self._gemini_sorted, key)
        neighbours = self._gemini_sorted[max(at - 1, 0):at + 1]
        shared = max((_shared_chars(key, seen) for seen in neighbours), default=0)
        if len(self._gemini) == self.GEMINI_REMEMBERED:
            oldest = self._gemini.popleft()
            del self._gemini_sorted[bisect.bisect_left(self._gemini_sorted, oldest)]
        self._gemini.append(key)
        bisect.insort(self._gemini_sorted, key)
        tokens = _gemini_key_tokens(key[:shared])
        return tokens if tokens >= self.min_tokens else 0


class ScriptedModelServer:
    """Serve scripted replies to the real Gemini / Anthropic SDKs over local HTTP."""

    def __init__(
        self,
        replies: ReplyFn | Sequence[ScriptedReply] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: TranscriptFn | Sequence[str] | None = None,
    ) -> None:
        if replies is not None and not callable(replies) and len(replies) == 0:
            raise ValueError("replies sequence must not be empty")
        self._replies = replies
        self._transcripts = transcripts
        self._transcribed = 0
        self._host = host
        self._port = port
        self._served = 0
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self.requests: list[CapturedRequest] = []
        self.served: list[Served] = []  # every handled request's time here, in order
        self.caches: dict[str, PromptCache] = {}  # by model: `cache`
        # the OpenAI speech endpoints ("stt", "tts") that answer a SCRIPTED outage (503) for
        # now: set and cleared by a test while its session runs
        self.speech_outage: set[str] = set()

    def cache(self, model: str) -> PromptCache:
        """The model's prompt cache, as the provider keeps one per model."""
        if model not in self.caches:
            self.caches[model] = PromptCache(cache_min_tokens(model))
        return self.caches[model]

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("ScriptedModelServer is not started")
        return self._base_url

    async def start(self) -> None:
        """Bind and serve; port 0 picks a free port, readable afterwards via ``base_url``."""
        app = web.Application(middlewares=[self._timed])
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v2/rerank", self._cohere_rerank)
        app.router.add_post("/v1/audio/transcriptions", self._openai_transcription)
        app.router.add_post("/v1/audio/speech", self._openai_speech)
        app.router.add_post(r"/{version:v1\w*}/{target:.+}", self._gemini)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a client that timed out must not leave a sleeping handler,
        # and a short shutdown_timeout keeps stop() fast even mid-delay.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host  # IPv6 literal
        self._base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._base_url = None

    async def __aenter__(self) -> ScriptedModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- shared plumbing -------------------------------------------------------------

    @web.middleware
    async def _timed(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self.served.append(Served(request.headers.get(_PURPOSE_HEADER, ""),
                                      time.perf_counter() - started))

    def _next_reply(self, captured: CapturedRequest) -> ScriptedReply:
        if self._replies is None:
            return ScriptedReply(text="(scripted) ok")
        if callable(self._replies):
            return self._replies(captured)
        reply = self._replies[min(self._served, len(self._replies) - 1)]
        self._served += 1
        return reply

    def _capture(
        self, request: web.Request, provider: str, model: str, stream: bool, body: dict,
        texts: list[str], images: int, image_tokens: int = 0, tool_prompt_tokens: int = 0,
    ) -> CapturedRequest:
        headers = {
            k.lower(): ("***" if k.lower() in _MASKED_HEADERS else v)
            for k, v in request.headers.items()
        }
        captured = CapturedRequest(
            provider, model, stream, body, images, "\n".join(texts), headers, image_tokens,
            estimate_text_tokens("\n".join(_tool_definitions(body))) + tool_prompt_tokens,
        )
        self.requests.append(captured)
        return captured

    @staticmethod
    async def _read_json(request: web.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    async def _sse(request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
        """Stream pre-encoded SSE events, pausing ``delay`` between them."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            for i, event in enumerate(events):
                if i and delay:
                    await asyncio.sleep(delay)
                await resp.write(event)
            await resp.write_eof()
        except ConnectionResetError:  # the client gave up mid-stream; nothing to clean up
            pass
        return resp

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": 404, "message": f"no route {request.method} {request.path}"}},
            status=404,
        )

    # -- Gemini ----------------------------------------------------------------------

    @staticmethod
    def _gemini_error(status: int, message: str) -> web.Response:
        code = _GEMINI_STATUS.get(status, "UNKNOWN")
        body = {"error": {"code": status, "message": message, "status": code}}
        return web.json_response(body, status=status)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        match = _GEMINI_TARGET.match(request.match_info["target"])
        if match and match["method"] == "batchEmbedContents":
            return await self._gemini_embed(request, match["model"])
        if not match or match["method"] not in ("generateContent", "streamGenerateContent"):
            return await self._not_found(request)
        model, stream = match["model"], match["method"] == "streamGenerateContent"
        body = await self._read_json(request)
        if body is None:
            self._capture(request, "gemini", model, stream, {}, [], 0)
            return self._gemini_error(400, "Invalid JSON payload received.")
        texts, images, image_tokens, cache_key = _gemini_inspect(body)
        captured = self._capture(request, "gemini", model, stream, body, texts, images,
                                 image_tokens)
        reply = self._next_reply(captured)
        await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return self._gemini_error(reply.status, f"scripted error {reply.status}")
        if reply.proxy_page is not None:
            return web.Response(text=reply.proxy_page, content_type="text/html")

        usage = {
            "promptTokenCount": captured.prompt_tokens,
            "candidatesTokenCount": reply.output_tokens(),
            "cachedContentTokenCount": min(self.cache(model).gemini(cache_key),
                                           captured.prompt_tokens),
        }
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        response_id = f"scripted-{len(self.requests)}"
        calls = [
            {"functionCall": {"id": f"call_{response_id}_{i}", "name": c.name, "args": c.args}}
            for i, c in enumerate(reply.tool_calls)
        ]

        def payload(text: str, so_far: str, final: bool) -> dict[str, Any]:
            parts: list[dict[str, Any]] = [{"text": text}] if text or not (final and calls) else []
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": parts + (calls if final else [])},
                "index": 0,
            }
            # like the live API, every streamed chunk carries usage (output counted so far)
            running = {**usage, "candidatesTokenCount": max(1, estimate_text_tokens(so_far))}
            running["totalTokenCount"] = running["promptTokenCount"] + running[
                "candidatesTokenCount"]
            chunk: dict[str, Any] = {
                "candidates": [candidate], "modelVersion": model, "responseId": response_id,
                "usageMetadata": usage if final else running,
            }
            if final:
                candidate["finishReason"] = "STOP"
            return chunk

        if not stream:
            return web.json_response(payload(reply.text, reply.text, final=True))
        chunks = split_chunks(reply.text, reply.words_per_chunk)
        events = [
            f"data: {json.dumps(payload(c, ''.join(chunks[:i + 1]), i == len(chunks) - 1))}"
            "\r\n\r\n".encode()
            for i, c in enumerate(chunks)
        ]
        return await self._sse(request, events, reply.chunk_delay_s)

    async def _gemini_embed(self, request: web.Request, model: str) -> web.Response:
        """`batchEmbedContents`: one hashed bag-of-words vector per text. SCRIPTED, not a model:
        texts that share words get similar vectors, which is all a wire-format test needs."""
        body = await self._read_json(request)
        items = (body or {}).get("requests")
        if not isinstance(items, list):
            self._capture(request, "gemini", model, False, body or {}, [], 0)
            return self._gemini_error(400, "requests must be a list")
        texts = [" ".join(str(p.get("text", "")) for p in (r.get("content") or {}).get("parts")
                          or []) for r in items]
        self._capture(request, "gemini", model, False, body or {}, texts, 0)
        embeddings = []
        for item, text in zip(items, texts, strict=True):
            vector = [0.0] * int(item.get("outputDimensionality") or 768)
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                vector[int.from_bytes(digest[:4], "big") % len(vector)] += 1.0
            embeddings.append({"values": vector})
        return web.json_response({"embeddings": embeddings})

    # -- Cohere rerank ---------------------------------------------------------------

    async def _cohere_rerank(self, request: web.Request) -> web.Response:
        """`POST /v2/rerank`. The relevance is SCRIPTED, not a model's: the share of the query's
        words a document contains. A reply function can answer an error status instead."""
        body = await self._read_json(request) or {}
        documents = [str(d) for d in body.get("documents") or []]
        captured = self._capture(request, "cohere", str(body.get("model", "")), False, body,
                                 [str(body.get("query", "")), *documents], 0)
        reply = self._next_reply(captured) if callable(self._replies) else ScriptedReply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return web.json_response({"message": reply.text or "scripted error"},
                                     status=reply.status)
        words = set(re.findall(r"[a-z0-9]+", str(body.get("query", "")).lower()))
        scores = [
            len(words & set(re.findall(r"[a-z0-9]+", doc.lower()))) / max(1, len(words))
            for doc in documents
        ]
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        top_n = int(body.get("top_n") or len(documents))
        return web.json_response({
            "id": f"rerank-{len(self.requests)}",
            "results": [{"index": i, "relevance_score": scores[i]} for i in order[:top_n]],
            "meta": {"billed_units": {"search_units": 1}},
        })

    # -- OpenAI speech ---------------------------------------------------------------

    @staticmethod
    def _openai_error(status: int, message: str) -> web.Response:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "code": None}}
        return web.json_response(body, status=status)

    def _transcript(self, seconds: float) -> str:
        if self._transcripts is None:
            return f"(scripted) {seconds:.1f} seconds of speech"
        if callable(self._transcripts):
            return self._transcripts(seconds)
        text = self._transcripts[min(self._transcribed, len(self._transcripts) - 1)]
        self._transcribed += 1
        return text

    async def _openai_transcription(self, request: web.Request) -> web.Response:
        """`POST /v1/audio/transcriptions`: the SCRIPTED transcript of a WAV upload."""
        try:
            form = await request.post()
        except ValueError:
            form = {}
        upload = form.get("file")
        model, fmt = str(form.get("model", "")), str(form.get("response_format", "json"))
        data = upload.file.read() if isinstance(upload, web.FileField) else b""
        seconds = wav_seconds(data)
        body = {"model": model, "response_format": fmt, "audio_seconds": seconds}
        text = "" if seconds is None else self._transcript(seconds)
        self._capture(request, "openai", model, False, body, [text], 0)
        if "stt" in self.speech_outage:
            return self._openai_error(503, "(scripted outage) the transcription service is "
                                           "unavailable")
        if not model:
            return self._openai_error(400, "you must provide a model parameter")
        if seconds is None:
            return self._openai_error(400, "the file is not a WAV audio file this server reads")
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
        if fmt == "verbose_json":
            return web.json_response({"task": "transcribe", "language": "english",
                                      "duration": seconds, "text": text, "segments": [],
                                      "usage": usage})
        if fmt != "json":
            return self._openai_error(400, f"response_format {fmt!r} is not served here")
        return web.json_response({"text": text, "usage": usage})

    async def _openai_speech(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/speech`: the SCRIPTED speech of `input`, raw or as SSE events."""
        body = await self._read_json(request) or {}
        text, model = str(body.get("input", "")), str(body.get("model", ""))
        fmt, stream_format = body.get("response_format", "mp3"), body.get("stream_format")
        self._capture(request, "openai", model, stream_format == "sse", body, [text], 0)
        if "tts" in self.speech_outage:
            return self._openai_error(503, "(scripted outage) the speech service is unavailable")
        if not model or not text:
            return self._openai_error(400, "model and input are required")
        if fmt not in ("pcm", "wav"):
            return self._openai_error(400, f"response_format {fmt!r} is not served here "
                                           "(pcm and wav are)")
        audio = scripted_speech(text)
        if fmt == "wav":
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(SPEECH_RATE)
                wav.writeframes(audio)
            audio = buffer.getvalue()
        if stream_format != "sse":
            resp = web.StreamResponse(headers={"Content-Type": f"audio/{fmt}"})
            await resp.prepare(request)
            for start in range(0, len(audio), 9600):  # 200 ms of pcm per write
                await resp.write(audio[start:start + 9600])
            await resp.write_eof()
            return resp
        events = [
            {"type": "speech.audio.delta",
             "audio": base64.b64encode(audio[start:start + 9600]).decode()}
            for start in range(0, len(audio), 9600)
        ]
        events.append({"type": "speech.audio.done", "usage": {
            "input_tokens": estimate_text_tokens(text), "output_tokens": 0,
            "total_tokens": estimate_text_tokens(text)}})
        return await self._sse(request, [f"data: {json.dumps(e)}\n\n".encode()
                                         for e in events], 0.0)

    # -- Anthropic -------------------------------------------------------------------

    @staticmethod
    def _anthropic_error(status: int, message: str) -> web.Response:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=status)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if body is None:
            self._capture(request, "anthropic", "", False, {}, [], 0)
            return self._anthropic_error(400, "malformed JSON request body")
        model, stream = str(body.get("model", "")), body.get("stream") is True
        texts, images, image_tokens = _anthropic_inspect(body)
        tool_prompt = anthropic_tool_prompt_tokens(model, body)
        captured = self._capture(request, "anthropic", model, stream, body, texts, images,
                                 image_tokens, tool_prompt)
        reply = self._next_reply(captured)
        await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return self._anthropic_error(reply.status, f"scripted error {reply.status}")
        if reply.proxy_page is not None:
            return web.Response(text=reply.proxy_page, content_type="text/html")

        cache_write, cache_read = self.cache(model).anthropic(body, tool_prompt)
        input_tokens = max(0, captured.prompt_tokens - cache_write - cache_read)
        output_tokens = reply.output_tokens()
        message_id = f"msg_scripted_{len(self.requests):06d}"
        tool_uses = [
            {"type": "tool_use", "id": f"toolu_{message_id}_{i}", "name": c.name, "input": c.args}
            for i, c in enumerate(reply.tool_calls)
        ]
        text_blocks = [{"type": "text", "text": reply.text}] if reply.text or not tool_uses else []
        stop_reason = "tool_use" if tool_uses else "end_turn"
        message: dict[str, Any] = {
            "id": message_id, "type": "message",
            "role": "assistant", "model": model, "content": text_blocks + tool_uses,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens, "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read,
            },
        }
        if not stream:
            return web.json_response(message)

        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**message["usage"], "output_tokens": 1}}
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        if text_blocks:
            events += [
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}},
                *({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": c}}
                  for c in split_chunks(reply.text, reply.words_per_chunk)),
                {"type": "content_block_stop", "index": 0},
            ]
        for index, use in enumerate(tool_uses, start=len(text_blocks)):
            events += [
                {"type": "content_block_start", "index": index,
                 "content_block": {**use, "input": {}}},
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": json.dumps(use["input"])}},
                {"type": "content_block_stop", "index": index},
            ]
        events += [
            {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop"},
        ]
        encoded = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
        return await self._sse(request, encoded, reply.chunk_delay_s)
