"""Secrets in text that memory would keep: passwords, keys, tokens and card numbers.

What Sightline remembers outlives the moment it was seen or said. Screen text goes into the
user's screen timeline, searchable and read into later prompts; a remembered fact and the
conversation summary go into every later prompt. A password in a `.env` file the user scrolled
past, an API key in a terminal, a card number on a checkout page or "my wifi password is
hunter2" must not be kept there. So the screen's lines and what is said are stored with each
secret's value replaced by `HIDDEN` (`hide_secrets`, `hide_in_text`), and a fact or summary
that holds one, or the marker, is not remembered (`secret_kind`).

The patterns for providers' keys and tokens, and for `KEY=value` / `password: value`
assignments, are detect-secrets' (Yelp's scanner for secrets committed to code): a list kept up
to date by people who study the field, which we would otherwise copy and let age. Its plugins
are used for their patterns only: `analyze_line` reads the scanner's global settings and may
call providers to verify a key, and a regex plugin yields a capture group that is sometimes the
key's prefix (`ghp`), not the key. What it does not cover is added here: keys of providers it
does not know (Anthropic, OpenAI's current keys, Google), bearer tokens, card numbers (a brand's
prefix and a valid Luhn digit, checked by python-stdnum), a secret said in words ("the PIN
is 4821"), one handed over as an argument (`mysql -pS3cret`, `curl -u bob:S3cret`, an
`Authorization: Basic` header, a session cookie: memory/credential_args.py), one a file holds
by its place on the line (a `.pgpass` password, a password's hash: memory/credential_files.py)
and a private key's lines (memory/private_keys.py).

Screen text comes through OCR and speech through speech-to-text, so the rules also read
through what those do to a secret: a misread mark or a token split by a space in an editor's
small text, a password said in pieces ("hunter 2", "4 8 2 1").

A false positive hides a word from memory; a false negative keeps a secret in every later
prompt. The rules lean to hiding, but not to hiding every long hex string: commit ids, hashes
and request ids are what users ask about.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.ip_public import IPPublicDetector
from detect_secrets.plugins.keyword import (
    CONFIG_DENYLIST_REGEX_TO_GROUP,
    DENYLIST,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
)
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from stdnum import luhn

from memory import credential_args, credential_files, private_keys

HIDDEN = "[secret hidden]"
HIDDEN_ALREADY = "hidden secret"  # the kind of a text holding `HIDDEN`: a secret was there
MAX_WORDS = 3  # an assigned value of more words runs on past the secret, its first word
# A line is scanned this many characters at a time, each window overlapping the next by half:
# detect-secrets' `name = value` patterns take time quadratic in what they scan ("password"
# pasted 200 times over, 1,600 characters: half a second), so a 20,000-character message is
# scanned in linear time. A secret up to half a window long falls whole inside one; a longer
# one (a JWT) is hidden by the windows' spans together.
WINDOW = 256


class _Words:
    """Words a rule cannot match without, found in any case as the rule's own `re.I` finds
    them. A text without them skips the rule: most text has none of the words, and the rules
    that need them are most of a scan's time. ASCII text (most of it) is searched lowered, by a
    case-sensitive pattern, ~4x faster (in ASCII, `re.I`'s cases are exactly `str.lower`'s);
    other text by the `re.I` pattern itself, which also takes "ſ" for "s" and "K" for "k"."""

    def __init__(self, pattern: str) -> None:
        self._lowered = re.compile(pattern)
        self._any_case = re.compile(pattern, re.I)

    def found_in(self, line: str, lowered: str | None) -> bool:
        """Whether `line` holds the words; `lowered` is `line.lower()` when it is ASCII."""
        if lowered is None:
            return self._any_case.search(line) is not None
        return self._lowered.search(lowered) is not None


# detect-secrets' provider patterns: (what each finds, the pattern, whether its capture groups
# are the secret). GitHub's and GitLab's capture the token's prefix (`ghp`), so there the whole
# match is. Left out: a public IP address is not a secret; a private key's header is followed by
# its body (memory/private_keys.py); IBM's, Cloudant's and SoftLayer's `name = value` patterns
# take time cubic in a run of spaces ("api_key" and 1,000 spaces: 8 s), and the assignments
# below find their values.
_SLOW_OR_NOT_SECRET = (IPPublicDetector, PrivateKeyDetector, IbmCloudIamDetector,
                       IbmCosHmacDetector, CloudantDetector, SoftlayerDetector)
_PROVIDER_PATTERNS: tuple[tuple[str, re.Pattern[str], bool], ...] = tuple(
    (plugin.secret_type, pattern, plugin not in (GitHubTokenDetector, GitLabTokenDetector))
    for plugin in get_mapping_from_secret_type_to_class().values()
    if issubclass(plugin, RegexBasedDetector) and plugin not in _SLOW_OR_NOT_SECRET
    for pattern in plugin.denylist)
# detect-secrets' `name = value` / `name: value` rules for config files, then those for code
# (a quoted value): a screen shows both
_ASSIGNMENTS = (*CONFIG_DENYLIST_REGEX_TO_GROUP.items(),
                *QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP.items())
# each names what is assigned with one of detect-secrets' words ("password", "api_key", "secret",
# …; tests/test_secret_text.py checks that every pattern holds them)
_ASSIGNMENT_WORDS = _Words("|".join(DENYLIST))
# keys detect-secrets 1.5 does not know, each from a word's start (`\b`)
_MORE_KEY_BODIES: tuple[tuple[str, str, bool], ...] = (
    ("Anthropic key", r"sk-ant-[A-Za-z0-9_-]{20,}", False),
    ("OpenAI key", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}", False),
    ("Google API key", r"AIza[0-9A-Za-z_-]{35}", False),
    ("bearer token", r"Bearer\s+([A-Za-z0-9._~+/=-]{16,})", True),
    ("Vault token", r"hv[sbr]\.[A-Za-z0-9_-]{24,}", False),
    # tokens with a prefix their providers document, which a screen shows in a terminal, a
    # `.env` file or a settings page (where no name says what they are)
    ("GitHub Token", r"github_pat_[A-Za-z0-9_]{40,}", False),  # fine-grained
    ("Hugging Face token", r"hf_[A-Za-z0-9]{30,}", False),
    ("Google OAuth secret", r"GOCSPX-[A-Za-z0-9_-]{24,}", False),
    ("Google OAuth token", r"ya29\.[A-Za-z0-9_-]{30,}", False),
    ("DigitalOcean token", r"do[por]_v1_[a-f0-9]{64}", False),
    ("Groq key", r"gsk_[A-Za-z0-9]{40,}", False),
    ("xAI key", r"xai-[A-Za-z0-9]{60,}", False),
    ("Replicate token", r"r8_[A-Za-z0-9]{30,}", False),
    ("Tailscale key", r"tskey-(?:auth|api|client|scim|webhook)-[A-Za-z0-9-]{16,}", False),
    ("Shopify token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", False),
    ("Databricks token", r"dapi[a-f0-9]{32}", False),
    ("Postman key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", False),
    ("age secret key", r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}", False),
    # a URL that is itself the credential until it expires: a presigned or signed URL's
    # signature or session token (S3, Google Cloud Storage, CloudFront, Azure's SAS `sig`), a
    # Discord webhook's token (Slack's is detect-secrets')
    ("signed URL", r"[?&](?:X-Amz-Signature|X-Amz-Security-Token|X-Goog-Signature|Signature|sig)"
                   r"=([A-Za-z0-9%~_.+/=-]{16,})", True),
    ("Discord webhook", r"discord(?:app)?\.com/api/webhooks/\d+/([\w-]{40,})", True),
)
_MORE_KEYS = tuple((kind, re.compile(rf"\b{body}"), groups)
                   for kind, body, groups in _MORE_KEY_BODIES)
_KEY_PATTERNS = (*_PROVIDER_PATTERNS, *_MORE_KEYS)
# a key is no piece from inside a longer token: detect-secrets' AWS pattern (`ACCA` and 16 more)
# also matches inside a certificate's or a key's fingerprint in hex (`4DAACCAC7608DBDADAAE73…`).
# One side is not enough: OCR may lose the space before a key (`aws_access_key_idAKIA…`), and
# a pattern of bounded length may end inside a longer token
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_SCOPED_FLAGS = ((re.A, "a"), (re.I, "i"), (re.M, "m"), (re.S, "s"), (re.X, "x"))


def _one_of(patterns: Iterable[re.Pattern[str]]) -> re.Pattern[str]:
    """One pattern that matches where any of `patterns` would, each with its own flags: one
    search of a window instead of one for each of them (most windows hold no key)."""
    def scoped(pattern: re.Pattern[str]) -> str:
        flags = "".join(letter for flag, letter in _SCOPED_FLAGS if pattern.flags & flag)
        return f"(?{flags}:{pattern.pattern})"
    return re.compile("|".join(scoped(pattern) for pattern in patterns))


# ours under one `\b`, tested once a position rather than once a pattern: searched apart, they
# took more time than detect-secrets' thirty
_ANY_KEY = _one_of([*(pattern for _, pattern, _ in _PROVIDER_PATTERNS), re.compile(
    rf"\b(?:{'|'.join(body for _, body, _ in _MORE_KEY_BODIES)})")])
# `NAME=value` / `NAME: value` of the names detect-secrets 1.5 leaves out: a token (`HF_TOKEN`,
# `access_token`), a passphrase, a passcode, a Wi-Fi or WireGuard pre-shared key (`psk=`,
# `PresharedKey =`); quoted, the whole quoted value. The name ends with the word: "max_tokens:
# 1024" is a count, "tokenizer: gpt2" a model
_NAMED_WORDS = "token|passphrase|passcode|psk|presharedkey"
_NAMED = re.compile(
    rf"(?<![\w-])[\w.-]*?(?P<name>{_NAMED_WORDS})[\"'\]]{{0,2}}\s*(?::=|[:=])\s*"
    r"(?:(?P<quote>[\"'`])(?P<quoted>[^\"'`\n]+)(?P=quote)|(?P<value>[^\s\"'`,;]+))", re.I)
_NAMED_NEEDS = _Words(_NAMED_WORDS)
# an assignment as OCR reads small text (a `.env` file in an editor): its operator misread
# (`DB_PASSWORD-=…`), its opening quote read as `*` (`"password": *hunter2',`), its token split
# by a space (`GITHUB_TOKEN=ghp _abc…`). A name holding one of the words above, then a value
# to the line's end that, its pieces joined, looks like a token
_MISREAD_ASSIGNED = re.compile(
    rf"(?<![\w-])[\w.-]*?(?:{'|'.join(DENYLIST)}|{_NAMED_WORDS})[\w.-]*?[\"'\]]{{0,2}}\s*"
    r"(?:(?P<noisy>-=|=-|;=|=;)|[:=])\s*(?P<star>\*)?[\"'`]?"
    r"(?P<value>[\w.+/~-]+=*(?: [\w.+/~-]{4,}=*){0,2})(?=[\"'`,;]*\s*$)", re.I)
# a URL's password as OCR reads it: its `://` misread (`postgres:/app:…`, `postgresi//app:…`),
# its `@` read as `e` (then the host is taken with it), holding letters and digits; not a port
# (`https://host:8080/`) nor a placeholder (`http://host:port/`), which the exact rule (`://`
# and `@` read right) takes only with its `@`
_URL_SCHEMES = (r"postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|https?|s?ftp"
                r"|smtps?|ldaps?|mssql|sqlserver")
_MISREAD_URL = re.compile(
    rf"\b(?:{_URL_SCHEMES})[:;.i]?/{{1,2}}[\w.+-]+:(?=[^\s/@:]*\d)(?=[^\s/@:]*[^\W\d_])"
    r"(?P<value>[^\s/@:\[({%$<'\"`\\][^\s/@:'\"`\\]{2,})", re.I)
_URL_NEEDS = _Words(rf"\b(?:{_URL_SCHEMES})[:;.i]?/")
# what is said between a secret and its value: a verb ("is", "has been", "changed to"), then
# words that lead in to the value ("… is still hunter2", "… was changed to Tr0ub4dor", "… is
# now set to 4821", "… is literally the word hunter2")
_SET_TO = r"(?:set|changed|reset|updated)\s+to"
_SAID_VERB = rf"(?:is|was|are|were|reads|(?:has|have|had|will|would)\s+been?|{_SET_TO})"
_LEAD_IN = (rf"{_SET_TO}|still|just|also|now|always|literally|actually|currently|simply|really|"
            r"the\s+(?:word|words|string|number)")
_LEAD_INS = rf"(?:\s+(?:{_LEAD_IN})\b)*"
_SAID_VERB_LED = rf"\b{_SAID_VERB}\b{_LEAD_INS}"  # "… was changed to", "… is still"
# a passphrase or a wallet's seed phrase is words: its value, said or assigned, runs on to its
# clause's end (a comma, a semicolon, a full stop before a space, the line's end), at most
# `MAX_PHRASE_WORDS` words ("passphrase: correct horse battery staple", "seed phrase: abandon
# ability able …", "… was changed to abandon …"), where another secret's value is its first
# word past `MAX_WORDS`
_PHRASE = re.compile(
    r"(?<![^\W_])(?P<what>pass ?phrases?|(?:seed|recovery|mnemonic|secret|backup|wallet) "
    r"(?:phrases?|words))[\"'\]]{0,2}\s*"
    rf"(?:(?P<verb>{_SAID_VERB_LED})\s*:?|:=|[:=])"
    r"\s*[\"'“‘]?(?P<value>[^\s\"'`“‘,;.][^\n,;]*?)(?=\s*(?:[,;]|[.!?](?:\s|$)|$))",
    re.I)
MAX_PHRASE_WORDS = 24  # a seed phrase's longest
# a quoted value said in words, or a quoted phrase, runs on to its closing quote ("my password
# is 'correct horse'")
_CLOSING_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’"}
# a token's value looks like one: letters and digits, 8 characters or more
_TOKEN_LIKE = re.compile(r"(?=.*\d)(?=.*[A-Za-z])\S{8,}")
_QUOTES = "\"'`"
# a secret runs on to the end of its token (detect-secrets' JWT pattern stops before the
# signature); `@` ends it, as in `user:password@host`
_TOKEN_GOES_ON = re.compile(r"[A-Za-z0-9_\-.+/=]*")
# an assigned value that is code or a reference, not a secret: a call, an index or a generic
# type, an `${ENV}` or `{{ }}` template, a printf's `%s`, a condition's `x:`, a count, a mask
_NOT_LITERAL = re.compile(r".*[({\[]|\$|%[sdrifx]|.*:$|\d{1,3}$|[*•●·]+$|\d+\.\d+\.\d+$")
# a name in code, not a value: an attribute (`settings.gemini_api_key`, `self._secret`), or a
# name without digits an argument list, a dict or a list goes on after (`api_key=api_key,`,
# `"LIVEKIT_API_KEY": API_KEY,`, `secret=True)`); a secret has digits, or ends its line
_ATTRIBUTE = re.compile(r"(?!.*\d)[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_NAME = re.compile(r"(?!.*\d)[A-Za-z_]\w*$")
_GOES_ON_IN_CODE = re.compile(r"\s*[,)}\]]")
# 13 to 19 digits, in groups a person or a form writes them in, standing alone: not the
# digits inside a commit id or a hash (`b2d60cbd6ebbcaa51291144701312578efd90ebd`), nor an id
# in a URL's path (`oss-fuzz.com/testcase-detail/5667125715927040`)
_CARD = re.compile(r"(?<![\w/-])\d(?:[ -]?\d){12,18}(?![\w-])")
# Visa, Mastercard, American Express, Discover, JCB, Diners Club, UnionPay, Maestro
_CARD_BRANDS = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9]|2)|35|3(?:0[0-5]|[689])|5[06-8]")
_WHAT = (
    r"\b(?P<what>passwords?|passcodes?|passphrases?|pins?(?: codes?| numbers?)?|api[ -]keys?|"
    r"access keys?|secret keys?|private keys?|access tokens?|auth tokens?|tokens?|secrets?|"
    r"social security numbers?|ssns?|card numbers?|cvvs?|cvcs?|security codes?|"
    r"recovery codes?|backup codes?|one-time codes?|otps?|2fa codes?|login codes?|"
    r"verification codes?|sign-in codes?|access codes?|authentication codes?|"
    r"network security keys?|pre-shared keys?|wi-?fi keys?|wpa2? keys?)")
_VALUE = r"\s*[\"'“‘]?(?P<value>[\w!@#$%^&*+~][^\s\"'”’]*)"
# a secret said in words: what it is, what it is for (within its sentence: not "a pin on your
# purse. Is Spider-Man …"), then its value ("my wifi password is hunter2", "the PIN for the door
# is 4821", "the password for db.example.com is …", "api key: abc123")
_SAID = re.compile(
    _WHAT + r"(?:\s+(?:for|to|of|on|at)\s+(?:[\w.@'-]*[\w@'-]\s+){0,3}?[\w.@'-]*[\w@'-])?"
    rf"\s*(?:{_SAID_VERB_LED}\s*:?|:)" + _VALUE, re.I)
# or set to it ("I set my password to hunter2", "changed the wifi password to Tr0ub4dor"). A
# value set to must look like one, as a bare one must: "reset your password to continue" and
# "the token is set to renew" are what a screen says most often
_SET_TO_SAID = re.compile(rf"\b{_SET_TO}\b", re.I)
_SAID_SET = re.compile(
    r"\b(?:set|changed?|reset|updated?)\s+(?:(?:my|the|your|our|his|her|their|its|this)\s+)?"
    r"(?:[\w'-]+\s+)?" + _WHAT + rf"\s+to\b{_LEAD_INS}" + _VALUE, re.I)
# or its value right after what it is, which must then look like one: letters and digits
# ("password hunter2"), or a code's 4 to 8 digits ("PIN 4821"); not "password manager",
# "password reset 2024-01-01", "tokens 12345"
_SAID_BARE = re.compile(_WHAT + r"\s" + _VALUE, re.I)
_WHAT_NEEDS = _Words(_WHAT)  # each holds it
# said aloud, a secret reaches the transcript in pieces ("my password is hunter 2", "the PIN is
# 4 8 2 1", "four eight two one", "capital H"): a said secret's value runs on over digits,
# number words, single letters and the words that spell a character, and is judged whole
_SPOKEN_PIECE = (r"\d+|[^\W\d_]|zero|oh|one|two|three|four|five|six|seven|eight|nine|ten|"
                 r"capital|upper(?:case)?|lower(?:case)?|dash|hyphen|underscore|dot|at|hash|"
                 r"pound|star|asterisk|exclamation(?: mark| point)?|bang|dollar(?: sign)?|"
                 r"percent|ampersand|plus|equals|slash|backslash|double|triple")
_SPOKEN = re.compile(rf"(?:{_SPOKEN_PIECE})", re.I)
# past a few words, a said value runs on over its spoken pieces and the words that are no
# prose (`_PROSE`: "my password is purple monkey dishwasher 42 and …"), to at most
# `MAX_SAID_WORDS` words that are no spoken piece; a word with `:` or `=` is another label, one
# opening a bracket, a code span or a comment is an aside, and one without a letter or digit
# (`|`) no word
_SAID_WORD = re.compile(r"\s+((?=[^\s:=]*[^\W_])[^\s:=(\[{<`#][^\s:=]*)(?!\S)")
MAX_SAID_WORDS = 6
_CLAUSE_END = re.compile(r"\s*(?:[,;\"”’)\]]|'(?!\w)|[.!?](?:\s|$)|$)")  # or a quote's
_ARGUMENT_NEEDS = _Words(credential_args.NEEDS)
_LOOKS_SECRET = re.compile(r"(?=.*\d)(?=.*[^\W\d]).{4,}")
_CODE = re.compile(r"pin|passcode|otp|cvv|cvc|.*codes?$", re.I)
_CODE_DIGITS = re.compile(r"\d{4,8}")
# a card's security code is 3 or 4 digits, which `_literal` takes for a count anywhere else
_CARD_CODE = re.compile(r"(?:cvv|cvc|security code)s?", re.I)
_CARD_CODE_DIGITS = re.compile(r"\d{3,4}")
# a card number (`_CARD`'s digits) after its label is one whatever its Luhn digit says: OCR
# misreads digits
_CARD_LABEL = re.compile(r"card numbers?", re.I)
# tokens and secrets are counted too: "Input tokens: 1,234" on a usage page is a number
_COUNTED = re.compile(r"(?:tokens?|secrets?)$", re.I)
_NUMBER = re.compile(r"\d[\d,.]*$")
# nor a participle or adverb: "the password was accepted", "the token was revoked", "… is
# expiring", "… is rarely used", a code string's "… has been updated.\n", a changelog's
# "gnutls_privkey_import_ext: Added", "…: REMOVED"
_NOT_A_VALUE_FORM = re.compile(r"[a-z]{2,}(?:ed|ing|ly)(?:\.?\\[nrt])?$", re.I)
# words that are no value wherever they stand, said or written (`_NO_VALUE_WRITTEN`): a
# determiner, a null or a boolean, a type (a type annotation's: "output tokens: int = 0" as OCR
# reads it), a value's state (a form's "Password: required", an API's `{"token": "expired"}`)
_DETERMINERS = frozenset("a an the my your his her our their its this that these those it".split())
_NOTHING = frozenset("not no none null nil undefined unknown true false".split())
_TYPES = frozenset(
    "int str float bool bytes list dict tuple object string number boolean integer any".split())
_STATES = frozenset(
    "expired wrong incorrect invalid missing empty blank required optional hidden masked unset"
    .split())
# what follows "password is" when no secret is given: "my password is too weak", "… is the
# same", "the API key is in the vault", "the PIN is 4 digits long", a lead-in with nothing
# after it ("… is now")
_NOT_A_VALUE = _DETERMINERS | _NOTHING | _TYPES | _STATES | frozenset("""
    same never still
    too very so quite really rather pretty weak strong long short simple complex old new
    more less most least likely unlikely now literally actually currently simply
    shown visible set saved stored changed reset updated sent needed
    in on at of for from with under inside somewhere there here below above
    case-sensitive sensitive secret private public
    forgot show hide reveal copy enter confirm change edit generate files compat
    given taken known written forgotten chosen stolen kept lost found made done seen
    permission release rsa dsa ecdsa ed25519 ed448 x25519 pem der pkcs8 pkcs12
    add adds allow allows use uses update updates fix fixes remove removes return returns
    support supports ensure ensures encode encodes decode decodes disable disables enable
    enables suppress refactor check checks accept accepts handle handles avoid avoids
    implement implements introduce introduces make makes move moves rename renames drop drops
    simplify improve improves cleanup document doc docs mark marks unlock unlocks skip skips
    convert converts replace replaces revert reverts bump bumps let lets get gets
    often usually always sometimes only just also what how why where when who which whatever
    can cannot could will would should must may might does did has had like unlike
    """.split())  # a form's links and buttons beside its field ("Password: Forgot?", "API key:
# Copy"); nsswitch.conf's sources ("passwd: files systemd"); an error ("/etc/passwd: Permission
# denied"), apt's "Pin: release a=stable", a key's algorithm ("the private key is RSA"); a commit
# message's or a changelog's verb after a name ("psk: Allow non-NULL PSK usernames",
# "privkey_sign_raw_data: remove unnecessary local variable", "secrets: refactor using …"). Not
# "test": a password many set.

# what a secret is like, or what is done to it, when prose goes on after it or nothing does:
# "the token is close to expiring", "the secret is out", "the API key is valid", "the password
# is due for rotation", "… is set to expire in 30 days"; but a passphrase's first word in
# "the password is correct horse battery staple". Not "default": a password devices ship with
_LIKE_A_VALUE = frozenset("""
    close about out up down off over due near nearly almost already back around
    present absent possible impossible acceptable unacceptable able unable overwritten
    longer shorter larger smaller bigger greater higher lower stronger weaker
    good fine ok okay ready active inactive valid available unavailable correct right bad
    broken gone safe secure insecure different similar unique important mandatory live dead
    stale fresh obsolete temporary permanent current previous both either neither all
    each every some another other expire rotate renew refresh
    """.split())
_NEXT_WORD = re.compile(r"\s*([^\W_][\w'-]*)")
# the words prose goes on with after a said secret: "… is hunter2 and I use it for everything",
# "… is 4821 for the door", "… is abc123 from the dashboard"; none is a value either
# ("PrivateKeyFile= and PresharedKeyFile=", "… is then kept"), but "i", which a said password
# may begin with ("i love you 3000")
_FUNCTION_WORDS = frozenset("""
    and or but nor so because as if then than though although unless until while whereas
    me you he him she we us they them mine yours ours theirs one's
    is was are were be been being am do does did have has had
    to by about into onto over after before through without within between across via
    please thanks thank ok okay yes yeah right now today tomorrow yesterday again
    don't doesn't didn't isn't wasn't aren't can't won't i'm it's that's you're we're
    """.split())
_PROSE = _NOT_A_VALUE | _LIKE_A_VALUE | _FUNCTION_WORDS | frozenset("""
    i api key keys token tokens password passwords passphrase pin code codes
    """.split())  # and what a secret is: "api_key: Gateway API key (see …)" describes one
_NO_VALUE = _NOT_A_VALUE | _FUNCTION_WORDS
# a word written as a value (`_written`: after `=`, in quotes, a YAML line's; `PASSWORD=secret`,
# `"password": "secure"`, `password: secret`, my password is "whatever") is no prose: any word
# may be the secret, but for what code and config write where there is none: a null, a
# boolean, a type (`Never`, `void`), a state (`off`, `valid`, `pending`), a word of code's own
# (`password = not given`), nsswitch.conf's sources (`passwd: files`)
_NO_VALUE_WRITTEN = _FUNCTION_WORDS | _DETERMINERS | _NOTHING | _TYPES | _STATES | frozenset("""
    never void off valid active inactive pending
    files compat systemd nis nisplus ldap sss winbind
    """.split())
# a line that is one `key: value` pair, a YAML list's item too (`- password: secret`), a
# comment after it (`password: secret  # dev`)
_PAIR_LINE = re.compile(
    r"\s*(?:- )?(?:[a-z0-9_.-]+|[A-Z0-9.-]*_[A-Z0-9_.-]*):\s*[^\s#]+(?:\s+#.*)?\s*")
_COMMENT = re.compile(r"\s+#")  # after an unquoted value, as YAML, INI and a shell write it
_EMPTY_THEN_PROSE = re.compile(r"\S*=\s+")  # no space before the `=`, one after


@dataclass(frozen=True)
class Secret:
    kind: str
    start: int
    end: int


def _span(match: re.Match[str], *, group: int | str | None = None) -> tuple[int, int]:
    """The secret in a pattern's match: the group named (None: the longest capture group,
    or the whole match when there is none), run on to the end of its token; quotes and the
    `=`/`:` a pattern takes in at its ends are not the secret."""
    if group is None:
        groups = [i for i in range(1, (match.re.groups or 0) + 1) if match.group(i)]
        group = max(groups, key=lambda i: len(match.group(i)), default=0)
    start, end = match.span(group)
    text = match.string
    while start < end and text[start] in " \t\"'`=:":
        start += 1
    return start, _token_end(text, start, end)


def _token_end(text: str, start: int, end: int) -> int:
    """Where a secret found in `text[start:end]` ends: on at the end of its token, back before
    the quote or mark that closes it."""
    end = _TOKEN_GOES_ON.match(text, end).end()
    while end > start and text[end - 1] in " \t\"'`,;.":
        end -= 1
    return end


def _literal(value: str, after: str, *, written: bool = False) -> bool:
    """Whether a value a pattern took (`after` it, the rest of the line) is a literal secret:
    not code (a call, a reference, a type annotation's type: `password: str = ""`), nor a
    word that says what the secret is like ("password is too weak", a form's "Password:
    required", "mask ?password= in URLs" in a commit message, "the secret is out" but not
    "correct horse battery staple": `_LIKE_A_VALUE`), nor a name in code
    (`api_key=settings.api_key`, `api_key=api_key,`). A word `written` as a value (after `=`,
    in quotes, on a YAML line: `_written`) is judged by `_NO_VALUE_WRITTEN` alone of the word
    lists; words in quotes are a message as often (`'secret': 'will be replaced'`,
    `secret_type = 'Private Key'`)."""
    stripped = value.strip()
    value = stripped.rstrip(".,;!?")
    if not value:
        return False
    word = value.split()[0]
    written = written and word == value
    first = word.rstrip(")]},")  # a parameter's type as its list closes: `f(token: str) -> …`
    goes_on = word[len(first):] + value[len(word):] + stripped[len(value):] + after
    if not written and first.lower() in _LIKE_A_VALUE and (
            not (next_word := _NEXT_WORD.match(goes_on)) or next_word[1].lower() in _PROSE
            or _NOT_A_VALUE_FORM.match(next_word[1])):  # "… is now possible using …"
        return False
    return (bool(first) and first.lower() not in (_NO_VALUE_WRITTEN if written else _NO_VALUE)
            and not _NOT_A_VALUE_FORM.match(value) and not _NOT_LITERAL.match(value)
            and not re.match(r"\s*=(?!=)", after) and not _ATTRIBUTE.match(first)
            and not (_NAME.match(first) and _GOES_ON_IN_CODE.match(goes_on)))


def _written(line: str, name_end: int, value_start: int) -> bool:
    """Whether a name's value is written as one: after an `=` (`:=`, `=>`, `==`; quotes and
    spaces around it), not an empty value's `=` that prose goes on after ("The option
    --passphrase= can be empty."); or after a `:`, alone on a line of its own, as YAML and
    INI write it (`password: secret`, `  db_password: whatever`), the key in lower case or in
    capitals with an underscore: not a form's label ("Password: correct")."""
    between = line[name_end:value_start]
    if "=" in between:
        return not _EMPTY_THEN_PROSE.fullmatch(between)
    return bool(_PAIR_LINE.fullmatch(line))


def _inside_a_token(line: str, match: re.Match[str]) -> bool:
    """Whether a pattern's match begins and ends with a letter or digit, and has one right
    before it and right after it (not a URL's `://user:password@`, which begins and ends with
    marks)."""
    start, end = match.span()
    return (0 < start < end < len(line) and line[start - 1] in _ALNUM and line[start] in _ALNUM
            and line[end - 1] in _ALNUM and line[end] in _ALNUM)


def _cards(line: str) -> Iterator[Secret]:
    for match in _CARD.finditer(line):
        digits = re.sub(r"\D", "", match.group())
        if _CARD_BRANDS.match(digits) and luhn.is_valid(digits):
            yield Secret("card number", *match.span())


def secrets_in(line: str) -> list[Secret]:
    """The secrets in one line of text, in order, none overlapping another (a long line
    scanned in overlapping windows of `WINDOW` characters)."""
    if len(line) <= WINDOW:
        return _merged(_found(line))
    step = WINDOW // 2
    return _merged([Secret(s.kind, s.start + at, _token_end(line, s.start + at, s.end + at))
                    for at in range(0, len(line) - step, step)
                    for s in _found(line[at:at + WINDOW])])


def _found(line: str) -> list[Secret]:
    """Every secret each rule finds in `line`, overlapping as found."""
    found: list[Secret] = []
    for kind, pattern, groups in _KEY_PATTERNS if _ANY_KEY.search(line) else ():
        found += [Secret(kind, *_span(m, group=None if groups else 0))
                  for m in pattern.finditer(line) if not _inside_a_token(line, m)]
    lowered = line.lower() if line.isascii() else None
    assigned = _ASSIGNMENT_WORDS.found_in(line, lowered)  # its rules' and the misread ones'
    for pattern, group in _ASSIGNMENTS if assigned else ():
        for match in pattern.finditer(line):
            if not match.group(group):
                continue
            start, end = _span(match, group=group)
            value = line[start:end]
            quoted = 0 < start and line[start - 1] in _QUOTES and line[end:end + 1] == line[
                start - 1]
            if not quoted and (comment := _COMMENT.search(value)):  # `… = hunter2 # staging`
                value = value[:comment.start()]
                end = start + len(value)
            if len(value.split()) > MAX_WORDS and not quoted:  # it runs on: its first word
                value = value.split()[0]  # is the secret, or its words that are no prose
                first = _token_end(line, start, start + len(value))
                end = _said_on(line, first, min(end, _CLAUSE_END.search(line, first).start()))
            # group 1 is the name's word (the opening quote of a comparison's value written
            # first, `"hunter2" == password`)
            if _literal(value, line[start + len(value):],
                        written=quoted or _written(line, match.end(1), start)):
                found.append(Secret("assigned secret", start, end))
    named = _NAMED_NEEDS.found_in(line, lowered)
    for match in _NAMED.finditer(line) if named else ():
        group = "quoted" if match["quoted"] else "value"
        value = match[group]
        written = group == "quoted" or _written(line, match.end("name"), match.start(group))
        if _literal(value, line[match.end(group):], written=written) and (
                match["name"].lower() != "token" or _TOKEN_LIKE.match(value)):
            found.append(Secret("assigned secret", *match.span(group)))
    for match in _MISREAD_ASSIGNED.finditer(line) if named or assigned else ():
        value, first = match["value"], match["value"].split()[0]  # what the rules above miss:
        if ((match["noisy"] or match["star"] or value != first)  # a misread mark, a split
                and _literal(first, line[match.start("value") + len(first):])
                and _TOKEN_LIKE.match("".join(value.split()))):
            found.append(Secret("assigned secret", *match.span("value")))
    for match in _MISREAD_URL.finditer(line) if _URL_NEEDS.found_in(line, lowered) else ():
        found.append(Secret("Basic Auth Credentials", *match.span("value")))
    said = _WHAT_NEEDS.found_in(line, lowered)
    for match in (*_SAID.finditer(line), *_SAID_SET.finditer(line), *_SAID_BARE.finditer(line)
                  ) if said else ():
        found += _said(line, match)
    found += _phrases(line)
    found += _cards(line)
    if _ARGUMENT_NEEDS.found_in(line, lowered):
        found += [Secret(*secret) for secret in credential_args.found(line)]
    found += [Secret(*secret) for secret in credential_files.found(line)]
    if not found and (value := private_keys.labelled_value(line)):
        found.append(Secret(private_keys.KEY_LINES, *value))
    return found


def _said(line: str, match: re.Match[str]) -> list[Secret]:
    """The secret a `_SAID`, `_SAID_SET` or `_SAID_BARE` match names, if its value is one. A
    said value whose clause goes on runs on to the clause's end when that is at most
    `MAX_WORDS` words ("my wifi password is purple monkey"), else over its spoken pieces and
    the words that are no prose (`_said_on`: "hunter 2", "4 8 2 1", "purple monkey dishwasher
    42"); a number said digit by digit is judged whole. A bare value, or one it was set to,
    must look like one: letters and digits, a code's digits, or spoken pieces ("PIN changed
    to four eight two one")."""
    value, start = match["value"].rstrip(".,;!?"), match.start("value")
    what = match["what"]
    card = _CARD.match(line, start) if _CARD_LABEL.fullmatch(what) else None
    if card:  # its Luhn digit (`_cards`) may be misread
        return [Secret(_kind(what), start, card.end())]
    end, quoted = start + len(value), start and line[start - 1] in _CLOSING_QUOTES
    set_to = match.re is _SAID_SET or _SET_TO_SAID.search(line, match.end("what"), start)
    if match.re is not _SAID_BARE and value == match["value"] and not quoted:
        clause = _CLAUSE_END.search(line, end).start()
        if set_to:  # on over its spoken pieces alone: "… to Tr0ub4dor yesterday"
            end = _said_on(line, end, clause, most=1)
        elif len(line[start:clause].split()) <= MAX_WORDS:
            end = clause
        else:
            end = _said_on(line, end, clause)
    whole = "".join(line[start:end].split())
    if _CARD_CODE.fullmatch(what) and _CARD_CODE_DIGITS.fullmatch(whole):
        return [Secret(_kind(what), start, end)]
    literal = (_literal(whole, line[end:]) if whole.isdigit()
               else _literal(value, line[match.end("value"):], written=bool(quoted)))
    must_look = match.re is _SAID_BARE or (set_to and not quoted)
    if (literal and not (_COUNTED.search(what) and _NUMBER.match(whole))
            and (not must_look or _LOOKS_SECRET.match(whole)
                 or (end > start + len(value) and _SPOKEN.fullmatch(value))  # "four eight …"
                 or (_CODE.match(what) and _CODE_DIGITS.fullmatch(whole)))):
        if end > start + len(value):  # on past its first word
            return [Secret(_kind(what), start, end)]
        start, end = _span(match, group="value")
        return [Secret(_kind(what), start, _quoted_end(line, start, end))]
    return []


def _said_on(line: str, end: int, clause: int, most: int = MAX_SAID_WORDS) -> int:
    """Where a said value whose first word ends at `end` ends, its clause ending at `clause`:
    on over its spoken pieces (`_SPOKEN`, any number of them) and the words that are no prose
    (at most `most` with its first), stopping at a prose word or another label."""
    words = 1
    while word := _SAID_WORD.match(line, end, clause):
        if not _SPOKEN.fullmatch(word[1]):
            if words == most or word[1].lower() in _PROSE:
                break
            words += 1
        end = word.end()
    return end


def _kind(what: str) -> str:
    """The kind of a secret said in words, as what it is was said, one of them: "passwords" and
    "card numbers" are counted as "password" and "card number" (no singular of `_WHAT` ends in
    an s; a seed phrase's "words" are what it is), and an "API-Key" header's as "api key"."""
    return re.sub(r"(?<!word)s\b", "", what.lower()).replace("api-key", "api key")


def _quoted_end(line: str, start: int, end: int) -> int:
    """Where a secret's value found at `line[start:end]` ends: at its closing quote when a
    quote opens it (on past a comma: "seed phrase = 'abandon ability, able'"), else `end`."""
    closing = _CLOSING_QUOTES.get(line[start - 1]) if start else None
    if closing is None:
        return end
    close = line.find(closing, start)
    return close if close != -1 else end


def _phrases(line: str) -> Iterator[Secret]:
    """A passphrase's or a seed phrase's words (`_PHRASE`), when the first is no word that says
    what it is like ("my passphrase is too long")."""
    for match in _PHRASE.finditer(line):
        start = match.start("value")
        value = line[start:_quoted_end(line, start, match.end("value"))]
        first = value.split()[0]
        if (_literal(value, line[start + len(value):])
                and not _NOT_LITERAL.match(first)  # "is 12 words long"
                and not (match["verb"] and _NOT_A_VALUE_FORM.match(first))):  # "was rotated"
            words = list(re.finditer(r"\S+", value))[:MAX_PHRASE_WORDS]
            yield Secret(_kind(match["what"]), start, start + words[-1].end())


def _merged(found: list[Secret]) -> list[Secret]:
    """`found` in order, each run of overlapping secrets one span (the first one's kind)."""
    kept: list[Secret] = []
    for secret in sorted(found, key=lambda s: (s.start, -s.end)):
        if secret.end - secret.start < 1:
            continue
        if kept and secret.start < kept[-1].end:  # overlapping: one span covers both
            last = kept[-1]
            kept[-1] = Secret(last.kind, last.start, max(last.end, secret.end))
            continue
        kept.append(secret)
    return kept


def secret_kind(text: str) -> str | None:
    """What kind of secret `text` holds, if any (the first found). A text holding `HIDDEN`
    held one: what the user said reaches the memory model with its secrets hidden, and a fact
    "their wifi password is [secret hidden]" says nothing worth keeping but that there is one."""
    if HIDDEN in text:
        return HIDDEN_ALREADY
    if keys := private_keys.key_lines(text.split("\n"))[1]:
        return next(iter(keys))
    found = secrets_in(text)
    return found[0].kind if found else None


def hide_secrets(lines: list[str]) -> tuple[list[str], Counter[str]]:
    """`lines` with each secret's value replaced by `HIDDEN` (each line of a private key's
    block whole: memory/private_keys.py), and how many of each kind were hidden."""
    keyed, hidden = private_keys.key_lines(lines)
    out: list[str] = []
    for at, line in enumerate(lines):
        if at in keyed:
            out.append(HIDDEN)
            continue
        found = secrets_in(line)
        for secret in reversed(found):
            line = line[:secret.start] + HIDDEN + line[secret.end:]
        hidden.update(secret.kind for secret in found)
        out.append(line)
    return out, hidden


def hide_in_text(text: str) -> str:
    """`text` with each secret's value replaced by `HIDDEN`, line by line (unchanged when it
    holds none)."""
    lines, hidden = hide_secrets(text.split("\n"))
    return "\n".join(lines) if hidden else text


@cache
def rules() -> str:
    """Which rules find secrets: a hash of the code of this module and of those it calls for
    rules (memory/credential_args.py, credential_files.py, private_keys.py) and detect-secrets'
    version. What was read for secrets under other rules is read again (a knowledge document
    at its next ingest, memory/knowledge.py): rules that find more would otherwise leave it as
    the older ones found it. An edit to a comment, a docstring or the layout leaves the hash as
    it was (`code_of`): it changes nothing found, and would have every tenant's documents read
    again."""
    code = b"".join(code_of(Path(module).read_text()) for module in (
        __file__, credential_args.__file__, credential_files.__file__, private_keys.__file__))
    return hashlib.sha256(code + version("detect-secrets").encode()).hexdigest()[:16]


def code_of(source: str) -> bytes:
    """A module's code as Python parses it, without its comments, docstrings or layout (its
    syntax tree, less the docstrings, without line numbers)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def hide_in_texts(texts: Iterable[str]) -> list[str]:
    """`hide_in_text` of each text, in order (a thread's work: every line is scanned)."""
    return [hide_in_text(text) for text in texts]
