"""Tenant isolation, randomized: no knowledge query for one tenant returns another's data.

Tenants share vocabulary on purpose (the same words, shuffled), so a leak would rank well.
Each chunk carries its tenant's marker; every hit of every query must carry the asking
tenant's marker, whichever fusion, ranking or lookup ran. (Memory queries join this test when
memory lands.)
"""

from __future__ import annotations

import random

from memory.db import Database
from memory.embeddings import OfflineEmbedder
from memory.knowledge import KnowledgeBase

WORDS = ("router password reset config deploy token backup invoice printer vpn cluster "
         "database migration firmware license calendar badge laptop monitor keyboard").split()


async def test_no_query_ever_crosses_tenants(db: Database) -> None:
    rng = random.Random(20261121)
    kb = KnowledgeBase(db.pool, OfflineEmbedder())
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
