"""An optional reranker after fusion: a cross-encoder service rescores the fused candidates.

Off by default (`SIGHTLINE_RERANKER=off`): a rerank call is a network round trip and a billed
search on every turn. With `cohere`, the knowledge base sends its fused candidates to Cohere's
Rerank API (`POST /v2/rerank`) through the `cohere` SDK and keeps the reranker's order. A failed
call is logged and the fused order stands, so a reranker outage never costs an answer. Each call
is reported to `record` (the session's cost ledger) with its billed search units.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import cohere
import httpx
from cohere.core.api_error import ApiError

from agent.config import ConfigError, Settings
from agent.pricing import Usage

log = logging.getLogger("sightline.rerank")

Record = Callable[..., Any]  # CostLedger.model_call's keyword arguments


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
    ) -> None:
        self.name = model
        self._http = httpx.AsyncClient(timeout=timeout_s)
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
        except ApiError as exc:
            error = f"cohere {self.name}: HTTP {exc.status_code}: {exc.body}"
        except (httpx.HTTPError, TimeoutError) as exc:
            error = f"cohere {self.name}: {exc!r}"
        if self._record is not None:
            self._record(provider="cohere", model=self.name, usage=Usage(search_units=units),
                         images=0, latency_ms=(time.perf_counter() - started) * 1000,
                         error=error, detail={"purpose": "rerank", "documents": len(texts)})
        if error is not None:
            raise RerankError(error)
        return ranked

    async def aclose(self) -> None:
        await self._http.aclose()


def make_reranker(settings: Settings, record: Record | None = None) -> Reranker | None:
    """SIGHTLINE_RERANKER: `off` (default) or `cohere` (needs COHERE_API_KEY)."""
    if settings.reranker == "off":
        return None
    if not settings.cohere_api_key:
        raise ConfigError("SIGHTLINE_RERANKER=cohere needs COHERE_API_KEY")
    return CohereReranker(api_key=settings.cohere_api_key, base_url=settings.cohere_base_url,
                          model=settings.rerank_model, timeout_s=settings.model_timeout_s,
                          retries=settings.model_retries, record=record)
