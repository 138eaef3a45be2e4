"""MCP 2026-07-28 conformance at the gateway's edge, one rule per test, with raw HTTP through the embedded relay.

Each test names the specification section it checks. Requests are written by hand (aiohttp, no
SDK client) so they can break the rules; behind the relay run servers of both eras: the official
SDK server (dual-era, so the gateway speaks 2026-07-28 to it), server-everything (handshake era,
from `.tools`), and a scripted handshake-era stdio server that records every line it receives, so
a test shows what never reached a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from tests.support.conformance_tools import everything_stdio
from tests.support.harness import MODERN, PYTHON, READY_TIMEOUT_S, SERVERS, Gateway, gateway, http_server, stdio_server

LEGACY = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
INFO_KEY = "io.modelcontextprotocol/clientInfo"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022

ECHO = {"rec": ("echo", "text", ""), "sdk": ("echo", "text", ""), "everything": ("echo", "message", "Echo: ")}
"""Per channel: the echo tool's name, its text argument and what its answer puts before the text."""


def echoed(channel: str, text: str) -> str:
    return ECHO[channel][2] + text


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: CIMultiDictProxy[str]

    @property
    def code(self) -> int | None:
        error = self.body.get("error")
        return error["code"] if isinstance(error, dict) else None

    @property
    def text(self) -> str:
        return str(self.body["result"]["content"][0]["text"])


@dataclass
class Edge:
    gw: Gateway
    http: aiohttp.ClientSession
    record: Path

    def received(self, method: str) -> list[dict[str, Any]]:
        """The requests of `method` the recording server has read so far."""
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [line for line in lines if line.get("method") == method]

    async def post(self, channel: str, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """POST one message; an SSE answer is read to its last event (the response)."""
        sent: CIMultiDict[str] = CIMultiDict([("Accept", ACCEPT), ("Content-Type", "application/json"), *headers])
        async with self.http.post(self.gw.urls[channel], data=json.dumps(body).encode(), headers=sent) as resp:
            raw = await resp.read()
            if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                data = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
                raw = data[-1].encode() if data else b""
            return Answer(resp.status, json.loads(raw) if raw else {}, resp.headers)

    async def modern(
        self,
        channel: str,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Answer:
        """A 2026-07-28 request: the `_meta` envelope (or `meta`) and the standard headers (or `headers`)."""
        envelope = {VERSION_KEY: MODERN, CAPABILITIES_KEY: {}, INFO_KEY: {"name": "edge-test", "version": "1"}}
        body_params = {**(params or {}), "_meta": envelope if meta is None else meta}
        if headers is None:
            headers = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", method)]
            if name is not None:
                headers.append(("Mcp-Name", name))
        return await self.post(channel, {"jsonrpc": "2.0", "id": 7, "method": method, "params": body_params}, headers)

    async def echo(self, channel: str, text: str, **kwargs: Any) -> Answer:
        tool, argument, _ = ECHO[channel]
        kwargs.setdefault("name", tool)
        return await self.modern(channel, "tools/call", {"name": tool, "arguments": {argument: text}}, **kwargs)

    async def legacy_session(self, channel: str) -> str:
        """A handshake-era `initialize` (and `initialized`); the session id the channel issued."""
        answer = await self.post(channel, INITIALIZE)
        assert answer.status == 200, answer.body
        session = answer.headers["Mcp-Session-Id"]
        done = await self.post(
            channel,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            [("Mcp-Session-Id", session), ("MCP-Protocol-Version", LEGACY)],
        )
        assert done.status == 202
        return session

    async def legacy(self, channel: str, session: str, method: str, params: dict[str, Any]) -> Answer:
        headers = [("Mcp-Session-Id", session), ("MCP-Protocol-Version", LEGACY)]
        return await self.post(channel, {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}, headers)


def _recording(record: Path) -> str:
    args = ", ".join(json.dumps(str(a)) for a in (SERVERS / "recording_stdio.py", "--record", record))
    return f"{{stdio: {{command: {json.dumps(PYTHON)}, args: [{args}]}}}}"


@contextlib.asynccontextmanager
async def _edge(tmp_path: Path, servers: dict[str, str], channels: dict[str, str]) -> AsyncIterator[Edge]:
    """The gateway (embedded relay) over `servers`; `rec` in a server block stands for the recording server."""
    record = tmp_path / "received.jsonl"
    blocks = {name: _recording(record) if block == "rec" else block for name, block in servers.items()}
    routes = (
        "relay: {listen: '127.0.0.1:0'}\nservers:\n"
        + "".join(f"  {name}: {block}\n" for name, block in blocks.items())
        + "channels:\n"
        + "".join(f"  {name}: {spec}\n" for name, spec in channels.items())
    )
    async with gateway(routes, tmp_path) as gw, aiohttp.ClientSession() as http:
        await _polled(http, next(iter(gw.urls.values())))
        yield Edge(gw, http, record)


async def _polled(http: aiohttp.ClientSession, mcp_url: str) -> None:
    """Until the embedded relay has seen the gateway's first poll (`gateway: ready` can come before it,
    and the relay answers callers 503 `tunnel_client_not_seen` until then): its `/metrics` says so."""
    metrics = mcp_url.split("/v1/mcp/", 1)[0] + "/metrics"
    async with asyncio.timeout(READY_TIMEOUT_S):
        while True:
            async with http.get(metrics) as resp:
                if re.search(r"^relay_gateway_seen\{[^}]*\} 1$", await resp.text(), re.MULTILINE):
                    return
            await asyncio.sleep(0.05)


def _one_server_channels(*names: str) -> tuple[dict[str, str], dict[str, str]]:
    """One-server channels named after their servers: `rec`, `sdk` (stdio, dual-era), `everything`."""
    blocks = {"rec": "rec", "sdk": stdio_server(), "everything": "everything"}
    servers = {name: everything_stdio() if blocks[name] == "everything" else blocks[name] for name in names}
    return servers, {name: f"[{name}]" for name in names}


# --------------------------------------------------------------------------- request validation


async def test_method_header_must_name_the_body_method(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Server Validation": a body of `tools/call echo` under
    `Mcp-Method: tools/list` is refused with HTTP 400 and -32020 (HeaderMismatch) and never runs."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk", "everything")) as edge:
        for channel in ("rec", "sdk", "everything"):
            bad = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/list"), ("Mcp-Name", ECHO[channel][0])]
            refused = await edge.echo(channel, "should not run", headers=bad)
            assert (refused.status, refused.code) == (400, HEADER_MISMATCH), (channel, refused.body)
            assert refused.body["id"] == 7
            missing = await edge.echo(channel, "should not run", headers=[("MCP-Protocol-Version", MODERN)])
            assert (missing.status, missing.code) == (400, HEADER_MISMATCH), (channel, missing.body)
            served = await edge.echo(channel, "ran")
            assert (served.status, served.text) == (200, echoed(channel, "ran")), (channel, served.body)
        assert [call["params"]["arguments"]["text"] for call in edge.received("tools/call")] == ["ran"]


async def test_name_header_is_required_and_must_match(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Standard Request Headers" and "Server Validation": `tools/call`,
    `prompts/get` and `resources/read` need an `Mcp-Name` equal to `params.name` / `params.uri`;
    a missing or different one is HTTP 400 with -32020."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk", "everything")) as edge:
        for channel in ("rec", "sdk", "everything"):
            absent = await edge.echo(
                channel, "x", headers=[("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/call")]
            )
            assert (absent.status, absent.code) == (400, HEADER_MISMATCH), (channel, absent.body)
            other = await edge.echo(channel, "x", name="add")
            assert (other.status, other.code) == (400, HEADER_MISMATCH), (channel, other.body)
            prompt = await edge.modern(channel, "prompts/get", {"name": "greet"}, name="other")
            assert (prompt.status, prompt.code) == (400, HEADER_MISMATCH), (channel, prompt.body)
            read = await edge.modern(channel, "resources/read", {"uri": "test://a"}, name="test://b")
            assert (read.status, read.code) == (400, HEADER_MISMATCH), (channel, read.body)
        assert edge.received("tools/call") == []
        assert edge.received("resources/read") == []


async def test_header_names_are_case_insensitive_and_values_case_sensitive(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Case Sensitivity": header names compare case-insensitively,
    header values (the method, the name) case-sensitively."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk")) as edge:
        for channel in ("rec", "sdk"):
            lower = [("mcp-protocol-version", MODERN), ("MCP-METHOD", "tools/call"), ("mcp-name", "echo")]
            served = await edge.echo(channel, "any case", headers=lower)
            assert (served.status, served.text) == (200, "any case"), (channel, served.body)
            shouted = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "TOOLS/CALL"), ("Mcp-Name", "echo")]
            method = await edge.echo(channel, "x", headers=shouted)
            assert (method.status, method.code) == (400, HEADER_MISMATCH), (channel, method.body)
            name = await edge.echo(channel, "x", name="ECHO")
            assert (name.status, name.code) == (400, HEADER_MISMATCH), (channel, name.body)
        assert [call["params"]["arguments"]["text"] for call in edge.received("tools/call")] == ["any case"]


async def test_base64_name_is_decoded_before_comparing(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Value Encoding": an `=?base64?…?=` `Mcp-Name` is decoded and then
    compared; one that decodes to another name, or does not decode, is HTTP 400 with -32020."""
    async with _edge(tmp_path, *_one_server_channels("rec")) as edge:
        call = {"name": "héllo", "arguments": {"text": "encoded"}}
        served = await edge.modern("rec", "tools/call", call, name="=?base64?aMOpbGxv?=")  # "héllo"
        assert (served.status, served.text) == (200, "encoded"), served.body
        plain = await edge.echo("rec", "plain ascii, encoded anyway", name="=?base64?ZWNobw==?=")  # "echo"
        assert plain.status == 200, plain.body
        other = await edge.modern("rec", "tools/call", call, name="=?base64?ZWNobw==?=")  # "echo", not "héllo"
        assert (other.status, other.code) == (400, HEADER_MISMATCH), other.body
        for broken in ("=?base64?!!!?=", "=?base64?aMOpbGxv?", "=?base64?/w==?="):  # not base64, no end, not UTF-8
            refused = await edge.modern("rec", "tools/call", call, name=broken)
            assert (refused.status, refused.code) == (400, HEADER_MISMATCH), (broken, refused.body)
        assert [c["params"]["name"] for c in edge.received("tools/call")] == ["héllo", "echo"]


async def test_version_header_must_match_the_meta_version(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Protocol Version Header": `MCP-Protocol-Version` must be present and
    equal `_meta`'s `io.modelcontextprotocol/protocolVersion`; otherwise HTTP 400 with -32020."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk")) as edge:
        for channel in ("rec", "sdk"):
            absent = await edge.echo(channel, "x", headers=[("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")])
            assert (absent.status, absent.code) == (400, HEADER_MISMATCH), (channel, absent.body)
            meta = {VERSION_KEY: "2025-06-18", CAPABILITIES_KEY: {}}
            disagree = await edge.echo(channel, "x", meta=meta)
            assert (disagree.status, disagree.code) == (400, HEADER_MISMATCH), (channel, disagree.body)
            twice = [("MCP-Protocol-Version", MODERN)] * 2 + [("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")]
            doubled = await edge.echo(channel, "x", headers=twice)
            assert (doubled.status, doubled.code) == (400, HEADER_MISMATCH), (channel, doubled.body)
        assert edge.received("tools/call") == []


async def test_meta_must_carry_version_and_capabilities(tmp_path: Path) -> None:
    """basic/index 2026-07-28 "`_meta`", per-request protocol fields: a request without
    `io.modelcontextprotocol/protocolVersion` or `io.modelcontextprotocol/clientCapabilities` is
    malformed: -32602 with HTTP 400. `clientInfo` is optional."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk")) as edge:
        for channel in ("rec", "sdk"):
            for meta in ({CAPABILITIES_KEY: {}}, {VERSION_KEY: MODERN}, {}):
                refused = await edge.echo(channel, "x", meta=meta)
                assert (refused.status, refused.code) == (400, -32602), (channel, meta, refused.body)
            served = await edge.echo(channel, "no clientInfo", meta={VERSION_KEY: MODERN, CAPABILITIES_KEY: {}})
            assert (served.status, served.text) == (200, "no clientInfo"), (channel, served.body)
        assert [call["params"]["arguments"]["text"] for call in edge.received("tools/call")] == ["no clientInfo"]


async def test_unsupported_version_lists_the_supported_ones(tmp_path: Path) -> None:
    """basic/versioning 2026-07-28 "Protocol Version Negotiation" and streamable-http "Protocol Version
    Header": a version the gateway does not serve is HTTP 400 with -32022 and `data.supported`."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk")) as edge:
        for channel in ("rec", "sdk"):
            future = [("MCP-Protocol-Version", "2099-01-01"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")]
            meta = {VERSION_KEY: "2099-01-01", CAPABILITIES_KEY: {}}
            refused = await edge.echo(channel, "x", headers=future, meta=meta)
            assert (refused.status, refused.code) == (400, UNSUPPORTED_VERSION), (channel, refused.body)
            data = refused.body["error"]["data"]
            assert data["requested"] == "2099-01-01"
            assert {MODERN, LEGACY} <= set(data["supported"])
            # The header alone names an unknown version: it is a 2026-07-28-style request without its envelope.
            bare = await edge.post(
                channel,
                {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                [*future[:1], ("Mcp-Method", "tools/list")],
            )
            assert (bare.status, bare.code) == (400, -32602), (channel, bare.body)
        assert edge.received("tools/call") == []


async def test_unknown_method_is_404_method_not_found(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Protocol Version Header": a method the server does not implement is
    HTTP 404 with -32601 for a 2026-07-28 client, whichever era the server speaks. A handshake-era
    client keeps the answer it always got (HTTP 200)."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk", "everything")) as edge:
        for channel in ("rec", "sdk", "everything"):
            unknown = await edge.modern(channel, "no/such-method", {})
            assert (unknown.status, unknown.code) == (404, -32601), (channel, unknown.body)
            session = await edge.legacy_session(channel)
            legacy = await edge.legacy(channel, session, "no/such-method", {})
            assert (legacy.status, legacy.code) == (200, -32601), (channel, legacy.body)
        assert len(edge.received("no/such-method")) == 2  # the server was asked, both times


async def test_handshake_era_requests_are_not_held_to_2026_rules(tmp_path: Path) -> None:
    """2025-11-25 basic/transports (Streamable HTTP, "Protocol Version Header"): a handshake-era request
    carries no `_meta` envelope and no `Mcp-Method`/`Mcp-Name`; such headers, even wrong, mean nothing."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk", "everything")) as edge:
        for channel in ("rec", "sdk", "everything"):
            session = await edge.legacy_session(channel)
            tool, argument, _ = ECHO[channel]
            call = {"name": tool, "arguments": {argument: "legacy"}}
            served = await edge.legacy(channel, session, "tools/call", call)
            assert (served.status, served.text) == (200, echoed(channel, "legacy")), (channel, served.body)
            stray = [("Mcp-Session-Id", session), ("MCP-Protocol-Version", LEGACY), ("Mcp-Method", "tools/list")]
            body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": call}
            odd = await edge.post(channel, body, stray)
            assert (odd.status, odd.text) == (200, echoed(channel, "legacy")), (channel, odd.body)
            unversioned = await edge.post(channel, body, [("Mcp-Session-Id", session)])
            assert (unversioned.status, unversioned.text) == (200, echoed(channel, "legacy")), (
                channel,
                unversioned.body,
            )


async def test_mcp_name_is_rewritten_to_the_name_the_server_knows(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Standard Request Headers": the request the gateway forwards carries an
    `Mcp-Name` equal to its own body. On an aggregated channel a prefixed (`web__add`) or renamed
    (`shout`) tool reaches its server under the server's name; the official SDK server behind it refuses
    any request whose `Mcp-Name` disagrees with its body, so every 200 here proves the rewrite."""
    async with http_server(name="web") as url:
        servers = {"web": f"{{http: {{url: '{url}'}}}}", "rec": "rec"}
        agg = "{servers: [web, rec], prefix: always, rename: {web: {echo: shout}}}"
        async with _edge(tmp_path, servers, {"agg": agg, "direct": "[web]"}) as edge:
            shout = await edge.modern("agg", "tools/call", {"name": "shout", "arguments": {"text": "hi"}}, name="shout")
            assert (shout.status, shout.text) == (200, "hi"), shout.body
            add = await edge.modern(
                "agg", "tools/call", {"name": "web__add", "arguments": {"a": 2, "b": 3}}, name="web__add"
            )
            assert (add.status, add.text) == (200, "5"), add.body
            rec = await edge.modern(
                "agg", "tools/call", {"name": "rec__echo", "arguments": {"text": "r"}}, name="rec__echo"
            )
            assert (rec.status, rec.text) == (200, "r"), rec.body
            assert [c["params"]["name"] for c in edge.received("tools/call")] == ["echo"]
            # A one-server channel forwards the client's own (checked) headers to a 2026-07-28 server.
            direct = await edge.modern(
                "direct", "tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, name="add"
            )
            assert (direct.status, direct.text) == (200, "2"), direct.body


# --------------------------------------------------------------------------- smaller points


async def test_sse_answers_disable_proxy_buffering(tmp_path: Path) -> None:
    """streamable-http 2026-07-28 "Receiving Messages": a server initiating an SSE stream SHOULD send
    `X-Accel-Buffering: no` so reverse proxies deliver each event at once."""
    async with _edge(tmp_path, *_one_server_channels("sdk")) as edge:
        meta = {VERSION_KEY: MODERN, CAPABILITIES_KEY: {}, "progressToken": "p1"}
        params = {"name": "slow_progress", "arguments": {"steps": 3, "delay_ms": 10}}
        streamed = await edge.modern("sdk", "tools/call", params, name="slow_progress", meta=meta)
        assert streamed.status == 200, streamed.body
        assert streamed.headers["Content-Type"].startswith("text/event-stream")
        assert streamed.headers["X-Accel-Buffering"] == "no"


async def test_tasks_capability_is_not_announced_to_2026_clients(tmp_path: Path) -> None:
    """basic/versioning 2026-07-28 "Extension Negotiation": tasks are the `io.modelcontextprotocol/tasks`
    extension now, so the 2025-11-25 `tasks` server capability is not passed to 2026-07-28 clients
    (`server/discover`); handshake-era clients still see it in `initialize`."""
    servers, channels = _one_server_channels("rec", "everything")
    channels["both"] = "{servers: [rec, everything]}"
    async with _edge(tmp_path, servers, channels) as edge:
        for channel in ("rec", "everything", "both"):
            discovered = await edge.modern(channel, "server/discover", {})
            assert discovered.status == 200, (channel, discovered.body)
            assert "tasks" not in discovered.body["result"]["capabilities"], channel
            assert "tools" in discovered.body["result"]["capabilities"], channel
            initialized = await edge.post(channel, INITIALIZE)
            assert "tasks" in initialized.body["result"]["capabilities"], channel


async def test_resource_not_found_is_invalid_params_for_2026_clients(tmp_path: Path) -> None:
    """basic/index 2026-07-28 "Error Codes": -32002 (resource not found, 2025-11-25 and earlier) is not
    emitted to 2026-07-28 clients; they get -32602. Handshake-era clients keep the server's -32002."""
    async with _edge(tmp_path, *_one_server_channels("rec")) as edge:
        uri = "test://missing"
        modern = await edge.modern("rec", "resources/read", {"uri": uri}, name=uri)
        assert modern.code == -32602, modern.body
        assert modern.body["error"]["data"] == {"uri": uri}
        session = await edge.legacy_session("rec")
        legacy = await edge.legacy("rec", session, "resources/read", {"uri": uri})
        assert legacy.code == -32002, legacy.body


async def test_one_server_channel_answers_unknown_or_ended_sessions_404(tmp_path: Path) -> None:
    """2025-11-25 basic/transports "Session Management": a request with an `Mcp-Session-Id` the server
    does not know (never issued, or ended by DELETE) is answered HTTP 404, so the client initializes
    again; on a one-server channel whose `initialize` the gateway answers, as on aggregated ones."""
    async with _edge(tmp_path, *_one_server_channels("rec", "sdk")) as edge:
        for channel in ("rec", "sdk"):
            session = await edge.legacy_session(channel)
            call = {"name": "echo", "arguments": {"text": "s"}}
            assert (await edge.legacy(channel, session, "tools/call", call)).text == "s"
            bogus = await edge.legacy(channel, "g1.not-a-session", "tools/call", call)
            assert (bogus.status, bogus.code) == (404, -32600), (channel, bogus.body)
            note = [("Mcp-Session-Id", "made-up"), ("MCP-Protocol-Version", LEGACY)]
            noted = await edge.post(channel, {"jsonrpc": "2.0", "method": "notifications/initialized"}, note)
            assert noted.status == 404, channel
            async with edge.http.delete(edge.gw.urls[channel], headers={"Mcp-Session-Id": session}) as ended:
                assert ended.status == 200, channel
            after = await edge.legacy(channel, session, "tools/call", call)
            assert (after.status, after.code) == (404, -32600), (channel, after.body)
            async with edge.http.delete(edge.gw.urls[channel], headers={"Mcp-Session-Id": session}) as again:
                assert again.status == 404, channel
            # 2026-07-28 requests have no sessions: a stray Mcp-Session-Id is ignored.
            headers = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")]
            stray = await edge.echo(channel, "stateless", headers=[*headers, ("Mcp-Session-Id", session)])
            assert (stray.status, stray.text) == (200, "stateless"), (channel, stray.body)


async def test_sessions_a_server_issued_pass_through(tmp_path: Path) -> None:
    """2025-11-25 basic/transports "Session Management": on a one-server channel in front of a
    handshake-era HTTP server, the server issues and owns the sessions; the gateway passes its ids
    (and its own 404 for one it does not know) through untouched."""
    async with (
        http_server("--legacy", name="legacy-web") as url,
        _edge(tmp_path, {"web": f"{{http: {{url: '{url}'}}}}"}, {"web": "[web]"}) as edge,
    ):
        session = await edge.legacy_session("web")
        assert not session.startswith("g1.")  # the server's id, not a gateway token
        call = {"name": "echo", "arguments": {"text": "theirs"}}
        served = await edge.legacy("web", session, "tools/call", call)
        assert (served.status, served.text) == (200, "theirs"), served.body
        unknown = await edge.legacy("web", "not-theirs-either", "tools/call", call)
        assert unknown.status == 404
