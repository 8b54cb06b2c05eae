"""Tenant isolation, randomized: no knowledge, memory or screen-timeline query for one tenant
(and user) returns another's data.

Tenants and users share vocabulary on purpose (the same words, shuffled), and the same user ids
recur across tenants, so a leak would rank well. Each chunk, message, fact, summary and screen
event carries its owner's marker; every hit of every query must carry the asker's marker,
whichever fusion, ranking, lookup, memory read or screen search ran.
"""

from __future__ import annotations

import random

from memory.conversation import store_messages
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.knowledge import KnowledgeBase
from memory.recall import TurnRecall
from memory.screen_timeline import ScreenTimeline, event_row
from memory.store import Store
from memory.user_memory import UserMemory

WORDS = ("router password reset config deploy token backup invoice printer vpn cluster "
         "database migration firmware license calendar badge laptop monitor keyboard").split()


async def test_no_query_ever_crosses_tenants(db: Database) -> None:
    rng = random.Random(20261121)
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    tenants = [f"tenant-{i}" for i in range(6)]
    for tenant in tenants:
        chunks = [
            (f"{tenant}/{n}", f"{tenant}-marker " + " ".join(rng.choices(WORDS, k=12)))
            for n in range(rng.randint(3, 12))
        ]
        await kb.ingest_chunks(tenant, "random-docs", chunks)
    checked = 0
    for _ in range(120):
        tenant = rng.choice([*tenants, "tenant-without-data"])
        query = " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))
        vector, keyword = await kb.rankings(tenant, query, 50)
        results = [
            *await kb.search(tenant, query, k=50, fusion=rng.choice(("rrf", "weighted"))),
            *await kb.lookup(tenant, query, k=10), *vector, *keyword,
        ]
        for hit in results:
            assert hit.text.startswith(f"{tenant}-marker "), (tenant, query, hit.key)
            assert hit.key.startswith(f"{tenant}/")
        checked += len(results)
    assert checked > 1000, "the queries must actually return data to check"


async def test_no_memory_query_ever_crosses_tenants_or_users(db: Database) -> None:
    rng = random.Random(20261122)
    embedder = WordLlamaEmbedder()
    store, memory, kb = Store(db.pool), UserMemory(db.pool, embedder), KnowledgeBase(
        db.pool, embedder)
    screen = ScreenTimeline(db.pool, embedder)
    owners = [(f"tenant-{t}", f"user-{u}") for t in range(4) for u in range(3)]
    for tenant, user in owners:
        marker = f"{tenant}-{user}-marker"
        session_id = f"s-{tenant}-{user}"
        await store.start_session(session_id, tenant=tenant, user_id=user, room=None,
                                  source="replay", provider="gemini", model="m")
        await store_messages(store, embedder, session_id, tenant, [
            {"user_id": user, "role": rng.choice(("user", "assistant")),
             "content": f"{marker} " + " ".join(rng.choices(WORDS, k=10))}
            for _ in range(rng.randint(2, 10))])
        await memory.apply([
            *({"op": "fact", "tenant": tenant, "user_id": user, "key": f"k{n}",
               "text": f"{marker} " + " ".join(rng.choices(WORDS, k=6))}
              for n in range(rng.randint(1, 5))),
            {"op": "summary", "tenant": tenant, "user_id": user,
             "text": f"{marker} " + " ".join(rng.choices(WORDS, k=8))},
        ])
        await screen.write([
            event_row(session_id=session_id, tenant=tenant, user_id=user, t=float(n),
                      wall_time=1.7e9 + n, content_type="code", reason="local_change",
                      region=(0, 0, 100, 20), is_error=rng.random() < 0.3,
                      lines=[f"{marker} " + " ".join(rng.choices(WORDS, k=7)),
                             " ".join(rng.choices(WORDS, k=5)) + " error"])
            for n in range(rng.randint(2, 8))])
    newest = await store.next_message_id()
    checked = 0
    for _ in range(120):
        tenant, user = rng.choice([*owners, ("tenant-0", "user-without-data"),
                                   ("tenant-without-data", "user-0")])
        marker = f"{tenant}-{user}-marker "
        question = " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))
        vector = await embedder.embed_query(question)
        got = await memory.recall(tenant, user, question, vector, before_id=newest,
                                  facts=50, turns=50)
        recalled = await TurnRecall(kb, memory, tenant=tenant, user_id=user,
                                    before_id=newest, screen=screen)(question)
        searched = await screen.search(tenant, question, user_id=user, k=50)
        tenant_wide = await screen.search(tenant, question, k=50)
        texts = [
            *(f.text for f in got.facts), *(h.text for h in got.turns),
            *([got.summary] if got.summary else []),
            *(f.text for f in recalled.memory.facts), *(h.text for h in recalled.memory.turns),
            *(f.text for f in await memory.facts(tenant, user)),
            *(m.content for m in await store.recent_messages(tenant, user, 50)),
            *(e.text for e in recalled.screen), *(e.text for e in searched),
            *(e.text for e in await screen.recall(tenant, user, question + " error", vector)),
        ]
        for event in tenant_wide:  # a tenant-wide search may show any user of that tenant only
            assert event.text.startswith(f"{tenant}-user-"), (tenant, question, event.text)
        summary = await memory.summary(tenant, user)
        texts += [summary] if summary else []
        for text in texts:
            assert text.startswith(marker), (tenant, user, question, text)
        checked += len(texts)
    assert checked > 1000, "the queries must actually return data to check"
