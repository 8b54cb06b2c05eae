"""The secret scan's speed: `hide_secrets` over the repository's own text, with and without
its gates.

    .venv/bin/python -m bench.secret_scan [--rounds 3]

Every screen line read, every message, fact and summary, and every knowledge document passes
through memory/secret_text.py before anything keeps it. Most of its time went to the rules that
name what they find (detect-secrets' `password = …` patterns, "the PIN is …", `HF_TOKEN=…`),
which now run only on a window holding one of their words, and to the providers' ~30 key
patterns, now run only on a window that one pattern of them all matches. The reference, in
the same run, is every rule run on every window, as before. The text is this repository's
Markdown (README and docs, which talk about passwords, keys and tokens throughout, so the gates
open often: a hard case for them), the bundled knowledge documents and the kb eval corpus.

The two ways alternate `--rounds` times over the whole text; each way's best round (CPU time of
this thread) is its figure. Verdict: the gated scan is faster (`speedup_vs_every_rule` > 1) and
finds exactly what the reference finds on every line (a check: a gate that skipped a secret
fails the run).

Then the lines a pattern could take quadratic time on (`LONG_LINES`: runs of dashes around
`PRIVATE KEY`, of spaces, `$1$`, colons, base64, the names the rules look for), each at 10,000
and 20,000 characters, the best of `--rounds` each: a scan linear in the line doubles its
time, a quadratic one quadruples it. Verdict: the worst growth is at most 3 (a pattern made
unbounded again fails the run). Last line: JSON; exit status 1 on a miss.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.verdict import Target, exit_status, parser, ratio, verdict
from memory import secret_text

REPO = Path(__file__).resolve().parent.parent
TARGETS: dict[str, Target] = {"speedup_vs_every_rule": (">", 1.0),
                               "worst_long_line_growth": ("<=", 3.0)}
# a line of `n` characters of each shape a pattern could take quadratic time on; the first had
# memory/private_keys.py's edge pattern take 4.8 s at 20,000 characters before its runs were
# bounded
LONG_LINES: dict[str, Callable[[int], str]] = {
    "dashes then a key's name": lambda n: "-" * n + "x PRIVATE KEY",
    "a key's name then dashes": lambda n: "PRIVATE KEYx " + "-" * n + "x",
    "spaces in a header": lambda n: "BEGIN" + " " * n + "x PRIVATE KEY",
    "ENDs": lambda n: " END" * (n // 4) + "x PRIVATE KEY",
    "crypt prefixes": lambda n: "$1$abcdefg " * (n // 11),
    "colons": lambda n: "a:1:" * (n // 4),
    "base64": lambda n: "Ab1+" * (n // 4),
    "assignment words": lambda n: "password " * (n // 9),
    "a name and spaces": lambda n: "api_key" + " " * n + "=x",
    "said words": lambda n: "my password is " + "purple " * (n // 7),
}
# each gate of memory/secret_text.py, and what it is opened with: a pattern every text holds
OPENED: dict[str, Any] = {
    **dict.fromkeys(("_ASSIGNMENT_WORDS", "_NAMED_NEEDS", "_WHAT_NEEDS", "_ARGUMENT_NEEDS",
                     "_URL_NEEDS"),
                    secret_text._Words("")),
    "_ANY_KEY": re.compile("")}


@contextmanager
def every_rule_run() -> Iterator[None]:
    """Within it, secret_text runs every rule on every window, whatever it holds: the scan
    before the gates, as the reference (and the tests' oracle)."""
    kept = {gate: getattr(secret_text, gate) for gate in OPENED}
    try:
        for gate, opened in OPENED.items():
            setattr(secret_text, gate, opened)
        yield
    finally:
        for gate, pattern in kept.items():
            setattr(secret_text, gate, pattern)


def corpus_lines() -> list[str]:
    """The repository's Markdown, the bundled knowledge and the kb eval corpus, line by line."""
    paths = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "fixtures").glob("*/knowledge/*.md")))
    texts = [path.read_text() for path in paths]
    corpus = REPO / "fixtures" / "kb_eval" / "corpus.jsonl"
    texts += [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line]
    return [line for text in texts for line in text.split("\n")]


def _timed(scan: Callable[[], list[str]]) -> tuple[float, list[str]]:
    started = time.thread_time()
    shown = scan()
    return time.thread_time() - started, shown


def long_line_growth(rounds: int) -> dict[str, float]:
    """Each `LONG_LINES` shape's time at 20,000 characters over its time at 10,000 (the best
    of `rounds` each): ~2 for a scan linear in the line, ~4 for a quadratic one."""
    growth: dict[str, float] = {}
    for shape, line in LONG_LINES.items():
        best = {}
        for n in (10_000, 20_000):
            text = [line(n)]
            best[n] = min(_timed(lambda text=text: secret_text.hide_secrets(text)[0])[0]
                          for _ in range(rounds))
        growth[shape] = round(best[20_000] / max(best[10_000], 1e-6), 2)
    return growth


def main() -> int:
    cli = parser("bench.secret_scan", __doc__)
    cli.add_argument("--rounds", type=int, default=3, help="alternations of the two ways")
    rounds = cli.parse_args().rounds
    if rounds < 1:
        cli.error(f"--rounds must be at least 1, not {rounds}")
    lines = corpus_lines()
    megabytes = sum(len(line.encode()) + 1 for line in lines) / 1e6

    def gated() -> list[str]:
        return secret_text.hide_secrets(lines)[0]

    def every_rule() -> list[str]:
        with every_rule_run():
            return secret_text.hide_secrets(lines)[0]

    best = {"gated": float("inf"), "every_rule": float("inf")}
    shown: dict[str, list[str]] = {}
    for _ in range(rounds):
        for name, scan in (("gated", gated), ("every_rule", every_rule)):
            seconds, shown[name] = _timed(scan)
            best[name] = min(best[name], seconds)
    growth = long_line_growth(rounds)
    worst = max(growth, key=growth.__getitem__)
    differ = sum(a != b for a, b in zip(shown["gated"], shown["every_rule"], strict=True))
    problems = [f"{differ} of {len(lines)} lines hidden otherwise with the gates"] if differ else []
    figures = {
        "megabytes": round(megabytes, 3), "lines": len(lines), "rounds": rounds,
        "gated_s": round(best["gated"], 3), "every_rule_s": round(best["every_rule"], 3),
        "gated_mb_per_s": round(megabytes / best["gated"], 3),
        "every_rule_mb_per_s": round(megabytes / best["every_rule"], 3),
        "speedup_vs_every_rule": ratio(best["every_rule"], best["gated"]),
        "lines_with_a_secret": sum(a != b for a, b in zip(lines, shown["gated"], strict=True)),
        "worst_long_line_growth": growth[worst], "worst_long_line": worst,
    }
    print(f"{megabytes:.2f} MB of text ({len(lines)} lines), best of {rounds} rounds, one core:")
    print(f"  gated:      {best['gated']:.2f} s ({figures['gated_mb_per_s']} MB/s)")
    print(f"  every rule: {best['every_rule']:.2f} s ({figures['every_rule_mb_per_s']} MB/s)")
    print("long lines, time at 20,000 characters over 10,000 (linear ~2, quadratic ~4):")
    for shape, times in growth.items():
        print(f"  {shape}: {times}")
    judged = verdict(figures, TARGETS, problems)
    print(json.dumps({"bench": "secret_scan", **figures, **judged}))
    return exit_status(judged)


if __name__ == "__main__":
    raise SystemExit(main())
