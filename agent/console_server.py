"""The web console's server: the page, its script, and a session to join.

`POST /api/session` creates a room, dispatches Sightline to it (explicit dispatch, the job's
metadata naming the tenant) and mints a token for the browser's user with the configured LiveKit
keys; the keys never leave this process. The user is the one whose id the page keeps in its
browser (`{"user": id}`), so that Sightline remembers them from one session to the next. The
page (web/static/index.html) and its script (web/dist/console.js: the LiveKit JS client bundled
at build time by `make install`, so the page needs no CDN) are served from the checkout. It
listens on localhost only: whoever reaches the port can start sessions on the configured LiveKit
project and spend the models' money. For the same reason a session is only started for the page
itself: the request must carry the `X-Sightline-Console` header (another site's page cannot send
it without a CORS preflight, which this server never approves) and name a loopback host (no DNS
rebinding).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from livekit import api
from yarl import URL

from memory.db import masked_url

from .config import ConfigError, Settings
from .livekit_api import LiveKitTimeout, livekit_api

log = logging.getLogger("sightline.console")

WEB = Path(__file__).resolve().parent.parent / "web"
PAGE = WEB / "static" / "index.html"
BUNDLE = WEB / "dist" / "console.js"
TOKEN_TTL_S = 6 * 3600
PAGE_HEADER = "X-Sightline-Console"
# the page's user id (kept in the browser), to which `console-user-` is prefixed: a user is
# remembered across their sessions as any user of the same identity is
USER_ID = re.compile(r"[A-Za-z0-9_-]{6,64}")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConsoleUnbuilt(ConfigError):
    """The console's script was not built (a checkout where `make install` has not run)."""


def http_url(ws_url: str) -> str:
    """LiveKit's API URL for its WebSocket URL (the same host and port)."""
    return ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def check_console(settings: Settings) -> None:
    """What the console needs, as one line each: LiveKit's URL and keys, and the built script."""
    for env, value in (("LIVEKIT_URL", settings.livekit_url),
                       ("LIVEKIT_API_KEY", settings.livekit_api_key),
                       ("LIVEKIT_API_SECRET", settings.livekit_api_secret)):
        if not value:
            raise ConfigError(f"{env} is required by `sightline console` (README: Console)")
    if not BUNDLE.is_file():
        raise ConsoleUnbuilt(f"the console's script {BUNDLE} is not built: run `make install` "
                             "(it needs Node.js and npm; README: Console)")


class Console:
    """The console's routes for one LiveKit project and tenant."""

    def __init__(self, settings: Settings, tenant: str) -> None:
        assert settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret
        self._url = settings.livekit_url
        self._key, self._secret = settings.livekit_api_key, settings.livekit_api_secret
        self._agent = settings.agent_name
        self._tenant = tenant

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/console.js", self._file(BUNDLE, "text/javascript"))
        app.router.add_get("/console.js.map", self._file(BUNDLE.with_suffix(".js.map"),
                                                         "application/json"))
        app.router.add_get("/console.css", self._file(WEB / "static" / "console.css",
                                                      "text/css"))
        app.router.add_post("/api/session", self._session)
        return app

    async def _page(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE, headers={"Content-Type": "text/html; charset=utf-8",
                                               "Cache-Control": "no-store"})

    @staticmethod
    def _file(path: Path, mime: str):  # type: ignore[no-untyped-def]
        async def serve(_request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path, headers={"Content-Type": mime,
                                                   "Cache-Control": "no-store"})
        return serve

    @staticmethod
    async def _user_id(request: web.Request) -> str | None:
        """The user id the page keeps (`{"user": id}`), a new one when it sends none (a page
        whose browser keeps nothing, or another client), None when it is not one."""
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        user = body.get("user")
        if user is None:
            return uuid.uuid4().hex[:12]
        return user if isinstance(user, str) and USER_ID.fullmatch(user) else None

    async def _session(self, request: web.Request) -> web.Response:
        """A new room with Sightline dispatched to it, and the token to join it."""
        try:
            host = URL(f"http://{request.host}").host
        except ValueError:
            host = None
        if request.headers.get(PAGE_HEADER) != "1" or host not in LOOPBACK_HOSTS:
            return web.json_response({"error": "sessions are started from the console's own "
                                               "page on this machine"}, status=403)
        user = await self._user_id(request)
        if user is None:
            return web.json_response({"error": "the page's user id must be 6 to 64 letters, "
                                               "digits, - or _"}, status=400)
        room = f"console-{uuid.uuid4().hex[:10]}"
        identity = f"console-user-{user}"
        try:
            async with livekit_api(http_url(self._url), self._key, self._secret) as lk:
                await lk.room.create_room(api.CreateRoomRequest(name=room,
                                                                empty_timeout=300))
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name=self._agent, room=room,
                    metadata=json.dumps({"tenant": self._tenant})))
        except Exception as exc:  # the page shows it; the console keeps serving
            where = masked_url(self._url)
            log.error("could not create a room on %s: %r", where, exc)
            why = (f"did not answer within {exc.after_s:g} s" if isinstance(exc, LiveKitTimeout)
                   else f"refused or could not be reached: {type(exc).__name__}")
            return web.json_response({"error": f"LiveKit at {where} {why}"}, status=502)
        token = (api.AccessToken(self._key, self._secret)
                 .with_identity(identity).with_name("Console user")
                 .with_ttl(timedelta(seconds=TOKEN_TTL_S))
                 .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                              can_subscribe=True, can_publish_data=True))
                 .to_jwt())
        log.info("console session: room %s, user %s, tenant %s", room, identity, self._tenant)
        return web.json_response({"url": self._url, "token": token, "room": room,
                                  "identity": identity, "agent": self._agent,
                                  "tenant": self._tenant})
