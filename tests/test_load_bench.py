"""bench/load.py splits each answered question's round trip into its hops from the sessions'
event logs (the `chat` event says when a question reached the worker)."""

from __future__ import annotations

from pytest import approx

from bench.load import Sessions, _questions, hops
from bench.load_users import UserResult


def _event(kind: str, ts: float, **detail: object) -> dict[str, object]:
    return {"kind": kind, "ts": ts, "detail": detail}


def test_a_round_trip_is_split_into_to_the_worker_at_the_worker_and_back() -> None:
    events = [
        _event("session", 99.0, room="r1"),
        _event("chat", 100.6, sent_at=100.0, received_at=100.5, characters=9),
        _event("turn", 101.5),
        _event("chat", 130.2, sent_at=130.0, received_at=130.1, characters=9),
        _event("turn", 131.0),
        _event("chat", 160.0, sent_at=0.0, received_at=160.0, characters=9),  # no sender time
    ]
    sessions = Sessions(questions={"r1": _questions(events)})
    user = UserResult("r1", answered_at=[(100.001, 102.0), (130.0, 131.25), (145.0, 146.0)])
    split = hops([user], sessions)
    # the third answer matches no question the worker recorded (none sent near 145 s)
    assert split == {"to_worker": approx([0.5, 0.1]), "at_worker": approx([1.0, 0.9]),
                     "back": approx([0.5, 0.25])}
