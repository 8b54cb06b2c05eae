"""Fixture sessions for replay: a screen video plus a timeline of turns and their model responses.

The format is documented in fixtures/README.md. Loading validates everything up front, so a bad
fixture fails with one message that names the file and the field, before anything runs.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit.agents import llm

from tools.handoff import HandoffTool
from tools.knowledge_tools import KnowledgeTools
from tools.memory_tools import MemoryTools
from tools.screen_history import ScreenHistoryTools
from vision.video_file import VideoUnreadable, probe_duration

from .cli_common import one_line
from .config import MAX_HISTORY_MESSAGES, Tier, parse_tiers

ORIGINS = ("recorded", "scripted")
# the tools a replayed session's agent has (agent/session.py gives it these classes' tools): a
# scripted call to any other would only loop
AGENT_TOOLS = frozenset(
    tool.id for tools in (ScreenHistoryTools, HandoffTool, KnowledgeTools, MemoryTools)
    for tool in llm.find_function_tools(tools))


class FixtureError(ValueError):
    """A fixture that cannot be replayed; the message names the file and the field."""


@dataclass(frozen=True)
class ToolCallScript:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class TierReply:
    """What one cascade tier says when asked on a turn: its confidence header and text, a tool
    call, or an error. A model listed twice in a turn says its entries in order (a tool call,
    then its answer to the result)."""

    model: str
    text: str = ""
    confidence: float | None = None
    error_status: int | None = None
    tool_call: ToolCallScript | None = None


@dataclass(frozen=True)
class FixtureResponse:
    origin: str
    text: str = ""
    error_status: int | None = None
    tiers: tuple[TierReply, ...] = ()


@dataclass(frozen=True)
class FixtureTurn:
    t: float
    text: str
    tenant: str
    user: str
    response: FixtureResponse
    session: str = ""  # turns of one tenant, user and session label form one session
    memory: str | None = None  # the memory model's scripted JSON reply after this turn
    audio: Path | None = None  # a spoken turn: its WAV, heard through SIGHTLINE_STT; `text`
    # is then what was said (the reference the transcript is compared with), not the input


@dataclass(frozen=True)
class Fixture:
    name: str
    path: Path
    video: Path
    duration_s: float
    turns: tuple[FixtureTurn, ...]
    tiers: tuple[Tier, ...] | None = None
    knowledge: Path | None = None  # documents ingested for every tenant of the fixture
    history_messages: int | None = None  # the recent window a session starts with

    @property
    def tenants(self) -> list[str]:
        """The tenants its turns name, in the order they first appear."""
        return list(dict.fromkeys(turn.tenant for turn in self.turns))


def _require(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise FixtureError(f"{where}: missing field '{key}'")
    value = obj[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise FixtureError(f"{where}: field '{key}' must be a non-empty {kind.__name__}")
    return value


def _unstorable(text: str) -> str | None:
    """What keeps `text` from being stored or sent, or None. JSON can spell what no text
    holds: `\\u0000` (Postgres stores no NUL: the session failed at its row) and a lone
    surrogate (`\\ud800`, half a UTF-16 pair: no character, so no UTF-8, and the provider
    SDK failed on it mid-turn)."""
    if "\0" in text:
        return "holds a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds \\u{ord(text[exc.start]):04x}, a lone surrogate (half a UTF-16 pair, "
                "no character), which is not UTF-8 text: it cannot be stored or sent")
    return None


def _member(path: str, key: str) -> str:
    """`path`'s member `key` as the field is named (`turns[3].text`); an odd key is quoted as
    JSON, ASCII only, so the name stays one printable line whatever the key holds."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _check_text(raw: dict[str, Any], where: str) -> None:
    """Every string of the fixture, keys too, can be stored and sent: checked once over the
    whole document (tool arguments and memory facts reach the database as well), the first
    that cannot be is named by its path. Iterative: a document nested as deep as `json`
    parses would overflow a recursive walk."""
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            why = _unstorable(value)
            if why is not None:
                raise FixtureError(f"{where}: {path}: {why}")
        elif isinstance(value, dict):
            for key in value:
                why = _unstorable(key)
                if why is not None:
                    raise FixtureError(f"{where}: {_member(path, key)}: its name {why}")
            stack += reversed([(_member(path, k), v) for k, v in value.items()])
        elif isinstance(value, list):
            stack += reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)])


def _error_status(raw: dict[str, Any], where: str) -> int:
    status = raw["error"].get("status") if isinstance(raw["error"], dict) else None
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise FixtureError(f"{where}: error.status must be an HTTP error status")
    return status


def _tier_reply(raw: Any, where: str) -> TierReply:
    if not isinstance(raw, dict):
        raise FixtureError(f"{where}: must be an object")
    model = _require(raw, "model", str, where)
    if "error" in raw:
        return TierReply(model, error_status=_error_status(raw, where))
    confidence = raw.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool) or not isinstance(confidence, int | float)
        or not 0 <= confidence <= 1
    ):
        raise FixtureError(f"{where}: confidence must be a number from 0 to 1, or absent")
    if "tool_call" in raw:
        call = raw["tool_call"]
        if not isinstance(call, dict) or not isinstance(call.get("args", {}), dict):
            raise FixtureError(f"{where}: tool_call must be {{\"name\": ..., \"args\": {{...}}}}")
        tool = ToolCallScript(_require(call, "name", str, f"{where}.tool_call"),
                              call.get("args", {}))
        if tool.name not in AGENT_TOOLS:
            raise FixtureError(f"{where}.tool_call: the agent has no tool {tool.name!r} (its "
                               f"tools: {', '.join(sorted(AGENT_TOOLS))})")
        return TierReply(model, str(raw.get("text", "")), confidence, tool_call=tool)
    return TierReply(model, _require(raw, "text", str, where), confidence)


def _response(raw: Any, where: str) -> FixtureResponse:
    if not isinstance(raw, dict):
        raise FixtureError(f"{where}: field 'response' must be an object")
    origin = _require(raw, "origin", str, where)
    if origin not in ORIGINS:
        raise FixtureError(f"{where}: response.origin must be 'recorded' or 'scripted'")
    if "tiers" in raw:
        tiers = _require(raw, "tiers", list, f"{where}.response")
        return FixtureResponse(origin, tiers=tuple(
            _tier_reply(t, f"{where}.response.tiers[{i}]") for i, t in enumerate(tiers)
        ))
    if "error" in raw:
        return FixtureResponse(origin, error_status=_error_status(raw, f"{where}.response"))
    return FixtureResponse(origin, text=_require(raw, "text", str, f"{where}.response"))


def _memory_reply(raw: Any, where: str) -> str:
    """The scripted memory update as the JSON text the memory model answers with."""
    if not isinstance(raw, dict) or raw.get("origin") != "scripted":
        raise FixtureError(f"{where}: must be an object with \"origin\": \"scripted\"")
    facts = raw.get("facts", [])
    if not isinstance(facts, list) or not all(
        isinstance(f, dict) and isinstance(f.get("key"), str) and isinstance(f.get("text"), str)
        for f in facts
    ):
        raise FixtureError(f"{where}.facts: must be a list of {{\"key\": ..., \"text\": ...}}")
    forget = raw.get("forget", [])
    if not isinstance(forget, list) or not all(isinstance(k, str) for k in forget):
        raise FixtureError(f"{where}.forget: must be a list of keys")
    summary = raw.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise FixtureError(f"{where}.summary: must be a string or null")
    return json.dumps({"facts": facts, "forget": forget, "summary": summary})


def _audio(folder: Path, turn: dict[str, Any], where: str) -> Path:
    """A spoken turn's recording: a 16-bit PCM WAV file next to session.json."""
    import wave

    path = folder / _require(turn, "audio", str, where)
    if not path.is_file():  # a named pipe would block the open until something wrote to it
        why = "is not a file" if path.exists() else "does not exist next to it"
        raise FixtureError(f"{where}: audio '{path.name}' {why}")
    try:
        with wave.open(str(path)) as wav:
            if wav.getsampwidth() != 2 or not wav.getnframes():
                raise FixtureError(f"{where}: audio '{path.name}' must be 16-bit PCM with sound")
    except FileNotFoundError:
        raise FixtureError(f"{where}: audio '{path.name}' does not exist next to it") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise FixtureError(f"{where}: audio '{path.name}' is not a WAV file ({exc})") from None
    return path


def _knowledge(folder: Path, named: str, where: str) -> Path:
    """The fixture's knowledge folder, which is ingested whole into every tenant's knowledge
    base: it must be named inside the fixture's folder (relative, no `..`), or `"/"` would
    ingest the filesystem. A link in it is followed, as `kb ingest` follows one (a shared docs
    folder linked in: refusing a folder named outside says how), unless it leads to a folder
    that holds the fixture itself (`/`, a home or a parent folder): all of that would be
    ingested. So what a replay ingests is always what the fixture's folder shows. The video
    and audio may lie outside (fixtures/voice_demo plays the demo's): each is one file,
    refused unless it is one."""
    path = folder / named
    if Path(named).is_absolute() or ".." in Path(named).parts:
        raise FixtureError(f"{where}: knowledge '{one_line(named)}' must be a folder inside "
                           "the fixture's folder (a relative path without '..')"
                           + _link_it_in(folder, named))
    if not path.exists():
        raise FixtureError(f"{where}: knowledge '{one_line(path.name)}' does not exist next "
                           "to it")
    target = path.resolve()
    if target != folder.resolve() and folder.resolve().is_relative_to(target):
        raise FixtureError(f"{where}: knowledge '{one_line(named)}' leads to "
                           f"{one_line(str(target))}, a folder that holds the fixture itself: "
                           "it would all be ingested")
    return path


def _link_it_in(folder: Path, named: str) -> str:
    """How to use the folder `named` outside the fixture's, for the refusal to say: a link to
    it in the fixture's folder, which `_knowledge` follows. Nothing when it is no folder,
    holds the fixture (its link would be refused too), or its name is taken there."""
    try:
        target = (folder / named).resolve(strict=True)
        usable = target.is_dir() and not folder.resolve().is_relative_to(target)
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return ""
    link = folder / target.name
    if not usable or os.path.lexists(link):
        return ""
    # named as the fixture named it, relative or absolute: a relative link moves with the
    # fixtures, as a video named `../demo/screen.webm` does
    points_to = target if Path(named).is_absolute() else os.path.relpath(target,
                                                                           folder.resolve())
    return one_line(f"; to ingest {target}, link it in (ln -s {shlex.quote(str(points_to))} "
                    f"{shlex.quote(str(link))}) and name the link: "
                    f"\"knowledge\": {json.dumps(target.name)}")


def has_audio(fixture: Fixture) -> bool:
    return any(turn.audio is not None for turn in fixture.turns)


def load_fixture(path: Path) -> Fixture:
    """Load `PATH/session.json` (or a session.json path) and check its video is readable."""
    session_file = path / "session.json" if path.is_dir() else path
    try:
        if session_file.exists() and not session_file.is_file():
            # a named pipe would block the read until something wrote to it (a directory, a
            # device: no fixture either); what does not exist is said below
            raise FixtureError(f"{session_file}: is not a file (a fixture is a directory "
                               "with session.json and a video)")
        raw = json.loads(session_file.read_text())
    except FileNotFoundError:
        raise FixtureError(f"{session_file}: not found (a fixture is a directory with "
                           "session.json and a video)") from None
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{session_file}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise FixtureError(f"{session_file}: not UTF-8 text (a fixture's session.json is JSON "
                           "in UTF-8)") from None
    except RecursionError:
        raise FixtureError(f"{session_file}: nested deeper than a fixture can be") from None
    except OSError as exc:
        raise FixtureError(f"{session_file}: cannot read it ({exc.strerror})") from None
    if not isinstance(raw, dict):
        raise FixtureError(f"{session_file}: must hold a JSON object")
    where = str(session_file)
    _check_text(raw, where)
    if not raw.get("name") and _unstorable(session_file.parent.name) is not None:
        # the name goes into each session's row (its room): bytes of a folder name that are
        # not UTF-8 (Python keeps them as lone surrogates) cannot be stored
        raise FixtureError(f"{where}: the fixture's folder name is not UTF-8 text, and it "
                           "names the fixture when session.json has no 'name': give it one")
    video = session_file.parent / _require(raw, "video", str, where)
    if not video.is_file():
        why = "is not a file" if video.exists() else "does not exist next to it"
        raise FixtureError(f"{where}: video '{one_line(video.name)}' {why}")
    try:
        duration = probe_duration(video)
    except VideoUnreadable as exc:
        raise FixtureError(f"{where}: {exc}") from None
    if "provider" in raw:
        raise FixtureError(f"{where}: 'provider' is replaced by 'tiers' "
                           "(provider:model:threshold:max_tokens,..., see fixtures/README.md)")
    tiers = None
    if "tiers" in raw:
        try:
            tiers = parse_tiers(_require(raw, "tiers", str, where))
        except ValueError as exc:
            raise FixtureError(f"{where}: tiers: {exc}") from None
    knowledge = None
    if "knowledge" in raw:
        knowledge = _knowledge(session_file.parent, _require(raw, "knowledge", str, where),
                               where)
    history = raw.get("history_messages")
    if history is not None and (isinstance(history, bool) or not isinstance(history, int)
                                or not 0 <= history <= MAX_HISTORY_MESSAGES):
        raise FixtureError(f"{where}: history_messages must be a whole number from 0 to "
                           f"{MAX_HISTORY_MESSAGES}")
    raw_turns = _require(raw, "turns", list, where)
    if not raw_turns:
        raise FixtureError(f"{where}: 'turns' is empty")
    turns = []
    for i, turn in enumerate(raw_turns):
        at = f"{where}: turns[{i}]"
        if not isinstance(turn, dict):
            raise FixtureError(f"{at}: must be an object")
        t = _require(turn, "t", float, at)
        if not 0 <= t <= duration + 0.5:
            raise FixtureError(f"{at}: t={t} is outside the video (0-{duration:.1f}s)")
        if turns and t < turns[-1].t:
            raise FixtureError(f"{at}: turns must be sorted by t")
        turns.append(
            FixtureTurn(
                t=t,
                text=_require(turn, "text", str, at),
                tenant=_require(turn, "tenant", str, at),
                user=_require(turn, "user", str, at),
                response=_response(turn.get("response"), at),
                session=str(turn.get("session", "")),
                memory=_memory_reply(turn["memory"], f"{at}.memory") if "memory" in turn
                else None,
                audio=_audio(session_file.parent, turn, at) if "audio" in turn else None,
            )
        )
    return Fixture(
        name=str(raw.get("name") or session_file.parent.name),
        path=session_file,
        video=video,
        duration_s=duration,
        turns=tuple(turns),
        tiers=tiers,
        knowledge=knowledge,
        history_messages=history,
    )
