"""What the benchmarks share at their two ends: their settings, refused in one line before
anything is measured, and their verdict, each figure against its target.

A benchmark that prints figures and exits 0 whatever they are cannot fail, so nobody learns
from it that a change made things worse. Each bench states its targets in code (the README's
claims, and > 1 for a ratio against the reference it must beat in the same run), prints one
`target met:` or `target missed:` line for each, adds `targets_met` (and the names of what it
`missed`) to its last line of JSON, and exits 1 when anything was missed: a CI job or a script
can act on the exit status alone. A check that the run itself was valid (every turn
answered, every run alike) goes into the same verdict as `check failed:` lines, since a figure
from a broken run meets nothing.

Exit statuses: 0 all met, 1 a target missed or a check failed, 2 a bad setting (one line, as
the `sightline` commands say theirs: argparse's own error puts its whole usage above it).
"""

from __future__ import annotations

import argparse
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn

from agent.cli_common import one_line

Op = Literal[">", ">=", "<="]
Target = tuple[Op, float]  # (comparison, bound): the figure `op` the bound meets the target
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<=": operator.le}


class BenchParser(argparse.ArgumentParser):
    """argparse whose error is one line and exit status 2, naming the benchmark's module."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (`{self.prog} --help` lists what it "
                     "accepts)\n")


def parser(module: str, doc: str | None) -> BenchParser:
    """The parser of `python -m <module>`, described by its docstring's first line."""
    return BenchParser(prog=f"python -m {module}",
                       description=(doc or module).splitlines()[0])


def verdict(figures: Mapping[str, Any], targets: Mapping[str, Target],
            problems: Sequence[str] = ()) -> dict[str, Any]:
    """Print one line per target (a figure that is missing or not a number, as a null accuracy
    or a p95 of no turns, misses its target: it shows nothing was met) and one per problem;
    return the keys for the JSON line: `targets_met` and the names `missed` (`check` when a
    problem failed the run)."""
    missed = []
    for key, (op, bound) in targets.items():
        value = figures.get(key)
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and OPS[op](value, bound))
        print(f"target {'met' if ok else 'missed'}: {key} {value} (target {op} {bound:g})")
        if not ok:
            missed.append(key)
    for problem in problems:
        print(f"check failed: {one_line(problem)}")
    if problems:
        missed.append("check")
    return {"targets_met": not missed, "missed": missed}


def exit_status(judged: Mapping[str, Any]) -> int:
    """0 when every target was met and every check passed, else 1."""
    return 0 if judged["targets_met"] else 1


def ratio(reference: float | None, ours: float | None) -> float | None:
    """`reference / ours` to two places (better for us when > 1), None when either is missing
    or ours is 0."""
    if not isinstance(reference, int | float) or not isinstance(ours, int | float) or not ours:
        return None
    return round(reference / ours, 2)


def fail_setting(module: str, message: str) -> NoReturn:
    """A setting found bad only once its data is in hand: one line, exit status 2."""
    print(f"python -m {module}: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)
