"""One lookup per user turn: the tenant's knowledge and what is remembered about the user.

The question is embedded once, and only when there is something to search; the knowledge base
and the user's memory are then searched at the same time, on two pooled connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .knowledge import Hit, KnowledgeBase
from .user_memory import Recollection, UserMemory


@dataclass(frozen=True)
class Recalled:
    knowledge: list[Hit] = field(default_factory=list)
    memory: Recollection = field(default_factory=Recollection)


class TurnRecall:
    def __init__(
        self, knowledge: KnowledgeBase, memory: UserMemory, *, tenant: str, user_id: str,
        before_id: int,
    ) -> None:
        if knowledge.embedder is not memory.embedder:
            raise ValueError("knowledge and memory must share one embedder: one query vector")
        self._knowledge, self._memory = knowledge, memory
        self._tenant, self._user_id, self._before_id = tenant, user_id, before_id

    async def __call__(self, question: str) -> Recalled:
        if not question.strip():
            return Recalled()
        has_knowledge, has_memory = await asyncio.gather(
            self._knowledge.has_any(self._tenant),
            self._memory.has_any(self._tenant, self._user_id, self._before_id),
        )
        if not has_knowledge and not has_memory:
            return Recalled()
        vector = await self._knowledge.embedder.embed_query(question)
        knowledge, memory = await asyncio.gather(
            self._knowledge.lookup(self._tenant, question, vector=vector)
            if has_knowledge else _nothing(),
            self._memory.recall(self._tenant, self._user_id, question, vector,
                                before_id=self._before_id)
            if has_memory else _no_memory(),
        )
        return Recalled(knowledge, memory)


async def _nothing() -> list[Hit]:
    return []


async def _no_memory() -> Recollection:
    return Recollection()
