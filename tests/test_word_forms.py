"""One way to read the user's words (memory/word_forms.py), for every check of whose words
something is: `remember` / `forget` (tools/memory_tools.py), the memory keeper
(memory/keeper.py) and the handoff gate (tools/handoff.py).

Protects: each check once had its own copy of these rules, and the copies differed. The memory
keeper dropped "'m", so "I'm used to vim" read as "I used to vim" and forgot the user's editor,
and it did not spell out a transcript's "dont", so "dont forget my editor is vim" forgot it; it
read "I'll", "dont" and "goes" other than `remember` did, so a fact `remember` takes as the
user's words the keeper took for the screen's. `remember` dropped the "-s" of "1990s" and saw
no word in a script other than Latin, so a fact could carry "1990" or "пароль" the user never
said. A hesitation other than the few each check listed ("uhmm", "ummmm", "hmm") broke a
negation's reach in the handoff gate ("dont uhmm transfer me to an agent" handed off), a
request ("can you um remember …"), a subject ("forget umm my editor") and a yes. Now the rules
are one, each caller reading words with them where it needs to. `remember` read number words as
digits and the keeper did not, so "postgres sixteen" made "Postgres 16" the screen's words to the
keeper; and `forget` took any message that opened like a yes ("Okay, what does this dialog
say?") as the user's yes to forgetting everything: a yes is now the whole message. A question
asked with a mark other than "?" ("؟", "፧") was a yes, and "two point seven" no number to the
keeper, while `remember` took "two" and "seven" said apart for "2.7". A filler parted from a
request by a comma or colon of another script ("ok，remember", "sightline：forget it") was no
filler, and a full stop of one after a question mark ("吗？。") made it no question.
"""

from __future__ import annotations

import pytest
from livekit.agents import llm
from test_user_tools import FakeMemory, conversation, user_said

from memory import keeper as keeper_module
from memory.keeper import MemoryUpdate
from memory.marked_data import MEMORY, marked
from memory.user_memory import Fact
from memory.word_forms import (
    YES,
    as_digits,
    ends_as_question,
    is_hesitation,
    numbers_together,
    plain,
    says_yes,
    spelt_out,
    without_lead_fillers,
)
from tools.handoff import HandoffTool
from tools.memory_tools import FORGET_ALL_QUESTION, MemoryTools

# -- the rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "spelt"), [
    ("I'm used to vim", "i am used to vim"),  # the keeper's "am used to" is no change
    ("We\u2019re done", "we are done"),
    ("I'll be in Berlin", "i will be in berlin"),  # "will" is a content word of a fact
    ("I've a dog", "i have a dog"),
    ("i dont know, it isnt", "i do not know, it is not"),  # as a recogniser writes them
    ("can't, cant, cannot, won't", "can not, can not, can not, will not"),
    ("It's the user's, I'd say", "it the user, i say"),  # "'s", "'d": which word is unknown
    ("wont ill id im its were", "wont ill id im its were"),  # each also a word of its own
    ("Us\u0435r\uff1a \uff2eode", "user: node"),  # look-alike and full-width letters
])
def test_contractions_are_spelt_out_one_way(text: str, spelt: str) -> None:
    assert spelt_out(text) == spelt


@pytest.mark.parametrize(("word", "form"), [
    ("laptops", "laptop"), ("watches", "watch"), ("carries", "carry"), ("has", "have"),
    ("does", "do"), ("goes", "go"), ("notes", "note"), ("class", "class"),
    ("1990s", "1990s"), ("v2s", "v2s"),  # the "-s" rule is for letters only
])
def test_one_plain_form(word: str, form: str) -> None:
    assert plain(word) == form


@pytest.mark.parametrize(("word", "hesitation"), [
    *[(w, True) for w in ("um", "ummmm", "uh", "uhmm", "er", "erm", "eh", "hmm", "mm", "ah",
                          "aah", "oh", "ooh")],
    *[(w, False) for w in ("m", "err", "so", "like", "ohm", "hum", "no")],  # a letter, words
])
def test_hesitations(word: str, hesitation: bool) -> None:
    assert is_hesitation(word) is hesitation


@pytest.mark.parametrize(("clause", "rest"), [
    ("um hey sightline, so remember that", "remember that"),
    ("actually by the way never mind forget it", "forget it"),
    ("sorry, remember that", "sorry, remember that"),
    ("someday remember", "someday remember"),
    # "err" opens a request as "erm" does; only there (it is no hesitation elsewhere)
    ("err remember that", "remember that"), ("errm, forget my laptop", "forget my laptop"),
    ("errr forget it", "forget it"),
    # parted from the request by a comma or colon of any script
    ("ok\uff0cremember that", "remember that"), ("sightline\uff1aforget it", "forget it"),
    ("ok\u3001remember that", "remember that"), ("so\u060c remember that", "remember that"),
])
def test_lead_fillers_are_only_at_the_start(clause: str, rest: str) -> None:
    assert without_lead_fillers(clause) == rest


@pytest.mark.parametrize(("words", "digits"), [
    ("postgres sixteen".split(), ["postgres", "16"]),
    ("twenty four oh four".split(), ["24", "04"]),  # "oh": the zero of "04"
    ("python three eleven".split(), ["python", "3", "11"]),
    (["ubuntu", "24", "04"], ["ubuntu", "24", "04"]),
    (["oh", "well"], ["oh", "well"]),  # "oh" is a zero only between numbers
    # a version said aloud: its point between two numbers, as "2.7" is read
    ("python two point seven".split(), ["python", "2", "7"]),
    ("ubuntu twenty four point oh four".split(), ["ubuntu", "24", "04"]),
    ("three dot eleven".split(), ["3", "11"]),
    ("the point is 2 point x".split(), ["the", "point", "is", "2", "point", "x"]),
    (["\u1369", "007"], ["\u1369", "007"]),  # a digit `int` does not read stays
    # any decimal digits, as ASCII ones, their leading zeros kept: part of the number
    (["000", "\u0663\u0660", "\u0660\u0667"], ["000", "30", "07"]),
    (["0" * 9 + "7" * 4400], ["0" * 9 + "7" * 4400]),  # longer than `int` reads
    # a date's day after its month, as a model writes it
    ("march 3rd".split(), ["march", "3"]),
    ("the third of march".split(), ["the", "march", "3"]),
    ("the 3rd of march 2020".split(), ["the", "march", "3", "2020"]),
    ("march the third".split(), ["march", "the", "3"]),
    ("twenty first of may".split(), ["may", "21"]),
    ("3 april".split(), ["april", "3"]),
    ("03 april".split(), ["april", "03"]),
    # elsewhere an ordinal in its numbered form, no number, as a model may write it; a number
    # before a month's name that is a word stays as said
    ("my first laptop".split(), ["my", "1st", "laptop"]),
    ("due on the twenty first".split(), ["due", "on", "the", "21st"]),
    ("the third floor".split(), ["the", "3rd", "floor"]),
    ("twelfth twenty second thirtieth".split(), ["12th", "22nd", "30th"]),
    ("the 2nd on call".split(), ["the", "2nd", "on", "call"]),
    ("4 may be late".split(), ["4", "may", "be", "late"]),
    ("the 40th of march".split(), ["the", "40th", "of", "march"]),
])
def test_number_words_as_digits(words: list[str], digits: list[str]) -> None:
    assert as_digits(words) == digits


@pytest.mark.parametrize(("said", "numbers"), [
    ("python 2.7", ["python", "2.7"]), ("python two point seven", ["python", "2.7"]),
    ("ubuntu twenty four oh four", ["ubuntu", "24.04"]),
    ("two times in seven minutes", ["2", "times", "in", "7", "minutes"]),
])
def test_numbers_said_next_to_each_other_are_one(said: str, numbers: list[str]) -> None:
    assert numbers_together(as_digits(said.replace(".", " ").split())) == numbers


def test_numbers_said_apart_may_be_joined_by_another_mark() -> None:
    """`remember` joins numbers said apart with a space, so none reads as a number's own mark
    ("9 30" is not "9.30")."""
    assert numbers_together(["at", "9", "30", "and", "3.11", "7"], join=" ") == [
        "at", "9 30", "and", "3.11 7"]


@pytest.mark.parametrize(("words", "numbers"), [
    (["python", "2.7", "18"], ["python", "2.7.18"]),  # the keeper's dotted tokens
    (["python", "3", "2.7"], ["python", "3", "2.7"]),  # a digit joins a number, not before it
    (["v2", "7"], ["v2", "7"]), (["1990s", "7"], ["1990s", "7"]),
    (["python-3", "11"], ["python-3", "11"]),
])
def test_a_number_in_parts_is_a_number_to_the_digits_after_it(
    words: list[str], numbers: list[str],
) -> None:
    """The memory keeper joined numbers its own way, its tokens dotted ("2.7 18" is
    "2.7.18"); now it reads them with `numbers_together`, as `remember` does."""
    assert numbers_together(words) == numbers


@pytest.mark.parametrize(("said", "question"), [
    *[(s, True) for s in ("yes?", "Yes\uff1f", "yes\u061f", "yes\u1367", "yes \u2753",
                          "yes\u203d", "(\u0646\u0639\u0645\u061f)",
                          # a full stop of another script after the question mark
                          "\u8981\u5fd8\u8bb0\u5417\uff1f\u3002", "yes\u061f\u06d4")],
    # the Greek question mark is ";" to a model, a semicolon to everyone else; the inverted
    # one opens a question, it does not end one
    *[(s, False) for s in ("yes\u037e", "yes;", "\u00bfyes", "yes")],
])
def test_a_question_ends_with_any_scripts_question_mark(said: str, question: bool) -> None:
    assert ends_as_question(said) is question


@pytest.mark.parametrize(("said", "yes"), [
    *[(s, True) for s in ("yes", "yes please", "yeah go ahead", "um yes, do it", "Okay, sure.",
                          "Yes, I'm sure!", "that's right", "hey sightline, yes")],
    *[(s, False) for s in ("ok", "Alright.", "fine", "mm-hmm", "yes?", "Sure? Really?",
                           "Okay, what does this dialog say?", "yes, no, wait", "yes dont",
                           "yes but first tell me what the error is", "")],
    # a question however it is written and closed, read as a model reads it
    *[(s, False) for s in ("Yes\uff1f", '"yes?"', "yes?!", "Yes \u2047", "(yes?)",
                           "\u201cyes?\u201d", "yes\u061f", "Yes\u1367")],
    # an emoji other than an agreeing one says something else
    *[(s, False) for s in ("yes \U0001f44e", "yes \u274c", "yes \U0001f6ab", "sure \u270b")],
    *[(s, True) for s in ("yes \U0001f44d", "Yes!", '"yes"', "sure \u2705")],
])
def test_a_yes_is_the_whole_message(said: str, yes: bool) -> None:
    """A yes and words said around one; "ok" alone only acknowledges; a question or anything
    else said with it is no yes."""
    assert says_yes(said) is yes


@pytest.mark.parametrize(("said", "yes"), [
    ("Why not?", True), ("Sure, why not?", True), ("why not?!", True),
    ("why not what?", False), ("Why not? What is it?", False),
])
def test_a_caller_names_the_yes_that_may_be_put_as_a_question(said: str, yes: bool) -> None:
    why_not = frozenset({"why not"})
    assert says_yes(said, yes=YES | why_not, rhetorical=why_not) is yes
    assert not says_yes(said, yes=YES | why_not)


def test_a_long_message_that_is_no_yes_is_read_once() -> None:
    """"forget it all right" reads two ways ("forget it" "all right", "forget it all"
    "right"): a message of many is read position by position, not every way in turn (which
    never finishes), and is no yes for its last word."""
    around = frozenset({"forget it", "forget it all", "all right", "right"})
    said = "yes " + "forget it all right " * 500
    assert says_yes(said, around=around)
    assert not says_yes(said + "what", around=around)


# -- `remember` and the keeper read a statement alike --------------------------------------------

def _keepers_own(user: str, fact: str) -> bool:
    """Whether the memory keeper takes `fact` for the user's own words in `user` (not the
    screen's: a screen-sourced fact never replaces a remembered one)."""
    kept, _ = keeper_module.vouched(MemoryUpdate(facts=[Fact("subject", fact)]), user=user,
                                    assistant="Noted.", facts={}, summary=None)
    assert [f.text for f in kept.facts] == [fact]
    return not kept.from_screen


async def _remembers(said: str, fact: str) -> bool:
    """Whether `remember` writes `fact` when the user's message is `said`."""
    memory = FakeMemory([])
    tools = MemoryTools(memory, None, tenant="acme", user_id="ana",  # type: ignore[arg-type]
                        session_id="s1")
    try:
        await tools.remember(user_said(said), fact)
    except llm.ToolError:
        return False
    return [f.text for f in memory.facts_by_key.values()] == [fact]


@pytest.mark.parametrize(("statement", "fact", "users"), [
    ("I'll be in Berlin next week", "The user will be in Berlin next week", True),
    ("i dont use vim", "The user does not use vim", True),
    ("I go to the gym on Mondays", "The user goes to the gym on Mondays", True),
    ("I grew up in the 1990s", "The user grew up in the 1990s", True),
    ("I grew up in the 1990s", "The user grew up in 1990", False),
    ("I use fish", "The user uses fish \u043f\u0430\u0440\u043e\u043b\u044c", False),
    # number words as a recogniser writes them are digits, to both
    ("i use postgres sixteen", "The user uses Postgres 16", True),
    ("i use ubuntu twenty four oh four", "The user uses Ubuntu 24.04", True),
    ("i use Postgres 16", "The user uses Postgres sixteen", True),
    ("i use postgres sixteen", "The user uses Postgres 17", False),
    ("I have three dogs", "The user has 4 dogs", False),  # a single digit says something
    # a number in pieces is the user's only as they said them together
    ("i use python two point seven", "The user uses Python 2.7", True),
    ("I use Python, it crashed two times in seven minutes", "The user uses Python 2.7", False),
    ("my locker is \u1369", "The user's locker is \u1369", True),  # a digit int() can't read
    # digits as written, leading zeros too: part of the number
    ("my dose is 0.05 mg", "The user's dose is 0.5 mg", False),
    ("my room is 0042", "The user's room is 42", False),
    ("my room is 0042", "The user's room is 0042", True),
    # a date as said and as a model writes it
    ("my birthday is the third of March", "The user's birthday is March 3", True),
    ("my birthday is March 3rd", "The user's birthday is March 3", True),
    ("our release is on the twenty first of May", "The user's release is on May 21", True),
    ("my birthday is the third of March", "The user's birthday is March 4", False),
    ("my first laptop was a ThinkPad", "The user's 1 laptop was a ThinkPad", False),
    # an ordinal with no month as said and as a model may write it
    ("my rent is due on the twenty-first", "The user's rent is due on the 21st", True),
    ("my rent is due on the 1st", "The user's rent is due on the first", True),
    ("my desk is on the third floor", "The user's desk is on the 3rd floor", True),
    ("my rent is due on the twenty-first", "The user's rent is due on the 22nd", False),
])
async def test_remember_and_the_keeper_take_the_same_words_for_the_users(
    statement: str, fact: str, users: bool,
) -> None:
    """What `remember` writes as the user's words the keeper takes for the user's too, and
    what one finds unsaid ("1990" for "1990s", a word in another script, "17" for "sixteen")
    so does the other."""
    assert await _remembers(f"Remember that {statement}.", fact) is users
    assert _keepers_own(statement, fact) is users


# -- the keeper forgets only on a change the user states ---------------------------------------

VIM = Fact("editor", "The user's editor is vim")


@pytest.mark.parametrize(("user", "forgotten"), [
    ("I'm used to vim.", False),
    ("We're used to vim now.", False),
    ("dont forget my editor is vim", False),
    # as a recogniser writes them, with a word or two between
    ("im used to vim", False),
    ("I'm so used to vim, what does this popup say?", False),
    ("Im getting used to vim", False),
    ("dont ever forget my editor is vim, what does this popup say?", False),
    ("don't you forget my editor is vim", False),
    ("I am home, I used to use vim, now it's Helix.", True),  # not across a clause
    ("I used to use vim, now it's Helix.", True),
    ("forget um my editor", True),
])
def test_the_keeper_forgets_only_what_the_users_words_say_changed(
    user: str, forgotten: bool,
) -> None:
    kept, _ = keeper_module.vouched(MemoryUpdate(forget=[VIM.key]), user=user,
                                    assistant="Noted.", facts={VIM.key: VIM.text}, summary=None)
    assert (kept.forget == [VIM.key]) is forgotten


# -- hesitations, wherever they stand ------------------------------------------------------------

@pytest.mark.parametrize(("said", "handed_off"), [
    ("ummmm a human please", True),
    ("dont uhmm transfer me to an agent", False),  # the negation reaches through it
    ("please dont ummmm put me through to support", False),
])
async def test_the_handoff_gate_reads_through_any_hesitation(said: str, handed_off: bool) -> None:
    tool = HandoffTool(None, lambda _: None, session_id="s1", user_id="ana")
    await tool.handoff_to_human(conversation(("user", said)), "The user wants a person.")
    assert (tool.handed_off is not None) is handed_off


@pytest.mark.parametrize(("said", "fact"), [
    ("can you um remember that i use a mac", "The user uses a Mac"),
    ("could you actually remember that i use a mac", "The user uses a Mac"),
    ("remember i use ubuntu twenty oh four", "The user uses Ubuntu 20.04"),  # "oh": a zero
    ("err remember that I use a mac", "The user uses a Mac"),
    ("errm, remember that i use a mac", "The user uses a Mac"),
])
async def test_remember_reads_through_hesitations_and_fillers(said: str, fact: str) -> None:
    assert await _remembers(said, fact)


async def test_forget_reads_through_hesitations() -> None:
    """A hesitation is no part of the subject the user names, nor of their yes."""
    memory = FakeMemory([Fact("editor", "The user uses VS Code"),
                         Fact("pet", "The user has a dog")])
    tools = MemoryTools(memory, None, tenant="acme", user_id="ana",  # type: ignore[arg-type]
                        session_id="s1")
    assert (await tools.forget(user_said("forget umm my editor"), "my editor")).startswith(
        "Forgot: ")
    asked = ("user", "Forget everything you know about me.")
    assert "confirm" in await tools.forget(conversation(asked), "everything")
    confirm = ("assistant", FORGET_ALL_QUESTION)
    assert (await tools.forget(conversation(asked, confirm, ("user", "hmm yes")),
                               "everything")).startswith("Forgot: ")
    assert memory.facts_by_key == {}


async def test_forget_reads_err_as_it_opens_a_request() -> None:
    memory = FakeMemory([VIM])
    tools = MemoryTools(memory, None, tenant="acme", user_id="ana",  # type: ignore[arg-type]
                        session_id="s1")
    assert await tools.forget(user_said("errr forget my editor"), "my editor") == (
        f"Forgot: {marked(VIM.text, MEMORY)}")


# -- a digit run longer than `int` reads -------------------------------------------------------

async def test_a_long_digit_run_in_the_message_is_read_not_raised() -> None:
    """A message with a run of more than 4300 digits once raised inside `remember` and `forget`
    (`int` refuses it): each reads it as it reads any number."""
    assert await _remembers("remember that my backup key is " + "7" * 4400,
                            "The user has a backup key")
    tools = MemoryTools(FakeMemory([]), None, tenant="acme",  # type: ignore[arg-type]
                        user_id="ana", session_id="s1")
    with pytest.raises(llm.ToolError, match="Nothing was forgotten"):
        await tools.forget(user_said("forget my key " + "\u0663" * 4400), "my key")
