"""The tenant's knowledge base in Postgres: documents in, chunks embedded once, hybrid search out.

Ingest reads Markdown and text as UTF-8, HTML with BeautifulSoup (the page's main content, without
navigation, menus and scripts) and PDF with pypdf (page by page, so every chunk knows its page),
splits on sentence boundaries with overlap (llama-index's `SentenceSplitter`), and stores each
chunk with its content hash, its embedder's name and its vector. A document is known by its path
from the ingested folder's name down (`docs/setup/install.md`), or by its file name when a file is
ingested on its own, so two clones of the same docs are one document, not two; a file that
several arguments of one ingest reach (`docs docs/sub`) is one document, named from the outermost
of them. Re-ingesting a document embeds only the chunks whose text (or embedder) changed; chunks
no longer in it are deleted, and so is a document gone from a folder that is ingested again. A
file that cannot be read or holds no text is reported in one line and skipped; the rest of the
folder is ingested. Search runs a vector query (pgvector HNSW) and a keyword query (tsvector, GIN)
for the tenant and fuses the two rankings. Every query is scoped to one tenant. Documents' text
is data, never instructions; what in it looks like a secret is stored as it is (or hidden,
when asked) and reported (`SecretsSeen`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from . import bm25
from .db import storable
from .embeddings import Embedder, EmbeddingError
from .rerank import Reranker, RerankError
from .secret_text import hide_secrets, rules
from .shared_calls import SharedCalls

log = logging.getLogger("sightline.knowledge")

SUFFIXES = (".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf")
HTML_SUFFIXES = (".html", ".htm")
# A chunk of 256 splitter tokens is often more than MiniLM's 256 word pieces (71 of the 167
# chunks of this README): MiniLM reads such a chunk in windows and averages them (memory/minilm.py);
# WordLlama has no window limit; Gemini embeddings take 2048 tokens
CHUNK_TOKENS = 256
CHUNK_OVERLAP = 32
# The splitter's sentence tokenizer runs each regular expression over a whole piece under a 5 s
# limit (nltk's ReDoS guard): a 20 MB text in one piece exceeds it, so text is split in pieces
# of at most this many characters, cut at a paragraph, line or word break.
PIECE_CHARS = 50_000
EMBED_BATCH = 256  # chunks per embedding call during ingest: progress moves between them
INSERT_BATCH = 1000  # chunks per INSERT statement: ~0.3 s each with the BM25 triggers
BUILT_IN_TAGS = ("type",)  # set from the file's suffix, never by the user
RRF_K = 60
# seconds a tenant's knowledge probe answers whoever asks again (`KnowledgeBase.has_any`): an
# ingest elsewhere (`kb ingest`) is seen by a running session's turns at most this late
PROBE_HOLD_S = 1.0
# page chrome: what a page repeats around its content (mdBook's sidebar and theme menu, ...)
_CHROME_TAGS = ("nav", "aside", "script", "style", "noscript", "template", "form", "button",
                "svg", "iframe", "head")
_CHROME_ROLES = ("navigation", "banner", "contentinfo", "menu", "menubar", "search", "dialog",
                 "complementary")
_PROSE_TAGS = ("article", "h1", "h2", "h3", "h4", "h5", "h6", "main", "p", "section")
_BLOCK_TAGS = ("address", "article", "blockquote", "dd", "div", "dl", "dt", "figcaption",
               "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "pre",
               "section", "table", "td", "th", "tr", "ul")


# A question's vector, or the embedding under way that will give it (an `asyncio.Future`, which
# every search of the turn may await): searches run what needs no vector while it is computed.
# An embedding that gives None came too late or failed: the searches rank by keywords alone.
QueryVector = np.ndarray | Awaitable[np.ndarray | None]


async def resolved(vector: QueryVector) -> np.ndarray | None:
    """The vector, once its embedding (if one is under way) is done; None: rank without it."""
    return vector if isinstance(vector, np.ndarray) else await vector


class KnowledgeError(ValueError):
    """A problem the user can fix: an unreadable file, a model change, a bad argument."""


@dataclass(frozen=True)
class Hit:
    """A retrieved text: a knowledge chunk (`source` is its document) or a remembered message
    (`source` is who said it, `at` when)."""

    id: int
    text: str
    source: str
    score: float
    vector_rank: int | None = None
    keyword_rank: int | None = None
    key: str = ""  # the chunk's key: file#hash#n, or the id it was given
    at: datetime | None = None  # when a remembered message was said (memory recall)
    page: int | None = None  # the PDF page a knowledge chunk is from (1-based)

    @property
    def citation(self) -> str:
        """The document's file name, and its page for a PDF: what the model may cite."""
        name = self.source.rsplit("/", 1)[-1]
        return f"{name}, page {self.page}" if self.page is not None else name


@dataclass(frozen=True)
class Section:
    """A stretch of a document's text: a PDF's page (`page`, 1-based), or the whole text."""

    text: str
    page: int | None = None


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest, with the name the document is known by (see the module's docstring)."""

    path: Path
    source: str
    size: int


@dataclass(frozen=True)
class Document:
    """A stored document, as `sightline kb list` shows it."""

    source: str
    origin: str  # the file it was last read from
    chunks: int
    embedders: list[str]
    ingested_at: datetime
    metadata: dict[str, str]
    secrets: dict[str, int] | None  # what looks like one, by kind ({} none; None: not read yet)
    secrets_hidden: bool  # stored with each one's value hidden (`kb ingest --hide-secrets`)


@dataclass
class IngestReport:
    documents: int = 0
    embedded: int = 0
    kept: int = 0
    deleted: int = 0
    removed_documents: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line each: "PATH: why"
    # files more than one argument reached (`docs docs/sub`), each ingested once (find_files)
    overlapping: int = 0
    secrets: list[SecretsSeen] = field(default_factory=list)  # of the documents embedded


@dataclass(frozen=True)
class SecretsSeen:
    """What looks like a secret (memory/secret_text.py) in a document ingested. It is stored as
    it is unless the ingest hides it (`kb ingest --hide-secrets`), since a tenant's knowledge
    is what it chose to give its users (a guest wifi's password may be what a document is
    for), but the agent may read it to any of them, so `kb ingest` says where it is."""

    source: str
    kinds: dict[str, int]  # how many of each kind
    first: str  # the first line holding one, its secret hidden: where to look
    page: int | None  # that line's PDF page
    hidden: bool  # stored with each secret's value replaced by `HIDDEN`


def secrets_seen(source: str, sections: list[Section], *, hide: bool,
                 ) -> tuple[list[Section], SecretsSeen | None]:
    """What looks like a secret in a document's `sections`, if anything, and the sections to
    store: with each secret's value hidden when `hide`, else as they are (a thread's work:
    every line is scanned)."""
    kinds: Counter[str] = Counter()
    first, page = "", None
    stored = []
    for section in sections:
        lines = section.text.split("\n")
        hidden, found = hide_secrets(lines)
        if found and not kinds:
            first = next(new for old, new in zip(lines, hidden, strict=True) if new != old)
            page = section.page
        kinds += found
        stored.append(Section("\n".join(hidden), section.page) if hide and found else section)
    return stored, SecretsSeen(source, dict(kinds), first, page, hide) if kinds else None


async def _upsert_document(
    conn: asyncpg.Connection, tenant: str, source: str, origin: str, doc_hash: str,
    metadata: dict[str, str] | None, built_in: dict[str, str],
) -> int:
    """The document's row, written: its hash, origin and tags (`metadata` None keeps the tags
    it has); a document read from the same file under another name is dropped. Its id."""
    if origin:
        await conn.execute(
            "DELETE FROM kb_documents WHERE tenant = $1 AND origin = $2 AND source <> $3",
            tenant, origin, source)
    doc_id: int = await conn.fetchval(
        "INSERT INTO kb_documents (tenant, source, origin, content_hash, metadata)"
        " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (tenant, source) DO UPDATE SET"
        " content_hash = excluded.content_hash, origin = excluded.origin,"
        " metadata = CASE WHEN $6 THEN excluded.metadata"
        " ELSE kb_documents.metadata || excluded.metadata END,"
        # another text (or the same with its secrets hidden, or not) is read for them anew
        " secrets = CASE WHEN kb_documents.content_hash = excluded.content_hash"
        " THEN kb_documents.secrets END,"
        " ingested_at = now() RETURNING id",
        tenant, source, origin, doc_hash, json.dumps({**(metadata or {}), **built_in}),
        metadata is not None,
    )
    return doc_id


def _within(progress: Callable[[float, float], None] | None, start: float, weight: float,
            total: float) -> Callable[[float], None]:
    """The progress of one file, as a fraction of its `weight` in bytes after `start`."""
    if progress is None:
        return lambda _fraction: None
    return lambda fraction: progress(start + fraction * weight, total)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def _split_settings() -> str:
    """What a document's chunks depend on besides its text: a document whose text and these
    are unchanged keeps its chunks without being split again (`_unchanged`)."""
    return (f"llama-index-core {version('llama-index-core')}, nltk {version('nltk')}, "
            f"{CHUNK_TOKENS}/{CHUNK_OVERLAP} tokens, pieces of {PIECE_CHARS}\n")


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: parsers' messages can span lines or quote whole objects."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form; avoids a per-connection codec for a type that may not exist yet."""
    return "[" + ",".join(f"{x:.6g}" for x in vector.tolist()) + "]"


def _html_text(data: bytes) -> str:
    """The page's main content (`<main>`, else `<body>`, else the whole fragment) without page
    chrome, one line per block: bytes in, so BeautifulSoup finds the page's own encoding."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    root = soup.find("main") or soup.find(attrs={"role": "main"}) or soup.find("body") or soup
    for element in [*root.find_all(_CHROME_TAGS), *root.find_all(
            attrs={"role": lambda role: role in _CHROME_ROLES})]:
        # a form holding the page's prose is its content (ASP.NET wraps whole pages in one)
        if element.name != "form" or element.find(_PROSE_TAGS) is None:
            element.decompose()
    for element in root.find_all(("header", "footer")):
        if element.find_parent("article") is None:  # an article's header is its title
            element.decompose()
    lines = (" ".join(line.split()) for line in _block_text(root).splitlines())
    return "\n".join(line for line in lines if line)


def _block_text(root: Any) -> str:
    """The text of `root` as `get_text()` gives it, with a line break at each `<br>` and after
    each block. Walked once, by hand: appending the break to each block in the tree made
    BeautifulSoup walk to the block's last descendant each time, quadratic in the nesting (a
    440 KB page of 40,000 nested divs took 83 s to ingest)."""
    from bs4 import CData, NavigableString

    parts: list[str] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, ended = stack.pop()
        if ended:
            parts.append("\n")
        elif type(node) in (NavigableString, CData):  # as get_text: no comments, doctypes
            parts.append(str(node))
        elif getattr(node, "name", None) == "br":
            parts.append("\n")
        elif hasattr(node, "contents"):
            if node.name in _BLOCK_TAGS:
                stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.contents))
    return "".join(parts)


def _pdf_sections(data: bytes) -> list[Section]:
    import pypdf

    # pypdf logs each repair it makes to a malformed file; a file it cannot read reaches the
    # user as that file's one line, and one it can read needs no warning
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        reader.decrypt("")  # many PDFs are "encrypted" with an empty password
    # a page's broken font map can yield lone surrogates, which no database text can hold
    return [Section((page.extract_text() or "").encode("utf-8", "replace").decode(), number)
            for number, page in enumerate(reader.pages, start=1)]


def _utf16(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))


def _binary(data: bytes) -> bool:
    """A NUL byte outside UTF-16 text: no text file holds one (and Postgres text cannot)."""
    return b"\x00" in data and not _utf16(data)


def _decode(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16 with its byte-order mark."""
    if _binary(data):
        raise KnowledgeError("binary, not text")
    try:
        return data.decode("utf-16" if _utf16(data) else "utf-8-sig")
    except UnicodeDecodeError:
        raise KnowledgeError("not UTF-8 text: save it as UTF-8") from None


async def _keyed_chunks(file: SourceFile, sections: list[Section],
                        moved: Callable[[float], None]) -> list[tuple[str, str, int | None]]:
    """A document's chunks, split on a thread a piece at a time (the first half of its
    progress), each keyed by its document, text hash and repeat: (key, text, page)."""
    length = sum(len(s.text) for s in sections)
    chunks: list[tuple[str, int | None]] = []
    split_so_far = 0
    for section in sections:
        for piece in pieces(section.text):
            try:
                chunks += [(c, section.page) for c in await asyncio.to_thread(split, piece)]
            except Exception as exc:  # the splitter's tokenizers raise their own errors
                raise KnowledgeError(f"{file.path}: cannot split its text ({_one_line(exc)})"
                                     ) from None
            split_so_far += len(piece)
            moved(0.5 * split_so_far / length)
    seen: Counter[str] = Counter()
    keyed = []
    for chunk, page in chunks:
        digest = _hash(chunk)
        keyed.append((f"{file.source}#{digest[:16]}#{seen[digest]}", chunk, page))
        seen[digest] += 1
    return keyed


def read_document(path: Path) -> list[Section]:
    """The text of one file, in sections: PDF through pypdf (one per page), HTML through
    BeautifulSoup (the libraries the llama-index readers wrap, used directly so the runtime
    needs neither those readers nor the pandas they pull in), anything else as UTF-8 text.
    Every failure, and a file without text, is a KnowledgeError of one line naming the file."""
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
        if suffix == ".pdf":
            try:
                sections = _pdf_sections(data)
            except Exception as exc:  # pypdf raises whatever a malformed file leads it to
                raise KnowledgeError(f"not a readable PDF ({_one_line(exc)})") from None
        elif suffix in HTML_SUFFIXES:
            if _binary(data):
                raise KnowledgeError("binary, not HTML")
            try:
                sections = [Section(_html_text(data))]
            except Exception as exc:  # the parser raises whatever a broken page leads it to
                raise KnowledgeError(f"not readable HTML ({_one_line(exc)})") from None
        else:
            sections = [Section(_decode(data))]
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read it ({exc.strerror or _one_line(exc)})"
                             ) from None
    except KnowledgeError as exc:
        raise KnowledgeError(f"{path}: {exc}") from None
    sections = [Section(s.text.replace("\x00", "").strip(), s.page) for s in sections]
    sections = [s for s in sections if s.text]
    if not sections:
        hint = " (a scanned PDF needs text recognition first)" if suffix == ".pdf" else ""
        raise KnowledgeError(f"{path}: no text in it{hint}")
    return sections


@cache
def _splitter() -> Any:  # llama-index's splitter has no type stubs worth the name
    """The sentence splitter, with nltk's Punkt tokenizer built here: llama-index's own loads
    nltk's stopword list on first use, which nltk refuses to open when the installer hard-linked
    it (`refusing multiply-linked file`), failing the first long paragraph of a process."""
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.node_parser.text.utils import split_by_sentence_tokenizer_internal
    from nltk.tokenize import PunktSentenceTokenizer

    punkt = PunktSentenceTokenizer()
    return SentenceSplitter(
        chunk_size=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP,
        chunking_tokenizer_fn=lambda text: split_by_sentence_tokenizer_internal(text, punkt))


def pieces(text: str) -> Iterator[str]:
    """`text` in pieces of at most PIECE_CHARS, cut at a paragraph, line, sentence or word
    break in the second half of the piece where there is one."""
    while len(text) > PIECE_CHARS:
        window = text[:PIECE_CHARS]
        cut = next((at + len(sep) for sep in ("\n\n", "\n", ". ", " ")
                    if (at := window.rfind(sep)) > PIECE_CHARS // 2), PIECE_CHARS)
        yield text[:cut]
        text = text[cut:]
    yield text


def split(text: str) -> list[str]:
    """Chunks of one piece of text (at most PIECE_CHARS: see `pieces`)."""
    return [c for c in _splitter().split_text(text) if c.strip()]


def find_files(paths: Sequence[Path]) -> tuple[list[SourceFile], list[str], int]:
    """The files to ingest, each with its document name: its path from the parent of the
    folder or file given (`docs/a/b.md` for the folder `docs`, `b.md` for the file itself; a
    linked folder's files by the link's path); why each file of a folder left out was (a
    link that leads to no file, a name that is not UTF-8); and how many files more than one
    argument reached (`docs docs/sub`, a folder and a file in it, a folder and one linked into
    another). Such a file is ingested once, under the name its outermost argument gives it
    (see `_outermost`): named from each argument, the one file was stored under one name and
    then replaced under the other, so every run renamed it and embedded it again."""
    found: list[list[SourceFile]] = []
    dangling: list[str] = []
    for path in paths:
        files, left_out = _files_of(path)
        found.append(files)
        dangling += left_out
    # the arguments that reached each file, by the file it is (its path with links resolved)
    reached: dict[str, dict[int, list[SourceFile]]] = {}
    for index, files in enumerate(found):
        for file in files:
            reached.setdefault(os.path.realpath(file.path), {}).setdefault(index, []).append(file)
    chosen = {real: _outermost(by_argument) for real, by_argument in reached.items()}
    kept = [file for index, files in enumerate(found) for file in files
            if chosen[os.path.realpath(file.path)] == index]
    overlapping = sum(1 for by_argument in reached.values() if len(by_argument) > 1)
    # a link to nothing under two overlapping folders is one problem, said once
    return kept, list(dict.fromkeys(dangling)), overlapping


def _outermost(by_argument: dict[int, list[SourceFile]]) -> int:
    """Of the arguments that reached one file, the one whose name for it is kept: the longest
    name (an outer folder's name holds an inner one's: `docs/sub/a.md` over `sub/a.md`), then
    the first in alphabetical order. It depends on the names alone, not on the arguments'
    order, so the document keeps its name from run to run; the same argument given twice
    gives the same names, and the first of them is kept. Within one argument, files stay as
    its walk found them."""
    def rank(index: int) -> tuple[int, str, str, int]:
        best = min(by_argument[index],
                   key=lambda f: (-f.source.count("/"), f.source, str(f.path)))
        return (-best.source.count("/"), best.source, str(best.path), index)
    return min(by_argument, key=rank)


def _files_of(path: Path) -> tuple[list[SourceFile], list[str]]:
    """One argument's files with their document names, and the lines on its files left out
    (see `find_files`)."""
    if not _utf8(path.resolve()):
        raise KnowledgeError(f"{_shown(path)}: its name is not UTF-8 (a document's name "
                             "is text)")
    if path.is_file():
        return [SourceFile(path.resolve(), path.resolve().name, path.stat().st_size)], []
    if not path.is_dir():
        raise KnowledgeError(f"{path}: no such file or folder")
    root = path.resolve()
    found: list[Path] = []
    dangling: list[str] = []
    for p in sorted(_walk(root)):
        if p.suffix.lower() not in SUFFIXES:
            continue
        if not _utf8(p):
            dangling.append(f"{_shown(p)}: its name is not UTF-8 (a document's name "
                            "is text)")
        elif p.is_file():
            found.append(p)
        elif p.is_symlink():  # to nothing, or round in a loop
            dangling.append(f"{p}: a link that leads to no file")
    return [SourceFile(p, "/".join(filter(None, (root.name, p.relative_to(root).as_posix()))),
                       p.stat().st_size) for p in found], dangling


def _walk(root: Path) -> Iterator[Path]:
    """The files and links under `root`, following links to folders (a docs tree often links a
    shared folder in, which `rglob` left out without a word) but never into a folder already
    walked (a link back up would loop)."""
    walked: set[tuple[int, int]] = set()
    for folder, folders, names in os.walk(root, followlinks=True):
        where = os.stat(folder)
        if (where.st_dev, where.st_ino) in walked:
            folders.clear()
            continue
        walked.add((where.st_dev, where.st_ino))
        yield from (Path(folder, name) for name in names)


def _utf8(path: Path) -> bool:
    """Whether a path's name can be stored: bytes that are not UTF-8 (Python keeps them as
    lone surrogates) would fail the whole ingest at its first statement naming them."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path) -> str:
    """A path whose name is not UTF-8, its odd bytes escaped (`caf\\xe9.md`)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


async def stored_models(pool: asyncpg.Pool, tenant: str) -> list[str]:
    """The embedders the tenant's knowledge is stored with (one, unless a change of model is
    half-way through)."""
    return [r["embed_model"] for r in await pool.fetch(
        "SELECT DISTINCT embed_model FROM kb_chunks WHERE tenant = $1 ORDER BY 1", tenant)]


async def documents(pool: asyncpg.Pool, tenant: str) -> list[Document]:
    """The tenant's documents with their chunk counts and embedders, by name."""
    rows = await pool.fetch(
        "SELECT d.source, d.origin, d.metadata::text AS metadata, d.ingested_at,"
        " d.secrets::text AS secrets, d.secrets_hidden, count(c.id) AS chunks,"
        " coalesce(array_agg(DISTINCT c.embed_model) FILTER (WHERE c.id IS NOT NULL), '{}')"
        " AS embedders"
        " FROM kb_documents d LEFT JOIN kb_chunks c"
        " ON c.document_id = d.id AND c.tenant = d.tenant"
        " WHERE d.tenant = $1 GROUP BY d.id ORDER BY d.source", tenant)
    return [Document(r["source"], r["origin"], r["chunks"], list(r["embedders"]),
                     r["ingested_at"], json.loads(r["metadata"]),
                     None if r["secrets"] is None else json.loads(r["secrets"]),
                     r["secrets_hidden"]) for r in rows]


async def delete_documents(pool: asyncpg.Pool, tenant: str, sources: Sequence[str]) -> list[str]:
    """Delete the tenant's documents named `sources`, with their chunks: all of them, or,
    if one is not in the knowledge base, none (KnowledgeError naming it)."""
    wanted = list(dict.fromkeys(sources))
    async with pool.acquire() as conn, conn.transaction():
        gone = [r["source"] for r in await conn.fetch(
            "DELETE FROM kb_documents WHERE tenant = $1 AND source = ANY($2::text[])"
            " RETURNING source", tenant, wanted)]
        unknown = [s for s in wanted if s not in gone]
        if unknown:
            raise KnowledgeError(
                f"no document {', '.join(unknown)} in tenant {tenant}'s knowledge base, "
                f"nothing deleted (`sightline kb list --tenant {tenant}` names them)")
    return [s for s in wanted if s in gone]


class KnowledgeBase:
    def __init__(
        self, pool: asyncpg.Pool, embedder: Embedder, reranker: Reranker | None = None,
    ) -> None:
        self._pool = pool
        self.embedder = embedder
        self.reranker = reranker
        self._indexed = False
        self._probes: SharedCalls[str, bool] = SharedCalls()  # `has_any`'s, by tenant

    async def _ensure_index(self) -> None:
        """One HNSW index per embedder, over vectors of its dimension."""
        if self._indexed:
            return
        name, dim = self.embedder.name, int(self.embedder.dim)
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower())[:40]
        literal = name.replace("'", "''")
        await self._pool.execute(
            f"CREATE INDEX IF NOT EXISTS kb_chunks_hnsw_{slug} ON kb_chunks USING hnsw "
            f"((embedding::vector({dim})) vector_cosine_ops) WHERE embed_model = '{literal}'"
        )
        self._indexed = True

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the chunks, as autovacuum does within a minute
        of a large ingest: until then a tenant's vectors are read in full rather than through
        the HNSW index, so an evaluation asks right after loading to measure the settled plan."""
        await self._pool.execute("ANALYZE kb_documents, kb_chunks", timeout=600)

    async def ingest(
        self, paths: Sequence[Path], tenant: str,
        progress: Callable[[float, float], None] | None = None,
        metadata: dict[str, str] | None = None, secrets_hidden: bool = False,
    ) -> IngestReport:
        """Ingest files and folders for `tenant`. `metadata` replaces each document's tags
        (what search can filter on); without it a document keeps the tags it had.
        `secrets_hidden` stores what looks like a secret hidden (`SecretsSeen`). A folder
        ingested again loses the documents no longer in it. `progress(done, total)` counts
        bytes of the files, and moves within a file as it is split and embedded. An unreachable
        embedder stops the run (KnowledgeError); the documents before it stay ingested."""
        reserved = sorted(set(metadata or {}) & set(BUILT_IN_TAGS))
        if reserved:
            raise KnowledgeError(f"--meta {reserved[0]}=...: `{reserved[0]}` is set from each "
                                 f"file's suffix (md, html, pdf, txt); tag with another key")
        await self._ensure_index()
        report = IngestReport()
        files, report.skipped, report.overlapping = await asyncio.to_thread(find_files, paths)
        folders = await asyncio.to_thread(
            lambda: [str(p.resolve()) + "/" for p in paths if p.is_dir()])
        total, done = float(sum(max(f.size, 1) for f in files)), 0.0
        for file in files:
            try:
                await self._ingest_one(file, tenant, report, metadata, secrets_hidden,
                                       _within(progress, done, max(file.size, 1), total))
            except EmbeddingError as exc:
                raise KnowledgeError(f"{exc} ({report.documents} documents were ingested "
                                     f"before it; run the same command again)") from None
            except KnowledgeError as exc:
                report.skipped.append(str(exc))
            done += max(file.size, 1)
            if progress is not None:
                progress(done, total)
        for prefix in folders:
            present = [f.source for f in files if str(f.path).startswith(prefix)]
            gone = await self._pool.fetch(
                "DELETE FROM kb_documents WHERE tenant = $1 AND starts_with(origin, $2)"
                " AND NOT (source = ANY($3::text[])) RETURNING source",
                tenant, prefix, present,
            )
            report.removed_documents += [r["source"] for r in gone]
        return report

    async def _ingest_one(
        self, file: SourceFile, tenant: str, report: IngestReport,
        metadata: dict[str, str] | None, hide: bool, moved: Callable[[float], None],
    ) -> None:
        """Read, split (in a thread, a piece at a time) and store one file, and note what in it
        looks like a secret (stored hidden when `hide`); the first half of its progress is
        splitting, the second embedding."""
        sections = await asyncio.to_thread(read_document, file.path)
        # a PDF's pages in it: one whose text moved to other pages (a cover page added) is
        # stored anew, or its hits would cite the old pages; so is one whose secrets are to be
        # hidden, or shown, now; and one read for them under other rules is read again
        read_as = f"secrets: {rules()}{', hidden' if hide else ''}\n"
        doc_hash = _hash(_split_settings() + read_as + "\n".join(
            s.text if s.page is None else f"{s.page}\x1f{s.text}" for s in sections))
        built_in = {"type": file.path.suffix.lower().lstrip(".")}
        if await self._unchanged(tenant, file.source, doc_hash, report, metadata, built_in,
                                 origin=str(file.path)):
            moved(1.0)
            return
        if hide:  # stored hidden: read before the text is split
            sections, found = await asyncio.to_thread(secrets_seen, file.source, sections,
                                                      hide=True)
        keyed = await _keyed_chunks(file, sections, moved)
        # else read for secrets on a thread of its own while the chunks are embedded
        # (onnxruntime and the network let go of the GIL; the splitter's regular expressions,
        # timed by nltk's ReDoS guard, do not, and are not slowed by it)
        scan = None if hide else asyncio.create_task(
            asyncio.to_thread(secrets_seen, file.source, sections, hide=False))
        try:
            await self._sync(tenant, file.source, doc_hash, keyed, report, metadata, built_in,
                             origin=str(file.path), moved=lambda f: moved(0.5 + 0.5 * f))
        finally:
            if scan is not None:
                _, found = await scan
        await self._pool.execute(
            "UPDATE kb_documents SET secrets = $3::jsonb, secrets_hidden = $4"
            " WHERE tenant = $1 AND source = $2", tenant, file.source,
            json.dumps(found.kinds if found else {}), hide)
        if found is not None:
            report.secrets.append(found)

    async def ingest_chunks(self, tenant: str, source: str, chunks: list[tuple[str, str]]) -> None:
        """Store chunks as they are, under the keys given (the evaluation's corpus ids)."""
        await self._ensure_index()
        await self._sync(tenant, source, _hash("".join(k for k, _ in chunks)),
                         [(key, text, None) for key, text in chunks], IngestReport(), {}, {})

    async def _embed(self, texts: list[str], moved: Callable[[float], None] | None,
                     ) -> list[np.ndarray]:
        vectors: list[np.ndarray] = []
        for start in range(0, len(texts), EMBED_BATCH):
            vectors += list(await self.embedder.embed_documents(
                texts[start:start + EMBED_BATCH]))
            if moved is not None:
                moved(min(start + EMBED_BATCH, len(texts)) / len(texts))
        return vectors

    async def _sync(
        self, tenant: str, source: str, doc_hash: str,
        chunks: list[tuple[str, str, int | None]], report: IngestReport,
        metadata: dict[str, str] | None, built_in: dict[str, str], *, origin: str = "",
        moved: Callable[[float], None] | None = None,
    ) -> None:
        """Make the stored chunks of `source` exactly `chunks` (key, text, page), embedding only
        the ones not stored yet with this embedder. Its tags become `metadata` and `built_in`;
        `metadata` None keeps the ones it has. `origin` is the file it was read from: a
        document read from the same file under another name is replaced by this one."""
        stored = [(key, storable(text), page) for key, text, page in chunks]
        wanted = [(key, _hash(text), text, position, page)
                  for position, (key, text, page) in enumerate(stored)]
        model = self.embedder.name
        async with self._pool.acquire() as conn, conn.transaction():
            doc_id = await _upsert_document(conn, tenant, source, origin, doc_hash, metadata,
                                            built_in)
            have = {r["chunk_key"] for r in await conn.fetch(
                "SELECT chunk_key FROM kb_chunks WHERE tenant = $1 AND document_id = $2"
                " AND embed_model = $3", tenant, doc_id, model,
            )}
            keys = [w[0] for w in wanted]
            deleted = await conn.fetchval(
                "WITH gone AS (DELETE FROM kb_chunks WHERE tenant = $1 AND document_id = $2 AND"
                " (embed_model <> $3 OR NOT (chunk_key = ANY($4::text[]))) RETURNING 1)"
                " SELECT count(*) FROM gone", tenant, doc_id, model, keys,
            )
            new = [w for w in wanted if w[0] not in have]
            vectors = await self._embed([w[2] for w in new], moved)
            # many chunks per statement, not one per chunk: the BM25 statistics' triggers run
            # per statement (a 10,000-chunk document took minutes row by row); and not all of a
            # large document in one, which can outlast the pool's 30 s command timeout on a
            # loaded machine (a 10,866-chunk statement did once)
            for start in range(0, len(new), INSERT_BATCH):
                batch = new[start:start + INSERT_BATCH]
                await conn.execute(
                    "INSERT INTO kb_chunks (tenant, document_id, chunk_key, position, text,"
                    " content_hash, embed_model, embedding, page) SELECT $1, $2, k, pos, t, h,"
                    " $3, v::vector, pg FROM unnest($4::text[], $5::int[], $6::text[],"
                    " $7::text[], $8::text[], $9::int[]) AS n (k, pos, t, h, v, pg)",
                    tenant, doc_id, model, [w[0] for w in batch], [w[3] for w in batch],
                    [w[2] for w in batch], [w[1] for w in batch],
                    [vector_literal(v) for v in vectors[start:start + INSERT_BATCH]],
                    [w[4] for w in batch],
                )
            await conn.executemany(
                "UPDATE kb_chunks SET position = $2, page = $4 WHERE tenant = $3"
                " AND chunk_key = $1",
                [(key, position, tenant, page)
                 for key, _, _, position, page in wanted if key in have],
            )
        self._probes.forget(tenant)  # committed: a probe kept from before would miss it
        report.documents += 1
        report.embedded += len(new)
        report.kept += len(wanted) - len(new)
        report.deleted += deleted

    async def _unchanged(
        self, tenant: str, source: str, doc_hash: str, report: IngestReport,
        metadata: dict[str, str] | None, built_in: dict[str, str], *, origin: str,
    ) -> bool:
        """Whether `source` is stored with this text, split the same way, every chunk of it
        embedded with this embedder, and read for secrets: then only its tags and origin are
        brought up to date, as `_sync` would, and it is neither split nor embedded again (a
        folder ingested again costs the reading of its files, not their splitting)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT count(c.id) AS chunks, count(c.id) FILTER (WHERE c.embed_model = $4)"
                " AS current FROM kb_documents d JOIN kb_chunks c ON c.document_id = d.id"
                " WHERE d.tenant = $1 AND d.source = $2 AND d.content_hash = $3"
                " AND d.secrets IS NOT NULL",
                tenant, source, doc_hash, self.embedder.name)
            if row is None or row["chunks"] == 0 or row["current"] != row["chunks"]:
                return False
            await _upsert_document(conn, tenant, source, origin, doc_hash, metadata, built_in)
        report.documents += 1
        report.kept += row["chunks"]
        return True

    async def _check_model(self, tenant: str) -> None:
        models = await stored_models(self._pool, tenant)
        if models and self.embedder.name not in models:
            raise KnowledgeError(
                f"tenant {tenant}'s knowledge was embedded with {', '.join(models)}, not "
                f"{self.embedder.name}: run `sightline kb ingest` again to re-embed it"
            )

    async def search(
        self, tenant: str, query: str, k: int = 5, *, fusion: str | None = None,
        candidates: int = 20, where: dict[str, str] | None = None,
        vector: QueryVector | None = None,
    ) -> list[Hit]:
        """The best `k` chunks of `tenant` for `query`: vector and keyword rankings fused;
        `where` keeps only documents whose metadata has all of its keys and values; `fusion`
        is the embedder's unless given."""
        fusion = fusion or self.embedder.fusion
        query = bm25.searchable(query)
        if fusion not in FUSIONS:
            raise KnowledgeError(f"fusion must be one of {', '.join(FUSIONS)}")
        vector_hits, keyword_hits = await self.rankings(tenant, query, candidates, where, vector)
        if not vector_hits:
            await self._check_model(tenant)
        fused = fuse(fusion, vector_hits, keyword_hits)
        if self.reranker is None or len(fused) < 2:
            return fused[:k]
        try:
            order = await self.reranker.rerank(query, [h.text for h in fused], k)
        except RerankError as exc:
            log.warning("rerank failed, keeping the fused order: %s", exc)
            return fused[:k]
        return [replace(fused[index], score=round(score, 6)) for index, score in order][:k]

    async def has_any(self, tenant: str) -> bool:
        """Whether the tenant has knowledge at all: one index probe, no embedding call. Asked
        again within PROBE_HOLD_S, the same probe answers (a turn's recall and its live assist
        both ask, moments apart, while a tenant has none); a failed probe is not kept, and
        this knowledge base's own ingest asks anew."""
        return bool(await self._probes(tenant, lambda: self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM kb_chunks WHERE tenant = $1)", tenant),
            max_age_s=PROBE_HOLD_S))

    async def lookup(
        self, tenant: str, question: str, k: int = 3, vector: QueryVector | None = None,
    ) -> list[Hit]:
        """What a turn gets: the best `k` hits that share at least one word with the question
        (a nearest vector alone is not evidence of relevance, and costs prompt tokens). Probe
        `has_any` first to spare a tenant without knowledge the embedding call."""
        hits = await self.search(tenant, question, k, vector=vector)
        return [h for h in hits if h.keyword_rank is not None]

    @staticmethod
    def _documents_filter(where: dict[str, str] | None, args: list[Any]) -> str:
        """SQL keeping the documents whose metadata has `where` (its JSON appended to `args`)."""
        if not where:
            return ""
        args.append(json.dumps(where))
        return (f" AND c.document_id IN (SELECT id FROM kb_documents WHERE tenant = $1"
                f" AND metadata @> ${len(args)}::jsonb)")

    async def _vector_rows(
        self, conn: asyncpg.Connection, tenant: str, vector: str, limit: int,
        where: dict[str, str] | None,
    ) -> list[asyncpg.Record]:
        dim = int(self.embedder.dim)
        # the model is inlined, not a parameter: the HNSW index is partial, one per model, and
        # a cached generic plan could not prove it applies (it would scan every vector)
        model = self.embedder.name.replace("'", "''")
        args: list[Any] = [tenant, vector, limit]
        documents = self._documents_filter(where, args)
        return await conn.fetch(
            f"SELECT c.id, c.text, d.source, c.chunk_key, c.page, c.score FROM ("
            f" SELECT c.id, c.document_id, c.text, c.chunk_key, c.page,"
            f" c.embedding::vector({dim}) <=> $2::vector({dim}) AS distance,"
            f" 1 - (c.embedding::vector({dim}) <=> $2::vector({dim})) AS score"
            f" FROM kb_chunks c WHERE c.tenant = $1 AND c.embed_model = '{model}'"
            f"{documents} ORDER BY distance LIMIT $3) c"
            f" JOIN kb_documents d ON d.id = c.document_id ORDER BY c.distance",
            *args,
        )

    async def _keyword_rows(
        self, conn: asyncpg.Connection, tenant: str, query: str, limit: int,
        where: dict[str, str] | None,
    ) -> list[asyncpg.Record]:
        """BM25 over the tenant's chunks (statistics per tenant, migration 0012)."""
        args: list[Any] = [tenant, limit, query]
        documents = self._documents_filter(where, args)
        scores = bm25.scores("kb_bm25", "tenant = $1", "$3")
        # the chunks are read for the best `limit` alone; a metadata filter reads every
        # candidate's, for its document
        kept = (f" JOIN kb_chunks c ON c.id = s.id WHERE c.tenant = $1{documents}"
                if documents else "")
        return await conn.fetch(
            "SELECT c.id, c.text, d.source, c.chunk_key, c.page, s.score FROM ("
            f" SELECT s.id, s.score FROM {scores} s{kept} ORDER BY s.score DESC, s.id LIMIT $2"
            ") s JOIN kb_chunks c ON c.id = s.id JOIN kb_documents d ON d.id = c.document_id"
            " ORDER BY s.score DESC, s.id",
            *args,
        )

    async def rankings(
        self, tenant: str, query: str, limit: int, where: dict[str, str] | None = None,
        query_vector: QueryVector | None = None,
    ) -> tuple[list[Hit], list[Hit]]:
        """The vector ranking and the keyword ranking, each up to `limit` long (`query_vector`:
        the query embedded, or being embedded, by this knowledge base's embedder). The keyword
        ranking runs first, while the query is embedded in its thread; both on one connection."""
        await self._ensure_index()
        query = bm25.searchable(query)
        owned = query_vector is None  # embedded here, so cancelled here if the keywords fail
        vector: QueryVector = (asyncio.ensure_future(self.embedder.embed_query(query))
                               if query_vector is None else query_vector)
        try:
            async with self._pool.acquire() as conn:
                keyword_rows = await self._keyword_rows(conn, tenant, query, limit, where)
                try:
                    found = await resolved(vector)
                except EmbeddingError as exc:
                    raise KnowledgeError(str(exc)) from None
                vector_rows = [] if found is None else await self._vector_rows(
                    conn, tenant, vector_literal(found), limit, where)
        finally:
            if owned and isinstance(vector, asyncio.Future):
                if not vector.done():
                    vector.cancel()
                elif not vector.cancelled():
                    vector.exception()  # seen, when the keywords failed first: not logged

        def hits(rows: list[asyncpg.Record]) -> list[Hit]:
            return [Hit(r["id"], r["text"], r["source"], float(r["score"]), key=r["chunk_key"],
                        page=r["page"]) for r in rows]
        return hits(vector_rows), hits(keyword_rows)


def fuse(fusion: str, vector_hits: list[Hit], keyword_hits: list[Hit]) -> list[Hit]:
    """The two rankings fused by `fusion`, one of FUSIONS (an embedder's `fusion`; a name
    that is not one raises instead of quietly picking another)."""
    return FUSERS[fusion](vector_hits, keyword_hits)


# a ranking -> how each of its hits scores, from its rank and its own score
Scorer = Callable[[list[Hit]], Callable[[int, float], float]]


def rrf(vector_hits: list[Hit], keyword_hits: list[Hit]) -> list[Hit]:
    """Reciprocal-rank fusion: each list adds 1 / (60 + rank); scores' scales do not matter."""
    return _fuse(vector_hits, keyword_hits, lambda _hits: lambda rank, _score: 1 / (RRF_K + rank))


def weighted(vector_hits: list[Hit], keyword_hits: list[Hit], vector_weight: float = 0.5,
             ) -> list[Hit]:
    """Weighted score fusion: each list's scores min-max normalised, then weighted."""
    def normalised(weight: float) -> Scorer:
        def scorer(hits: list[Hit]) -> Callable[[int, float], float]:
            low, high = min(h.score for h in hits), max(h.score for h in hits)
            return lambda _rank, value: weight * ((value - low) / (high - low)
                                                  if high > low else 1.0)
        return scorer
    return _fuse(vector_hits, keyword_hits, normalised(vector_weight),
                 normalised(1 - vector_weight))


FUSERS: dict[str, Callable[[list[Hit], list[Hit]], list[Hit]]] = {"rrf": rrf,
                                                                   "weighted": weighted}
FUSIONS = tuple(FUSERS)


def _fuse(
    vector_hits: list[Hit], keyword_hits: list[Hit], vector_scorer: Scorer,
    keyword_scorer: Scorer | None = None,
) -> list[Hit]:
    keyword_scorer = keyword_scorer or vector_scorer
    fused: dict[int, dict[str, Any]] = {}
    for hits, scorer, rank_field in ((vector_hits, vector_scorer, "vector_rank"),
                                     (keyword_hits, keyword_scorer, "keyword_rank")):
        if not hits:
            continue
        score_of = scorer(hits)  # what depends on the whole ranking (its bounds), once
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.id, {"hit": hit, "score": 0.0})
            entry["score"] += score_of(rank, hit.score)
            entry[rank_field] = rank
    ranked = sorted(fused.values(), key=lambda e: (-e["score"], e["hit"].id))
    return [
        replace(e["hit"], score=round(e["score"], 6), vector_rank=e.get("vector_rank"),
                keyword_rank=e.get("keyword_rank"))
        for e in ranked
    ]
