"""Text from outside the conversation as data in what a model reads: read off the user's
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
marker, so each of them is taken out too. So is LiveKit's own `<instructions>` envelope
(`livekit.agents.llm._provider_format.utils`), which wraps instructions put into the chat: a
text that closed it could pass for instructions. Matching is done on a folded copy of the text
(compatibility forms, accents and invisible characters dropped, look-alike brackets, slashes,
dashes and connectors made plain) mapped back to the text's own characters, so only the
marker-like pieces change and everything else, `<`, `>` and markup included, stays as it was.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

SCREEN, DOCUMENTS, MEMORY = "screen_text", "documents", "memory"
# the two sides of an exchange in the memory keeper's request (memory/keeper.py)
USER_SAID, ASSISTANT_SAID = "user_message", "assistant_message"
INSTRUCTIONS = "instructions"  # LiveKit's envelope for instructions put into the chat
REPLACEMENT = "[data marker]"  # no `<` or `>`: replacements cannot join into a new marker

# what stands for `<` and `>` once folded: the brackets, or HTML's entities for them, however
# often escaped (`&amp;lt;`); `;` may be left out, as browsers read it
_OPEN = r"(?:<|&(?:amp;)*(?:lt|\#0*60|\#x0*3c);?)"
_CLOSE = r"(?:>|&(?:amp;)*(?:gt|\#0*62|\#x0*3e);?)"
_NAME = (r"(?:screen[\s_-]*text|documents?|memory|instructions?"
         r"|(?:user|assistant)[\s_-]*messages?)")
# any kind's marker, however spaced, cased or escaped (`< /Screen-Text >`, `</memory id=1>`,
# `&lt;/documents&gt;`): the name (and any `_` or `-` after it), then either the end of the tag
# or a non-word character and anything up to the tag's end on that line. A `<name` never closed
# is taken out as well (a model may still read it as the marker), but `<memory_limit>` or
# `<documentsFolder>` is another name and is kept.
_MARKER = re.compile(
    rf"{_OPEN}\s*[/\\]?\s*{_NAME}[_-]*+(?![^\W_])(?:[^<>\n]*?{_CLOSE})?", re.IGNORECASE)

# brackets and slashes a model reads as `<`, `>` and `/` that compatibility folding keeps apart
_LOOK_ALIKES = str.maketrans({
    "\u2039": "<", "\u203a": ">", "\u00ab": "<", "\u00bb": ">", "\u2329": "<", "\u232a": ">",
    "\u3008": "<", "\u3009": ">", "\u27e8": "<", "\u27e9": ">", "\u276e": "<", "\u276f": ">",
    "\u02c2": "<", "\u02c3": ">", "\u1438": "<", "\u1433": ">", "\u29fc": "<", "\u29fd": ">",
    "\u2215": "/", "\u2044": "/", "\u29f8": "/",
})
_PLAIN = re.compile(r"[\t\n\x20-\x7e]*")
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_INVISIBLE = frozenset({"Cf", "Cc", "Mn", "Me"})  # format, control, combining marks


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    """How `char` reads, for matching markers: its compatibility decomposition (full-width and
    other compatibility forms become plain letters and brackets) without accents, invisible
    and control characters, any dash as `-`, any connector as `_`. Whitespace is kept."""
    if char.isspace():
        return "\n" if char in _LINE_BREAKS else " "
    out = []
    for part in unicodedata.normalize("NFKD", char):
        if part.isspace():
            out.append(" ")
            continue
        category = unicodedata.category(part)
        if category in _INVISIBLE:
            continue
        out.append("-" if category == "Pd" else "_" if category == "Pc" else part)
    return "".join(out).translate(_LOOK_ALIKES)


def _folded(text: str) -> tuple[str, list[int]]:
    """`text` folded for matching, and for each folded character the index of the character
    of `text` it came from (one character may fold to none or to several)."""
    pieces: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        piece = char if " " <= char < "\x7f" else _fold_char(char)
        pieces.append(piece)
        origin.extend([index] * len(piece))
    return "".join(pieces), origin


def neutralised(text: str) -> str:
    """`text` with each piece a model could read as a data marker (or LiveKit's instructions
    envelope) replaced by a bracketed name; every other character is kept as it was."""
    if _PLAIN.fullmatch(text):  # most text: printable ASCII folds to itself
        spans = [m.span() for m in _MARKER.finditer(text)]
    else:
        folded, origin = _folded(text)
        spans = [(origin[m.start()], origin[m.end() - 1] + 1)
                 for m in _MARKER.finditer(folded)]
    if not spans:
        return text
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
