"""The ops listener: `/healthz`, `/readyz` and `/metrics` on a local address (`ops.listen`), and the
operator console's routes when it is given them (`gateway.observe.console`).
Reads the runtime and changes nothing; imports no opentelemetry (metric data is read by shape).

Owns readiness (ready only when the control plane answered a poll recently and
every required server is up, a server that wants each client's authorization
counting as up; the body names what is not) and the Prometheus text exposition
of the telemetry's metrics.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec
from aiohttp import web

from gateway.config.base import split_listen
from gateway.config.routing import RoutingConfig
from gateway.observe.hooks import Telemetry
from gateway.protocol.headers import CONTENT_TYPE, JSON, PROMETHEUS_TEXT


class PollClock(Protocol):
    """What readiness reads from the control-plane client (`ControlPlane`)."""

    last_poll_ok: float | None
    """Loop time of the last poll the control plane answered (200 or 204)."""
    problem: str | None
    """Why the last request to the control plane failed (None after a success)."""


class ServerState(Protocol):
    """What readiness reads from one server's transport (`Upstream`)."""

    @property
    def ready(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    @property
    def needs_authorization(self) -> bool:
        """Up, and wanting each client's own credentials (it answered the probe with 401)."""
        ...


class CredentialState(Protocol):
    """What readiness reads from the control-plane credential (an API key, workload identity)."""

    def status(self) -> str | None:
        """The credential's state; None when there is nothing to show (a static key)."""

    def problem(self) -> str | None:
        """Why there is no credential to send; None while there is one."""


class PollLoop(Protocol):
    """What readiness reads from the poll loop (`Poller`)."""

    fault: str | None
    """Why the poll loop is backing off after an unexpected error; None while it runs cleanly."""


class RuntimeView(Protocol):
    """What readiness reads from the running gateway (`app.Runtime`), live, so reloads show at once."""

    @property
    def config(self) -> RoutingConfig: ...

    @property
    def upstreams(self) -> Mapping[str, ServerState]: ...

    @property
    def control_plane(self) -> PollClock: ...

    @property
    def poller(self) -> PollLoop: ...


class ConsoleRoutes(Protocol):
    """The operator console the listener also serves (`gateway.observe.console`)."""

    def routes(self) -> list[web.RouteDef]: ...

    async def close(self) -> None:
        """End open streams before the listener stops."""


class Readiness:
    """Whether the gateway can serve: a credential to send (when it can fail: workload identity),
    a recent successful poll, a poll loop not backing off from an unexpected error, and every
    required server up."""

    def __init__(self, *, max_poll_age_s: float, clock: Callable[[], float] | None = None) -> None:
        self._max_age = max_poll_age_s
        self._clock = clock
        self.runtime: RuntimeView | None = None
        """Set once provisioning has built the runtime; until then the gateway is starting."""
        self.credentials: CredentialState | None = None
        """The control-plane credential, shown as the `credentials` part when it has a status."""

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def max_poll_age_s(self) -> float:
        return self._max_age

    def poll_age(self) -> float | None:
        """Seconds since the control plane last answered a poll; None before the first answer."""
        runtime = self.runtime
        last = runtime.control_plane.last_poll_ok if runtime is not None else None
        return None if last is None else self._now() - last

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): `checks` gives each part's state, `not_ready` lists the failing parts."""
        parts = self._parts()
        checks = {part.name: part.check for part in parts}
        failing = [part.name for part in parts if part.problem is not None]
        ready = not failing
        return ready, {"status": "ready" if ready else "not ready", "not_ready": failing, "checks": checks}

    def problems(self) -> dict[str, str]:
        """Each failing part and why, in words that change only when the cause does (for `waiting:` lines)."""
        return {part.name: part.problem for part in self._parts() if part.problem is not None}

    def _parts(self) -> list[_Part]:
        runtime = self.runtime
        if runtime is None:
            return [_Part("gateway", "starting", "starting")]
        parts: list[_Part] = []
        control_plane = runtime.control_plane
        last, why = control_plane.last_poll_ok, control_plane.problem
        if last is None:
            parts.append(_Part("control_plane", "no successful poll yet", why or "no answer yet"))
        else:
            age = self._now() - last
            if age <= self._max_age:
                parts.append(_Part("control_plane", f"polled {age:.1f}s ago", None))
            else:
                check = f"no successful poll for {age:.1f}s (limit {self._max_age:g}s)"
                parts.append(_Part("control_plane", check, why or f"no successful poll for over {self._max_age:g}s"))
        fault = runtime.poller.fault
        if fault is not None:  # the poll loop itself failed and backs off: that is the news
            parts[-1] = _Part("control_plane", fault, fault)
        status = self.credentials.status() if self.credentials is not None else None
        if self.credentials is not None and status is not None:  # first: when it fails, it is the cause
            parts.insert(0, _Part("credentials", status, self.credentials.problem()))
        servers = runtime.config.servers
        for name, upstream in sorted(runtime.upstreams.items()):
            spec = servers.get(name)
            required = spec.required if spec is not None else True
            state = "up" if upstream.ready else "down"
            if upstream.ready and upstream.needs_authorization:
                state = "up, requires authorization"
            problem = None if upstream.ready or not required else upstream.problem or "down"
            parts.append(_Part(f"servers.{name}", state if required else f"{state} (not required)", problem))
        return parts


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    check: str
    """The state `/readyz` shows."""
    problem: str | None
    """Why this part keeps the gateway from being ready; None when it does not."""


class OpsServer:
    """The aiohttp listener; `start()` binds it and returns its base URL."""

    def __init__(
        self, listen: str, readiness: Readiness, telemetry: Telemetry, console: ConsoleRoutes | None = None
    ) -> None:
        self._listen = listen
        self.readiness = readiness
        self._telemetry = telemetry
        self._console = console
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self._encoder = msgspec.json.Encoder()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self._console is not None:
            app.router.add_routes(self._console.routes())
        return app

    async def start(self) -> str:
        host, port = split_listen(self._listen)
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if self._console is not None:
            await self._console.close()
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = self.readiness.report()
        return web.Response(status=200 if ready else 503, body=self._encoder.encode(body), content_type=JSON)

    async def _metrics(self, request: web.Request) -> web.Response:
        data = self._telemetry.metrics_data()
        if data is None:
            return web.Response(status=404, text="metrics are off\n")
        return web.Response(body=render_prometheus(data), headers={CONTENT_TYPE: PROMETHEUS_TEXT})


# --------------------------------------------------------------------------- Prometheus text

_NAME: Final = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL: Final = re.compile(r"[^a-zA-Z0-9_]")
_UNIT_SUFFIX: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def _metric_name(name: str, unit: str) -> str:
    out = _NAME.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit)
    return f"{out}_{suffix}" if suffix and not out.endswith(f"_{suffix}") else out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any] | None, extra: tuple[str, str] | None = None) -> str:
    items = [(_LABEL.sub("_", str(key)), str(value)) for key, value in (attributes or {}).items()]
    if extra is not None:
        items.append(extra)
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in items) + "}" if items else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render_prometheus(data: Any) -> bytes:
    """Prometheus text exposition (format 0.0.4) of cumulative OpenTelemetry `MetricsData`.

    Read by shape: a point with `bucket_counts` is a histogram point, data with
    `is_monotonic` true is a counter (`_total`), anything else with `value` a gauge.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = metric.data.data_points
                histogram = bool(points) and hasattr(points[0], "bucket_counts")
                name = _metric_name(metric.name, metric.unit or "")
                if histogram:
                    kind = "histogram"
                elif getattr(metric.data, "is_monotonic", False):
                    kind, name = "counter", name if name.endswith("_total") else f"{name}_total"
                else:
                    kind = "gauge"
                if name not in seen:
                    seen.add(name)
                    lines.append(f"# HELP {name} {' '.join(str(metric.description).split())}")
                    lines.append(f"# TYPE {name} {kind}")
                for point in points:
                    if histogram:
                        cumulative = 0
                        for bound, count in zip([*point.explicit_bounds, math.inf], point.bucket_counts, strict=False):
                            cumulative += count
                            lines.append(
                                f"{name}_bucket{_labels(point.attributes, ('le', _number(bound)))} {cumulative}"
                            )
                        lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
                        lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
                    else:
                        lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
    return ("\n".join(lines) + "\n").encode()
