"""Choose one frame per period by the frames' own timestamps, whatever the publisher's rate.

Publishers send 5-60 FPS, stall, burst and restart their clocks. The sampler keeps a frame when
its timestamp reaches the next due time; after a stall it re-anchors on the frame that ended it
instead of emitting a burst, and a clock that jumps backwards restarts the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FrameSampler:
    fps: float = 1.0
    _next_due: float | None = None
    _last_t: float | None = None
    offered: int = 0
    sampled: int = 0

    @property
    def period(self) -> float:
        return 1.0 / self.fps

    def is_due(self, t: float) -> bool:
        """Whether the frame at `t` seconds would be sampled; changes nothing."""
        restarted = self._last_t is not None and t < self._last_t
        return restarted or self._next_due is None or t >= self._next_due

    def take(self, t: float) -> None:
        """Sample the frame at `t`: schedule the next due time from it."""
        if self._last_t is not None and t < self._last_t:
            self._next_due = None  # the publisher's clock restarted
        self._last_t = t
        if self._next_due is None or t >= self._next_due + self.period:
            self._next_due = t + self.period  # first frame, or a stall: re-anchor here
        else:
            self._next_due += self.period  # on schedule: no drift from jittery arrival
        self.sampled += 1

    def offer(self, t: float) -> bool:
        """True when the frame at `t` seconds is the one to sample for its period."""
        self.offered += 1
        if not self.is_due(t):
            return False
        self.take(t)
        return True
