"""Live assist's intent detection: the embedder against the intent list (agent/assist.py), on
held-apart phrasings (none is one of the intents' examples), against a word-overlap reference in
the same run, and what asking tier 0 instead would cost.

- ours: `IntentIndex.classify` on an offline embedder (`--embedder`: MiniLM, the default, or
  WordLlama): one query embedding, cosine to every example, the nearest intent above the
  embedder's floor (`agent.assist.intent_floor`), else none.
- reference: the same examples, the intent of the example sharing the most content words
  (Jaccard), none when no word is shared.
- tier 0 (not run: no model here): the intent list and the words as a prompt, priced with the
  price table for the default tier 0 (input ~ prompt chars / 4, 8 output tokens).

Small talk (`None` expected) is in the set: an intent on every utterance would be noise.

    .venv/bin/python -m bench.assist_intent [--repeat 20] [--embedder minilm|wordllama]

The last line is JSON: {"accuracy", "reference_accuracy", "p50_ms", "p95_ms",
"reference_p50_ms", "tier0_usd_per_utterance", "utterances"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time

from agent.assist import INTENTS, IntentIndex
from agent.config import DEFAULT_TIERS
from agent.pricing import PriceTable, Usage
from memory.embeddings import DEFAULT_OFFLINE, OFFLINE_EMBEDDERS, offline_embedder

HELD_APART: list[tuple[str, str | None]] = [
    ("my terminal prints a traceback when I start the server", "troubleshoot_error"),
    ("the app keeps failing with status 500", "troubleshoot_error"),
    ("there is a red error in the console, why", "troubleshoot_error"),
    ("my tests fail after the upgrade", "troubleshoot_error"),
    ("it says permission denied when I open the file", "troubleshoot_error"),
    ("how do I add a new user to the team", "how_to"),
    ("where can I find the export option", "how_to"),
    ("how would I schedule a weekly backup", "how_to"),
    ("what is the way to connect my calendar", "how_to"),
    ("what is this popup asking me", "explain_screen"),
    ("what does the text at the top of this window say", "explain_screen"),
    ("what does this chart on my screen mean", "explain_screen"),
    ("my card was billed two times this month", "account_billing"),
    ("I forgot my password and cannot sign in", "account_billing"),
    ("how do I upgrade to the premium plan", "account_billing"),
    ("I need a real human please", "talk_to_human"),
    ("connect me with customer service staff", "talk_to_human"),
    ("can someone from support call me", "talk_to_human"),
    ("please remember that my editor is vim", "remember_or_forget"),
    ("forget what I told you about my old job", "remember_or_forget"),
    ("keep in mind I work on a mac", "remember_or_forget"),
    ("awesome, that solved it", "resolved"),
    ("thanks, it is working again", "resolved"),
    ("lovely weather today", None),
    ("my cat is sleeping on the keyboard", None),
    ("what did you have for lunch", None),
]
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the i me my is it to of do does how what this that on in for with and "
                  "can you".split())


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def reference(text: str) -> str | None:
    words = _words(text)
    best, best_score = None, 0.0
    for name, phrases in INTENTS.items():
        for phrase in phrases:
            other = _words(phrase)
            score = len(words & other) / len(words | other) if words | other else 0.0
            if score > best_score:
                best, best_score = name, score
    return best


def tier0_cost(text: str) -> float:
    tier = DEFAULT_TIERS[0]
    prompt = ("Classify the user's words into one of: " + ", ".join(INTENTS)
              + ", or none. Reply with the name only.\n" + text)
    usage = Usage(input_tokens=len(prompt) // 4, output_tokens=8)
    return PriceTable.load().cost(tier.model, usage) or 0.0


async def main(repeat: int, embedder_name: str) -> dict[str, float | int | str]:
    embedder = offline_embedder(embedder_name)
    index = IntentIndex(embedder)
    await index.classify(await embedder.embed_query("warm up"))
    ours_ms: list[float] = []
    ref_ms: list[float] = []
    correct = ref_correct = 0
    for _ in range(repeat):
        for text, expected in HELD_APART:
            started = time.perf_counter()
            intent = await index.classify(await embedder.embed_query(text))
            ours_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            guess = reference(text)
            ref_ms.append((time.perf_counter() - started) * 1000)
            correct += (intent.name if intent else None) == expected
            ref_correct += guess == expected
    total = repeat * len(HELD_APART)
    for text, expected in HELD_APART:
        intent = await index.classify(await embedder.embed_query(text))
        print(f"{expected or '-':20} {intent.name if intent else '-':20} "
              f"{intent.score if intent else 0:.2f} {reference(text) or '-':20} {text}")
    return {
        "accuracy": round(correct / total, 3), "reference_accuracy": round(ref_correct / total, 3),
        "p50_ms": round(statistics.median(ours_ms), 3),
        "p95_ms": round(statistics.quantiles(ours_ms, n=20)[18], 3),
        "reference_p50_ms": round(statistics.median(ref_ms), 3),
        "tier0_usd_per_utterance": round(statistics.mean(tier0_cost(t) for t, _ in HELD_APART),
                                         8),
        "utterances": len(HELD_APART),
        "embedder": embedder.name,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--embedder", choices=sorted(OFFLINE_EMBEDDERS), default=DEFAULT_OFFLINE)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.repeat, args.embedder))))
