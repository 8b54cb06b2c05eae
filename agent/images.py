"""Screen frames sized and encoded per provider: few billed image tokens, legible text.

The two providers bill images differently, so one size does not fit both:
- Gemini: 258 tokens for an image up to 384×384, else 258 per 768×768 tile. A 1080p frame is
  3×2 tiles (1548 tokens) as it is, but 2×1 tiles (516 tokens) scaled to 1365×768, where 14 px
  text is still 10 px high. The cheapest size is the largest that fills a whole tile grid.
- Claude: about width×height/750 tokens, with no tiles: the size follows a token budget.

`SIGHTLINE_IMAGE_DETAIL` picks the budget: `low` (Gemini 1 tile, Claude ~500 tokens: the layout
and large text), `medium` (2 tiles / ~1200: ordinary screen text), `high` (4 tiles / ~1600:
small print). A turn's frames arrive in the chat context as `rtc.VideoFrame`s; `ImageEncoder`
turns them into JPEGs sized for the provider being asked, off the event loop, once per frame and
size (tiers on the same provider share the encode), and says what they will be billed. A turn
starts encoding its new frame for the first tier (`warm`) while its knowledge and memory lookup
runs, so the request waits for whichever of the two is slower rather than for both in a row.
"""

from __future__ import annotations

import asyncio
import base64
import math
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import llm

from memory.shared_calls import SharedCalls
from vision.jpeg import jpeg_bytes

from .config import IMAGE_DETAILS
from .screen_context import UNSENT_FRAME

GEMINI_TOKENS_PER_TILE = 258
GEMINI_TILE_PX = 768
GEMINI_SMALL_PX = 384
GEMINI_TILES = {"low": 1, "medium": 2, "high": 4}

CLAUDE_PX_PER_TOKEN = 750
CLAUDE_MAX_EDGE_PX = 1568  # Claude scales anything larger down to this, or to ~1600 tokens,
CLAUDE_TOKENS = {"low": 500, "medium": 1200, "high": 1600}  # before billing: "high" is that

JPEG_QUALITY = 80


def gemini_image_tokens(width: int, height: int) -> int:
    if width <= GEMINI_SMALL_PX and height <= GEMINI_SMALL_PX:
        return GEMINI_TOKENS_PER_TILE
    tiles = math.ceil(width / GEMINI_TILE_PX) * math.ceil(height / GEMINI_TILE_PX)
    return GEMINI_TOKENS_PER_TILE * tiles


def claude_image_tokens(width: int, height: int) -> int:
    width, height = sized_for("anthropic", width, height, "high")  # Claude's own downscale
    return math.ceil(width * height / CLAUDE_PX_PER_TOKEN)


def image_tokens(provider: str, width: int, height: int) -> int:
    """What the provider bills for an image of this size (its documented rule)."""
    if provider == "gemini":
        return gemini_image_tokens(width, height)
    return claude_image_tokens(width, height)


def _gemini_scale(width: int, height: int, detail: str) -> float:
    """The largest scale at which the image fits a grid of at most the detail's tiles."""
    tiles = GEMINI_TILES[detail]
    return max(
        min(1.0, cols * GEMINI_TILE_PX / width, (tiles // cols) * GEMINI_TILE_PX / height)
        for cols in range(1, tiles + 1)
    )


def _claude_scale(width: int, height: int, detail: str) -> float:
    budget_px = CLAUDE_TOKENS[detail] * CLAUDE_PX_PER_TOKEN
    edge = CLAUDE_MAX_EDGE_PX / max(width, height)
    return min(1.0, math.sqrt(budget_px / (width * height)), edge)


def sized_for(provider: str, width: int, height: int, detail: str) -> tuple[int, int]:
    """The size to send a width×height frame at, never larger than the frame."""
    scale = (_gemini_scale if provider == "gemini" else _claude_scale)(width, height, detail)
    # floor, so a tile-exact size never spills into one more tile
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


@dataclass(frozen=True)
class SentImage:
    """One frame a request sends: the id of the image part that carries it, its billed tokens
    at the size it is sent, and the same frame's at its full resolution."""

    part_id: str
    tokens: int
    full_resolution_tokens: int


@dataclass(frozen=True)
class ImageBill:
    """The images of one request: each frame it sends, in order, and the tokens of the current
    frame had it been sent again although the screen had not changed
    (`SIGHTLINE_IMAGE_POLICY=changed`). Built with the request, before it goes out; the meter
    places each frame in the prompt once the call is over (`billed`)."""

    sent: tuple[SentImage, ...] = ()
    unsent_tokens: int = 0

    @property
    def images(self) -> int:
        return len(self.sent)

    @property
    def tokens(self) -> int:
        return sum(image.tokens for image in self.sent)

    @property
    def full_resolution_tokens(self) -> int:
        return sum(image.full_resolution_tokens for image in self.sent)

    def billed(self, part: object) -> tuple[int, int] | None:
        """A message part's tokens and full-resolution tokens when it is a frame this bill
        priced, else None: the rule `metering.images_in_prompt` places the frames by."""
        if isinstance(part, llm.ImageContent):
            for image in self.sent:
                if image.part_id == part.id:
                    return image.tokens, image.full_resolution_tokens
        return None


def _data_url(frame: rtc.VideoFrame, width: int, height: int) -> str:
    # exactly the size `sized_for` chose: an aspect fit could round a pixel off and bill
    # differently from what was predicted. OpenCV, not livekit-agents' Pillow encode: it lets
    # the process's other sessions run meanwhile (vision/jpeg.py)
    data = jpeg_bytes(frame, JPEG_QUALITY, (width, height))
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


class ImageEncoder:
    """Encodes a turn's frames for each provider; keeps the last few encodes, finished or
    still running, so a turn that asks for a frame already being encoded waits for that encode
    instead of starting its own."""

    CACHE_SIZE = 8

    def __init__(self, detail: str) -> None:
        if detail not in IMAGE_DETAILS:
            raise ValueError(f"image detail must be one of {', '.join(IMAGE_DETAILS)}")
        self.detail = detail
        # key: (frame, width, height), the frame by identity (kept alive while its entry lives);
        # a failed encode is not kept (the next turn tries again), and its error reaches the
        # turn that waits for it, or, for a warm-up no turn waited for, nobody
        self._encodes: SharedCalls[tuple[rtc.VideoFrame, int, int], str] = SharedCalls(
            self.CACHE_SIZE)

    def _encoding(self, frame: rtc.VideoFrame, width: int, height: int) -> asyncio.Future[str]:
        # JPEG encoding of a full frame takes 5-10 ms of CPU: keep it off the event loop
        return self._encodes.start((frame, width, height),
                                   lambda: asyncio.to_thread(_data_url, frame, width, height))

    def warm(self, frame: rtc.VideoFrame, provider: str) -> None:
        """Start encoding `frame` for `provider` now, for a request that will ask for it soon."""
        self._encoding(frame, *sized_for(provider, frame.width, frame.height, self.detail))

    async def _encoded(self, frame: rtc.VideoFrame, width: int, height: int) -> str:
        # shielded: a turn cancelled while it waits leaves the encode to the next one
        return await asyncio.shield(self._encoding(frame, width, height))

    async def prepare(
        self, chat_ctx: llm.ChatContext, provider: str
    ) -> tuple[llm.ChatContext, ImageBill]:
        """A copy of `chat_ctx` whose frames are JPEGs sized for `provider`, and their bill."""
        ctx = chat_ctx.copy()
        sent: list[SentImage] = []
        unsent = 0
        for index, item in enumerate(ctx.items):
            if item.type == "message" and UNSENT_FRAME in item.extra:
                unsent += image_tokens(provider, *sized_for(provider, *item.extra[UNSENT_FRAME],
                                                            self.detail))
            if item.type != "message" or not any(
                isinstance(c, llm.ImageContent) and isinstance(c.image, rtc.VideoFrame)
                for c in item.content
            ):
                continue
            content: list[llm.ChatContent] = []
            for part in item.content:
                if isinstance(part, llm.ImageContent) and isinstance(part.image, rtc.VideoFrame):
                    frame = part.image
                    width, height = sized_for(provider, frame.width, frame.height, self.detail)
                    sent.append(SentImage(part.id, image_tokens(provider, width, height),
                                          image_tokens(provider, frame.width, frame.height)))
                    part = llm.ImageContent(
                        id=part.id, image=await self._encoded(frame, width, height),
                        mime_type="image/jpeg",
                    )
                content.append(part)
            ctx.items[index] = item.model_copy(update={"content": content})
        return ctx, ImageBill(tuple(sent), unsent)
