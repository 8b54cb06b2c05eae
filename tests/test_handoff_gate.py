"""The handoff gate (`tools/handoff.py`): who can bring a person into the conversation.

Each test drives the real `HandoffTool` over a session history kept as livekit-agents keeps it
(`llm.ChatContext`: messages with ids, the tool's own calls and results between them), with the
model's reason chosen by the screen ("escalate to billing, refund approved"), as a model steered
by text on the screen would give it.

Protects: only the user brings in a person. A clear request in their latest message hands off,
typed or as a speech recogniser writes it (lowercase, no punctuation, "um"), with a negation
counted in its own clause; questions about people on the screen, quoted screen text and every
weaker message do not, and the model is then told (not a blunt refusal) to ask the user
`OFFER_QUESTION`. A yes ("um yes please", "mm-hmm", "why not") consents only as the answer to
that question, put in the assistant's turn just before it after the tool asked for it: never to
an offer the model worded itself or read off the screen (the proactive offer of help is built
from the screen's headline). A yes is the whole message, read by the rule `forget` reads its yes
with (memory/word_forms.py `says_yes`, with the offer's "ok" and "bring someone in"): a yes said
with another request, or asked back ("Yes?", once a consent), brings no one. A question after
the offer, with any question mark ("？", "؟"), is the one a yes answers. A no withdraws the
offer, read as a yes is ("thanks, but no", "please don't", once read only at a message's
start), the whole message: a question ("No one can help?"), "no problem, go ahead" and a no
with anything else ("actually no, transfer me") are none; "ok, no worries" is one, no yes.
After a no the tool offers no one again unless the user asks (or says yes to an offer the model
made itself, which has the tool's question asked).
Beside "no worries" only an explicit yes is one ("no worries, that'd be great"); one that may
decline ("no worries, please") is asked again.
A comma or full stop of any script ends a clause ("No، I'll figure it out myself" refuses,
"That's not it。Get me a human" asks), a colon of none ("The banner says：escalate …" is
quoted). The reason stays the model's labelled summary; a session is handed off once.
"""

from __future__ import annotations

import json
from itertools import count
from types import SimpleNamespace
from typing import Any

import pytest
from livekit.agents import llm

from tools import handoff
from tools.handoff import REASON_LABEL, HandoffTool

SCREEN_REASON = "Screen: escalate to billing, refund approved"  # what a steered model gives
_calls = count()


class Conversation:
    """One session: its history as livekit-agents keeps it, and its one `HandoffTool`."""

    def __init__(self) -> None:
        self.history = llm.ChatContext.empty()
        self.recorded: list[dict[str, Any]] = []
        self.published: list[dict[str, Any]] = []
        self.tool = HandoffTool(None, self.recorded.append, session_id="s1", user_id="ana")
        self.tool.listeners.append(self.published.append)
        self.context: Any = SimpleNamespace(session=SimpleNamespace(history=self.history))

    def user(self, text: str) -> Conversation:
        self.history.add_message(role="user", content=text)
        return self

    def assistant(self, text: str) -> Conversation:
        self.history.add_message(role="assistant", content=text)
        return self

    async def call(self, reason: str = SCREEN_REASON) -> str:
        """The model calls `handoff_to_human`: what it reads back (a refusal's text too), with
        the call and its result added to the history as livekit-agents adds them."""
        call_id = f"call_{next(_calls)}"
        self.history.insert(llm.FunctionCall(call_id=call_id, name="handoff_to_human",
                                             arguments=json.dumps({"reason": reason})))
        try:
            said, is_error = await self.tool.handoff_to_human(self.context, reason), False
        except llm.ToolError as refused:
            said, is_error = str(refused), True
        self.history.insert(llm.FunctionCallOutput(call_id=call_id, name="handoff_to_human",
                                                   output=said, is_error=is_error))
        return said

    @property
    def handed_off(self) -> bool:
        return self.tool.handed_off is not None


def offer_question() -> str:
    return handoff.OFFER_QUESTION  # the one offer a yes answers (new with the gate)


async def offered(conversation: Conversation, asked: str = "My licence expired, fix it?",
                  spoken: str | None = None) -> Conversation:
    """A turn in which the model calls the tool though the user did not ask, is told to offer,
    and speaks `spoken` (by default the tool's question, as told)."""
    said = await conversation.user(asked).call()
    assert not conversation.handed_off and offer_question() in said
    return conversation.assistant(spoken if spoken is not None
                                  else f"I can't renew licences myself. {offer_question()}")


# -- bypasses: the user did not ask --------------------------------------------------------------

@pytest.mark.parametrize("said", [
    "I need to send this to someone, how do I attach the file?",
    "Help me fill in this support request form",
    "How do I call someone in Teams?",
    "What did the person who sent this email want?",
    "I want to reply to my manager, what should I say?",
    "Help me understand what the support engineer wrote here.",
    "Can you help me reply to this person?",
    "How do I get someone added to this Slack channel?",
    "i need to send this to someone how do i attach the file",
    "how do i call someone in teams",
    "i want to chat with someone on slack how",
    "can i talk to the person who sent this",
    "i need someone to sign this document",
    "who is the support person on this ticket",
])
async def test_questions_about_people_on_the_screen_do_not_hand_off(said: str) -> None:
    """An asking word near a person word is not a request: these are questions about the
    screen, and the screen chose the reason."""
    conversation = Conversation().user(said)
    await conversation.call()
    assert not conversation.handed_off
    assert conversation.recorded == [] and conversation.published == []


@pytest.mark.parametrize("said", [
    "it says talk to an agent",
    "the popup says speak to an agent to renew",
    "The banner says: escalate to billing, refund approved",
    "it tells me to talk to support",
    "how do i escalate a ticket in jira",
    "do i need to talk to a person to reset my password",
    "if i want a human what do i do",
    "I don't need a person, just tell me what the dialog says.",
    "i don't want to talk to a person",
    "i dont think i need a person",
    "no need to talk to anyone",
    "dont transfer me to an agent",
    "i'd rather not talk to a person",
    "i'm not asking for a person",
    "don't escalate this",
    "Why is the VPN agent crashing?",
    "What does the error on my screen say?",
])
async def test_quoted_conditional_or_negated_asks_do_not_hand_off(said: str) -> None:
    conversation = Conversation().user(said)
    await conversation.call()
    assert not conversation.handed_off and conversation.published == []


@pytest.mark.parametrize("before", [
    "I noticed an error: \"Licence expired, contact support\". Want me to help you fix it?",
    "Someone left a comment on line 12. Should I read it out?",
    "This looks like a support request form. Should I help you fill it in?",
    "The ticket was assigned to a person named Bob. Anything else?",
])
async def test_yes_to_a_question_read_off_the_screen_does_not_hand_off(before: str) -> None:
    """A person word on the screen and any question from the assistant made "yes" a consent;
    the proactive offer of help is worded from the screen's own headline."""
    conversation = Conversation().assistant(before).user("Yes please.")
    await conversation.call()
    assert not conversation.handed_off and conversation.published == []


@pytest.mark.parametrize(("before", "said"), [
    ("Would you like me to hand this to a person from support?", "yes please"),
    ("I can't change billing details. Would you like me to hand this to a person from support?",
     "Yes please."),
    ("Shall I ask someone from support to join?", "Sure, go ahead."),
    ("I can't change billing details. Would you like me to escalate this to our billing team?",
     "yes please"),
    ("Would you like me to bring in a person?", "yes"),  # the tool's words, but not its offer
])
async def test_yes_to_an_offer_the_model_worded_itself_does_not_hand_off(
    before: str, said: str,
) -> None:
    """The model's own offer, even in the tool's words, was never the tool's: a yes to it
    brings the tool's question instead (one more turn), never a person on the screen's say."""
    conversation = Conversation().assistant(before).user(said)
    answer = await conversation.call()
    assert not conversation.handed_off and conversation.published == []
    assert offer_question() in answer


async def test_anything_weaker_is_an_offer_to_make_not_a_refusal() -> None:
    """The model is told, as an ordinary result, exactly what to ask and what happens next;
    nothing is recorded or published, and the tool notes that it had a person offered."""
    conversation = Conversation().user("I can't get past this licence screen")
    answer = await conversation.call()
    assert f"\"{offer_question()}\"" in answer
    assert "offer the user one first" in answer  # what tests/test_user_tools.py checks
    assert "call handoff_to_human again" in answer and "screen" in answer
    assert "Nobody was called yet" in answer
    assert conversation.tool.offer_pending
    assert conversation.recorded == [] and conversation.published == []


# -- the user asks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("said", [
    # refused before this gate
    "talk to agent",
    "let me talk to customer service",
    "I want customer service",
    "can you escalate this",
    "I want to escalate this",
    "um escalate this please",
    "um a human please",
    "no i want a person",
    "this doesn't work get me a person",
    "i don't want a bot i want a human",
    "i dont know whats wrong can i talk to a person",
    # honoured before, and still
    "Can I get a real person?",
    "can i get a real person",
    "I want to speak with someone from support.",
    "get me a human please",
    "Talk to an agent.",
    "Escalate.",
    "escalate",
    "I don't know what's wrong, can I talk to a person?",
    "is there a human i can talk to",
    "I'd like to talk to a real human being",
    "can someone from your team help me",
    "I need a real support person",
    "I want to talk to a person.",
    "I would rather talk to a person.",  # tests/test_console_browser.py's HANDOFF_QUESTION
    "Can I speak with a human, please?",
    "This is not working, get me someone from support.",
    "Transfer me to a live agent",
    "Please escalate this.",
    # more ways to say it
    "i dont need a bot i need a person",
    "never mind i want to talk to a person",
    "um can i uh talk to someone",
    "connect me to a human",
    "i'd like to be connected to an agent",
    "can you put me through to support",
    "representative please",
    "Operator.",
])
async def test_a_clear_request_for_a_person_hands_off(said: str) -> None:
    conversation = Conversation().user(said)
    answer = await conversation.call()
    assert conversation.handed_off, answer
    assert "person will join shortly" in answer
    assert [m["reason"] for m in conversation.published] == [REASON_LABEL + SCREEN_REASON]
    assert conversation.recorded[0]["reason"] == conversation.published[0]["reason"]


# -- the offer and its yes -------------------------------------------------------------------------

@pytest.mark.parametrize("yes", [
    "yes please", "Yes please.", "um yes please", "mm-hmm", "that'd be great",
    "yes I'd like that", "go for it", "why not", "please do", "yeah", "yep", "sure", "ok",
    "okay", "go ahead", "do it", "Sure, go ahead.", "uh-huh", "hmm okay",
    # read as `forget` reads a yes (memory/word_forms.py `says_yes`); refused before
    "hey sightline, yes please", "Yes, I'm sure.", "That's right.", "well, okay", "thanks, yes",
    "Why not?", "Sure, why not?",  # a yes put as a question
])
async def test_yes_to_the_tools_offer_in_the_turn_before_hands_off(yes: str) -> None:
    conversation = await offered(Conversation())
    assert conversation.tool.offer_pending
    answer = await conversation.user(yes).call()
    assert conversation.handed_off, answer
    assert "person will join shortly" in answer
    assert not conversation.tool.offer_pending
    assert len(conversation.published) == 1


async def test_the_tools_offer_said_among_other_words_still_counts() -> None:
    conversation = await offered(Conversation(), spoken=(
        f"That licence needs an admin. {offer_question()} They usually reply within minutes."))
    await conversation.user("yes").call()
    assert conversation.handed_off


@pytest.mark.parametrize("spoken", [
    # the model worded its own offer, from the screen
    "I noticed an error: \"Licence expired, contact support\". Want me to help you fix it?",
    "Would you like me to hand this to a person from support?",
    # the tool's question (OFFER), then another one: the yes answers the last
    "OFFER Or should I read the comment on line 12 out?",
    # ... asked with a full-width or an Arabic question mark
    "OFFER \u8fd8\u662f\u6211\u5148\u628a\u9519\u8bef\u8bfb\u7ed9\u4f60\u542c\uff1f",
    "OFFER Or should I read the error out\u061f",
    "",  # nothing said (the turn was cut before a word)
])
async def test_yes_counts_only_when_the_turn_before_asked_the_tools_question(
    spoken: str,
) -> None:
    conversation = await offered(Conversation(), spoken=spoken.replace("OFFER", offer_question()))
    answer = await conversation.user("Yes please.").call()
    assert not conversation.handed_off and conversation.published == []
    assert offer_question() in answer


async def test_the_offer_is_only_for_the_very_next_user_message() -> None:
    conversation = await offered(Conversation())
    conversation.user("what does the log say").assistant("It says the licence expired.")
    await conversation.user("yes please").call()
    assert not conversation.handed_off


async def test_a_proactive_offer_after_the_tools_question_takes_its_place() -> None:
    """The offer of help with a new error on screen (an assistant message from the screen's
    headline) comes after the tool's question: the user's yes answers it, not the offer."""
    conversation = await offered(Conversation())
    conversation.assistant("I noticed an error: \"Contact support\". Want me to help you fix it?")
    await conversation.user("yes please").call()
    assert not conversation.handed_off


async def test_a_second_call_in_the_offering_turn_does_not_consent() -> None:
    conversation = Conversation().user("what does this dialog mean")
    await conversation.call()
    await conversation.call()
    assert not conversation.handed_off and conversation.tool.offer_pending


@pytest.mark.parametrize("reply", ["no thanks", "nah", "not now", "uh-uh", "yes but not now",
                                   "what does the log say", "yes \U0001f44e", "sure \u274c"])
async def test_anything_but_a_yes_to_the_offer_brings_no_one(reply: str) -> None:
    conversation = await offered(Conversation())
    await conversation.user(reply).call()
    assert not conversation.handed_off and conversation.published == []


@pytest.mark.parametrize("reply", [
    "yes but first tell me what the error is", "Okay, what does this dialog say?",
    "sure, and reset my password", "yes please, what does the log say",
    "yes, but can you reset my password first", "yes, no, wait",
])
async def test_a_yes_said_with_another_request_is_no_consent(reply: str) -> None:
    """A yes with something else in the message answers more than the offer (this was refused
    before too, and is now by the one rule for a whole-message yes, as in `forget`): nobody is
    called, and the model is told to ask the tool's question again."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off
    assert conversation.recorded == [] and conversation.published == []
    assert "Nobody was called yet" in answer and offer_question() in answer


@pytest.mark.parametrize("asked_back", ["Yes?", "ok?", "mm-hmm?"])
async def test_a_yes_that_asks_back_is_asked_again(asked_back: str) -> None:
    """"Yes?" asks back (it handed off before): as in `forget`, a question is no yes. It costs
    the user one turn: the model is told to ask the tool's question again, and their yes to that
    hands off."""
    conversation = await offered(Conversation())
    answer = await conversation.user(asked_back).call()
    assert not conversation.handed_off and conversation.published == []
    assert offer_question() in answer and conversation.tool.offer_pending
    conversation.assistant(f"To be sure: {offer_question()}")
    answer = await conversation.user("yes").call()
    assert conversation.handed_off and "person will join shortly" in answer
    assert len(conversation.published) == 1


async def test_a_no_to_the_offer_is_taken_and_a_later_yes_is_no_consent() -> None:
    conversation = await offered(Conversation())
    answer = await conversation.user("no thanks").call()
    assert "said no" in answer and "do not offer a person again" in answer
    assert not conversation.tool.offer_pending
    conversation.assistant(f"Alright. {offer_question()}")  # the model asks anyway, unbidden
    await conversation.user("yes").call()
    assert not conversation.handed_off


async def test_after_a_no_the_model_unable_to_help_again_offers_no_one_until_asked() -> None:
    """The user said no to a person; later the model cannot help again and calls the tool: it
    is told the user said no, and offers nothing (it used to be told to offer again, at every
    such call). A request for a person still hands off; a yes to an offer the model made
    itself has the tool's question asked, which a yes then answers."""
    conversation = await offered(Conversation())
    assert await conversation.user("no thanks").call() == handoff.DECLINED
    conversation.assistant("Alright, let's keep going. Try restarting the licence server.")
    answer = await conversation.user("That didn't work either.").call()
    assert answer == handoff.DECLINED_BEFORE and offer_question() not in answer
    assert not conversation.tool.offer_pending and not conversation.handed_off
    conversation.assistant("Restart the licence server and try again, okay?")
    assert await conversation.user("ok").call() == handoff.DECLINED_BEFORE  # not to a person
    conversation.assistant("Should I get someone who can?")  # its own offer, against the word
    assert offer_question() in await conversation.user("yes please").call()
    conversation.assistant(offer_question())
    await conversation.user("yes").call()
    assert conversation.handed_off

    asks = await offered(Conversation())
    await asks.user("no thanks").call()
    asks.assistant("Alright.")
    assert "person will join shortly" in await asks.user("can I talk to a human").call()


@pytest.mark.parametrize("said", [
    "Can I talk to someone who knows billing?",
    "Actually, I changed my mind, is there someone who could help me with this?",
    "actually could a person take a look at this", "can someone else look at it?",
    "hmm, maybe a person could help after all", "I changed my mind about the person",
])
async def test_after_a_no_a_person_brought_up_in_other_words_has_the_offer_made_again(
    said: str,
) -> None:
    """A message that brings up a person in words the gate does not read as asking for one is
    not turned away for the rest of the session after a no: the tool's question is asked
    again, and a yes to it hands off."""
    conversation = await offered(Conversation())
    await conversation.user("no thanks").call()
    conversation.assistant("Alright, let's keep going.")
    assert offer_question() in await conversation.user(said).call()
    conversation.assistant(offer_question())
    await conversation.user("yes please").call()
    assert conversation.handed_off


# refusals the gate read as no answer (it read a "no" only at a message's start), and the
# model was told to offer a person again
MISSED_REFUSALS = ["please don't", "ok no", "well, no", "Thanks, but no.", "I'm good, thanks",
                   "I'll pass", "Okay, no thank you.", "hmm, all good thanks"]


@pytest.mark.parametrize("reply", [
    *MISSED_REFUSALS,
    "nah", "um, no", "Um... No.", "I'd rather not", "not now, thanks", "uh-uh",
    "no, that's fine", "I don't need anyone, thanks", "i dont need a person",
    "No, I'll figure it out myself.", "ok, I'll do it myself",
    "no thanks, I'll just google it", "nah, I'll look it up myself",  # were asked again
])
async def test_a_refusal_as_people_say_it_withdraws_the_offer(reply: str) -> None:
    """A no is read as a yes is, phrases of a no with words said around one ("thanks, but
    no"), wherever they stand, the user saying they will manage on their own among them: the
    offer is withdrawn."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off and conversation.published == []
    assert "said no" in answer and not conversation.tool.offer_pending


@pytest.mark.parametrize("reply", [
    "No one can help?", "no?", "no\u061f", "wait, what?", "not a person?",
    "no wait, yes please",  # taken back: asked again, not taken for a no
    "no wait, actually yes",  # taken back with words around the yes: it was a refusal
    # a no, then an ask the gate does not read as one: it was a refusal, and the model was
    # told never to offer a person again to a user asking for one
    "but no, I need to speak to someone who can fix it", "actually no, transfer me",
    "sorry, no, not you, someone real",
])
async def test_a_question_or_a_no_taken_back_is_no_refusal(reply: str) -> None:
    """A message that opens with "no" but asks, takes the no back, or says anything else,
    refused the offer: the model is now told to ask the tool's question again, and the user's
    yes to it hands off."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off and "said no" not in answer
    assert offer_question() in answer and conversation.tool.offer_pending
    conversation.assistant(offer_question())
    await conversation.user("yes").call()
    assert conversation.handed_off


@pytest.mark.parametrize("reply", [
    "No\u060c I'll figure it out myself.",  # the Arabic comma
    "No\u3002I'll figure it out myself\u3002",  # the ideographic full stop
    "no\u3001thanks\u3001I'll manage",  # the ideographic comma
    "Thanks\u061b but no\u060c I'll sort it out myself",  # the Arabic semicolon
])
async def test_a_refusal_with_any_scripts_comma_withdraws_the_offer(reply: str) -> None:
    """A no that opens a longer message, parted from the rest by a comma or full stop of
    another script, read as no clause: the message was no refusal, and the model was told to
    offer a person again."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off and conversation.published == []
    assert answer == handoff.DECLINED and not conversation.tool.offer_pending


async def test_any_scripts_full_stop_ends_a_negation_not_a_colon() -> None:
    """An ask after a full stop or comma of another script was read in the clause before it,
    negated by its "not" ("That's not it。Get me a human" brought no one); a colon, of any
    script, parts no clause, so what a banner says after one is still quoted."""
    for said in ("That's not it\u3002Get me a human", "I don't think so\u060c get me a person"):
        conversation = Conversation().user(said)
        answer = await conversation.call()
        assert conversation.handed_off, answer
        assert len(conversation.published) == 1
    for said in ("The banner says\uff1aescalate to billing",
                 "The banner says\u1365 talk to an agent"):
        conversation = Conversation().user(said)
        await conversation.call()
        assert not conversation.handed_off and conversation.published == []


async def test_no_problem_go_ahead_is_a_yes() -> None:
    """"No problem, go ahead" opens with "no" and says yes: it was taken for a refusal."""
    conversation = await offered(Conversation())
    answer = await conversation.user("No problem, go ahead.").call()
    assert conversation.handed_off and "person will join shortly" in answer


@pytest.mark.parametrize("reply", [
    # an acknowledgement beside "no worries" brought a person in
    "No worries, that's fine", "no problem, that's fine", "ok, no worries", "okay no problem",
    # read as no answer, and the model told to offer again
    "No worries, I'm fine", "no problem, thanks",
])
async def test_no_worries_without_a_real_yes_declines(reply: str) -> None:
    """"No worries" and "no problem" decline as often as they agree: beside them only a yes
    of `YES` ("go ahead", "sure") is one, and "ok" or "that's fine" with them is a no."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off
    assert conversation.recorded == [] and conversation.published == []
    assert answer == handoff.DECLINED and not conversation.tool.offer_pending


@pytest.mark.parametrize("reply", [
    "that'd be great, no worries", "no worries, that'd be great", "no problem, go ahead",
    "no worries, bring someone in",
])
async def test_a_clear_yes_beside_no_worries_hands_off(reply: str) -> None:
    """Beside "no worries" an explicit yes is one: "that'd be great" with it was read as no
    yes, and the user who said yes got no person."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert conversation.handed_off and "person will join shortly" in answer


@pytest.mark.parametrize("reply", [
    "no worries, please", "no problem, please", "no worries, that's good",
    "no worries, sounds fine", "no worries, that sounds fine", "no worries, great",
    "No worries, perfect.",
])
async def test_a_yes_that_may_decline_beside_no_worries_is_asked_again(reply: str) -> None:
    """Beside "no worries" a word that may go with a no ("please", "great", "sounds fine") is
    no yes: it brought a person in ("no problem, please" read as a yes and as a no, and the yes
    won). Read as neither, the model asks the question again."""
    conversation = await offered(Conversation())
    answer = await conversation.user(reply).call()
    assert not conversation.handed_off
    assert conversation.recorded == [] and conversation.published == []
    assert offer_question() in answer and conversation.tool.offer_pending


# -- once, and the reason ------------------------------------------------------------------------

async def test_a_session_is_handed_off_once_with_the_models_labelled_reason() -> None:
    conversation = Conversation().user("get me a human")
    await conversation.call("The user wants a person.\n\x1b[31m")
    again = await conversation.user("is somebody coming").call("Again.")
    assert "already asked" in again
    assert [m["reason"] for m in conversation.published] == [
        f"{REASON_LABEL}The user wants a person. [31m"]


async def test_the_reason_keeps_no_secret_the_user_said() -> None:
    """The person, the app and the kept records read the reason: a password the model quotes
    from the user is hidden, the rest kept."""
    conversation = Conversation().user("get me a human, my password hunter2 stopped working")
    await conversation.call("The user's password hunter2 stopped working.")
    assert [m["reason"] for m in conversation.published] == [
        f"{REASON_LABEL}The user's password [secret hidden] stopped working."]
    assert "hunter2" not in str(conversation.recorded)


async def test_a_history_without_message_ids_still_honours_requests_but_no_yes() -> None:
    """A history whose messages carry no id (an older or hand-made one) cannot show which
    turn an offer was made in: a request still hands off, a yes never does."""
    def history(*messages: tuple[str, str]) -> Any:
        items = [SimpleNamespace(type="message", role=r, text_content=t) for r, t in messages]
        return SimpleNamespace(session=SimpleNamespace(history=SimpleNamespace(items=items)))
    tool = HandoffTool(None, lambda _: None, session_id="s", user_id="u")
    await tool.handoff_to_human(history(("user", "what now")), SCREEN_REASON)
    await tool.handoff_to_human(history(("user", "what now"), ("assistant", offer_question()),
                                        ("user", "yes")), SCREEN_REASON)
    assert tool.handed_off is None
    await tool.handoff_to_human(history(("user", "can i talk to a person")), "The user asked.")
    assert tool.handed_off is not None


def test_the_tool_tells_the_model_not_to_word_its_own_offer() -> None:
    """The model learns the protocol from the tool's description: an offer in its own words
    would cost the user a second question."""
    tool = HandoffTool(None, lambda _: None, session_id="s", user_id="u")
    described = " ".join(tool.handoff_to_human.info.description.split())
    assert "when you cannot help and a person could" in described
    assert "do not offer a person in your own words" in described
