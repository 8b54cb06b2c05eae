"""The cost ledger: every model call and every sampled-frame decision of one session, priced.

Each event is appended to `<costs_dir>/<session_id>.jsonl` at once (the durable copy) and queued
for the `cost_events` table. `close()` appends the session summary as the file's last line and
stores it on the session row, so ops read the same numbers from either place.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from memory.store import Store
from memory.writer import BackgroundWriter
from vision.screen import FrameDecision, FrameTally

from .budget import BudgetGuard
from .pricing import PriceTable, Usage

log = logging.getLogger("sightline.costs")
SPILL_SUFFIX = ".db-spill.jsonl"  # cost events the database did not take before the close


class CostLedger:
    def __init__(
        self,
        *,
        session_id: str,
        tenant: str,
        source: str,
        costs_dir: Path,
        prices: PriceTable,
        store: Store | None,
        budget: BudgetGuard | None = None,
    ) -> None:
        self.session_id = session_id
        self.budget = budget
        self.tenant = tenant
        self.source = source
        self.prices = prices
        self.path = costs_dir / f"{session_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)
        self._store = store
        self._writer = (
            BackgroundWriter(
                "cost_events", store.add_cost_events, costs_dir / f"{session_id}{SPILL_SUFFIX}"
            )
            if store is not None
            else None
        )
        self._seq = 0
        self._started = time.time()
        self._by_model: dict[str, dict[str, Any]] = defaultdict(
            lambda: Counter(calls=0, errors=0)
        )
        self._frames = FrameTally()
        self._turns: dict[str, Counter[str]] = defaultdict(Counter)
        self._vs_top: dict[str, float] = {"rounds": 0, "cost_usd": 0.0, "top_tier_cost_usd": 0.0}
        self._user_turns = 0
        self._memory_calls: Counter[str] = Counter()
        self._memory_cost_usd = 0.0
        self._unpriced: set[str] = set()
        self.total_cost_usd = 0.0
        self.closed = False
        if budget is not None:  # a tenant may start the session over its budget already
            for crossed in budget.observe(0.0):
                self._record("budget", cost_usd=0.0, detail=crossed)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Number the next event and append it to the JSONL file, the durable copy."""
        self._seq += 1
        event = {
            "session_id": self.session_id,
            "tenant": self.tenant,
            "seq": self._seq,
            "ts": time.time(),
            "kind": kind,
            **fields,
        }
        self._file.write(json.dumps(event) + "\n")
        return event

    def _record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = self._event(kind, **fields)
        if self._writer is not None:
            self._writer.put(event)
        return event

    def model_call(
        self,
        *,
        provider: str,
        model: str,
        usage: Usage,
        images: int,
        latency_ms: float,
        image_tokens: int = 0,
        image_tokens_full_resolution: int = 0,
        error: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cost = self.prices.cost(model, usage)
        if cost is None:
            self._unpriced.add(model)
            log.warning("no price for model %s in %s: cost not counted", model, self.prices.path)
        else:
            self.total_cost_usd += cost
        if self.budget is not None:
            for crossed in self.budget.observe(self.total_cost_usd):
                self._record("budget", cost_usd=0.0, detail=crossed)
        totals = self._by_model[model]
        totals["calls"] += 1
        totals["errors"] += 1 if error else 0
        totals["input_tokens"] += usage.input_tokens
        totals["cached_input_tokens"] += usage.cached_input_tokens
        totals["cache_write_tokens"] += usage.cache_write_tokens
        totals["output_tokens"] += usage.output_tokens
        totals["images"] += images
        totals["image_tokens"] += image_tokens
        totals["image_tokens_full_resolution"] += image_tokens_full_resolution
        # images are billed as input tokens: their share of the call's cost, at the input rate
        image_cost = self.prices.input_cost(model, image_tokens)
        totals["image_cost_usd"] += image_cost or 0.0
        totals["image_full_resolution_cost_usd"] += (
            self.prices.input_cost(model, image_tokens_full_resolution) or 0.0)
        totals["cost_usd"] += cost or 0.0
        if (detail or {}).get("purpose") == "memory":
            self._memory_calls["failed" if error else "calls"] += 1
            self._memory_cost_usd += cost or 0.0
        return self._record(
            "model_error" if error else "model_call",
            provider=provider,
            model=model,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            images=images,
            image_tokens=image_tokens,
            image_tokens_full_resolution=image_tokens_full_resolution,
            image_cost_usd=round(image_cost, 8) if image_cost is not None else None,
            latency_ms=round(latency_ms, 1),
            cost_usd=cost,
            detail={**(detail or {}), **({"error": error} if error else {})},
        )

    def tier_cap(self) -> int | None:
        """The highest cascade tier the budgets allow now (None: no limit)."""
        return self.budget.tier_cap() if self.budget is not None else None

    def turn(
        self, detail: dict[str, Any], *, cost_usd: float, answer_usage: Usage | None,
        top_model: str,
    ) -> None:
        """One user turn of the cascade: where it started and why, each tier tried with its
        confidence and outcome, and the tier that answered. `top_model`'s price for the answer's
        tokens is what the turn would have cost on the top tier alone."""
        answered = detail.get("answered_tier")
        top_cost = self.prices.cost(top_model, answer_usage) if answer_usage else None
        if top_cost is not None:
            self._vs_top["rounds"] += 1
            self._vs_top["cost_usd"] += cost_usd
            self._vs_top["top_tier_cost_usd"] += top_cost
        detail = {**detail, "cost_usd": round(cost_usd, 8),
                  "top_tier_cost_usd": round(top_cost, 8) if top_cost is not None else None}
        if detail.get("reason") != "tool_result":  # the answer to a tool's result is not a turn
            self._user_turns += 1
        self._turns["answered_by_tier"][str(answered)] += 1
        self._turns["started_at_tier"][str(detail.get("start_tier"))] += 1
        self._turns["escalated_in_turn"][str(len(detail.get("tried", [])) > 1)] += 1
        for name in detail.get("tool_calls", []):
            self._turns["tool_calls"][name] += 1
        self._record("turn", cost_usd=0.0, detail=detail)

    def frame(self, decision: FrameDecision) -> None:
        """One sampled (or unusable) frame: kept or dropped, why, its content type, distances."""
        self._frames.add(decision)
        self._record(
            "frame",
            cost_usd=0.0,
            detail={**decision.as_dict(), "width": decision.width, "height": decision.height},
        )

    def summary(
        self, frames_received: int = 0, knowledge_hits: int = 0, memory_recalled: int = 0,
    ) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "tenant": self.tenant,
            "source": self.source,
            "duration_s": round(time.time() - self._started, 2),
            "total_cost_usd": round(self.total_cost_usd, 8),
            "by_model": {
                model: {k: (round(v, 8) if k.endswith("_usd") else v) for k, v in totals.items()}
                for model, totals in self._by_model.items()
            },
            "frames": {
                "received": frames_received,
                "sampled": self._frames.sampled,
                "kept": self._frames.kept,
                "dropped": dict(self._frames.dropped),
                "by_content_type": self._frames.by_content_type(),
            },
            "turns": {k: dict(v) for k, v in sorted(self._turns.items())},
            "prompt_cache": self._cache_summary(),
            "images": self._image_summary(),
            "knowledge_hits": knowledge_hits,
            "memory": {
                "recalled": memory_recalled,  # facts and earlier messages put into requests
                "updates": self._memory_calls["calls"],
                "failed_updates": self._memory_calls["failed"],
                "cost_usd": round(self._memory_cost_usd, 8),
            },
            "vs_top_tier": self._vs_top_summary(),
            **({"budget": self.budget.summary(self.total_cost_usd)} if self.budget else {}),
            "unpriced_models": sorted(self._unpriced),
            "prices": str(self.prices.path),
            "cost_log": str(self.path),
        }

    def _vs_top_summary(self) -> dict[str, Any]:
        """Answered turns' cost against answering each of them with the top tier's model (its
        price for the same tokens): what the cascade saved."""
        top = self._vs_top["top_tier_cost_usd"]
        return {
            "user_turns": self._user_turns,
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
        }

    def _cache_summary(self) -> dict[str, Any]:
        """Share of prompt tokens read from the providers' caches, and the dollars that saved."""
        cached = sum(t["cached_input_tokens"] for t in self._by_model.values())
        prompt = cached + sum(
            t["input_tokens"] + t["cache_write_tokens"] for t in self._by_model.values()
        )
        saved = sum(
            self.prices.cache_savings(model, t["cached_input_tokens"])
            for model, t in self._by_model.items()
        )
        return {
            "hit_rate": round(cached / prompt, 4) if prompt else 0.0,
            "cached_input_tokens": cached,
            "prompt_tokens": prompt,
            "saved_usd": round(saved, 8),
        }

    async def close(
        self, frames_received: int = 0, knowledge_hits: int = 0, memory_recalled: int = 0,
    ) -> dict[str, Any]:
        """Flush every event, then write the summary to the file and the session row."""
        summary = self.summary(frames_received, knowledge_hits, memory_recalled)
        if self._writer is not None:
            summary["db_spilled_events"] = await self._writer.close()
        # the summary goes to the session row below, not to cost_events
        self._event("summary", cost_usd=summary["total_cost_usd"], detail=summary)
        self._file.close()
        if self._store is not None:
            try:
                await self._store.end_session(self.session_id, self.total_cost_usd, summary)
            except Exception as exc:
                log.error("could not store the summary of %s (it is in %s): %r",
                          self.session_id, self.path, exc)
        self.closed = True
        return summary
