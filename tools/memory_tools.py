"""`remember` and `forget`: the user tells Sightline what to keep or drop about them.

The memory keeper (memory/keeper.py) already decides after each exchange what is worth keeping;
these tools are for when the user asks outright ("remember that I use Postgres 16", "forget my
old laptop"). They write at once, in one transaction, so "I will remember that" is true when it is
said, and tell the keeper, so its next update starts from what is now remembered. Every read and
write names the session's tenant and user.

Only the user's own words can ask: the tools refuse unless the user's latest message asks to
remember (or forget) something, so text on the screen or in a document that says "remember
this" — data, never instructions — cannot write the user's memory through the model.

`forget` finds the facts to drop by the words they share with what the user said (their key and
text, lower-cased, a trailing plural "s" dropped): a user names the thing, not its key, and a
word match is explainable where a nearest vector would always pick something.
"""

from __future__ import annotations

import re

from livekit.agents import RunContext, llm

from memory.keeper import MAX_FACT_CHARS, MemoryKeeper, fact_key, same_fact
from memory.user_memory import Fact, UserMemory

KEY_WORDS = 6
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an the i me my mine we our you your is am are was were be been to of in on at for with "
    "and or that this it its as by from about remember forget please user users".split())


ASKS_TO_REMEMBER = re.compile(
    r"\b(remember|memori[sz]e|note (?:that|down)|keep in mind|save (?:that|this)|"
    r"don'?t forget)\b", re.I)
ASKS_TO_FORGET = re.compile(r"\b(forget|delete|remove|erase|drop|no longer)\b", re.I)


def user_asked(context: RunContext, asks: re.Pattern[str]) -> bool:
    """Whether the user's latest message (typed or transcribed) asks for it."""
    for item in reversed(context.session.history.items):
        if item.type == "message" and item.role == "user":
            return bool(asks.search(item.text_content or ""))
    return False


def words(text: str) -> set[str]:
    """The content words of `text`, for matching a fact to what the user called it."""
    found = (w[:-1] if len(w) > 3 and w.endswith("s") else w
             for w in _WORD.findall(text.lower().replace("_", " ")))
    return {w for w in found if w not in _STOP and len(w) > 1}


def key_for(text: str) -> str:
    """A fact's key from its first content words, in the keeper's key form."""
    content = [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]
    content = content[:KEY_WORDS]
    return fact_key("_".join(content)) or "note"


class MemoryTools:
    """The memory tools of one user's session."""

    def __init__(self, memory: UserMemory, keeper: MemoryKeeper | None, *, tenant: str,
                 user_id: str, session_id: str) -> None:
        self._memory = memory
        self._keeper = keeper
        self._who = {"tenant": tenant, "user_id": user_id, "session_id": session_id}

    def tools(self) -> list[llm.Tool]:
        return [self.remember, self.forget]

    async def _facts(self) -> list[Fact]:
        return await self._memory.facts(self._who["tenant"], self._who["user_id"])

    @llm.function_tool
    async def remember(self, context: RunContext, fact: str) -> str:
        """Remember a fact about the user for later sessions. Use it only when the user asks you
        to remember something.

        Args:
            fact: the fact, as one sentence about the user, such as "The user's laptop runs
                Ubuntu 24.04".
        """
        if not user_asked(context, ASKS_TO_REMEMBER):
            raise llm.ToolError("Only the user can ask to remember something, in their own "
                                "words; they did not. Nothing was remembered.")
        text = " ".join(fact.split())[:MAX_FACT_CHARS]
        if not text:
            raise llm.ToolError("There is nothing to remember: the fact is empty.")
        known = await self._facts()
        if any(same_fact(text, f.text) for f in known):
            return f"Already remembered: {text}"
        key = key_for(text)
        await self._memory.apply([{"op": "fact", "key": key, "text": text, **self._who}])
        if self._keeper is not None:
            self._keeper.user_edited([Fact(key, text)], [])
        return f"Remembered (as {key}): {text}"

    @llm.function_tool
    async def forget(self, context: RunContext, what: str) -> str:
        """Forget what is remembered about the user on a subject. Use it only when the user asks
        you to forget something.

        Args:
            what: the subject to forget, in the user's words, such as "my old laptop".
        """
        if not user_asked(context, ASKS_TO_FORGET):
            raise llm.ToolError("Only the user can ask to forget something, in their own "
                                "words; they did not. Nothing was forgotten.")
        wanted = words(what)
        known = await self._facts()
        overlap = {f.key: len(wanted & words(f"{f.key} {f.text}")) for f in known}
        best = max(overlap.values(), default=0)
        if not wanted or best == 0:
            return (f"Nothing remembered matches {what!r}, so nothing was forgotten. "
                    f"{len(known)} facts are remembered about this user.")
        dropped = [f for f in known if overlap[f.key] == best]
        await self._memory.apply([{"op": "forget", "key": f.key, **self._who} for f in dropped])
        if self._keeper is not None:
            self._keeper.user_edited([], [f.key for f in dropped])
        return "Forgot: " + "; ".join(f.text for f in dropped)
