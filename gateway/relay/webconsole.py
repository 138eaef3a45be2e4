"""The operator console's web shell, shared by the gateway's ops listener and the relay: the page
and its assets (served from the package, no build step), the token gate, and a live SSE stream of
JSON snapshots. Knows nothing of what a snapshot holds; must not read gateway or relay state itself.

The page's files live in `gateway/observe/console/` (package data): one page for both, which
renders whichever kind of snapshot `/api/status` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway.config.base import is_loopback
from gateway.protocol.headers import AUTHORIZATION, EVENT_STREAM, JSON
from gateway.protocol.sse import encode_event

ASSETS: Final = Path(__file__).resolve().parent.parent / "observe" / "console"
"""The page, its script and its style sheet (package data)."""
_FILES: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
COOKIE: Final = "gateway_console"
"""Where the browser keeps the token it was given once with `?token=` (HttpOnly, SameSite=Strict)."""
STREAM_INTERVAL_S: Final = 0.5
"""How often the live stream sends a snapshot: the page shows a change within a second."""
_NO_STORE: Final = {"Cache-Control": "no-store"}

Snapshot = Callable[[], Awaitable[bytes]]
"""A JSON document of the current status, encoded."""


def served(listen_host: str, token: str | None) -> bool:
    """Whether a listener serves the console: always with a token; without one only on loopback
    (a pod's `0.0.0.0` listener keeps its probes and metrics, and shows nothing else)."""
    return token is not None or is_loopback(listen_host)


class TokenGate:
    """Who may see the console: anyone on a loopback-only listener without a token; with a token,
    only requests carrying it (`Authorization: Bearer`, or the cookie the page set). Compared in
    constant time; the token never appears in an answer."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def _matches(self, value: str | None) -> bool:
        assert self._token is not None
        return value is not None and hmac.compare_digest(value.encode(), self._token)

    def allowed(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get(AUTHORIZATION, "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and self._matches(credential.strip()):
            return True
        return self._matches(request.cookies.get(COOKIE))

    def check(self, request: web.Request) -> None:
        """Raise 401 unless the request may see the console."""
        if not self.allowed(request):
            raise web.HTTPUnauthorized(
                text="the console needs the ops token: Authorization: Bearer <token>, or open /ui?token=<token>\n",
                headers={"WWW-Authenticate": 'Bearer realm="console"', **_NO_STORE},
            )

    def page_login(self, request: web.Request) -> None:
        """`/ui?token=…`: a correct token is kept in a cookie and the address is cleaned of it (303)."""
        given = request.query.get("token")
        if self._token is None or given is None or not self._matches(given):
            return
        redirect = web.HTTPSeeOther(location=request.path, headers=_NO_STORE)
        redirect.set_cookie(COOKIE, given, httponly=True, samesite="Strict", path="/")
        raise redirect


class ConsoleShell:
    """The routes both consoles share: `/` and `/ui` (the page), `/console/{file}` (its assets),
    `/api/status` (the snapshot) and `/api/status/stream` (snapshots as SSE)."""

    def __init__(self, gate: TokenGate, snapshot: Snapshot, *, interval_s: float = STREAM_INTERVAL_S) -> None:
        self.gate = gate
        self._snapshot = snapshot
        self._interval = interval_s
        self.closing = asyncio.Event()
        """Set when the listener shuts down: open streams end at once instead of holding it up."""

    async def close(self, app: web.Application | None = None) -> None:
        """End every open stream (an `on_shutdown` callback, or called before the runner's cleanup)."""
        self.closing.set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page, allow_head=False),
            web.get("/ui", self.page, allow_head=False),
            web.get("/console/{file}", self.asset, allow_head=False),
            web.get("/api/status", self.status, allow_head=False),
            web.get("/api/status/stream", self.stream, allow_head=False),
        ]

    async def page(self, request: web.Request) -> web.StreamResponse:
        self.gate.page_login(request)
        self.gate.check(request)
        return web.Response(
            body=(ASSETS / "index.html").read_bytes(), content_type="text/html", charset="utf-8", headers=_NO_STORE
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        kind = _FILES.get(name)
        if kind is None:  # a fixed list: nothing else of the package is reachable
            raise web.HTTPNotFound()
        return web.Response(body=(ASSETS / name).read_bytes(), content_type=kind, charset="utf-8", headers=_NO_STORE)

    async def status(self, request: web.Request) -> web.Response:
        self.gate.check(request)
        return web.Response(body=await self._snapshot(), content_type=JSON, headers=_NO_STORE)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.gate.check(request)
        return await sse_loop(request, self._interval, self._status_events, self.closing)

    async def _status_events(self) -> list[bytes]:
        return [encode_event(await self._snapshot(), "status")]


async def sse_loop(
    request: web.Request,
    interval_s: float,
    events: Callable[[], Awaitable[list[bytes]]],
    closing: asyncio.Event,
) -> web.StreamResponse:
    """An SSE response that sends what `events()` gives every `interval_s` (a comment when it gives
    nothing, so a dead connection is noticed) until the client leaves or `closing` is set."""
    response = web.StreamResponse(
        headers={"Content-Type": EVENT_STREAM, "X-Accel-Buffering": "no", **_NO_STORE},
    )
    await response.prepare(request)
    try:
        while not closing.is_set():
            chunk = b"".join(await events()) or b": idle\n\n"
            await response.write(chunk)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), interval_s)
    except ConnectionError:
        pass  # the client left
    return response
