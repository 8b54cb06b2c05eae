"""Credentials in the lines of files that hold them by their place on the line, not by a name.

`cat ~/.pgpass` shows `db.example.com:5432:app:bob:S3cret`: PostgreSQL's password file gives
each field its place (host, port, database, user, password), so no `password=` precedes the
password for memory/secret_text.py's assignment rules to find. `/etc/shadow`, an `.htpasswd`
file and a database's users table show a password's hash as crypt(3) writes it (`$6$salt$…`,
`$2y$10$…`, `$apr1$…`, `$argon2id$…`): not the password, but one that a cracker's word list
turns back into it offline, so it is hidden like one. detect-secrets has rules for neither.

`found` yields (kind, start, end) spans of the values; each rule is tried only on a line that
holds what it must (`$`, three `:`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# `$id$` of crypt(3)'s schemes (MD5, bcrypt, SHA-256 and SHA-512 crypt, Apache's MD5, yescrypt,
# gost-yescrypt, scrypt, Argon2), then 8 characters or more, or a salt (or bcrypt's cost), `$`
# and 4 or more: not a shell's `$1$2`. OCR may lose the `:` before it (`admin$apr1$`) and put
# a space after a `$` or inside the salt (`$2y$ 10$…`, `$apr1$Qx7b2L pZ$…`); not a word of prose
# after it ("the $2x$ and $2y$ variants")
_PIECE = r"(?:[^\s:'\"`,;$]|,(?=[^\s,]))"  # Argon2's `m=65536,t=3,p=4` holds commas
_HASH = re.compile(
    r"(?<![$])\$(?:1|2[abxy]|5|6|apr1|y|gy|7|argon2(?:id|i|d))\$(?!\s?[a-z]+(?:[\s.,;]|$))\s?"
    rf"(?:{_PIECE}{{8,}}|{_PIECE}{{2,}}\s?{_PIECE}*\$\s?{_PIECE}{{4,}})(?:{_PIECE}|\$)*")
# a `.pgpass` line, the whole line: host, port (or `*`), database, user, password of 4 or more
# characters; OCR may put an editor's line number before it, a space after a colon and read
# the last colon as `'` or `;`. Not a compiler's `main.go:12:5: undefined: x` (a column where
# the database is) nor a time (`12:30:45:10:99`, a password of digits alone)
_PGPASS = re.compile(
    r"\s*(?:\d{1,3}\s+)?[^\s:]+:\s?(?:\d{1,5}|\*):\s?(?!\d+:)[^\s:]+:\s?[^\s:']+[:;']\s?"
    r"(?P<value>[^\s:*][^\s:]{3,})\s*")


def found(line: str) -> Iterator[tuple[str, int, int]]:
    """The password hashes and the `.pgpass` password in `line`: (kind, start, end) each."""
    if "$" in line:
        for match in _HASH.finditer(line):
            yield "password hash", *match.span()
    if line.count(":") >= 3 and (pgpass := _PGPASS.fullmatch(line)):
        if not pgpass["value"].isdigit():
            yield "password", *pgpass.span("value")
