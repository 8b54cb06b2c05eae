"""A numeric setting's documented valid range, declared once beside the setting.

Both the detector's tunables (`vision.change`) and the environment settings (`agent.config`)
check their values here, so an absurd value (negative, NaN, infinite, out of range) is refused
with the same one-line message naming the setting, the value and the range. It lives in
`vision/` because `vision` stands alone while `agent` may import it; it imports nothing heavy,
so `agent.config` (loaded by `sightline --help`) stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Whole numbers or numbers from `low` to `high`, both included unless `open_low`
    (`(0, 60]`: above zero). NaN and the infinities are never in a range."""

    kind: type[int] | type[float]
    low: float
    high: float
    open_low: bool = False

    def __str__(self) -> str:
        low, high = (int(x) if float(x).is_integer() else x for x in (self.low, self.high))
        return f"{'(' if self.open_low else '['}{low}, {high}]"

    @property
    def noun(self) -> str:
        return "a whole number" if self.kind is int else "a number"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return math.isfinite(value) and above and value <= self.high

    def parse(self, raw: str) -> int | float:
        """The value `raw` spells; ValueError saying what is accepted when it is not in range."""
        try:
            value = self.kind(raw.strip())
        except (ValueError, OverflowError):
            value = math.nan
        if not self.contains(value):
            raise ValueError(f"must be {self.noun} in {self}")
        return value

    __call__ = parse  # a Range is the parser of its setting
