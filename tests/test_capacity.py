"""The worker's capacity: how a reading becomes LiveKit's load, what a refusal says, and how the
routing queue keeps media events away from requests waiting for their answer."""

from __future__ import annotations

import asyncio

import pytest
from livekit.rtc._proto.ffi_pb2 import FfiEvent

from agent.capacity import CPU_FULL, FULL_LOAD, Limits, LoadMeter, LoadReading
from agent.rtc_events import RoutedFfiQueue

LIMITS = Limits(sessions=10, memory_mb=1000.0, cores=2.0)


@pytest.mark.parametrize(("sessions", "memory_mb", "cores", "limiting", "fullness"), [
    (5, 100.0, 0.1, "sessions", 0.5),
    (2, 800.0, 0.1, "memory", 0.8),
    (2, 100.0, CPU_FULL * 2 * 0.9, "cpu", 0.9),
    (12, 2000.0, 1.0, "memory", 1.0),  # over every limit: full, never more
])
def test_the_fullest_resource_sets_the_load(
    sessions: int, memory_mb: float, cores: float, limiting: str, fullness: float,
) -> None:
    reading = LoadReading(sessions, memory_mb, cores, LIMITS)
    assert reading.limiting == limiting
    assert reading.fullness == pytest.approx(fullness)
    assert reading.load == pytest.approx(FULL_LOAD * fullness)
    assert reading.describe().startswith({"sessions": f"{sessions} of 10 sessions",
                                          "memory": f"{memory_mb:.0f} of 1000 MB",
                                          "cpu": f"{cores:.2f} of"}[limiting])


def test_a_burst_fills_exactly_to_capacity() -> None:
    """livekit-agents takes a job while the load counted with the jobs it accepted is below
    FULL_LOAD: the last free slot is taken, one more is not."""
    assert LoadReading(9, 0.0, 0.0, LIMITS).load < FULL_LOAD
    assert LoadReading(10, 0.0, 0.0, LIMITS).load >= FULL_LOAD


def test_the_meter_reads_this_process() -> None:
    reading = LoadMeter(LIMITS).read(3)
    assert reading.sessions == 3
    assert 10 < reading.memory_mb < 100_000
    assert reading.cpu_cores == 0.0  # no window yet: a first reading claims no CPU


def test_limits_sized_from_the_host() -> None:
    sized = Limits.for_host(0, 0)
    assert sized.sessions >= 15 and sized.memory_mb > 0 and sized.cores > 0
    assert Limits.for_host(4, 2048) == Limits(4, 2048.0, sized.cores)


def _event(which: str) -> FfiEvent:
    event = FfiEvent()
    if which == "video":
        event.video_stream_event.stream_handle = 7
    else:
        event.publish_data.async_id = 1
    return event


async def test_requests_waiting_for_an_answer_get_no_media_events() -> None:
    queue = RoutedFfiQueue()
    loop = asyncio.get_running_loop()
    waiting = queue.subscribe(loop)  # a pending request: no filter of its own
    stream = queue.subscribe(loop, lambda e: e.WhichOneof("message") == "video_stream_event")
    queue.put(_event("video"))
    queue.put(_event("data"))
    await asyncio.sleep(0.05)
    assert waiting.get_nowait().WhichOneof("message") == "publish_data"
    assert waiting.empty()
    assert stream.get_nowait().WhichOneof("message") == "video_stream_event"
    assert stream.empty()
