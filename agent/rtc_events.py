"""One process, many rooms: a room's media events go to the stream that reads them, only.

The rtc SDK hands every event of the process (each video frame of each room, each request's
completion) to each subscriber whose filter accepts it. Media streams filter by stream. But a
pending request (sending a chunk of a reply, publishing data) subscribes with no filter while it
waits for its completion, and so is woken by every video frame of every room meanwhile. With 30
sessions in one process, 20-60 requests were pending at any moment, each woken 150 times a
second on its session's thread; the SDK's single event callback fell behind, and chat messages
and replies waited in its queue for tens of seconds (bench/load.py). A request never waits for
a media event, so a subscriber without a filter gets every event but those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit.rtc._ffi_client import FfiClient, FfiQueue
from livekit.rtc._proto.ffi_pb2 import FfiEvent
from livekit.rtc._utils import Queue

MEDIA_EVENTS = frozenset({"video_stream_event", "audio_stream_event"})


def _not_media(event: FfiEvent) -> bool:
    return event.WhichOneof("message") not in MEDIA_EVENTS


class RoutedFfiQueue(FfiQueue[FfiEvent]):
    def subscribe(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        filter_fn: Callable[[FfiEvent], bool] | None = None,
    ) -> Queue[FfiEvent]:
        return super().subscribe(loop, filter_fn or _not_media)


def route_media_events() -> None:
    """Install the routing queue in this process's rtc client (before its first room; the
    SDK's own queue is a private attribute of the pinned livekit 1.2.1, see tests)."""
    client = FfiClient.instance
    if isinstance(client.queue, RoutedFfiQueue):
        return
    routed = RoutedFfiQueue()
    with client.queue._lock:
        routed._subscribers = client.queue._subscribers
        client._queue = routed
