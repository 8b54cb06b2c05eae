"""The conversation log: every user and assistant turn, per tenant and user, across sessions.

Writes go through a `BackgroundWriter` so storing a turn never delays a reply. `history()` gives
the user's last N messages as a LiveKit chat context, so a returning user is remembered.
"""

from __future__ import annotations

from pathlib import Path

from livekit.agents import llm

from .store import Store
from .writer import BackgroundWriter, Row


class ConversationLog:
    def __init__(self, store: Store | None, session_id: str, tenant: str, spill_dir: Path) -> None:
        self._store = store
        self.session_id = session_id
        self.tenant = tenant
        self._writer = (
            BackgroundWriter(
                "messages", self._write, spill_dir / f"{session_id}.messages-spill.jsonl"
            )
            if store is not None
            else None
        )

    async def _write(self, rows: list[Row]) -> None:
        assert self._store is not None
        await self._store.add_messages(self.session_id, self.tenant, rows)

    def add(self, user_id: str, role: str, content: str) -> None:
        if self._writer is not None and content.strip():
            self._writer.put({"user_id": user_id, "role": role, "content": content})

    async def history(self, user_id: str, limit: int) -> llm.ChatContext:
        ctx = llm.ChatContext.empty()
        if self._store is None or limit == 0:
            return ctx
        for message in await self._store.recent_messages(self.tenant, user_id, limit):
            ctx.add_message(
                role="assistant" if message.role == "assistant" else "user",
                content=message.content,
                created_at=message.created_at.timestamp(),
            )
        return ctx

    async def close(self) -> int:
        """Flush; returns how many messages had to be spilled to disk."""
        return await self._writer.close() if self._writer is not None else 0
