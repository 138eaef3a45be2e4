"""gateway.observe.telemetry in process: the off switch builds nothing (and imports no SDK), a gRPC export needs
its exporter, the hooks record span events and counters."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from msgspec import Raw

from gateway.config import routing as routing_config
from gateway.observe.hooks import NOOP, NoopTelemetry
from gateway.observe.ops import render_prometheus
from gateway.observe.otel import current_trace_ids
from gateway.observe.telemetry import build, export_configured
from gateway.protocol.errors import ConfigError
from gateway.protocol.wire import JsonRpcMessage, PolledCommand
from tests.support.client_trace import CLIENT_SPAN, CLIENT_TRACE
from tests.support.harness import PYTHON
from tests.support.otel_memory import InMemoryOtel


def test_telemetry_off_builds_nothing() -> None:
    assert build(routing_config.TelemetrySpec(), environ={}) is NOOP
    assert (
        build(routing_config.TelemetrySpec(enabled=False), environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is NOOP
    )
    assert isinstance(NOOP, NoopTelemetry)
    assert not NOOP.enabled
    assert NOOP.metrics_data() is None
    assert export_configured(routing_config.TelemetrySpec(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not export_configured(
        routing_config.TelemetrySpec(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
    )
    assert NOOP.trace_ids() is None
    with NOOP.command(None, 0.0), NOOP.post("jsonrpc_response", 200, None, None) as post:  # type: ignore[arg-type]
        post.delivered(True)


def test_telemetry_off_imports_no_opentelemetry() -> None:
    """Every module of the gateway but the OTel implementation loads, and telemetry is built off:
    neither OpenTelemetry (API or SDK) nor the OTel implementation is imported. Left out, as the
    gateway loads them only when asked: `gateway.demo` (servers of their own, on the MCP SDK) and
    `relay.redis_queue` and its client `relay.redis_pipe` (redis-py, which imports OpenTelemetry itself;
    loaded for `backend: redis`)."""
    skip = ("gateway.observe.otel", "gateway.demo", "gateway.relay.redis_queue", "gateway.relay.redis_pipe")
    probe = (
        "import importlib, pkgutil, sys, gateway\n"
        "for info in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        f"    if not info.name.startswith({skip!r}):\n"
        "        importlib.import_module(info.name)\n"
        "from gateway.config.routing import TelemetrySpec\n"
        "from gateway.observe.telemetry import build\n"
        "assert not build(TelemetrySpec(), environ={}).enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'gateway.observe.otel'))))\n"
    )
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_grpc_needs_its_exporter() -> None:
    spec = routing_config.TelemetrySpec(enabled=True, protocol="grpc", endpoint="http://127.0.0.1:4317")
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"telemetry\.protocol"):
            build(spec, environ={})
    else:  # pragma: no cover - only where the gRPC exporter is installed
        build(spec, environ={}).shutdown()


async def test_hooks_record_events_and_counters() -> None:
    """Retry and rate-limit events land on the span current at the time; counters follow."""
    otel = InMemoryOtel()
    telemetry, spans = otel.telemetry, otel.spans
    telemetry.watch_limits(lambda: {("tenant", "admitted"): 5, ("tenant", "rejected"): 2})
    command = PolledCommand(
        request_id="req_1",
        shard_token="s",
        headers={"traceparent": [f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"], "Mcp-Session-Id": ["sess"]},
    )
    message = JsonRpcMessage(jsonrpc="2.0", id=Raw(b"7"), method="tools/call", params=Raw(b'{"name":"slow"}'))
    body = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32029,"message":"rate limit exceeded"}}'
    with telemetry.command(command, asyncio.get_running_loop().time()):
        telemetry.describe(message)
        assert current_trace_ids() is not None
        assert telemetry.trace_ids() == current_trace_ids()
        telemetry.limit_waiting("tenant")
        telemetry.rate_limit("tenant", "admitted", wait_s=0.25)
        telemetry.rate_limit("tenant", "rejected")
        with telemetry.post("jsonrpc_response", 429, body, {}) as post:
            telemetry.post_retry(1, "503", 0.1)
            post.delivered(False)
    assert current_trace_ids() is None
    text = render_prometheus(telemetry.metrics_data()).decode()
    telemetry.shutdown()

    finished = {span.name: span for span in spans.get_finished_spans()}
    served = finished["tools/call slow"]
    assert format(served.context.trace_id, "032x") == format(CLIENT_TRACE, "032x")
    assert served.parent is not None
    assert served.parent.span_id == CLIENT_SPAN
    assert served.attributes is not None
    assert served.attributes["jsonrpc.request.id"] == "7"
    assert served.attributes["mcp.session.id"] == "sess"
    assert served.attributes["rpc.response.status_code"] == "-32029"
    assert served.attributes["error.type"] == "-32029"
    assert [event.name for event in served.events] == ["rate_limit.wait", "rate_limit.reject"]
    posted = finished["tunnel response"]
    assert posted.parent is not None
    assert posted.parent.span_id == served.context.span_id
    assert [event.name for event in posted.events] == ["retry"]
    assert posted.attributes is not None
    assert posted.attributes["error.type"] == "not_delivered"
    assert 'gateway_ratelimit_admitted_total{gateway_ratelimit_limit="tenant"} 5' in text
    assert 'gateway_ratelimit_rejected_total{gateway_ratelimit_limit="tenant"} 2' in text
    assert 'gateway_ratelimit_wait_seconds_count{gateway_ratelimit_limit="tenant"} 1' in text
    assert 'gateway_response_retries_total{gateway_retry_reason="503"} 1' in text
    assert 'gateway_response_failures_total{tunnel_resp_type="jsonrpc_response",error_type="not_delivered"} 1' in text
    assert "gateway_commands_inflight 0" in text
    assert "gateway_command_age_seconds_count 1" in text
