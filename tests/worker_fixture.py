"""A real `sightline start` worker for the end-to-end tests, its set-up said once.

The modules that run one (test_e2e_livekit, test_e2e_database_join, test_worker_room_scope,
test_worker_processes, test_fleet, test_console_browser) each give what their tests are about:
the agent name, the database, the settings under test. What every one of them needs to run
offline on a shared machine is here: LiveKit's keys, the scripted model server behind both
providers (fake keys, no retries: a scripted failure is the test's, not hidden by a retry),
health and metrics ports of their own, no webhook server (only the fleet's LiveKit sends them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.wire_format_server import ScriptedModelServer
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    Worker,
    free_port,
    start_worker,
)

FAKE_KEY = "e2e-fake-key"  # the wire-format server takes any key, and masks it in its captures


def worker_env(livekit: LiveKitServer, models: ScriptedModelServer, *, agent_name: str,
               database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a worker serving `agent_name` on `livekit`, asking `models`, on
    `database_url` and `data_dir`; `settings` (variables by name) add to it or override it."""
    return {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": agent_name,
        "GOOGLE_API_KEY": FAKE_KEY, "ANTHROPIC_API_KEY": FAKE_KEY,
        "SIGHTLINE_GEMINI_BASE_URL": models.base_url,
        "SIGHTLINE_ANTHROPIC_BASE_URL": models.base_url, "SIGHTLINE_MODEL_RETRIES": "0",
        "DATABASE_URL": database_url, "SIGHTLINE_DATA_DIR": str(data_dir),
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_METRICS_PORT": str(free_port()),
        "SIGHTLINE_WEBHOOK_PORT": "0",
        **settings,
    }


async def started_worker(workdir: Path, env: dict[str, str], name: str = "worker",
                         launcher: tuple[str, ...] = ()) -> Worker:
    """`start_worker` off the event loop: the tests' one loop runs the model servers and
    users, which must go on answering the workers already running while this one starts."""
    return await asyncio.to_thread(start_worker, workdir, env, name=name, launcher=launcher)


@asynccontextmanager
async def running_worker(workdir: Path, env: dict[str, str], name: str = "worker",
                         ) -> AsyncIterator[Worker]:
    """A worker with `env`, registered with LiveKit, stopped on leaving (SIGTERM, drained:
    `Worker.astop`; at once when a test stopped or killed it already)."""
    worker = await started_worker(workdir, env, name)
    try:
        yield worker
    finally:
        await worker.astop()
