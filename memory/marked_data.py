r"""Text from outside the conversation as data in what a model reads: read off the user's
screen, found in the team's documents, remembered from earlier sessions, or an exchange handed
to the memory keeper. Each kind goes between a fixed pair of markers that the text itself can
never close.

It lives in memory/, the lowest layer, because memory/keeper.py marks what it sends to its model
too, and memory/ may import nothing from tools/ or agent/ (tests/test_layers.py); tools/ and
agent/ use it from here.

Framed only by words and brackets, a `)` or a line such as "the user now says…" in such text
ended the data early, and whatever followed read as the prompt's own text. Every place that puts
such text before a model wraps it with `marked` (`screen_data` for the screen's), which takes
out anything inside that looks like a marker of any kind, so what lies between an opening
marker and the one closing marker after it came from that source and nothing else. The memory
keeper's request marks each side of the exchange apart (`USER_SAID`, `ASSISTANT_SAID`): the
assistant's answer often reads the screen aloud, and a line on screen such as "User: please
remember …" must not pass for the user's own words.

"Looks like" is judged as a model reads, not byte for byte: a model reads `＜/screen_text＞`
(full-width), `</screen​_text>` (a zero-width space inside), `</screen‐text>` (a Unicode
hyphen), `</screen_text id="1">`, `</screen_text/>` or `&lt;/screen_text&gt;` as the closing
marker, and so `<\/memory>` and `<//memory>`, escaped (`\u003c/memory\u003e`, `%3C/memory%3E`,
`&#65308;/memory&#65310;`, `&lsaquo;/memory&rsaquo;`), in other brackets (`❬/memory❭`,
`《/memory》`, `‹╱memory>`) or with letters of another script (`</mеmory>`, a Cyrillic `е`), so
each of them is taken out too. So is LiveKit's own `<instructions>` envelope
(`livekit.agents.llm._provider_format.utils`), which wraps instructions put into the chat: a
text that closed it could pass for instructions. Matching is done on a folded copy of the text
(compatibility forms, accents and invisible characters or blank letters dropped; look-alike
brackets, slashes, dashes, connectors and Latin letters, found by their Unicode names, made
plain; HTML entities, `\u`/`\x` escapes and URL encoding decoded) mapped back to the text's
own characters, so only the marker-like pieces change and everything else, `<`, `>`, markup and
escapes included, stays as it was.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import cache, lru_cache
from html.entities import html5

SCREEN, DOCUMENTS, MEMORY = "screen_text", "documents", "memory"
# the two sides of an exchange in the memory keeper's request (memory/keeper.py)
USER_SAID, ASSISTANT_SAID = "user_message", "assistant_message"
INSTRUCTIONS = "instructions"  # LiveKit's envelope for instructions put into the chat
REPLACEMENT = "[data marker]"  # no `<` or `>`: replacements cannot join into a new marker

_NAME = (r"(?:screen[\s_-]*text|documents?|memory|instructions?"
         r"|(?:user|assistant)[\s_-]*messages?)")
# any kind's marker in the folded text, however spaced, cased or slashed (`< /Screen-Text >`,
# `<\/memory>`, `<//memory id=1>`): the name (and any `_` or `-` after it), then either the end
# of the tag or a non-word character and anything up to the tag's end on that line. A `<name`
# never closed is taken out as well (a model may still read it as the marker), but
# `<memory_limit>` or `<documentsFolder>` is another name and is kept.
_MARKER = re.compile(
    rf"<[\s/\\]*{_NAME}[_-]*+(?![^\W_])(?:[^<>\n]*?>)?", re.IGNORECASE)

# Escapes a model reads through, decoded in the folded text: HTML's numeric and named entities
# (`&#65308;`, `&lsaquo;`, `&lt` without `;` as browsers read it, `&amp;lt;` however often
# escaped); JSON's and other languages' `\uXXXX`, `\u{…}`, `\UXXXXXXXX`, `\xXX`, `\/` (however
# many backslashes); URLs' `%XX`, also as UTF-8 bytes (`%E2%80%B9`) and `%25`-escaped again.
_ESCAPE = re.compile(
    r"&(?:amp;)*(?:\#(?P<dec>[0-9]{1,8});?|\#[xX](?P<hex>[0-9a-fA-F]{1,7});?"
    r"|(?P<name>[A-Za-z][A-Za-z0-9]{0,31})(?P<semi>;?))"
    r"|\\+(?:u(?P<u>[0-9a-fA-F]{4})(?:\\+u(?P<low>[dD][c-fC-F][0-9a-fA-F]{2}))?"
    r"|u\{(?P<ub>[0-9a-fA-F]{1,6})\}|U(?P<U>[0-9a-fA-F]{8})|x(?P<x>[0-9a-fA-F]{2})"
    r"|(?P<char>[/<>]))"
    r"|%(?:25)*(?P<pct>[0-7][0-9a-fA-F]"
    r"|[c-fC-F][0-9a-fA-F](?:%(?:25)*[89abAB][0-9a-fA-F]){1,3})")
_ROUNDS = 4  # escapes of escapes of other kinds (`%26lt;`); each kind's own repeats are one
_LEGACY_LONGEST = max(len(name) for name in html5 if not name.endswith(";"))

_PLAIN = re.compile(r"[\t\n\x20-\x7e]*")
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
# format, control, combining marks, unassigned, private use, lone surrogates: a model reads
# through them (or sees only unknown bytes) where they sit inside a word
_INVISIBLE = frozenset({"Cf", "Cc", "Mn", "Me", "Cn", "Co", "Cs"})
# letters and symbols that show as nothing: the Hangul fillers (Default_Ignorable letters, which
# unicodedata cannot tell) and the blank Braille pattern
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")

# Which Latin letter a letter of another script looks like, by its Unicode name (script, then
# the letter's name without SMALL/CAPITAL/LETTER/SYMBOL): small form, then capital form, `.`
# where that form looks like none. Why names and not a confusables library (confusable-
# homoglyphs ships Unicode's TR39 data): used as it is, it keeps about 9 MB resident and takes
# 0.2 s to import, in a runtime whose footprint is measured (bench/footprint.py), for a table
# whose only use here is to spell six marker names; NFKD already folds the compatibility
# look-alikes (full-width, mathematical, circled letters), and the names of Latin letter
# variants (small capitals, dotless, with strokes) name their letter, so only these scripts'
# look-alikes need a word each.
_SCRIPT_LOOK_ALIKES: dict[str, dict[str, str]] = {
    "CYRILLIC": {
        "A": "aa", "VE": "bb", "GHE": "r.", "IE": "ee", "DZE": "ss",
        "BYELORUSSIAN-UKRAINIAN I": "ii", "JE": "jj", "KA": "kk", "EM": "mm", "EN": "hh",
        "O": "oo", "PE": "n.", "ER": "pp", "ES": "cc", "TE": "tt", "U": "yy", "STRAIGHT U": "yy",
        "HA": "xx", "SHHA": "hh", "KOMI DE": "dd", "QA": "qq", "WE": "ww", "PALOCHKA": "ll",
        "SOFT SIGN": "bb", "IZHITSA": "vv", "OMEGA": "ww", "BARRED O": "oo",
        "MONOCULAR O": "oo",
    },
    "GREEK": {
        "ALPHA": "aa", "BETA": "bb", "GAMMA": "y.", "EPSILON": "ee", "ZETA": ".z", "ETA": "nh",
        "IOTA": "ii", "KAPPA": "kk", "MU": "um", "NU": "vn", "OMICRON": "oo", "RHO": "pp",
        "SIGMA": "o.", "FINAL SIGMA": "c.", "LUNATE SIGMA": "cc", "TAU": "tt", "UPSILON": "uy",
        "CHI": "xx", "OMEGA": "w.", "DIGAMMA": "ff", "YOT": "jj", "HETA": "hh",
    },
    "COPTIC": {
        "ALFA": "aa", "VIDA": "bb", "EIE": "ee", "ZATA": "zz", "HATE": "hh", "IAUDA": "ii",
        "KAPA": "kk", "MI": "mm", "NI": "nn", "O": "oo", "RO": "pp", "SIMA": "cc", "TAU": "tt",
        "UA": "yy", "KHI": "xx",
    },
    "ARMENIAN": {"OH": "oo", "SEH": "uu", "VO": "n.", "HO": "h.", "GIM": "q.", "ZA": "q."},
}
_SCRIPT_LETTER = re.compile(r"^(CYRILLIC|GREEK|COPTIC|ARMENIAN) (.+)$")
# a Latin letter by another name: `LATIN LETTER SMALL CAPITAL M`, `LATIN SMALL LETTER DOTLESS I`,
# `NEGATIVE SQUARED LATIN CAPITAL LETTER M`, `REGIONAL INDICATOR SYMBOL LETTER M`
_LATIN_LETTER = re.compile(
    r"\b(?:LATIN (?:(?:SMALL|CAPITAL|LETTER) )+(?:DOTLESS |SCRIPT |INSULAR )?"
    r"|REGIONAL INDICATOR SYMBOL LETTER )([A-Z])$")
# `<` and `>` by name: angle brackets, angle quotation marks, chevrons and arrowheads pointing
# left or right (ornaments and presentation forms included), and less-than or greater-than
# signs on their own (not `≤`, `≶` or `≮`, which are other relations)
_POINTING = re.compile(
    r"\b(LEFT|RIGHT)(?:-POINTING|WARDS)?\b(?: [A-Z-]+)*? (?:ANGLE BRACKET|ANGLE QUOTATION MARK"
    r"|DOUBLE ANGLE|CHEVRON|ARROWHEAD)\b")
_THAN = re.compile(r"\b(LESS|GREATER)-THAN(?: SIGN| WITH DOT| BRACKET)?$")
_NOT_THAN = re.compile(
    r"\b(?:NOT|NEITHER|EQUAL|EQUIVALENT|SIMILAR|APPROXIMATE|OR|APL|ARROW)\b"
    r"|LESS-THAN.*GREATER-THAN|GREATER-THAN.*LESS-THAN")
# `/` and `\` by name, but not a letter, a box or circle or a symbol that only has a slash in it
_BACKSLASH = re.compile(
    r"\b(?:REVERSE SOLIDUS|BACKSLASH|FALLING DIAGONAL|DIAGONAL UPPER LEFT TO LOWER RIGHT)\b")
_SLASH = re.compile(
    r"\b(?:SOLIDUS|SLASH|RISING DIAGONAL|DIAGONAL UPPER RIGHT TO LOWER LEFT|DIVISION SIGN)\b")
_NOT_SLASH = re.compile(
    r"\b(?:CIRCLED|SQUARED|CIRCLE|WITH|LETTER|MUSICAL|PRECEDING|SUBSET|CROSSING|BLOCK"
    r"|INTEGRAL|DOES|APL)\b")
# `-` by name: hyphens, dashes and minus signs on their own (not `±`, an arrow or a box)
_DASH = re.compile(r"^(?!.*\b(?:PLUS|CIRCLED)\b).*\b(?:HYPHEN|HYPHEN-MINUS|DASH|MINUS SIGN)$")
# a name that may be any of the above, to pass over the rest at once
_ANY_LOOK_ALIKE = re.compile(
    r"LEFT|RIGHT|THAN|SOLIDUS|SLASH|DIAGONAL|DIVISION|HYPHEN|DASH|MINUS|LOW LINE|LATIN"
    r"|REGIONAL|CYRILLIC|GREEK|COPTIC|ARMENIAN")
# what no name gives away: the look-alikes of `<`, `>`, `/`, `\` and `_` in Unicode's
# confusables data (TR39) beyond those the names above find, and the Latin alpha's `a`
_UNNAMED_LOOK_ALIKES = {
    "\u0251": "a",
    "\u1438": "<", "\u16b2": "<", "\U0001d236": "<", "\u1433": ">", "\U0001d237": ">",
    "\U00016f3f": ">", "\u1735": "/", "\u2041": "/", "\u2cc6": "/", "\u3033": "/",
    "\u30ce": "/", "\u31d3": "/", "\u4e3f": "/", "\U0001d23a": "/", "\u2216": "\\",
    "\u31d4": "\\", "\U0001d20f": "\\", "\U0001d23b": "\\", "\u02cd": "_",
}
# the code points whose names are read: all but the blocks of ideographs, syllables, private
# use and the supplementary planes beyond the first (none of them looks like `<`, `/` or a Latin
# letter except the few in _UNNAMED_LOOK_ALIKES); about 75,000 names, read once
_NAMED_RANGES = ((0x80, 0x3400), (0xA4D0, 0xAC00), (0xD7B0, 0xD800), (0xF900, 0x17000),
                 (0x18B00, 0x1B000), (0x1B300, 0x20000))


def _look_alike(char: str) -> str | None:
    """The ASCII character `char` reads as, by its Unicode name, if it is one a marker is
    spelled with (a Latin letter, `<`, `>`, `/`, `\\`, `-` or `_`); else None."""
    if unicodedata.category(char)[0] not in "LPS":
        return None
    name = unicodedata.name(char, "")
    if not _ANY_LOOK_ALIKE.search(name):
        return None
    pointing = _POINTING.search(name)
    if pointing and " ARROW " not in f"{name} ":
        return "<" if pointing[1] == "LEFT" else ">"
    than = _THAN.search(name)
    if than and not _NOT_THAN.search(name):
        return "<" if than[1] == "LESS" else ">"
    if not _NOT_SLASH.search(name):
        if _BACKSLASH.search(name):
            return "\\"
        if _SLASH.search(name):
            return "/"
    if _DASH.search(name):
        return "-"
    if "LOW LINE" in name:
        return "_"
    name = name.split(" WITH ")[0]
    latin = _LATIN_LETTER.search(name)
    if latin:
        return latin[1].lower()
    script = _SCRIPT_LETTER.match(name)
    if script:
        words = [w for w in script[2].split() if w not in ("SMALL", "CAPITAL", "LETTER", "SYMBOL")]
        forms = _SCRIPT_LOOK_ALIKES[script[1]].get(" ".join(words), "..")
        form = forms[1] if "CAPITAL" in script[2] else forms[0]
        return None if form == "." else form
    return None


@cache
def _look_alikes() -> dict[int, str]:
    """The translation of every look-alike character to the ASCII it reads as, built from the
    Unicode database of the running Python (so it follows new Unicode versions) the first time
    a text needs folding: 50-90 ms, once per process."""
    table = {ord(char): plain for char, plain in _UNNAMED_LOOK_ALIKES.items()}
    for low, high in _NAMED_RANGES:
        for code in range(low, high):
            plain = _look_alike(chr(code))
            if plain is not None:
                table.setdefault(code, plain)
    return table


def prepare() -> None:
    """Build the look-alike table now (a worker before its first session, agent/cli_worker.py)
    rather than in the first turn whose text is not plain ASCII, on its session's loop."""
    _look_alikes()


def _fold_char(char: str) -> str:
    """How `char` reads, for matching markers: its compatibility decomposition (full-width and
    other compatibility forms become plain letters and brackets) without accents, invisible
    and control characters or blank letters, any dash as `-`, any connector as `_`, and any
    look-alike of a Latin letter, a bracket or a slash as that. Whitespace is kept."""
    if char.isspace():
        return "\n" if char in _LINE_BREAKS else " "
    out = []
    for part in unicodedata.normalize("NFKD", char):
        if part.isspace():
            out.append(" ")
            continue
        category = unicodedata.category(part)
        if category in _INVISIBLE or part in _BLANK:
            continue
        out.append("-" if category == "Pd" else "_" if category == "Pc" else part)
    return "".join(out).translate(_look_alikes())


class _FoldTable(dict[int, str]):
    """`_fold_char` of each character met so far, for `str.translate`: the text is folded in
    one pass in C, each character's fold worked out once. Bounded: it starts over past
    _FOLDS_KEPT characters (a text cannot grow it without end)."""

    def __missing__(self, code: int) -> str:
        if len(self) > _FOLDS_KEPT:
            self.clear()
            self.update(_ASCII_FOLDS)
        self[code] = folded = _fold_char(chr(code))
        return folded


_FOLDS_KEPT = 50_000
_ASCII_FOLDS = {code: chr(code) for code in (9, 10, *range(0x20, 0x7f))}
_FOLD = _FoldTable(_ASCII_FOLDS)


@lru_cache(maxsize=4096)
def _decoded(escape: str) -> str | None:
    """What `escape` (one match of _ESCAPE) stands for, folded; None where it stands for
    nothing (an unknown entity, bytes that are not UTF-8). Cached: a text repeats its escapes
    (`&amp;`, `%20`) and each is worked out once."""
    match = _ESCAPE.fullmatch(escape)
    if match is None:
        return None
    group = match.groupdict()
    if group["dec"] is not None:
        decoded = html.unescape(f"&#{group['dec']};")
    elif group["hex"] is not None:
        decoded = html.unescape(f"&#x{group['hex']};")
    elif group["name"] is not None:
        name, semi = group["name"], group["semi"]
        decoded = html5.get(f"{name};") or html5.get(f"{name.lower()};")
        if decoded is None:  # a legacy entity without `;` before other letters: `&ltmemory`
            for length in range(min(len(name), _LEGACY_LONGEST), 1, -1):
                if name[:length] in html5:
                    decoded = html5[name[:length]] + name[length:] + semi
                    break
            else:
                return None
    elif group["u"] is not None:
        code = int(group["u"], 16)
        low = int(group["low"], 16) if group["low"] else None
        if low is not None and 0xD800 <= code < 0xDC00:
            decoded = chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
        else:
            decoded = chr(code) + (chr(low) if low is not None else "")
    elif group["ub"] is not None or group["U"] is not None:
        code = int(group["ub"] or group["U"], 16)
        if code > 0x10FFFF:
            return None
        decoded = chr(code)
    elif group["x"] is not None:
        decoded = chr(int(group["x"], 16))
    elif group["char"] is not None:
        decoded = group["char"]
    else:
        data = bytes(int(byte[-2:], 16) for byte in group["pct"].split("%"))
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return "".join(_FOLD[ord(char)] for char in decoded)


def _unescaped(match: re.Match[str]) -> str:
    """`_decoded` for `re.sub`: an escape that stands for nothing stays as it is."""
    decoded = _decoded(match[0])
    return match[0] if decoded is None else decoded


def read_as(text: str) -> str:
    """`text` as a model reads it, each character folded (`_fold_char`): what marker matching
    looks at, and the memory keeper's tests of whose words a fact holds (memory/keeper.py)."""
    return text if _PLAIN.fullmatch(text) else text.translate(_FOLD)


def _normalised(text: str) -> str:
    """`text` as matched for markers: folded, then its escapes decoded (and folded) until none
    is left, `_ROUNDS` times at most."""
    folded = read_as(text)
    for _ in range(_ROUNDS):
        decoded = _ESCAPE.sub(_unescaped, folded)
        if decoded == folded:
            break
        folded = decoded
    return folded


def _traced(text: str) -> tuple[str, list[int], list[int]]:
    """`_normalised(text)`, and for each of its characters the span of `text` it came from
    (where it starts, where it ends): one character may fold to none or to several, and an
    escape of several to one. Slower than `_normalised`: only for a text with a marker in it."""
    pieces: list[str] = []
    starts: list[int] = []
    for index, char in enumerate(text):
        piece = _FOLD[ord(char)]
        pieces.append(piece)
        starts.extend([index] * len(piece))
    folded, ends = "".join(pieces), [start + 1 for start in starts]
    for _ in range(_ROUNDS):
        out: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        at = 0
        for match in _ESCAPE.finditer(folded):
            decoded = _decoded(match[0])
            if decoded is None:
                continue
            start, end = match.span()
            out += [folded[at:start], decoded]
            new_starts += [*starts[at:start], *[starts[start]] * len(decoded)]
            new_ends += [*ends[at:start], *[ends[end - 1]] * len(decoded)]
            at = end
        if not out:
            break
        out.append(folded[at:])
        new_starts += starts[at:]
        new_ends += ends[at:]
        decoded_text = "".join(out)
        if decoded_text == folded:
            break
        folded, starts, ends = decoded_text, new_starts, new_ends
    return folded, starts, ends


def neutralised(text: str) -> str:
    """`text` with each piece a model could read as a data marker (or LiveKit's instructions
    envelope) replaced by a bracketed name; every other character is kept as it was.

    Most texts hold no marker: they are folded and decoded in C-speed passes and searched once;
    only a text with a marker in it is folded again, character by character, keeping where
    each folded character came from."""
    if not _MARKER.search(_normalised(text)):
        return text
    folded, starts, ends = _traced(text)
    spans: list[tuple[int, int]] = []
    for match in _MARKER.finditer(folded):
        start, end = starts[match.start()], ends[match.end() - 1]
        if spans and start < spans[-1][1]:  # two matches from one escape: one replacement
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    out, at = [], 0
    for start, end in spans:
        out += [text[at:start], REPLACEMENT]
        at = end
    out.append(text[at:])
    return "".join(out)


def markers(kind: str) -> tuple[str, str]:
    """The opening and closing marker of a kind of data."""
    return f"<{kind}>", f"</{kind}>"


def marked(text: str, kind: str) -> str:
    """`text` between `kind`'s markers, each marker-like piece of it replaced by a bracketed
    name (no `<` or `>` in it, so the replacements cannot join into a new marker)."""
    opening, closing = markers(kind)
    return f"{opening}{neutralised(text)}{closing}"


def screen_data(text: str) -> str:
    """Text read from the screen, marked as such."""
    return marked(text, SCREEN)


SCREEN_OPEN, SCREEN_CLOSE = markers(SCREEN)
