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
  without being copied out or waking the session;
* each room's listener gets every event of every room (and every request's completion), wakes
  for it and drops all but its own: ~60 events a second at 30 sessions, so ~1,800 wake-ups.
  Once connected, a room's listener is narrowed to its own room's events and the completions
  it forwards (`route_room_events`); a pending request never waits for a room event.

The SDK's native library also sends each log record it makes, down to trace level, to Python
as an event of its own (it asks to capture them), where all below INFO are dropped: ~5,000
records a second while 8 sessions connect, ~35 a second per session after. `rtc_logs_to_stderr`
has the library's own logger filter them where they are made (`RUST_LOG`, default `warn`) and
write what is left to stderr.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from livekit import rtc
from livekit.rtc._ffi_client import FfiClient, FfiHandle, FfiQueue, ffi_event_callback
from livekit.rtc._proto.ffi_pb2 import FfiEvent
from livekit.rtc._utils import Queue
from livekit.rtc.version import __version__ as rtc_version

from vision.track_source import frame_gates

MEDIA_EVENTS = frozenset({"video_stream_event", "audio_stream_event"})
# what a room's listener does something with besides its room's events: an RPC invocation, and
# the completions it forwards to its local participant (rtc/participant.py awaits these two)
ROOM_LISTENER_EXTRAS = frozenset({"rpc_method_invocation", "publish_track", "unpublish_track"})


def _a_completion(event: FfiEvent) -> bool:
    """What a pending request may be waiting for: anything but media and room events."""
    return event.WhichOneof("message") not in MEDIA_EVENTS | {"room_event"}


def _for_room(handle: int) -> Callable[[FfiEvent], bool]:
    def wanted(event: FfiEvent) -> bool:
        which = event.WhichOneof("message")
        if which == "room_event":
            return bool(event.room_event.room_handle == handle)
        return which in ROOM_LISTENER_EXTRAS

    return wanted


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
        return super().subscribe(loop, filter_fn or _a_completion)

    def narrow(self, queue: Queue[FfiEvent], filter_fn: Callable[[FfiEvent], bool]) -> bool:
        """Give a subscription a narrower filter; False when it is not subscribed."""
        with self._lock:
            for index, (subscribed, loop, _) in enumerate(self._subscribers):
                if subscribed is queue:
                    self._subscribers[index] = (subscribed, loop, filter_fn)
                    return True
        return False


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


def route_room_events(room: rtc.Room) -> bool:
    """Narrow a connected room's listener to its own room's events (see the module's
    docstring); False when the process's queue is not the routing one (nothing changes)."""
    queue = FfiClient.instance.queue
    handle = room._ffi_handle
    if not isinstance(queue, RoutedFfiQueue) or handle is None:
        return False
    return queue.narrow(room._ffi_queue, _for_room(handle.handle))


def rtc_logs_to_stderr(default_level: str = "warn") -> None:
    """Stop the rtc library from sending its log records to Python (see the module's
    docstring). Called before this process's first rtc client: the library's logger reads
    `RUST_LOG` once, when the client starts it. Initialising the library again with the same
    callback changes only whether it captures its logs (livekit-ffi `FfiServer::setup`)."""
    os.environ.setdefault("RUST_LOG", default_level)
    FfiClient.instance._ffi_lib.livekit_ffi_initialize(
        ffi_event_callback, False, b"python", rtc_version.encode("ascii"))
