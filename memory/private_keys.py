"""Private keys in text: which lines are a key's block, its header, body and footer.

A key is many lines of base64 between a header and a footer (`-----BEGIN RSA PRIVATE KEY-----`
… `-----END RSA PRIVATE KEY-----`), and no line of its body says it is a key. So its lines are
found as a block (`key_lines`), not one line at a time as memory/secret_text.py finds the rest.

On a screen, the block is rarely whole and rarely read right. OCR reads the header's dashes as
`—` and may lose a letter of it (`EGIN RSA PRIVATE KEY`), an editor's line numbers come before
each line (`14 1c/ycOk…`), a line may be misread beyond recognition, and the footer or the
header is often past the window's edge (`head -14 id_rsa`, a scrolled editor). So a header is
matched as OCR reads it, a block without its footer runs on for as long as its lines look like
a key's body, one stray line among them included, and a footer without its header takes the
body lines above it. What follows a footless key (`ssh-add`, the next command) is kept. OCR may
also read a body line apart from the others, after a column of line numbers: in a text that
holds a key, every line that looks like a key's body and as random as one is hidden (not
code beside a header in a library's source: `ed25519.Ed25519PrivateKey,`). And an editor
scrolled past the header and the footer reads only the middle lines that scrolled into view:
a line as random as a key's body with no word in it is one on its own (`_lone`), and the
body runs on from it both ways.

detect-secrets finds a key by its header (`PrivateKeyDetector`), the exact text. Its headers
are searched too (`_opens`), so a kind a later version adds is found here; `_HEADER` holds
today's as OCR reads them, and those it lacks (`ENCRYPTED PRIVATE KEY`, PuTTY's version 3).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from detect_secrets.plugins.private_key import PrivateKeyDetector

PRIVATE_KEY = "private key"
KEY_LINES = "key lines"  # a key's body, or as random a secret, without a header or footer
# a header as OCR reads it: `BEGIN` with a letter lost or misread, up to a few words of kind
_HEADER = re.compile(
    r"(?:B?EG[I1l|]N|BEGI)\s{1,3}[A-Z0-9 ]{0,30}PRIVATE KEY|PuTTY-User-Key-File-\d")
_FOOTER = re.compile(r"\bE?ND\s{1,3}[A-Z0-9 ]{0,30}PRIVATE KEY")
# a header or footer whose word was lost: which it is depends on whether a block is open. Each
# run is bounded: an unbounded run of dashes took time quadratic in a line of them (20,000
# dashes and the words: 4.8 s)
_EDGE = re.compile(
    r"[-—–]{2}\s{0,3}[A-Z0-9 ]{0,30}PRIVATE KEY|PRIVATE KEY(?: BLOCK)?\s{0,3}[-—–]{2}")
# the fields some formats put before or inside the body: PEM's encryption (`Proc-Type`,
# `DEK-Info`), PGP's `Version` and `Comment`, SSH2's `Subject`, PuTTY's lines and MAC
_FIELD = re.compile(
    r"\W{0,3}\d{0,4}\W{0,2}\s*(?:Proc-Type|DEK-Info|Version|Comment|Subject|Encryption|"
    r"Public-Lines|Private-Lines|Private-MAC|Private-Hash|Key-Derivation|Argon2-[\w-]+)\s*:")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_MIXED = re.compile(r"(?=\S*[A-Z])(?=\S*[a-z])\S{12,}")
_RUN = re.compile(r"[A-Za-z0-9+/=]{12}")
_DIGIT_OR_MARK = re.compile(r"[\d+/]")
_VOWELS = frozenset("AEIOUaeiou")
# a line that names what it holds (`GITHUB_TOKEN=…`, `client-key-data: …`): no line of a key's
# body does; its value alone may still be one (`labelled_value`). Not base64's padding
# (`…5w==`) nor a URL's scheme (`https://`)
_LABELLED = re.compile(r"\s*(?:export\s+)?[\w.\-\"']+\s*[:=](?![=/])\s*[\"']?(?=\S)")
_PROSE_WORD = re.compile(r"[a-z]{2,}[:,.]?")
# what a key's body never holds, where names do: a folder of small letters (`src/`, `tests/`),
# a file's extension (`Anchor.hh`, `SetClassProcs.3:`), an address's `@` (a mail's Message-ID),
# a list's commas (`GtkCellView, GtkDialog,`): a changelog's paths and names in mixed case and
# digits are otherwise as random as a key's line
_NOT_IN_A_KEY = re.compile(
    r"(?:^|[\s/*])[a-z]{3,}/|[A-Za-z0-9]\.[A-Za-z0-9]{1,4}(?=[\s:,;)|]|$)|@|,\s")


def _body(line: str) -> bool:
    """Whether a line looks like a key's body as OCR reads it: at least 16 characters, nearly
    all base64 (an editor's line number and a misread character or two aside), a run of 12
    base64 characters and a piece of 12 or more in mixed case among them, a digit, `+` or `/`,
    and at most one word of prose (a body split by OCR's spaces has pieces of every case;
    "Identity added: /root/.ssh/id_rsa" has no capital in its longest run, "$ git push origin
    main" four words)."""
    if _RUN.search(line) is None:  # most lines have no such run: one search, not a count
        return False
    tokens = line.split()
    chars = "".join(tokens)
    if len(chars) < 16 or sum(char in _BASE64 for char in chars) < 0.85 * len(chars):
        return False
    return (any(_MIXED.fullmatch(token) for token in tokens)
            and _DIGIT_OR_MARK.search(chars) is not None
            and sum(1 for token in tokens if _PROSE_WORD.fullmatch(token)) <= 1)


def _random(line: str) -> bool:
    """Whether a line's base64 characters change class (capital, small letter, digit or mark)
    from one to the next as often as a random key's do: ~63% of the time, where a name in code
    (`Ed25519PrivateKey`) changes at a third. At 45%, about two lines of 64 random characters
    in a thousand fail it (a line of 24, four in a hundred): a body line it misses is taken by
    the walk from a header, a footer or a neighbour it does not miss."""
    chars = [char for char in line if char in _BASE64]
    classes = [char.isupper() + 2 * char.islower() for char in chars]
    changes = sum(a != b for a, b in pairwise(classes))
    return len(chars) > 1 and changes >= 0.45 * (len(chars) - 1)


def _marked(line: str) -> bool:
    """Whether a line may be a header or footer: every one names itself (most lines do not,
    and this one search spares them the patterns)."""
    return "PRIVATE KEY" in line or "PuTTY-User-Key-File" in line


def _opens(line: str) -> bool:
    """Whether a line opens a key's block: a header, or an edge that is no footer."""
    if not _marked(line):
        return False
    return (_HEADER.search(line) is not None
            or any(pattern.search(line) for pattern in PrivateKeyDetector.denylist)
            or (_EDGE.search(line) is not None and _FOOTER.search(line) is None))


def _run(lines: Sequence[str], bodies: set[int], start: int, step: int, *,
         labels: bool = True) -> list[int]:
    """The lines of a block from `start` on, walking by `step` (1: down from a header, -1: up
    from a footer): each line that looks like the body or a field, the lines between them, and
    going down, the footer (or an edge); it ends at the second line in a row that is neither.
    Without `labels` (a block found from its middle, no header in sight), a line that names
    what it holds is neither: a `.env` file's `DATABASE_URL=…` beside a token is no key.
    `bodies`: the lines that look like a key's body (`_body`, judged once a line)."""
    taken: list[int] = []
    held: list[int] = []  # lines since the last body line, kept if another body line follows
    at = start
    while 0 <= at < len(lines):
        line = lines[at]
        if step > 0 and _marked(line) and (_FOOTER.search(line) or _EDGE.search(line)):
            return [*taken, *held, at]
        if (labels or not _LABELLED.match(line)) and (at in bodies or _FIELD.match(line)):
            taken += [*held, at]
            held = []
        elif line.strip() and any(lines[i].strip() for i in held):
            break
        else:
            held.append(at)
        at += step
    return taken


def _lone(line: str) -> bool:
    """Whether a line with no header or footer near it is a line of a key's body, or a secret
    of the same kind: 40 base64 characters or more, nine in ten of the line (OCR's `|` and
    split pieces, an editor's line number aside), capitals and small letters (a sixth each at
    least) and digits, as random as a key's, with as few vowels as random letters have (a
    sixth of them where words and names in code have a third or more). A public key or a
    certificate is hidden too; not a hash in hex, a URL, a path or a file's name
    (`_NOT_IN_A_KEY`), a name in code, prose."""
    tokens = line.split()
    if len(tokens) > 1 and len(tokens[0]) <= 3:  # a line number as OCR reads it
        tokens = tokens[1:]
    chars = "".join(tokens)
    coded = [char for char in chars if char in _BASE64]
    letters = [char for char in coded if char.isalpha()]
    return (len(tokens) <= 6 and len(coded) >= 40 and len(coded) >= 0.9 * len(chars)
            and "://" not in line and not _NOT_IN_A_KEY.search(line)
            and sum(map(str.isupper, coded)) >= len(coded) / 6
            and sum(map(str.islower, coded)) >= len(coded) / 6
            and any(map(str.isdigit, coded))
            and sum(char in _VOWELS for char in letters) <= 0.3 * len(letters)
            and _random(chars))


def labelled_value(line: str) -> tuple[int, int] | None:
    """Where the value of a line that names what it holds is one a key's body line would be
    on its own (`_lone`): `client-key-data: LS0tLS1CRUdJTi…` in a kubeconfig, a token of random
    base64 after its name. The line keeps its name: it is what the user looks for."""
    label = _LABELLED.match(line)
    if label is None or "://" in line:
        return None
    value = line[label.end():].rstrip().rstrip("\"',")
    if len(value.split()) > 2 or not _lone(value):  # one token, or two as OCR splits it
        return None
    return label.end(), label.end() + len(value)


def key_lines(lines: Sequence[str]) -> tuple[set[int], Counter[str]]:
    """The indexes of the lines that are a private key's block, and how many were found of
    each kind: `PRIVATE_KEY` blocks, from a header down to its footer, or without one as far as
    its body goes, and from a footer without a header above it up as far as the body goes;
    else `KEY_LINES`, the lines of a key's body read without its edges (an editor scrolled past
    the header reads only the lines that scrolled into view): from each line that is one on its
    own (`_lone`), up and down as far as the body goes."""
    keyed: set[int] = set()
    keys = 0
    bodies = {at for at, line in enumerate(lines) if _body(line)}
    at = 0
    while at < len(lines):
        line = lines[at]
        if _opens(line):
            block = _run(lines, bodies, at + 1, 1)
            keyed.update([at, *block])
            keys += 1
            at = max(block, default=at) + 1
            continue
        if _marked(line) and _FOOTER.search(line):
            keyed.update([at, *_run(lines, bodies, at - 1, -1)])
            keys += 1
        at += 1
    if keys:  # OCR may read a line of the body apart from the rest (after the gutter's numbers)
        keyed.update(at for at in bodies if _random(lines[at]))
        return keyed, Counter({PRIVATE_KEY: keys})
    for at in sorted(bodies):  # lines of a body read without its edges: each a block's middle
        if at not in keyed and not _LABELLED.match(lines[at]) and _lone(lines[at]):
            keyed.update([at, *_run(lines, bodies, at - 1, -1, labels=False),
                          *_run(lines, bodies, at + 1, 1, labels=False)])
    return keyed, Counter({KEY_LINES: 1} if keyed else {})
