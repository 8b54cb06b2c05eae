"""One user in two sessions at once (two devices, or a session that rejoined while the old one
was still closing): each session's memory keeper writes the user's facts and summary, and
neither loses what the other learned.

Protects: each keeper analyses an exchange against its view of the user's memory, which the
other session may have changed meanwhile. The merge rule:

- a fact the keeper stores under a key that another session has written since its view (or a
  change of a fact another session has changed since) is kept beside it under a new key, never
  over it; a forget removes a fact only as the keeper saw it; a fact the user already has, under
  any key, is not stored again;
- a summary folded from a view another session has written since keeps that session's part
  beside it (one line each); a keeper whose own writes are all in reads the user's memory again
  before its next exchange, so its next fold is shown every part and replaces them all;
- rows a session kept on disk while its database was away are merged the same way when they
  are imported, however often (no model is asked then): a keeper's row is applied once, by
  the key it was made with, even when the session's later rows have moved on from it;
- the user keeps at most `MAX_FACTS` facts however many sessions add to a full memory at once;
- a keeper whose last row the database refused still reads the user's memory again;
- a privacy request's deletion waits for a write of the user's memory under way;
- a keeper reads the user's memory again only when something other than its own rows changed
  it since it last read or wrote it (another session, the user's own `remember`, a privacy
  request's deletion): an exchange with nothing new asks the memory's version alone.

Real Postgres; the real google-genai client against a scripted server whose summary is a fold:
the summary it was shown, then what the exchange was about.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from livekit.agents import llm

from agent.config import Settings, Tier
from agent.pricing import PriceTable
from agent.providers import make_provider
from agent.session_record import SessionRecord
from agent.tier_call import MeteredTierCall
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory import user_memory
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.keeper import MemoryKeeper, MemoryModel, ReadReply
from memory.screen_timeline import ScreenTimeline
from memory.spill_files import ROW_KEY
from memory.spill_recovery import SpillTargets, recover_spills
from memory.store import Store
from memory.user_memory import (
    MAX_FACTS,
    SUMMARY_PARTS,
    MemoryView,
    UserMemory,
    Versions,
    lock_memory,
)
from tools.memory_tools import MemoryTools

LITE = Tier("gemini", "gemini-2.5-flash-lite", 0.7, 512)
EARLIER = "Asked how to set up a VPN."
VPN = ("vpn", "The user connects through WireGuard.")
# what the user says in each session, the fact the model takes from it and what it adds to the
# summary
LEARNED = {
    "My laptop runs Ubuntu 24.04. How do I install Docker?":
        (("os", "The user's laptop runs Ubuntu 24.04."), "Installed Docker on Ubuntu."),
    "My desktop runs Fedora 40. Why is dnf so slow?":
        (("os", "The user's desktop runs Fedora 40."), "Sped up dnf on Fedora."),
    "I edit my code in vim.": (("editor", "The user edits code in vim."), "Set up vim."),
    "I keep tmux open in my terminal.":
        (("terminal", "The user keeps tmux open in the terminal."), "Configured tmux."),
}
PHONE, DESK = list(LEARNED)[0::2], list(LEARNED)[1::2]  # each session's two questions
# what one session learns over two exchanges, the second changing the first's fact
UPGRADE = {
    "My laptop runs Ubuntu 24.04.":
        (("laptop", "The user's laptop runs Ubuntu 24.04."), "Asked about Ubuntu."),
    "I upgraded my laptop to Ubuntu 25.04.":
        (("laptop", "The user's laptop runs Ubuntu 25.04."), "Upgraded it."),
}
# what each of two sessions adds to a memory already full
GADGETS = {
    "I also have a Pixel phone.": (("phone", "The user has a Pixel phone."), "Has a phone."),
    "I also have an iPad tablet.": (("tablet", "The user has an iPad tablet."), "Has a tablet."),
}
# an answer whose summary the database refuses (`_refusing_summaries`)
REFUSED = "Tell me about NUL bytes."
REFUSED_SUMMARY = "Asked about refused bytes."
ANSWERS = {**LEARNED, **UPGRADE, **GADGETS,
           REFUSED: (("nul", "The user asked about NUL bytes."), REFUSED_SUMMARY)}


def fold(request: CapturedRequest) -> ScriptedReply:
    """The memory model: the exchange's fact, and the summary it was shown (its lines as one)
    followed by what the exchange was about."""
    [user] = re.findall(r"<user_message>\nUser: (.*?)\n</user_message>", request.text, re.S)
    shown = re.search(r"Summary so far: (?:<memory>(.*?)</memory>|\(none\))", request.text, re.S)
    assert shown is not None
    (key, text), about = ANSWERS[user]
    summary = " ".join([*(shown.group(1) or "").split(), about])
    return ScriptedReply(text=json.dumps(
        {"facts": [{"key": key, "text": text}], "forget": [], "summary": summary}))


class _Held:
    """A session's memory model whose calls wait, their requests made, until the test lets
    each through (`calls` hands the test one gate per call): two sessions' calls in flight at
    once, answered in the order the test chooses."""

    def __init__(self, model: MemoryModel) -> None:
        self._model = model
        self.calls: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def ask(self, prompt: llm.ChatContext, *, max_output_tokens: int,
                  read: ReadReply) -> None:
        gate = asyncio.Event()
        self.calls.put_nowait(gate)
        await gate.wait()
        await self._model.ask(prompt, max_output_tokens=max_output_tokens, read=read)


class _Watched(UserMemory):
    """The user's memory in Postgres, saying whose summary each write it made carried, and
    counting the times a keeper read it whole (`view`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.summaries: asyncio.Queue[str] = asyncio.Queue()
        self.views = 0

    async def view(self, tenant: str, user_id: str) -> MemoryView:
        self.views += 1
        return await super().view(tenant, user_id)

    async def apply(self, rows: Sequence[dict[str, Any]]) -> Versions:
        versions = await super().apply(rows)
        for row in rows:
            if row["op"] == "summary":
                self.summaries.put_nowait(row["session_id"])
        return versions


async def _earlier_memory(db: Database) -> None:
    """What an earlier session left: a fact and a summary; and the two sessions' rows."""
    who = {"tenant": "acme", "user_id": "u-1", "session_id": "s-earlier"}
    await UserMemory(db.pool, WordLlamaEmbedder()).apply([
        {"op": "fact", "key": VPN[0], "text": VPN[1], **who},
        {"op": "summary", "text": EARLIER, **who}])
    for session_id in ("s-phone", "s-desk"):
        await Store(db.pool).start_session(session_id, tenant="acme", user_id="u-1", room=None,
                                           source="replay", provider="gemini", model="m")


def _record(tmp_path: Path, session_id: str) -> SessionRecord:
    return SessionRecord.open(session_id=session_id, tenant="acme", source="replay",
                              costs_dir=tmp_path, prices=PriceTable.load(None), store=None)


async def _keeper(memory: UserMemory, model: MemoryModel, session_id: str, spill_dir: Path,
                  *, later: UserMemory | None = None) -> MemoryKeeper:
    """A session's keeper as a session builds it: its view is what `memory` holds when it
    opens; it works on `later` when given (the database gone since)."""
    return MemoryKeeper(
        memory=later or memory, model=model, tenant="acme", user_id="u-1",
        session_id=session_id, spill_dir=spill_dir, timeout_s=10,
        facts=await memory.facts("acme", "u-1"), summary=await memory.summary("acme", "u-1"))


async def _stored(memory: UserMemory) -> tuple[dict[str, str], list[str]]:
    """The user's facts by key, and their summary's lines."""
    summary = await memory.summary("acme", "u-1")
    return ({f.key: f.text for f in await memory.facts("acme", "u-1")},
            summary.split(SUMMARY_PARTS) if summary else [])


async def test_two_sessions_at_once_keep_both_sessions_facts_and_summaries(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The reviewer's case, both sessions' memory calls in flight at once each time: the phone's
    answer is written first, then the desk's, twice. Before, the summary was the desk's alone
    (whose fold never saw the phone's Docker or vim) and the desk's `os` fact replaced the
    phone's, which the desk never saw."""
    memory = _Watched(db.pool, WordLlamaEmbedder())
    await _earlier_memory(db)
    async with ScriptedModelServer(fold) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        phone_model, desk_model = (
            _Held(MeteredTierCall(provider, LITE, _record(tmp_path, sid).meter, timeout_s=10))
            for sid in ("s-phone", "s-desk"))
        phone = await _keeper(memory, phone_model, "s-phone", tmp_path)
        desk = await _keeper(memory, desk_model, "s-desk", tmp_path)
        for turn in range(2):
            phone.exchange(PHONE[turn], "(answered)")
            desk.exchange(DESK[turn], "(answered)")
            # both requests are made before either answer is written
            phone_call, desk_call = await phone_model.calls.get(), await desk_model.calls.get()
            phone_call.set()
            assert await asyncio.wait_for(memory.summaries.get(), 10) == "s-phone"
            desk_call.set()
            assert await asyncio.wait_for(memory.summaries.get(), 10) == "s-desk"
        assert await phone.close() == 0 and await desk.close() == 0
        await provider.aclose()

    facts, summary = await _stored(memory)
    # the desk's `os` fact went in after the phone's, from a view without it: beside it
    assert facts == {"vpn": VPN[1], "os": LEARNED[PHONE[0]][0][1],
                     "os_2": LEARNED[DESK[0]][0][1], "editor": LEARNED[PHONE[1]][0][1],
                     "terminal": LEARNED[DESK[1]][0][1]}
    # the second round's folds were shown both sessions' first summaries, the phone's first
    # (the phone's second fold replaced them; the desk's, written after it, stands beside it)
    second = [r.text for r in server.requests[2:]]
    assert all("Installed Docker on Ubuntu." in text and "Sped up dnf on Fedora." in text
               for text in second)
    assert summary == [f"{EARLIER} Installed Docker on Ubuntu. {EARLIER} Sped up dnf on Fedora."
                       f" {about}" for about in ("Set up vim.", "Configured tmux.")]


async def test_what_a_session_kept_on_disk_meanwhile_is_merged_when_imported(
    settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The desk lost its database (its pool reaches nothing) while the phone wrote: its keeper
    says so in one line, analyses against its own view and keeps its rows on disk. Imported
    once its session has closed, they are merged with the phone's as if written then; the file
    imported again (a crash before it was deleted) changes nothing. Before, the import wrote the
    desk's summary and `os` fact over the phone's."""
    await _earlier_memory(db)
    embedder = WordLlamaEmbedder()
    memory = UserMemory(db.pool, embedder)
    away = await asyncpg.create_pool("postgresql://sightline@127.0.0.1:1/gone", min_size=0)
    try:
        async with ScriptedModelServer(fold) as server:
            provider = make_provider(settings.with_overrides(
                gemini_api_key="k", gemini_base_url=server.base_url), LITE)
            desk_record = _record(tmp_path, "s-desk")
            desk = await _keeper(
                memory, MeteredTierCall(provider, LITE, desk_record.meter, timeout_s=10),
                "s-desk", tmp_path, later=UserMemory(away, embedder))
            phone = await _keeper(
                memory, MeteredTierCall(provider, LITE, _record(tmp_path, "s-phone").meter,
                                        timeout_s=10), "s-phone", tmp_path)
            desk.exchange(DESK[0], "(answered)")
            phone.exchange(PHONE[0], "(answered)")
            assert await phone.close() == 0 and await desk.close() > 0
            await provider.aclose()
    finally:
        await away.close()
    await desk_record.close()
    spill = tmp_path / "s-desk.memory-spill.jsonl"
    kept = await asyncio.to_thread(spill.read_bytes)

    both = ({"vpn": VPN[1], "os": LEARNED[PHONE[0]][0][1], "os_2": LEARNED[DESK[0]][0][1]},
            [f"{EARLIER} Installed Docker on Ubuntu.", f"{EARLIER} Sped up dnf on Fedora."])
    targets = SpillTargets(Store(db.pool), memory, ScreenTimeline(db.pool, embedder), embedder)
    assert (await recover_spills(tmp_path, targets)).rows > 0
    assert await _stored(memory) == both
    await asyncio.to_thread(spill.write_bytes, kept)
    assert (await recover_spills(tmp_path, targets)).rows > 0
    assert await _stored(memory) == both
    warned = [m for m in caplog.messages if "could not read the user's memory again" in m]
    assert len(warned) == 1 and "\n" not in warned[0]


async def _spilled_rows(settings: Settings, db: Database, tmp_path: Path,
                        questions: Sequence[str]) -> Path:
    """The desk's keeper, its database gone, analyses `questions` one after the other and keeps
    its rows on disk; its session closes. The spill file's path."""
    await _earlier_memory(db)
    embedder = WordLlamaEmbedder()
    away = await asyncpg.create_pool("postgresql://sightline@127.0.0.1:1/gone", min_size=0)
    try:
        async with ScriptedModelServer(fold) as server:
            provider = make_provider(settings.with_overrides(
                gemini_api_key="k", gemini_base_url=server.base_url), LITE)
            record = _record(tmp_path, "s-desk")
            desk = await _keeper(
                UserMemory(db.pool, embedder),
                MeteredTierCall(provider, LITE, record.meter, timeout_s=10), "s-desk",
                tmp_path, later=UserMemory(away, embedder))
            for question in questions:
                desk.exchange(question, "(answered)")
            assert await desk.close() > 0
            await provider.aclose()
    finally:
        await away.close()
    await record.close()
    return tmp_path / "s-desk.memory-spill.jsonl"


async def test_a_sessions_rows_imported_again_change_nothing_though_later_ones_moved_on(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The reviewer's case: one session's two exchanges, the second changing the first's fact
    and folding its summary, kept on disk, imported, then imported again (a crash before the
    file was deleted). Before, the second import found the first exchange's fact and summary
    line gone (the second's had replaced them) and put them back: `laptop_2` beside the
    upgrade, the old line beside the new summary."""
    spill = await _spilled_rows(settings, db, tmp_path, list(UPGRADE))
    kept = await asyncio.to_thread(spill.read_bytes)
    embedder = WordLlamaEmbedder()
    memory = UserMemory(db.pool, embedder)
    targets = SpillTargets(Store(db.pool), memory, ScreenTimeline(db.pool, embedder), embedder)
    upgraded = ({"vpn": VPN[1], "laptop": UPGRADE["I upgraded my laptop to Ubuntu 25.04."][0][1]},
                [f"{EARLIER} Asked about Ubuntu. Upgraded it."])
    for _ in range(2):
        await asyncio.to_thread(spill.write_bytes, kept)
        assert (await recover_spills(tmp_path, targets)).rows > 0
        assert await _stored(memory) == upgraded
    assert await db.pool.fetchval("SELECT count(*) FROM memory_rows_applied") == 4
    await Store(db.pool).forget_user("acme", "u-1")  # the keys name the user: they go too
    assert await db.pool.fetchval("SELECT count(*) FROM memory_rows_applied") == 0
    assert await db.pool.fetchval("SELECT count(*) FROM memory_versions") == 0  # and its version


async def test_two_sessions_adding_to_a_full_memory_keep_it_to_its_limit(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The user has `MAX_FACTS` facts; each session, its memory call in flight while the
    other's is, adds one and forgets its view's least recently updated fact, the same one.
    Before, the user kept `MAX_FACTS` + 1 facts for good: each keeper trims only its view. Now
    the write leaves the newest `MAX_FACTS`, the next least recently updated going too."""
    memory = _Watched(db.pool, WordLlamaEmbedder())
    await _earlier_memory(db)
    await memory.apply([{"op": "fact", "key": f"gadget_{n}", "text": f"The user owns gadget {n}.",
                         "tenant": "acme", "user_id": "u-1", "session_id": "s-earlier"}
                        for n in range(MAX_FACTS - 1)])  # with the VPN, the limit
    async with ScriptedModelServer(fold) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        phone_model, desk_model = (
            _Held(MeteredTierCall(provider, LITE, _record(tmp_path, sid).meter, timeout_s=10))
            for sid in ("s-phone", "s-desk"))
        phone = await _keeper(memory, phone_model, "s-phone", tmp_path)
        desk = await _keeper(memory, desk_model, "s-desk", tmp_path)
        for keeper, question in zip((phone, desk), GADGETS, strict=True):
            keeper.exchange(question, "(answered)")
        phone_call, desk_call = await phone_model.calls.get(), await desk_model.calls.get()
        for call, session_id in ((phone_call, "s-phone"), (desk_call, "s-desk")):
            call.set()
            assert await asyncio.wait_for(memory.summaries.get(), 10) == session_id
        assert await phone.close() == 0 and await desk.close() == 0
        await provider.aclose()

    facts = (await _stored(memory))[0]
    assert len(facts) == MAX_FACTS
    assert {"vpn", "gadget_0"}.isdisjoint(facts)  # the VPN was stored before the gadgets
    assert {"phone", "tablet", "gadget_1", f"gadget_{MAX_FACTS - 2}"} <= set(facts)


async def test_a_keeper_whose_last_row_was_refused_reads_the_users_memory_again(
    settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The phone's first answer holds a summary the database refuses: it is set aside,
    said in one line. The desk then has a fact remembered; the phone's next request shows it.
    Before, the refused row stayed the phone's last unwritten one, and the phone analysed
    against its own view for the rest of its session, without a word."""
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    await _earlier_memory(db)
    # what the database refuses for what it holds (the keeper's text can no longer hold a NUL,
    # which it refused before): a check of the database's own, integrity class 23
    await db.pool.execute("ALTER TABLE memory_summaries ADD CONSTRAINT refusing"
                          f" CHECK (position('{REFUSED_SUMMARY}' in text) = 0)")
    async with ScriptedModelServer(fold) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        phone = await _keeper(
            memory, MeteredTierCall(provider, LITE, _record(tmp_path, "s-phone").meter,
                                    timeout_s=10), "s-phone", tmp_path)
        phone.exchange(REFUSED, "(answered)")
        await phone.settled()
        refused = tmp_path / "s-phone.memory-refused.jsonl"
        for _ in range(500):  # until the writer has set the row aside
            if await asyncio.to_thread(refused.exists):
                break
            await asyncio.sleep(0.01)
        await memory.apply([{"op": "fact", "key": VPN[0], "text": "The user uses Tailscale.",
                             "tenant": "acme", "user_id": "u-1", "session_id": "s-desk"}])
        phone.exchange(PHONE[1], "(answered)")
        assert await phone.close() == 0
        await provider.aclose()

    assert "- vpn: The user uses Tailscale." in server.requests[1].text
    assert "- nul: The user asked about NUL bytes." in server.requests[1].text
    lines = (await asyncio.to_thread(refused.read_text)).splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["summary"]  # the next one is stored
    said = [m for m in caplog.messages if "refused" in m]
    assert len(said) == 1 and "\n" not in said[0]


async def test_a_change_from_an_older_view_leaves_what_another_session_wrote(
    db: Database,
) -> None:
    """Rows as a keeper writes them (`seen`: what its view held), another session having
    written since: a replacement vouched for against the old text, or a forget of it, leaves
    the other session's text (the user's words were never checked against it), the new fact
    going beside it; a fact the user has under another key is not stored again; the user's own
    `remember` (no `seen`) replaces as before; and each row written twice changes nothing."""
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    who = {"tenant": "acme", "user_id": "u-1", "session_id": "s-phone"}
    await memory.apply([  # the other session's, over what the phone's view holds
        {"op": "fact", "key": "laptop", "text": "The user's laptop runs Ubuntu 25.04.", **who},
        {"op": "fact", "key": "code_editor", "text": "The user edits code in vim.", **who},
        {"op": "summary", "text": "Upgraded Ubuntu.", **who}])
    stale = [
        {"op": "forget", "key": "laptop", "seen": "The user's laptop runs Ubuntu 24.04."},
        {"op": "fact", "key": "laptop", "text": "The user's laptop is a ThinkPad.",
         "seen": "The user's laptop runs Ubuntu 24.04."},
        {"op": "fact", "key": "editor", "text": "The user edits code in Vim", "seen": None},
        {"op": "summary", "text": "Asked about the ThinkPad.", "seen": "Asked about Ubuntu."}]
    for _ in range(2):
        await memory.apply([{**row, **who} for row in stale])
        assert await _stored(memory) == (
            {"laptop": "The user's laptop runs Ubuntu 25.04.",
             "laptop_2": "The user's laptop is a ThinkPad.",
             "code_editor": "The user edits code in vim."},
            ["Upgraded Ubuntu.", "Asked about the ThinkPad."])
    await memory.apply([{"op": "fact", "key": "laptop", "text": "The user's laptop is a Mac.",
                         **who}, {"op": "forget", "key": "laptop_2", **who}])
    assert (await _stored(memory))[0] == {"laptop": "The user's laptop is a Mac.",
                                          "code_editor": "The user edits code in vim."}


async def test_forgetting_a_user_waits_for_a_write_of_their_memory_under_way(
    db: Database,
) -> None:
    """A privacy request (`forget_user`) comes wholly after a memory write that has read the
    summary it merges with: deleting between the read and the write would let the write put
    back what it read."""
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    who = {"tenant": "acme", "user_id": "u-1", "session_id": "s-phone"}
    await memory.apply([{"op": "summary", "text": "Upgraded Ubuntu.", **who}])
    async with db.pool.acquire() as conn, conn.transaction():
        await lock_memory(conn, "acme", "u-1")  # as `apply` does, before it reads
        read = await conn.fetchval("SELECT text FROM memory_summaries")
        forgetting = asyncio.create_task(Store(db.pool).forget_user("acme", "u-1"))
        for _ in range(500):  # until it waits for a lock (or has run, as it did before)
            if forgetting.done() or await db.pool.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted)"):
                break
            await asyncio.sleep(0.01)
        assert not forgetting.done()
        await conn.execute("UPDATE memory_summaries SET text = $1",
                           f"{read}\nAsked about the ThinkPad.")
    assert (await forgetting)["summaries"] == 1
    assert await memory.summary("acme", "u-1") is None


async def test_only_a_users_newest_applied_row_keys_are_kept(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keys of applied keeper rows are kept per user up to `KEPT_ROW_KEYS`, the newest: a
    row comes twice soon after it first did, and the table would otherwise grow with every
    exchange for good. Another user's keys are theirs to keep."""
    monkeypatch.setattr(user_memory, "KEPT_ROW_KEYS", 3)
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    for user in ("u-1", "u-2"):
        for n in range(5):
            await memory.apply([{"op": "summary", "text": f"Exchange {n}.", "seen": None,
                                 "tenant": "acme", "user_id": user, ROW_KEY: str(uuid.uuid4())}])
    kept = await db.pool.fetch(
        "SELECT user_id, count(*) FROM memory_rows_applied GROUP BY user_id ORDER BY user_id")
    assert [(r["user_id"], r["count"]) for r in kept] == [("u-1", 3), ("u-2", 3)]


async def test_a_keeper_reads_the_users_memory_again_only_when_something_else_changed_it(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """One session's keeper, each exchange's rows written before the next: it reads the
    user's memory whole before an exchange only when another session wrote it, the user's own
    `remember` did (the tool writes apart from the keeper), or a privacy request deleted it;
    each request then shows what changed. After its own rows alone it reads nothing again.
    Before, it read the user's facts and summary before every exchange."""
    memory = _Watched(db.pool, WordLlamaEmbedder())
    await _earlier_memory(db)
    reads = []
    async with ScriptedModelServer(fold) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        phone = await _keeper(
            memory, MeteredTierCall(provider, LITE, _record(tmp_path, "s-phone").meter,
                                    timeout_s=10), "s-phone", tmp_path)
        tools = MemoryTools(memory, phone, tenant="acme", user_id="u-1", session_id="s-phone")
        said = SimpleNamespace(type="message", role="user", text_content="Remember I use Helix.")
        context = SimpleNamespace(session=SimpleNamespace(history=SimpleNamespace(items=[said])))

        async def exchange(question: str) -> None:
            phone.exchange(question, "(answered)")
            assert await asyncio.wait_for(memory.summaries.get(), 10) == "s-phone"
            reads.append(memory.views)

        await exchange(PHONE[0])  # the view it opened with: read once, its version unknown
        await exchange(PHONE[1])
        await memory.apply([{"op": "fact", "key": VPN[0], "text": "The user uses Tailscale.",
                             "tenant": "acme", "user_id": "u-1", "session_id": "s-desk"}])
        await exchange(DESK[0])
        await exchange(DESK[1])
        remembered = await tools.remember(context, "The user uses Helix")  # type: ignore[arg-type]
        assert remembered.startswith("Remembered")
        await exchange(PHONE[0])
        await Store(db.pool).forget_user("acme", "u-1")
        await exchange(PHONE[1])
        assert await phone.close() == 0
        await provider.aclose()

    assert reads == [1, 1, 2, 2, 3, 4]
    requests = [r.text for r in server.requests]
    assert VPN[1] in requests[1] and "- vpn: The user uses Tailscale." in requests[2]
    assert "- uses_helix: The user uses Helix" in requests[4]
    assert "Remembered facts:\n(none)" in requests[5] and "Summary so far: (none)" in requests[5]
