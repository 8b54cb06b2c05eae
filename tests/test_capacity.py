"""The worker's capacity: how a reading becomes LiveKit's load, what a refusal says, and how the
routing queue keeps media events away from requests waiting for their answer, and that what the
first turn imports is loaded before any job."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from livekit import rtc
from livekit.agents.job import RunningJobInfo
from livekit.protocol import agent as agent_proto
from livekit.rtc._proto.ffi_pb2 import FfiEvent

from agent import capacity, rtc_events
from agent.capacity import CPU_FULL, CPU_WINDOW_S, FULL_LOAD, Limits, LoadMeter, LoadReading
from agent.cli_worker import GIL_SWITCH_S
from agent.config import Settings
from agent.ports import free_port
from agent.rtc_events import MEDIA_EVENTS, RoutedFfiQueue
from agent.worker import WARM_JOB_THREADS, SightlineServer, build_server
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher
from vision.track_source import SamplingGate, frame_gates

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


class _Process:
    """psutil.Process's two readings the meter takes, scripted."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def cpu_times(self) -> SimpleNamespace:
        return SimpleNamespace(user=self.cpu_s, system=0.0)

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=500 * 2**20)


def test_a_start_up_spike_is_averaged_over_the_whole_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1.5 CPU-seconds in the worker's first second (a burst joining) is 1.5 s over the 20 s
    window, not 1.5 cores: the burst's last jobs are not refused as if the worker were full;
    a window that has filled reads the cores used."""
    clock = [100.0]
    monkeypatch.setattr(capacity.time, "monotonic", lambda: clock[0])
    process = _Process()
    meter = LoadMeter(LIMITS, process)  # type: ignore[arg-type]
    meter.read(0)
    clock[0] += 1.0
    process.cpu_s += 1.5
    spike = meter.read(6)
    assert spike.cpu_cores == pytest.approx(1.5 / CPU_WINDOW_S)
    assert spike.limiting != "cpu"
    for _ in range(40):  # 1.7 cores for 20 s: that is full
        clock[0] += 0.5
        process.cpu_s += 0.85
        busy = meter.read(6)
    assert busy.cpu_cores == pytest.approx(1.7, rel=0.05) and busy.limiting == "cpu"


def test_limits_sized_from_the_host() -> None:
    sized = Limits.for_host(0, 0)
    assert sized.sessions >= 8 and sized.memory_mb > 0 and sized.cores > 0
    assert Limits.for_host(4, 2048) == Limits(4, 2048.0, sized.cores)


class _JobThread:
    """A job executor as livekit-agents' pool lists it: active once it holds a job."""

    def __init__(self, info: RunningJobInfo) -> None:
        self.running_job = info


class _SlowPool:
    """livekit-agents' pool of job threads on a loaded machine: a thread takes the job at
    once (it is active from then on), but launching returns only when `launched` is set."""

    def __init__(self) -> None:
        self.processes: list[_JobThread] = []
        self.taken: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.launched = asyncio.Event()

    async def launch_job(self, info: RunningJobInfo) -> None:
        self.processes.append(_JobThread(info))
        self.taken[info.job.id].set()
        await self.launched.wait()


class _OfferedServer(SightlineServer):
    """The worker as it answers job offers, without a LiveKit connection: what
    `AgentServer.run` sets up before it answers one, and the answers it sends."""

    def __init__(self, sessions: int) -> None:  # no super().__init__: no settings, no plugins
        limits = Limits(sessions=sessions, memory_mb=1e9, cores=1e3)  # sessions fill it
        self.meter, self.reading, self.offer_reading = LoadMeter(limits), None, None
        self._starting = set()
        self._load_fnc, self._worker_load, self._load_threshold = self._load, 0.0, FULL_LOAD
        self._devmode = self._draining = self._simulation = False
        self._num_idle_processes, self._reserved_slots = sessions, 0
        self._loop, self._job_lifecycle_tasks = asyncio.get_running_loop(), set()
        self._pending_assignments = {}
        self._proc_pool = _SlowPool()  # type: ignore[assignment]
        self._request_fnc = self._take_job
        self._agent_name, self._ws_url, self._id = "sightline", "ws://livekit", "AW_test"
        self.answers: dict[str, asyncio.Future[bool]] = {}

    async def _queue_msg(self, msg: agent_proto.WorkerMessage) -> None:
        self.answers[msg.availability.job_id].set_result(msg.availability.available)

    async def offer(self, room: str) -> bool:
        """Offers a job, assigns it when accepted, and returns the answer once a thread has
        taken the job."""
        job = agent_proto.Job(id=f"AJ_{room}", room={"name": room})
        self.answers[job.id] = self._loop.create_future()
        await self._answer_availability(agent_proto.AvailabilityRequest(job=job))
        if available := await self.answers[job.id]:
            self._handle_assignment(agent_proto.JobAssignment(job=job, token="t"))
            await self._proc_pool.taken[job.id].wait()
        return available


async def test_a_job_starting_counts_once_and_the_burst_fills_to_capacity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five jobs run whose launch has not returned, so livekit-agents still holds their
    reservations: the sixth is taken (counted once each, five of six; counted as running and
    as reserved it read ten of six and a loaded machine refused a burst's last jobs), the
    seventh is refused with its reason in the log."""
    server = _OfferedServer(sessions=6)
    assert all(await asyncio.gather(*(server.offer(f"room-{i}") for i in range(5))))
    assert server._reserved_slots == 5 and len(server.active_jobs) == 5
    assert await server.offer("room-5")
    with caplog.at_level("WARNING", logger="sightline.worker"):
        assert not await server.offer("room-6")
    assert "refused the job for room room-6: 6 of 6 sessions" in caplog.text
    server._proc_pool.launched.set()
    await asyncio.gather(*server._job_lifecycle_tasks)
    assert server._reserved_slots == 0 and not server._starting
    assert server._sessions_taken() == 6


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


def _frame_event(handle: int, timestamp_us: int) -> FfiEvent:
    event = FfiEvent()
    event.video_stream_event.stream_handle = handle
    event.video_stream_event.frame_received.timestamp_us = timestamp_us
    event.video_stream_event.frame_received.buffer.handle.id = 1000 + timestamp_us
    return event


async def test_a_share_at_5_fps_wakes_its_session_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The router asks the stream's sampling gate before delivering a frame: a declined one is
    released unseen and counted; the sampler takes every delivered one, on schedule."""
    released: list[int] = []

    class RecordingHandle:
        def __init__(self, handle: int) -> None:
            self.handle = handle

        def dispose(self) -> None:
            released.append(self.handle)

    monkeypatch.setattr(rtc_events, "FfiHandle", RecordingHandle)
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=lambda _decision: None)
    gate = SamplingGate(screen)
    monkeypatch.setitem(frame_gates, 7, gate)
    queue = RoutedFfiQueue()
    stream = queue.subscribe(asyncio.get_running_loop(),
                             lambda e: e.video_stream_event.stream_handle == 7)
    frame = rtc.VideoFrame(64, 64, rtc.VideoBufferType.I420, bytes(64 * 64 * 3 // 2))
    start_us, delivered = 5_000_000, []
    for i in range(15):  # three seconds at 5 fps
        queue.put(_frame_event(7, start_us + i * 200_000))
        await asyncio.sleep(0)  # the delivery is scheduled on the stream's loop
        while not stream.empty():  # what the session's pump does with it
            t = (stream.get_nowait().video_stream_event.frame_received.timestamp_us
                 - start_us) / 1e6
            delivered.append(t)
            screen.offer(t, frame)
            gate.taken()
    assert delivered == [0.0, 1.0, 2.0]
    assert len(released) == 12 and screen.frames_skipped == 12
    assert screen.stats() == {"received": 15, "sampled": 3}


def test_a_session_that_falls_behind_holds_one_frame_not_a_backlog() -> None:
    screen = ScreenWatcher(FrameSampler(1.0), on_decision=lambda _decision: None)
    gate = SamplingGate(screen)
    frame = rtc.VideoFrame(64, 64, rtc.VideoBufferType.I420, bytes(64 * 64 * 3 // 2))
    assert gate(1_000_000)  # t=0: delivered; the session is busy elsewhere for 3 s
    assert not any(gate(1_000_000 + i * 200_000) for i in range(1, 15))  # t=1 and 2 were due
    screen.offer(0.0, frame)
    gate.taken()
    assert gate(4_000_000)  # t=3: the next one due, once the session took the last
    assert screen.frames_skipped == 14


def test_frames_of_a_stream_without_a_gate_all_arrive() -> None:
    assert RoutedFfiQueue._wanted(_frame_event(8, 1))


ARENA_PROBE = """
import ctypes, ctypes.util, sys, tempfile, threading
from agent.cli_worker import limit_malloc_arenas
limit_malloc_arenas(int(sys.argv[1]))
libc = ctypes.CDLL(ctypes.util.find_library("c"))
together, blocks = threading.Barrier(8), []
def work():
    together.wait()  # all alive at once: no thread can reuse an arena another left
    blocks.append(bytearray(100_000))  # above pymalloc's limit: glibc's malloc
    together.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = ctypes.c_void_p(libc.fopen(out.name.encode(), b"w"))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_the_worker_caps_malloc_arenas() -> None:
    """Eight threads alive at once each get an arena of their own from glibc; capped, they
    share the configured number (SIGHTLINE_MALLOC_ARENAS), unless MALLOC_ARENA_MAX is set."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def heaps(cap: int, **extra: str) -> int:
        probe = subprocess.run([sys.executable, "-c", ARENA_PROBE, str(cap)],
                               env={**env, **extra}, capture_output=True, text=True,
                               check=True, timeout=60)
        return int(probe.stdout)

    assert heaps(0) > 4  # glibc's default: one per thread here
    assert heaps(2) == 2
    assert heaps(1) == 1
    assert heaps(1, MALLOC_ARENA_MAX="3") > 1  # the environment's setting wins


PRELOAD_PROBE = """
import asyncio, dataclasses, gc, json, sys
import cv2
import numpy as np
import pydantic
from livekit.agents import llm
from agent.cli_worker import _prepare_process
from agent.config import Settings
from agent.wire_format_server import ScriptedModelServer, ScriptedReply, ScriptedToolCall
_prepare_process(Settings.from_env())
frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
switch_s, cv2_threads = sys.getswitchinterval(), cv2.getNumThreads()

def models_to_build():
    found, todo = set(), [pydantic.BaseModel]
    while todo:
        for model in todo.pop().__subclasses__():
            todo.append(model)
            if not model.__pydantic_complete__:
                found.add(model)
    return found

class Tools:
    @llm.function_tool
    async def look(self, what: str) -> str:
        \"\"\"Look at something on the screen.\"\"\"
        return what

async def first_turns(settings):
    from agent.components import make_embedder
    from agent.providers import make_provider
    embedder = make_embedder(settings)  # auto: Gemini's, a key being set
    assert len(await embedder.embed_query("What is on my screen?")) == embedder.dim
    await embedder.aclose()
    tools = llm.ToolContext([Tools().look])
    for tier in settings.cascade_tiers():  # a session's providers, each asked twice
        provider = make_provider(settings, tier)
        for _ in range(2):
            ctx = llm.ChatContext()
            ctx.add_message(role="system", content="Answer briefly.")
            ctx.add_message(role="user", content="What is on my screen?")
            async for _item in provider.stream(ctx, max_output_tokens=64, tools=tools):
                pass
        await provider.aclose()

async def main():
    replies = [ScriptedReply(text="(scripted) a code editor"),
               ScriptedReply(tool_calls=[ScriptedToolCall(name="look", args={"what": "x"})])]
    async with ScriptedModelServer(replies * 8) as server:
        settings = dataclasses.replace(Settings.from_env(), gemini_base_url=server.base_url,
                                       anthropic_base_url=server.base_url)
        before, unbuilt = set(sys.modules), models_to_build()
        from agent.images import _data_url
        from agent.pricing import PriceTable
        from livekit import rtc
        await first_turns(settings)
        PriceTable.load().get("gemini-2.5-flash-lite")  # a first turn's price
        frame = rtc.VideoFrame(64, 64, rtc.VideoBufferType.I420, bytes(64 * 64 * 3 // 2))
        _data_url(frame, 48, 48)  # and its image for the model
        from vision.phash import phash
        phash(np.zeros((720, 1280), np.uint8))  # a first frame's perceptual hash
        providers = sorted({r.provider for r in server.requests})
        built = unbuilt - models_to_build()
        print(json.dumps({"imported": sorted(set(sys.modules) - before), "providers": providers,
                          "frozen": frozen, "tracked": tracked, "switch_s": switch_s,
                          "cv2_threads": cv2_threads,
                          "built": sorted(f"{m.__module__}.{m.__qualname__}" for m in built)}))

asyncio.run(main())
"""


@pytest.mark.parametrize("embeddings", ["auto", "minilm"])
def test_what_the_first_turn_imports_and_builds_is_ready_before_any_job(
    tmp_path, embeddings: str,
) -> None:
    """An import or an SDK's pydantic model built on first use (`defer_build`) holds the GIL:
    done inside a burst, every session's loop waits for it, as for a full garbage collection
    walking all that was loaded. The embedder (`auto`: Gemini's, a key being set) embeds a
    question, and each of the default tiers' providers answers a text turn and a tool call,
    all from the scripted model server."""
    env = {**os.environ, "SIGHTLINE_SCREEN_TEXT": "off", "SIGHTLINE_DATA_DIR": str(tmp_path),
           "GOOGLE_API_KEY": "probe-key", "ANTHROPIC_API_KEY": "probe-key",
           "SIGHTLINE_EMBEDDINGS": embeddings}
    probe = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], env=env, capture_output=True,
                           text=True, timeout=300, check=True)
    found = json.loads(probe.stdout.splitlines()[-1])
    assert found["providers"] == ["anthropic", "gemini"]  # the default tiers' two SDKs asked
    assert found["built"] == []
    # what the preload loaded is out of the garbage collector's sight (gc.freeze): a full
    # collection would walk it all, holding the GIL
    assert found["frozen"] > 100_000 and found["tracked"] < found["frozen"] / 100, found
    assert found["switch_s"] == pytest.approx(GIL_SWITCH_S) and GIL_SWITCH_S < 0.005
    assert found["cv2_threads"] == 1  # a worker's parallelism is its sessions
    # among what was imported late before: anthropic (the default tiers' Claude), genai-prices'
    # table, Pillow's plugins (screenshots are encoded with OpenCV since), numpy.ma (a first
    # median of floats), anyio's asyncio backend
    assert found["imported"] == []


def _room_event(room_handle: int) -> FfiEvent:
    event = FfiEvent()
    event.room_event.room_handle = room_handle
    event.room_event.participants_updated.SetInParent()
    return event


async def test_a_room_listener_hears_only_its_room_and_requests_no_room_event() -> None:
    """~60 events a second at 30 sessions woke every room's listener and every pending
    request; each now gets what it can use."""
    queue = RoutedFfiQueue()
    loop = asyncio.get_running_loop()
    listener = queue.subscribe(loop, lambda e: e.WhichOneof("message") not in MEDIA_EVENTS)
    other_room = queue.subscribe(loop, lambda e: e.WhichOneof("message") not in MEDIA_EVENTS)
    request = queue.subscribe(loop)  # a pending request: no filter of its own
    assert queue.narrow(listener, rtc_events._for_room(1))
    published, sent = FfiEvent(), FfiEvent()
    published.publish_track.async_id = 5
    sent.send_bytes.async_id = 6
    for event in (_room_event(1), _room_event(2), published, sent):
        queue.put(event)
    await asyncio.sleep(0)

    def drained(q: rtc._utils.Queue[FfiEvent]) -> list[str]:
        got = []
        while not q.empty():
            event = q.get_nowait()
            which = event.WhichOneof("message")
            got.append(f"{which}:{event.room_event.room_handle}" if which == "room_event"
                       else which)
        return got

    assert drained(listener) == ["room_event:1", "publish_track"]
    assert drained(other_room) == ["room_event:1", "room_event:2", "publish_track", "send_bytes"]
    assert drained(request) == ["publish_track", "send_bytes"]
    assert not queue.narrow(rtc._utils.Queue(), rtc_events._for_room(3))


def _job_threads() -> int:
    return sum(t.name == "job_thread_runner" for t in threading.enumerate())


async def test_a_large_session_limit_starts_only_a_few_job_threads_ahead(
    tmp_path: Path,
) -> None:
    """SIGHTLINE_MAX_SESSIONS=200: the running worker's pool holds WARM_JOB_THREADS idle job
    threads, and keeps holding that many, not one per session slot; the session limit stays
    200. (With one per slot, a worker of SIGHTLINE_MAX_SESSIONS=10000 had started 371 threads
    6 s in, its loop starved, and had not closed 100 s after it was told to.)"""
    settings = Settings.from_env({
        "SIGHTLINE_DATA_DIR": str(tmp_path), "LIVEKIT_URL": "ws://127.0.0.1:1",
        "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s", "SIGHTLINE_MAX_SESSIONS": "200",
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0"})
    before = _job_threads()
    server = build_server(settings)
    running = asyncio.create_task(server.run(unregistered=True))
    try:
        deadline = time.monotonic() + 30
        while _job_threads() - before < WARM_JOB_THREADS:
            assert time.monotonic() < deadline, "the pool started no idle job threads"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # ten turns of the pool's loop: it would start more by now
        assert _job_threads() - before == WARM_JOB_THREADS
        assert server.meter.limits.sessions == 200
        assert server.meter.read(199).load < FULL_LOAD <= server.meter.read(200).load
    finally:
        await server.aclose()
        await asyncio.gather(running, return_exceptions=True)
