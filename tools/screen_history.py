"""Tools that let the model look at the screen's recent past, not only at what it shows now.

A user asks "what did that error say?" after closing it, or "when did this appear?". The
screen watcher keeps the last few kept frames (each a real change); `screen_changes` lists them
and `earlier_screen` puts one of them in front of the model for the rest of the turn. Tool
results are plain text for the model; the earlier frame travels as an image through the turn
context, like the live screen.
"""

from __future__ import annotations

from livekit.agents import llm

from vision.frames import SampledFrame
from vision.screen import ScreenChange, ScreenWatcher

_WHAT_CHANGED = {
    "first": "the share started",
    "resolution_change": "the shared screen changed size",
    "phash": "the screen changed substantially",
    "local_change": "part of the screen changed",
    "typing": "a line of text was typed",
    "video_rate": "a video was playing",
    "video_ended": "a video stopped",
}
MAX_LISTED = 8


def describe(change: ScreenChange, now: float) -> str:
    decision = change.decision
    what = _WHAT_CHANGED.get(decision.reason, decision.reason)
    return (f"{now - decision.t:.0f} s ago (t={decision.t:.1f}s): {what}; "
            f"it showed {decision.content_type} content")


class ShownScreen:
    """The earlier screen the model asked to see in the current user turn. `earlier_screen`
    sets it; the turn context attaches it to the rest of the turn's requests and clears it when
    the user asks something new. Owned by the session, shared by both."""

    def __init__(self) -> None:
        self.frame: SampledFrame | None = None

    def show(self, frame: SampledFrame) -> None:
        self.frame = frame

    def clear(self) -> None:
        self.frame = None


class ScreenHistoryTools:
    """The screen-history tools of one session."""

    def __init__(self, screen: ScreenWatcher, shown: ShownScreen) -> None:
        self._screen = screen
        self._shown = shown

    def tools(self) -> list[llm.Tool]:
        return [self.screen_changes, self.earlier_screen]

    def _now(self) -> float | None:
        return self._screen.freshest.t if self._screen.freshest else None

    @llm.function_tool
    async def screen_changes(self, minutes: float = 5.0) -> str:
        """List when the user's shared screen changed recently and what kind of content it
        showed. Use it when the user asks what happened on screen or when something appeared.

        Args:
            minutes: how far back to look.
        """
        now = self._now()
        if now is None:
            return "No screen is being shared, so there is no screen history."
        recent = [c for c in self._screen.changes if now - c.decision.t <= minutes * 60]
        if not recent:
            return f"The screen did not change in the last {minutes:g} minutes."
        return "\n".join(describe(c, now) for c in recent[-MAX_LISTED:])

    @llm.function_tool
    async def earlier_screen(self, seconds_ago: float) -> str:
        """Look at the user's screen as it was some seconds ago: the last change before then is
        shown to you as an image. Use it when the user asks about something that is no longer on
        screen, such as a closed dialog or an error that scrolled away.

        Args:
            seconds_ago: how many seconds before now.
        """
        now = self._now()
        if now is None:
            return "No screen is being shared, so there is no earlier screen to show."
        wanted = now - max(0.0, seconds_ago)
        earlier = [c for c in self._screen.changes if c.decision.t <= wanted]
        if not earlier:
            oldest = self._screen.changes[0].decision.t if self._screen.changes else now
            raise llm.ToolError(
                f"The oldest screen I still have is from {now - oldest:.0f} s ago; "
                "nothing earlier is kept."
            )
        change = earlier[-1]
        self._shown.show(change.frame)
        return (f"The screen as it was {describe(change, now)} is attached to the user's "
                "message as the earlier screenshot.")
