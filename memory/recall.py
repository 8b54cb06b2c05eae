"""One lookup per user turn: the tenant's knowledge, what is remembered about the user, and what
was on the user's screen before (this session or an earlier one).

The question is embedded once, and only when there is something to search; the knowledge base,
the user's memory and their screen timeline are searched at the same time, on pooled connections
(at most the pool's size at once: no search holds two), and each runs the part that needs no
vector (keywords, the latest errors) while the question is embedded in its thread, so a turn
waits for the longer of the two rather than their sum.

Whether a part has anything to search is asked of the database until it has: knowledge, memory
and screen events only grow while a session runs (one deleted meanwhile is searched and found
empty), so a "yes" holds for the rest of the session and a turn then goes straight to its
searches. On a loaded worker the probes were nearly half of a turn's lookup (30 sessions of
`bench/load.py`: 67 ms p50 / 181 ms p90 of probes against 86 / 213 ms of searches). A part
still probed (knowledge, for a tenant without any) is probed beside the others' searches, not
before them.

An embedding that has not come within `VECTOR_WAIT_S`, or that fails (a provider slow under load,
or down), does not cost the turn what the keywords found: the searches go on by keywords alone,
and `Recalled.vector` says so (`late`, `failed`). Likewise a part that fails (the tenant's
knowledge stored with another embedder, a statement the database refuses) costs the turn that
part alone: the others' findings go in, and `Recalled.failed` names it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from .bm25 import searchable
from .db import error_reason
from .embeddings import EmbeddingError
from .knowledge import Hit, KnowledgeBase
from .screen_timeline import ScreenEvent, ScreenTimeline
from .user_memory import Recollection, UserMemory

T = TypeVar("T")
log = logging.getLogger("sightline.recall")

# The question's vector is waited for this long; the turn's whole lookup has 0.5 s
# (agent/turn_context.py), and the vector searches still need theirs after it
VECTOR_WAIT_S = 0.3

VectorOutcome = Literal["used", "late", "failed", "none"]  # none: nothing to search


@dataclass(frozen=True)
class Recalled:
    knowledge: list[Hit] = field(default_factory=list)
    memory: Recollection = field(default_factory=Recollection)
    screen: list[ScreenEvent] = field(default_factory=list)
    vector: VectorOutcome = "none"
    failed: tuple[str, ...] = ()  # the parts whose probe or search failed (logged)


class TurnRecall:
    def __init__(
        self, knowledge: KnowledgeBase, memory: UserMemory, *, tenant: str, user_id: str,
        before_id: int, screen: ScreenTimeline | None = None,
        vector_wait_s: float = VECTOR_WAIT_S,
    ) -> None:
        embedders = {id(part.embedder) for part in (knowledge, memory, screen) if part}
        if len(embedders) != 1:
            raise ValueError("knowledge, memory and the screen timeline must share one "
                             "embedder: one query vector")
        self._knowledge, self._memory, self._screen = knowledge, memory, screen
        self._tenant, self._user_id, self._before_id = tenant, user_id, before_id
        self._vector_wait_s = vector_wait_s
        self._holding: set[str] = set()  # the parts known to have something to search

    async def __call__(self, question: str) -> Recalled:
        if not question.strip():
            return Recalled()
        question = searchable(question)
        # the embedding call and the vector waited for in time, once a part asks for them
        started: tuple[asyncio.Future[np.ndarray], asyncio.Future[np.ndarray | None]] | None = None
        outcome: list[VectorOutcome] = ["used"]

        def question_vector() -> asyncio.Future[np.ndarray | None]:
            """The question's vector, embedded when the first part found to hold something
            asks for it (never, when none does)."""
            nonlocal started
            if started is None:
                embedding = asyncio.ensure_future(self._knowledge.embedder.embed_query(question))
                started = (embedding, asyncio.ensure_future(self._in_time(embedding, outcome)))
            return started[1]

        screen = self._screen
        failed: dict[str, str] = {}
        try:
            knowledge, memory, screens = await asyncio.gather(
                self._searched("knowledge", lambda: self._knowledge.has_any(self._tenant),
                               lambda: self._knowledge.lookup(self._tenant, question,
                                                              vector=question_vector()),
                               [], failed),
                self._searched("memory", lambda: self._memory.has_any(
                    self._tenant, self._user_id, self._before_id), lambda: self._memory.recall(
                        self._tenant, self._user_id, question, question_vector(),
                        before_id=self._before_id), Recollection(), failed),
                self._searched("screen", lambda: screen.has_any(self._tenant, self._user_id),
                               lambda: screen.recall(self._tenant, self._user_id, question,
                                                     question_vector()), [], failed)
                if screen else _value([]),
            )
        finally:
            if started is not None:  # when the lookup was cancelled; a finished one is unaffected
                embedding, vector = started
                vector.cancel()
                embedding.cancel()
        if failed:
            log.warning("recall: %s; the turn keeps what the other parts found",
                        "; ".join(f"{part} failed ({why})" for part, why in failed.items()))
        return Recalled(knowledge, memory, screens, outcome[0] if started else "none",
                        tuple(failed))

    async def _searched(self, part: str, probe: Callable[[], Awaitable[bool]],
                        search: Callable[[], Awaitable[T]], empty: T,
                        failed: dict[str, str]) -> T:
        """`part`'s search, or `empty` when it has nothing to search or fails (`failed` then
        says why). Each part probes and searches on its own, so a part known to hold something
        is searched at once rather than after the others' probes (the tenant without
        knowledge is probed every turn)."""
        try:
            if not await self._has_any(part, probe):
                return empty
            return await search()
        except Exception as exc:
            failed[part] = error_reason(exc)
            return empty

    async def _has_any(self, part: str, probe: Callable[[], Awaitable[bool]]) -> bool:
        """Whether `part` has anything to search: asked until it has (see the module's
        docstring)."""
        if part in self._holding:
            return True
        if await probe():
            self._holding.add(part)
            return True
        return False

    async def _in_time(self, embedding: asyncio.Future[np.ndarray],
                       outcome: list[VectorOutcome]) -> np.ndarray | None:
        """The question's vector, or None when it is late or failed (`outcome` says which)."""
        try:
            return await asyncio.wait_for(asyncio.shield(embedding), self._vector_wait_s)
        except TimeoutError:
            outcome[0] = "late"
            log.warning("the question's embedding took over %.1f s: recalling by keywords "
                        "alone", self._vector_wait_s)
        except EmbeddingError as exc:
            outcome[0] = "failed"
            log.warning("the question could not be embedded (%s): recalling by keywords "
                        "alone", exc)
        return None


async def _value(value: T) -> T:
    return value
