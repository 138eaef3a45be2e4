"""The relay's operations endpoints: `/healthz`, `/readyz`, `/metrics` (Prometheus text format).
Knows nothing of Redis itself: queue depth and pending requests come from the backend.

Owns the relay's own counters (poll waits, waiting callers) and their small
hand-written exposition; the backend's figures are shared by every replica when
it is Redis.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Collection, Iterable, Iterator
from typing import Final

import msgspec
from aiohttp import web

from gateway.protocol.headers import CONTENT_TYPE, PROMETHEUS_TEXT
from gateway.relay.errors import BackendUnavailable, TunnelNotFound
from gateway.relay.queue import QueueBackend, TunnelStatus

POLL_WAIT_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0)


class Histogram:
    """A cumulative Prometheus histogram with fixed buckets."""

    def __init__(self, buckets: Iterable[float] = POLL_WAIT_BUCKETS) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> Iterator[str]:
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            yield f'{name}_bucket{{{labels},le="{le}"}} {running}'
        yield f"{name}_sum{{{labels}}} {self.sum!r}"
        yield f"{name}_count{{{labels}}} {running}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


MAX_GATEWAYS: Final = 64
"""Gateway instances remembered per tunnel (the ones that polled most recently)."""
MAX_REJECTION_CODES: Final = 64
_IDENTITY_CHARS: Final = 128
"""A client name, version or instance id is shown cut to this length."""


class GatewaySeen(msgspec.Struct, kw_only=True):
    """A gateway instance that polled this replica, as its v1 identity headers name it."""

    instance_id: str
    name: str | None
    version: str | None
    last_poll: float
    """Wall-clock time of its last poll."""
    polls: int = 0


def _shown(value: str | None) -> str | None:
    """A header value fit to show: printable, bounded."""
    if not value:
        return None
    return "".join(ch for ch in value[:_IDENTITY_CHARS] if ch.isprintable())


class _TunnelMetrics:
    __slots__ = ("callers_waiting", "commands_polled", "gateways", "poll_wait", "polls")

    def __init__(self) -> None:
        self.poll_wait = Histogram()
        self.callers_waiting = 0
        self.polls = 0
        self.commands_polled = 0
        self.gateways: dict[str, GatewaySeen] = {}
        """By instance id, the most recent poller last."""


class _Waiting:
    __slots__ = ("_tunnel",)

    def __init__(self, tunnel: _TunnelMetrics) -> None:
        self._tunnel = tunnel

    def __enter__(self) -> None:
        self._tunnel.callers_waiting += 1

    def __exit__(self, *exc_info: object) -> None:
        self._tunnel.callers_waiting -= 1


class RelayMetrics:
    """This replica's counters, per tunnel."""

    def __init__(self, tunnel_ids: Iterable[str]) -> None:
        self._tunnels = {tunnel_id: _TunnelMetrics() for tunnel_id in tunnel_ids}
        self._exchanges: dict[str, int] = {}
        self.rejections: dict[str, int] = {}
        """Error answers since start, by API error code (or `http_NNN` without one)."""

    def serve_tunnels(self, tunnel_ids: Collection[str]) -> None:
        """A reload: a new tunnel starts from zero, a removed one's counters are dropped."""
        self._tunnels = {tunnel_id: self._tunnels.get(tunnel_id) or _TunnelMetrics() for tunnel_id in tunnel_ids}

    def observe_rejection(self, code: str) -> None:
        """The relay answered an error (`error_middleware`)."""
        if code not in self.rejections and len(self.rejections) >= MAX_REJECTION_CODES:
            code = "other"
        self.rejections[code] = self.rejections.get(code, 0) + 1

    def observe_gateway(self, tunnel_id: str, instance_id: str | None, name: str | None, version: str | None) -> None:
        """A gateway polled: remember who (v1 `X-Tunnel-Client-*` headers), bounded per tunnel."""
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            return
        key = _shown(instance_id) or "(no instance id)"
        seen = tunnel.gateways.pop(key, None)
        if seen is None:
            seen = GatewaySeen(instance_id=key, name=_shown(name), version=_shown(version), last_poll=0.0)
            while len(tunnel.gateways) >= MAX_GATEWAYS:
                tunnel.gateways.pop(next(iter(tunnel.gateways)))
        seen.name, seen.version = _shown(name) or seen.name, _shown(version) or seen.version
        seen.last_poll, seen.polls = time.time(), seen.polls + 1
        tunnel.gateways[key] = seen  # last: the most recent poller

    def gateways(self, tunnel_id: str) -> list[GatewaySeen]:
        tunnel = self._tunnels.get(tunnel_id)
        return list(reversed(tunnel.gateways.values())) if tunnel is not None else []

    def callers_waiting(self, tunnel_id: str) -> int:
        tunnel = self._tunnels.get(tunnel_id)
        return tunnel.callers_waiting if tunnel is not None else 0

    def observe_exchange(self, outcome: str) -> None:
        """One answer of the token endpoint: `issued`, `rate_limited` (over `token_rate_per_s`) or the RFC
        6749 error code."""
        self._exchanges[outcome] = self._exchanges.get(outcome, 0) + 1

    def observe_poll(self, tunnel_id: str, waited_s: float, commands: int) -> None:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is not None:
            tunnel.poll_wait.observe(waited_s)
            tunnel.polls += 1
            tunnel.commands_polled += commands

    def caller_waiting(self, tunnel_id: str) -> contextlib.AbstractContextManager[None]:
        """Counts a caller waiting for its answer while entered (a plain class: no generator per call)."""
        tunnel = self._tunnels.get(tunnel_id)
        return contextlib.nullcontext() if tunnel is None else _Waiting(tunnel)

    async def render(self, backend: QueueBackend) -> str:
        """The exposition text; backend figures are left out (and `relay_backend_up` is 0) when
        the backend cannot be reached."""
        statuses: dict[str, TunnelStatus] = {}
        up = await backend.ready()
        if up:
            try:
                for tunnel_id in list(self._tunnels):  # a reload may change them meanwhile
                    with contextlib.suppress(TunnelNotFound):  # removed meanwhile
                        statuses[tunnel_id] = await backend.status(tunnel_id)
            except BackendUnavailable:
                up, statuses = False, {}
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("relay_backend_up", "gauge", "1 when the queue backend answers (Redis PING), else 0.")
        out.append(f"relay_backend_up {int(up)}")
        gauges = (
            ("relay_queue_depth", "Commands queued and not yet polled (all replicas).", "queued"),
            ("relay_pending_requests", "Commands handed to a gateway, terminal frame not yet posted.", "in_flight"),
            ("relay_polls_waiting", "Gateway long polls waiting on this replica.", "polls_waiting"),
            ("relay_gateway_seen", "1 when some gateway polled recently (tunnel_client_not_seen otherwise).", ""),
        )
        for name, help_text, field in gauges:
            if not statuses:
                continue
            family(name, "gauge", help_text)
            for tunnel_id, status in statuses.items():
                value = int(status.client_seen) if not field else getattr(status, field)
                out.append(f'{name}{{tunnel="{_label(tunnel_id)}"}} {value}')
        family("relay_waiting_callers", "gauge", "MCP callers on this replica waiting for their answer.")
        for tunnel_id, tunnel in self._tunnels.items():
            out.append(f'relay_waiting_callers{{tunnel="{_label(tunnel_id)}"}} {tunnel.callers_waiting}')
        family("relay_polls_total", "counter", "Polls answered by this replica.")
        for tunnel_id, tunnel in self._tunnels.items():
            out.append(f'relay_polls_total{{tunnel="{_label(tunnel_id)}"}} {tunnel.polls}')
        family("relay_commands_polled_total", "counter", "Commands handed out by this replica's polls.")
        for tunnel_id, tunnel in self._tunnels.items():
            out.append(f'relay_commands_polled_total{{tunnel="{_label(tunnel_id)}"}} {tunnel.commands_polled}')
        family("relay_poll_wait_seconds", "histogram", "How long polls waited before their answer.")
        for tunnel_id, tunnel in self._tunnels.items():
            out.extend(tunnel.poll_wait.lines("relay_poll_wait_seconds", f'tunnel="{_label(tunnel_id)}"'))
        if self._exchanges:
            help_text = "Token endpoint answers: issued, rate_limited, or the error code."
            family("relay_token_exchanges_total", "counter", help_text)
            for outcome, count in sorted(self._exchanges.items()):
                out.append(f'relay_token_exchanges_total{{outcome="{_label(outcome)}"}} {count}')
        return "\n".join(out) + "\n"


class OpsEndpoints:
    """`/healthz` (the process serves), `/readyz` (the backend answers), `/metrics`."""

    def __init__(self, backend: QueueBackend, metrics: RelayMetrics) -> None:
        self._backend = backend
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz, allow_head=False),
            web.get("/readyz", self.readyz, allow_head=False),
            web.get("/metrics", self.metrics, allow_head=False),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if await self._backend.ready():
            return web.Response(text="ready")
        return web.Response(status=503, text="queue backend unreachable")

    async def metrics(self, request: web.Request) -> web.Response:
        text = await self._metrics.render(self._backend)
        return web.Response(body=text.encode(), headers={CONTENT_TYPE: PROMETHEUS_TEXT})
