"""Real processes for end-to-end tests and benchmarks: a LiveKit server on loopback, a `sightline
start` worker, and users who join with the rtc SDK.

The server binary comes from `make livekit-server` (go install of livekit-server v1.13.5, cached
in ~/.cache/sightline/bin); `SIGHTLINE_LIVEKIT_SERVER` may point at another build.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
from livekit import api, rtc

from agent.audio_reception import Reception
from agent.livekit_api import livekit_api
from agent.ports import free_port as free_port  # the tests' import of it
from vision.video_file import iter_frames

if TYPE_CHECKING:
    from .encoded_share import EncodedShare

API_KEY = "devkey"
API_SECRET = "e2e-secret-that-is-long-enough-for-hs256"
DEFAULT_BINARY = Path.home() / ".cache" / "sightline" / "bin" / "livekit-server"


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class ServerProcess:
    """The livekit-server binary run with one config file. Started again after it exited, it
    listens on the same ports and appends to the same log: the workers and users pointed at
    it reconnect as they would to a deployment's server that restarted."""

    command: list[str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log)
        wait_for_port(self.port, 20)

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def crash(self) -> None:
        """End it as a crash does: at once (SIGKILL), its rooms and connections dropped."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None:
            return
        # LiveKit v1.13.5 drains on a first SIGTERM, waiting for its rooms' participants (10 s
        # and more, even idle); a second one ends it at once
        self.proc.terminate()
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class LiveKitServer:
    ws_url: str
    http_url: str
    log_path: Path
    process: ServerProcess | None = None  # None for a server this process did not start

    def client(self) -> contextlib.AbstractAsyncContextManager[api.LiveKitAPI]:
        """A client of this server's API whose every call ends within `livekit_api.TIMEOUT_S`:
        livekit-api's own waits for ever on a server that takes a call and never answers,
        and a test or bench run with it would hang instead of failing."""
        return livekit_api(self.http_url, API_KEY, API_SECRET)


@contextlib.contextmanager
def run_livekit_server(workdir: Path, webhook_urls: Sequence[str] = ()) -> Iterator[LiveKitServer]:
    """A LiveKit server on loopback; `webhook_urls` receive its webhooks (signed with the API
    key), as a deployment's `webhook.urls` would."""
    binary = Path(os.environ.get("SIGHTLINE_LIVEKIT_SERVER", DEFAULT_BINARY))
    if not binary.exists():
        raise FileNotFoundError(
            f"LiveKit server binary not found at {binary}: run `make livekit-server`")
    port, tcp_port, udp_port = free_port(), free_port(), free_port()
    config = workdir / "livekit.yaml"
    config.write_text(
        f"port: {port}\n"
        "bind_addresses: ['127.0.0.1']\n"
        f"rtc: {{tcp_port: {tcp_port}, udp_port: {udp_port}, use_external_ip: false,"
        " node_ip: 127.0.0.1}\n"
        f"keys: {{{API_KEY}: {API_SECRET}}}\n"
        + (f"webhook: {{api_key: {API_KEY}, urls: {json.dumps(list(webhook_urls))}}}\n"
           if webhook_urls else "")
    )
    log_path = workdir / "livekit-server.log"
    log_path.write_text("")
    process = ServerProcess([str(binary), "--config", str(config)], log_path, port)
    try:
        process.start()
        yield LiveKitServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", log_path,
                            process)
    finally:
        process.stop()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    env: dict[str, str]  # the worker's own settings, on top of this process's environment

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    async def astop(self, timeout_s: float = 60) -> int:
        """`stop`, waiting off the event loop: a model server on this loop may still be
        answering the worker's closing sessions (blocked, it stalled a session's last
        embedding call until its timeout: 32 s of a test's teardown)."""
        return await asyncio.to_thread(self.stop, timeout_s)


def worker_processes(pid: int) -> list[psutil.Process]:
    """The worker's Python processes: the main one and any job processes (an embedded
    Postgres it started is not the worker)."""
    root = psutil.Process(pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            if "python" in proc.name() or "sightline" in " ".join(proc.cmdline()[:2]):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def start_worker(workdir: Path, env: dict[str, str], sightline: Path | None = None,
                 name: str = "worker", launcher: Sequence[str] = ()) -> Worker:
    """Start `sightline start` (this environment's, the `sightline` given, or `launcher`, a
    command that runs Sightline's CLI) and wait until it registered with the LiveKit
    server (each of its processes, with `SIGHTLINE_WORKER_PROCESSES` in `env`; 0 counts as
    one)."""
    log_path = workdir / f"{name}.log"
    data_dir = Path(env["SIGHTLINE_DATA_DIR"])
    # one process unless the caller asks for more: tests count on one worker's log and pid
    env = {"SIGHTLINE_WORKER_PROCESSES": "1", **env}
    processes = int(env["SIGHTLINE_WORKER_PROCESSES"]) or 1
    sightline = sightline or Path(sys.executable).with_name("sightline")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*(launcher or [str(sightline)]), "start", "--log-level", "debug"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )
    worker = Worker(proc, log_path, data_dir, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{worker.log_text()}")
        if worker.log_text().count("registered worker") >= processes:
            return worker
        time.sleep(0.2)
    worker.stop()
    raise TimeoutError(f"worker did not register in 60s:\n{worker.log_text()[-4000:]}")


class User:
    """A person in the room, driven with the rtc SDK: dispatches the agent, joins, shares a
    recording (or a loop of still frames) as their screen or camera, chats and reads the
    replies."""

    def __init__(
        self, livekit: LiveKitServer, room_name: str, *, agent_name: str,
        metadata: dict[str, Any], video: Path | None = None,
        frames: Sequence[rtc.VideoFrame] = (), hold_s: float = 1.0,
    ) -> None:
        if video is None and not frames:
            raise ValueError("a user shares a video file or a loop of frames")
        self.livekit = livekit
        self.room_name = room_name
        self.agent_name, self.metadata, self.video = agent_name, metadata, video
        self.frames, self.hold_s = frames, hold_s
        self.room = rtc.Room()
        self.replies: asyncio.Queue[tuple[str, float]] = asyncio.Queue()  # (text, arrived at)
        self.data: list[tuple[str, bytes]] = []  # (topic, payload) of data messages received
        self.data_at: list[float] = []  # the monotonic time each of them arrived
        self.replies_started: list[float] = []  # when each reply's text stream opened
        self._publisher: asyncio.Task[None] | None = None
        self.frames_published = 0
        self._data_arrived = asyncio.Event()
        self._reading: set[asyncio.Task[None]] = set()
        self.room.on("data_received", self._on_data)

    async def dispatch(self) -> None:
        """Create the room and ask LiveKit for the agent, as an app's backend would."""
        async with self.livekit.client() as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=self.room_name))
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=self.agent_name, room=self.room_name,
                    metadata=json.dumps(self.metadata),
                )
            )

    async def connect(self, identity: str) -> None:
        token = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )
        self.room.register_text_stream_handler("lk.transcription", self._on_transcription)
        await self.room.connect(self.livekit.ws_url, token)

    async def join(self, identity: str) -> None:
        await self.dispatch()
        await self.connect(identity)

    def _on_data(self, packet: rtc.DataPacket) -> None:
        self.data.append((packet.topic or "", packet.data))
        self.data_at.append(time.monotonic())
        self._data_arrived.set()

    async def wait_for_data(self, topic: str, timeout_s: float = 45) -> list[bytes]:
        """The data messages received on `topic`, once there is at least one."""
        async with asyncio.timeout(timeout_s):
            while not any(t == topic for t, _ in self.data):
                self._data_arrived.clear()
                await self._data_arrived.wait()
        return [payload for t, payload in self.data if t == topic]

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self.replies_started.append(time.monotonic())

        async def read() -> None:
            try:
                text = await reader.read_all()
            except rtc.data_stream.StreamError:
                return  # the room closed mid-reply (a user leaving): no reply to count
            self.replies.put_nowait((text, time.monotonic()))

        task = asyncio.get_running_loop().create_task(read())
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def wait_for_agent(self, timeout_s: float = 90) -> rtc.RemoteParticipant:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.room.remote_participants.values():
                if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
                    return p
            await asyncio.sleep(0.1)
        raise AssertionError(f"no agent joined {self.room_name} within {timeout_s}s")

    async def publish_video(self, source_kind: rtc.TrackSource.ValueType, fps: float) -> None:
        source = rtc.VideoSource(1280, 720)
        track = rtc.LocalVideoTrack.create_video_track("screen", source)
        # one layer: the agent reads full resolution, and simulcast would triple the users'
        # encoding work on a machine they share with the worker
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=source_kind, simulcast=False)
        )
        self._publisher = asyncio.create_task(self._pump(source, fps))

    async def publish_encoded(self, source_kind: rtc.TrackSource.ValueType, share: EncodedShare,
                              fps: float) -> None:
        """Shares frames encoded beforehand (bench/encoded_share.py): no encoder runs here, as
        a user's own machine encodes their share."""
        track = rtc.LocalVideoTrack.create_video_track("screen", share.source)
        await self.room.local_participant.publish_track(track, share.publish_options(source_kind))
        self._publisher = asyncio.create_task(self._pump_encoded(share, fps))

    async def _pump(self, source: rtc.VideoSource, fps: float) -> None:
        """Shares in real time at `fps`, looping, like a live share: the recording, or each of
        the still frames for `hold_s` seconds."""
        started = time.monotonic()
        while True:
            async for frame in self._one_pass(fps):
                source.capture_frame(frame)
                await self._paced(started, fps)

    async def _pump_encoded(self, share: EncodedShare, fps: float) -> None:
        started = time.monotonic()
        while True:
            share.send_next()
            await self._paced(started, fps)

    async def _paced(self, started: float, fps: float) -> None:
        """Counts a frame published and sleeps until the next one is due."""
        self.frames_published += 1
        due = started + self.frames_published / fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _one_pass(self, fps: float) -> AsyncIterator[rtc.VideoFrame]:
        if self.video is not None:
            frames = iter_frames(self.video)  # decoded off the event loop
            while (item := await asyncio.to_thread(next, frames, None)) is not None:
                yield item[1]
            return
        for frame in self.frames:
            for _ in range(max(1, round(self.hold_s * fps))):
                yield frame

    async def say(self, text: str, message_id: str | None = None) -> None:
        """Sends `text` on the chat, named `message_id` as the console page names its messages
        (the worker then confirms it on `sightline.chat.received`, agent/chat_inbox.py)."""
        await self.room.local_participant.send_text(
            text, topic="lk.chat",
            attributes={"sightline.message": message_id} if message_id else None)

    async def wait_for_reply(self, timeout_s: float = 60) -> str:
        return (await self.next_reply(timeout_s))[0]

    async def next_reply(self, timeout_s: float = 60) -> tuple[str, float]:
        """The next reply and the monotonic time its transcription finished arriving."""
        try:
            return await asyncio.wait_for(self.replies.get(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no reply on lk.transcription within {timeout_s}s") from None

    async def leave(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
        await self.room.disconnect()


MIC_RATE = 48000
MIC_FRAME_S = 0.01  # what a browser's microphone track sends: 10 ms frames
MIC_QUEUE_MS = 60_000  # room for the questions queued at once (a question is a few seconds)
RECEPTION_EVERY_S = 0.25  # how often the user reads the agent's track's WebRTC counts


@dataclass
class HeardAudio:
    """The agent's audio as this user received it: 10 ms frames with their arrival times."""

    frames: list[tuple[float, rtc.AudioFrame]]
    # WebRTC's jitter buffer's counts for this track, read every RECEPTION_EVERY_S
    receptions: list[tuple[float, Reception]] = field(default_factory=list)

    def altered_between(self, start: float, end: float) -> Reception:
        """Seconds of the audio received between `start` and `end` (monotonic) that the jitter
        buffer made up for packets that came late or never (`concealed_s`), or cut or
        stretched to catch up with or wait for late ones. Speech with any of those is altered,
        so what a recogniser hears wrong in it can be told apart from what was said wrong."""
        first = next((r for at, r in reversed(self.receptions) if at <= start), Reception())
        latest = self.receptions[-1][1] if self.receptions else Reception()
        return next((r for at, r in self.receptions if at >= end), latest).since(first)

    def speech_spans(self, threshold: float = 300.0, gap_s: float = 0.6,
                     since: float = 0.0) -> list[tuple[float, float]]:
        """(start, end) monotonic times where the audio is louder than `threshold` (mean
        absolute sample), merging pauses shorter than `gap_s`: sentences of one reply."""
        spans: list[tuple[float, float]] = []
        for at, frame in self.frames:
            if at < since:
                continue
            loud = np.abs(np.frombuffer(frame.data, np.int16)).mean() > threshold
            if not loud:
                continue
            if spans and at - spans[-1][1] <= gap_s:
                spans[-1] = (spans[-1][0], at)
            else:
                spans.append((at, at))
        return spans

    def between(self, start: float, end: float) -> rtc.AudioFrame:
        return rtc.combine_audio_frames([f for at, f in self.frames if start <= at <= end])

    def loud_seconds(self, start: float, end: float, threshold: float = 300.0) -> float:
        """How much of the audio that arrived between `start` and `end` is louder than
        `threshold`: a sound's own length, whatever pauses its delivery had (a frame late on a
        loaded machine stretches the span it arrives in, not the sound)."""
        return sum(frame.duration for at, frame in self.frames if start <= at <= end
                   and np.abs(np.frombuffer(frame.data, np.int16)).mean() > threshold)


class VoiceUser(User):
    """A user who also talks: a microphone track that plays recorded questions (silence in
    between, as a live microphone sends), and a recorder of the agent's audio track."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard = HeardAudio([])
        self.mic_track_sid = ""
        self.user_transcripts: asyncio.Queue[str] = asyncio.Queue()  # what the agent heard
        self.spoke_until = 0.0  # monotonic time the last question's audio ends
        self._mic = rtc.AudioSource(MIC_RATE, 1, queue_size_ms=MIC_QUEUE_MS)
        self._tasks: list[asyncio.Task[None]] = []
        self.room.on("track_subscribed", self._on_track)

    def _on_track(self, track: rtc.Track, _pub: Any, participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._record(track)))

    async def _record(self, track: rtc.Track) -> None:
        self._tasks.append(asyncio.create_task(self._read_reception(track)))
        async for event in rtc.AudioStream(track, sample_rate=MIC_RATE, num_channels=1):
            self.heard.frames.append((time.monotonic(), event.frame))

    async def _read_reception(self, track: rtc.Track) -> None:
        while True:
            stats = await track.get_stats()
            self.heard.receptions.append((time.monotonic(), Reception.of(stats)))
            await asyncio.sleep(RECEPTION_EVERY_S)

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        attributes = reader.info.attributes or {}
        if attributes.get("lk.transcribed_track_id") != self.mic_track_sid:
            super()._on_transcription(reader, identity)
            return
        if attributes.get("lk.transcription_final") != "true":
            return  # the agent also streams the transcript as it forms: the final one counts

        async def read() -> None:
            with contextlib.suppress(rtc.data_stream.StreamError):
                self.user_transcripts.put_nowait(await reader.read_all())

        task = asyncio.get_running_loop().create_task(read())
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def publish_microphone(self, timeout_s: float = 30) -> None:
        """Publishes the microphone and returns once the agent has subscribed to it: speech
        played before that is lost, and a question missing its first words is misheard."""
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._mic)
        publication = await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.mic_track_sid = publication.sid
        try:
            await asyncio.wait_for(publication.wait_for_subscription(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"the agent did not subscribe to {self.room_name}'s microphone "
                f"within {timeout_s}s") from None

    def speak(self, wav_path: Path) -> float:
        """Queue a recorded question on the microphone; returns how long it plays.

        The question goes to the rtc SDK whole: its own thread plays it out 10 ms at a time
        and sends silence while nothing is queued, as a browser's microphone does. Paced from
        this process's event loop instead (it was, 100 ms queued), a stall of the loop held
        the question back mid-word: with the loop stalled 150 ms every 0.4 s, the agent's
        jitter buffer cut or stretched 0.003 and 0.062 s of it in two runs, 0.003 and 0.003
        paced by the SDK (the `heard` events' `reception`)."""
        samples = read_wav_mono(wav_path, MIC_RATE)
        step = int(MIC_RATE * MIC_FRAME_S)  # the source takes whole 10 ms frames
        samples = np.concatenate([samples, np.zeros(-len(samples) % step, np.int16)])
        duration = len(samples) / MIC_RATE
        self.spoke_until = max(time.monotonic(), self.spoke_until) + duration
        frame = rtc.AudioFrame(samples.tobytes(), MIC_RATE, 1, len(samples))
        self._tasks.append(asyncio.create_task(self._mic.capture_frame(frame)))
        return duration

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await super().leave()


def read_wav_mono(path: Path, rate: int) -> np.ndarray:
    """A 16-bit WAV file as mono int16 samples at `rate`."""
    from scipy.signal import resample_poly

    with wave.open(str(path)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
        samples = samples.reshape(-1, wav.getnchannels()).mean(axis=1)
        source_rate = wav.getframerate()
    divisor = math.gcd(source_rate, rate)
    resampled = resample_poly(samples, rate // divisor, source_rate // divisor)
    return np.clip(resampled, -32768, 32767).astype(np.int16)
