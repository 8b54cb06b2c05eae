"""Bad and unusual inputs to the knowledge base: each gets one clear line and loses nothing.

Protects (issue 14): a big text file ingests (in pieces the sentence splitter can take) and its
progress moves; an HTML fragment is read and page chrome is left out; an empty, binary, non-UTF-8
or fake file is skipped with one line naming it, and the rest of its folder is ingested; `kb
ingest` exits 0 / 1 / 2 for all / some / none ingested; an unreachable embedding provider is one
line (exit 2), and `auto` keeps the model a tenant's knowledge is stored with; a document is one
document wherever it is ingested from, and one, under one name, when overlapping arguments
reach it twice; tags survive a re-ingest without `--meta` and `type` is built in; blank queries
and k <= 0 are refused; `kb list` and `kb delete`; PDF hits carry their page. A property test
fuzzes ingest folders: every file is ingested or reported, nothing raises.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
from functools import cache
from pathlib import Path

import nltk.redos
import pytest
from conftest import CountingEmbedder, cli_env, run_cli
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_knowledge import BAKING, ROUTER, write_docs, write_pdf

from agent import cli, cli_kb, components
from agent.components import make_embedder
from agent.config import Settings
from memory import knowledge
from memory.db import Database
from memory.embeddings import (
    GeminiEmbedder,
    LocalEmbedder,
    MiniLMEmbedder,
    WordLlamaEmbedder,
    offline_embedder,
)
from memory.knowledge import KnowledgeBase, KnowledgeError


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_docs(tmp_path / "kb")


WORDS = "router admin password reset firmware update office holiday vpn port config".split()

MDBOOK_PAGE = """<!DOCTYPE html><html lang="en"><head><title>Ownership - The Book</title>
<script>var path_to_root = "";</script><style>body { color: red }</style></head><body>
<div id="mdbook-help-container"><div id="mdbook-help-popup">
<h2 class="mdbook-help-title">Keyboard shortcuts</h2><p>Press ← or → to navigate</p></div></div>
<div id="body-container"><nav id="sidebar" class="sidebar" aria-label="Table of contents">
<ol class="chapter"><li>Getting Started</li><li>Understanding Ownership</li></ol></nav>
<div id="page-wrapper" class="page-wrapper"><div class="page"><div id="menu-bar">
<ul id="theme-list" class="theme-popup" role="menu"><li>Light</li><li>Rust</li><li>Coal</li>
<li>Navy</li><li>Ayu</li></ul><h1 class="menu-title">The Rust Programming Language</h1></div>
<div id="content" class="content"><main><h1>What Is Ownership?</h1>
<p>Ownership is a set of rules that govern how a Rust program manages memory.</p>
<nav class="nav-wrapper" aria-label="Page navigation"><a href="prev.html">Previous</a></nav>
</main></div></div></div></div></body></html>"""


def sentences(count: int, seed: int = 1) -> str:
    """`count` sentences of a dozen support words each, in one paragraph."""
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
                    for _ in range(count))


async def test_a_big_text_file_ingests_in_pieces_and_the_files_after_it_too(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nltk runs each sentence regex under a 5 s limit, which one 20 MB piece exceeds; 2 MB
    under 0.2 s is the same failure (`regular-expression match exceeded its time limit`),
    scaled down to a test's time."""
    monkeypatch.setattr(nltk.redos, "DEFAULT_TIMEOUT", 0.2)
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "a_big.txt").write_text(sentences(25_000))
    (folder / "b_small.md").write_text(ROUTER)
    moves: list[tuple[float, float]] = []
    report = await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest(
        [folder], "acme", progress=lambda done, total: moves.append((done, total)))
    assert report.skipped == [] and report.documents == 2 and report.embedded > 1000
    big = (folder / "a_big.txt").stat().st_size
    within_big = [done for done, _ in moves if 0 < done < big]
    assert len(within_big) >= 10  # the bar moves while the big file is split and embedded
    assert [done for done, _ in moves] == sorted(done for done, _ in moves)
    assert moves[-1][0] == moves[-1][1] == big + (folder / "b_small.md").stat().st_size


async def test_an_html_fragment_is_read_and_page_chrome_left_out(
    db: Database, tmp_path: Path,
) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "fragment.html").write_text(
        "<h1>Sourdough</h1>\n<p>Feed the starter with flour and water every day.</p>")
    (folder / "ownership.html").write_text(MDBOOK_PAGE)
    # a page wrapped in one form (ASP.NET's) lost all its text to the chrome rule; nesting
    # 20,000 deep took quadratic time (83 s at 40,000)
    (folder / "webforms.html").write_text(
        '<body><form id="form1" method="post"><h1>Reset the router</h1><p>Hold the reset'
        ' button for ten seconds.</p><form role="search"><input name="q"/>Search</form></form>'
        "</body>")
    (folder / "nested.html").write_text("<div>" * 20_000 + "Deep<br>text" + "</div>" * 20_000)
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    report = await kb.ingest([folder], "acme")
    assert report.skipped == [] and report.documents == 4
    texts = {r["source"]: r["text"] for r in await db.pool.fetch(
        "SELECT d.source, string_agg(c.text, ' ') AS text FROM kb_chunks c JOIN kb_documents d"
        " ON d.id = c.document_id WHERE c.tenant = 'acme' GROUP BY d.source")}
    assert texts["site/fragment.html"] == (
        "Sourdough\nFeed the starter with flour and water every day.")
    assert texts["site/webforms.html"] == (
        "Reset the router\nHold the reset button for ten seconds.")
    assert texts["site/nested.html"] == "Deep\ntext"
    page = texts["site/ownership.html"]
    assert page.startswith("What Is Ownership?") and "govern how a Rust program" in page
    for chrome in ("Keyboard shortcuts", "Coal", "Navy", "Getting Started", "Previous",
                   "path_to_root", "color: red"):
        assert chrome not in page


async def test_unreadable_files_are_skipped_in_one_line_each_and_the_rest_ingested(
    db: Database, tmp_path: Path,
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text(ROUTER)
    (folder / "binary.md").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.txt").write_bytes("Café crème, s'il vous plaît".encode("latin-1"))
    (folder / "empty.txt").write_text("  \n\n ")
    (folder / "fake.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (folder / "only-script.html").write_text("<html><body><script>x()</script></body></html>")
    (folder / "utf16.txt").write_text("The VPN port is 51820.", encoding="utf-16")
    (folder / "moved.md").symlink_to(tmp_path / "gone.md")  # a link to nothing
    (folder / "loop.md").symlink_to(folder / "loop.md")  # and one round in a loop
    # a name that is not UTF-8 failed the whole ingest at its first statement naming it
    (folder / os.fsdecode(b"caf\xe9.md")).write_text(ROUTER)
    report = await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([folder], "acme")
    assert report.documents == 2  # good.md and utf16.txt
    why = {Path(line.split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in report.skipped}
    assert why == {
        "moved.md": "a link that leads to no file",
        "loop.md": "a link that leads to no file",
        "binary.md": "binary, not text",
        "latin1.txt": "not UTF-8 text: save it as UTF-8",
        "empty.txt": "no text in it",
        "fake.pdf": why["fake.pdf"],
        "only-script.html": "no text in it",
        "caf\\xe9.md": "its name is not UTF-8 (a document's name is text)",
    }
    assert why["fake.pdf"].startswith("not a readable PDF (") and "\n" not in why["fake.pdf"]


async def test_a_linked_folder_is_ingested_and_a_link_back_up_walked_once(
    db: Database, tmp_path: Path,
) -> None:
    """A docs tree that links a shared folder in: `rglob` left its files out without a word.
    A link back up the tree would loop: each folder is walked once."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "guide.md").write_text(ROUTER)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "vpn.md").write_text("# VPN\n\nThe VPN uses WireGuard on port 51820.")
    (docs / "shared").symlink_to(shared)
    (docs / "up").symlink_to(docs)
    report = await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([docs], "acme")
    assert report.skipped == [] and report.documents == 2
    assert sorted(d.source for d in await knowledge.documents(db.pool, "acme")) == [
        "docs/shared/guide.md", "docs/vpn.md"]


async def test_kb_ingest_exit_codes_say_all_some_or_none(
    settings: Settings, tmp_path: Path,
) -> None:
    env = cli_env(settings)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text(ROUTER)
    (folder / "binary.md").write_bytes(b"\x00\x01\x02garbage\xff" * 50)
    fake = tmp_path / "fake.pdf"
    fake.write_bytes(b"%PDF-1.4 not really a pdf")

    code, out, err = await run_cli("kb", "ingest", str(folder), "--tenant", "acme", env=env)
    assert code == 1 and "1 document:" in out
    assert err.splitlines() == [f"skipped: {folder.resolve() / 'binary.md'}: binary, not text"]
    code, out, err = await run_cli("kb", "ingest", str(fake), "--tenant", "acme", env=env)
    assert code == 2 and "0 documents:" in out
    assert len(err.splitlines()) == 1 and err.startswith(
        f"skipped: {fake.resolve()}: not a readable PDF (")
    code, _, err = await run_cli("kb", "ingest", str(folder / "good.md"), "--tenant", "acme",
                                 env=env)
    assert code == 0 and err == ""


async def test_kb_ingest_says_where_a_document_holds_what_looks_like_a_secret(
    settings: Settings, db: Database, docs: Path,
) -> None:
    """A tenant's knowledge is stored as it is (a guest wifi's password may be what a page is
    for), but the agent may read it to any of its users: each embedded document holding what
    looks like a secret is one note naming it, its kinds and the first line (its PDF page),
    with the secret hidden; an unchanged document is not read again. `--hide-secrets` stores
    each hidden, and ingesting with it or without it again stores the document anew. `kb
    list` keeps saying it once the notes have scrolled away (the kinds, stored hidden or as
    they are); a document stored before documents were read for secrets is listed as not
    read, and the next ingest reads it without embedding it again."""
    (docs / "office.md").write_text("# Office\n\nThe guest wifi password is Blue-Fox-42.\n\n"
                                    "DB_PASSWORD=hunter2 for the staging database.\n")
    write_pdf(docs / "keys.pdf", "Nothing here.", "The deploy key: API_KEY=sk9f8e7d6c5b4a")
    env = cli_env(settings)

    async def ingest(*more: str) -> tuple[list[str], str]:
        code, out, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", *more,
                                       env=env)
        assert code == 0, err
        stored = await db.pool.fetchval(
            "SELECT string_agg(text, ' ') FROM kb_chunks WHERE tenant = 'acme'")
        return [line for line in out.splitlines() if line.startswith("note:")], stored

    async def listed() -> dict[str, str]:
        code, out, err = await run_cli("kb", "list", "--tenant", "acme", env=env)
        assert code == 0, err
        return {line.split("  ")[0]: line for line in out.splitlines()}

    as_it_is = ("ingested as it is, so the agent may read it to any user of tenant acme; if "
                "they should not see it, take it out of the file and ingest it again (or "
                "ingest it with --hide-secrets)")
    notes, stored = await ingest()
    assert notes == [
        'note: kb/keys.pdf holds what looks like a secret (1 assigned secret), first (page 2) '
        f'in "The deploy key: API_KEY=[secret hidden]": {as_it_is}',
        'note: kb/office.md holds what looks like a secret (1 assigned secret, 1 password), '
        f'first in "The guest wifi password is [secret hidden].": {as_it_is}']
    assert "Blue-Fox-42" in stored and "hunter2" in stored, "stored as it is"
    assert await ingest() == ([], stored), "unchanged: not read again"
    shown = await listed()
    assert shown["kb/office.md"].endswith(
        "type=md  holds 1 assigned secret, 1 password: stored as it is")
    assert shown["kb/router.md"].endswith("type=md"), "none: nothing said"
    code, out, err = await run_cli("kb", "list", "--tenant", "acme", "--json", env=env)
    assert code == 0, err
    documents = {d["source"]: d for d in json.loads(out)}
    assert documents["kb/keys.pdf"]["secrets"] == {"assigned secret": 1}
    assert documents["kb/keys.pdf"]["secrets_hidden"] is False
    assert documents["kb/router.md"]["secrets"] == {}

    notes, stored = await ingest("--hide-secrets")
    assert len(notes) == 2 and all(note.endswith(": stored with each hidden") for note in notes)
    assert not any(secret in stored for secret in ("Blue-Fox-42", "hunter2", "sk9f8e7d6c5b4a"))
    assert "DB_PASSWORD=[secret hidden] for the staging database" in stored
    assert (await listed())["kb/office.md"].endswith(": stored hidden")
    code, out, err = await run_cli("kb", "search", "staging database password", "--tenant",
                                   "acme", "--json", env=env)
    assert code == 0 and json.loads(out)[0]["source"] == "kb/office.md", err
    notes, stored = await ingest()
    assert len(notes) == 2 and "hunter2" in stored, "shown again, as asked"

    await db.pool.execute("UPDATE kb_documents SET secrets = NULL WHERE tenant = 'acme'")
    assert all(line.endswith("not read for secrets yet (`sightline kb ingest` it again)")
               for line in (await listed()).values())
    code, out, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
    assert code == 0 and " 0 chunks embedded " in out and "note: kb/office.md" in out, out
    shown = await listed()
    assert shown["kb/office.md"].endswith("holds 1 assigned secret, 1 password: stored as it is")
    assert "not read" not in "".join(shown.values())


async def test_an_unreachable_embedding_provider_is_one_line_and_auto_keeps_the_stored_model(
    settings: Settings, docs: Path,
) -> None:
    env = cli_env(settings)
    # nothing listens on port 9: the connection is refused at once (no network is needed)
    gemini = {**env, "GOOGLE_API_KEY": "test-key", "SIGHTLINE_MODEL_RETRIES": "0",
              "SIGHTLINE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
    for args in (("ingest", str(docs)), ("search", "reset the router")):
        code, out, err = await run_cli("kb", *args, "--tenant", "acme", env=gemini)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "Gemini embeddings (gemini-embedding-001 at http://127.0.0.1:9) failed" in err
        assert "SIGHTLINE_EMBEDDINGS=offline" in err and "Traceback" not in err

    code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "globex",
                                 env={**env, "SIGHTLINE_EMBEDDINGS": "offline"})
    assert code == 0, err
    # `auto` with the key set: globex's knowledge is stored offline, so it stays offline
    code, out, err = await run_cli("kb", "ingest", str(docs), "--tenant", "globex", env=gemini)
    assert code == 0 and "0 chunks embedded (minilm-l6-v2-384-windows)" in out, err
    code, out, err = await run_cli("kb", "search", "reset the router admin password",
                                   "--tenant", "globex", "--json", env=gemini)
    assert code == 0 and json.loads(out)[0]["source"] == "kb/router.md", err


async def test_a_document_is_one_document_wherever_it_is_ingested_from(
    db: Database, docs: Path, tmp_path: Path,
) -> None:
    clone = tmp_path / "clone" / "kb"
    shutil.copytree(docs, clone)
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest([docs], "acme")
    again = await kb.ingest([clone], "acme")
    assert again.embedded == 0 and again.removed_documents == []
    sources = [d.source for d in await knowledge.documents(db.pool, "acme")]
    assert sources == ["kb/baking.html", "kb/holidays.pdf", "kb/router.md", "kb/vpn.txt"]
    hits = await kb.search("acme", "reset the router admin password", k=5)
    assert len({h.source for h in hits}) == len(hits)  # no document twice

    # a row named by its absolute path (before migration 0007) is renamed when ingested again
    await db.pool.execute("UPDATE kb_documents SET source = origin WHERE source = 'kb/vpn.txt'")
    await kb.ingest([clone], "acme")
    assert [d.source for d in await knowledge.documents(db.pool, "acme")] == sources
    # a file on its own is known by its name; its folder's document under the same file is
    # replaced, not doubled
    await kb.ingest([clone / "vpn.txt"], "acme")
    assert [d.source for d in await knowledge.documents(db.pool, "acme")] == [
        "kb/baking.html", "kb/holidays.pdf", "kb/router.md", "vpn.txt"]


async def test_a_file_reached_through_overlapping_arguments_is_one_document(
    db: Database, docs: Path, settings: Settings, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`kb ingest kb kb/sub`: the file under kb/sub was found twice, as `kb/sub/guide.md` and
    `sub/guide.md`, and the second replaced the first (same file), so every run flipped its
    name and embedded it again. It is one document, named from the outermost argument
    whatever the arguments' order, and a second run embeds nothing."""
    sub = docs / "sub"
    sub.mkdir()
    (sub / "guide.md").write_text("# Guest Wi-Fi\n\nThe guest network is called Visitors; "
                                  "its password changes every Monday.")
    names = ["kb/baking.html", "kb/holidays.pdf", "kb/router.md", "kb/sub/guide.md",
             "kb/vpn.txt"]
    embedder = CountingEmbedder()
    kb = KnowledgeBase(db.pool, embedder)
    first = await kb.ingest([docs, sub], "acme")
    assert [d.source for d in await knowledge.documents(db.pool, "acme")] == names
    assert first.documents == 5 and first.overlapping == 1
    for paths in ([docs, sub], [sub, docs], [sub / "guide.md", docs, sub, docs]):
        embedder.embedded.clear()
        again = await kb.ingest(paths, "acme")
        assert (again.documents, again.embedded, again.removed_documents) == (5, 0, [])
        assert embedder.embedded == []
        assert [d.source for d in await knowledge.documents(db.pool, "acme")] == names
    assert await db.pool.fetchval(
        "SELECT count(*) FROM kb_chunks WHERE tenant = 'acme' AND text LIKE '%Visitors%'") == 1

    # the command says how many files it reached twice
    settings = settings.with_overrides(embeddings="wordllama")
    ingest = cli._parser().parse_args(["kb", "ingest", str(sub), str(docs), "--tenant", "acme"])
    assert await cli_kb.run(settings, ingest) == 0
    out = capsys.readouterr().out
    assert "5 documents: 0 chunks embedded" in out
    assert "1 file reached through more than one argument: ingested once" in out

    # a folder linked into another and given on its own too: one document, the link's name
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "faq.md").write_text("# Printers\n\nThe office printer is on the third floor.")
    (docs / "shared").symlink_to(shared)
    linked = await kb.ingest([shared, docs], "acme")
    assert linked.overlapping == 1 and linked.documents == 6
    assert [d.source for d in await knowledge.documents(db.pool, "acme")] == sorted(
        [*names, "kb/shared/faq.md"])


async def test_an_unchanged_document_is_not_split_again(
    db: Database, docs: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder ingested again costs the reading of its files, not their splitting (the
    splitter alone imports ~3.5 s of llama-index and nltk): a document whose text and split
    settings are unchanged keeps its chunks, and still gets the tags it is given."""
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    first = await kb.ingest([docs], "acme")

    def split_again(_text: str) -> list[str]:
        raise AssertionError("split again")
    monkeypatch.setattr(knowledge, "split", split_again)
    again = await kb.ingest([docs], "acme", metadata={"team": "it"})
    assert (again.documents, again.embedded, again.deleted, again.skipped) == (
        first.documents, 0, 0, [])
    assert again.kept == first.embedded + first.kept
    assert {d.source: d.metadata["team"] for d in await knowledge.documents(db.pool, "acme")} \
        == dict.fromkeys(["kb/baking.html", "kb/holidays.pdf", "kb/router.md", "kb/vpn.txt"],
                         "it")
    # a changed document is split (here: the splitter refuses, so it is skipped, alone)
    (docs / "router.md").write_text(ROUTER + "\nPress the reset button for ten seconds.\n")
    changed = await kb.ingest([docs], "acme")
    assert changed.documents == first.documents - 1
    assert len(changed.skipped) == 1 and "router.md: cannot split its text" in changed.skipped[0]


async def test_kb_ingest_of_unchanged_documents_loads_no_model(
    settings: Settings, docs: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ingesting a folder again compares each document's model by name, which the embedder's
    class says: the model (1-7 s and ~400 MB to load) is made only when a document changed,
    then with the machine's cores."""
    made: list[LocalEmbedder] = []

    def make(name: str) -> LocalEmbedder:
        made.append(offline_embedder(name))
        return made[-1]

    monkeypatch.setattr(components, "offline_embedder", make)
    settings = settings.with_overrides(embeddings="wordllama")
    ingest = cli._parser().parse_args(["kb", "ingest", str(docs), "--tenant", "acme"])
    assert await cli_kb.run(settings, ingest) == 0
    assert len(made) == 1 and made[0].threads == len(os.sched_getaffinity(0))
    assert "embedded (wordllama-l2-supercat-256), 0 unchanged" in capsys.readouterr().out
    assert await cli_kb.run(settings, ingest) == 0
    assert len(made) == 1
    assert "0 chunks embedded (wordllama-l2-supercat-256), " in capsys.readouterr().out
    (docs / "router.md").write_text(ROUTER + "\nPress the reset button for ten seconds.\n")
    assert await cli_kb.run(settings, ingest) == 0
    assert len(made) == 2
    assert "0 chunks embedded" not in capsys.readouterr().out


async def test_tags_survive_a_reingest_without_meta_and_type_is_built_in(
    db: Database, docs: Path, settings: Settings,
) -> None:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest([docs / "router.md"], "acme", metadata={"team": "network"})
    await kb.ingest([docs / "router.md"], "acme")
    tags = {d.source: d.metadata for d in await knowledge.documents(db.pool, "acme")}
    assert tags == {"router.md": {"team": "network", "type": "md"}}
    await kb.ingest([docs / "router.md"], "acme", metadata={"owner": "it"})
    assert (await knowledge.documents(db.pool, "acme"))[0].metadata == {
        "owner": "it", "type": "md"}
    with pytest.raises(KnowledgeError, match="`type` is set from each file's suffix"):
        await kb.ingest([docs / "router.md"], "acme", metadata={"type": "pdf"})

    code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", "--meta",
                                 "type=pdf", env=cli_env(settings))
    assert code == 2 and len(err.splitlines()) == 1 and "--meta type=..." in err


async def test_blank_queries_and_k_below_one_are_refused(settings: Settings) -> None:
    env = cli_env(settings)
    whole = "must be a whole number from 1 to 2147483647"
    for args, why in ((("  ",), "the query is blank"),
                      (("router", "--k", "0"), f"{whole}, got '0'"),
                      (("router", "--k", "-3"), f"{whole}, got '-3'"),
                      (("router", "--k", "99999999999999999999"),
                       f"{whole}, got '99999999999999999999'")):
        code, out, err = await run_cli("kb", "search", *args, "--tenant", "acme", env=env)
        assert code == 2 and out == "" and "Traceback" not in err
        assert why in err.splitlines()[-1]
    code, out, _ = await run_cli("kb", "search", "--help", env=env)
    assert code == 0 and "how many hits to print" in out


async def test_kb_list_and_delete(settings: Settings, docs: Path) -> None:
    env = cli_env(settings)
    code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", "--meta",
                                 "team=it", env=env)
    assert code == 0, err
    code, out, _ = await run_cli("kb", "list", "--tenant", "acme", "--json", env=env)
    listed = json.loads(out)
    assert code == 0 and [d["source"] for d in listed] == [
        "kb/baking.html", "kb/holidays.pdf", "kb/router.md", "kb/vpn.txt"]
    router = listed[2]
    assert router["chunks"] >= 1 and router["embedders"] == ["minilm-l6-v2-384-windows"]
    assert router["metadata"] == {"team": "it", "type": "md"} and router["ingested_at"]
    code, out, _ = await run_cli("kb", "list", "--tenant", "acme", env=env)
    assert code == 0 and len(out.splitlines()) == 4
    assert out.splitlines()[2].startswith("kb/router.md  ") and "team=it type=md" in out

    code, out, err = await run_cli("kb", "delete", "kb/router.md", "kb/nope.md", "--tenant",
                                   "acme", env=env)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "kb/nope.md" in err
    code, out, _ = await run_cli("kb", "delete", "kb/router.md", "kb/vpn.txt", "--tenant",
                                 "acme", env=env)
    assert code == 0 and out.splitlines() == ["deleted: kb/router.md", "deleted: kb/vpn.txt"]
    code, out, _ = await run_cli("kb", "list", "--tenant", "acme", "--json", env=env)
    assert [d["source"] for d in json.loads(out)] == ["kb/baking.html", "kb/holidays.pdf"]
    code, out, _ = await run_cli("kb", "list", "--tenant", "globex", env=env)
    assert code == 0 and out == "No documents in tenant globex's knowledge base.\n"


async def test_pdf_hits_carry_their_page(db: Database, settings: Settings, tmp_path: Path,
                                         ) -> None:
    manual = tmp_path / "manual.pdf"
    write_pdf(manual, "Unpack the router and plug it in.", "The VPN uses WireGuard on 51820.")
    hits = await _search_after_ingest(db, manual, "which port does the VPN use")
    assert hits[0].source == "manual.pdf" and hits[0].page == 2 and "51820" in hits[0].text
    env = cli_env(settings)
    code, _, _ = await run_cli("kb", "ingest", str(manual), "--tenant", "acme", env=env)
    code, out, _ = await run_cli("kb", "search", "which port does the VPN use", "--tenant",
                                 "acme", "--k", "1", env=env)
    assert code == 0 and out.startswith("1. manual.pdf, page 2  (score ")
    code, out, _ = await run_cli("kb", "search", "which port does the VPN use", "--tenant",
                                 "acme", "--k", "1", "--json", env=env)
    assert json.loads(out)[0]["page"] == 2
    # a cover page added: the same text, on other pages, is stored anew (its hash named the
    # text alone, so the hits went on citing page 2)
    write_pdf(manual, "", "Unpack the router and plug it in.", "The VPN uses WireGuard on 51820.")
    hits = await _search_after_ingest(db, manual, "which port does the VPN use")
    assert hits[0].page == 3


async def _search_after_ingest(db: Database, path: Path, query: str) -> list[knowledge.Hit]:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest([path], "acme")
    return await kb.search("acme", query, k=1)


@cache
def _a_pdf() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "two-pages.pdf"
        write_pdf(path, "Unpack the router.", "The VPN port is 51820.")
        return path.read_bytes()


def _contents() -> st.SearchStrategy[bytes]:
    """What a file in a folder someone ingests may hold."""
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
    pdf = _a_pdf()
    return st.one_of(
        st.integers(0, len(pdf)).map(lambda n: pdf[:n]),  # a PDF cut short anywhere
        text.map(lambda t: t.encode("utf-8")),
        text.map(lambda t: t.encode("utf-16")),
        st.binary(max_size=300),
        st.just(b""),
        st.integers(1, 20_000).map(lambda n: b"x" * n),  # one long line without a break
        st.sampled_from([b"%PDF-1.4 not really", b"<h1>T</h1><p>p</p>", b"<html></html>",
                         ROUTER.encode(), BAKING.encode(), b"\xef\xbb\xbfwith a BOM"]),
    )


NAME = st.text(alphabet=string.ascii_letters + string.digits + " _-.é", min_size=1,
               max_size=12).filter(lambda n: n.strip(". ") == n)


@hypothesis_settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.tuples(NAME, st.sampled_from(knowledge.SUFFIXES)), _contents(),
                             min_size=1, max_size=5))
async def test_fuzzed_folders_ingest_every_file_or_report_it(
    db: Database, tmp_path_factory: pytest.TempPathFactory,
    files: dict[tuple[str, str], bytes],
) -> None:
    folder = tmp_path_factory.mktemp("fuzz") / "kb"
    folder.mkdir()
    for (stem, suffix), data in files.items():
        (folder / (stem + suffix)).write_bytes(data)
    tenant = f"fuzz-{folder.parent.name}"
    report = await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([folder], tenant)
    names = {p.name for p in folder.iterdir()}
    skipped = {Path(line.split(": ", 1)[0]).name for line in report.skipped}
    stored = {d.source.removeprefix("kb/") for d in await knowledge.documents(db.pool, tenant)}
    assert stored | skipped == names and not stored & skipped
    assert all("\n" not in line for line in report.skipped)


def test_auto_embeddings_keep_the_model_a_tenants_knowledge_is_stored_with(
    settings: Settings,
) -> None:
    keyed = settings.with_overrides(gemini_api_key="test-key")
    assert isinstance(make_embedder(keyed, ["wordllama-l2-supercat-256"]), WordLlamaEmbedder)
    assert isinstance(make_embedder(keyed, ["gemini-embedding-001-768"]), GeminiEmbedder)
    assert isinstance(make_embedder(keyed), GeminiEmbedder)  # a tenant without knowledge
    assert isinstance(make_embedder(keyed, ["minilm-l6-v2-384"]), MiniLMEmbedder)
    assert isinstance(make_embedder(settings), MiniLMEmbedder)  # no key: the offline default
    assert isinstance(make_embedder(settings.with_overrides(embeddings="wordllama")),
                      WordLlamaEmbedder)  # by name
    assert isinstance(make_embedder(settings.with_overrides(embeddings="offline"),
                                    ["wordllama-l2-supercat-256"]), MiniLMEmbedder)  # as told
    assert isinstance(make_embedder(keyed.with_overrides(embeddings="gemini"),
                                    ["wordllama-l2-supercat-256"]), GeminiEmbedder)  # as told
