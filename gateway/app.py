"""The gateway runtime: built from a `RoutingConfig` in one provision step, run, drained, closed.
Owns lifetimes and their start/stop order; holds no protocol logic and reads no argv (that is `cli`).

Everything the gateway holds lives here: the HTTP connection pool, upstreams,
channels, the dispatcher, the poll loop, the embedded relay. Cleanup copes with
a half-finished provision.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gateway.channels.aggregate import AggregateChannel
from gateway.channels.channel import Channel, Plan, ServedChannel
from gateway.channels.rules import Router
from gateway.channels.sessions import SessionKeys, SessionStore
from gateway.config import routing as config_module
from gateway.config import secrets as secret_refs
from gateway.config.base import split_listen
from gateway.config.egress import Egress
from gateway.config.identity import WorkloadIdentitySpec, token_endpoint_egress, workload_identity_from_env
from gateway.config.routing import EmbeddedRelaySpec, OpsSpec, RoutingConfig, ServerSpec, channel_spec
from gateway.dispatch.admin import AdminControls
from gateway.dispatch.dispatcher import Dispatcher
from gateway.dispatch.limits import Limits
from gateway.observe.console import GatewayConsole
from gateway.observe.hooks import NOOP, Telemetry
from gateway.observe.logtail import LogRing
from gateway.observe.ops import OpsServer, Readiness
from gateway.observe.status import StatusCollector
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import ConfigError
from gateway.protocol.wire import Codec, server_info_header
from gateway.relay import Relay, RelayConfig, TunnelCredentials, TunnelSpec
from gateway.relay.webconsole import served
from gateway.tunnel import memory_link
from gateway.tunnel.client import ControlPlane, Identity, Poller
from gateway.tunnel.credentials import ApiKey, Credential
from gateway.tunnel.http1 import Dial
from gateway.tunnel.subject_tokens import subject_source
from gateway.tunnel.workload_identity import ExchangeSettings, WorkloadIdentity
from gateway.upstream import open_files
from gateway.upstream.base import Upstream
from gateway.upstream.egress import egress
from gateway.upstream.environment import ChildEnvironment
from gateway.upstream.http import HttpUpstream
from gateway.upstream.http_headers import sendable_header
from gateway.upstream.pool import Bounded, ClientProcesses, StdioPool
from gateway.upstream.service_credentials import service_credentials
from gateway.upstream.stdio import StdioUpstream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line settings that win over routing.yaml."""

    control_plane: str | None = None
    tunnel_id: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteControlPlane:
    """Where to poll and with what: an API key, or workload identity (ids resolved already)."""

    url: str
    tunnel_id: str
    api_key: ApiKey | None = None
    identity: WorkloadIdentitySpec | None = None
    exchange: ExchangeSettings | None = None


IDENTITY_KEY = "control_plane.workload_identity"


@dataclass(slots=True)
class Endpoint:
    """Where MCP clients connect when the relay is embedded."""

    urls: dict[str, str]
    token_required: bool
    """Clients must send the configured `relay.client_token` (never printed: it is a secret)."""


@dataclass(slots=True)
class Runtime:
    """Everything a running gateway holds; built by `provision`, servers and channels swapped by `reload`."""

    config: RoutingConfig
    routes_file: Path
    bridge: Bridge
    http: aiohttp.ClientSession
    upstreams: dict[str, Upstream]
    channels: dict[str, ServedChannel]
    dispatcher: Dispatcher
    poller: Poller
    control_plane: ControlPlane
    endpoint: Endpoint | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    telemetry: Telemetry = NOOP
    readiness: Readiness | None = None
    ops: OpsServer | None = None
    session_keys: SessionKeys = field(default_factory=SessionKeys.random)
    admin: AdminControls | None = None
    embedded: EmbeddedRelay | None = None
    """The relay this process runs (no `control_plane:`); its `relay:` section reloads with the file."""
    learn_secrets: Callable[[RoutingConfig], None] | None = None
    """Told each file a reload read, before anything of it starts (the log redactor learns its secrets)."""
    learn_secret: Callable[[str], None] | None = None
    """Told each secret obtained while running (a token a server's service credential obtains)."""

    async def reload(self) -> bool:
        """Read routing.yaml again and serve its servers and channels; False (old config kept) when it is bad.

        Unchanged servers keep their connections and processes; new or changed ones
        are started before the swap; replaced ones are closed once the calls they
        are running have finished (bounded by the drain timeout). Changed `audit:` and
        `budgets:` apply too (`dispatch.admin`: unchanged budgets keep their counts).
        """
        try:
            new = config_module.load(self.routes_file)
        except ConfigError as exc:
            log.error("reload rejected, the running configuration keeps serving: %s", exc)
            return False
        if self.learn_secrets is not None:  # a new server's first stderr line may already name one
            self.learn_secrets(new)
        old = self.config
        relay_changed = self.embedded is not None and new.relay != self.embedded.spec
        if (new.control_plane, new.gateway) != (old.control_plane, old.gateway) or (
            new.relay != old.relay and self.embedded is None
        ):
            log.warning("reload: control_plane, relay and gateway settings take effect on restart only")
        token: secret_refs.Secret | None = None
        if relay_changed:  # its secret is resolved before anything changes: one that does not rejects the reload
            try:
                token = EmbeddedRelay.client_token(new.relay, self.routes_file)
            except ConfigError as exc:
                log.error("reload rejected, the running configuration keeps serving: %s", exc)
                return False
        kept = {
            name: upstream
            for name, upstream in self.upstreams.items()
            if name in used_servers(new) and new.servers[name] == old.servers.get(name)
        }
        try:
            started = await _start_upstreams(
                new,
                sorted(used_servers(new) - kept.keys()),
                self.bridge,
                self.http,
                self.routes_file,
                telemetry=self.telemetry,
                learn_secret=self.learn_secret,
            )
        except ConfigError as exc:
            log.error("reload rejected, the running configuration keeps serving: %s", exc)
            return False
        upstreams = {**kept, **started}
        self.telemetry.watch(upstreams, new.servers)
        try:
            keys = self.session_keys if new.sessions == old.sessions else _session_keys(new, self.routes_file)
            admin = self.admin.prepare(new, old) if self.admin is not None else None
        except ConfigError as exc:
            log.error("reload rejected, the running configuration keeps serving: %s", exc)
            await asyncio.gather(*(upstream.close() for upstream in started.values()), return_exceptions=True)
            return False
        self.session_keys = keys
        budgets = await self.admin.apply(admin) if self.admin is not None and admin is not None else None
        channels = _channels(new, upstreams, self.bridge, keys, previous=self.channels, telemetry=self.telemetry)
        retired_channels = [channel for name, channel in self.channels.items() if channels.get(name) is not channel]
        retired = [upstream for name, upstream in self.upstreams.items() if upstreams.get(name) is not upstream]
        limits = Limits(new.limits, on_wait=self.telemetry.limit_waiting) if new.limits != old.limits else None
        self.dispatcher.replace_channels(channels, limits, budgets)
        if relay_changed:
            self._reload_relay(new.relay, token)
        self.control_plane.declare(server_info_header(_affinity(new)))
        self.config, self.upstreams, self.channels = new, upstreams, channels
        self.tasks.append(asyncio.create_task(self._retire(retired_channels, retired), name="retire-upstreams"))
        log.info("reloaded %s: %d servers, %d channels", self.routes_file, len(upstreams), len(channels))
        return True

    def _reload_relay(self, new: EmbeddedRelaySpec, token: secret_refs.Secret | None) -> None:
        """The embedded relay takes the new `relay:` section, or keeps its own (logged, with why)."""
        assert self.embedded is not None
        refused = self.embedded.reload(new, token)
        if refused is not None:
            log.warning("reload: the embedded relay keeps its running settings: %s", refused)
            return
        if self.endpoint is not None:
            self.endpoint.token_required = new.client_token is not None
        log.info("reload: the embedded relay applied the new relay section")

    async def _retire(self, channels: list[ServedChannel], upstreams: list[Upstream]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.gateway.drain_timeout_s):
                await asyncio.gather(*(channel.wait_idle() for channel in channels))
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)
        await asyncio.gather(*(upstream.close() for upstream in upstreams), return_exceptions=True)

    async def close(self) -> None:
        """Stop the upstreams (and any retirement still waiting)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in self.channels.values()), return_exceptions=True)
        await asyncio.gather(*(upstream.close() for upstream in self.upstreams.values()), return_exceptions=True)


def used_servers(config: RoutingConfig) -> set[str]:
    used = {member for members in config.channels.values() for member in members}
    return used | {route.to for route in config.routes if route.to is not None}


def _affinity(config: RoutingConfig) -> dict[str, bool]:
    """Channels whose session state lives in this process: a one-server stdio channel (its sessions are
    in memory), an aggregated channel with a `session: per-client` server (the client's process).
    Other aggregated channels carry their sessions in the session id: any replica can serve them."""
    router = Router.for_config(config)
    return {
        name: any(config.servers[member].session == "per-client" for member in members)
        if _aggregated(config, name, router)
        else config.servers[members[0]].stdio is not None
        for name, members in config.channels.items()
    }


def _session_keys(config: RoutingConfig, routes_file: Path) -> SessionKeys:
    return SessionKeys.from_spec(config.sessions, file=str(routes_file), base=routes_file.parent)


def _channels(
    config: RoutingConfig,
    upstreams: dict[str, Upstream],
    bridge: Bridge,
    keys: SessionKeys,
    previous: dict[str, ServedChannel] | None = None,
    *,
    telemetry: Telemetry = NOOP,
) -> dict[str, ServedChannel]:
    """Channels over the upstreams; an unchanged channel keeps its object (and its sessions).

    A channel of one server is a passthrough `Channel`; several servers, channel
    options, `to`/`deny` routing rules or a `session: per-client` server make it
    an `AggregateChannel` (started here: it watches its servers for list changes)."""
    router = Router.for_config(config)
    channels: dict[str, ServedChannel] = {}
    for name, members in config.channels.items():
        old = (previous or {}).get(name)
        sessions = (keys, config.sessions.ttl_s)
        if not _aggregated(config, name, router):
            upstream = upstreams[members[0]]
            if old is not None and old.plan == Plan((upstream,), sessions):
                channels[name] = old
                continue
            own = SessionStore(keys, name, ttl_s=config.sessions.ttl_s)
            channels[name] = Channel(name, upstream, bridge, own, telemetry=telemetry, router=router)
            continue
        spec = channel_spec(config, name)
        targets = router.targets(name)
        used = {server: upstreams[server] for server in [*spec.servers, *targets]}
        if old is not None and old.plan == Plan(tuple(used.values()), sessions, (spec, router.specs)):
            channels[name] = old
            continue
        store = SessionStore(keys, name, ttl_s=config.sessions.ttl_s)
        channel = AggregateChannel(name, spec, used, bridge, router, store, targets=targets, telemetry=telemetry)
        channel.start()
        channels[name] = channel
    return channels


def _aggregated(config: RoutingConfig, name: str, router: Router) -> bool:
    spec = channel_spec(config, name)
    return (
        len(spec.servers) > 1
        or spec != type(spec)(servers=spec.servers)
        or router.reshapes(name)
        or any(config.servers[server].session == "per-client" for server in spec.servers)
    )


async def _start_upstreams(
    config: RoutingConfig,
    names: list[str],
    bridge: Bridge,
    http: aiohttp.ClientSession,
    routes_file: Path,
    *,
    telemetry: Telemetry = NOOP,
    learn_secret: Callable[[str], None] | None = None,
) -> dict[str, Upstream]:
    # Every server the configuration uses (kept ones too) holds descriptors: fit them before spawning any.
    open_files.ensure((config.servers[name] for name in used_servers(config)), str(routes_file))
    upstreams = {
        name: build_upstream(
            name,
            config.servers[name],
            bridge=bridge,
            http=http,
            config=config,
            file=str(routes_file),
            base=routes_file.parent,
            telemetry=telemetry,
            learn_secret=learn_secret,
        )
        for name in names
    }
    await asyncio.gather(*(upstream.start() for upstream in upstreams.values()), return_exceptions=True)
    for name, upstream in upstreams.items():
        state = f"up ({upstream.info.era.value} era)" if upstream.info else "NOT ready"
        if upstream.ready and upstream.needs_authorization:
            state = "up, requires authorization (its era is learned from the first authorized call)"
        log.info("server %r: %s", name, state)
    return upstreams


def build_upstream(
    name: str,
    spec: ServerSpec,
    *,
    bridge: Bridge,
    http: aiohttp.ClientSession,
    config: RoutingConfig,
    file: str,
    base: Path,
    telemetry: Telemetry = NOOP,
    learn_secret: Callable[[str], None] | None = None,
) -> Upstream:
    """The server's transport; `telemetry` hears of its service-credential token requests, `learn_secret`
    (the log redactor) of each token they obtain."""
    limit = config.gateway.max_message_bytes
    if spec.stdio is not None:
        key = f"servers.{name}.stdio"
        environment = ChildEnvironment.for_program(spec.stdio, config, file=file, key=key, base=base)
        upstream = _stdio_upstream(name, spec, bridge, limit, environment)
        return Bounded(upstream, spec.max_concurrency) if spec.max_concurrency else upstream
    assert spec.http is not None
    spawned = None
    if spec.http.spawn is not None:
        key = f"servers.{name}.http.spawn"
        spawned = ChildEnvironment.for_program(spec.http.spawn, config, file=file, key=key, base=base)
    try:
        headers = {
            k: secret_refs.resolve(v, base=base).reveal() if _is_ref(v) else v for k, v in spec.http.headers.items()
        }
    except secret_refs.SecretError as exc:
        raise ConfigError(file, f"servers.{name}.http.headers", f"resolvable secrets ({exc})") from None
    if not all(sendable_header(k, v) for k, v in headers.items()):
        # Neither the name nor the value is echoed: the value may be a secret.
        expected = "header names that are HTTP tokens and values without line breaks or control characters"
        raise ConfigError(file, f"servers.{name}.http.headers", expected)
    http_upstream = HttpUpstream(
        name,
        spec.http,
        session=http,
        bridge=bridge,
        max_message_bytes=limit,
        extra_headers=headers,
        ready_timeout_s=spec.startup_timeout_s,
        request_timeout_s=spec.request_timeout_s,
        egress=egress(spec.http.url, spec.http, file=file, key=f"servers.{name}.http", base=base),
        reprobe_max_s=spec.restart_backoff_max_s,
        service_credentials=service_credentials(
            name, spec.http, session=http, file=file, base=base, telemetry=telemetry, learn_secret=learn_secret
        ),
        environment=spawned,
    )
    return Bounded(http_upstream, spec.max_concurrency) if spec.max_concurrency else http_upstream


def _stdio_upstream(name: str, spec: ServerSpec, bridge: Bridge, limit: int, environment: ChildEnvironment) -> Upstream:
    """One process, a pool of them (`processes`), or one per client session (`session: per-client`)."""

    def process() -> StdioUpstream:
        return StdioUpstream(name, spec, bridge=bridge, max_message_bytes=limit, environment=environment)

    if spec.session == "per-client":
        return ClientProcesses(process(), process, max_sessions=spec.max_sessions, idle_timeout_s=spec.idle_timeout_s)
    if spec.processes > 1:
        return StdioPool(name, [process() for _ in range(spec.processes)], bridge.codec)
    return process()


def _is_ref(value: str) -> bool:
    return value.startswith(("env:", "file:"))


@contextlib.asynccontextmanager
async def provision(
    config: RoutingConfig,
    *,
    routes_file: Path,
    overrides: Overrides,
    telemetry: Telemetry = NOOP,
    log_tail: LogRing | None = None,
    redact: Callable[[str], str] | None = None,
    learn_secret: Callable[[str], None] | None = None,
) -> AsyncIterator[Runtime]:
    """Build and start the runtime; on exit stop polling, drain, and close in reverse order.

    `telemetry` belongs to the caller (the CLI shuts it down after the loop ends); the
    ops listener, when configured, answers from the start (`/readyz`: starting) and serves the
    operator console (its log tail is `log_tail`; `redact` masks secrets in what it shows).
    `learn_secret` (the log redactor's) is told every secret obtained or made while running: access
    tokens, subject tokens, the embedded relay's gateway key."""
    codec = Codec()
    bridge = Bridge(codec)
    base = routes_file.parent
    file = str(routes_file)
    embedded = config.control_plane is None and overrides.control_plane is None
    remote = None if embedded else remote_control_plane(config, overrides, routes_file)  # fail before spawning
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        )
        ops: OpsServer | None = None
        max_age = (config.ops.ready_poll_age_s if config.ops else None) or config.gateway.poll_timeout_ms / 1000 + 15
        readiness = Readiness(max_poll_age_s=max_age)
        status: StatusCollector | None = None
        if config.ops is not None:
            console = None
            token = _ops_token(config.ops, routes_file)
            if served(split_listen(config.ops.listen)[0], token):
                status = StatusCollector(readiness, redact=redact or (lambda text: text))
                telemetry = status.telemetry(telemetry)  # the console watches upstreams through it
                console = GatewayConsole(status, log_tail, token)
            else:
                log.info("ops: the operator console is off (ops.listen is not loopback and ops.token is not set)")
            ops = OpsServer(config.ops.listen, readiness, telemetry, console)
            await ops.start()
            stack.push_async_callback(ops.close)
        upstreams: dict[str, Upstream] = {}
        runtime_ref: list[Runtime] = []
        credential: Credential | None = None
        if remote is not None and remote.identity is not None:
            # The first exchange runs while the servers start.
            credential = workload_identity_credential(
                remote, config, http, file=file, base=base, telemetry=telemetry, learn_secret=learn_secret
            )
            stack.push_async_callback(credential.close)
            credential.start()
        elif remote is not None:
            credential = remote.api_key

        async def close_upstreams() -> None:  # whatever is current at exit, after any reloads
            if runtime_ref:
                await runtime_ref[0].close()
            else:
                await asyncio.gather(*(u.close() for u in upstreams.values()), return_exceptions=True)

        stack.push_async_callback(close_upstreams)
        names = sorted(used_servers(config))
        upstreams.update(
            await _start_upstreams(
                config, names, bridge, http, routes_file, telemetry=telemetry, learn_secret=learn_secret
            )
        )
        telemetry.watch(upstreams, config.servers)
        session_keys = _session_keys(config, routes_file)
        channels = _channels(config, upstreams, bridge, session_keys, telemetry=telemetry)
        identity = Identity.new(server_info_header(_affinity(config)))

        endpoint: Endpoint | None = None
        own_relay: EmbeddedRelay | None = None
        if remote is None:
            own_relay, endpoint = await EmbeddedRelay.start(config, routes_file, telemetry)
            relay, key = own_relay.relay, own_relay.key
            if learn_secret is not None:
                learn_secret(key.reveal())
            stack.push_async_callback(relay.close)
            cp_url, tunnel_id, credential, cp_egress = relay.url, config.relay.tunnel_id, ApiKey(key.reveal()), None
            dial: Dial | None = functools.partial(memory_link.connect, server_factory=relay.serve_connection)
        else:
            dial = None
            cp_url, tunnel_id = remote.url, remote.tunnel_id
            cp_spec = config.control_plane or Egress()
            cp_egress = egress(cp_url, cp_spec, file=file, key="control_plane", base=base)
        assert credential is not None
        readiness.credentials = credential
        control_plane = ControlPlane(
            http, cp_url, tunnel_id, credential, identity, codec, cp_egress, telemetry=telemetry, dial=dial
        )
        stack.callback(control_plane.close)

        limits = Limits(config.limits, on_wait=telemetry.limit_waiting)
        admin = AdminControls.open(config, routes_file, http, telemetry)
        stack.push_async_callback(admin.close)  # after the dispatcher's: the last records are written
        dispatcher = Dispatcher(
            channels,
            control_plane,
            codec,
            config.gateway.max_inflight,
            limits,
            telemetry,
            tunnel=tunnel_id,
            records=admin.records,
            budgets=admin.budgets,
        )
        stack.push_async_callback(dispatcher.close)
        if status is not None:
            dispatcher.records.add(status.stats)
            status.control_plane_url, status.tunnel_id, status.credential = cp_url, tunnel_id, credential
        telemetry.watch_limits(dispatcher.limit_counts)
        poller = Poller(
            control_plane,
            dispatcher,
            codec,
            config.gateway.poll_timeout_ms,
            polls=config.gateway.polls_in_flight,
            telemetry=telemetry,
        )
        runtime = Runtime(
            config, routes_file, bridge, http, upstreams, channels, dispatcher, poller, control_plane, endpoint
        )
        runtime.telemetry, runtime.ops, runtime.session_keys, runtime.admin = telemetry, ops, session_keys, admin
        runtime.embedded, runtime.learn_secret = own_relay, learn_secret
        runtime.readiness, readiness.runtime = readiness, runtime
        if status is not None:
            status.runtime = runtime
        runtime_ref.append(runtime)
        poll_task = asyncio.create_task(poller.run(), name="poller")
        runtime.tasks.append(poll_task)
        try:
            yield runtime
        finally:
            poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll_task
            for channel in runtime.channels.values():
                channel.end_streams()  # open `subscriptions/listen` streams end now, gracefully
            await dispatcher.drain(config.gateway.drain_timeout_s)


def _ops_token(spec: OpsSpec, routes_file: Path) -> str | None:
    if spec.token is None:
        return None
    try:
        return secret_refs.resolve(spec.token, base=routes_file.parent).reveal()
    except secret_refs.SecretError as exc:
        raise ConfigError(str(routes_file), "ops.token", f"a resolvable secret ({exc})") from None


@dataclass(slots=True)
class EmbeddedRelay:
    """The relay a gateway starts in its own process when routing.yaml names no control plane."""

    relay: Relay
    key: secret_refs.Secret
    """The gateway key: random, made at start, known only to this process."""
    spec: EmbeddedRelaySpec
    """The `relay:` section it runs (what a reload compares with, not the file's last reading)."""

    @staticmethod
    def client_token(spec: EmbeddedRelaySpec, routes_file: Path) -> secret_refs.Secret | None:
        """`relay.client_token` resolved (None: none set); ConfigError names the key when it does not resolve."""
        try:
            return secret_refs.resolve(spec.client_token, base=routes_file.parent) if spec.client_token else None
        except secret_refs.SecretError as exc:
            raise ConfigError(str(routes_file), "relay.client_token", f"a resolvable secret ({exc})") from None

    @staticmethod
    def settings(
        spec: EmbeddedRelaySpec, key: secret_refs.Secret, token: secret_refs.Secret | None
    ) -> tuple[RelayConfig, dict[str, TunnelCredentials]]:
        """The relay's configuration and credentials for `relay:`, its client token resolved."""
        config = RelayConfig(
            listen=spec.listen,
            public_url=spec.public_url,
            tunnels={
                spec.tunnel_id: TunnelSpec(
                    gateway_key=key.source, name="embedded", description="relay embedded in the gateway process"
                )
            },
        )
        return config, {spec.tunnel_id: TunnelCredentials(key, (token,) if token else ())}

    @classmethod
    async def start(
        cls, config: RoutingConfig, routes_file: Path, telemetry: Telemetry
    ) -> tuple[EmbeddedRelay, Endpoint]:
        """Start the loopback relay with a fresh gateway key."""
        spec = config.relay
        key = secret_refs.Secret(secrets.token_urlsafe(32), "embedded relay key")
        relay_config, credentials = cls.settings(spec, key, cls.client_token(spec, routes_file))
        relay = Relay(relay_config, credentials, tracer=telemetry.relay_tracer())
        await relay.start()
        urls = {channel: relay.url_for(spec.tunnel_id, channel) for channel in config.channels}
        return cls(relay, key, spec), Endpoint(urls, token_required=spec.client_token is not None)

    def reload(self, new: EmbeddedRelaySpec, token: secret_refs.Secret | None) -> str | None:
        """Apply a changed `relay:` section (its `client_token`, resolved as `token`, and `public_url`); None
        when applied, else why not. `listen` and `tunnel_id` take effect on restart only: a change to them
        is refused, naming them."""
        fixed = [f"relay.{key}" for key in ("listen", "tunnel_id") if getattr(self.spec, key) != getattr(new, key)]
        if fixed:
            return f"{' and '.join(fixed)} take{'s' if len(fixed) == 1 else ''} effect on restart only"
        config, credentials = self.settings(new, self.key, token)
        refused = self.relay.reload(config, credentials)
        if refused is None:
            self.spec = new
        return refused


def remote_control_plane(config: RoutingConfig, overrides: Overrides, routes_file: Path) -> RemoteControlPlane:
    """The control plane and its credential: `api_key`, `workload_identity`, else the environment
    (the OPENAI_IDENTITY_* variables turn workload identity on; TUNNEL_API_KEY is the key)."""
    spec, file, base = config.control_plane, str(routes_file), routes_file.parent
    url = overrides.control_plane or (spec.url if spec else None)
    tunnel_id = overrides.tunnel_id or (spec.tunnel_id if spec else None)
    if not url or not tunnel_id:
        raise ConfigError(file, "control_plane", "both `url` and `tunnel_id` (or --control-plane and --tunnel-id)")
    identity = spec.workload_identity if spec else None
    if identity is None and not (spec and spec.api_key):
        identity = workload_identity_from_env(os.environ, file)
        if identity is not None and os.environ.get("TUNNEL_API_KEY"):
            expected = "TUNNEL_API_KEY or the OPENAI_IDENTITY_* variables (workload identity), not both"
            raise ConfigError(file, "control_plane (environment)", expected)
    if identity is not None:
        exchange = ExchangeSettings.resolve(identity, file=file, base=base, key=IDENTITY_KEY)
        return RemoteControlPlane(url, tunnel_id, identity=identity, exchange=exchange)
    ref = spec.api_key if spec and spec.api_key else "env:TUNNEL_API_KEY"
    if ref == "env:TUNNEL_API_KEY" and not os.environ.get("TUNNEL_API_KEY"):
        expected = (
            "an API key (or the TUNNEL_API_KEY variable), or workload_identity (or the OPENAI_IDENTITY_* variables)"
        )
        raise ConfigError(file, "control_plane.api_key", expected)
    return RemoteControlPlane(url, tunnel_id, api_key=ApiKey(ref, base=base))


def workload_identity_credential(
    remote: RemoteControlPlane,
    config: RoutingConfig,
    http: aiohttp.ClientSession,
    *,
    file: str,
    base: Path,
    telemetry: Telemetry = NOOP,
    learn_secret: Callable[[str], None] | None = None,
) -> WorkloadIdentity:
    """The workload-identity credential: its subject token source, and the token endpoint reached
    with the control plane's egress settings unless `workload_identity` has its own; each exchange
    told to `telemetry`."""
    spec, settings = remote.identity, remote.exchange
    assert spec is not None
    assert settings is not None
    subject = subject_source(spec.subject_token, spec.provider, session=http, base=base, file=file, key=IDENTITY_KEY)
    spec_egress = token_endpoint_egress(config.control_plane, spec)
    token_egress = egress(settings.token_url, spec_egress, file=file, key=IDENTITY_KEY, base=base)
    return WorkloadIdentity(settings, subject, http, token_egress, telemetry=telemetry, learn_secret=learn_secret)
