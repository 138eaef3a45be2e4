"""gateway.observe.ops with fakes that implement the interfaces readiness reads: each part's readiness, and the
Prometheus text rendered from SDK metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import routing as routing_config
from gateway.observe.ops import Readiness, render_prometheus
from gateway.observe.telemetry import build


@dataclass
class FakeUpstream:
    name: str
    ready: bool
    problem: str | None = None
    needs_authorization: bool = False


@dataclass
class FakeControlPlane:
    last_poll_ok: float | None = None
    problem: str | None = None


@dataclass
class FakePoller:
    fault: str | None = None


@dataclass
class FakeRuntime:
    config: routing_config.RoutingConfig
    upstreams: Mapping[str, Any]
    control_plane: FakeControlPlane = field(default_factory=FakeControlPlane)
    poller: FakePoller = field(default_factory=FakePoller)


def _config(required_b: bool = True) -> routing_config.RoutingConfig:
    required = "true" if required_b else "false"
    return routing_config.parse(
        (
            "servers:\n  a: {stdio: {command: x}}\n"
            f"  b: {{stdio: {{command: x}}, required: {required}}}\n"
            "channels:\n  one: [a]\n  two: [b]\n"
        ).encode(),
        "routing.yaml",
    )


def test_readiness_reports_each_part() -> None:
    now = [100.0]
    readiness = Readiness(max_poll_age_s=5.0, clock=lambda: now[0])
    assert readiness.report() == (
        False,
        {"status": "not ready", "not_ready": ["gateway"], "checks": {"gateway": "starting"}},
    )
    upstreams: dict[str, Any] = {"a": FakeUpstream("a", True), "b": FakeUpstream("b", False)}
    runtime = FakeRuntime(_config(), upstreams)
    readiness.runtime = runtime  # type: ignore[assignment]
    ready, body = readiness.report()
    assert not ready
    assert body["not_ready"] == ["control_plane", "servers.b"]
    assert body["checks"]["control_plane"] == "no successful poll yet"

    runtime.control_plane.last_poll_ok = 98.0
    upstreams["b"].ready = True
    assert readiness.report() == (
        True,
        {
            "status": "ready",
            "not_ready": [],
            "checks": {"control_plane": "polled 2.0s ago", "servers.a": "up", "servers.b": "up"},
        },
    )
    now[0] = 104.0
    ready, body = readiness.report()
    assert not ready
    assert body["checks"]["control_plane"] == "no successful poll for 6.0s (limit 5s)"

    now[0] = 100.0
    runtime.config = _config(required_b=False)
    upstreams["b"].ready = False
    ready, body = readiness.report()
    assert ready
    assert body["checks"]["servers.b"] == "down (not required)"

    upstreams["a"].needs_authorization = True  # it answered the probe 401: up (issue 18)
    ready, body = readiness.report()
    assert ready
    assert body["checks"]["servers.a"] == "up, requires authorization"


def test_prometheus_text_from_sdk_metrics() -> None:
    telemetry = build(routing_config.TelemetrySpec(), metrics_pull=True, environ={})
    try:
        up: dict[str, Any] = {"srv": FakeUpstream("srv", True)}
        telemetry.watch(up, {})  # type: ignore[arg-type]
        assert telemetry.enabled
        ot: Any = telemetry
        ot.server_duration.record(0.03, {"mcp.method.name": "tools/call", "gen_ai.tool.name": 'we"ird\\name'})
        ot.polled.add(3)
        ot.inflight.add(2)
        text = render_prometheus(telemetry.metrics_data()).decode()
    finally:
        telemetry.shutdown()
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
    assert (
        'mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",'
        'gen_ai_tool_name="we\\"ird\\\\name",le="0.02"} 0' in text
    )
    assert (
        'mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",'
        'gen_ai_tool_name="we\\"ird\\\\name",le="0.05"} 1' in text
    )
    assert 'le="+Inf"} 1' in text
    assert "mcp_server_operation_duration_seconds_count" in text
    assert "# TYPE gateway_commands_polled_total counter" in text
    assert "gateway_commands_polled_total 3" in text
    assert "# TYPE gateway_commands_inflight gauge" in text
    assert "gateway_commands_inflight 2" in text
    assert 'gateway_upstream_up{gateway_server="srv"} 1' in text
