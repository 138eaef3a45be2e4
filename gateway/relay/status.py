"""The relay's `/api/status` for the operator console: tunnels (queue depth and age, callers
waiting), the gateways that polled this replica, and error answers by code. Reads the backend and
the replica's counters; changes nothing.
"""

from __future__ import annotations

import time

import msgspec

from gateway import __version__
from gateway.protocol.readiness import StatusHead
from gateway.relay.errors import BackendUnavailable, TunnelNotFound
from gateway.relay.ops import RelayMetrics
from gateway.relay.queue import QueueBackend
from gateway.relay.settings import LiveSettings


class TunnelRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str | None
    gateway_seen: bool
    """Some gateway polled within `client_seen_grace_s` (any replica, with Redis)."""
    queued: int
    oldest_queued_s: float | None
    in_flight: int
    polls_waiting: int
    callers_waiting: int
    """MCP callers on this replica waiting for their answer."""


class GatewayRow(msgspec.Struct, frozen=True, kw_only=True):
    tunnel: str
    instance_id: str
    name: str | None
    version: str | None
    last_poll_age_s: float
    polls: int


class RelayStatus(StatusHead, frozen=True, kw_only=True):
    """`GET /api/status` of a relay (this replica's view)."""

    kind: str = "relay"
    tunnels: list[TunnelRow]
    gateways: list[GatewayRow]
    rejections: dict[str, int]


class RelayStatusSource:
    """Builds `RelayStatus` from the config, the queue backend and this replica's counters."""

    def __init__(self, live: LiveSettings, backend: QueueBackend, metrics: RelayMetrics) -> None:
        self._live = live
        self._backend = backend
        self._metrics = metrics
        self._started = time.time()
        self._encoder = msgspec.json.Encoder()

    async def snapshot(self) -> RelayStatus:
        now = time.time()
        up = await self._backend.ready()
        tunnels: list[TunnelRow] = []
        config = self._live.current.config  # names as the current settings give them
        for tunnel_id, spec in config.tunnels.items():
            try:
                status = await self._backend.status(tunnel_id) if up else None
            except BackendUnavailable:
                status, up = None, False
            except TunnelNotFound:  # a reload removed it meanwhile
                continue
            tunnels.append(
                TunnelRow(
                    id=tunnel_id,
                    name=spec.name,
                    gateway_seen=bool(status and status.client_seen),
                    queued=status.queued if status else 0,
                    oldest_queued_s=None
                    if status is None or status.oldest_queued_s is None
                    else round(status.oldest_queued_s, 3),
                    in_flight=status.in_flight if status else 0,
                    polls_waiting=status.polls_waiting if status else 0,
                    callers_waiting=self._metrics.callers_waiting(tunnel_id),
                )
            )
        gateways = [
            GatewayRow(
                tunnel=tunnel_id,
                instance_id=seen.instance_id,
                name=seen.name,
                version=seen.version,
                last_poll_age_s=round(max(0.0, now - seen.last_poll), 3),
                polls=seen.polls,
            )
            for tunnel_id in config.tunnels
            for seen in self._metrics.gateways(tunnel_id)
        ]
        return RelayStatus(
            version=__version__,
            time=now,
            started=self._started,
            ready=up,
            not_ready=[] if up else ["queue_backend"],
            tunnels=tunnels,
            gateways=gateways,
            rejections=dict(sorted(self._metrics.rejections.items())),
        )

    async def encoded(self) -> bytes:
        return self._encoder.encode(await self.snapshot())
