"""Cost-aware screen images.

Protects: each provider gets the frame at the size its billing rule makes cheapest for the
detail level, never larger than the frame; Gemini sizes fill whole 768-px tiles; what we
predict a provider bills equals what the wire-format server bills for the JPEG it received,
and the request's bill names each frame's image part, for the meter to place it;
one frame is encoded once per size however many tiers ask, and a request for a frame whose
encode a turn started early (`warm`) waits for that encode; a failed encode is not kept.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import threading

import pytest
from livekit.agents import llm
from PIL import Image
from synthetic_screen import Desk

from agent import images
from agent.images import ImageEncoder, claude_image_tokens, gemini_image_tokens, sized_for


@pytest.mark.parametrize(("provider", "detail", "size", "tokens"), [
    ("gemini", "low", (768, 432), 258),
    ("gemini", "medium", (1365, 768), 516),
    ("gemini", "high", (1536, 864), 1032),
    ("anthropic", "low", (816, 459), 500),
    ("anthropic", "medium", (1264, 711), 1199),
    ("anthropic", "high", (1460, 821), 1599),
])
def test_a_1080p_frame_is_sized_for_each_provider(
    provider: str, detail: str, size: tuple[int, int], tokens: int
) -> None:
    assert sized_for(provider, 1920, 1080, detail) == size
    rule = gemini_image_tokens if provider == "gemini" else claude_image_tokens
    assert rule(*size) == tokens
    if (provider, detail) == ("anthropic", "high"):  # what Claude scales a large image to
        assert rule(1920, 1080) == tokens
    else:
        assert rule(1920, 1080) > tokens, "cheaper than sending the frame as it is"


@pytest.mark.parametrize("provider", ["gemini", "anthropic"])
@pytest.mark.parametrize("size", [(300, 200), (1280, 720), (1080, 1920), (3840, 1600), (37, 2000)])
def test_sizes_never_grow_and_keep_the_aspect(provider: str, size: tuple[int, int]) -> None:
    for detail in ("low", "medium", "high"):
        width, height = sized_for(provider, *size, detail)
        assert width <= size[0] and height <= size[1]
        assert abs(width / height - size[0] / size[1]) < 0.05 * size[0] / size[1] + 1 / height


def test_small_images_cost_one_gemini_unit() -> None:
    assert gemini_image_tokens(384, 384) == 258
    assert gemini_image_tokens(385, 100) == 258  # one tile
    assert gemini_image_tokens(769, 768) == 516


async def test_the_encoder_sizes_per_provider_and_encodes_each_size_once() -> None:
    frame = Desk().frame()
    encoder = ImageEncoder("medium")
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=["What is this?", llm.ImageContent(image=frame)])
    gemini, gemini_bill = await encoder.prepare(ctx, "gemini")
    again, _ = await encoder.prepare(ctx, "gemini")
    claude, claude_bill = await encoder.prepare(ctx, "anthropic")

    def size(prepared: llm.ChatContext) -> tuple[int, int]:
        image = prepared.items[0].content[1]
        assert isinstance(image, llm.ImageContent) and isinstance(image.image, str)
        data = base64.b64decode(image.image.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG"
            return img.size

    assert size(gemini) == (1365, 768)
    assert size(claude) == (1264, 711)
    assert again.items[0].content[1].image is gemini.items[0].content[1].image  # cached
    assert (gemini_bill.images, gemini_bill.tokens, gemini_bill.full_resolution_tokens) == (
        1, 516, 1548)
    assert (claude_bill.tokens, claude_bill.full_resolution_tokens) == (1199, 1599)
    assert isinstance(ctx.items[0].content[1].image, type(frame)), "the original is untouched"
    # each frame is priced once, as the request is prepared, under its image part: the meter
    # finds it there in the request as sent (metering.images_in_prompt), and nothing else
    assert claude_bill.billed(claude.items[0].content[1]) == (1199, 1599)
    assert gemini_bill.billed(gemini.items[0].content[1]) == (516, 1548)
    assert claude_bill.billed("What is this?") is None
    assert claude_bill.billed(llm.ImageContent(image="https://example.com/a.png")) is None


async def test_a_warmed_frame_is_encoded_once_and_the_request_waits_for_that_encode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`warm` starts the encode a turn's request will ask for; the request joins it."""
    frame = Desk().frame()
    encoder = ImageEncoder("medium")
    sizes: list[tuple[int, int]] = []
    release = threading.Event()
    real = images._data_url

    def slow_data_url(frame_: object, width: int, height: int) -> str:
        sizes.append((width, height))
        release.wait(10)
        return real(frame_, width, height)

    monkeypatch.setattr(images, "_data_url", slow_data_url)
    encoder.warm(frame, "gemini")
    for _ in range(500):  # the encode starts on its own, before any request
        await asyncio.sleep(0.01)
        if sizes:
            break
    assert sizes == [(1365, 768)]
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=["What is this?", llm.ImageContent(image=frame)])
    request = asyncio.create_task(encoder.prepare(ctx, "gemini"))
    await asyncio.sleep(0.05)
    assert not request.done(), "the request waits for the encode already running"
    release.set()
    prepared, bill = await request
    assert sizes == [(1365, 768)], "one encode, the warm one"
    assert prepared.items[0].content[1].image.startswith("data:image/jpeg;base64,")
    assert bill.images == 1


async def test_a_failed_encode_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed encode reaches the request that waited for it, or, for a warm-up no request
    waited for, is retrieved quietly; either way the next request encodes afresh."""
    frame = Desk().frame()
    encoder = ImageEncoder("low")
    calls: list[int] = []
    real = images._data_url

    def failing_twice(frame_: object, width: int, height: int) -> str:
        calls.append(width)
        if len(calls) <= 2:
            raise ValueError("unsupported frame buffer")
        return real(frame_, width, height)

    monkeypatch.setattr(images, "_data_url", failing_twice)
    unretrieved: list[dict] = []
    gc.collect()  # an earlier test's leftovers (in this worker) are not this test's to judge
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: unretrieved.append(context))
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=[llm.ImageContent(image=frame)])
    with pytest.raises(ValueError, match="unsupported frame buffer"):
        await encoder.prepare(ctx, "gemini")
    encoder.warm(frame, "gemini")  # fails with nobody waiting for it
    for _ in range(500):
        await asyncio.sleep(0.01)
        if len(calls) == 2:
            break
    await asyncio.sleep(0.05)
    gc.collect()
    assert unretrieved == []
    prepared, _ = await encoder.prepare(ctx, "gemini")  # tried again, not the failure
    assert calls == [768, 768, 768]
    assert prepared.items[0].content[0].image.startswith("data:image/jpeg;base64,")
