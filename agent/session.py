"""One Sightline session, the same for a live room and a replayed fixture.

`SessionRuntime` owns what a session is made of — the screen watcher, the model as a LiveKit LLM,
the agent, the cost ledger and the conversation log — and closes them in order. Live and replay
differ only in where frames and turns come from and in the provider's endpoint.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice import ConversationItemAddedEvent

from memory.conversation import ConversationLog
from memory.db import Database
from memory.embeddings import Embedder, make_embedder
from memory.knowledge import KnowledgeBase
from memory.store import Store
from tools.screen_history import ScreenHistoryTools
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher

from .budget import BudgetGuard
from .cascade import CascadeLLM
from .config import Settings
from .images import ImageEncoder
from .ledger import CostLedger
from .pricing import PriceTable
from .providers import make_provider
from .sightline_agent import SightlineAgent
from .turn_context import TurnContext

log = logging.getLogger("sightline.session")


def new_session_id(source: str) -> str:
    return f"{source}_{uuid.uuid4().hex[:16]}"


async def _budget(settings: Settings, store: Store | None, tenant: str) -> BudgetGuard | None:
    if not settings.session_budget_usd and not settings.tenant_budget_usd:
        return None
    spent = 0.0
    if settings.tenant_budget_usd and store is not None:
        try:
            spent = await store.tenant_spent_today(tenant)
        except Exception as exc:  # the session goes on; the tenant budget counts from zero
            log.error("could not read tenant %s's spend today, counting from $0: %r",
                      tenant, exc)
    return BudgetGuard(settings.session_budget_usd, settings.tenant_budget_usd,
                       settings.budget_max_tier, tenant_spent_before_usd=spent)


@dataclass
class SessionRuntime:
    session_id: str
    tenant: str
    user_id: str
    settings: Settings
    ledger: CostLedger
    screen: ScreenWatcher
    model: CascadeLLM
    agent: SightlineAgent
    conversation: ConversationLog
    store: Store | None
    turn_context: TurnContext
    embedder: Embedder | None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        db: Database | None,
        *,
        tenant: str,
        user_id: str,
        source: str,
        room: str | None = None,
        session_id: str | None = None,
    ) -> SessionRuntime:
        session_id = session_id or new_session_id(source)
        tiers = list(settings.cascade_tiers())
        store = Store(db.pool) if db is not None else None
        if store is not None:
            await store.start_session(
                session_id, tenant=tenant, user_id=user_id, room=room, source=source,
                provider=tiers[0].provider, model=",".join(t.model for t in tiers),
            )
        ledger = CostLedger(
            session_id=session_id, tenant=tenant, source=source, costs_dir=settings.costs_dir,
            prices=PriceTable.load(settings.prices_file), store=store,
            budget=await _budget(settings, store, tenant),
        )
        screen = ScreenWatcher(FrameSampler(settings.sample_fps), ledger.frame)
        conversation = ConversationLog(store, session_id, tenant, settings.costs_dir)
        history = await conversation.history(user_id, settings.history_messages)
        knowledge = None
        embedder = None
        if db is not None:
            embedder = make_embedder(settings)
            kb = KnowledgeBase(db.pool, embedder)
            knowledge = functools.partial(kb.lookup, tenant)
        turn_context = TurnContext(screen, knowledge)
        screen_tools = ScreenHistoryTools(screen, turn_context.show_earlier)
        agent = SightlineAgent(turn_context, history, screen_tools.tools())
        providers = [make_provider(settings, tier) for tier in tiers]
        model = CascadeLLM(tiers, providers, ledger, settings.turn_deadline_s,
                           ImageEncoder(settings.image_detail))
        log.info("session %s started (tenant=%s user=%s, %d earlier messages recalled)",
                 session_id, tenant, user_id, len(history.items))
        return cls(session_id, tenant, user_id, settings, ledger, screen, model, agent,
                   conversation, store, turn_context, embedder)

    def agent_session(self) -> AgentSession:
        """An AgentSession on our LLM; speech in and out only when STT / TTS are configured."""
        session: AgentSession = AgentSession(
            llm=self.model,
            **({"stt": self.settings.stt} if self.settings.stt else {}),
            **({"tts": self.settings.tts} if self.settings.tts else {}),
        )
        session.on("conversation_item_added", self._on_item_added)
        return session

    def _on_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            self.conversation.add(self.user_id, item.role, item.text_content or "")

    async def close(self) -> dict[str, Any]:
        """Flush the conversation and the ledger; the summary is the last thing written."""
        spilled = await self.conversation.close()
        await self.model.aclose()
        if self.embedder is not None:
            await self.embedder.aclose()
        summary = await self.ledger.close(frames_received=self.screen.frames_received,
                                          knowledge_hits=self.turn_context.knowledge_hits)
        if spilled:
            summary["db_spilled_messages"] = spilled
        log.info("session %s ended: $%.6f", self.session_id, summary["total_cost_usd"])
        return summary
