"""Ports a worker serves: checked free before anything starts, or picked free for a process."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from .config import ConfigError


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A free port outside the kernel's ephemeral range: a port that is free now is handed to
    a process that binds it seconds later, and an ephemeral one may by then be the local end of
    any outgoing connection (a worker once failed to start on one in CI)."""
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(10_000, 65_536)
        if port in ephemeral:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


def taken(port: int) -> str | None:
    """Why a server could not bind `port` now (as livekit-agents' servers bind it), or None."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def require_free_port(port: int, env: str) -> None:
    """Fail with one line, before anything starts, when a port the worker serves is taken."""
    if port and (why := taken(port)):
        raise ConfigError(f"{env}={port}: the port is taken ({why}); "
                          "choose a free one (two workers on one host need two)")
