"""`HttpUpstream` in front of an OAuth-protected server: the 401 probe, the challenge, the client's token.

The server is the official MCP SDK's resource-server auth (tests/support/servers/oauth_resource_server.py,
fixed tokens) in its own process on 127.0.0.1, ready when it prints its port. Each test names the
MCP authorization section (2025-11-25; 2026-07-28 keeps it) or RFC it checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from msgspec import Raw

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import UpstreamHttpError
from gateway.protocol.mcp import Call, Era, Reply
from gateway.protocol.oauth import resource_metadata
from gateway.protocol.wire import Codec, Headers
from gateway.upstream.http import HttpUpstream
from tests.support.harness import PYTHON, SERVERS, process

TOKEN = "tok-alice-7f3a"
SERVER = SERVERS / "oauth_resource_server.py"


@pytest.fixture
async def protected() -> AsyncIterator[Callable[..., Any]]:
    """Starts protected servers (flags as the server takes them); yields their base URL."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*flags: str) -> str:
            proc = await stack.enter_async_context(process(PYTHON, SERVER, "--static", f"{TOKEN}=alice", *flags))
            port = (await proc.wait_for(r"PORT (\d+)"))[1]
            return f"http://127.0.0.1:{port}"

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream(http: aiohttp.ClientSession) -> AsyncIterator[Callable[[str], HttpUpstream]]:
    made: list[HttpUpstream] = []

    def make(url: str) -> HttpUpstream:
        up = HttpUpstream(
            "notes",
            HttpSpec(url=url),
            session=http,
            bridge=Bridge(Codec()),
            max_message_bytes=4 * 1024 * 1024,
            extra_headers={},
            ready_timeout_s=30.0,
        )
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()


async def requests_seen(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    async with http.get(f"{base}/test/requests") as resp:
        counts: dict[str, int] = await resp.json()
        return counts


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
}


def whoami(headers: Headers) -> Call:
    """`tools/call whoami` as a 2026-07-28 client sends it."""
    params = Raw(json.dumps({"name": "whoami", "arguments": {}, "_meta": MODERN_META}).encode())
    return Call("tools/call", Raw(b'"c-1"'), params, headers, own_session=True)


async def answer(up: HttpUpstream, call: Call) -> Reply:
    reply = None
    async for frame in up.exchange(call):
        if isinstance(frame, Reply):
            reply = frame
    assert reply is not None
    return reply


async def test_a_401_to_the_probe_means_up_and_wanting_authorization(
    protected: Callable[..., Any], upstream: Callable[[str], HttpUpstream], caplog: pytest.LogCaptureFixture
) -> None:
    """MCP authorization, "Authorization Flow Steps": a protected server answers a request without a
    token 401. Behind the gateway that server is up (issue 18: not `NOT ready`), its era unknown until
    a client's authorized call; the log says so."""
    base = await protected()
    up = upstream(f"{base}/mcp")
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.http"):
        await up.start()
    assert up.ready
    assert up.needs_authorization
    assert up.problem is None
    assert up.info is None
    assert any("requires authorization" in record.getMessage() for record in caplog.records)


async def test_a_caller_without_a_token_gets_the_servers_challenge_intact(
    protected: Callable[..., Any], upstream: Callable[[str], HttpUpstream], http: aiohttp.ClientSession
) -> None:
    """RFC 6750 §3 / RFC 9728 §5.1: the 401's `WWW-Authenticate` (with `resource_metadata`) is what
    the client needs to start authorizing; it reaches the caller unchanged, and the server is not
    asked again for a caller that brings no credentials."""
    base = await protected()
    async with http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as resp:
        direct = resp.headers.getall("WWW-Authenticate")
    up = upstream(f"{base}/mcp")
    await up.start()
    before = await requests_seen(http, base)
    with pytest.raises(UpstreamHttpError) as caught:
        await answer(up, whoami({}))
    assert caught.value.resp_code == 401
    assert caught.value.headers == {"WWW-Authenticate": direct}
    assert resource_metadata(direct[0]) == f"{base}/.well-known/oauth-protected-resource/mcp"
    assert await requests_seen(http, base) == before
    assert "Bearer" not in str(caught.value)


async def test_the_first_authorized_call_teaches_the_era_and_carries_the_token_unchanged(
    protected: Callable[..., Any], upstream: Callable[[str], HttpUpstream]
) -> None:
    """MCP authorization, "Token Requirements": the client's `Authorization: Bearer` goes with every
    request; the gateway forwards it as sent (the server sees exactly that token) and learns the
    server's era (2026-07-28 here, by `server/discover`) from the first call that carries one."""
    base = await protected()
    up = upstream(f"{base}/mcp")
    await up.start()
    authorized = {"Authorization": [f"Bearer {TOKEN}"]}
    assert (await up.wait_info(authorized)).era is Era.MODERN
    reply = await answer(up, whoami(authorized))
    assert reply.status == 200
    seen = json.loads(json.loads(reply.body)["result"]["content"][0]["text"])
    assert seen["subject"] == "alice"
    assert seen["token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert up.info is not None
    assert up.info.era is Era.MODERN
    assert up.needs_authorization
    with pytest.raises(UpstreamHttpError):  # still nothing for a caller without a token
        await up.wait_info({})


async def test_a_refused_token_reaches_its_caller_and_changes_nothing(
    protected: Callable[..., Any], upstream: Callable[[str], HttpUpstream]
) -> None:
    """RFC 6750 §3.1: a wrong token gets 401 `invalid_token`, passed to that caller with its challenge;
    the server stays up and wanting authorization, its era still unknown."""
    base = await protected()
    up = upstream(f"{base}/mcp")
    await up.start()
    with pytest.raises(UpstreamHttpError) as caught:
        await answer(up, whoami({"Authorization": ["Bearer not-a-token"]}))
    assert caught.value.resp_code == 401
    assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"][0]
    assert up.ready
    assert up.needs_authorization
    assert up.info is None


async def test_a_handshake_era_server_is_learned_without_keeping_a_session_in_the_clients_name(
    protected: Callable[..., Any], upstream: Callable[[str], HttpUpstream]
) -> None:
    """MCP 2025-11-25 lifecycle: a handshake-era server is learned by `initialize` with the first
    client's token; that session is the client's credential's, so it is ended (DELETE), not kept as
    the gateway's own for other callers."""
    base = await protected("--legacy-only")
    up = upstream(f"{base}/mcp")
    await up.start()
    assert up.needs_authorization
    info = await up.wait_info({"Authorization": [f"Bearer {TOKEN}"]})
    assert info.era is Era.LEGACY
    assert up._session_id is None
