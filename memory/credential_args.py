"""Credentials handed over as arguments: a command's password flag, an HTTP request's header.

A terminal on a shared screen shows `mysql -u root -pS3cret`, `curl -u admin:S3cret …` and
`sshpass -p S3cret ssh …`; a browser's network panel shows `Authorization: Basic …` and a
session's cookie. The secret there follows a flag or a header, not a name the assignment rules
in memory/secret_text.py know (`password=`, "the PIN is"). detect-secrets and its kin scan files
for assignments and providers' keys, not shell commands, so each command's password flags are
listed here, from its manual. Only the flags of the command they follow count (`docker run -p
8080:80` publishes a port; `docker login -p …` is a password), up to that command's end (a
`|`, `;` or `&` outside quotes), and a value that names no secret is kept: a variable
(`$MYSQL_PWD`, `%PASS%`), a command's output (`$(cat pw)`), a placeholder (`<password>`), a
mask (`****`), another option (`mongosh -p --quiet` asks for it).

`found` yields (kind, start, end) spans; memory/secret_text.py calls it only on a text where
`NEEDS` is found (in any case): every match holds it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import NamedTuple

# a flag's value: quoted, what is inside the quotes; else a word, up to what ends a command
_VALUE = r"""(?:"(?P<dq>[^"\n]+)"|'(?P<sq>[^'\n]+)'|(?P<bare>[^\s"'|;&<>][^\s|;&<>]*))"""


def _spaced(flag: str) -> str:
    """`flag VALUE` or `flag=VALUE`."""
    return rf"(?<!\S){flag}(?:\s+|=){_VALUE}"


def _glued(flag: str) -> str:
    """`flagVALUE`, the value against the flag: `mysql -pS3cret`, where `-p` alone asks for the
    password and `-p shop` names the database. Only after a space the line has (`found` puts
    one before the arguments): `MySQL-python` is a name, not `mysql -python`."""
    return rf"(?<=.\s){flag}{_VALUE}"


def _either(flag: str) -> str:
    """`flag VALUE`, `flag=VALUE` or `flagVALUE`."""
    return rf"(?<!\S){flag}(?:\s+|=)?{_VALUE}"


def _after(flag: str, separator: str) -> str:
    """`flag USER<separator>PASSWORD` (`curl -u bob:S3cret`): the password is what follows the
    first separator (and a space OCR may put after it, not a URL: `-u bob: https://…` asks)."""
    return (rf"(?<!\S){flag}(?:\s+|=)?[\"']?[^\s\"'{separator}]*{separator} ?(?!\S*://)"
            rf"(?P<bare>[^\s\"'|;&<>]+)")


class _Command(NamedTuple):
    """A command that takes a password on its command line: its name as a word (`/usr/bin/mysql`
    too), in any case; the flags that take one, exactly (`mysql -P3306` is a port), anywhere up
    to the command's end; or `first`, its arguments right after the name, when the password is
    one by its place (`net user bob S3cret`)."""

    kind: str
    name: str
    flags: tuple[str, ...] = ()
    first: str | None = None


# one argument, quoted or not
_ARG = r"""(?:"[^"\n]*"|'[^'\n]*'|[^\s"']\S*)"""
_COMMANDS = (
    _Command("password", r"mysql[a-z]*|mariadb(?:-?[a-z]+)?", (_glued("-p"),)),
    _Command("password", r"sshpass", (_either("-p"),)),
    _Command("password", r"(?:docker|podman|nerdctl|buildah|skopeo|finch|oras|crane|helm)"
                         r"(?:\s+registry)?\s*login", (_spaced("-p"), _spaced("--password"))),
    _Command("password", r"redis-cli", (_either("-a"), _spaced("--pass"))),
    _Command("password", r"ldap(?:search|add|modify|delete|whoami|passwd|compare|modrdn|exop)",
             (_either("-w"),)),
    _Command("password", r"curl", (_after("(?:-u|--user|-U|--proxy-user)", ":"),)),
    _Command("password", r"smbclient|rpcclient|smbmap|smbcacls|smbget",
             (_after("(?:-U|--user)", "%"),)),
    _Command("password", r"openssl",
             (_spaced("-k"), rf"(?<!\S)-(?:pass|passin|passout)\s+pass:{_VALUE}")),
    _Command("password", r"zip|unzip|zipcloak", (_spaced("-P"), _spaced("--password"))),
    _Command("password", r"7z[arz]?|rar|unrar", (_glued("-p"),)),
    _Command("password", r"sqlcmd|bcp|osql", (_spaced("-P"),)),
    _Command("password", r"mongo(?:sh|dump|restore|export|import|stat|top|files)?",
             (_spaced("-p"), _spaced("--password"))),
    _Command("password", r"az\s+login", (_spaced("-p"), _spaced("--password"))),
    _Command("password", r"[xw]freerdp3?|sdl-freerdp", (rf"(?<!\S)[/-]p:{_VALUE}",)),
    _Command("password", r"rdesktop", (_spaced("-p"),)),
    _Command("password", r"cmdkey", (rf"(?<!\S)/pass:{_VALUE}",)),
    _Command("password", r"keytool", (_spaced("-(?:src|dest)?(?:store|key)pass"),)),
    _Command("password", r"wp", (_spaced("--user_pass"),)),  # WP-CLI
    _Command("password", r"htpasswd",  # -b: the password is the last argument (-n: no file)
             (rf"(?<!\S)-[a-zA-Z]*b[a-zA-Z]*\s+(?:\S+\s+){{1,2}}{_VALUE}(?=\s*(?:$|[|;&]))",)),
    _Command("password", r"net\s+user", first=rf"\s+{_ARG}\s+(?![/*]){_VALUE}"),
    _Command("password", r"convertto-securestring",  # PowerShell
             (_spaced("-(?i:string)"),), first=rf"\s+{_VALUE}"),
    _Command("password", r"lftp", (_after("-u", ","),)),
    _Command("password", r"nmcli",
             (rf"(?<!\S)(?:password|(?:802-11-wireless-security|wifi-sec)\.psk)\s+{_VALUE}",)),
    _Command("password", r"wpa_passphrase", first=rf"\s+{_ARG}\s+{_VALUE}"),
    # a .netrc line, `machine HOST login USER password S3cret`: "machine" and a host name, so
    # that prose's "machine" ("the machine learning …") does not open the gate
    _Command("password", r"machine(?=\s+(?:[\w-]+\.[\w.-]+|localhost)\s)",
             first=rf"\s+\S+(?:\s+(?:login|account)\s+\S+)*\s+password\s+{_VALUE}"),
    _Command("passphrase", r"gpg2?", (_spaced("--passphrase"),)),
    _Command("passphrase", r"ssh-keygen", (_spaced("-[NP]"),)),
    _Command("secret key", r"aws\s+configure\s+set",
             (rf"(?<!\S)(?:\w+\.)?(?:aws_secret_access_key|aws_session_token)\s+{_VALUE}",)),
)
# a command's name, not a program's label before its message ("gpg: Support --passphrase with
# --quick-gen-key", "curl: (6) Could not resolve host")
_COMMAND = re.compile("|".join(
    rf"(?P<c{i}>(?<![\w.-])(?i:{command.name})(?![\w:]))"
    for i, command in enumerate(_COMMANDS)))
_FLAGS = tuple(tuple(re.compile(flag) for flag in command.flags) for command in _COMMANDS)
_FIRST = tuple(command.first and re.compile(command.first) for command in _COMMANDS)
# where a command ends: a `|`, `;` or `&` (a pipe, a list, the background) outside quotes
_COMMAND_GOES_ON = re.compile(r"""(?:"[^"\n]*"|'[^'\n]*'|[^|;&\n"'])*""")
# a password written into a command that reads it from its input: `echo S3cret | sudo -S …`,
# `… | docker login --password-stdin`, `… | chpasswd`, `… | passwd --stdin bob`
_PIPED = re.compile(
    rf"(?<![\w-])(?i:echo)\s+(?:-[neE]+\s+)?{_VALUE}\s*\|\s*(?:sudo\b[^|;&\n]*?(?<![^\s\w])-[a-zA-Z]*S\b"
    r"|[^|;&\n]*?--password-stdin\b|chpasswd\b|passwd\b[^|;&\n]*?--stdin\b)")
# an HTTP Basic credential, or one a registry login stored (`"auth": "…"` in Docker's
# config.json): base64 of `user:password`, decoded to tell it from "Basic plan" unless an
# `Authorization:` header says what it is (OCR's misread letters may not decode)
_BASIC = re.compile(r"(?:(?P<header>\bauthorization\s*[:=]?\s*)?\bbasic\s+|"
                    r"\bauth[\"']\s*:\s*[\"'])(?P<bare>[A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])", re.I)
# a bearer token in an `Authorization:` header as OCR reads it, split by a space or two
# (`Bearer abcdef 123456abcdef`): the rest of the line, when it holds a digit
_SPLIT_BEARER = re.compile(
    r"\bauthorization\s*[:=]?\s*(?:bearer|token)\s+"
    r"(?P<bare>(?=[^\"'\n]*\d)[\w.~+/=-]+(?: [\w.~+/=-]+){1,3})(?=[\"',;]*\s*$)", re.I)
# a session's cookie, in a `Cookie:` or `Set-Cookie:` header: its name says it holds the
# session or a login, and its value is long and mixes letters and digits
_COOKIE_HEADER = re.compile(r"\bcookie\s*:", re.I)
_SESSION_COOKIE = re.compile(
    r"(?<![\w.-])[\w.-]*(?:sess|sid|auth|token|jwt|remember|login)[\w.-]*="
    r"(?P<bare>(?=[^\s;,\"]*\d)(?=[^\s;,\"]*[A-Za-z])[^\s;,\"]{16,})", re.I)
# what every match holds: a command's name, "echo", "basic", "auth" or "cookie", from a word's
# start (a window scan's gate: most of the rules' cost, and `\b` is the cheapest start to test)
NEEDS = rf"\b(?:{'|'.join((*(command.name for command in _COMMANDS), 'echo|basic|auth|cookie'))})"
_CLOSING_MARKS = "`'\",;.)"
# a value that names no secret: a variable, a command's output, a placeholder, an option, a mask
_NOT_A_SECRET = re.compile(r"[$%<{`-]|[*•●·]+$")


def found(line: str) -> Iterator[tuple[str, int, int]]:
    """The credentials in `line` handed over as arguments: (kind, start, end) of each value."""
    for command in _COMMAND.finditer(line):
        index = int(str(command.lastgroup)[1:])
        kind, ends = _COMMANDS[index].kind, _COMMAND_GOES_ON.match(line, command.end()).end()
        # what follows the name, after a space: OCR often loses the one between a command and
        # its first flag (`curl-u admin:…`, `sshpass-p`)
        arguments, at = " " + line[command.end():ends], command.end() - 1
        first = _FIRST[index] and _FIRST[index].match(arguments)
        if first:
            yield from _value(kind, first, at)
        for flag in _FLAGS[index]:
            for match in flag.finditer(arguments):
                yield from _value(kind, match, at)
    for match in _PIPED.finditer(line):
        yield from _value("password", match)
    for match in _BASIC.finditer(line):
        if match["header"] or _is_credential(match["bare"]):
            yield from _value("password", match)
    for match in _SPLIT_BEARER.finditer(line):
        yield from _value("bearer token", match)
    if _COOKIE_HEADER.search(line):
        for match in _SESSION_COOKIE.finditer(line):
            yield from _value("session cookie", match)


def _value(kind: str, match: re.Match[str], at: int = 0) -> Iterator[tuple[str, int, int]]:
    """The value a flag's match took, unless it names no secret; a word without quotes ends
    before the marks that close a sentence or a quote around the command (`mysql -pS3cret`,)."""
    values = match.groupdict()
    group = next(name for name in ("dq", "sq", "bare") if values.get(name) is not None)
    value = values[group]
    if group == "bare":
        value = value.rstrip(_CLOSING_MARKS)
    if value and not _NOT_A_SECRET.match(value):
        yield kind, at + match.start(group), at + match.start(group) + len(value)


def _is_credential(encoded: str) -> bool:
    """Whether base64 text decodes to `user:password` (printable, with a colon)."""
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        text = decoded.decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return ":" in text and text.isprintable()
