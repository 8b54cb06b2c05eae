"""End-to-end tests: the real google-genai and anthropic SDKs against ScriptedModelServer.

Why real SDKs: the server is only useful if the SDKs' own URL building, SSE parsing, error
mapping and timeout handling accept it, so nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from agent.wire_format_server import (
    CapturedRequest,
    PromptCache,
    ScriptedModelServer,
    ScriptedReply,
    _gemini_inspect,
    _shared_chars,
    cache_min_tokens,
    estimate_text_tokens,
    split_chunks,
)

SCRIPTED = "The screen shows a code editor with a failing test and a terminal below it."
GEMINI_MODEL = "gemini-2.5-flash"
CLAUDE_MODEL = "claude-sonnet-4-6"


def make_jpeg(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer([ScriptedReply(text=SCRIPTED)]) as srv:
        yield srv


def gemini_client(
    base_url: str, timeout_ms: int | None = None, api_version: str | None = None
) -> genai.Client:
    # retry_options=None means tenacity stop_after_attempt(1) in google-genai 3.4.0: no retries.
    # The SDK defaults to the "v1" API version; the server accepts any v1* prefix.
    return genai.Client(
        api_key="gemini-secret-key",
        http_options=types.HttpOptions(
            base_url=base_url, timeout=timeout_ms, api_version=api_version
        ),
    )


def claude_client(base_url: str, timeout: float = 10.0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="anthropic-secret-key", base_url=base_url, max_retries=0, timeout=timeout
    )


def gemini_contents() -> list[types.Content]:
    return [
        types.Content(
            role="user",
            parts=[
                types.Part.from_text(text="what is on screen?"),
                types.Part.from_bytes(data=make_jpeg(), mime_type="image/jpeg"),
            ],
        )
    ]


def claude_messages() -> list[dict]:
    image = base64.b64encode(make_jpeg(100, 75)).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is on screen?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": image},
                },
            ],
        }
    ]


GEMINI_CONFIG = types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=100)


def assert_gemini_capture(req: CapturedRequest, stream: bool) -> None:
    assert req.provider == "gemini"
    assert req.model == GEMINI_MODEL
    assert req.stream is stream
    assert req.image_count == 1
    assert "what is on screen?" in req.text
    assert "be brief" in req.text
    assert req.headers["x-goog-api-key"] == "***"
    assert "gemini-secret-key" not in repr(req.headers)


async def test_gemini_stream(server: ScriptedModelServer) -> None:
    client = gemini_client(server.base_url)
    chunks = []
    try:
        stream = await client.aio.models.generate_content_stream(
            model=GEMINI_MODEL, contents=gemini_contents(), config=GEMINI_CONFIG
        )
        async for chunk in stream:
            chunks.append(chunk)
    finally:
        await client.aio.aclose()

    assert "".join(c.text or "" for c in chunks) == SCRIPTED
    assert len(chunks) == len(split_chunks(SCRIPTED)) > 1
    usage = chunks[-1].usage_metadata
    assert usage is not None
    assert usage.prompt_token_count and usage.prompt_token_count > 258
    assert usage.candidates_token_count == math.ceil(len(SCRIPTED) / 4)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert len(server.requests) == 1
    assert_gemini_capture(server.requests[0], stream=True)


async def test_each_request_is_timed_in_the_server_to_its_stream_end_with_its_purpose() -> None:
    """What the model took, for `bench.load`'s overhead: the whole reply, its last chunk
    included, and nothing of the client's own time."""
    reply = ScriptedReply(text="one two three four", words_per_chunk=1, chunk_delay_s=0.1)
    async with ScriptedModelServer([reply]) as srv:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(
            base_url=srv.base_url, headers={"x-sightline-purpose": "answer"}))
        try:
            stream = await client.aio.models.generate_content_stream(
                model=GEMINI_MODEL, contents="why error 809?")
            async for _ in stream:
                await asyncio.sleep(0.2)  # a slow reader: the server's time does not grow
        finally:
            await client.aio.aclose()
        async with claude_client(srv.base_url) as claude:
            await claude.messages.create(model=CLAUDE_MODEL, max_tokens=10,
                                         messages=[{"role": "user", "content": "hi"}])
    assert [s.purpose for s in srv.served] == ["answer", ""]
    assert 0.3 <= srv.served[0].seconds < 0.8  # three pauses between four chunks
    assert srv.served[1].seconds < 0.3  # not streamed: no pauses between chunks


async def test_gemini_non_stream(server: ScriptedModelServer) -> None:
    client = gemini_client(server.base_url)
    try:
        response = await client.aio.models.generate_content(
            model=GEMINI_MODEL, contents=gemini_contents(), config=GEMINI_CONFIG
        )
    finally:
        await client.aio.aclose()

    assert response.text == SCRIPTED
    assert response.usage_metadata is not None
    assert (response.usage_metadata.prompt_token_count or 0) > 0
    assert (response.usage_metadata.candidates_token_count or 0) > 0
    assert response.model_version == GEMINI_MODEL
    assert_gemini_capture(server.requests[0], stream=False)


def assert_claude_capture(req: CapturedRequest, stream: bool) -> None:
    assert req.provider == "anthropic"
    assert req.model == CLAUDE_MODEL
    assert req.stream is stream
    assert req.image_count == 1
    assert "what is on screen?" in req.text and "be brief" in req.text
    # anthropic 2.11 sends the key as "Authorization: Bearer <key>", not x-api-key.
    assert req.headers["authorization"] == "***"
    assert req.headers.get("x-api-key", "***") == "***"
    assert "anthropic-secret-key" not in repr(req.headers)


async def test_anthropic_stream_helper(server: ScriptedModelServer) -> None:
    client = claude_client(server.base_url)
    deltas: list[str] = []
    async with client.messages.stream(
        model=CLAUDE_MODEL, max_tokens=100, system="be brief", messages=claude_messages()
    ) as stream:
        async for text in stream.text_stream:
            deltas.append(text)
        final = await stream.get_final_message()
    await client.close()

    assert "".join(deltas) == SCRIPTED and len(deltas) > 1
    assert final.content[0].type == "text" and final.content[0].text == SCRIPTED
    assert final.stop_reason == "end_turn"
    # 100x75 image -> ceil(7500 / 750) = 10 tokens, plus the text estimate.
    assert final.usage.input_tokens > 10
    assert final.usage.output_tokens == math.ceil(len(SCRIPTED) / 4)
    assert_claude_capture(server.requests[0], stream=True)


async def test_anthropic_create_stream_and_plain(server: ScriptedModelServer) -> None:
    client = claude_client(server.base_url)
    kwargs = {"model": CLAUDE_MODEL, "max_tokens": 100, "system": "be brief",
              "messages": claude_messages()}
    events = await client.messages.create(stream=True, **kwargs)
    texts, input_tokens, output_tokens = [], 0, 0
    async for event in events:
        if event.type == "message_start":
            input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            texts.append(event.delta.text)
        elif event.type == "message_delta":
            output_tokens = event.usage.output_tokens
    message = await client.messages.create(**kwargs)
    await client.close()

    assert "".join(texts) == SCRIPTED and input_tokens > 0 and output_tokens > 0
    assert message.content[0].text == SCRIPTED
    assert message.usage.input_tokens == input_tokens
    assert message.usage.output_tokens == output_tokens
    assert message.usage.cache_read_input_tokens == 0
    assert_claude_capture(server.requests[0], stream=True)
    assert_claude_capture(server.requests[1], stream=False)


@pytest.mark.parametrize("status", [500, 429])
async def test_scripted_errors_map_to_sdk_exceptions(status: int) -> None:
    async with ScriptedModelServer([ScriptedReply(status=status)]) as srv:
        client = gemini_client(srv.base_url)
        expected_genai = genai_errors.ServerError if status >= 500 else genai_errors.ClientError
        try:
            with pytest.raises(expected_genai) as gexc:
                await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
            with pytest.raises(expected_genai):
                stream = await client.aio.models.generate_content_stream(
                    model=GEMINI_MODEL, contents="hi"
                )
                async for _ in stream:
                    pass
        finally:
            await client.aio.aclose()
        assert gexc.value.code == status
        assert gexc.value.status == ("INTERNAL" if status == 500 else "RESOURCE_EXHAUSTED")

        claude = claude_client(srv.base_url)
        expected_claude = (
            anthropic.InternalServerError if status == 500 else anthropic.RateLimitError
        )
        with pytest.raises(expected_claude) as cexc:
            await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        await claude.close()
        assert cexc.value.status_code == status
        # Exactly one attempt per call: neither SDK retried.
        assert [r.provider for r in srv.requests] == ["gemini", "gemini", "anthropic"]


async def test_delay_beyond_client_timeout_times_out() -> None:
    async with ScriptedModelServer([ScriptedReply(text="late", delay_s=2.0)]) as srv:
        client = gemini_client(srv.base_url, timeout_ms=500)  # HttpOptions.timeout is in ms
        started = time.monotonic()
        try:
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
        finally:
            await client.aio.aclose()
        assert time.monotonic() - started < 1.5

        claude = claude_client(srv.base_url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        await claude.close()
        assert time.monotonic() - started < 1.5


async def test_sequence_served_in_order_last_repeats() -> None:
    replies = [ScriptedReply(text="first reply"), ScriptedReply(text="second reply")]
    async with ScriptedModelServer(replies) as srv:
        claude = claude_client(srv.base_url)
        got = []
        for _ in range(3):
            msg = await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            got.append(msg.content[0].text)
        await claude.close()
        client = gemini_client(srv.base_url, api_version="v1beta")
        try:
            response = await client.aio.models.generate_content(
                model=f"models/{GEMINI_MODEL}", contents="x"
            )
        finally:
            await client.aio.aclose()
        assert srv.requests[-1].model == GEMINI_MODEL
    assert got == ["first reply", "second reply", "second reply"]
    assert response.text == "second reply"


async def test_callable_default_and_bad_requests() -> None:
    """A callable sees the captured request; None serves a default; junk gets provider errors."""
    import aiohttp

    def echo(req: CapturedRequest) -> ScriptedReply:
        return ScriptedReply(text=f"{req.provider}:{req.model}")

    async with ScriptedModelServer(echo) as srv:
        client = gemini_client(srv.base_url)
        try:
            response = await client.aio.models.generate_content(model=GEMINI_MODEL, contents="x")
        finally:
            await client.aio.aclose()
        assert response.text == f"gemini:{GEMINI_MODEL}"

        async with aiohttp.ClientSession() as http:
            url = f"{srv.base_url}/v1beta/models/models/{GEMINI_MODEL}:generateContent"
            async with http.post(url, data=b"{not json") as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
            async with http.post(f"{srv.base_url}/v1/messages", data=b"[") as resp:
                assert resp.status == 400
                assert (await resp.json())["type"] == "error"
            async with http.get(f"{srv.base_url}/nope") as resp:
                assert resp.status == 404 and "error" in await resp.json()
        assert srv.requests[1].model == GEMINI_MODEL and srv.requests[1].body == {}

    async with ScriptedModelServer() as srv:
        claude = claude_client(srv.base_url)
        msg = await claude.messages.create(
            model=CLAUDE_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        await claude.close()
        assert msg.content[0].text == "(scripted) ok"


async def test_split_chunks_preserves_text() -> None:
    text = "  one two  three four five six seven\nnine ten "
    chunks = split_chunks(text)
    assert "".join(chunks) == text and len(chunks) == 3
    assert split_chunks("") == [""]


def test_the_shared_prefix_is_exact() -> None:
    """The binary search over slices finds exactly the common prefix, wherever it ends."""
    rng = random.Random(7)
    for _ in range(2000):
        base = "".join(rng.choice("ab") for _ in range(rng.randrange(40)))
        a, b = (base + "".join(rng.choice("ab") for _ in range(rng.randrange(8)))
                for _ in range(2))
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                        min(len(a), len(b)))
        assert _shared_chars(a, b) == expected, (a, b)


def test_the_anthropic_cache_remembers_recent_prefixes_only() -> None:
    """A marked prefix seen before is read, not written; once ANTHROPIC_REMEMBERED others were
    used after it, it is written again (the store stays bounded on a long run)."""
    cache = PromptCache(min_tokens=8)

    def body(system: str) -> dict[str, object]:
        return {"system": [{"type": "text", "text": system,
                            "cache_control": {"type": "ephemeral"}}], "messages": []}
    old = body("You are Sightline. " * 100)
    written, read = cache.anthropic(old)
    assert written > 0 and read == 0
    assert cache.anthropic(old) == (0, written)
    for i in range(PromptCache.ANTHROPIC_REMEMBERED):
        cache.anthropic(body(f"{i} another tenant's instructions"))
    assert cache.anthropic(old) == (written, 0)
    assert len(cache._anthropic) == PromptCache.ANTHROPIC_REMEMBERED


def test_the_anthropic_cache_keeps_the_instructions_but_not_the_messages_across_tool_choice(
) -> None:
    """Anthropic's prompt-caching page: changing `tool_choice` invalidates the cached messages,
    not the system prompt before them. A request that differs from the one before only in its
    `tool_choice` reads the instructions' prefix and writes the rest again; the same
    `tool_choice` again reads it all."""
    cache = PromptCache(min_tokens=8)
    mark = {"cache_control": {"type": "ephemeral"}}

    def body(tool_choice: dict[str, str] | None) -> dict[str, object]:
        return {"system": [{"type": "text", "text": "You are Sightline. " * 100, **mark}],
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Why does the VPN fail? " * 50, **mark}]}],
                **({"tool_choice": tool_choice} if tool_choice else {})}
    instructions, _ = cache.anthropic({"system": body(None)["system"], "messages": []})
    written, read = cache.anthropic(body({"type": "auto"}))
    assert read == instructions and written > 0
    assert cache.anthropic(body({"type": "none"})) == (written, instructions)
    assert cache.anthropic(body({"type": "none"})) == (0, instructions + written)
    assert cache.anthropic(body({"type": "auto"})) == (0, instructions + written)


def test_the_gemini_cache_finds_the_longest_shared_prefix_of_all_it_remembers() -> None:
    """Looking only next to a prompt's place in sorted order finds what comparing it with every
    remembered prompt finds, forgetting included (the brute force here is the reference)."""
    rng = random.Random(3)
    system = "You are Sightline. " * 20
    remembered: deque[str] = deque(maxlen=PromptCache.GEMINI_REMEMBERED)
    cache = PromptCache(min_tokens=256)
    sessions = [system + f"session {i}:" for i in range(40)]
    for n in range(1500):
        # sessions share the instructions, then each turn adds a line to its session's prompt
        i = rng.randrange(len(sessions))
        sessions[i] += " " + " ".join(rng.choice(("what", "is", "on", "my", "screen", "error"))
                                      for _ in range(rng.randrange(1, 12)))
        text = sessions[i] + rng.choice(("", " (with a screenshot)", " ~ a screenshot"))
        best = max((_shared_chars(text, seen) for seen in remembered), default=0)
        expected = estimate_text_tokens(text[:best])
        assert cache.gemini(text) == (expected if expected >= cache.min_tokens else 0), n
        remembered.append(text)
    assert len(cache._gemini) == len(cache._gemini_sorted) == PromptCache.GEMINI_REMEMBERED


def test_the_gemini_cache_remembers_recent_prompts_only() -> None:
    """A prompt sharing a long prefix with a remembered one reads it from the cache; once more
    than GEMINI_REMEMBERED others came after it, it is forgotten (the store stays bounded)."""
    cache = PromptCache(min_tokens=256)
    old = "You are Sightline. " * 100
    assert cache.gemini(old + "first question") == 0
    assert cache.gemini(old + "second question") > 256
    for i in range(PromptCache.GEMINI_REMEMBERED):
        cache.gemini(f"{i} unrelated prompt " * 50)
    assert cache.gemini(old + "third question") == 0


async def test_each_model_reads_only_what_it_cached_itself() -> None:
    """A provider caches a prefix for the model that read it: the same long prompt sent to a
    second model (a question escalated to the next tier) reads nothing from the first's cache,
    and its own second request reads what it wrote. Claude's cache, per model likewise."""
    prompt = "You are Sightline. " * 500 + "why error 809?"  # over every floor
    async with ScriptedModelServer([ScriptedReply(text="ok")]) as srv:
        client = gemini_client(srv.base_url)
        try:
            cached = [
                (await client.aio.models.generate_content(model=model, contents=prompt))
                .usage_metadata.cached_content_token_count or 0
                for model in ("gemini-2.5-flash-lite", "gemini-2.5-flash",
                              "gemini-2.5-flash-lite", "gemini-2.5-flash")]
        finally:
            await client.aio.aclose()
        system = [{"type": "text", "text": "You are Sightline. " * 300,
                   "cache_control": {"type": "ephemeral"}}]
        async with claude_client(srv.base_url) as claude:
            usages = [(await claude.messages.create(
                model=model, max_tokens=10, system=system,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "hi"}])).usage
                for model in ("claude-sonnet-4-6", "claude-opus-4-1", "claude-sonnet-4-6")]
    assert cached[:2] == [0, 0] and cached[2] == cached[3] > 256
    writes = [u.cache_creation_input_tokens for u in usages]
    reads = [u.cache_read_input_tokens for u in usages]
    assert writes[0] == writes[1] > 0 and writes[2] == 0
    assert reads == [0, 0, writes[0]]
    assert set(srv.caches) == {"gemini-2.5-flash-lite", "gemini-2.5-flash",
                               "claude-sonnet-4-6", "claude-opus-4-1"}


def test_each_model_caches_only_prefixes_as_long_as_its_floor() -> None:
    """The providers' documented floors: a prefix shorter than the model's is neither written
    nor read. An image counts in a prefix as billed, and a prefix holding another image
    diverges where it lies."""
    assert [cache_min_tokens(m) for m in (
        "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "claude-sonnet-4-6",
        "claude-opus-4-6", "claude-haiku-4-5-20251001", "house-model")] == [
        1024, 2048, 2048, 1024, 4096, 4096, 1024]

    def gemini(image: bytes, question: str) -> dict[str, object]:
        parts = [{"text": "Stable instructions. " * 160},  # 840 tokens: under 2.5 Flash's 1,024
                 {"inlineData": {"mimeType": "image/jpeg",
                                 "data": base64.b64encode(image).decode()}},
                 {"text": question}]
        return {"contents": [{"role": "user", "parts": parts}]}

    flash = PromptCache(cache_min_tokens("gemini-2.5-flash"))
    screen, other = make_jpeg(1280, 720), make_jpeg(1280, 721)  # 516 tokens each
    keys = [_gemini_inspect(gemini(image, question))[3] for image, question in (
        (screen, "What failed?"), (screen, "Which step?"), (other, "And now?"))]
    assert flash.gemini(keys[0]) == 0
    assert flash.gemini(keys[1]) == 840 + 516 + 1  # the text, the image, the newline after
    assert flash.gemini(keys[2]) == 0  # another image: only the 840 tokens before it shared

    def claude(*blocks: dict[str, object]) -> dict[str, object]:
        return {"system": [{"type": "text", "text": "Stable instructions. " * 160,
                            "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": list(blocks)}]}

    sonnet = PromptCache(cache_min_tokens("claude-sonnet-4-6"))
    question = {"type": "text", "text": "What failed?"}
    assert sonnet.anthropic(claude(question)) == (0, 0)  # 840 tokens marked: under 1,024
    assert sonnet.anthropic(claude(question)) == (0, 0)
    image = {"type": "image", "cache_control": {"type": "ephemeral"}, "source": {
        "type": "base64", "media_type": "image/jpeg",
        "data": base64.b64encode(screen).decode()}}
    written, read = sonnet.anthropic(claude(image, question))
    assert (written, read) == (840 + 1229, 0)  # the instructions and the image (1280x720/750)
    assert sonnet.anthropic(claude(image, question)) == (0, written)


async def test_tool_definitions_are_billed_as_input_and_cached_with_the_prompt() -> None:
    """Both providers bill the tool definitions as input tokens and cache them at the start of
    the prompt: instructions under the floor by themselves pass it with the tools."""
    declarations = [{"name": f"tool_{i}", "description": "Looks something up. " * 50,
                     "parameters": {"type": "object", "properties": {}}} for i in range(4)]
    async with ScriptedModelServer([ScriptedReply(text="ok")]) as srv:
        client = gemini_client(srv.base_url)
        config = types.GenerateContentConfig(
            system_instruction="You are Sightline. " * 20,
            tools=[types.Tool(function_declarations=declarations)])  # type: ignore[arg-type]
        try:
            usages = [(await client.aio.models.generate_content(
                model=GEMINI_MODEL, contents=question, config=config)).usage_metadata
                for question in ("What failed?", "Which step?")]
        finally:
            await client.aio.aclose()
        system = [{"type": "text", "text": "You are Sightline. " * 20,
                   "cache_control": {"type": "ephemeral"}}]
        tools = [{"name": d["name"], "description": d["description"],
                  "input_schema": d["parameters"]} for d in declarations]
        async with claude_client(srv.base_url) as claude:
            claude_usages = [(await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=10, system=system, tools=tools,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "What failed?"}])).usage
                for _ in range(2)]
    gemini_tools, claude_tools = (r.tool_tokens for r in srv.requests[::2])
    assert gemini_tools > 400 and claude_tools > 400
    for usage, request in zip(usages, srv.requests[:2], strict=True):
        assert usage is not None and usage.prompt_token_count == (
            estimate_text_tokens(request.text) + gemini_tools)
    # 95 tokens of instructions alone are under the floor of 1,024; with the tools before the
    # question the second request reads them from the cache
    assert usages[0].cached_content_token_count in (None, 0)
    assert usages[1].cached_content_token_count > gemini_tools
    first, second = claude_usages
    assert first.cache_creation_input_tokens > claude_tools and first.cache_read_input_tokens == 0
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (
        0, first.cache_creation_input_tokens)
    assert first.input_tokens == (estimate_text_tokens(srv.requests[2].text) + claude_tools
                                  - first.cache_creation_input_tokens)


async def test_claude_is_billed_its_tool_use_system_prompt_cached_with_the_tools() -> None:
    """With tools, Anthropic adds its tool-use system prompt (346 tokens for a Claude 4 model
    with tool_choice auto, 313 with any or tool; none without tools) and bills it as input; a
    mark on the last tool caches it with them. An older model has its own size."""
    tool = {"name": "look_up", "description": "Looks something up. " * 250,
            "input_schema": {"type": "object", "properties": {}}}
    definition = estimate_text_tokens(json.dumps(tool, sort_keys=True))
    question = [{"role": "user", "content": "What failed?"}]
    async with ScriptedModelServer(replies=lambda _request: ScriptedReply(text="ok")) as srv:
        async with claude_client(srv.base_url) as claude:
            async def input_tokens(model: str = CLAUDE_MODEL, **tools: Any) -> int:
                usage = (await claude.messages.create(
                    model=model, max_tokens=10, messages=question, **tools)).usage
                return (usage.input_tokens + (usage.cache_creation_input_tokens or 0)
                        + (usage.cache_read_input_tokens or 0))
            bare = await input_tokens()
            auto = await input_tokens(tools=[tool])
            forced = await input_tokens(tools=[tool], tool_choice={"type": "any"})
            named = await input_tokens(tools=[tool],
                                       tool_choice={"type": "tool", "name": "look_up"})
            haiku_3_5 = await input_tokens("claude-3-5-haiku-20241022", tools=[tool])
            marked = await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=10, messages=question,
                tools=[{**tool, "cache_control": {"type": "ephemeral"}}])  # type: ignore[list-item]
    assert (auto - bare, forced - bare, named - bare) == (
        definition + 346, definition + 313, definition + 313)
    assert haiku_3_5 - bare == definition + 264
    assert marked.usage.cache_creation_input_tokens == definition + 346
    assert marked.usage.input_tokens == bare
