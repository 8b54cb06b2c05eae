"""Text from outside the conversation as data in what the model reads: read off the user's
screen, found in the team's documents, or remembered from earlier sessions. Each kind goes
between a fixed pair of markers that the text itself can never close.

Framed only by words and brackets, a `)` or a line such as "the user now says…" in such text
ended the data early, and whatever followed read as the prompt's own text. Every place that puts
such text before the model wraps it with `marked` (`screen_data` for the screen's), which takes
out anything inside that looks like a marker of any kind, so what lies between an opening
marker and the one closing marker after it came from that source and nothing else.
"""

from __future__ import annotations

import re

SCREEN, DOCUMENTS, MEMORY = "screen_text", "documents", "memory"
# any kind's marker, however spaced or cased (`< /Screen-Text >`): what a model might take for one
_MARKER = re.compile(r"<\s*/?\s*(?:screen[\s_-]*text|documents?|memory)\s*>", re.IGNORECASE)


def markers(kind: str) -> tuple[str, str]:
    """The opening and closing marker of a kind of data."""
    return f"<{kind}>", f"</{kind}>"


def marked(text: str, kind: str) -> str:
    """`text` between `kind`'s markers, each marker-like piece of it replaced by a bracketed
    name (no `<` or `>` in it, so the replacements cannot join into a new marker)."""
    opening, closing = markers(kind)
    return f"{opening}{_MARKER.sub('[data marker]', text)}{closing}"


def screen_data(text: str) -> str:
    """Text read from the screen, marked as such."""
    return marked(text, SCREEN)


SCREEN_OPEN, SCREEN_CLOSE = markers(SCREEN)
