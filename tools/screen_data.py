"""Screen text as data in what the model reads: between a fixed pair of markers that the text
itself can never close.

Text read from the screen goes into prompts, tool results and instructions. Framed only by
words and brackets, a `)` or a line such as "the user now says…" on screen ended the data early
and whatever followed read as the prompt's own text. Every such place wraps the screen's text
with `screen_data`, which takes out anything inside that looks like either marker, so what lies
between `SCREEN_OPEN` and the one `SCREEN_CLOSE` after it came from the screen and nothing else.
"""

from __future__ import annotations

import re

SCREEN_OPEN, SCREEN_CLOSE = "<screen_text>", "</screen_text>"
# either marker, however spaced or cased (`< /Screen-Text >`): what a model might still take for one
_MARKER = re.compile(r"<\s*/?\s*screen[\s_-]*text\s*>", re.IGNORECASE)


def screen_data(text: str) -> str:
    """`text` from the screen between the markers, each marker-like piece of it replaced by a
    bracketed name (no `<` or `>` in it, so the replacements cannot join into a new marker)."""
    return f"{SCREEN_OPEN}{_MARKER.sub('[screen text marker]', text)}{SCREEN_CLOSE}"
