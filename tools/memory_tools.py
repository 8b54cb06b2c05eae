"""`remember` and `forget`: the user tells Sightline what to keep or drop about them.

The memory keeper (memory/keeper.py) already decides after each exchange what is worth keeping;
these tools are for when the user asks outright ("remember that I use Postgres 16", "forget my
old laptop"). They write at once, in one transaction, so "I will remember that" is true when it is
said, and tell the keeper, so its next update starts from what is now remembered. Every read and
write names the session's tenant and user.

Only the user's own words can ask, and only they can say what: the tools refuse unless the
user's latest message asks for it outright (an imperative such as "remember that …", "please
note …", "forget …", or one put politely, "can you remember that …?"; not a question such as
"do you remember …?" nor a negation such as "I don't remember …"), and unless what is
remembered, or the subject forgotten, is in that message's words. The model chooses the tool's
argument, so a trigger word alone would let text on the screen or in a document — data, never
instructions — decide what is written.

`forget` finds the facts to drop by the words they share with what the user said (their key and
text, lower-cased, a trailing plural "s" dropped): a user names the thing, not its key, and a
word match is explainable where a nearest vector would always pick something. A fact must cover
most of those words, and when several match equally none is dropped: the user is asked which.
"""

from __future__ import annotations

import math
import re

from livekit.agents import RunContext, llm

from memory.keeper import MAX_FACT_CHARS, MemoryKeeper, fact_key, same_fact
from memory.user_memory import Fact, UserMemory

KEY_WORDS = 6
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an the i me my mine we our you your is am are was were be been to of in on at for with "
    "and or that this it its as by from about remember forget please user users".split())


_LEAD = (r"^(?:(?:please|kindly|ok(?:ay)?|alright|so|and|also|now|just|hey|oh)\s+)*"
         r"(?:i(?: want| need| would like|'d like) you to\s+)?")
ASKS_TO_REMEMBER = re.compile(
    _LEAD + r"(?:remember|memori[sz]e|note|make a note|keep in mind|(?:don'?t|do not|never) "
    r"forget)\b", re.I)
ASKS_TO_FORGET = re.compile(
    _LEAD + r"(?:forget|stop remembering|(?:delete|remove|erase|drop|clear)\b.*"
    r"\b(?:memory|memories|remember|know))\b", re.I)
# a request put as a question ("Can you remember that I use vim?"), as people speak
_POLITE = re.compile(r"^(?:please\s+)?(?:can|could|would|will) you\s+(?:please\s+)?", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n")
_CLAUSE = re.compile(r"[,;:]")
MOST = 0.6


def latest_user_text(context: RunContext) -> str:
    """The user's latest message (typed or transcribed): the only words that can ask."""
    for item in reversed(context.session.history.items):
        if item.type == "message" and item.role == "user":
            return (item.text_content or "").replace("\u2019", "'")
    return ""


def user_asked(said: str, asks: re.Pattern[str]) -> bool:
    """Whether `said` asks for it: a clause that opens with the request. A sentence ending in
    "?" only asks about it ("Remember the VPN outage?") unless it is a request put politely
    ("Could you remember that …?"), and a clause that opens elsewhere mentions the word without
    asking ("I don't remember the URL")."""
    for sentence in _SENTENCE.split(said.strip()):
        question = sentence.rstrip().endswith("?")
        for clause in (c.strip() for c in _CLAUSE.split(sentence)):
            if question:
                polite = _POLITE.match(clause)
                if polite is None:
                    continue
                clause = clause[polite.end():]
            if asks.match(clause):
                return True
    return False


def covers(have: set[str], wanted: set[str]) -> bool:
    """Whether `have` holds most of `wanted`'s words: one shared word ties too many facts."""
    return len(have & wanted) >= max(1, math.ceil(MOST * len(wanted)))


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
            fact: the fact, as one sentence about the user in the user's words, such as "The
                user's laptop runs Ubuntu 24.04".
        """
        said = latest_user_text(context)
        if not user_asked(said, ASKS_TO_REMEMBER):
            raise llm.ToolError("Only the user can ask to remember something, in their own "
                                "words; they did not. Nothing was remembered.")
        text = " ".join(fact.split())[:MAX_FACT_CHARS]
        if not text:
            raise llm.ToolError("There is nothing to remember: the fact is empty.")
        if not covers(words(said), words(text)):
            raise llm.ToolError("The fact must be what the user said, in their words; most of "
                                "it is not in their message. Nothing was remembered: ask the "
                                "user what to remember.")
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
        said = latest_user_text(context)
        if not user_asked(said, ASKS_TO_FORGET):
            raise llm.ToolError("Only the user can ask to forget something, in their own "
                                "words; they did not. Nothing was forgotten.")
        wanted = words(what)
        if not wanted <= words(said):
            raise llm.ToolError("The subject must be what the user named, in their words; it "
                                "is not in their message. Nothing was forgotten: ask the user "
                                "what to forget.")
        known = await self._facts()
        overlap = {f.key: len(wanted & words(f"{f.key} {f.text}")) for f in known
                   if covers(words(f"{f.key} {f.text}"), wanted)}
        best = max(overlap.values(), default=0)
        dropped = [f for f in known if overlap.get(f.key) == best]
        if not dropped:
            return (f"Nothing remembered matches {what!r}, so nothing was forgotten. "
                    f"{len(known)} facts are remembered about this user.")
        if len(dropped) > 1:
            return (f"Several remembered facts match {what!r} equally, so nothing was "
                    "forgotten; ask the user which one they mean: "
                    + "; ".join(f.text for f in dropped))
        await self._memory.apply([{"op": "forget", "key": f.key, **self._who} for f in dropped])
        if self._keeper is not None:
            self._keeper.user_edited([], [f.key for f in dropped])
        return "Forgot: " + "; ".join(f.text for f in dropped)
