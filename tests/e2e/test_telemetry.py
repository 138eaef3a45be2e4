"""Telemetry end to end: one trace from client to server, metrics, redaction, the off switch.

A real OTLP/HTTP receiver on loopback (`support/otlp_receiver.py`), the gateway process (embedded relay, or a
standalone `gateway relay` process) and official-SDK servers that export their own spans to the same receiver,
driven by `mcp.Client` under a client-side trace context: one trace must run client -> relay -> gateway ->
upstream server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.observe.otel import DURATION_BUCKETS, RELAY_SCOPE, SCOPE
from tests.support.client_trace import CLIENT_SPAN, CLIENT_TRACE, client_trace
from tests.support.harness import PYTHON, SERVERS, Gateway, free_port, gateway, process, tool_text
from tests.support.ops import RELAY_KEY, TUNNEL, get, ops_url, standalone_relay, until_status
from tests.support.otlp_receiver import FAST_EXPORT, Receiver, Span, otlp_receiver

# --------------------------------------------------------------------------- one trace


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
                seen = json.loads(tool_text(await client.call_tool("trace_context", {})))
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
            await until_status(f"{ops_url(gw.process)}/readyz", 200)
            with client_trace():
                async with Client(f"{relay_url}/v1/mcp/{TUNNEL}", mode="2026-07-28") as client:
                    assert tool_text(await client.call_tool("echo", {"text": "hi"})) == "hi"
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
            ops = ops_url(gw.process)
            await until_status(f"{ops}/readyz", 200)
            async with Client(f"{relay_url}/v1/mcp/{TUNNEL}/docs", mode="legacy") as client:
                echoed = await client.call_tool("echo", {"text": f"my key is {api_key} and {docs_token}"})
                assert api_key in tool_text(echoed)  # the client gets its data back untouched
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
            seen = json.loads(tool_text(await client.call_tool("trace_context", {})))
        assert seen["meta"]["traceparent"] is None, "nothing is injected when telemetry is off"
        gateway_spans = [s for s in receiver.spans if s.service != "sdk-server"]
        assert gateway_spans == []
        assert receiver.points == []
