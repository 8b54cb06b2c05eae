"""A session's running totals, folded from its events as they are recorded, and the summary
built from them: the last line of the session's cost log and its Postgres row.

Every figure here is a sum or count of event fields (dollars were priced when the event was
recorded, see `metering.py`), so the summary can always be recomputed from the JSONL file.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.quality import LOST_OUTCOMES
from vision.screen import FrameTally

from .event_log import Event
from .metering import MODEL_KINDS

# a spoken turn with this much of its audio made up, cut or stretched in transit counts as
# altered: NetEq trims ~10-20 ms now and then on a clean loopback, which changes no word
ALTERED_TURN_S = 0.1
_MODEL_TOTALS = (
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "images",
    "image_tokens", "image_tokens_full_resolution", "image_tokens_unsent",
)
_MODEL_DOLLARS = ("image_cost_usd", "image_full_resolution_cost_usd", "image_unsent_saved_usd",
                  "cost_usd")


@dataclass
class _UserTurn:
    """One user turn folded from its rounds: its first round's start, its last round's answer."""

    start_tier: int
    rounds: int = 0
    answered_tier: int | None = None
    escalated: bool = False
    request_ids: list[str] = field(default_factory=list)

    def add_round(self, detail: dict[str, Any]) -> None:
        self.rounds += 1
        self.request_ids.append(str(detail.get("request_id", "")))
        self.answered_tier = detail.get("answered_tier")
        self.escalated |= len(detail.get("tried", [])) > 1


def model_order(models: Iterable[str], tiers: dict[str, int | None]) -> list[str]:
    """Models by the cascade tier they served, then by name (a reranker, with no tier, last):
    one order for the summary wherever it is shown (Postgres' JSONB does not keep key order)."""
    return sorted(models, key=lambda m: (tiers.get(m) is None, tiers.get(m) or 0, m))


def _by_tier(tiers: Iterable[int | None]) -> dict[str, int]:
    """Counts by tier in tier order, as JSON object keys ("none": no tier answered)."""
    counts = Counter(tiers)
    ordered = sorted(counts, key=lambda t: (t is None, t or 0))
    return {("none" if t is None else str(t)): counts[t] for t in ordered}


class SessionTotals:
    def __init__(
        self, *, session_id: str, tenant: str, source: str, prices: Path, cost_log: Path,
    ) -> None:
        self._about = {"session_id": session_id, "tenant": tenant, "source": source}
        self._prices, self._cost_log = prices, cost_log
        self._started = time.time()
        self._by_model: dict[str, Counter[str]] = defaultdict(lambda: Counter(calls=0, errors=0))
        self._model_tier: dict[str, int] = {}  # the lowest cascade tier each model served
        self._cache_saved = 0.0
        self._frames = FrameTally()
        self._frames_received: int | None = None  # counted when the share ends (frame_count)
        self._frames_failed = 0
        self._share_resubscribed = 0
        self._user_turns: list[_UserTurn] = []
        self._discarded_rounds = 0  # preemptive generations superseded before they were played
        self._offers = 0  # replies the agent made unasked (agent_initiated rounds)
        self._tool_calls: Counter[str] = Counter()
        self._vs_top: dict[str, float] = {"rounds": 0, "cost_usd": 0.0, "top_tier_cost_usd": 0.0}
        self._memory_calls: Counter[str] = Counter()
        self._memory_cost_usd = 0.0
        self._knowledge_hits = 0
        self._recalls_lost = 0  # questions answered without their lookup (timed out, failed)
        self._memory_recalled = 0
        self._questions: Counter[str] = Counter()  # by what the screen image was: sent, ...
        self._screen: Counter[str] = Counter()
        self._ocr_cpu_ms = 0.0
        self._reader: dict[str, int] = {}
        self._video: dict[str, Any] = {}  # a replayed recording, as decoding found it
        self._handoff: dict[str, Any] = {}  # the session was handed to a person (tools/handoff)
        self._assists = 0  # live-assist messages (agent/assist.py)
        # opened without the database: whether and when it joined it (agent/database_watch.py)
        self._database: dict[str, Any] = {}
        # the session's connection to LiveKit lost and back (agent/livekit_connection.py)
        self._livekit: Counter[str] = Counter()
        self._livekit_offline_s = 0.0
        self._unpriced: set[str] = set()
        # speech engines by direction (stt, tts) and model: seconds heard, characters spoken
        self._speech: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self._speech_cost: Counter[str] = Counter()
        self._replies: Counter[str] = Counter()
        self._heard_altered_turns = 0  # spoken turns with ALTERED_TURN_S or more altered
        self._heard_altered_s = 0.0
        self._speech_failures: Counter[str] = Counter()  # by engine (agent/speech_outage.py)
        self.total_cost_usd = 0.0

    def add(self, event: Event) -> None:
        """Fold one event into the totals (events of other kinds are ignored)."""
        kind, detail = event["kind"], event.get("detail") or {}
        if kind in MODEL_KINDS:
            self._model_call(event, detail)
        elif kind == "turn":
            self._turn(detail)
        elif kind == "round_discarded":
            self._discard(detail["request_id"])
        elif kind == "frame":
            self._frames.add(detail)
        elif kind == "frame_count":
            self._frames_received = detail["received"]
            self._frames_failed = detail.get("failed", 0)
            self._share_resubscribed = detail.get("resubscribed", 0)
        elif kind == "context":
            self._knowledge_hits += len(detail.get("knowledge", []))
            self._recalls_lost += detail.get("recall") in LOST_OUTCOMES
            memory = detail.get("memory", {})
            self._memory_recalled += len(memory.get("facts", [])) + len(
                memory.get("messages", []))
            self._screen["recalled"] += len(detail.get("screen_recalled", []))
            # a screenshot sent before the reads of its frame were done
            self._screen["screenshots_unread"] += bool(detail.get("screen_unread"))
            self._questions[detail.get("image", detail.get("screen", "none"))] += 1
        elif kind == "screen_text":
            self._screen["reads"] += 1
            self._screen["lines_added"] += len(detail["lines"])
            self._screen["coalesced"] += detail["coalesced"]
            self._screen["secrets_hidden"] += sum(detail.get("secrets_hidden", {}).values())
            self._ocr_cpu_ms += detail["cpu_ms"]
        elif kind == "screen_error":
            self._screen["errors"] += 1
        elif kind == "screen_reader":
            self._reader = dict(detail)
        elif kind == "video":
            self._video = dict(detail)
        elif kind == "handoff":
            self._handoff = {"reason": detail["reason"], "at": detail["at"]}
        elif kind == "assist":
            self._assists += 1
        elif kind == "speech":
            self._speech_event(event, detail)
        elif kind == "speech_failed":
            self._speech_failures[detail["engine"]] += 1
        elif kind == "no_database":
            self._database = {"down_at_open": True, "joined_after_s": None}
        elif kind == "database_joined":
            self._database["joined_after_s"] = detail["offline_s"]
        elif kind == "livekit_lost":
            self._livekit["lost"] += 1
        elif kind == "livekit_back":
            self._livekit["back"] += 1
            self._livekit_offline_s += detail["offline_s"]
        elif kind == "memory_deferred":
            self._memory_calls["deferred"] += 1
        elif kind == "reply":
            self._replies["replies"] += 1
            self._replies["interrupted"] += bool(detail.get("interrupted"))
        elif kind == "heard" and "reception" in detail:
            altered = detail["reception"]["altered_s"]
            self._heard_altered_turns += int(altered >= ALTERED_TURN_S)
            self._heard_altered_s += altered

    def _speech_event(self, event: Event, detail: dict[str, Any]) -> None:
        cost = event["cost_usd"]
        if cost is None:
            self._unpriced.add(event["model"])
        totals = self._speech[(detail["direction"], event["model"])]
        totals["requests"] += 1
        totals["audio_ms"] += round(1000 * detail.get("audio_s", 0.0))
        totals["characters"] += detail.get("characters", 0)
        self._speech_cost[event["model"]] += cost or 0.0
        self.total_cost_usd += cost or 0.0

    def _model_call(self, event: Event, detail: dict[str, Any]) -> None:
        model, cost = event["model"], event["cost_usd"]
        if cost is None:
            self._unpriced.add(model)
        tier = detail.get("tier")
        if isinstance(tier, int):
            self._model_tier[model] = min(tier, self._model_tier.get(model, tier))
        totals = self._by_model[model]
        totals["calls"] += 1
        totals["errors"] += event["kind"] == "model_error"
        # .get: events read back from Postgres lack the fields only the JSONL line carries
        for name in _MODEL_TOTALS:
            totals[name] += event.get(name) or 0
        for name in _MODEL_DOLLARS:
            totals[name] += event.get(name) or 0.0
        self._cache_saved += event.get("cache_saved_usd") or 0.0
        self.total_cost_usd += cost or 0.0
        if detail.get("purpose") == "memory":
            self._memory_calls["failed" if event["kind"] == "model_error" else "calls"] += 1
            self._memory_calls["earlier_sessions"] += detail.get("earlier_session", 0)
            self._memory_cost_usd += cost or 0.0

    def _turn(self, detail: dict[str, Any]) -> None:
        """A cascade round. A user turn is the round its question started plus the rounds that
        answer its tools' results, so every per-turn count below adds up to `user_turns`."""
        if detail.get("top_tier_cost_usd") is not None:
            self._vs_top["rounds"] += 1
            self._vs_top["cost_usd"] += detail["cost_usd"]
            self._vs_top["top_tier_cost_usd"] += detail["top_tier_cost_usd"]
        self._tool_calls.update(detail.get("tool_calls", []))
        reason = str(detail.get("reason", ""))
        if reason.startswith("agent_initiated"):
            self._offers += 1
            return
        if not reason.startswith("tool_result") or not self._user_turns:
            self._user_turns.append(_UserTurn(int(detail.get("start_tier") or 0)))
        self._user_turns[-1].add_round(detail)

    def _discard(self, request_id: str) -> None:
        """A round livekit-agents discarded unplayed (agent/cascade.py): the user turn it
        started is no turn (its cost is still counted, and so is the round)."""
        for index, turn in enumerate(self._user_turns):
            if turn.request_ids[:1] == [request_id]:
                del self._user_turns[index]
                self._discarded_rounds += 1
                return

    def summary(self) -> dict[str, Any]:
        frames = self._frames
        return {
            **self._about,
            "duration_s": round(time.time() - self._started, 2),
            "total_cost_usd": round(self.total_cost_usd, 8),
            "by_model": {
                model: {"tier": self._model_tier.get(model),
                        **{k: (round(v, 8) if k.endswith("_usd") else v)
                           for k, v in self._by_model[model].items()}}
                for model in model_order(self._by_model, self._model_tier)
            },
            "frames": {
                "received": self._frames_received,
                **({"failed": self._frames_failed} if self._frames_failed else {}),
                **({"share_resubscribed": self._share_resubscribed}
                   if self._share_resubscribed else {}),
                "sampled": frames.sampled,
                "kept": frames.kept,
                "dropped": dict(frames.dropped),
                "by_content_type": frames.by_content_type(),
            },
            "turns": self._turns_summary(),
            "prompt_cache": self._cache_summary(),
            "images": self._image_summary(),
            "screen": {
                **{k: self._screen[k] for k in ("reads", "lines_added", "coalesced", "errors",
                                                "recalled", "secrets_hidden",
                                                "screenshots_unread")},
                "ocr_cpu_s": round(self._ocr_cpu_ms / 1000, 3),
                **({"reader": self._reader} if self._reader else {}),
            },
            **({"video": self._video} if self._video else {}),
            **({"handoff": self._handoff} if self._handoff else {}),
            **({"database": self._database} if self._database else {}),
            # `lost` above `back`: the session ended while LiveKit's SDK was reconnecting
            **({"livekit": {"lost": self._livekit["lost"], "back": self._livekit["back"],
                            "offline_s": round(self._livekit_offline_s, 1)}}
               if self._livekit else {}),
            **({"assist_messages": self._assists} if self._assists else {}),
            **({"voice": self._voice_summary()}
               if self._speech or self._speech_failures else {}),
            "knowledge_hits": self._knowledge_hits,
            "recalls_lost": self._recalls_lost,
            "memory": {
                "recalled": self._memory_recalled,  # facts and earlier messages put in requests
                "updates": self._memory_calls["calls"],
                "failed_updates": self._memory_calls["failed"],
                # updates for exchanges earlier sessions could not analyse (memory/backlog.py)
                "earlier_sessions": self._memory_calls["earlier_sessions"],
                # exchanges this session, without the database, kept for the user's next one
                "deferred": self._memory_calls["deferred"],
                "cost_usd": round(self._memory_cost_usd, 8),
            },
            "vs_top_tier": self._vs_top_summary(),
            "unpriced_models": sorted(self._unpriced),
            "prices": str(self._prices),
            "cost_log": str(self._cost_log),
        }

    def _turns_summary(self) -> dict[str, Any]:
        """Per user turn: the tier it started at, the tier whose answer ended it (`none`: every
        tier failed), and how many climbed past their first tier."""
        turns = self._user_turns
        summary: dict[str, Any] = {
            "user_turns": len(turns),
            "model_rounds": sum(t.rounds for t in turns) + self._offers + self._discarded_rounds,
            "agent_initiated": self._offers,
            "discarded_rounds": self._discarded_rounds,
            "started_at_tier": _by_tier(t.start_tier for t in turns),
            "answered_by_tier": _by_tier(t.answered_tier for t in turns),
            "escalated": sum(t.escalated for t in turns),
        }
        if self._tool_calls:
            summary["tool_calls"] = dict(self._tool_calls)
        return summary

    def _voice_summary(self) -> dict[str, Any]:
        """Speech heard (STT: seconds of audio) and spoken (TTS: characters, seconds), by
        engine, with their cost; replies and how many the user spoke over; requests an engine
        failed after its retries, by direction."""
        engines = [
            {"direction": direction, "model": model, "requests": t["requests"],
             "audio_s": round(t["audio_ms"] / 1000, 3), "characters": t["characters"],
             "cost_usd": round(self._speech_cost[model], 8)}
            for (direction, model), t in sorted(self._speech.items())
        ]
        heard = sum(e["audio_s"] for e in engines if e["direction"] == "stt")
        return {
            "heard_s": round(heard, 3),
            "spoken_s": round(sum(e["audio_s"] for e in engines if e["direction"] == "tts"), 3),
            "spoken_characters": sum(e["characters"] for e in engines),
            "cost_usd": round(sum(self._speech_cost.values()), 8),
            "engines": engines,
            "replies": self._replies["replies"],
            "interrupted_replies": self._replies["interrupted"],
            # spoken turns whose audio WebRTC's jitter buffer altered (agent/audio_reception.py)
            "heard_altered": {"turns": self._heard_altered_turns,
                              "seconds": round(self._heard_altered_s, 3)},
            **({"failed": dict(sorted(self._speech_failures.items()))}
               if self._speech_failures else {}),
        }

    def _vs_top_summary(self) -> dict[str, Any]:
        """Answered turns' cost against answering each of them with the top tier's model (its
        price for the same tokens): what the cascade saved."""
        top = self._vs_top["top_tier_cost_usd"]
        return {
            "user_turns": len(self._user_turns),
            "model_rounds": int(self._vs_top["rounds"]),
            "cost_usd": round(self._vs_top["cost_usd"], 8),
            "top_tier_cost_usd": round(top, 8),
            "savings": round(1 - self._vs_top["cost_usd"] / top, 4) if top else None,
        }

    def _image_summary(self) -> dict[str, Any]:
        """Images sent, their billed tokens and cost, and the same frames at full resolution."""
        totals = self._by_model.values()
        cost = sum(t["image_cost_usd"] for t in totals)
        full_cost = sum(t["image_full_resolution_cost_usd"] for t in totals)
        return {
            "sent": sum(t["images"] for t in totals),
            "tokens": sum(t["image_tokens"] for t in totals),
            "cost_usd": round(cost, 8),
            "tokens_at_full_resolution": sum(t["image_tokens_full_resolution"] for t in totals),
            "saved_usd": round(full_cost - cost, 8),
            # per question: a new screenshot, or none because the screen had not changed
            "questions_with_new_image": self._questions["sent"],
            "questions_screen_unchanged": self._questions["unchanged"],
            "unsent_tokens": sum(t["image_tokens_unsent"] for t in totals),
            "unsent_saved_usd": round(sum(t["image_unsent_saved_usd"] for t in totals), 8),
        }

    def _cache_summary(self) -> dict[str, Any]:
        """Share of prompt tokens read from the providers' caches, and the dollars that saved."""
        totals = self._by_model.values()
        cached = sum(t["cached_input_tokens"] for t in totals)
        prompt = cached + sum(t["input_tokens"] + t["cache_write_tokens"] for t in totals)
        return {
            "hit_rate": round(cached / prompt, 4) if prompt else 0.0,
            "cached_input_tokens": cached,
            "prompt_tokens": prompt,
            "saved_usd": round(self._cache_saved, 8),
        }
