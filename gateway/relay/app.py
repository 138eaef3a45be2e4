"""Assembling and running a relay: the aiohttp application, the embeddable `Relay`, `serve_relay`.

Owns the provision step (secrets resolved once, backend built, routes mounted),
typed app state, resource lifetimes and the listening socket. Holds no request logic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Final
from urllib.parse import quote

from aiohttp import web

from gateway.relay.config import RelayConfig, parse_listen
from gateway.relay.errors import error_middleware
from gateway.relay.front import FrontDoor
from gateway.relay.guard import Credentials, check_channel, resolve_credentials
from gateway.relay.queue import MemoryQueue, QueueBackend
from gateway.relay.tunnel_api import TunnelAPI
from gateway.wire import Codec

log = logging.getLogger("gateway.relay")

CONFIG: Final = web.AppKey("relay_config", RelayConfig)
BACKEND: Final = web.AppKey("relay_backend", QueueBackend)

SHUTDOWN_TIMEOUT_S: Final = 5.0
"""How long closing waits for handlers after waking every waiting poll and caller."""


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _wake_waiters(app: web.Application) -> None:
    """on_shutdown: long polls answer 204 and callers 503 now, not at their timeouts."""
    await app[BACKEND].close()


async def _backend_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[BACKEND].close()


def build_relay_app(
    config: RelayConfig,
    credentials: Credentials | None = None,
    *,
    backend: QueueBackend | None = None,
) -> web.Application:
    """The relay as an aiohttp application: tunnel API, MCP endpoint and `/healthz`.

    `credentials` defaults to resolving the config's secret references now (raising
    RelayConfigError on failure); `backend` defaults to a MemoryQueue. The app owns
    the backend and closes it on shutdown. Serve it with `handler_cancellation=True`
    (as `Relay` does) so a caller or poller that disconnects is noticed at once.
    """
    resolved = resolve_credentials(config) if credentials is None else credentials
    missing = sorted(set(config.tunnels) - set(resolved))
    if missing:
        raise ValueError(f"no credentials for tunnel {missing[0]!r}")
    queue = backend or MemoryQueue(
        config.tunnels, queue_max=config.queue_max, client_seen_grace_s=config.client_seen_grace_s
    )
    codec = Codec()
    app = web.Application(middlewares=[error_middleware(codec)], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[BACKEND] = queue
    app.router.add_routes(TunnelAPI(config, resolved, queue, codec).routes())
    app.router.add_routes(FrontDoor(config, resolved, queue, codec).routes())
    app.router.add_get("/healthz", _healthz)
    app.on_shutdown.append(_wake_waiters)
    app.cleanup_ctx.append(_backend_lifetime)
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Relay:
    """An embeddable relay bound to `config.listen` (port 0 picks a free port).

    `async with Relay(config) as relay:` starts it; `relay.url` is the base URL and
    `relay.url_for(tunnel_id, channel)` an MCP endpoint URL.
    """

    def __init__(
        self,
        config: RelayConfig,
        credentials: Credentials | None = None,
        *,
        backend: QueueBackend | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._backend = backend
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the relay is not started")
        return self._url

    @property
    def app(self) -> web.Application:
        if self._runner is None:
            raise RuntimeError("the relay is not started")
        return self._runner.app

    def url_for(self, tunnel_id: str, channel: str | None = None) -> str:
        """The MCP endpoint URL of a tunnel (channel `main` when None)."""
        url = f"{self.url}/v1/mcp/{quote(tunnel_id, safe='')}"
        return url if channel is None else f"{url}/{check_channel(channel)}"

    async def start(self) -> str:
        """Bind and serve; returns the base URL, e.g. `http://127.0.0.1:8780`."""
        if self._runner is not None:
            raise RuntimeError("the relay is already started")
        host, port = parse_listen(self._config.listen)
        app = build_relay_app(self._config, self._credentials, backend=self._backend)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self._url = f"http://{_url_host(host)}:{bound_port}"
        log.info("relay listening on %s (%d tunnels)", self._url, len(self._config.tunnels))
        return self._url

    async def close(self) -> None:
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def serve_relay(
    config: RelayConfig, stop: asyncio.Event, *, on_ready: Callable[[str], object] | None = None
) -> None:
    """Run a relay until `stop` is set (the CLI's `gateway relay --config relay.yaml`).

    Secrets are resolved on start (RelayConfigError names the key on failure);
    `on_ready(base_url)` is called once the socket is bound.
    """
    async with Relay(config) as relay:
        if on_ready is not None:
            on_ready(relay.url)
        await stop.wait()
