"""Assembling and running a relay: the aiohttp application, the embeddable `Relay`, `serve_relay`.
Holds no request logic: that is `front`'s and `tunnel_api`'s.

Owns the provision step (secrets resolved, backend built from `backend:`, routes mounted), typed
app state, resource lifetimes, the listening socket, and `Relay.reload`: a new configuration's
settings built whole and swapped in (`gateway.relay.settings`) when `gateway.relay.reload` finds
nothing in it that needs a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Final
from urllib.parse import quote

from aiohttp import web

from gateway.config.secrets import SecretError, resolve
from gateway.protocol.wire import Codec
from gateway.relay.config import RedisBackend, RelayConfig, RelayConfigError, parse_listen
from gateway.relay.discovery import Discovery
from gateway.relay.errors import ServerLog, error_middleware
from gateway.relay.front import FrontDoor
from gateway.relay.guard import READ_TIMEOUT, Credentials, check_channel
from gateway.relay.identity import Identity
from gateway.relay.lean_http import LeanServer
from gateway.relay.ops import OpsEndpoints, RelayMetrics
from gateway.relay.queue import MemoryQueue, QueueBackend
from gateway.relay.reload import rejection, restart_keys
from gateway.relay.settings import LiveSettings, build_settings
from gateway.relay.status import RelayStatusSource
from gateway.relay.token_endpoint import TokenEndpoint
from gateway.relay.tracing import NO_TRACER, RelayTracer
from gateway.relay.tunnel_api import TunnelAPI
from gateway.relay.user_auth import UserAuth
from gateway.relay.webconsole import ConsoleShell

log = logging.getLogger("gateway.relay")

CONFIG: Final = web.AppKey("relay_config", RelayConfig)
BACKEND: Final = web.AppKey("relay_backend", QueueBackend)
METRICS: Final = web.AppKey("relay_metrics", RelayMetrics)
DISCOVERY: Final = web.AppKey("relay_discovery", Discovery)
IDENTITY: Final = web.AppKey("relay_identity", Identity)
"""Present when `identity:` is configured."""
LEAN: Final = web.AppKey("relay_lean_server", LeanServer)
"""The lean HTTP layer that `Relay` listens with for the hot routes (gateway.relay.lean_http)."""
LIVE: Final = web.AppKey("relay_live_settings", LiveSettings)
"""The settings requests read; `Relay.reload` swaps them."""
CONSOLE: Final = web.AppKey("relay_console", ConsoleShell)
"""Present when the operator console is served; a reload hands it the new token gate."""

SHUTDOWN_TIMEOUT_S: Final = 5.0
"""How long closing waits for handlers after waking every waiting poll and caller."""


async def _wake_waiters(app: web.Application) -> None:
    """on_shutdown: long polls answer 204 and callers 503 now, not at their timeouts."""
    await app[DISCOVERY].close()
    await app[BACKEND].close()


async def _backend_lifetime(app: web.Application) -> AsyncIterator[None]:
    backend = app[BACKEND]
    await backend.start()
    try:
        yield
    finally:
        await backend.close()
        await backend.dispose()


async def _identity_lifetime(app: web.Application) -> AsyncIterator[None]:
    async with app[IDENTITY].lifetime():
        yield


def make_backend(config: RelayConfig, *, source: str = "<relay config>") -> QueueBackend:
    """The queue backend `config.backend` names; RelayConfigError names the key when its
    secret reference or URL is unusable (never the value)."""
    spec = config.backend
    if not isinstance(spec, RedisBackend):
        return MemoryQueue(
            config.tunnels,
            queue_max=config.queue_max,
            client_seen_grace_s=config.client_seen_grace_s,
            session_ttl_s=config.session_ttl_s,
        )
    try:
        url = resolve(spec.url).reveal()
    except SecretError as exc:
        raise RelayConfigError(source, "$.backend.url", str(exc)) from None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise RelayConfigError(source, "$.backend.url", "expected a redis://, rediss:// or unix:// URL")
    from gateway.relay.redis_queue import RedisQueue  # only relays that use Redis load the client

    try:
        return RedisQueue(
            config.tunnels,
            url=url,
            spec=spec,
            queue_max=config.queue_max,
            client_seen_grace_s=config.client_seen_grace_s,
            session_ttl_s=config.session_ttl_s,
        )
    except ValueError:
        raise RelayConfigError(source, "$.backend.url", "not a valid Redis URL") from None


def build_relay_app(
    config: RelayConfig,
    credentials: Credentials | None = None,
    *,
    backend: QueueBackend | None = None,
    tracer: RelayTracer = NO_TRACER,
    source: str = "<relay config>",
) -> web.Application:
    """The relay as an aiohttp application: tunnel API, MCP endpoint, OAuth discovery, `/healthz`,
    `/readyz`, `/metrics`.

    `credentials` defaults to resolving the config's secret references now (raising
    RelayConfigError on failure); `backend` defaults to the one `config.backend`
    names. The app owns the backend: starts it on startup, closes it on shutdown. With
    `identity:` it also serves `POST /oauth/token`, its tunnel API accepts the access tokens that
    endpoint issues, and it refreshes the trusted issuers' keys while it runs. Serve it with
    `handler_cancellation=True` (as `Relay` does) so a caller or
    poller that disconnects is noticed at once.
    """
    settings = build_settings(config, credentials, source=source)
    live = LiveSettings(settings)
    identity = settings.identity
    queue = backend or make_backend(config, source=source)
    codec = Codec()
    metrics = RelayMetrics(config.tunnels)
    app = web.Application(
        middlewares=[error_middleware(codec, metrics.observe_rejection)], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
    app[BACKEND] = queue
    app[METRICS] = metrics
    app[READ_TIMEOUT] = config.read_timeout_s
    app[LIVE] = live
    discovery = Discovery(live, queue, codec, metrics)
    app[DISCOVERY] = discovery
    users = UserAuth(config, codec)
    app.cleanup_ctx.append(users.lifetime)
    tunnels = TunnelAPI(live, queue, codec, metrics)
    front = FrontDoor(live, queue, codec, metrics, tracer, discovery, users)
    app.router.add_routes(tunnels.routes())
    app.router.add_routes(front.routes())
    app[LEAN] = LeanServer(
        tunnels,
        front,
        codec,
        max_body_bytes=config.max_body_bytes,
        read_timeout_s=config.read_timeout_s,
        on_error=metrics.observe_rejection,
    )
    app.router.add_routes(discovery.routes())
    app.router.add_routes(OpsEndpoints(queue, metrics).routes())
    console = _console(live, queue, metrics)
    if console is not None:
        app[CONSOLE] = console
        app.router.add_routes(console.routes())
        app.on_shutdown.append(console.close)
    app.on_shutdown.append(_wake_waiters)
    app.cleanup_ctx.append(_backend_lifetime)
    if identity is not None:
        app[IDENTITY] = identity
        app.router.add_routes(TokenEndpoint(live, metrics).routes())
        app.cleanup_ctx.append(_identity_lifetime)
    return app


def _console(live: LiveSettings, backend: QueueBackend, metrics: RelayMetrics) -> ConsoleShell | None:
    """The operator console behind the settings' token gate (None: not served, see `console_gate`)."""
    gate = live.current.console
    if gate is None:
        log.info("relay: the operator console is off (listen is not loopback and ops.token is not set)")
        return None
    source = RelayStatusSource(live, backend, metrics)
    return ConsoleShell(gate, source.encoded)


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
        tracer: RelayTracer = NO_TRACER,
        source: str = "<relay config>",
    ) -> None:
        """`source` names the file in configuration errors (at start and on `reload`)."""
        self._config = config
        self._source = source
        self._credentials = credentials
        self._backend = backend
        self._tracer = tracer
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._serves: Callable[[], asyncio.Protocol] | None = None
        """What serves one accepted connection (set by `start`)."""
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

    async def problems(self) -> dict[str, str]:
        """What keeps the relay from serving (empty when it can): `/readyz`'s check, in words."""
        if self._runner is None:
            return {"relay": "not started"}
        if not await self._runner.app[BACKEND].ready():
            return {"queue_backend": "unreachable"}
        return {}

    def serve_connection(self) -> asyncio.Protocol:
        """A protocol for one new connection, as the listener makes for an accepted socket (the lean
        layer's, or aiohttp's with `access_log`): the embedded relay's in-process link
        (`tunnel/memory_link.py`) serves its gateway's polls and responses with it. ConnectionRefusedError
        when the relay is not serving (not started, or closed), as its closed listener would refuse."""
        if self._serves is None or self._runner is None:
            raise ConnectionRefusedError("the relay is not serving")
        return self._serves()

    def url_for(self, tunnel_id: str, channel: str | None = None) -> str:
        """The MCP endpoint URL of a tunnel (channel `main` when None)."""
        url = f"{self.url}/v1/mcp/{quote(tunnel_id, safe='')}"
        return url if channel is None else f"{url}/{check_channel(channel)}"

    def reload(self, config: RelayConfig, credentials: Credentials | None = None) -> str | None:
        """Apply `config` to the running relay without closing the listener, a connection, a waiting
        poll or a waiting caller: None when applied, otherwise why not (the running settings stay).

        Refused when it changes what takes effect on restart only (`gateway.relay.reload`) or a secret
        reference does not resolve (the file, the key, what was expected). Its settings are built
        whole first, then swapped in one assignment: a request already admitted keeps the old ones.
        Tunnels added are served from then on; a tunnel removed is refused, its waiting polls answer
        with nothing and its waiting callers with 404 (`TunnelRemoved`).
        `credentials`: the tunnels' secrets already resolved (the embedded relay's), instead of `config`'s."""
        if self._runner is None:
            raise RuntimeError("the relay is not started")
        app = self._runner.app
        keys = restart_keys(self._config, config)
        if keys:
            return rejection(keys)
        try:
            identity = None
            if config.identity is not None:  # the issuers' key caches are the running ones (same sources)
                identity = Identity(config.identity, source=self._source, keys_of=app.get(IDENTITY))
            settings = build_settings(config, credentials, identity=identity, source=self._source)
        except RelayConfigError as exc:
            return str(exc)
        served, serving = config.tunnels.keys(), app[LIVE].current.config.tunnels.keys()
        app[BACKEND].serve_tunnels(served)  # a tunnel added is served before the new settings admit it
        app[METRICS].serve_tunnels(served)
        app[DISCOVERY].serve_tunnels(served)
        app[LIVE].current = settings
        for verb, tunnels in (("added", served - serving), ("removed", serving - served)):
            if tunnels:
                log.info("relay: tunnel(s) %s: %s", verb, ", ".join(sorted(tunnels)))
        console = app.get(CONSOLE)
        if console is not None and settings.console is not None:  # served before and after (reload)
            console.gate = settings.console
        return None

    async def start(self) -> str:
        """Bind and serve; returns the base URL, e.g. `http://127.0.0.1:8780`."""
        if self._runner is not None:
            raise RuntimeError("the relay is already started")
        host, port = parse_listen(self._config.listen)
        app = build_relay_app(
            self._config, self._credentials, backend=self._backend, tracer=self._tracer, source=self._source
        )
        # The lean layer serves the hot routes and hands every other request's connection to aiohttp;
        # with `access_log` on, aiohttp serves everything (its access log sees every request).
        lean = None if self._config.access_log else app[LEAN]
        if lean is not None:
            app.on_shutdown.append(lambda _: lean.shutdown(SHUTDOWN_TIMEOUT_S))  # after _wake_waiters
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            access_log=logging.getLogger("aiohttp.access") if self._config.access_log else None,
            logger=ServerLog(logging.getLogger("aiohttp.server")),
            keepalive_timeout=self._config.read_timeout_s,  # bounds a request's headers too
        )
        await runner.setup()
        assert runner.server is not None  # set up above
        self._serves = lean if lean is not None else runner.server
        try:
            if lean is None:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound_port = runner.addresses[0][1]
            else:
                lean.fallback = runner.server
                self._listener = await asyncio.get_running_loop().create_server(lean, host, port, backlog=128)
                bound_port = self._listener.sockets[0].getsockname()[1]
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._url = f"http://{_url_host(host)}:{bound_port}"
        log.info("relay listening on %s (%d tunnels)", self._url, len(self._config.tunnels))
        return self._url

    async def close(self) -> None:
        runner, self._runner, self._url, self._serves = self._runner, None, None, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # no new connections; the open ones close in the app's on_shutdown
        if runner is not None:
            await runner.cleanup()
        if listener is not None:
            await listener.wait_closed()

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
    config: RelayConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[str], object] | None = None,
    watch: Callable[[Relay], Coroutine[object, object, None]] | None = None,
    tracer: RelayTracer = NO_TRACER,
    source: str = "<relay config>",
) -> None:
    """Run a relay until `stop` is set (the CLI's `gateway relay --config relay.yaml`).

    Secrets are resolved on start (RelayConfigError names `source`, the file, and the key on failure);
    `on_ready(base_url)` is called once the socket is bound; `watch(relay)` runs while the relay
    serves (the CLI's readiness announcements, reading `relay.problems()`, and its `SIGHUP` reloads
    through `relay.reload`), cancelled at the stop.
    """
    async with Relay(config, tracer=tracer, source=source) as relay:
        if on_ready is not None:
            on_ready(relay.url)
        if watch is None:
            await stop.wait()
            return
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch(relay))
            await stop.wait()
            watcher.cancel()
