"""A job's metadata, as a re-dispatch writes it (agent/redispatch.py `_naming`) and a worker
reads it (agent/worker.py `job_user`, `job_tenant`).

Protects: metadata `json` cannot read, one nested too deep or with a number of more than 4,300
digits (it raises ValueError and RecursionError, not JSONDecodeError), names no tenant and no
user, with no traceback: in a re-dispatch that ended the task holding its claim (the fleet found
the room TAKEN, and the user got no agent); in a job, the job. And a re-dispatch for the user on
a new device, beside a bystander, names them: naming nobody let the agent serve the bystander.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from livekit.protocol import models

from agent.redispatch import Redispatcher, _naming
from agent.worker import job_tenant, job_user
from memory.redispatches import RoomUser

UNREADABLE = ['{"tenant": "acme", "n": ' + "1" * 5000 + "}", "[" * 100_000]


def person(identity: str, joined_s: float) -> models.ParticipantInfo:
    return models.ParticipantInfo(identity=identity, kind=models.ParticipantInfo.Kind.STANDARD,
                                  joined_at_ms=int(joined_s * 1000))


@pytest.mark.parametrize("metadata", UNREADABLE)
def test_unreadable_metadata_names_no_tenant_and_no_user(
        metadata: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert json.loads(_naming(metadata, RoomUser("ana", None), [person("ana", 0)])) == {
        "user": "ana"}
    assert job_user(metadata) is None
    assert job_tenant(metadata, "default") == "default"
    assert [r.getMessage() for r in caplog.records] == [
        "job metadata is not a JSON object, using tenant 'default'"]


def test_the_user_on_a_new_device_beside_a_bystander_is_named() -> None:
    """The room's user left and came back under another identity (two, the latest last); a
    bystander who was there while their session ran stays. The new dispatch names the latest
    newcomer, so its agent does not serve the bystander."""
    now = time.time()
    user = RoomUser("ana", ended_at=now - 300)
    people = [person("recorder", now - 3600), person("ana-phone", now - 30),
              person("ana-laptop", now - 120)]
    theirs = Redispatcher._theirs(people, user, "room")
    assert [p.identity for p in theirs] == ["ana-phone", "ana-laptop"]
    assert job_user(_naming('{"tenant": "acme"}', user, theirs)) == "ana-phone"
    assert job_user(_naming('{"tenant": "acme"}', None, people)) is None  # no user recorded
