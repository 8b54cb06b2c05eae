"""One way to read a word, for every check of whose words something is.

Three checks let something lasting happen only on the user's own words: `remember` and `forget`
(tools/memory_tools.py) write or drop a fact only when the user's message asks and holds its
words; the memory keeper (memory/keeper.py) lets a fact forget or replace a remembered one
only when the user's clause says so, and marks a fact with words the user did not say as the
screen's; the handoff gate (tools/handoff.py) calls in a person only on a clear request or a
yes. Each compares words, typed or as a speech recogniser writes them. Read two ways, a rule
written for one form misses the other: the keeper lists "am" before "used to" ("I'm used to
vim" changes nothing) but dropped the "'m" of "I'm", so "I'm used to vim" read as "I used to
vim" and forgot the user's editor; it spelt out "don't" but not a transcript's "dont", so
"dont forget my laptop is a ThinkPad" forgot the laptop. So every check reads words here:

- `fold`: as a model reads the text (`marked_data.read_as`: compatibility forms, accents and
  invisible characters dropped, look-alike letters of other scripts read as Latin ones), any
  apostrophe as "'", lower-cased: a look-alike letter can make a word pass for another
  neither to a model nor to a check.
- `spelt_out`: contractions spelt out, so "don't", a transcript's "dont" and "do not" share
  their words. "'m", "'re", "'ve" and "'ll" are "am", "are", "have" and "will": a fact or a
  rule may name them ("I'll be in Berlin" is "The user will be in Berlin"; "am used to" is no
  change). "'s" and "'d" are dropped: they may stand for "is", "has" or whose, "had" or
  "would", and the word does not say which. Without an apostrophe only the forms that are no
  other word are spelt out ("dont", "cant", "isnt", …): "wont", "ill", "id", "im", "its" and
  "were" are words of their own.
- `plain`: one form for a plural or a third person ("laptops" is "laptop", "has" is "have",
  "goes" is "go"), so "I have a dog" holds "The user has a dog". Only letters take the "-s"
  rule: "1990s" is not "1990", nor "v2s" "v2".
- `WORD`: a word is a run of letters or digits of any script. A check that reads only Latin
  letters does not see a word in another script, and lets a fact carry it unsaid.
- hesitations ("um", "uh", "er", "hmm", "mm", "ah", "oh"): sounds a speaker makes while
  thinking, which say nothing wherever they stand; `is_hesitation` tells them, and each
  check leaves them out where they would break a rule ("can i uh talk to someone", "forget
  umm my editor"). A lone "m" and "err" are not among them: a letter, a verb.
- `LEAD_FILLER`: what a speaker says before asking without changing the request: the
  hesitations and "err" ("err remember that I use vim", where no verb can stand), a discourse
  marker ("so", "actually", "by the way"), the wake word. Only where a request opens, for a
  check that reads a request there (`remember`, `forget`): elsewhere "so", "now", "right" or
  "yes" say something.
- `as_digits`: number words as a speech recogniser writes them read as digits ("postgres
  sixteen" is "Postgres 16", "twenty four oh four" and "twenty four point oh four" are "24 04",
  as "24.04" is), so a fact `remember` takes as the user's words the keeper does not take for
  the screen's. Digits stay as written, leading zeros too: "0.05" is not "0.5", nor "PIN 0042"
  "42". A digit run is read digit by digit: `int` refuses one of more than 4300, and a message
  may hold one. A day of a date is read as the month then its number ("March 3rd", "the third
  of March", "the 3rd of March" and "3 April" are "March 3", "twenty first of May" "May 21"),
  as a model writes a date: an ordinal only next to a month, a bare number before one only
  when the month's name is no other word ("4 may be late", "3 march on"). Elsewhere an ordinal
  is read as its numbered form, as a model may write it ("the twenty-first" is "21st", "the
  third floor" "3rd floor"), which is no number: "my first laptop" holds no "1".
- `numbers_together`: numbers said next to each other as one ("python 2 7" is "python 2.7"):
  "Python 2.7" read off the screen is not the user's when they said "two" and "seven" apart
  ("two times in seven minutes"). The keeper's dotted tokens too ("2.7 18" is "2.7.18").
- `QUESTION_MARKS`: what ends a question, in any script a user may write one in: the Latin "?"
  and its full-width form ("？", typed with a Chinese or Japanese keyboard), the Arabic "؟",
  the Ethiopic "፧", "‽", "❓". Not the Greek question mark: it is ";" to a model (`fold`), as
  it is to Unicode, and a ";" ends no question. A check that reads only "?" takes a question
  written with another mark for a statement or a request.
- `CLAUSE_MARKS` (`COMMAS` and `SEMICOLONS`), `COLONS`, `STOPS`: what ends a clause (a comma,
  a semicolon; a colon) or a sentence (a full stop, an exclamation mark) in any script a user
  may write in: "，", "；", "：" and "！" as a Chinese or Japanese keyboard types them, "、" and
  "。", the Arabic "،" and "؛". `fold` reads only the full-width forms as the Latin ones, and
  a check may run on the text as written: one that knows only ",;:" and "." read "ok，remember
  that I use vim" as no request, "No، I'll figure it out myself" as no refusal, and "I don't
  use vim، I use emacs" as negating emacs; the keeper read "I sold it، my laptop is fine" as
  selling the laptop.
- `says_yes`: a message that is a yes and nothing else of substance, the only answer that lets
  a question the user was asked go ahead. Reading how a message starts is not enough: "Okay,
  what does this dialog say?" and "yes but first tell me what the error is" start like a yes
  and ask something else, and once forgot every fact the user had. It is a question however it
  is written ("Yes？", "yes؟", "yes?!", "\"yes?\""), except a yes put as one ("why not?"),
  and an emoji other than a few agreeing ones says something else ("yes 👎"). "ok", "alright",
  "fine" and "right" alone only acknowledge (they open any message, and a listener says them
  to what they heard): around a yes they are fine ("okay, go ahead"), on their own no yes. A
  caller whose question they do answer, and where a yes read wrongly costs little, counts
  them: the handoff gate (tools/handoff.py), where "ok" to "Would you like me to bring in a
  person?" brings one in the user can send away. A no is read by the same rule (`made_of`):
  the handoff gate's "um, no", "thanks, but no", "please don't".
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from .marked_data import read_as

WORD = re.compile(r"[^\W_]+")

_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc", "'"))
_SPELT = ((re.compile(r"\bcan't\b|\bcannot\b|\bcant\b"), "can not"),
          (re.compile(r"\bwon't\b"), "will not"), (re.compile(r"n't\b"), " not"),
          (re.compile(r"\b(do|does|did|is|are|was|were|have|has|had|should|would|could)"
                      r"nt\b"), r"\1 not"),
          (re.compile(r"'m\b"), " am"), (re.compile(r"'re\b"), " are"),
          (re.compile(r"'ve\b"), " have"), (re.compile(r"'ll\b"), " will"),
          (re.compile(r"'[sd]\b"), ""))
_SAME_WORD = {"has": "have", "does": "do", "goes": "go"}

HESITATION = r"(?:u+m+|u+h+m*|e+rm*|e+h+|h+m+|m{2,}|a+h+|o+h+)"
_HESITATION = re.compile(HESITATION, re.IGNORECASE)

# a comma as written and as `fold` reads it ("，" and "﹐" are "," to it): of the Latin script,
# full-width, small and vertical (Chinese, Japanese), the ideographic comma "、" and its
# half-width, small and vertical forms, Arabic (also Persian and Urdu), Ethiopic
COMMAS = ",\uff0c\ufe50\ufe10\u3001\uff64\ufe51\ufe11\u060c\u1363"
# a semicolon, of the same scripts, and the Greek question mark, a semicolon to Unicode and to
# `fold`
SEMICOLONS = ";\uff1b\ufe54\ufe14\u061b\u1364\u037e"
CLAUSE_MARKS = COMMAS + SEMICOLONS
# a colon, of the same scripts: it ends a clause, or opens quoted words ("it says: talk to an
# agent"), so each check says whether it reads one as a break
COLONS = ":\uff1a\ufe55\ufe13\u1365\u1366"
# what ends a sentence that is no question: a full stop or an exclamation mark of the Latin
# script, Chinese and Japanese (full-width, small, vertical and half-width forms), Urdu,
# Devanagari and Ethiopic. Not the full-width or small "." ("．", "﹒"): `fold` reads them as
# ".", the point of a number too ("２．７")
STOPS = ".!\u3002\uff61\ufe12\uff01\ufe57\ufe15\u06d4\u0964\u0965\u1362"
# "err" and "errm" open a request as "erm" does ("err remember that I use vim"): only there,
# where the verb "err" cannot stand; a break of any script may follow a filler ("ok，remember")
LEAD_FILLER = (rf"(?:{HESITATION}|e+r+m*|ok(?:ay)?|alright|all right|so|and|also|now|just|hey|"
               r"hi|well|right|actually|yeah|yes|yep|look|listen|btw|by the way|one more thing|"
               r"never ?mind|sightline|please|kindly)\b"
               rf"[\s{re.escape(CLAUSE_MARKS + COLONS + STOPS)}]*")
_LEAD_FILLERS = re.compile(rf"(?:{LEAD_FILLER})*", re.IGNORECASE)
_UNITS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * n for n, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
# words that answer yes, as `spelt_out` reads them ("that's right" is "that right", "I'm
# sure" "i am sure")
YES = frozenset((
    "yes", "yeah", "yep", "yup", "yea", "ya", "yah", "sure", "sure thing", "of course",
    "absolutely", "definitely", "certainly", "correct", "exactly", "go ahead", "go on",
    "go for it", "do it", "do that", "do so", "please do", "let do it", "lets do it",
    "i am sure", "i do", "that right", "that is right", "that correct", "that is correct"))
# words said around a yes without changing it ("okay yes", "yes please, thanks"); on their own
# they are no yes (the module's docstring says why)
AROUND_YES = frozenset((
    "ok", "okay", "alright", "all right", "fine", "right", "well", "so", "then", "now", "just",
    "and", "please", "thanks", "thank you", "right away", "hey", "sightline"))


# a question mark as written and as `fold` reads it ("？", "﹖" and "⁇" are "?" to it): of the
# Latin script, full-width and small (Chinese, Japanese), Arabic (also Persian and Urdu),
# Ethiopic, Limbu, Vai, Bamum, Chakma, the interrobang and the emoji. Left out: the Greek one
# (";" to `fold`, a semicolon to everyone else), the Armenian one (written over a word, not
# after a sentence) and the inverted ones (they open a question)
QUESTION_MARKS = ("?\uff1f\ufe56\ufe16\u2047\u2048\u2049\u061f\u1367\u1945\ua60f\ua6f7"
                  "\U00011143\u203d\u2753\u2754")
# emoji a yes may come with ("yes 👍"); any other symbol (👎, ❌, 🚫, ✋) says something else
_AGREEING_SYMBOLS = frozenset("👍👌👏🙌🙏🤝🙂😊😀😃😄😁❤💯✅✔☑🆗✌")
# what may close a message after its last word or question mark ("yes?!", "\"yes?\"", "(yes?)",
# "好吗？。")
_CLOSING = frozenset(" \t\r\n\"'" + STOPS) | _AGREEING_SYMBOLS
# words said between two numbers of one: the zero of "twenty four oh four", the point of "two
# point seven" and "three dot eleven"
_ZERO = frozenset({"oh", "o"})
_POINT = frozenset({"point", "dot"})


def fold(text: str) -> str:
    """`text` as a model reads it (`marked_data.read_as`), any apostrophe as "'", lower-cased:
    "Usеr：" (a Cyrillic "е", a full-width colon) reads as "user:" and "don’t" as "don't"."""
    return read_as(text).translate(_APOSTROPHES).lower()


def spelt_out(text: str) -> str:
    """`text` folded (`fold`), its contractions spelt out: "I'm" is "i am", "dont" is "do
    not"; "'s" and "'d" are dropped (the module's docstring says why)."""
    text = fold(text)
    for contraction, spelt in _SPELT:
        text = contraction.sub(spelt, text)
    return text


def plain(word: str) -> str:
    """One form for a word's plural or third person: "laptops" is "laptop", "uses" is "use",
    "watches" is "watch", "carries" is "carry", "has" is "have". Only endings are dropped that
    cannot turn a word into another that means something else ("notes" stays "note"), and the
    "-s" only from letters ("1990s" stays)."""
    word = _SAME_WORD.get(word, word)
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("ss", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and word.isalpha():
        return word[:-1]
    return word


def is_hesitation(word: str) -> bool:
    """Whether `word` is a hesitation sound ("um", "uhh", "hmm"), no word at all."""
    return _HESITATION.fullmatch(word) is not None


def without_lead_fillers(clause: str) -> str:
    """`clause` without the hesitations, discourse markers and wake word it opens with ("um
    hey sightline, so remember …" is "remember …")."""
    return clause[_LEAD_FILLERS.match(clause).end():]  # type: ignore[union-attr]


def says_something(word: str) -> bool:
    """Whether `word` can say something in a fact: a single letter does not, a digit does."""
    return len(word) > 1 or word.isdigit()


_ORDINALS = {w: n for n, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split())} | {
    "twentieth": 20, "thirtieth": 30}
_NUMBERED = re.compile(r"(\d{1,2})(?:st|nd|rd|th)")  # "3rd", "21st"
_MONTHS = frozenset(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split())
_MONTHS_NO_OTHER_WORD = _MONTHS - {"may", "march", "mar"}


def _day_at(words: list[str], i: int) -> tuple[int, int, bool]:
    """The day of a month `words[i]` may say: (its number, how many words say it, whether as
    an ordinal); (0, 0, False) when none."""
    word, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
    if word in _TENS and 0 < _ORDINALS.get(nxt, 0) < 10:  # "twenty first"
        return _TENS[word] + _ORDINALS[nxt], 2, True
    if word in _ORDINALS:
        return _ORDINALS[word], 1, True
    if numbered := _NUMBERED.fullmatch(word):
        return int(numbered.group(1)), 1, True
    if word.isascii() and word.isdecimal() and len(word) <= 2:
        return int(word), 1, False
    return 0, 0, False


def _numbered(n: int) -> str:
    """An ordinal as digits and its suffix: "1st", "12th", "22nd"."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _dates_in_order(words: list[str]) -> list[str]:
    """`words` with each day of a month said as an ordinal, or as a number before the month,
    read as the month then the day's number (the module's docstring says when)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        day, said_in, ordinal = _day_at(words, i)
        if 1 <= day <= 31:
            at = i + said_in + (words[i + said_in:i + said_in + 1] == ["of"])
            month = words[at] if at < len(words) else ""
            if month in (_MONTHS if ordinal else _MONTHS_NO_OTHER_WORD):  # "3rd of march"
                out += [month, str(day) if ordinal else words[i]]
                i = at + 1
                continue
            before = [w for w in out[-2:] if w != "the"][-1:]
            if ordinal and before and before[0] in _MONTHS:  # "march the third"
                out.append(str(day))
                i += said_in
                continue
        out.append(words[i])
        i += 1
    return out


def as_digits(words: list[str]) -> list[str]:
    """`words` (lower-cased) with number words as digits, so a transcript ("python three
    eleven", "twenty four oh four") and a fact ("Python 3.11", "24.04") say the same numbers.
    A spoken zero ("oh") is the zero it says before the number after it ("oh four" is "04"), and
    digits stay as written, any script's as ASCII ones, leading zeros too: they are part of the
    number ("0.05", "02139"). A digit that is no decimal digit (the Ethiopic "፩") stays as
    written. A date's day is read after its month (`_dates_in_order`), any other ordinal in its
    numbered form ("twenty first" is "21st")."""
    words = _dates_in_order(words)
    out: list[str] = []
    zeros = ""  # the spoken zeros before the number that follows them
    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        i += 1
        if word in _TENS and 0 < _ORDINALS.get(nxt, 0) < 10:  # "twenty first"
            out.append(_numbered(_TENS[word] + _ORDINALS[nxt]))
            i += 1
            continue
        if word in _ORDINALS:
            out.append(_numbered(_ORDINALS[word]))
            continue
        if word in _TENS:
            if nxt in _UNITS and 0 < _UNITS[nxt] < 10:
                number = str(_TENS[word] + _UNITS[nxt])
                i += 1
            else:
                number = str(_TENS[word])
        elif word in _UNITS:
            number = str(_UNITS[word])
        elif word.isdecimal():  # digit by digit: `int` refuses a run of more than 4300
            number = "".join(str(unicodedata.decimal(c)) for c in word)
        elif (word in _ZERO | _POINT and out and out[-1].isdecimal()
              and (nxt in _UNITS or nxt.isdecimal() or (word in _POINT and nxt in _ZERO))):
            zeros += "0" if word in _ZERO else ""
            continue
        else:
            out.append(word)
            continue
        out.append(zeros + number)
        zeros = ""
    return out


def is_number(word: str) -> bool:
    """Whether `word` (`as_digits`) is a number: digits ("16", not "v2" or "1990s"), or parts
    that read as digits ("2.7", "24-04", "twenty-four", not "python-3"), which `as_digits`,
    reading whole words, left as they were. A word of one part is read as it is: "one" there
    is a plural's plain form ("ones"), no number the caller missed."""
    parts = WORD.findall(word)
    digits = as_digits(parts) if len(parts) > 1 else parts
    return bool(digits) and all(part.isdecimal() for part in digits)


def an_address(word: str) -> bool:
    """Whether `word` reads as an IPv4 address, as the standard library reads one: the user's
    only whole ("10.0" of "10.0.0.5" is another network, no version's first parts)."""
    try:
        ipaddress.IPv4Address(word)
    except ValueError:
        return False
    return True


def numbers_together(words: list[str], join: str = ".") -> list[str]:
    """`words` (`as_digits`) with each run of numbers next to each other as one number, its
    numbers joined by `join` (dotted): "python 2 7" is "python 2.7", as "Python 2.7" and
    "python two point seven" are read, and "two times in seven minutes" holds no "2.7". A word
    that is a number in parts (`is_number`) opens a run as a digit does: "2.7 18" is "2.7.18".
    `remember` joins with a space, to tell numbers said apart from a number's own marks."""
    out: list[str] = []
    together = False  # whether the last word of `out` is a number
    for word in words:
        if together and word.isdecimal():
            out[-1] += f"{join}{word}"
        else:
            out.append(word)
            together = is_number(word)
    return out


def ends_as_question(said: str) -> bool:
    """Whether the message `said` ends as a question, read as a model reads it (`fold`: "？",
    "⁇"), with any of `QUESTION_MARKS` ("؟"), whatever closes it after the mark ("yes?!",
    "\"yes?\"", "(yes?)")."""
    folded = fold(said)
    end = len(folded)
    while end and (folded[end - 1] in _CLOSING
                   or unicodedata.category(folded[end - 1]) in ("Pe", "Pf", "Pi")):
        end -= 1
    return end > 0 and folded[end - 1] in QUESTION_MARKS


def _heard(said: str) -> list[str]:
    """The words of `said`, spelt out, hesitations left out."""
    return [w for w in WORD.findall(spelt_out(said)) if not is_hesitation(w)]


def made_of(said: str, *, answer: frozenset[str], around: frozenset[str]) -> bool:
    """Whether the words of `said` (spelt out, hesitations left out) are phrases of `answer` and
    of words said `around` one and nothing else, at least one of `answer`: "um sure, go ahead"
    of a yes, "thanks, but no" of a no. Symbols and question marks are the caller's to read."""
    heard = _heard(said)
    longest = max(len(phrase.split()) for phrase in answer | around)
    # how the words before each position can be read: as words around an answer only (False),
    # or with one (True); a phrase may be read more than one way ("forget it all right"), so
    # every position is read once rather than every way of reading the message tried
    read: dict[int, bool] = {0: False}
    for start in range(len(heard)):
        if start not in read:
            continue
        for end in range(start + 1, min(start + longest, len(heard)) + 1):
            phrase = " ".join(heard[start:end])
            if phrase in answer or phrase in around:
                read[end] = read.get(end, False) or read[start] or phrase in answer
    return read.get(len(heard), False)


def says_yes(said: str, *, yes: frozenset[str] = YES, around: frozenset[str] = AROUND_YES,
             rhetorical: frozenset[str] = frozenset()) -> bool:
    """Whether the message `said` is a yes and nothing else of substance: read as phrases of
    `yes` and of words said `around` one (`made_of`), at least one a yes ("yes please", "um
    sure, go ahead"). A word of anything else ("what", "but", "no") makes it no yes, nor does
    a symbol other than a few agreeing emoji ("yes 👎"), nor a question ("yes?" asks back,
    `ends_as_question`) unless it ends with a phrase of `rhetorical`, a yes put as a question
    ("sure, why not?"). A caller may widen `yes` or `around` with what its own question
    proposed ("sure, forget it all"; the handoff's "ok, bring someone in")."""
    if any(unicodedata.category(c) == "So" and c not in _AGREEING_SYMBOLS for c in fold(said)):
        return False
    if ends_as_question(said):
        heard = _heard(said)
        if not any(heard[len(heard) - len(p.split()):] == p.split() for p in rhetorical):
            return False
    return made_of(said, answer=yes, around=around)
