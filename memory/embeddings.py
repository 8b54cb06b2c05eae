"""Text embeddings behind one small interface, so the knowledge base and memory recall do not
care which model made a vector.

Two offline embedders ship their weights inside PyPI wheels, so nothing is downloaded at run time.
The default, `MiniLMEmbedder`, is all-MiniLM-L6-v2 (384 dimensions, a 6-layer transformer run by
onnxruntime; `memory/minilm.py`): it understands paraphrase, and a query embeds in ~5 ms on one
core, in a thread, off the event loop. `WordLlamaEmbedder` (`l2_supercat`, 256 dimensions) is a
static word-vector model: microseconds per text, good at topic and vocabulary, weak at paraphrase;
it stays available by name. With a Gemini key, `GeminiEmbedder` uses Gemini embeddings instead;
each of its calls is billed, and reported to `record` as an `EmbeddingCall` (the session's
ledger, or a command's: agent/command_ledger.py).
Every stored vector records the embedder's `name` (model and dimension), so a change of model is
detected, never mixed. A provider that cannot be reached or refuses a call is an `EmbeddingError` of
one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .shared_calls import SharedCalls
from .vectors import unit_rows

if TYPE_CHECKING:
    import pydantic

    from .encoder import WindowedEncoder

# The encoders (onnx, onnxruntime, tokenizers, safetensors) and aiohttp are imported where a
# model is loaded or Gemini is called: ~0.6 s that every command touching the knowledge base
# or memory paid on start, though most (`kb list`, `memory show`, `costs`, `gaps list`) never
# embed a word.


log = logging.getLogger("sightline.memory")


class EmbeddingError(RuntimeError):
    """The embedding provider could not be reached or refused the call: one line that names
    it and what to do."""


@dataclass(frozen=True)
class EmbeddingCall:
    """One billed embedding request: the texts sent and their characters (Gemini's
    `batchEmbedContents` answers with vectors alone, so the tokens billed are estimated from
    them by whoever prices the call). A failed call says why in `error` ("cancelled" for one its
    caller stopped), and `billed` whether the provider may bill it all the same: yes once any
    attempt sent the request (memory/http_failures.py) and no HTTP error status or proxy's page
    answered that attempt, whatever its retries did; not when the connection was never made,
    or was still being made when the call timed out or was cancelled."""

    provider: str
    model: str
    texts: int
    characters: int
    latency_ms: float
    error: str | None = None
    billed: bool = True


RecordEmbedding = Callable[[EmbeddingCall], None]


class Embedder(Protocol):
    name: str  # model and dimension, stored with every vector
    dim: int
    fusion: str  # how its vector ranking is best fused with the keywords' (memory/knowledge.py)

    async def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def query_text(self, text: str) -> str:
        """What `embed_query` embeds for `text` (a model's question prefix, if it has one)."""
        ...

    async def embed_query(self, text: str) -> np.ndarray: ...

    async def aclose(self) -> None: ...


_load_lock = threading.Lock()


@cache
def _wordllama_cached(dim: int) -> Any:  # wordllama has no type stubs
    import wordllama

    # the wheel ships its weights and tokenizer; point the loader at them and forbid downloads
    return wordllama.WordLlama.load(
        cache_dir=Path(wordllama.__file__).parent, disable_download=True, trunc_dim=dim
    )


def _wordllama(dim: int) -> Any:
    """The process's one copy of the weights, shared by its sessions (which start in threads
    of their own: the lock keeps two first sessions from loading it twice)."""
    with _load_lock:
        return _wordllama_cached(dim)


class LocalEmbedder(ABC):
    """An embedder that runs in this process: `embed_sync` does the work; the async methods put
    it in a thread unless it is cheap enough (`INLINE_TEXTS`) to stay on the event loop."""

    FAMILY = ""  # every name it gives its vectors starts so
    INLINE_TEXTS = 0  # up to this many texts embed on the event loop (0: always in a thread)
    fusion = "rrf"
    # threads one call's documents may use (a transformer's batches): `kb ingest` sets the
    # machine's cores; a worker keeps 1, its parallelism being its sessions
    threads = 1
    name: str
    dim: int

    @abstractmethod
    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts`, one row each, computed in the calling thread."""

    async def _embed(self, texts: list[str]) -> np.ndarray:
        if len(texts) > self.INLINE_TEXTS:
            return await asyncio.to_thread(self.embed_sync, texts)
        return self.embed_sync(texts)

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return await self._embed(texts)

    def query_text(self, text: str) -> str:
        """What is embedded for a search question `text`: the question itself, unless the model
        was trained to read questions with a prefix (documents are embedded as they are)."""
        return text

    def embed_question_sync(self, text: str) -> np.ndarray:
        """A search question's vector (behind the model's question prefix, if it has one),
        computed in the calling thread."""
        return self.embed_sync([self.query_text(text)])[0]

    async def embed_query(self, text: str) -> np.ndarray:
        if self.INLINE_TEXTS:  # one text is cheap enough for the event loop
            return self.embed_question_sync(text)
        return await asyncio.to_thread(self.embed_question_sync, text)

    async def aclose(self) -> None:
        """Nothing to release: the model is shared by the process."""
        return None


class WordLlamaEmbedder(LocalEmbedder):
    """WordLlama from the installed wheel. Embedding is microseconds per text: queries and small
    batches stay on the event loop; large document batches go to a thread."""

    FAMILY = "wordllama-"
    INLINE_TEXTS = 64
    dim = 256  # the default's: a `LazyEmbedder` reads them before any load
    name = f"{FAMILY}l2-supercat-{dim}"

    def __init__(self, dim: int = dim) -> None:
        self.dim = dim
        self.name = f"{self.FAMILY}l2-supercat-{dim}"
        self._model = _wordllama(dim)

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        return unit_rows(np.asarray(self._model.embed(texts), dtype=np.float32))


@cache
def _encoder_cached(kind: type[WindowedEncoder]) -> WindowedEncoder:
    return kind()


class EncoderEmbedder(LocalEmbedder):
    """A transformer encoder from an installed wheel, loaded once per process (its sessions
    share it). Always in a thread: a query takes milliseconds of CPU, a document batch more.
    Its `name` and `dim` are the class's, known before any load (LazyEmbedder)."""

    @staticmethod
    @abstractmethod
    def encoder() -> type[WindowedEncoder]:
        """The encoder's class, imported when first loaded."""

    def __init__(self) -> None:
        from .encoder import ModelFileError

        try:
            with _load_lock:
                self._model = _encoder_cached(self.encoder())
        except ModelFileError as exc:
            raise EmbeddingError(str(exc)) from None

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        return self._model.embed(texts, self.threads)

    def embed_question_sync(self, text: str) -> np.ndarray:
        return self._model.questions.embed([self.query_text(text)])[0]


class MiniLMEmbedder(EncoderEmbedder):
    """all-MiniLM-L6-v2 (memory/minilm.py)."""

    FAMILY = "minilm-"
    # "-windows": a long text's vector covers all of it (memory/encoder.py); the vectors stored
    # as "minilm-l6-v2-384" covered only its first 256 word pieces, and the new name sends them
    # through the model-mismatch path, so `kb ingest` re-embeds them
    name = "minilm-l6-v2-384-windows"
    dim = 384

    @staticmethod
    def encoder() -> type[WindowedEncoder]:
        from .minilm import MiniLM

        return MiniLM


class BgeSmallEmbedder(EncoderEmbedder):
    """bge-small-en-v1.5, int8 (memory/bge.py)."""

    FAMILY = "bge-small-"
    name = "bge-small-en-v1.5-int8-384"
    dim = 384

    @staticmethod
    def encoder() -> type[WindowedEncoder]:
        from .bge import BgeSmall

        return BgeSmall

    def __init__(self) -> None:
        super().__init__()
        from .bge import QUERY_INSTRUCTION  # loaded with the model, just now

        self._instruction = QUERY_INSTRUCTION

    def query_text(self, text: str) -> str:
        """The question behind the model card's retrieval instruction: bge was trained to read
        a short question that way against passages, and it finds more of them so (README:
        Long conversations). Stored vectors are unchanged: only questions carry it."""
        return self._instruction + text


class MPNetEmbedder(EncoderEmbedder):
    """all-mpnet-base-v2 (memory/mpnet.py), with the `mpnet` extra: the best recall of the
    offline embedders on LoCoMo's long conversations (not on LongMemEval's: README, Knowledge
    base), at about five times MiniLM's cost a question (weights in 8 bits: memory/mpnet.py
    `int8_graph`)."""

    FAMILY = "all-mpnet-"
    name = "all-mpnet-base-v2-8bit-768-windows"
    dim = 768
    # its vectors rank well enough that their scores, not only their order, are worth
    # keeping: weighted fusion finds more on the bundled set (recall@5 0.992 against RRF's
    # 0.976, MRR 0.865 against 0.863) and on LoCoMo (README: Knowledge base)
    fusion = "weighted"

    @staticmethod
    def encoder() -> type[WindowedEncoder]:
        from .mpnet import MPNet

        return MPNet


OFFLINE_EMBEDDERS: dict[str, type[LocalEmbedder]] = {
    "minilm": MiniLMEmbedder, "bge": BgeSmallEmbedder, "wordllama": WordLlamaEmbedder,
    "mpnet": MPNetEmbedder}
DEFAULT_OFFLINE = "minilm"


def offline_embedder(name: str = DEFAULT_OFFLINE) -> LocalEmbedder:
    """The offline embedder called `name` (`minilm`, the default, `bge` or `wordllama`)."""
    return OFFLINE_EMBEDDERS[name]()


def offline_family(stored: str) -> str | None:
    """Which offline embedder made vectors stored under the model name `stored`, if one did."""
    return next((key for key, cls in OFFLINE_EMBEDDERS.items()
                 if stored.startswith(cls.FAMILY)), None)


def gemini_embedding_models() -> list[type[pydantic.BaseModel]]:
    """The google-genai models a `GeminiEmbedder` call validates. The SDK builds each on its
    first use (`defer_build`), holding the GIL: a worker builds them before its first session
    (`prepare_sdks`, agent/providers.py). Imported here, not at the top: see the embedder."""
    from google.genai import types

    return [types.EmbedContentConfig, types._EmbedContentParametersPrivate,
            types.EmbedContentResponse, types.ContentEmbedding]


class GeminiEmbedder:
    """Gemini embeddings through google-genai (`batchEmbedContents`), with retrieval task types."""

    BATCH = 100
    fusion = "rrf"

    def __init__(self, *, api_key: str, base_url: str | None, model: str = "gemini-embedding-001",
                 dim: int = 768, tls: ssl.SSLContext | None = None, timeout_s: float = 20.0,
                 retries: int = 1, record: RecordEmbedding | None = None) -> None:
        self.dim = dim
        self._record = record
        self.name = f"{model}-{dim}"
        self._model = model
        # imported here: google-genai takes ~0.8 s to import, which every `sightline kb` or
        # `gaps` command run with an offline embedder would otherwise pay
        import aiohttp
        from google.genai import errors, types

        from .db import masked_url
        from .genai_client import GenaiClient
        from .http_failures import RequestWatch

        # a key in the URL's query is never said in an error
        self._where = masked_url(base_url) if base_url else "generativelanguage.googleapis.com"

        self._types = types
        self._watch = RequestWatch
        # what the SDK raises when the service cannot be reached, refuses a call, or answers
        # with something that is not its JSON (a proxy's page)
        self._not_json = (errors.UnknownApiResponseError, json.JSONDecodeError)
        self._unreachable = (errors.APIError, *self._not_json, aiohttp.ClientError, OSError,
                             asyncio.TimeoutError)
        # what answered the latest attempt without running it: an HTTP error status (Gemini
        # bills none that failed so) or something else in its place (a proxy's page)
        self._answered = (errors.APIError, *self._not_json)
        shared: dict[str, Any] = {"client_args": {"verify": tls},
                                  "async_client_args": {"verify": tls, "ssl": tls}} if tls else {}
        self._client = GenaiClient(api_key, types.HttpOptions(
            base_url=base_url, timeout=int(timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=retries + 1), **shared))

    async def _embed(self, texts: list[str], task: str) -> np.ndarray:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.BATCH):
            batch = texts[start:start + self.BATCH]
            started = time.perf_counter()
            # Gemini may bill a request once any attempt sent it and was not refused (the SDK
            # retries a server that hung up or a 5xx), answered or not: timed out, dropped or
            # cancelled after that, or followed by a retry that failed
            watch = self._watch()
            try:
                with watch.active():
                    result = await self._client.aio.models.embed_content(
                        model=self._model, contents=batch,  # type: ignore[arg-type]
                        config=self._types.EmbedContentConfig(task_type=task,
                                                              output_dimensionality=self.dim),
                    )
            except self._unreachable as exc:
                reason = ("its answer was not the API's JSON (a proxy's page?)"
                          if isinstance(exc, self._not_json)
                          else " ".join(str(exc).split())[:160] or type(exc).__name__)
                if isinstance(exc, self._answered):
                    watch.refused()
                self._called(batch, started, reason, billed=watch.billed)
                raise EmbeddingError(
                    f"Gemini embeddings ({self._model} at {self._where}) failed: {reason}; check "
                    f"the network and GOOGLE_API_KEY, or set SIGHTLINE_EMBEDDINGS=offline"
                ) from None
            except asyncio.CancelledError:
                self._called(batch, started, "cancelled", billed=watch.billed)
                raise
            self._called(batch, started, None)
            vectors += [e.values or [] for e in result.embeddings or []]
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape != (len(texts), self.dim):
            raise RuntimeError(f"{self._model} returned {array.shape} embeddings for "
                               f"{len(texts)} texts of {self.dim} dimensions")
        return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)

    def _called(self, batch: list[str], started: float, error: str | None, *,
                billed: bool = True) -> None:
        """Report the call to `record`; a record that fails is said in one line and never
        costs the vectors that came back."""
        if self._record is None:
            return
        try:
            self._record(EmbeddingCall(
                "gemini", self._model, len(batch), sum(map(len, batch)),
                (time.perf_counter() - started) * 1000, error, billed))
        except Exception as exc:
            log.warning("an embedding call of %d texts could not be recorded: %r",
                        len(batch), exc)

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return await self._embed(texts, "RETRIEVAL_DOCUMENT")

    def query_text(self, text: str) -> str:
        """Gemini tells questions apart by task type, not by a prefix."""
        return text

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self._embed([text], "RETRIEVAL_QUERY"))[0]

    async def aclose(self) -> None:
        await self._client.aclose()


class SharedQueries:
    """An embedder whose recent query vectors are shared: a session asks for the same
    question's vector twice at once (the turn's recall and live assist, agent/assist.py), and it
    is embedded once — with Gemini embeddings, one billed call instead of two. Identical
    queries in flight wait for the one call; a failed call is not kept."""

    SIZE = 8

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.dim, self.fusion = inner.name, inner.dim, inner.fusion
        self._recent: SharedCalls[str, np.ndarray] = SharedCalls(self.SIZE)

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return await self.inner.embed_documents(texts)

    def query_text(self, text: str) -> str:
        return self.inner.query_text(text)

    async def embed_query(self, text: str) -> np.ndarray:
        return await self._recent(text, lambda: self.inner.embed_query(text))

    async def aclose(self) -> None:
        self._recent.cancel()
        await self.inner.aclose()


class LazyEmbedder:
    """An embedder made on first use. A command that embeds only now and then does not wait
    for a model's load (1.2 s for MiniLM, 6 s for mpnet, on this project's machines) when it
    has nothing to embed: `memory show|forget` embed only the messages of spill files, usually
    none; `screen timeline` never embeds; `kb ingest` of unchanged documents only compares
    their model's name. The load runs in a thread, off the event loop, when an embedding asks
    for it; `name`, `dim` and `fusion` are read from `kind`, the class it will make, where the
    class says them, and otherwise load it where they are read."""

    def __init__(self, make: Callable[[], Embedder], kind: type | None = None) -> None:
        self._make = make
        self._kind = kind
        self._made: Embedder | None = None
        self._loading = asyncio.Lock()

    def _now(self) -> Embedder:
        if self._made is None:
            self._made = self._make()
        return self._made

    async def _loaded(self) -> Embedder:
        async with self._loading:  # two first embeddings at once: one load
            if self._made is None:
                self._made = await asyncio.to_thread(self._make)
        return self._made

    @property
    def name(self) -> str:
        return getattr(self._kind, "name", None) or self._now().name

    @property
    def dim(self) -> int:
        return getattr(self._kind, "dim", None) or self._now().dim

    @property
    def fusion(self) -> str:
        return getattr(self._kind, "fusion", None) or self._now().fusion

    @property
    def loaded(self) -> bool:
        """Whether the embedder has been made (tests, and whoever wonders what a command paid)."""
        return self._made is not None

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return await (await self._loaded()).embed_documents(texts)

    def query_text(self, text: str) -> str:
        return self._now().query_text(text)

    async def embed_query(self, text: str) -> np.ndarray:
        return await (await self._loaded()).embed_query(text)

    async def aclose(self) -> None:
        if self._made is not None:
            await self._made.aclose()
