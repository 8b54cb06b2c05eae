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

from .db import storable

# BM25's term-frequency saturation and length normalisation (Robertson's usual values, Lucene's
# defaults)
K1 = 1.2
B = 0.75
MAX_QUERY_LEXEMES = 8  # the rarest of a question's lexemes that keyword search ranks by
# At most this many row matches (summed over lexemes) get scored. 500 dropped the mid-frequency
# words of questions over a long conversation: LongMemEval's 10,866 messages, keyword recall@10
# 0.513 at 500, 0.598 at 2,000, 0.595 with no limit (bench.conversations, README).
CANDIDATES = 2000
# A longer question is searched by its beginning: its rarest lexemes rank, an embedder reads a
# few hundred tokens of it, and Postgres refuses a tsvector over 1 MB (a pasted log would fail
# the whole lookup rather than be searched)
MAX_QUERY_CHARS = 10_000


def searchable(question: str) -> str:
    """`question` as the searches can send it: at most MAX_QUERY_CHARS, and no NUL (Postgres
    text cannot hold one; a typed question with one would fail every search)."""
    return storable(question[:MAX_QUERY_CHARS])


def terms(prefix: str, scope: str, text: str) -> str:
    """A subquery of `(lexeme, idf, mean_len)`: the lexemes of the question in the SQL
    parameter `text` (English stemming, stopwords out) to rank by in the statistics `prefix`,
    over the scopes where the SQL condition `scope` holds, each with its inverse document
    frequency there, and the scope's mean document length; no row when none of them is there
    (they would match nothing). The rarest first, at most `MAX_QUERY_LEXEMES`, while the rows
    they are in add up to at most `CANDIDATES` (the rarest is always kept): a word in much of
    a large corpus ranks little (low idf) and would make Postgres score much of the table on
    every search. idf = ln(1 + (N - df + 0.5) / (df + 0.5)), N the scope's documents."""
    return (
        "SELECT q.lexeme, ln(1 + (s.docs - q.docs + 0.5) / (q.docs + 0.5)) AS idf,"
        " s.total_len / s.docs AS mean_len FROM"
        " (SELECT lexeme, docs, row_number() OVER w AS rank, sum(docs) OVER w AS running FROM"
        f" (SELECT lexeme, sum(docs)::float8 AS docs FROM {prefix}_terms WHERE {scope}"
        f" AND lexeme = ANY (tsvector_to_array(to_tsvector('english', {text})))"
        " GROUP BY lexeme HAVING sum(docs) > 0) q WINDOW w AS (ORDER BY docs, lexeme)) q,"
        " (SELECT greatest(sum(docs), 1)::float8 AS docs, sum(total_len)::float8 AS total_len"
        f" FROM {prefix}_stats WHERE {scope}) s"
        f" WHERE q.rank = 1 OR (q.rank <= {MAX_QUERY_LEXEMES} AND q.running <= {CANDIDATES})")


def scores(prefix: str, scope: str, text: str, rows: str = "") -> str:
    """A subquery of `(id, score)`: the BM25 score, for the question in the SQL parameter
    `text`, of each row of the scope that holds one of its `terms()` (and whose postings meet
    the SQL condition `rows`, on `row_id`); the parameters are the caller's. Per lexeme, idf *
    tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / mean length)), tf being its occurrences
    in the row. One statement: the lexemes are chosen and scored in one round trip. They go
    into arrays, computed once, so that the postings are read in one index scan of the
    lexemes' ranges (`= ANY`), whatever the table's statistics say: a join to the chosen
    lexemes, planned before the postings were ever analysed, read all of a user's postings.
    The rows themselves are not read, so a caller joins them for its best few alone."""
    return (
        f"(WITH t AS ({terms(prefix, scope, text)}),"
        " a AS MATERIALIZED (SELECT array_agg(lexeme) AS lexemes, array_agg(idf) AS idfs,"
        " min(mean_len) AS mean_len FROM t)"
        " SELECT p.row_id AS id, sum((SELECT idfs FROM a)[array_position((SELECT lexemes FROM"
        f" a), p.lexeme)] * p.tf * {K1 + 1} / (p.tf + {K1} * (1 - {B} + {B} * p.doc_len::float8"
        f" / (SELECT mean_len FROM a)))) AS score FROM {prefix}_postings p"
        f" WHERE {scope} AND p.lexeme = ANY ((SELECT lexemes FROM a)::text[])"
        f"{f' AND {rows}' if rows else ''} GROUP BY p.row_id)")
