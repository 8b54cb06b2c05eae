"""Real processes for end-to-end tests: a LiveKit server on loopback and a `sightline start` worker.

The server binary comes from `make livekit-server` (go install of livekit-server v1.13.5, cached
in ~/.cache/sightline/bin); `SIGHTLINE_LIVEKIT_SERVER` may point at another build.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

API_KEY = "devkey"
API_SECRET = "e2e-secret-that-is-long-enough-for-hs256"
DEFAULT_BINARY = Path.home() / ".cache" / "sightline" / "bin" / "livekit-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class LiveKitServer:
    ws_url: str
    http_url: str
    log_path: Path


@contextlib.contextmanager
def run_livekit_server(workdir: Path) -> Iterator[LiveKitServer]:
    binary = Path(os.environ.get("SIGHTLINE_LIVEKIT_SERVER", DEFAULT_BINARY))
    if not binary.exists():
        pytest.fail(f"LiveKit server binary not found at {binary}: run `make livekit-server`")
    port, tcp_port, udp_port = free_port(), free_port(), free_port()
    config = workdir / "livekit.yaml"
    config.write_text(
        f"port: {port}\n"
        "bind_addresses: ['127.0.0.1']\n"
        f"rtc: {{tcp_port: {tcp_port}, udp_port: {udp_port}, use_external_ip: false,"
        " node_ip: 127.0.0.1}\n"
        f"keys: {{{API_KEY}: {API_SECRET}}}\n"
    )
    log_path = workdir / "livekit-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port(port, 20)
        yield LiveKitServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


def start_worker(workdir: Path, env: dict[str, str]) -> Worker:
    """Start `sightline start` and wait until it registered with the LiveKit server."""
    log_path = workdir / "worker.log"
    data_dir = Path(env["SIGHTLINE_DATA_DIR"])
    sightline = Path(sys.executable).with_name("sightline")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(sightline), "start", "--log-level", "debug"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )
    worker = Worker(proc, log_path, data_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{worker.log_text()}")
        if "registered worker" in worker.log_text():
            return worker
        time.sleep(0.2)
    worker.stop()
    raise TimeoutError(f"worker did not register in 60s:\n{worker.log_text()[-4000:]}")
