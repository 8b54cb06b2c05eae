"""The configured implementations of memory's small interfaces: which embedder, which reranker.

`memory/` defines what an embedder and a reranker are and knows nothing of settings; choosing one
from `SIGHTLINE_*` variables and the keys in the environment happens here, for sessions and the
command line alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from memory.embeddings import (
    DEFAULT_OFFLINE,
    OFFLINE_EMBEDDERS,
    Embedder,
    GeminiEmbedder,
    LazyEmbedder,
    RecordEmbedding,
    offline_embedder,
    offline_family,
)
from memory.rerank import CohereReranker, Record, Reranker

from .config import ConfigError, Settings
from .tls import shared_tls_context


def _offline_choice(settings: Settings, stored: Sequence[str]) -> str | None:
    """The offline embedder `make_embedder` makes (its key), or None for Gemini."""
    choice = settings.embeddings_in_use()
    if settings.embeddings == "auto":
        kept = next((f for f in map(offline_family, stored) if f), None)
        if kept is not None:
            return kept
    if choice != "gemini":
        return DEFAULT_OFFLINE if choice == "offline" else choice
    return None


def make_embedder(settings: Settings, stored: Sequence[str] = (),
                  record: RecordEmbedding | None = None) -> Embedder:
    """SIGHTLINE_EMBEDDINGS: `offline` (MiniLM), `minilm`, `bge`, `wordllama`, `gemini`, or `auto`:
    the embedder a tenant's knowledge is stored with (`stored`, its models' names), else Gemini
    when its key is set, else MiniLM. `auto` never switches a tenant's stored knowledge to
    another model: that would re-embed all of it (an explicit choice does, at `kb ingest`).
    Gemini's calls are billed: each goes to `record` (a session's meter or a command's)."""
    offline = _offline_choice(settings, stored)
    if offline is not None:
        return offline_embedder(offline)
    if not settings.gemini_api_key:
        raise ConfigError("SIGHTLINE_EMBEDDINGS=gemini needs GOOGLE_API_KEY")
    return GeminiEmbedder(api_key=settings.gemini_api_key, base_url=settings.gemini_base_url,
                          tls=shared_tls_context(), timeout_s=settings.model_timeout_s,
                          retries=settings.model_retries, record=record)


def embedder_on_use(settings: Settings, stored: Sequence[str] = (), threads: int = 1,
                    record: RecordEmbedding | None = None) -> Embedder:
    """`make_embedder` for a command that may embed nothing (`memory show|forget`, `screen
    timeline|search`, `kb ingest` of unchanged documents): an offline model loads at its first
    embedding, with `threads` for a call's documents. Gemini has nothing to load, so it is
    made at once, and a missing key is said before the command starts."""
    offline = _offline_choice(settings, stored)
    if offline is None:
        return make_embedder(settings, stored, record)

    def make() -> Embedder:
        embedder = offline_embedder(offline)
        embedder.threads = threads
        return embedder
    return LazyEmbedder(make, OFFLINE_EMBEDDERS[offline])


def make_reranker(settings: Settings, record: Record | None = None) -> Reranker | None:
    """SIGHTLINE_RERANKER: `off` (default) or `cohere` (needs COHERE_API_KEY); each call goes
    to `record` (the session's meter)."""
    if settings.reranker == "off":
        return None
    if not settings.cohere_api_key:
        raise ConfigError("SIGHTLINE_RERANKER=cohere needs COHERE_API_KEY")
    return CohereReranker(api_key=settings.cohere_api_key, base_url=settings.cohere_base_url,
                          model=settings.rerank_model, timeout_s=settings.model_timeout_s,
                          retries=settings.model_retries, record=record,
                          tls=shared_tls_context())
