"""One process, many rooms: a frame reaches a session only when the session will use it.

The rtc SDK hands every event of the process (each video frame of each room, each request's
completion) to each subscriber whose filter accepts it, waking the subscriber's event loop for
each. Two kinds of waste grow with the sessions a process hosts:
* a pending request (sending a chunk of a reply, publishing data) subscribes with no filter while
  it waits for its completion, and so was woken by every video frame of every room meanwhile
  (20-60 pending requests at 30 sessions); a request never waits for a media event, so a
  subscriber without a filter gets every event but those;
* a screen share at 5 fps sends five frames a second, of which the session samples one: a frame
  its stream's gate (vision/track_source.py) declines is released here, on the SDK's thread,
  without being copied out or waking the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit.rtc._ffi_client import FfiClient, FfiHandle, FfiQueue
from livekit.rtc._proto.ffi_pb2 import FfiEvent
from livekit.rtc._utils import Queue

from vision.track_source import frame_gates

MEDIA_EVENTS = frozenset({"video_stream_event", "audio_stream_event"})


def _not_media(event: FfiEvent) -> bool:
    return event.WhichOneof("message") not in MEDIA_EVENTS


class RoutedFfiQueue(FfiQueue[FfiEvent]):
    def put(self, item: FfiEvent) -> None:
        if item.HasField("video_stream_event") and not self._wanted(item):
            return
        super().put(item)

    @staticmethod
    def _wanted(event: FfiEvent) -> bool:
        """A frame its stream's gate declines is released here, on the SDK's thread, without
        waking its session (vision/track_source.py: four frames in five at 5 fps)."""
        video = event.video_stream_event
        if not video.HasField("frame_received"):
            return True
        gate = frame_gates.get(video.stream_handle)
        if gate is None or gate(video.frame_received.timestamp_us):
            return True
        FfiHandle(video.frame_received.buffer.handle.id).dispose()
        return False

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
