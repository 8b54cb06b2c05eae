"""BM25 keyword ranking inside Postgres, shared by knowledge search, earlier-message recall and
screen search.

The embedded Postgres has no BM25 extension and `ts_rank_cd` has neither inverse document
frequency nor length normalisation, so statement-level triggers keep each searched table's
statistics exact (migrations 0012 and 0013: `<prefix>_stats`, documents and total length per
scope; `<prefix>_terms`, each lexeme's document frequency per scope; a `doc_len` column on the
rows; migration 0014: `<prefix>_postings`, each row's lexemes with their occurrences and the
row's length) and the score is computed here in SQL from the postings alone. A scope is what
the statistics are kept per (a tenant for knowledge, a tenant and user for messages and screen
events); a search over several scopes (screen search across a tenant's users) sums them, which
is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

# BM25's term-frequency saturation and length normalisation (Robertson's usual values, Lucene's
# defaults)
K1 = 1.2
B = 0.75
MAX_QUERY_LEXEMES = 8  # the rarest of a question's lexemes that keyword search ranks by
# At most this many row matches (summed over lexemes) get scored. 500 dropped the mid-frequency
# words of questions over a long conversation: LongMemEval's 10,866 messages, keyword recall@10
# 0.513 at 500, 0.598 at 2,000, 0.595 with no limit (bench.conversations, README).
CANDIDATES = 2000


@dataclass(frozen=True)
class Terms:
    """The lexemes a search ranks by, their inverse document frequencies in the scope, and the
    scope's mean document length; the statistics' prefix and the scope's SQL condition, which
    the postings are read with."""

    prefix: str
    scope: str
    lexemes: list[str]
    idfs: list[float]
    mean_len: float

    def scores(self, first: int, rows: str = "") -> str:
        """A subquery of `(id, score)`: the BM25 score of each row of the scope that holds one
        of the lexemes (and whose postings meet the SQL condition `rows`, on `row_id`), over
        the parameters `$first` on, whose values `args()` gives; the scope's own parameters are
        the caller's, as given to `terms()`. Per lexeme, idf * tf * (k1 + 1) / (tf + k1 * (1 -
        b + b * length / mean length)), tf being its occurrences in the row. Only the
        lexemes' postings are read (an index range each): the rows themselves are not, so a
        caller joins them for its best few alone."""
        lexemes, idfs, mean = (f"${first + n}" for n in range(3))
        return (
            f"(SELECT p.row_id AS id, sum(q.idf * p.tf * {K1 + 1} / (p.tf + {K1} * (1 - {B}"
            f" + {B} * p.doc_len / {mean}::float8))) AS score"
            f" FROM unnest({lexemes}::text[], {idfs}::float8[]) q (lexeme, idf)"
            f" JOIN {self.prefix}_postings p ON p.lexeme = q.lexeme"
            f" WHERE {self.scope}{f' AND {rows}' if rows else ''} GROUP BY p.row_id)")

    def args(self) -> list[Any]:
        """The values of `scores()`' parameters, in order."""
        return [self.lexemes, self.idfs, self.mean_len]


async def terms(
    conn: asyncpg.Connection, prefix: str, scope: str, scope_args: Sequence[Any], query: str,
) -> Terms | None:
    """The question's lexemes to rank by (English stemming, stopwords out) in the statistics
    `prefix`, over the scopes where the SQL condition `scope` holds (its parameters
    `scope_args`); None when none of them is there (they would match nothing). The rarest
    first, at most `MAX_QUERY_LEXEMES`, while the rows they are in add up to at most
    `CANDIDATES` (the rarest is always kept): a word in much of a large corpus ranks little
    (low idf) and would make Postgres score much of the table on every search."""
    text = f"${len(scope_args) + 1}"
    rows = await conn.fetch(
        f"SELECT t.lexeme, t.docs, s.docs AS scope_docs, s.total_len FROM"
        f" (SELECT lexeme, sum(docs) AS docs FROM {prefix}_terms WHERE {scope} AND lexeme ="
        f" ANY (tsvector_to_array(to_tsvector('english', {text}))) GROUP BY lexeme"
        f" HAVING sum(docs) > 0) t,"
        f" (SELECT sum(docs) AS docs, sum(total_len) AS total_len FROM {prefix}_stats"
        f" WHERE {scope}) s ORDER BY t.docs, t.lexeme", *scope_args, query)
    if not rows:
        return None
    docs = max(int(rows[0]["scope_docs"]), 1)
    kept, matches = rows[:1], rows[0]["docs"]
    for row in rows[1:MAX_QUERY_LEXEMES]:
        matches += row["docs"]
        if matches > CANDIDATES:
            break
        kept.append(row)
    return Terms(prefix, scope, [r["lexeme"] for r in kept],
                 [math.log(1 + (docs - r["docs"] + 0.5) / (r["docs"] + 0.5)) for r in kept],
                 int(rows[0]["total_len"]) / docs)
