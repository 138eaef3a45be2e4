"""Telemetry end to end and in pieces: traces, metrics, propagation, redaction, the off switch.

The end-to-end tests start a real OTLP/HTTP receiver on loopback (`tests/otlp_receiver.py`),
run the gateway process (embedded relay, or a standalone `gateway relay` process) and
official-SDK servers that export their own spans to the same receiver, and drive them with
`mcp.Client` under a client-side trace context, so one trace must run
client -> relay -> gateway -> upstream server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent
from msgspec import UNSET, Raw
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from gateway.config import routing as routing_config
from gateway.observe import logs
from gateway.observe.ops import render_prometheus
from gateway.observe.telemetry import (
    DURATION_BUCKETS,
    NOOP,
    RELAY_SCOPE,
    SCOPE,
    NoopTelemetry,
    OtelTelemetry,
    build,
    current_trace_ids,
    export_configured,
)
from gateway.protocol.errors import ConfigError
from gateway.protocol.tracecontext import Payloads, request_id_text, with_trace_headers
from gateway.protocol.wire import JsonRpcMessage, PolledCommand
from tests.support.harness import PYTHON, SERVERS, Gateway, gateway, process
from tests.support.otlp_receiver import Receiver, Span, otlp_receiver
from tests.unit.observe.test_ops import RELAY_KEY, TUNNEL, free_port, get, ops_url, standalone_relay, until

CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300"}


@contextlib.contextmanager
def client_trace() -> Iterator[None]:
    """Make a known span current in this task: the MCP SDK client injects it into `params._meta`."""
    parent = SpanContext(CLIENT_TRACE, CLIENT_SPAN, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        yield
    finally:
        otel_context.detach(token)


def _text(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


def _stdio_block(receiver: Receiver, **extra: str) -> str:
    env = {"SDK_SERVER_OTLP_ENDPOINT": receiver.url, **extra}
    env_yaml = ", ".join(f"{k}: '{v}'" for k, v in env.items())
    return f"{{stdio: {{command: '{PYTHON}', args: ['{SERVERS / 'sdk_server.py'}'], env: {{{env_yaml}}}}}}}"


@contextlib.asynccontextmanager
async def _sdk_http_server(receiver: Receiver) -> AsyncIterator[str]:
    env = {"SDK_SERVER_OTLP_ENDPOINT": receiver.url}
    async with process(PYTHON, SERVERS / "sdk_server.py", "--http", "--port", "0", env=env) as proc:
        yield (await proc.wait_for(r"READY (\S+)"))[1]


def _one(spans: list[Span]) -> Span:
    assert len(spans) == 1, [(s.name, s.scope, s.service) for s in spans]
    return spans[0]


def _chain(receiver: Receiver, name: str) -> tuple[Span, Span, Span, Span]:
    """relay SERVER -> gateway SERVER -> gateway CLIENT -> server SERVER for one operation name."""
    relay = _one([s for s in receiver.named(name, scope=RELAY_SCOPE) if s.kind == "SERVER"])
    command = _one(
        [s for s in receiver.named(name, scope=SCOPE) if s.kind == "SERVER" and s.parent_id == relay.span_id]
    )
    client = _one(
        [s for s in receiver.named(name, scope=SCOPE) if s.kind == "CLIENT" and s.parent_id == command.span_id]
    )
    server = _one([s for s in receiver.spans if s.service == "sdk-server" and s.parent_id == client.span_id])
    return relay, command, client, server


# --------------------------------------------------------------------------- end to end: one trace


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_one_trace_from_client_to_server(transport: str, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(otlp_receiver())
        if transport == "stdio":
            block = _stdio_block(receiver)
        else:
            url = await stack.enter_async_context(_sdk_http_server(receiver))
            block = f"{{http: {{url: '{url}'}}}}"
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"telemetry: {{endpoint: '{receiver.url}', service_name: gw-test}}\n"
            f"servers:\n  srv: {block}\nchannels:\n  main: [srv]\n"
        )
        gw = await stack.enter_async_context(gateway(routes, tmp_path, env=FAST_EXPORT))
        with client_trace():
            async with Client(gw.urls["main"], mode="legacy") as client:
                seen = json.loads(_text(await client.call_tool("trace_context", {})))
                failed = await client.call_tool("fail", {"message": "nope"})
                assert failed.is_error
                prompt = await client.get_prompt("greet", {"who": "otel"})
                assert prompt.messages
                await client.read_resource("test://info")
                with pytest.raises(MCPError) as missing:
                    await client.get_prompt("no-such-prompt", {})
                if transport == "stdio":
                    with pytest.raises(MCPError):
                        await client.call_tool("crash", {})
                    await client.call_tool("echo", {"text": "after the restart"})
        await receiver.wait_for(lambda r: bool(r.named("tools/call trace_context", scope=RELAY_SCOPE)))
        await receiver.wait_for(
            lambda r: any(s.name == "tools/call trace_context" and s.kind == "CLIENT" for s in r.spans)
        )
    # The gateway has stopped (and flushed); the receiver keeps what it got.
    trace_id = format(CLIENT_TRACE, "032x")

    relay, command, client_span, server = _chain(receiver, "tools/call trace_context")
    assert relay.trace_id == command.trace_id == client_span.trace_id == server.trace_id == trace_id
    assert relay.parent_id == format(CLIENT_SPAN, "016x"), "the relay continues the MCP client's trace"
    assert relay.service == command.service == "gw-test"

    # The server saw the gateway's CLIENT span as its parent, in `_meta` (and in headers over HTTP).
    traceparent = f"00-{trace_id}-{client_span.span_id}-01"
    assert seen["meta"]["traceparent"] == traceparent
    if transport == "http":
        assert seen["headers"]["traceparent"] == traceparent

    for span in (relay, command, client_span):
        attributes = span.attributes
        assert attributes["mcp.method.name"] == "tools/call"
        assert attributes["gen_ai.tool.name"] == "trace_context"
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["jsonrpc.request.id"]
        assert attributes["mcp.protocol.version"].startswith("20")
        assert "error.type" not in attributes
    assert command.attributes["network.transport"] == relay.attributes["network.transport"] == "tcp"
    assert command.attributes["mcp.session.id"] == relay.attributes["mcp.session.id"]
    assert command.attributes["gateway.channel"] == "main"
    assert client_span.attributes["gateway.server"] == "srv"
    if transport == "stdio":
        assert client_span.attributes["network.transport"] == "pipe"
        assert "server.address" not in client_span.attributes
    else:
        assert client_span.attributes["network.transport"] == "tcp"
        assert client_span.attributes["server.address"] == "127.0.0.1"
        assert isinstance(client_span.attributes["server.port"], int)

    # Each response frame POST is a span under the command span.
    posts = [s for s in receiver.named("tunnel response") if s.parent_id == command.span_id]
    assert posts
    assert posts[0].kind == "CLIENT"
    assert posts[0].attributes["tunnel.resp_type"] == "jsonrpc_response"
    polls = receiver.named("tunnel poll")
    assert polls
    assert any(p.attributes.get("tunnel.poll.commands", 0) > 0 for p in polls)

    # A tool error, a JSON-RPC error, a prompt, a resource.
    _, failed_command, failed_client, _ = _chain(receiver, "tools/call fail")
    assert failed_command.attributes["error.type"] == failed_client.attributes["error.type"] == "tool_error"
    assert failed_command.status_code == 2  # STATUS_CODE_ERROR
    code = str(missing.value.error.code)
    prompt_error = _one([s for s in receiver.named("prompts/get no-such-prompt", scope=SCOPE) if s.kind == "CLIENT"])
    assert prompt_error.attributes["rpc.response.status_code"] == code
    assert prompt_error.attributes["error.type"] == code, "every JSON-RPC error is an error on the client side"
    _, prompt_command, _, _ = _chain(receiver, "prompts/get greet")
    assert prompt_command.attributes["gen_ai.prompt.name"] == "greet"
    assert "gen_ai.operation.name" not in prompt_command.attributes
    _, read_command, _, _ = _chain(receiver, "resources/read")
    assert read_command.attributes["mcp.resource.uri"] == "test://info"

    if transport == "stdio":
        crashed = _one([s for s in receiver.named("tools/call crash", scope=SCOPE) if s.kind == "CLIENT"])
        assert crashed.attributes["error.type"] == "transport_closed"
        restarts = receiver.named("upstream restart")
        assert restarts
        assert ("upstream.restart", {"gateway.server": "srv"}) in restarts[0].events

    # Metrics: the semantic-convention histograms (with their buckets) and the gateway's own.
    names = receiver.metric_names()
    assert {
        "mcp.server.operation.duration",
        "mcp.client.operation.duration",
        "gateway.commands.polled",
        "gateway.commands.inflight",
        "gateway.command.age",
        "gateway.poll.duration",
        "gateway.upstream.up",
    } <= names
    if transport == "stdio":
        assert "gateway.upstream.restarts" in names
    operations = [p for p in receiver.points if p.metric == "mcp.server.operation.duration"]
    assert all(p.unit == "s" and p.kind == "histogram" for p in operations)
    assert all(tuple(p.bounds) == DURATION_BUCKETS for p in operations)
    tool_points = [p for p in operations if p.attributes.get("gen_ai.tool.name") == "fail"]
    assert tool_points
    assert tool_points[0].attributes["error.type"] == "tool_error"
    for point in receiver.points:  # low cardinality: no ids, no arguments
        assert not {"mcp.session.id", "jsonrpc.request.id", "gateway.request.id"} & set(point.attributes)


async def test_one_trace_across_a_standalone_relay(tmp_path: Path) -> None:
    """Relay and gateway in separate processes, each exporting under its own service name."""
    port = free_port()
    async with otlp_receiver() as receiver:
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        routes = (
            f"control_plane: {{url: 'http://127.0.0.1:{port}', tunnel_id: {TUNNEL}, api_key: env:RELAY_KEY}}\n"
            "ops: {listen: '127.0.0.1:0'}\n"
            "gateway: {poll_timeout_ms: 500}\n"
            f"servers:\n  srv: {_stdio_block(receiver)}\nchannels:\n  main: [srv]\n"
        )
        async with (
            standalone_relay(tmp_path, port, env=env) as (relay_url, _),
            gateway(routes, tmp_path, env={**env, "RELAY_KEY": RELAY_KEY}) as gw,
        ):
            await until(f"{ops_url(gw)}/readyz", 200)
            with client_trace():
                async with Client(f"{relay_url}/v1/mcp/{TUNNEL}", mode="2026-07-28") as client:
                    assert _text(await client.call_tool("echo", {"text": "hi"})) == "hi"
            await receiver.wait_for(lambda r: any(s.service == "sdk-server" and "echo" in s.name for s in r.spans))
        await receiver.wait_for(lambda r: bool(r.named("tools/call echo", scope=RELAY_SCOPE)))
    relay, command, client_span, server = _chain(receiver, "tools/call echo")
    assert relay.service == "mcp-tunnel-relay"
    assert command.service == client_span.service == "mcp-tunnel-gateway"
    assert len({relay.trace_id, command.trace_id, client_span.trace_id, server.trace_id}) == 1
    assert relay.trace_id == format(CLIENT_TRACE, "032x")
    assert command.attributes["mcp.protocol.version"] == "2026-07-28"


# --------------------------------------------------------------------------- secrets stay out


async def test_secrets_reach_no_log_span_or_metric(tmp_path: Path) -> None:
    api_key = "sk-tunnel-SECRET-4f9a8b7c6d5e"
    docs_token = "docs-SECRET-token-98765"
    url_password = "pw-SECRET-in-userinfo"
    url_token = "tok-SECRET-in-query-123"
    secrets = [api_key, docs_token, url_password, url_token]
    log_file = tmp_path / "gateway.log"
    port = free_port()
    noisy = (
        'echo "connecting to https://bob:$URL_PASSWORD@db.internal/x?access_token=$URL_TOKEN '
        'with Authorization: Bearer $DOCS_TOKEN and key $RELAY_KEY" >&2; '
        f'exec "{PYTHON}" "{SERVERS / "sdk_server.py"}"'
    )
    async with otlp_receiver() as receiver, _sdk_http_server(receiver) as docs_url:
        routes = (
            f"control_plane: {{url: 'http://127.0.0.1:{port}', tunnel_id: {TUNNEL}, api_key: env:RELAY_KEY}}\n"
            "ops: {listen: '127.0.0.1:0'}\n"
            "gateway: {poll_timeout_ms: 500}\n"
            f"telemetry: {{endpoint: '{receiver.url}', capture_arguments: true}}\n"
            "logging: {format: json, level: DEBUG}\n"
            "servers:\n"
            f"  noisy: {{stdio: {{command: sh, args: [-c, '{noisy}']}}}}\n"
            f"  docs: {{http: {{url: '{docs_url}', headers: {{Authorization: 'env:DOCS_TOKEN'}}}}}}\n"
            "channels:\n  main: [noisy]\n  docs: [docs]\n"
        )
        env = {
            **FAST_EXPORT,
            "RELAY_KEY": api_key,
            "DOCS_TOKEN": f"Bearer {docs_token}",
            "URL_PASSWORD": url_password,
            "URL_TOKEN": url_token,
        }
        async with (
            standalone_relay(tmp_path, port, env={"RELAY_KEY": api_key}) as (relay_url, _),
            _logged_gateway(routes, tmp_path, log_file, env) as gw,
        ):
            ops = ops_url(gw)
            await until(f"{ops}/readyz", 200)
            async with Client(f"{relay_url}/v1/mcp/{TUNNEL}/docs", mode="legacy") as client:
                echoed = await client.call_tool("echo", {"text": f"my key is {api_key} and {docs_token}"})
                assert api_key in _text(echoed)  # the client gets its data back untouched
            async with Client(f"{relay_url}/v1/mcp/{TUNNEL}", mode="legacy") as client:
                await client.call_tool("echo", {"text": f"Authorization: Bearer {docs_token}"})
            try:  # an unknown channel: the gateway logs the failure inside the command
                async with Client(f"{relay_url}/v1/mcp/{TUNNEL}/nowhere", mode="legacy"):
                    pass
            except* MCPError:
                pass
            _, metrics_text = await get(f"{ops}/metrics")
        await receiver.wait_for(lambda r: any(s.name == "tools/call echo" for s in r.spans))

    log_text = log_file.read_text()
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert lines, "JSON log lines"
    assert any("[REDACTED]" in line["message"] for line in lines), "the noisy server's line was logged, redacted"
    assert any("db.internal" in line["message"] for line in lines)
    assert any(line.get("request_id") and line.get("trace_id") for line in lines), "ids inside a command"
    captured = [
        s.attributes["gen_ai.tool.call.arguments"]
        for s in receiver.spans
        if s.kind == "SERVER" and "gen_ai.tool.call.arguments" in s.attributes
    ]
    assert captured
    assert all("[REDACTED]" in text for text in captured)
    everything = {
        "log lines": log_text,
        "span and metric exports": b"".join(receiver.raw).decode("latin-1"),
        "prometheus text": metrics_text,
    }
    for where, text in everything.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached the {where}"


@contextlib.asynccontextmanager
async def _logged_gateway(routes: str, tmp_path: Path, log_file: Path, env: dict[str, str]) -> AsyncIterator[Gateway]:
    """The gateway process with its stderr (the log) in `log_file`."""
    file = tmp_path / "routing.yaml"
    file.write_text(routes)
    wrapper = 'exec "$@" 2>>"$GATEWAY_LOG"'
    argv = ("sh", "-c", wrapper, "sh", PYTHON, "-m", "gateway.cli", "--routes", file)
    async with process(*argv, env={**env, "GATEWAY_LOG": str(log_file)}) as proc:
        await proc.wait_for(r"^gateway: ready")
        yield Gateway(proc, {})


# --------------------------------------------------------------------------- off


async def test_disabled_telemetry_exports_nothing(tmp_path: Path) -> None:
    async with otlp_receiver() as receiver:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            "telemetry: {enabled: false}\n"
            f"servers:\n  srv: {_stdio_block(receiver)}\nchannels:\n  main: [srv]\n"
        )
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        async with gateway(routes, tmp_path, env=env) as gw, Client(gw.urls["main"], mode="legacy") as client:
            seen = json.loads(_text(await client.call_tool("trace_context", {})))
        assert seen["meta"]["traceparent"] is None, "nothing is injected when telemetry is off"
        gateway_spans = [s for s in receiver.spans if s.service != "sdk-server"]
        assert gateway_spans == []
        assert receiver.points == []


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
    with NOOP.command(None, 0.0), NOOP.post("jsonrpc_response", 200, None, None) as post:  # type: ignore[arg-type]
        post.delivered(True)
    # The SDK is not even imported by a gateway whose telemetry is off.
    probe = (
        "import sys; from gateway import cli; from gateway.config.routing import TelemetrySpec; "
        "from gateway.observe.telemetry import build; build(TelemetrySpec(), environ={}); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
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


def test_telemetry_section_is_checked() -> None:
    base = b"servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n"
    with pytest.raises(ConfigError, match=r"telemetry\.sampling_ratio"):
        routing_config.parse(b"telemetry: {sampling_ratio: 2}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint"):
        routing_config.parse(b"telemetry: {endpoint: 'not a url'}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"telemetry\.protocol"):
        routing_config.parse(b"telemetry: {protocol: carrier-pigeon}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"logging\.format"):
        routing_config.parse(b"logging: {format: xml}\n" + base, "r.yaml")
    parsed = routing_config.parse(
        b"telemetry: {enabled: true, headers: {Authorization: 'env:OTLP_TOKEN'}, sampling_ratio: 0.25}\n"
        b"logging: {format: json, level: DEBUG}\n" + base,
        "r.yaml",
    )
    assert parsed.telemetry.sampling_ratio == 0.25
    assert parsed.logging.format == "json"


# --------------------------------------------------------------------------- propagation, sans-IO


def test_trace_context_in_params_meta() -> None:
    payloads = Payloads()
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    injected = payloads.inject_params(Raw(b'{"name":"t","_meta":{"traceparent":"old","progressToken":7}}'), carrier)
    assert injected is not None
    assert json.loads(bytes(injected)) == {"name": "t", "_meta": {"progressToken": 7, **carrier}}
    fresh = payloads.inject_params(UNSET, carrier)
    assert fresh is not None
    assert json.loads(bytes(fresh)) == {"_meta": carrier}
    assert payloads.inject_params(Raw(b"[1,2]"), carrier) is None, "positional params get no _meta"
    body = b'{"jsonrpc":"2.0","id":"a-1","method":"tools/list"}'
    assert json.loads(payloads.inject_message(body, carrier)) == {
        "jsonrpc": "2.0",
        "id": "a-1",
        "method": "tools/list",
        "params": {"_meta": carrier},
    }
    response = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert payloads.inject_message(response, carrier) is response
    assert payloads.params(Raw(b'{"_meta":{"traceparent":"x"},"name":"n"}')).meta.traceparent == "x"  # type: ignore[union-attr]
    assert payloads.params(Raw(b'{"_meta":5}')).name is None, "a bad _meta is ignored, not fatal"
    headers = with_trace_headers({"TraceParent": ["old"], "X": ["y"]}, carrier)
    assert headers == {"X": ["y"], "traceparent": [carrier["traceparent"]]}
    assert request_id_text(Raw(b'"abc"')) == "abc"
    assert request_id_text(Raw(b"42")) == "42"


def test_outcome_detection() -> None:
    payloads = Payloads()
    error = payloads.outcome(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}', False)
    assert error.error is not None
    assert error.error.code == -32602
    tool_error = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError": true}}'
    assert payloads.outcome(tool_error, True).tool_error
    assert not payloads.outcome(tool_error, False).tool_error, "isError means something only on tools/call"
    assert payloads.outcome(b'{"jsonrpc":"2.0","id":1,"result":{"text":"error"}}', True).error is None


# --------------------------------------------------------------------------- logs


def test_redactor_masks_secrets() -> None:
    redactor = logs.Redactor()
    redactor.add("sk-live-0123456789")
    redactor.add("Bearer abcdefghijkl")
    redactor.add("abc")  # too short to mask verbatim
    cases = {
        "key sk-live-0123456789 leaked": "key [REDACTED] leaked",
        "token abcdefghijkl alone": "token [REDACTED] alone",
        "Authorization: Bearer xyz.uvw-123": "Authorization: [REDACTED]",
        "{'authorization': 'Basic dXNlcjpwYXNz', 'x': 1}": "{'authorization': '[REDACTED]', 'x': 1}",
        "sent bearer eyJhbGciOi.x.y to it": "sent bearer [REDACTED] to it",
        "proxy http://user:hunter2@proxy:3128 down": "proxy http://[REDACTED]@proxy:3128 down",
        "GET /x?access_token=zzz&page=2": "GET /x?access_token=[REDACTED]&page=2",
        "https://h/p?key=k1&api_key=k2#token=k3": "https://h/p?key=[REDACTED]&api_key=[REDACTED]#token=[REDACTED]",
        "X-Api-Key: 12345abc": "X-Api-Key: [REDACTED]",
        "abc is fine": "abc is fine",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected


def test_log_records_carry_ids_and_are_redacted() -> None:
    redactor = logs.Redactor()
    redactor.add("s3cret-value-42")
    stream = io.StringIO()
    logger = logging.getLogger("gateway.test_logs")
    handler = logs.setup(redactor=redactor, fmt="json", level="INFO", trace_ids=current_trace_ids, stream=stream)
    try:
        token = logs.REQUEST_ID.set("req_123")
        try:
            with client_trace():
                logger.info("value %s sent", "s3cret-value-42")
        finally:
            logs.REQUEST_ID.reset(token)
        try:
            raise ValueError("boom s3cret-value-42")
        except ValueError:
            logger.exception("failed with Authorization: Bearer abc.def")
        logs.setup(redactor=redactor, fmt="text", level="INFO", stream=stream)
        logger.info("plain s3cret-value-42")
    finally:
        logging.getLogger().removeHandler(logging.getLogger().handlers[-1])
    assert handler not in logging.getLogger().handlers
    first, second, third = stream.getvalue().splitlines()[:2] + stream.getvalue().splitlines()[-1:]
    record = json.loads(first)
    assert record["message"] == "value [REDACTED] sent"
    assert record["request_id"] == "req_123"
    assert record["trace_id"] == format(CLIENT_TRACE, "032x")
    assert record["span_id"] == format(CLIENT_SPAN, "016x")
    failure = json.loads(second)
    assert failure["message"] == "failed with Authorization: [REDACTED]"
    assert "boom [REDACTED]" in failure["exception"]
    assert "trace_id" not in failure
    assert re.search(r" INFO gateway\.test_logs: plain \[REDACTED\]$", third)


def test_config_secrets_are_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "key-from-env-1234")
    (tmp_path / "token").write_text("token-from-file-5678\n")
    config = routing_config.parse(
        b"control_plane: {url: 'https://cp.example', tunnel_id: t, api_key: env:MY_KEY}\n"
        b"servers:\n  a: {http: {url: 'http://h/mcp', headers: {X-Token: 'file:token', X-Env: prod}}}\n"
        b"channels: {main: [a]}\n",
        "r.yaml",
    )
    assert set(logs.config_secrets(config, tmp_path)) == {"key-from-env-1234", "token-from-file-5678"}


# --------------------------------------------------------------------------- hooks, in process


async def test_hooks_record_events_and_counters() -> None:
    """Retry and rate-limit events land on the span current at the time; counters follow."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = OtelTelemetry(
        tracer_provider=tracer_provider,
        meter=meter_provider.get_meter("test"),
        scrape=reader,
        capture_arguments=False,
        redact=lambda text: text,
        shutdowns=[tracer_provider.shutdown, meter_provider.shutdown],
    )
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
