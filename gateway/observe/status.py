"""The gateway's `/api/status`: the typed snapshot (`GatewayStatus`) and the collector that builds it
from the running gateway, call figures and the configuration with every secret masked.
Reads the runtime and changes nothing but the observers it chains; imports no opentelemetry.

The parts: the control-plane link, each channel and its servers (up/down, restarts and the last
exit reason, calls in flight, `CallStats` figures), the recent failures, the masked config.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Protocol

import msgspec

from gateway import __version__
from gateway.config import secrets as secret_refs
from gateway.config.base import redact_url
from gateway.config.references import secret_name
from gateway.config.routing import RoutingConfig, ServerSpec
from gateway.observe.callstats import WINDOW_S, CallStats, Failure, WindowFigures
from gateway.observe.hooks import Observed, Telemetry
from gateway.observe.ops import Readiness
from gateway.protocol.mcp import Call, Frame, UpstreamInfo
from gateway.protocol.readiness import StatusHead

MASK: Final = "[REDACTED]"
_HEADER_MAPS: Final = frozenset({"headers"})
"""Maps whose every value may be a secret (HTTP header values)."""


# --------------------------------------------------------------------------- the snapshot


class CredentialStatus(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    """What the credential is (`api_key (env:TUNNEL_API_KEY)`), never its value."""
    state: str
    """`ok`, or the credential's own words (`access token valid for 840s`)."""
    problem: str | None = None


class LinkStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The control-plane link."""

    url: str
    tunnel_id: str
    connected: bool
    """A poll was answered within `ops.ready_poll_age_s`."""
    last_poll_age_s: float | None
    poll_round_trip_s: float | None
    post_latency_s: float | None
    problem: str | None
    errors: dict[str, int]
    credential: CredentialStatus


class ServerStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    transport: str
    up: bool
    era: str | None
    problem: str | None
    restarts: int
    last_exit: str | None
    """Why the server last went down (`exited with status 1: …`), kept after it is back up."""
    inflight: int
    stats: WindowFigures


class ChannelStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    servers: list[ServerStatus]
    stats: WindowFigures
    """Every call of the channel, routed to a server or answered by the gateway."""
    allow_tools: list[str] | None = None
    """The channel's tool allow-list (`channels.NAME.allow_tools`); None: every tool."""


class GatewayStatus(StatusHead, frozen=True, kw_only=True):
    """`GET /api/status` of a gateway."""

    kind: str = "gateway"
    inflight: int
    max_inflight: int
    control_plane: LinkStatus | None
    channels: list[ChannelStatus]
    recent_failures: list[Failure]
    config: dict[str, Any]
    window_s: int
    tenant_allow_tools: dict[str, list[str]] = {}
    """Each tenant's tool allow-list (`tenants.NAME.allow_tools`; `*`: any other tenant)."""


# --------------------------------------------------------------------------- what it reads


class LinkView(Protocol):
    """What the snapshot reads from the control-plane client (`ControlPlane`)."""

    last_poll_ok: float | None
    problem: str | None
    poll_round_trip_s: float | None
    post_latency_s: float | None
    errors: dict[str, int]


class CredentialView(Protocol):
    @property
    def label(self) -> str: ...

    def status(self) -> str | None: ...

    def problem(self) -> str | None: ...


class ServerView(Protocol):
    name: str
    transport: str

    @property
    def ready(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    @property
    def info(self) -> UpstreamInfo | None: ...


class DispatchView(Protocol):
    @property
    def inflight(self) -> int: ...


class StatusRuntime(Protocol):
    """What the snapshot reads from the running gateway (`app.Runtime`), live, so reloads show."""

    @property
    def config(self) -> RoutingConfig: ...

    @property
    def upstreams(self) -> Mapping[str, ServerView]: ...

    @property
    def control_plane(self) -> LinkView: ...

    @property
    def dispatcher(self) -> DispatchView: ...


class _Server:
    """What events told of one server: restarts and why it last went down."""

    __slots__ = ("last_exit", "restarts")

    def __init__(self) -> None:
        self.restarts = 0
        self.last_exit: str | None = None


class StatusCollector:
    """Builds `GatewayStatus`. Owns the call figures (`stats`, a `CallSink`), the per-server event
    counts (chained onto `Upstream.observer` after telemetry's own, never replacing it) and the
    calls in flight per server (counted around telemetry's `exchange`)."""

    def __init__(
        self,
        readiness: Readiness,
        *,
        control_plane_url: str = "",
        tunnel_id: str = "",
        redact: Callable[[str], str] = lambda text: text,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.readiness = readiness
        self.stats = CallStats(clock)
        self.runtime: StatusRuntime | None = None
        self.credential: CredentialView | None = None
        self.control_plane_url = control_plane_url
        self.tunnel_id = tunnel_id
        self._redact = redact
        self._clock = clock
        self._started = clock()
        self._servers: dict[str, _Server] = {}
        self._inflight: dict[str, int] = {}
        self._upstreams: dict[str, Observed] = {}

    # ------------------------------------------------------------------ hooks

    def telemetry(self, inner: Telemetry) -> Telemetry:
        """`inner` with this collector watching upstreams and exchanges through it."""
        return _Watching(inner, self)

    def watch(self, upstreams: Mapping[str, Observed]) -> None:
        """Chain onto each upstream's observer (after telemetry set its own)."""
        self._upstreams = dict(upstreams)
        for name, upstream in upstreams.items():
            self._servers.setdefault(name, _Server())
            previous = upstream.observer
            if isinstance(previous, _Chained) and previous.owner is self:
                previous = previous.inner
            upstream.observer = _Chained(self, previous)

    def upstream_event(self, server: str, event: str) -> None:
        state = self._servers.setdefault(server, _Server())
        upstream = self._upstreams.get(server)
        problem = getattr(upstream, "problem", None) if upstream is not None else None
        if event == "restart":
            state.restarts += 1
        if event in ("restart", "down") and problem:
            state.last_exit = self._redact(problem)

    async def counted(self, server: str, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        self._inflight[server] = self._inflight.get(server, 0) + 1
        try:
            async for frame in frames:
                yield frame
        finally:
            self._inflight[server] -= 1
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()

    # ------------------------------------------------------------------ the snapshot

    def snapshot(self) -> GatewayStatus:
        ready, report = self.readiness.report()
        runtime = self.runtime  # None while the gateway starts: only readiness to tell
        return GatewayStatus(
            version=__version__,
            time=self._clock(),
            started=self._started,
            ready=ready and runtime is not None,
            not_ready=list(report["not_ready"]),
            inflight=runtime.dispatcher.inflight if runtime else 0,
            max_inflight=runtime.config.gateway.max_inflight if runtime else 0,
            control_plane=self._link(runtime) if runtime else None,
            channels=self._channels(runtime) if runtime else [],
            recent_failures=[self._redacted(failure) for failure in self.stats.recent_failures()],
            config=masked_config(runtime.config, self._redact) if runtime else {},
            window_s=WINDOW_S,
            tenant_allow_tools=_tenant_allow_lists(runtime.config) if runtime else {},
        )

    def _redacted(self, failure: Failure) -> Failure:
        """A resource URI can carry a credential (`?token=`): names pass the log redactor."""
        if failure.name is None:
            return failure
        return msgspec.structs.replace(failure, name=self._redact(failure.name))

    def _channels(self, runtime: StatusRuntime) -> list[ChannelStatus]:
        return [
            ChannelStatus(
                name=name,
                servers=[self._server(runtime, name, member) for member in members],
                stats=self.stats.figures(name),
                allow_tools=_channel_allow_list(runtime.config, name),
            )
            for name, members in runtime.config.channels.items()
        ]

    def _link(self, runtime: StatusRuntime) -> LinkStatus:
        link = runtime.control_plane
        loop_age = self.readiness.poll_age()
        credential = self.credential
        label, state, problem = "none", "missing", None
        if credential is not None:
            label, problem = credential.label, credential.problem()
            state = credential.status() or "ok"
        return LinkStatus(
            url=redact_url(self.control_plane_url),
            tunnel_id=self.tunnel_id,
            connected=loop_age is not None and loop_age <= self.readiness.max_poll_age_s,
            last_poll_age_s=None if loop_age is None else round(loop_age, 3),
            poll_round_trip_s=_rounded(link.poll_round_trip_s),
            post_latency_s=_rounded(link.post_latency_s),
            problem=self._redact(link.problem) if link.problem else None,
            errors=dict(link.errors),
            credential=CredentialStatus(
                label=self._redact(label), state=self._redact(state), problem=self._redact(problem) if problem else None
            ),
        )

    def _server(self, runtime: StatusRuntime, channel: str, name: str) -> ServerStatus:
        upstream = runtime.upstreams.get(name)
        state = self._servers.get(name) or _Server()
        up = bool(upstream is not None and upstream.ready)
        info = upstream.info if upstream is not None else None
        problem = upstream.problem if upstream is not None else "not started"
        return ServerStatus(
            name=name,
            transport=upstream.transport if upstream is not None else "?",
            up=up,
            era=info.era.value if info is not None else None,
            problem=self._redact(problem) if problem and not up else None,
            restarts=state.restarts,
            last_exit=state.last_exit,
            inflight=self._inflight.get(name, 0),
            stats=self.stats.figures(channel, name),
        )


def _channel_allow_list(config: RoutingConfig, channel: str) -> list[str] | None:
    spec = config.channel_specs.get(channel)
    return list(spec.allow_tools) if spec is not None and spec.allow_tools is not None else None


def _tenant_allow_lists(config: RoutingConfig) -> dict[str, list[str]]:
    return {name: list(spec.allow_tools) for name, spec in config.tenants.items() if spec.allow_tools is not None}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class _Chained:
    """An `Upstream.observer` that tells the one it replaced (telemetry's), then the collector."""

    __slots__ = ("inner", "owner")

    def __init__(self, owner: StatusCollector, inner: Callable[[str, str], None] | None) -> None:
        self.owner = owner
        self.inner = inner

    def __call__(self, server: str, event: str) -> None:
        if self.inner is not None:
            self.inner(server, event)
        self.owner.upstream_event(server, event)


_PASSED_ON: Final = (
    "command",
    "describe",
    "post",
    "poll",
    "token_request",
    "post_retry",
    "rate_limit",
    "limit_waiting",
    "budget_alert",
    "call_log",
    "watch_limits",
    "relay_tracer",
    "metrics_data",
    "trace_ids",
    "shutdown",
)
"""The `Telemetry` hooks `_Watching` hands to the telemetry it wraps unchanged."""


class _Watching(Telemetry):
    """Telemetry as given, plus the collector: `watch` chains its observers after telemetry's own,
    `exchange` counts the calls in flight per server. Every other hook is passed on unchanged."""

    def __init__(self, inner: Telemetry, collector: StatusCollector) -> None:
        self._inner = inner
        self._collector = collector
        self.enabled = inner.enabled
        for hook in _PASSED_ON:  # straight to the inner telemetry: no extra frame on the per-command hooks
            setattr(self, hook, getattr(inner, hook))

    def __getattr__(self, name: str) -> Any:  # anything an implementation adds (session hooks)
        return getattr(self._inner, name)

    def exchange(self, upstream: Observed, call: Call, info: UpstreamInfo) -> AsyncIterator[Frame]:
        return self._collector.counted(upstream.name, self._inner.exchange(upstream, call, info))

    def watch(self, upstreams: Mapping[str, Observed], specs: Mapping[str, ServerSpec]) -> None:
        self._inner.watch(upstreams, specs)
        self._collector.watch(upstreams)


# --------------------------------------------------------------------------- the config panel


def masked_config(config: RoutingConfig, redact: Callable[[str], str]) -> dict[str, Any]:
    """The effective configuration as plain data, every secret masked: values of secret-named keys
    and of header maps show only their reference (`env:VAR`, `file:PATH`) or the mask; every other
    string loses URL credentials and passes the log redactor. Generic: a key added to the config
    later appears without a change here."""
    data = msgspec.to_builtins(config)
    masked = _mask(data, redact, secret=False)
    assert isinstance(masked, dict)
    return masked


def _mask(value: Any, redact: Callable[[str], str], *, secret: bool) -> Any:
    if isinstance(value, dict):
        return {
            key: _mask(item, redact, secret=secret or secret_name(str(key)) or _header_map(str(key), item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask(item, redact, secret=secret) for item in value]
    if isinstance(value, str):
        return _masked_string(value) if secret else redact(redact_url(value))
    return value


def _header_map(key: str, item: Any) -> bool:
    return key in _HEADER_MAPS and isinstance(item, dict)


def _masked_string(value: str) -> str:
    """A reference names where the secret lives (kept: it is not the secret); anything else is masked."""
    if value.startswith(("env:", "file:")):
        return secret_refs.describe(value)
    if value.startswith("exec:"):
        return "exec: " + MASK
    return MASK
