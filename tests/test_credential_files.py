"""Credentials a file holds by their place on the line: a `.pgpass` line's password and a
password's hash as crypt(3), `.htpasswd` and `/etc/shadow` write it.

Protects: each is hidden and counted (`password`, `password hash`), the fields around it kept;
what only looks like one is kept (a compiler's `file:line:col: message`, a time, `.pgpass`'s
`*` wildcard, `/etc/passwd`'s `x`, a shell's `$1$2`); read off a terminal by the bundled
Tesseract at 12 to 20 px (an editor's line number before a line, a colon read as `'`, the
colon before a hash lost and its salt split by a space), no password or hash is left readable.
"""

from __future__ import annotations

import pytest
from PIL import ImageFont
from synthetic_screen import Desk
from test_secret_text import _frame_text

from memory.secret_text import HIDDEN, hide_secrets


@pytest.mark.parametrize(("line", "shown", "kind"), [
    ("db.example.com:5432:app:bob:S3cretPass", f"db.example.com:5432:app:bob:{HIDDEN}",
     "password"),
    ("*:*:*:postgres:hunter2pw", f"*:*:*:postgres:{HIDDEN}", "password"),
    ("2 db.example.com:5432:app:bob's3cretPass9", f"2 db.example.com:5432:app:bob'{HIDDEN}",
     "password"),  # as OCR read an editor's line 2
    ("admin:$apr1$Qx7b2LpZ$Kd8fJ2mN4pQ6rS8tU0vW1.", f"admin:{HIDDEN}", "password hash"),
    ("admin$apr1$Qx7b2L pZ$kd8tJ2mN4pQersstUOvW1", f"admin{HIDDEN}", "password hash"),  # OCR
    ("bob:$6$rounds=5000$saltsalt$Wk7fJ3:19000:0:99999:7:::",
     f"bob:{HIDDEN}:19000:0:99999:7:::", "password hash"),
    ('hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$abcdEFGH1234"', f'hash = "{HIDDEN}"',
     "password hash"),
])
def test_a_files_credential_is_hidden_by_its_place(line: str, shown: str, kind: str) -> None:
    assert hide_secrets([line]) == ([shown], {kind: 1})


@pytest.mark.parametrize("line", [
    "main.go:12:5: undefined: xyzw", "src/app.py:120:8:E501:line", "12:30:45:10:99",
    "localhost:5432:*:postgres:*", "db:5432:app:bob:1234", "root:x:0:0:root:/root:/bin/bash",
    "echo $1$2$3 done", "costs $5 $6 and $1$ total", "x=$1$y",
])
def test_what_only_looks_like_one_is_kept(line: str) -> None:
    assert hide_secrets([line]) == ([line], {})


TERMINAL = ["$ cat ~/.pgpass", "db.example.com:5432:app:bob:S3cretPass9",
            "*:*:*:postgres:Hunter2pw", "$ cat /etc/apache2/.htpasswd",
            "admin:$apr1$Qx7b2LpZ$Kd8fJ2mN4pQ6rS8tU0vW1.",
            "deploy:$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"]
SECRETS = ("S3cret", "Hunter2", "Qx7b2L", "Kd8fJ2", "N9qo8u", "ZMRZoM")


@pytest.mark.parametrize("size", [12, 14, 16, 20])
def test_a_terminals_password_files_are_hidden_as_the_screen_reader_reads_them(
        size: int) -> None:
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False, lines=TERMINAL)
    desk.font = ImageFont.load_default(size=size)
    read = _frame_text(desk.frame()).split("\n")
    shown, _ = hide_secrets(read)
    assert not [line for line in shown
                if any(secret.lower() in line.lower() for secret in SECRETS)], (read, shown)
    assert [line for line in shown if "cat" in line] == [line for line in read if "cat" in line]
