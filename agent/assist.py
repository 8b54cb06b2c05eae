"""Live assist: while the user speaks or types, what Sightline heard, the intent it detected and
the knowledge articles that match — published before the answer starts.

One message per user utterance (once the reply to it is used: a reply livekit-agents started
early on words the user went on from publishes none), and while it is unfinished
(`final: false`) one per interim transcript (when STT is on) or typed draft (an app's
`sightline.draft` data message), schema version 1 (`AssistMessage`; its JSON Schema is
docs/assist.schema.json), JSON on the data topic `sightline.assist` and, identically, an
`assist` event in the session's event log:

    {"type": "assist", "version": 1, "session_id": "...", "at": "ISO-8601 UTC",
     "input": "typed" | "voice", "final": true | false, "text": "the user's words",
     "intent": {"name": "troubleshoot_error", "score": 0.71} | null,
     "suggestions": [{"title": "Vpn reset", "source": "help/vpn-reset.md", "page": null,
                      "score": 0.032787}]}

Cheap by design, no model call: the question is embedded once with the session's embedder; the
intent is the nearest of a small list of intents (each a handful of example phrasings, embedded once
per embedder and process) above the embedder's floor (`intent_floor`), else null; the suggestions
are the tenant's best knowledge hits that share a word with the words (the turn's own lookup rule),
at most one per document, up to three. `bench/assist_intent.py` measured this against the
other choice the issue names (asking tier 0) — see README, Live assist. The words are looked up
as said, and recorded and published with each secret's value hidden (memory/secret_text.py):
the event log is kept, and "my wifi password is hunter2" would be there for as long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.embeddings import Embedder
from memory.knowledge import Hit, KnowledgeBase
from memory.secret_text import hide_in_text
from memory.vectors import unit_rows

log = logging.getLogger("sightline.assist")

ASSIST_TOPIC = "sightline.assist"
DRAFT_TOPIC = "sightline.draft"  # app -> agent: the user's unsent chat text, as UTF-8
ASSIST_VERSION = 1
SUGGESTIONS = 3
# An intent needs a cosine to its nearest example at least this share of the examples reach to
# their nearest same-intent sibling (each embedder has its own scale of similarity: MiniLM's
# examples' 10th percentile is 0.27, bge-small's 0.64), so the floor is the embedder's own
INTENT_FLOOR_PERCENTILE = 10
TEXT_CHARS = 500

# Each intent by a few phrasings a user might use. Kept small and generic: apps map the names.
INTENTS: dict[str, tuple[str, ...]] = {
    "troubleshoot_error": (
        "why does this error show up", "I get an exception when I run it",
        "the build fails with an error", "it crashes when I click save",
        "what does this error message mean", "something is broken and does not work"),
    "how_to": (
        "how do I export a report", "where is the setting for notifications",
        "how can I change the language", "show me how to set this up",
        "what are the steps to install it"),
    "explain_screen": (
        "what is this dialog", "what am I looking at on my screen", "what does this page show",
        "what does this button do", "read what it says here"),
    "account_billing": (
        "how do I change my plan", "I was charged twice", "cancel my subscription",
        "update my credit card", "reset my password", "I cannot log in to my account"),
    "talk_to_human": (
        "can I speak to a person", "get me a human", "I want to talk to support staff",
        "transfer me to an agent", "let me talk to someone real"),
    "remember_or_forget": (
        "remember that I use ubuntu", "please remember my laptop model", "forget my old address",
        "do not remember that", "note that I prefer dark mode"),
    "resolved": (
        "that worked thanks", "it works now", "great that fixed it", "perfect thank you",
        "problem solved"),
}


class Intent(BaseModel):
    """The detected intent: one of `INTENTS`, and its cosine to the nearest example."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    score: float


class Suggestion(BaseModel):
    """A knowledge article that matches the words (`score`: the knowledge base's fused rank
    score, higher is better; comparable within one message)."""

    model_config = ConfigDict(extra="forbid")
    title: str
    source: str = Field(description="the document's name in the knowledge base")
    page: int | None = Field(description="the PDF page, 1-based; null for other documents")
    score: float


class AssistMessage(BaseModel):
    """One live-assist message, version 1: on the data topic `sightline.assist` and as the
    `assist` event's detail in the session's event log. Any change to the fields is a new
    version."""

    model_config = ConfigDict(extra="forbid", title="Sightline live assist message")
    type: Literal["assist"] = "assist"
    version: Literal[1] = ASSIST_VERSION
    session_id: str
    at: datetime = Field(description="when it was made, UTC")
    input: Literal["typed", "voice"]
    final: bool = Field(description="false for an interim transcript while the user speaks")
    text: str = Field(description="the user's words, as typed or transcribed, each secret's "
                      "value (a password, key, token, card number) replaced by "
                      "\"[secret hidden]\"")
    intent: Intent | None = Field(description="null when no intent is near enough")
    suggestions: list[Suggestion] = Field(max_length=SUGGESTIONS)


class IntentIndex:
    """The intents' example phrasings as unit vectors of one embedder, embedded once."""

    # embedder name -> (labels, vectors, floor), shared by the process's sessions
    _cache: ClassVar[dict[str, tuple[list[str], np.ndarray, float]]] = {}

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Embed the examples now (a session's start), so that its first utterance does not
        wait for them (37 texts: ~90 ms with MiniLM here, several times that with mpnet); a
        failure is logged and the first utterance tries again."""
        try:
            await self._examples()
        except Exception as exc:
            log.warning("live assist: the intent examples could not be embedded yet (%r); "
                        "the first utterance tries again", exc)

    async def _examples(self) -> tuple[list[str], np.ndarray, float]:
        async with self._lock:
            cached = self._cache.get(self._embedder.name)
            if cached is None:
                labels = [name for name, phrases in INTENTS.items() for _ in phrases]
                # the examples are utterances, compared with an utterance embedded as a
                # question: they are embedded the same way (bge's instruction on both sides)
                texts = [self._embedder.query_text(phrase)
                         for phrases in INTENTS.values() for phrase in phrases]
                vectors = unit_rows(np.asarray(await self._embedder.embed_documents(texts)))
                cached = self._cache[self._embedder.name] = (
                    labels, vectors, intent_floor(labels, vectors))
            return cached

    async def classify(self, vector: np.ndarray) -> Intent | None:
        """The intent of the nearest example, when it is near enough."""
        labels, vectors, floor = await self._examples()
        scores = vectors @ unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        best = int(np.argmax(scores))
        score = float(scores[best])
        if score < floor:
            return None
        return Intent(name=labels[best], score=round(score, 4))


def intent_floor(labels: list[str], vectors: np.ndarray) -> float:
    """The embedder's floor for an intent: the INTENT_FLOOR_PERCENTILE of each example's cosine
    to its nearest sibling of the same intent (unit `vectors`, one per example)."""
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    nearest = np.where(same, vectors @ vectors.T, -1.0).max(axis=1)
    return float(np.percentile(nearest, INTENT_FLOOR_PERCENTILE))


def title_of(source: str) -> str:
    """A readable title from a document's name: `help/vpn-reset.md` -> `Vpn reset`."""
    stem = PurePosixPath(source).stem.replace("_", " ").replace("-", " ").strip()
    return (stem[:1].upper() + stem[1:]) if stem else source


def suggestions(hits: list[Hit]) -> list[Suggestion]:
    """At most one suggestion per document, best first, up to `SUGGESTIONS`."""
    chosen: dict[str, Hit] = {}
    for hit in hits:
        chosen.setdefault(hit.source, hit)
    return [Suggestion(title=title_of(h.source), source=h.source, page=h.page,
                       score=round(h.score, 6)) for h in list(chosen.values())[:SUGGESTIONS]]


Published = dict[str, Any]  # an `AssistMessage` as JSON-ready data


class LiveAssist:
    """Builds, records and publishes one session's assist messages. Without an embedder (a
    session opened without the database, whose embedder is chosen by what the tenant's
    knowledge is stored with) it publishes nothing until `use` gives it one."""

    def __init__(self, embedder: Embedder | None, knowledge: KnowledgeBase | None, *,
                 tenant: str, session_id: str, record: Callable[[Published], None]) -> None:
        self._embedder: Embedder | None = None
        self._knowledge: KnowledgeBase | None = None
        self._intents: IntentIndex | None = None
        self._preparing: asyncio.Task[None] | None = None
        self._has_knowledge = False
        if embedder is not None:
            self.use(embedder, knowledge)
        self._tenant = tenant
        self._session_id = session_id
        self._record = record
        self.listeners: list[Callable[[Published], None]] = []  # e.g. the room's publisher
        self._interim: asyncio.Task[None] | None = None
        self.interim_skipped = 0  # unfinished words dropped while others were being looked up
        self._voice_final: str | None = None  # the last final transcript, to tell voice apart

    def use(self, embedder: Embedder, knowledge: KnowledgeBase | None) -> None:
        """Look words up with `embedder` in `knowledge` from now on (a session that joined the
        database: agent/database_watch.py)."""
        self._embedder, self._knowledge = embedder, knowledge
        self._intents = IntentIndex(embedder)
        if self._preparing is not None:
            self._preparing.cancel()
        self._preparing = asyncio.create_task(self._intents.prepare(), name="assist-intents")
        # knowledge only grows while a session runs (one deleted meanwhile is searched and
        # found empty): once the tenant has some, the probe is not asked again, as in the
        # turn's recall (memory/recall.py), and a turn's assist costs one query, not two
        self._has_knowledge = False

    async def __call__(self, text: str, *, final: bool = True, voice: bool | None = None
                       ) -> Published | None:
        """Look the words up and publish the message at once: for unfinished words, which
        belong to no reply. A turn's question is looked up (`look_up`) and published
        (`publish`) apart, once the reply it belongs to is used (agent/sightline_agent.py)."""
        message = await self.look_up(text, final=final, voice=voice)
        if message is not None:
            self.publish(message)
        return message

    async def look_up(self, text: str, *, final: bool = True, voice: bool | None = None
                      ) -> Published | None:
        """The message for these words, neither recorded nor published: an early reply's words
        (livekit-agents' preemptive generation) may be thrown away before it is used. None
        (logged) for empty words or a failed lookup, which never stops the turn."""
        text = " ".join(text.split())[:TEXT_CHARS]
        if not text or self._embedder is None or self._intents is None:
            return None
        if voice is None:
            voice = self._voice_final == text
        try:
            vector = await self._embedder.embed_query(text)
            intent = await self._intents.classify(vector)
            hits: list[Hit] = []
            if self._knowledge is not None and await self._tenant_has_knowledge():
                hits = await self._knowledge.lookup(self._tenant, text, k=SUGGESTIONS * 2,
                                                    vector=vector)
            kept = await asyncio.to_thread(hide_in_text, text)  # 500 characters: about 1 ms
        except Exception as exc:
            log.warning("live assist lookup failed for this utterance: %r", exc)
            return None
        return AssistMessage(
            session_id=self._session_id, at=datetime.now(UTC),
            input="voice" if voice else "typed", final=final, text=kept, intent=intent,
            suggestions=suggestions(hits),
        ).model_dump(mode="json")

    def publish(self, message: Published) -> None:
        """Record `message` in the event log and hand it to the listeners (the room)."""
        self._record(message)
        for listener in self.listeners:
            listener(message)

    async def _tenant_has_knowledge(self) -> bool:
        if not self._has_knowledge and self._knowledge is not None:
            self._has_knowledge = await self._knowledge.has_any(self._tenant)
        return self._has_knowledge

    def transcribed(self, text: str, *, final: bool) -> None:
        """A transcript from STT: a final one is remembered (the turn's own message follows
        through the agent, and is then told apart as voice); an interim one is looked up."""
        if final:
            self._voice_final = " ".join(text.split())[:TEXT_CHARS]
        else:
            self._partial(text, voice=True)

    def drafted(self, text: str) -> None:
        """What the user is typing, before they send it (the console's `sightline.draft`)."""
        self._partial(text, voice=False)

    def _partial(self, text: str, *, voice: bool) -> None:
        """Look unfinished words up, unless a lookup still runs: then they are skipped and
        counted (the next ones carry newer words)."""
        if self._interim is not None and not self._interim.done():
            self.interim_skipped += 1
            return

        async def look_up() -> None:
            await self(text, final=False, voice=voice)

        self._interim = asyncio.create_task(look_up(), name="assist-partial")

    async def aclose(self) -> None:
        for task in (self._interim, self._preparing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
