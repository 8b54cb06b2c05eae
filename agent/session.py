"""One Sightline session, the same for a live room and a replayed fixture.

`SessionRuntime` owns what a session is made of — the screen watcher, the model as a LiveKit LLM,
the agent, the cost ledger and the conversation log — and closes them in order. Live and replay
differ only in where frames and turns come from and in the provider's endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice import ConversationItemAddedEvent

from memory.conversation import ConversationLog
from memory.db import Database
from memory.embeddings import Embedder, make_embedder
from memory.keeper import MemoryKeeper
from memory.knowledge import KnowledgeBase
from memory.recall import TurnRecall
from memory.rerank import Reranker, make_reranker
from memory.spill_recovery import RecoveryReport, recover_spills
from memory.store import Store
from memory.user_memory import UserMemory
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
    keeper: MemoryKeeper | None = None
    spill_recovery: asyncio.Task[RecoveryReport] | None = None
    reranker: Reranker | None = None
    _asked: str = ""  # the user's latest message, until the answer to it arrives

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
        embedder = make_embedder(settings) if db is not None else None
        conversation = ConversationLog(store, session_id, tenant, settings.costs_dir, embedder)
        history = await conversation.history(user_id, settings.history_messages)
        providers = [make_provider(settings, tier) for tier in tiers]
        recall, keeper, recovery, reranker = None, None, None, None
        if db is not None and store is not None and embedder is not None:
            memory = UserMemory(db.pool, embedder)
            recovery = asyncio.create_task(
                recover_spills(settings.costs_dir, store, memory, embedder), name="spill-recovery")
            reranker = make_reranker(settings, record=ledger.model_call)
            recall = TurnRecall(KnowledgeBase(db.pool, embedder, reranker), memory,
                                tenant=tenant, user_id=user_id,
                                before_id=conversation.recall_before)
            if settings.memory_updates:
                keeper = MemoryKeeper(
                    memory=memory, provider=providers[0], tier=tiers[0], ledger=ledger,
                    tenant=tenant, user_id=user_id, session_id=session_id,
                    spill_dir=settings.costs_dir, timeout_s=settings.model_timeout_s,
                    facts=await memory.facts(tenant, user_id),
                    summary=await memory.summary(tenant, user_id),
                )
        turn_context = TurnContext(screen, recall)
        screen_tools = ScreenHistoryTools(screen, turn_context.show_earlier)
        agent = SightlineAgent(turn_context, history, screen_tools.tools())
        model = CascadeLLM(tiers, providers, ledger, settings.turn_deadline_s,
                           ImageEncoder(settings.image_detail))
        log.info("session %s started (tenant=%s user=%s, %d earlier messages in the "
                 "conversation)", session_id, tenant, user_id, len(history.items))
        return cls(session_id, tenant, user_id, settings, ledger, screen, model, agent,
                   conversation, store, turn_context, embedder, keeper, recovery, reranker)

    async def _finish_recovery(self) -> None:
        """Earlier sessions' spill files: give the import a moment, then leave the rest to the
        next session."""
        if self.spill_recovery is None:
            return
        try:
            report = await asyncio.wait_for(self.spill_recovery, timeout=5.0)
        except TimeoutError:
            log.warning("importing earlier sessions' spill files goes on in the next session")
        except Exception as exc:
            log.error("importing earlier sessions' spill files failed: %r", exc)
        else:
            if report.files:
                log.info("imported %d rows from %d spill files of earlier sessions",
                         report.rows, report.files)

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
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        self.conversation.add(self.user_id, item.role, text)
        if item.role == "user":
            self._asked = text
        elif self.keeper is not None and self.model.last_turn_answered:
            self.keeper.exchange(self._asked, text)

    async def memory_settled(self) -> None:
        """The memory updates of every exchange so far are done (replay waits here)."""
        if self.keeper is not None:
            await self.keeper.settled()

    async def close(self) -> dict[str, Any]:
        """Flush the conversation, memory and the ledger; the summary is the last thing
        written (memory updates are model calls: they are in it)."""
        spilled = await self.conversation.close()
        memory_spilled = await self.keeper.close() if self.keeper is not None else 0
        await self.model.aclose()
        await self._finish_recovery()
        if self.embedder is not None:
            await self.embedder.aclose()
        if self.reranker is not None:
            await self.reranker.aclose()
        summary = await self.ledger.close(frames_received=self.screen.frames_received,
                                          knowledge_hits=self.turn_context.knowledge_hits,
                                          memory_recalled=self.turn_context.memory_recalled)
        if spilled:
            summary["db_spilled_messages"] = spilled
        if memory_spilled:
            summary["db_spilled_memory"] = memory_spilled
        log.info("session %s ended: $%.6f", self.session_id, summary["total_cost_usd"])
        return summary
