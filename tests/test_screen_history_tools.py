"""The screen-history tools on a drawn desktop.

Protects: `screen_changes` lists the kept changes with how long ago they were; `earlier_screen`
puts the last change before the asked time in front of the model for the rest of that turn (a
second image in the continuation's context), never for the next question; asking further back
than the history reaches is a clear tool error; the tools' schemas reach both providers.
"""

from __future__ import annotations

import pytest
from livekit.agents import llm
from synthetic_screen import Desk

from agent.screen_context import ScreenContext
from agent.turn_context import TurnContext
from tools.screen_history import ScreenHistoryTools, ShownScreen
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, ScreenWatcher


def watched(seconds: int, toast_at: tuple[int, int]) -> ScreenWatcher:
    """A screen sampled at 1 FPS whose only change is a toast shown from toast_at[0] to [1]."""
    decisions: list[FrameDecision] = []
    screen = ScreenWatcher(FrameSampler(1.0), decisions.append)
    desk = Desk(pointer=None, cursor_on=False)
    for t in range(seconds):
        desk.toast = "Build failed: exit 2" if toast_at[0] <= t < toast_at[1] else None
        screen.offer(float(t), desk.frame())
    return screen


def images(ctx: llm.ChatContext) -> list[llm.ImageContent]:
    return [c for item in ctx.items if item.type == "message" for c in item.content
            if isinstance(c, llm.ImageContent)]


@pytest.fixture(scope="module")
def screen() -> ScreenWatcher:
    return watched(20, toast_at=(8, 12))


async def test_screen_changes_lists_the_kept_changes(screen: ScreenWatcher) -> None:
    tools = ScreenHistoryTools(screen, ShownScreen())
    kept = [c.decision.t for c in screen.changes]
    assert kept[0] == 0.0 and 8.0 in kept and 12.0 in kept
    listing = (await tools.screen_changes(minutes=5)).splitlines()
    assert len(listing) == len(kept)
    assert listing[0].startswith("19 s ago (t=0.0s): the share started")
    assert any(line.startswith("11 s ago (t=8.0s):") for line in listing)
    assert await tools.screen_changes(minutes=0.1) == (
        "The screen did not change in the last 0.1 minutes.")


async def test_earlier_screen_rides_along_for_the_rest_of_the_turn(
    screen: ScreenWatcher,
) -> None:
    shown = ShownScreen()
    turn_context = TurnContext(ScreenContext(screen, shown=shown))
    tools = ScreenHistoryTools(screen, shown)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="What did the toast say?")
    assert len(images(await turn_context.build(ctx))) == 1

    said = await tools.earlier_screen(seconds_ago=9)  # now is t=19: the last change by t=10
    assert "t=8.0s" in said
    call = llm.FunctionCall(call_id="c1", name="earlier_screen", arguments='{"seconds_ago": 9}')
    ctx.items.append(call)
    ctx.items.append(llm.FunctionCallOutput(call_id="c1", name="earlier_screen", output=said,
                                            is_error=False))
    continued = await turn_context.build(ctx)
    now_image, earlier_image = images(continued)
    assert now_image.image != earlier_image.image
    texts = [c for c in continued.items[0].content if isinstance(c, str)]
    assert any("captured at t=8.0s" in t for t in texts)

    ctx.add_message(role="user", content="And now?")
    assert len(images(await turn_context.build(ctx))) == 1, "a new question drops it"


async def test_asking_further_back_than_the_history_is_a_tool_error(
    screen: ScreenWatcher,
) -> None:
    tools = ScreenHistoryTools(screen, ShownScreen())
    with pytest.raises(llm.ToolError, match="oldest screen I still have is from 19 s ago"):
        await tools.earlier_screen(seconds_ago=60)


async def test_no_share_means_no_history() -> None:
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    tools = ScreenHistoryTools(screen, ShownScreen())
    assert "No screen is being shared" in await tools.screen_changes()
    assert "No screen is being shared" in await tools.earlier_screen(seconds_ago=5)


def test_the_tools_have_schemas_for_both_providers(screen: ScreenWatcher) -> None:
    tool_ctx = llm.ToolContext(ScreenHistoryTools(screen, ShownScreen()).tools())
    google = {d["name"]: d for d in tool_ctx.parse_function_tools("google")}
    anthropic = {d["name"]: d for d in tool_ctx.parse_function_tools("anthropic", strict=False)}
    assert set(google) == set(anthropic) == {"screen_changes", "earlier_screen"}
    assert anthropic["earlier_screen"]["input_schema"]["required"] == ["seconds_ago"]
    assert "seconds_ago" in google["earlier_screen"]["parameters_json_schema"]["properties"]
