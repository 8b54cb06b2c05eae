"""Private keys are never kept: a key's block is hidden whole, however much of it a screen shows.

Protects: a key from its header to its footer is hidden and counted once; a header as OCR reads
it (dashes as `—`, a letter of `BEGIN` lost) and the headers detect-secrets lacks (`ENCRYPTED
PRIVATE KEY`, PuTTY's) open a block; a key cut off by the screen's edge is hidden as far as its
body goes, one garbled line inside it included, and what follows it is kept (it was all hidden
before); a footer whose header scrolled away hides the body above it, not the command before;
a header named in prose hides that line only; a key's body lines read without its header or
footer (an editor scrolled past them) are hidden from each line as random as a key's, but not
a hash in hex, a URL, a name in code or prose; a line that names what it holds (`TOKEN=…`)
keeps its name. Read off a drawn terminal by the bundled
Tesseract at 12 to 20 px, no part of a key's body is left readable, and the commands around it
are (at 14 px the header read `EGIN RSA PRIVATE KEY` kept the whole key before).
"""

from __future__ import annotations

import random
import string

import pytest
from PIL import ImageFont
from synthetic_screen import Desk
from test_secret_text import _frame_text

from memory.secret_text import HIDDEN, hide_secrets, secret_kind

_BASE64 = string.ascii_letters + string.digits + "+/"


def body(lines: int, seed: int = 7) -> list[str]:
    """A key's body as PEM writes it, 64 characters a line (made up, from a seeded random)."""
    chosen = random.Random(seed)
    return ["MIIEowIBAAKCAQEA" + "".join(chosen.choices(_BASE64, k=48)),
            *("".join(chosen.choices(_BASE64, k=64)) for _ in range(lines - 1))]


def test_a_key_is_hidden_from_its_header_to_its_footer() -> None:
    shown = ["$ cat ~/.ssh/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----",
             "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABlwAAAAdzc2gtcn",
             "NhAAAAAwEAAQAAAYEAx7v0Zz", "-----END OPENSSH PRIVATE KEY-----", "$ ls"]
    lines, hidden = hide_secrets(shown)
    assert lines == ["$ cat ~/.ssh/id_rsa", HIDDEN, HIDDEN, HIDDEN, HIDDEN, "$ ls"]
    assert hidden == {"private key": 1}
    assert secret_kind("\n".join(shown)) == "private key"


@pytest.mark.parametrize("header", [
    "—BEGIN RSA PRIVATE KEY—", "EGIN RSA PRIVATE KEY-—", "20 BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----", "—— EC PRIVATE KEY ——",
    "PuTTY-User-Key-File-3: ssh-ed25519"])
def test_a_header_as_ocr_reads_it_opens_a_key(header: str) -> None:
    lines, hidden = hide_secrets(["$ cat key", header, *body(3), "$ ls"])
    assert lines == ["$ cat key", *[HIDDEN] * 4, "$ ls"]
    assert hidden == {"private key": 1}
    assert secret_kind(header) == "private key"


def test_a_key_cut_off_by_the_screen_is_hidden_as_far_as_its_body_goes() -> None:
    """No footer: the block ends at the second line in a row that is no key's, so the commands
    after it are kept; one misread line inside the body is hidden with it."""
    lines = body(6)
    lines[3] = "1c ©X1)AmX6b Lfbb"  # OCR's garble of a line and its line number
    shown = ["$ head -7 ~/.ssh/id_rsa", "-----BEGIN RSA PRIVATE KEY-----", *lines,
             "$ ssh-add ~/.ssh/id_rsa", "Identity added: /root/.ssh/id_rsa (bob@laptop)",
             "$ git push origin main"]
    out, hidden = hide_secrets(shown)
    assert out == [shown[0], *[HIDDEN] * 7, *shown[-3:]]
    assert hidden == {"private key": 1}


def test_a_footer_whose_header_scrolled_away_hides_the_body_above_it() -> None:
    shown = ["$ tail -5 deploy.pem", *body(4), "-----END PRIVATE KEY-----", "$ ls"]
    out, hidden = hide_secrets(shown)
    assert out == [shown[0], *[HIDDEN] * 5, "$ ls"]
    assert hidden == {"private key": 1}


def test_putty_fields_and_pem_encryption_are_part_of_the_block() -> None:
    putty = ["PuTTY-User-Key-File-2: ssh-rsa", "Encryption: none", "Comment: rsa-key-2024",
             "Public-Lines: 2", *body(2, seed=1), "Private-Lines: 2", *body(2, seed=2),
             "Private-MAC: 1f2e3d4c5b6a79881f2e3d4c5b6a7988", "", "Saved the key to putty.ppk"]
    assert hide_secrets(putty) == ([*[HIDDEN] * 10, "", "Saved the key to putty.ppk"],
                                   {"private key": 1})
    pem = ["-----BEGIN RSA PRIVATE KEY-----", "Proc-Type: 4,ENCRYPTED",
           "DEK-Info: AES-128-CBC,3F17F5316E2BAC89", "", *body(3), "-----END RSA PRIVATE KEY-----"]
    assert hide_secrets(pem) == ([HIDDEN] * 8, {"private key": 1})


def test_a_header_named_in_prose_hides_that_line_only() -> None:
    shown = ["A key file starts with -----BEGIN PRIVATE KEY----- on its first line.",
             "Keep it out of the repository.", "Rotate it every year."]
    out, hidden = hide_secrets(shown)
    assert out == [HIDDEN, *shown[1:]]
    assert hidden == {"private key": 1}


def test_a_keys_body_read_without_its_edges_is_hidden() -> None:
    """An editor scrolled past the header reads only the lines that scrolled into view: a
    line as random as a key's is one on its own, and the body runs on from it both ways."""
    lines = body(5, seed=3)
    lines[2] = lines[2][:30] + "|" + lines[2][31:]  # OCR's `|`: still as random as a key
    out, hidden = hide_secrets(["~/.ssh/id_rsa", *lines[1:], "Ln 9, Col 1"])
    assert out == ["~/.ssh/id_rsa", *[HIDDEN] * 4, "Ln 9, Col 1"]
    assert hidden == {"key lines": 1}
    assert secret_kind(body(2, seed=4)[1]) == "key lines"


def test_a_line_that_names_what_it_holds_keeps_its_name() -> None:
    """A `.env` file's random token, a kubeconfig's base64 key: the value is hidden, the name
    kept (it is what the user looks for), and the lines beside it are no key's body."""
    token = body(2, seed=5)[1][:44]
    shown = ["DATABASE_URL=postgres://localhost/app_dev", f"WEBHOOK_SIGNING={token}",
             f"    client-key-data: {body(2, seed=6)[1]}", "DEBUG=true"]
    out, hidden = hide_secrets(shown)
    assert out == [shown[0], f"WEBHOOK_SIGNING={HIDDEN}", f"    client-key-data: {HIDDEN}",
                   "DEBUG=true"]
    assert hidden == {"key lines": 2}


@pytest.mark.parametrize("line", [
    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "commit 3f2a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
    "https://github.com/jpadilla/pyjwt/blob/3d47b0ea9e5d489f9c90ee6dde9e3d9d69244e3a/jwt.py",
    "infoDataToSet = _convertFontInfoDataVersion1ToVersion2(infoDataToSet)",
    "    NumPyArrayFloat32 = numpy.ndarray[_typing.Any, numpy.dtype[numpy.float32]]",
    "The configuration of the authentication middleware is documented below.",
    # a changelog's paths and a mail's id (/usr/share/doc): as random, but named
    " src/OT/Layout/GPOS/MarkMarkPosFormat1.hh |  2 +-",
    "\t* tests/gpgsm/32100C27173EF6E9C4E9A25D3D69F86D37A4F939: New file.",
    "\t* doc/SetClassProcs.3:  CONSTify Tk_SetClassProcs",
    "Message-ID: <CAHp8n2nmGN+G09aA118KN86NeX9yw_VJAQNFZebm74k195zz+Q@mail.gmail.com>",
    "GtkWin32EmbedWidget, GtkCellView, GtkDialog, GtkDrawingArea, GtkPlug,",
])
def test_what_is_no_key_is_kept(line: str) -> None:
    assert hide_secrets([line, line]) == ([line, line], {})


AFTER = ["$ ssh-add ~/.ssh/id_rsa", "$ git push origin main"]


@pytest.mark.parametrize("size", [12, 14, 16, 20])
@pytest.mark.parametrize("part", ["cut", "tail", "middle"])
def test_a_key_on_a_terminal_is_hidden_as_the_screen_reader_reads_it(size: int, part: str) -> None:
    """A terminal shows a key's first lines (`head`), its last (`tail`) or lines of its middle
    alone, commands around it, read by the bundled Tesseract: no 12 characters of the body
    are left readable, and the commands are kept."""
    key = body(12, seed=size)
    block = {"cut": ["-----BEGIN RSA PRIVATE KEY-----", *key],
             "tail": [*key, "-----END RSA PRIVATE KEY-----"], "middle": key[1:]}[part]
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False,
                lines=[f"$ {'head' if part == 'cut' else 'tail'} -13 ~/.ssh/id_rsa", *block,
                       *AFTER])
    desk.font = ImageFont.load_default(size=size)
    read = _frame_text(desk.frame()).split("\n")
    shown, hidden = hide_secrets(read)
    assert hidden.get("key lines" if part == "middle" else "private key", 0) >= 1, read
    readable = "".join("".join(shown).split())
    assert not [line for line in block if line in key
                if any(line[at:at + 12] in readable for at in range(0, 53, 4))], (read, shown)
    commands = [line for line in read if any(word in line for word in ("head", "tail", "ssh"))]
    assert [line for line in shown if line in commands] == commands, (read, shown)
    assert any("push origin main" in line for line in shown), (read, shown)  # OCR reads both
    assert any("ssh-add" in line for line in shown), (read, shown)  # after the key
