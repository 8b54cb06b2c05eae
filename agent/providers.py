"""Model providers behind one small interface: stream the answer to a chat context.

`ChatProvider.stream()` yields text deltas, the tool calls the model makes (as LiveKit
`FunctionToolCall`s, whichever provider made them) and `Usage` snapshots (the latest one counts;
the last is final), so a caller that stops reading early still knows what the call cost; none at
all when the provider reported none (the caller estimates it, `metering.settled_usage`). Each
adapter uses the provider's own SDK (google-genai, anthropic) and LiveKit's converters from
`ChatContext` to that provider's message format, and turns every SDK failure into a
`ProviderError` that says plainly what failed, and whether its request may have reached the
provider. A call's `watch` (memory/http_failures.py) says whether the provider may bill its
prompt, attempt by attempt, however the call ends: the caller passes its own to know it past a
deadline or a cancel of its own (agent/cascade.py), and the adapter tells it when the SDK's
error says the latest attempt was not run.

Every request names what it is for in a `x-sightline-purpose` header (`answer` for a user's
turn, `memory` for a memory update): a spend-tracking proxy in front of the providers can
attribute it, and the wire-format server tells the two apart without reading prompt text.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import aiohttp
import httpx2
import pydantic
from google import genai
from google.genai import _common as genai_common
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from livekit.agents import llm

from memory.embeddings import gemini_embedding_models
from memory.genai_client import GenaiClient
from memory.http_failures import WATCHED_HTTPX2_HOOKS, RequestWatch

from .config import Settings, Tier
from .pricing import Usage
from .tls import shared_tls_context

if TYPE_CHECKING:
    import anthropic

RETRY_STATUS = (429, 500, 502, 503, 504)
PURPOSE_HEADER = "x-sightline-purpose"


class ProviderError(RuntimeError):
    """A model call that failed after the SDK's own retries. `reached`: whether its request
    may have reached the provider, i.e. whether any attempt went out (`RequestWatch.sent`): the
    adapter says so for a failure of its HTTP client, the cascade for its own deadline
    (`unanswered`), and the user hears the model "could not be reached" when none did. Any
    other failure (an HTTP error status, a reply the cascade refused) came after an answer, so
    after the request arrived. What the call is billed is its watch's to say
    (`RequestWatch.billed`)."""

    def __init__(self, provider: str, model: str, kind: str, status: int | None, message: str,
                 *, reached: bool = True) -> None:
        self.provider, self.model, self.kind, self.status = provider, model, kind, status
        self.reached = reached
        where = f"HTTP {status}" if status else kind
        super().__init__(f"{provider} {model}: {where}: {message}")

    @classmethod
    def unanswered(cls, provider: str, model: str, kind: str, message: str,
                   watch: RequestWatch) -> ProviderError:
        """A call that ended with no answer (`kind`: its time ran out, its connection failed),
        told as its attempts say: by the HTTP status the provider refused each one that went
        out with, as a final error status is (an overload answered, then the deadline passed
        in the SDK's back-off, was a model that "could not be reached"); else reached once
        any went out."""
        status = watch.refusal
        if status is not None:
            return cls(provider, model, _kind_for_status(status), status,
                       f"{message}; every attempt sent was refused")
        return cls(provider, model, kind, None, message, reached=watch.sent)


StreamItem = str | Usage | llm.FunctionToolCall


class ChatProvider(Protocol):
    name: str
    model: str

    def stream(
        self, chat_ctx: llm.ChatContext, *, max_output_tokens: int,
        tools: llm.ToolContext | None = None, purpose: str = "answer",
        watch: RequestWatch | None = None,
    ) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...


# what a status says of the model, when it says more than "an error": Anthropic's 529 is its
# `overloaded_error` alone; a 503 is the service unavailable for now, whoever answered it
# (Gemini's overload, a gateway in front of either provider)
_STATUS_KINDS = {429: "rate_limited", 503: "unavailable", 529: "overloaded"}


def _kind_for_status(status: int) -> str:
    return _STATUS_KINDS.get(status, "server_error" if status >= 500 else "request_rejected")


# the HTTP status Anthropic answers each error type with (its API's errors page): an `error`
# event in a stream that began 200 OK says only its type; one of another type, Anthropic's own
# failure mid-answer, counts as a 500
_CLAUDE_ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}


T = TypeVar("T")


class ToolSchemas(Generic[T]):
    """The tools in one provider's request format, built once per process for each set of
    tool definitions. livekit-agents builds the schemas from the functions' signatures and
    docstrings (~5 ms for five tools, holding the GIL), and every session asks with the same
    tools: each session's agent binds the same decorated methods, and a method's bound copies
    share its `info`, so one build serves every session of the process (a burst of 15 sessions
    built them 15 times over in its first turns). The latest `keep` sets are kept, each with the
    definitions it was built from (their ids are the key). `fresh` gives each request what it
    may change without reaching the next one (a deep copy unless the SDK copies what it is given
    itself)."""

    def __init__(self, build: Callable[[llm.ToolContext], list[T]],
                 fresh: Callable[[list[T]], list[T]] = copy.deepcopy, keep: int = 16) -> None:
        self._build = build
        self._fresh = fresh
        self._keep = keep
        self._built: OrderedDict[tuple[int, ...], tuple[list[object], list[T]]] = OrderedDict()
        self._lock = threading.Lock()  # sessions run on threads of their own

    def __call__(self, tools: llm.ToolContext | None) -> list[T]:
        if tools is None:
            return []
        definitions: list[object] = [getattr(t, "info", t) for t in tools.flatten()]
        key = tuple(map(id, definitions))
        with self._lock:  # held while building: a burst's sessions wait for one build
            entry = self._built.get(key)
            if entry is None:
                entry = self._built[key] = (definitions, self._build(tools))
                if len(self._built) > self._keep:
                    self._built.popitem(last=False)
            else:
                self._built.move_to_end(key)
        return self._fresh(entry[1])


def _gemini_tools(tools: llm.ToolContext) -> list[genai_types.Tool]:
    """The tools as google-genai's own objects, built once per set of tools: the SDK's pydantic
    models validate every field when built, ~0.25 ms of a request's ~2.9 ms of CPU with the
    agent's seven tools (py-spy `--gil` on a 30-session worker put them in a ninth of its
    samples holding the GIL, more than that cost alone explains)."""
    declarations = tools.parse_function_tools("google")
    if not declarations:
        return []
    return [genai_types.Tool(function_declarations=[
        genai_types.FunctionDeclaration(**d) for d in declarations])]


def _claude_tools(tools: llm.ToolContext) -> list[dict[str, Any]]:
    return tools.parse_function_tools("anthropic", strict=False)


def _model_contains(model: pydantic.BaseModel, key: object) -> bool:
    """What `key in model` answered before: iterating a pydantic model yields its (field,
    value) pairs, and a name is never equal to a pair, so a name is answered at once; any
    other key is compared with the pairs as Python's own test does."""
    if isinstance(key, str):
        return False
    return any(pair is key or pair == key for pair in model)


# google-genai (3.4.0, unchanged in 3.6.1) turns a request into its JSON body by testing
# `name in obj` for each field of each part, message and setting (`_common.get_value_by_path`),
# then reading the attribute when that fails. Pydantic models define no `__contains__`, so each
# test builds all the model's (field, value) pairs: ~410 tests and ~8,300 pairs for a request
# with a screenshot and a short history, a third of a streamed answer's CPU (1.4 of 4.7 ms,
# holding the GIL). The SDK offers no request path around that conversion; answering the test
# directly changes no answer (tests/test_cascade.py compares the bodies built both ways). An
# SDK that defines its own test keeps it.
if getattr(genai_common.BaseModel, "__contains__", None) is None:
    genai_common.BaseModel.__contains__ = _model_contains


# one of each per process, shared by its sessions' providers; Gemini's are sent as they are
# (generate_content_stream deep-copies its config)
GEMINI_TOOLS = ToolSchemas(_gemini_tools, fresh=list)
CLAUDE_TOOLS = ToolSchemas(_claude_tools)


class _ProviderBase:
    name: str
    model: str

    def _timeout(self, watch: RequestWatch) -> ProviderError:
        return ProviderError.unanswered(self.name, self.model, "timeout", "no answer in time",
                                        watch)

    def _unreachable(self, message: str, watch: RequestWatch) -> ProviderError:
        return ProviderError.unanswered(self.name, self.model, "connection", message, watch)

    def _bad_response(self, exc: Exception, watch: RequestWatch) -> ProviderError:
        """An answer that is not the API's own (an HTML page, a cut-off stream), as one
        line with the start of what came. Before the provider's answer began, something else
        may have answered in its place: nothing says the attempt reached it (`watch.refused`;
        after, the model ran the request, and the attempt stays billed)."""
        watch.refused()
        text = " ".join(str(exc).split())
        return ProviderError(self.name, self.model, "bad_response", None,
                             text[:160] + ("…" if len(text) > 160 else ""), reached=False)


def _gemini_usage(meta: genai_types.GenerateContentResponseUsageMetadata) -> Usage:
    cached = meta.cached_content_token_count or 0
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(
        input_tokens=(meta.prompt_token_count or 0) - cached, cached_input_tokens=cached,
        output_tokens=output,
    )


def _gemini_items(chunk: genai_types.GenerateContentResponse) -> Iterator[StreamItem]:
    if chunk.usage_metadata is not None:  # so far: a caller may stop reading early
        yield _gemini_usage(chunk.usage_metadata)
    for candidate in chunk.candidates or []:
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.function_call is not None and part.function_call.name:
                call = part.function_call
                yield llm.FunctionToolCall(
                    call_id=call.id or f"call_{uuid.uuid4().hex[:12]}",
                    name=call.name, arguments=json.dumps(call.args or {}),
                )
            elif part.text and not part.thought:
                yield part.text


class GeminiProvider(_ProviderBase):
    name = "gemini"

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None, timeout_s: float, retries: int
    ) -> None:
        self.model = model
        self._tools = GEMINI_TOOLS
        tls = shared_tls_context()
        self._client = GenaiClient(api_key, genai_types.HttpOptions(
            base_url=base_url,
            client_args={"verify": tls},
            async_client_args={"verify": tls, "ssl": tls},  # httpx2, aiohttp, websockets
            timeout=int(timeout_s * 1000),
            retry_options=genai_types.HttpRetryOptions(
                attempts=retries + 1, initial_delay=0.5, max_delay=4.0,
                http_status_codes=list(RETRY_STATUS),
            ),
        ))

    async def stream(
        self, chat_ctx: llm.ChatContext, *, max_output_tokens: int,
        tools: llm.ToolContext | None = None, purpose: str = "answer",
        watch: RequestWatch | None = None,
    ) -> AsyncIterator[StreamItem]:
        watch = watch or RequestWatch()
        turns, fmt = chat_ctx.to_provider_format("google")
        config = genai_types.GenerateContentConfig(
            system_instruction="\n\n".join(fmt.system_messages) or None,
            max_output_tokens=max_output_tokens,
            tools=self._tools(tools) or None,
            http_options=genai_types.HttpOptions(headers={PURPOSE_HEADER: purpose}),
        )
        try:
            # the SDK sends the request, and retries it, as the first chunk is asked for
            with watch.active():
                chunks = aiter(await self._client.aio.models.generate_content_stream(
                    model=self.model, contents=turns, config=config
                ))
                chunk = await anext(chunks, None)
            while chunk is not None:
                watch.began()
                for item in _gemini_items(chunk):
                    yield item
                chunk = await anext(chunks, None)
        except genai_errors.APIError as exc:
            # an error status, or an error in place of the stream's first chunk (not run), or
            # of a later one (run, and billed as far as it went: `watch.began`)
            watch.refused(exc.code)
            raise ProviderError(
                self.name, self.model, _kind_for_status(exc.code), exc.code, exc.message or ""
            ) from exc
        except (genai_errors.UnknownApiResponseError, json.JSONDecodeError,
                pydantic.ValidationError) as exc:
            # not the API's JSON: a proxy's error page, a stream cut off mid-object
            raise self._bad_response(exc, watch) from exc
        except TimeoutError as exc:
            raise self._timeout(watch) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(repr(exc), watch) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


_CACHE = {"cache_control": {"type": "ephemeral"}}


def _mark_cache_breakpoint(messages: list[dict]) -> None:
    """Claude caches the prompt up to a `cache_control` mark. The instructions are one stable
    prefix (marked on the system block); the earlier turns are the other: mark the last block
    before the newest user message, so the next turn reads all of it from the cache."""
    for message in reversed(messages[:-1]):
        content = message.get("content")
        if isinstance(content, list) and content:
            content[-1] = {**content[-1], **_CACHE}
            return


def _claude_usage(u: anthropic.types.Usage) -> Usage:
    return Usage(
        input_tokens=u.input_tokens,
        cached_input_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
        output_tokens=u.output_tokens,
    )


class ClaudeProvider(_ProviderBase):
    name = "anthropic"

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None, timeout_s: float, retries: int
    ) -> None:
        self.model = model
        self._schemas = CLAUDE_TOOLS
        # imported here: ~2 s, paid only where a tier is Claude (`sightline gaps refresh`
        # names gaps with tier 0 alone); a worker imports it before its jobs (`prepare_sdks`)
        import anthropic

        self._errors = anthropic
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=retries,
            http_client=anthropic.DefaultAsyncHttpxClient(
                verify=shared_tls_context(), event_hooks=WATCHED_HTTPX2_HOOKS),
        )

    async def stream(
        self, chat_ctx: llm.ChatContext, *, max_output_tokens: int,
        tools: llm.ToolContext | None = None, purpose: str = "answer",
        watch: RequestWatch | None = None,
    ) -> AsyncIterator[StreamItem]:
        watch = watch or RequestWatch()
        messages, fmt = chat_ctx.to_provider_format("anthropic")
        # tool definitions come before the system prompt, so its cache mark covers them too
        schemas = self._schemas(tools)
        system_text = "\n\n".join(fmt.system_messages or [])
        system = [{"type": "text", "text": system_text, **_CACHE}] if system_text else []
        _mark_cache_breakpoint(messages)
        started = False  # the answer's message began: the model ran the request
        try:
            async with AsyncExitStack() as opened:
                # the SDK sends the request, and retries it, as the stream opens
                with watch.active():
                    stream = await opened.enter_async_context(self._client.messages.stream(
                        model=self.model,
                        max_tokens=max_output_tokens,
                        messages=messages,  # type: ignore[arg-type]
                        extra_headers={PURPOSE_HEADER: purpose},
                        **({"system": system} if system else {}),
                        **({"tools": schemas} if schemas else {}),
                    ))
                async for event in stream:
                    if event.type == "message_start":  # the input count comes first; the
                        started = True
                        watch.began()
                        yield _claude_usage(event.message.usage)  # output count at the end
                    elif event.type == "text":
                        yield event.text
                    elif event.type == "content_block_stop" and (
                        event.content_block.type == "tool_use"
                    ):
                        block = event.content_block
                        yield llm.FunctionToolCall(
                            call_id=block.id, name=block.name, arguments=json.dumps(block.input),
                        )
                if not started:  # 200 with no message in it: a proxy's page, not the API's
                    raise self._bad_response(ValueError("no message in the answer"), watch)
                final = await stream.get_final_message()
        except (self._errors.APIResponseValidationError, json.JSONDecodeError,
                pydantic.ValidationError) as exc:  # not the API's JSON: a cut-off stream
            raise self._bad_response(exc, watch) from exc
        except (self._errors.APITimeoutError, httpx2.TimeoutException, TimeoutError) as exc:
            raise self._timeout(watch) from exc
        except self._errors.APIStatusError as exc:
            raise self._status_error(exc, watch) from exc
        except (self._errors.APIConnectionError, httpx2.TransportError) as exc:
            raise self._unreachable(str(exc), watch) from exc
        yield _claude_usage(final.usage)

    def _status_error(self, exc: anthropic.APIStatusError,
                      watch: RequestWatch) -> ProviderError:
        """An error Anthropic answered with: an HTTP error status, or an `error` event in a
        stream that began 200 OK (an overload), which has no status of its own and is told by
        its type. Before the answer's message began, the request was not run (as Gemini's
        error in place of its first chunk): the attempt is refused, its prompt unbilled."""
        if exc.status_code >= 400:
            status, answered, said = exc.status_code, exc.status_code, exc.message
        else:  # the status its type stands for, not one the answer came with
            status, answered, said = (_CLAUDE_ERROR_STATUS.get(exc.type or "", 500), None,
                                      exc.api_message or exc.message)
        watch.refused(status)
        return ProviderError(self.name, self.model, _kind_for_status(status), answered, said)

    async def aclose(self) -> None:
        await self._client.close()


# The SDKs' pydantic models a session's providers and turns validate. google-genai and
# anthropic build a model's validator on its first use (`defer_build`): 50 ms of a process's
# first Gemini turn and, with the imports below, 220 ms of its first Claude turn, all holding the
# GIL while a burst's other sessions wait (measured on an idle process). tests/test_capacity.py
# fails if a turn of either kind still builds a model or imports a module after `prepare_sdks`.
_GEMINI_MODELS = (
    genai_types.HttpRetryOptions, genai_types.GenerateContentConfig,
    genai_types._GenerateContentParameters, genai_types.Content, genai_types.UserContent,
    genai_types.Part, genai_types.Tool, genai_types.FunctionDeclaration, genai_types.HttpResponse,
    genai_types.GenerateContentResponse, genai_types.Candidate, genai_types.FunctionCall,
    genai_types.GenerateContentResponseUsageMetadata,
)


def prepare_sdks(tiers: Iterable[Tier], *, gemini_embeddings: bool) -> None:
    """Import what these tiers' providers load when made or first asked, and build the SDK
    models a turn validates (and, with `gemini_embeddings`, a question's embedding), ahead of
    the first session: imports and model builds hold the GIL, and in a burst every session's
    loop would wait for them. These rather than every model the SDKs define: building all
    ~1,800 takes 1.5 s and 79 MB a process."""
    models: list[type[pydantic.BaseModel]] = [llm.ChatMessage]
    providers = {tier.provider for tier in tiers}
    if "gemini" in providers:
        models += _GEMINI_MODELS
        # the first client made imports its HTTP transports and google-auth's async parts
        # (~95 ms; made here anyway when the embedder is Gemini's): one made and closed now
        genai.Client(api_key="unused", http_options=genai_types.HttpOptions(
            base_url="http://127.0.0.1")).close()
    if gemini_embeddings:
        models += gemini_embedding_models()
    if "anthropic" in providers:
        # what anthropic's first request imports: httpx's asyncio backend (anyio loads it on
        # first use, ~100 ms) and the tracing headers' propagator
        import anyio._backends._asyncio  # noqa: F401 - importing it is the point
        import opentelemetry.propagate  # noqa: F401 - importing it is the point
        from anthropic import types as claude_types
        from anthropic.lib import streaming as claude_streaming
        from anthropic.types import parsed_message

        models += [
            claude_types.Message, claude_types.TextBlock, claude_types.ToolUseBlock,
            claude_types.Usage, parsed_message.ParsedMessage, parsed_message.ParsedTextBlock,
            claude_streaming.TextEvent, claude_streaming.InputJsonEvent,
            claude_streaming.ParsedContentBlockStopEvent, claude_streaming.ParsedMessageStopEvent,
        ]
    for model in models:
        model.model_rebuild()


class MadeOnFirstCall:
    """A tier's provider whose SDK client is made when the tier is first asked. A session's
    cascade asks its first tier every turn and the others only when it escalates, yet every
    session made the clients of all its tiers as it started: 0.1-0.6 ms each holding the GIL,
    thirty times over in a burst of thirty sessions."""

    def __init__(self, tier: Tier, make: Callable[[], ChatProvider]) -> None:
        self.name, self.model = tier.provider, tier.model
        self._make = make
        self._made: ChatProvider | None = None

    async def stream(
        self, chat_ctx: llm.ChatContext, *, max_output_tokens: int,
        tools: llm.ToolContext | None = None, purpose: str = "answer",
        watch: RequestWatch | None = None,
    ) -> AsyncIterator[StreamItem]:
        if self._made is None:
            self._made = self._make()
        async for item in self._made.stream(chat_ctx, max_output_tokens=max_output_tokens,
                                            tools=tools, purpose=purpose, watch=watch):
            yield item

    async def aclose(self) -> None:
        if self._made is not None:
            await self._made.aclose()


def tier_providers(tiers: list[Tier], make: Callable[[Tier], ChatProvider]) -> list[ChatProvider]:
    """A cascade's providers, one per tier: the first made now, the others when first asked."""
    return [make(tiers[0]), *(MadeOnFirstCall(tier, partial(make, tier)) for tier in tiers[1:])]


def make_provider(settings: Settings, tier: Tier) -> ChatProvider:
    """The client for one cascade tier, with keys only from the environment."""
    common = {"timeout_s": settings.model_timeout_s, "retries": settings.model_retries}
    if tier.provider == "gemini":
        return GeminiProvider(
            api_key=settings.gemini_api_key or "", model=tier.model,
            base_url=settings.gemini_base_url, **common,
        )
    return ClaudeProvider(
        api_key=settings.anthropic_api_key or "", model=tier.model,
        base_url=settings.anthropic_base_url, **common,
    )
