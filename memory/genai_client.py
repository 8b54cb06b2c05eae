"""A google-genai client whose requests a `RequestWatch` sees (memory/http_failures.py): the
chat provider's (agent/providers.py) and Gemini embeddings' (memory/embeddings.py).

google-genai 3.4.0 sends with aiohttp when it is installed, falling back to httpx2, and its own
session takes no trace: the client is given a session of its own that does. Imported where
google-genai is, so a command that never calls Gemini pays for neither.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from google import genai
from google.genai import types as genai_types

from .http_failures import AIOHTTP_TRACE

if TYPE_CHECKING:
    from google.genai.client import AsyncClient

# what google-genai reads its aiohttp answers with (3.4.0's READ_BUFFER_SIZE): a streamed
# chunk or an embedding batch's answer can be larger than aiohttp's 64 KiB default
_READ_BUFFER = 2**22


class GenaiClient:
    """A google-genai client that sends through an aiohttp session of its own, made as
    google-genai makes its own (no limit on connections, proxies from the environment) but
    traced into the active `RequestWatch`. aiohttp binds a session to the event loop it is made
    in: made at once where a loop runs (a session opening, so its first turn does not pay the
    ~0.8 ms of a client), else where it is first used. `aclose` closes both."""

    def __init__(self, api_key: str, options: genai_types.HttpOptions) -> None:
        self._api_key, self._options = api_key, options
        self._made: tuple[genai.Client, aiohttp.ClientSession] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._make()

    def _make(self) -> tuple[genai.Client, aiohttp.ClientSession]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), trust_env=True, read_bufsize=_READ_BUFFER,
            trace_configs=[AIOHTTP_TRACE])
        client = genai.Client(api_key=self._api_key, http_options=self._options.model_copy(
            update={"aiohttp_client": session}))
        self._made = (client, session)
        return self._made

    @property
    def aio(self) -> AsyncClient:
        return (self._made or self._make())[0].aio

    async def aclose(self) -> None:
        if self._made is not None:
            client, session = self._made
            await client.aio.aclose()
            await session.close()
