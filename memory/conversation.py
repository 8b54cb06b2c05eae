"""The conversation log: every user and assistant turn, per tenant and user, across sessions.

Writes go through a `BackgroundWriter` so storing a turn never delays a reply; each message is
embedded on the way in (off the reply path), so later sessions can recall it by meaning.
`history()` gives the user's last N messages as a LiveKit chat context, so a returning user is
remembered, and `recall_before` tells recall which older messages are not in it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .embeddings import Embedder
from .secret_text import hide_in_texts
from .spill_files import ROW_KEY, SpillKind, append_rows, spill_path
from .store import Store
from .user_memory import embed_or_none
from .writer import BackgroundWriter, Row

if TYPE_CHECKING:
    from livekit.agents import llm

# A message is remembered to this length: the user's last messages go into every request of
# their later sessions, and a pasted log or file of megabytes would be sent each time (and
# one past ~800 KB of distinct words is beyond what Postgres can index as a tsvector).
MAX_MESSAGE_CHARS = 20_000

_NAMED_MESSAGES = uuid.UUID("5d1e7c2a-8f43-4b7e-9a61-3c0f2b9d4e58")  # namespace of their keys


def named_message_key(tenant: str, user_id: str, room: str, client_id: str) -> str:
    """The `ROW_KEY` of a user's message its client named (`client_id`, unique in the room):
    the same in every session of the room. A worker that died after storing a question leaves
    it to the agent that joins in its place, and the client sends it that one again: stored
    under this key, the copy is not stored a second time (`Store.add_messages` skips a key it
    holds), and the new session can tell it is the question its history ends with."""
    return str(uuid.uuid5(_NAMED_MESSAGES, "\n".join((tenant, user_id, room, client_id))))


def cut(text: str, limit: int, note: str = "") -> str:
    """`text` to its first `limit` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [… {len(text) - limit:,} more characters{note}]"


async def store_messages(
    store: Store, embedder: Embedder | None, session_id: str, tenant: str, rows: Sequence[Row],
) -> None:
    """Embed and insert messages in order (a failed embedding stores the row without one),
    each with its secrets hidden (memory/secret_text.py; on a thread: a pasted page is
    hundreds of lines to scan). Later sessions read these messages into their prompts, so a
    password said or a key read out once is not kept. A session hands its messages on with
    their secrets hidden already (memory/hiding_queue.py); live and spilled messages both
    reach Postgres here, and a spill file written by an earlier release holds them as said."""
    hidden = await asyncio.to_thread(hide_in_texts, [r["content"] for r in rows])
    rows = [{**row, "content": content} for row, content in zip(rows, hidden, strict=True)]
    if embedder is None:
        await store.add_messages(session_id, tenant, rows)
        return
    vectors = await embed_or_none(embedder, [r["content"] for r in rows])
    await store.add_messages(session_id, tenant, rows, embedder.name, vectors)


async def earlier_conversation(store: Store, tenant: str, user_id: str, limit: int,
                               ) -> tuple[llm.ChatContext, int]:
    """The user's last `limit` messages as a chat context, and the id below which recall is to
    look (the first of them, or above every message when there are none)."""
    # imported here: livekit-agents takes ~1.5 s to import, and the commands that only
    # import spilled messages (`sightline memory`, `costs close`) never build a context
    from livekit.agents import llm

    ctx = llm.ChatContext.empty()
    messages = await store.recent_messages(tenant, user_id, limit) if limit else []
    for message in messages:
        ctx.add_message(role="assistant" if message.role == "assistant" else "user",
                        content=message.content, created_at=message.created_at.timestamp(),
                        extra={ROW_KEY: message.row_key} if message.row_key else {})
    return ctx, messages[0].id if messages else await store.next_message_id()


class ConversationLog:
    def __init__(
        self, store: Store | None, session_id: str, tenant: str, spill_dir: Path,
        embedder: Embedder | None = None, room: str = "",
    ) -> None:
        self._store = store
        self._embedder = embedder
        self.session_id = session_id
        self.tenant = tenant
        self.room = room  # the scope of the ids clients give their messages
        self.recall_before = 0  # ids below this are not in the conversation: recall looks there
        self._spill = spill_path(spill_dir, session_id, SpillKind.MESSAGES)
        # without a database (it did not answer when the session opened), every message goes
        # to the spill file as it is said, for the database to import once it is back
        self._writer = BackgroundWriter("messages", self._write, self._spill) \
            if store is not None else None
        self._offline = 0

    async def _write(self, rows: list[Row]) -> None:
        assert self._store is not None
        await store_messages(self._store, self._embedder, self.session_id, self.tenant, rows)

    def named_key(self, user_id: str, client_id: str) -> str:
        """The row key of `user_id`'s message that their client named `client_id`."""
        return named_message_key(self.tenant, user_id, self.room, client_id)

    def add(self, user_id: str, role: str, content: str, client_id: str | None = None) -> None:
        """One message; `client_id`: the id its client gave it (stored once under it)."""
        if not content.strip():
            return
        row = {"tenant": self.tenant, "user_id": user_id, "role": role,
               "content": cut(content, MAX_MESSAGE_CHARS, " not kept")}
        if client_id is not None:
            row[ROW_KEY] = self.named_key(user_id, client_id)
        if self._writer is not None:
            self._writer.put(row)
        elif append_rows(self._spill, [row]) is not None:
            self._offline += 1

    async def history(self, user_id: str, limit: int) -> llm.ChatContext:
        if self._store is None:
            from livekit.agents import llm  # see earlier_conversation

            return llm.ChatContext.empty()
        ctx, self.recall_before = await earlier_conversation(self._store, self.tenant, user_id,
                                                             limit)
        return ctx

    async def close(self) -> int:
        """Flush; returns how many messages had to be spilled to disk."""
        return await self._writer.close() if self._writer is not None else self._offline
