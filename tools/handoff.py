"""`handoff_to_human`: the model hands the conversation to a person.

When the user asks for a person, or the model cannot help (an account change it may not make, a
problem the knowledge base does not cover), it calls this tool. The handoff is recorded as data
where each reader looks for it: the session's event log (`handoff` event, through `record`), the
session's row in Postgres (`escalated_at`, `escalation_reason`: the knowledge-gap report counts
escalated sessions), and a message to the room for the app (`sightline.handoff`, published by the
worker, which subscribes through `listeners`). The tool's result tells the model what to tell the
user. A session is handed off once; asking again says it is already under way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from livekit.agents import llm

from memory.store import Store

log = logging.getLogger("sightline.tools")

HANDOFF_TOPIC = "sightline.handoff"
HANDOFF_MESSAGE_VERSION = 1
REASON_CHARS = 300

Handoff = dict[str, Any]


class HandoffTool:
    """The handoff tool of one session."""

    def __init__(self, store: Store | None, record: Callable[[Handoff], None], *,
                 session_id: str, user_id: str) -> None:
        self._store = store
        self._record = record
        self._session_id = session_id
        self._user_id = user_id
        self.listeners: list[Callable[[Handoff], None]] = []  # e.g. the room's publisher
        self.handed_off: Handoff | None = None

    def tools(self) -> list[llm.Tool]:
        return [self.handoff_to_human]

    @llm.function_tool
    async def handoff_to_human(self, reason: str) -> str:
        """Hand the conversation over to a human support agent. Use it when the user asks for
        a person, or when you cannot help and a person could.

        Args:
            reason: why, in one sentence, for the person who takes over.
        """
        if self.handed_off is not None:
            return ("A person was already asked to take over in this session; tell the user "
                    "they are on their way.")
        reason = " ".join(reason.split())[:REASON_CHARS] or "not given"
        message: Handoff = {
            "type": "handoff", "version": HANDOFF_MESSAGE_VERSION,
            "session_id": self._session_id, "user": self._user_id, "reason": reason,
            "at": datetime.now(UTC).isoformat(),
        }
        stored = False
        if self._store is not None:
            try:
                await self._store.mark_escalated(self._session_id, reason)
                stored = True
            except Exception as exc:  # the app still hears of it; the ledger has it
                log.error("could not mark session %s escalated in the database: %r",
                          self._session_id, exc)
        self.handed_off = {**message, "stored": stored}
        self._record(self.handed_off)
        for listener in self.listeners:
            listener(message)
        return ("A human support agent has been asked to take over this conversation "
                f"(reason given: {reason}). Tell the user, in one or two sentences, that a "
                "person will join shortly, and that you can keep helping until then.")
