"""The gateway's operator console on the ops listener: the shared page shell (`relay.webconsole`),
`/api/status` and its live stream, a JSON endpoint per panel, and the log tail (JSON and SSE, with a
level filter). Serves what `StatusCollector` and `LogRing` hold; changes nothing.
"""

from __future__ import annotations

from typing import Final

import msgspec
from aiohttp import web

from gateway.observe.logtail import LEVELS, LogRing
from gateway.observe.status import StatusCollector
from gateway.protocol.headers import JSON
from gateway.protocol.sse import encode_event
from gateway.relay.webconsole import ConsoleShell, TokenGate, sse_loop

LOG_INTERVAL_S: Final = 0.25
"""How often the log stream looks for new lines."""
LOG_BACKLOG: Final = 200
"""Lines a new log stream starts with."""


class GatewayConsole:
    """Routes: `/`, `/ui`, `/console/*`, `/api/status[/stream]` (the shell's), `/api/config`,
    `/api/failures`, `/api/logs?level=&since=` and `/api/logs/stream?level=` (SSE, event `log`)."""

    def __init__(self, collector: StatusCollector, logs: LogRing | None, token: str | None) -> None:
        self.collector = collector
        self.logs = logs
        self.gate = TokenGate(token)
        self._encoder = msgspec.json.Encoder()
        self.shell = ConsoleShell(self.gate, self._status)

    async def _status(self) -> bytes:
        return self._encoder.encode(self.collector.snapshot())

    async def close(self) -> None:
        """End open streams: the listener is shutting down."""
        await self.shell.close()

    def routes(self) -> list[web.RouteDef]:
        return [
            *self.shell.routes(),
            web.get("/api/config", self.config, allow_head=False),
            web.get("/api/failures", self.failures, allow_head=False),
            web.get("/api/logs", self.log_lines, allow_head=False),
            web.get("/api/logs/stream", self.log_stream, allow_head=False),
        ]

    def _json(self, obj: object) -> web.Response:
        return web.Response(body=self._encoder.encode(obj), content_type=JSON, headers={"Cache-Control": "no-store"})

    async def config(self, request: web.Request) -> web.Response:
        self.gate.check(request)
        return self._json(self.collector.snapshot().config)

    async def failures(self, request: web.Request) -> web.Response:
        self.gate.check(request)
        return self._json(self.collector.stats.recent_failures())

    async def log_lines(self, request: web.Request) -> web.Response:
        self.gate.check(request)
        level, since = _log_query(request)
        return self._json(self.logs.since(since, level) if self.logs is not None else [])

    async def log_stream(self, request: web.Request) -> web.StreamResponse:
        self.gate.check(request)
        level, since = _log_query(request)
        ring = self.logs
        if ring is not None and "since" not in request.query:
            since = max(0, ring.last_seq - LOG_BACKLOG)
        cursor = [since]

        async def events() -> list[bytes]:
            if ring is None:
                return []
            lines = ring.since(cursor[0], level)
            if lines:
                cursor[0] = lines[-1].seq
            return [encode_event(self._encoder.encode(line), "log") for line in lines]

        return await sse_loop(request, LOG_INTERVAL_S, events, self.shell.closing)


def _log_query(request: web.Request) -> tuple[str, int]:
    level = request.query.get("level", "DEBUG").upper()
    if level not in LEVELS:
        raise web.HTTPBadRequest(text=f"level must be one of {', '.join(LEVELS)}\n")
    since = request.query.get("since", "0")
    if not since.isdigit():
        raise web.HTTPBadRequest(text="since must be a line number\n")
    return level, int(since)
