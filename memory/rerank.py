"""An optional reranker after fusion: a cross-encoder service rescores the fused candidates.

Off by default (`SIGHTLINE_RERANKER=off`): a rerank call is a network round trip and a billed
search on every turn. With `cohere`, the knowledge base sends its fused candidates to Cohere's
Rerank API (`POST /v2/rerank`) through the `cohere` SDK and keeps the reranker's order. A failed
call is logged and the fused order stands, so a reranker outage never costs an answer. Each call
is reported to `record` as a `RerankCall` (the session prices it into its ledger).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cohere.core.api_error import ApiError

log = logging.getLogger("sightline.rerank")


@dataclass(frozen=True)
class RerankCall:
    """What one rerank call did and what it is billed: search units, not tokens."""

    provider: str
    model: str
    search_units: float
    documents: int
    latency_ms: float
    error: str | None


Record = Callable[[RerankCall], None]


class RerankError(RuntimeError):
    """A rerank call that failed; the caller keeps its own order."""


class Reranker(Protocol):
    name: str

    async def rerank(self, query: str, texts: list[str], top_n: int) -> list[tuple[int, float]]:
        """(index into `texts`, relevance) of the best `top_n`, best first."""
        ...

    async def aclose(self) -> None: ...


class CohereReranker:
    def __init__(
        self, *, api_key: str, base_url: str | None, model: str = "rerank-v3.5",
        timeout_s: float = 5.0, retries: int = 1, record: Record | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        # imported here: the SDK and httpx take ~0.1 s to import, which every command reading
        # the knowledge base with the reranker off (the default) would otherwise pay
        import cohere
        import httpx
        from cohere.core.api_error import ApiError

        self._api_error: type[ApiError] = ApiError
        self._unreachable: tuple[type[Exception], ...] = (httpx.HTTPError, TimeoutError)
        self.name = model
        self._http = httpx.AsyncClient(timeout=timeout_s, **({"verify": tls} if tls else {}))
        self._client = cohere.AsyncClientV2(
            api_key=api_key, base_url=base_url or "https://api.cohere.com", timeout=timeout_s,
            max_retries=retries, httpx_client=self._http)
        self._record = record

    async def rerank(self, query: str, texts: list[str], top_n: int) -> list[tuple[int, float]]:
        started = time.perf_counter()
        error, units, ranked = None, 0.0, []
        try:
            response = await self._client.rerank(
                model=self.name, query=query, documents=texts, top_n=top_n)
            billed = response.meta.billed_units if response.meta else None
            units = float(billed.search_units or 0) if billed else 0.0
            ranked = [(r.index, float(r.relevance_score)) for r in response.results
                      if 0 <= r.index < len(texts)]
        except self._api_error as exc:
            error = f"cohere {self.name}: HTTP {exc.status_code}: {exc.body}"
        except self._unreachable as exc:
            error = f"cohere {self.name}: {exc!r}"
        if self._record is not None:
            self._record(RerankCall("cohere", self.name, units, len(texts),
                                    (time.perf_counter() - started) * 1000, error))
        if error is not None:
            raise RerankError(error)
        return ranked

    async def aclose(self) -> None:
        await self._http.aclose()
