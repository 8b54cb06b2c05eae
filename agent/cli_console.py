"""`sightline console`: a web page on localhost to talk to Sightline with a real screen share,
microphone and chat (README: Console)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vision.ranges import Range

from .cli_common import identifier, in_range

if TYPE_CHECKING:
    from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "console", help="serve the web console on localhost: join a room with Sightline, "
                        "share your screen and microphone, chat, see answers, live assist "
                        "and costs (needs a running worker: `sightline dev`)")
    p.add_argument("--port", type=in_range(Range(int, 0, 65535)), default=None,
                   help="port on 127.0.0.1 (default: SIGHTLINE_CONSOLE_PORT, 8090)")
    p.add_argument("--tenant", type=identifier, default=None,
                   help="the tenant its sessions run as (default: SIGHTLINE_TENANT)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, the way the console says to stop it: a clean stop, exit 0."""
    import asyncio
    import contextlib

    from aiohttp import web

    from memory.db import masked_url

    from .cli_common import UserError
    from .console_server import Console, check_console

    check_console(settings)
    port = settings.console_port if args.port is None else int(args.port)
    runner = web.AppRunner(Console(settings, args.tenant or settings.tenant).app(),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
                        "(set SIGHTLINE_CONSOLE_PORT or --port)") from None
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"Sightline console on http://127.0.0.1:{bound}/ (LiveKit "
          f"{masked_url(settings.livekit_url)}, agent {settings.agent_name}); Ctrl-C to stop",
          flush=True)
    try:
        with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C: asyncio.run cancels it
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0
