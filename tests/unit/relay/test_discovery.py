"""The relay's OAuth discovery (gateway/relay/discovery.py) and the token layers of its front door.

Both sides of one relay app through real loopback sockets (aiohttp's test server): an MCP client
fetching metadata or calling, and a gateway polling and answering, as tests/unit/relay/test_front_door.py drives
them. Every command the relay hands out and every frame posted validates against `openapi.json`
plus the official client's `oauth_discovery` extension (tests/support/openapi.py `validate_extended`).
Each test names the RFC 9728 section or MCP authorization section (2025-11-25; 2026-07-28 keeps it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.relay import RelayConfig, TunnelSpec
from gateway.relay.config import OAuthDiscoverySpec
from tests.support.openapi import validate_extended
from tests.support.relay_harness import (
    KEY,
    TUNNEL,
    WAIT,
    Harness,
    HarnessFactory,
    Reply,
    api_error,
    read_reply,
    relay_config,
    result,
)

PRM = "/.well-known/oauth-protected-resource"
PUBLIC = "https://mcp.example.com"
PRIVATE_PRM = "http://10.0.0.5:8000/.well-known/oauth-protected-resource/mcp"
SERVER_METADATA = {
    "resource": "http://10.0.0.5:8000/mcp",
    "authorization_servers": ["https://login.example.com/tenant-7/v2.0"],
    "scopes_supported": ["notes.read"],
    "bearer_methods_supported": ["header"],
}
ANSWER = {**SERVER_METADATA, "tunnel_authorization_server_metadata": {"issuer": "https://login.example.com"}}


async def fetch(h: Harness, path: str, headers: dict[str, str] | None = None) -> Reply:
    async with h.client.get(path, headers=headers or {}) as resp:
        return await read_reply(resp)


async def discovery_commands(h: Harness) -> list[dict[str, Any]]:
    reply = await h.poll()
    assert reply.status == 200, (reply.status, reply.body)
    body = reply.json()
    validate_extended("PolledCommandList", body)
    commands: list[dict[str, Any]] = body["commands"]
    return commands


async def answer(h: Harness, command: dict[str, Any], resp_code: int = 200, resp_json: object = ANSWER) -> None:
    payload = {
        "request_id": command["request_id"],
        "channel": command["channel"],
        "resp_type": "oauth_discovery_response",
        "resp_code": resp_code,
        "resp_json": resp_json,
        "resp_headers": {"Content-Type": ["application/json"]},
    }
    validate_extended("TunnelResponsePayload", payload)
    assert (await h.respond(command, payload=payload, check=False)).status == 200


async def discovered(h: Harness, path: str, **answered: Any) -> tuple[Reply, dict[str, Any]]:
    """GET `path` while playing the gateway: one `oauth_discovery` command, answered."""
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        client = tg.create_task(fetch(h, path))
        (command,) = await discovery_commands(h)
        await answer(h, command, **answered)
    return client.result(), command


def public(**overrides: Any) -> RelayConfig:
    return relay_config(public_url=PUBLIC, **overrides)


async def test_a_channels_metadata_names_its_public_mcp_url(make_harness: HarnessFactory) -> None:
    """RFC 9728 §3.1 and §3.3: metadata for `{public_url}/v1/mcp/{tunnel}/{channel}` is at the
    well-known URL built from it, and its `resource` is exactly that URL (MCP authorization,
    "Protected Resource Metadata Discovery Requirements"), whatever the private server called itself;
    its other members pass; the gateway's extension member is not served."""
    h = await make_harness(public())
    await h.seen()
    reply, command = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}/notes")
    assert command["command_type"] == "oauth_discovery"
    assert command["channel"] == "notes"
    assert "jsonrpc" not in command
    assert command["headers"] == {}
    assert reply.status == 200
    assert reply.json() == {**SERVER_METADATA, "resource": f"{PUBLIC}/v1/mcp/{TUNNEL}/notes"}
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert reply.headers["Cache-Control"].startswith("max-age=")


async def test_the_main_channels_short_form(make_harness: HarnessFactory) -> None:
    """RFC 9728 §3.1 for the short MCP URL `/v1/mcp/{tunnel}`: channel `main`, `resource` the short URL."""
    h = await make_harness(public())
    await h.seen()
    reply, command = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}")
    assert command["channel"] == "main"
    assert reply.json()["resource"] == f"{PUBLIC}/v1/mcp/{TUNNEL}"


async def test_answers_are_cached_per_channel_and_shared_by_concurrent_callers(make_harness: HarnessFactory) -> None:
    """Issue 18, scope 2: briefly cached, per channel; callers that arrive together share one command."""
    h = await make_harness(public())
    await h.seen()
    path = f"{PRM}/v1/mcp/{TUNNEL}/notes"
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        callers = [tg.create_task(fetch(h, path)) for _ in range(3)]
        (command,) = await discovery_commands(h)
        await answer(h, command)
    assert [c.result().status for c in callers] == [200, 200, 200]
    assert h.queue.enqueued.qsize() == 1
    short = await fetch(h, path)  # from the cache: no command
    assert short.status == 200
    assert h.queue.enqueued.qsize() == 1
    other, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}/files")  # another channel asks again
    assert other.json()["resource"] == f"{PUBLIC}/v1/mcp/{TUNNEL}/files"


async def test_no_cache_means_every_request_asks(make_harness: HarnessFactory) -> None:
    h = await make_harness(public(oauth_discovery=OAuthDiscoverySpec(cache_ttl_s=0)))
    await h.seen()
    for _ in range(2):
        reply, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}")
        assert reply.status == 200
    assert h.queue.enqueued.qsize() == 2


async def test_the_public_url_comes_from_a_checked_host_only(make_harness: HarnessFactory) -> None:
    """Issue 18, scope 2: `resource` from `public_url`, else from a `Host` the allowlist checked; a
    host it refuses is 403, and with `allowed_hosts: ['*']` (an unchecked Host) discovery refuses to
    guess (500 `public_url_required`) and queues nothing."""
    h = await make_harness()
    await h.seen()
    reply, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}/notes")
    host = f"127.0.0.1:{h.client.port}"
    assert reply.json()["resource"] == f"http://{host}/v1/mcp/{TUNNEL}/notes"
    assert (await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}/notes", {"Host": "evil.example"})).status == 403
    anyhost = await make_harness(relay_config(allowed_hosts=["*"]))
    await anyhost.seen()
    refused = await fetch(anyhost, f"{PRM}/v1/mcp/{TUNNEL}/notes", {"Host": "evil.example"})
    api_error(refused, 500, "public_url_required")
    assert anyhost.queue.enqueued.empty()


async def test_a_channel_without_metadata_is_404_remembered_briefly(make_harness: HarnessFactory) -> None:
    """RFC 9728 §3.2: no metadata is a 404 (the gateway's 404, or its 400 for a stdio channel)."""
    h = await make_harness(public())
    await h.seen()
    error = {"error": {"message": "no metadata", "type": "invalid_request_error", "code": "oauth_metadata_not_found"}}
    reply, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}/notes", resp_code=404, resp_json=error)
    api_error(reply, 404, "oauth_metadata_not_found")
    api_error(await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}/notes"), 404, "oauth_metadata_not_found")
    assert h.queue.enqueued.qsize() == 1


async def test_a_failed_discovery_is_502_and_not_cached(make_harness: HarnessFactory) -> None:
    h = await make_harness(public())
    await h.seen()
    error = {"error": {"message": "upstream down", "type": "server_error", "code": "oauth_discovery_failed"}}
    reply, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}", resp_code=502, resp_json=error)
    api_error(reply, 502, "oauth_discovery_failed")
    again, _ = await discovered(h, f"{PRM}/v1/mcp/{TUNNEL}")
    assert again.status == 200


async def test_no_gateway_no_tunnel_no_answer_are_clear_errors(make_harness: HarnessFactory) -> None:
    """Bad input gets a clear error, never a hang (design.md, Non-negotiables)."""
    h = await make_harness(public(oauth_discovery=OAuthDiscoverySpec(timeout_s=0.2)))
    api_error(await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}"), 503, "tunnel_client_not_seen")
    assert (await fetch(h, f"{PRM}/v1/mcp/no_such_tunnel")).status == 404
    api_error(await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}/Not_A_Channel"), 400, "invalid_channel_format")
    await h.seen()
    silent = await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}")  # queued, never answered: the relay's timeout
    assert silent.status == 504


async def test_preflight_allows_any_origin(harness: Harness) -> None:
    async with harness.client.options(f"{PRM}/v1/mcp/{TUNNEL}") as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "MCP-Protocol-Version" in resp.headers["Access-Control-Allow-Headers"]


# --------------------------------------------------------------------------- challenges


@pytest.mark.parametrize("channel", [None, "notes"])
async def test_a_servers_challenge_points_at_the_relays_metadata(
    make_harness: HarnessFactory, channel: str | None
) -> None:
    """RFC 9728 §5.1 / MCP authorization, "Authorization Server Location": a 401's
    `WWW-Authenticate` names the metadata URL; behind the tunnel the server's names a private
    address, so the relay points it at its own, for the URL the client called (short or long form);
    other parameters and challenges are untouched."""
    h = await make_harness(public())
    await h.seen()
    challenges = [
        f'Bearer error="invalid_token", error_description="expired", resource_metadata="{PRIVATE_PRM}"',
        'Basic realm="legacy"',
    ]
    tail = "" if channel is None else f"/{channel}"
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(h.call(channel=channel, headers={"Authorization": "Bearer expired-user-token"}))
        (command,) = await h.commands()
        assert command["headers"]["Authorization"] == ["Bearer expired-user-token"]
        failure = {"jsonrpc": "2.0", "id": "rpc-1", "error": {"code": -32603, "message": "Unauthorized"}}
        await h.respond(command, resp_code=401, resp_json=failure, resp_headers={"WWW-Authenticate": challenges})
    reply = caller.result()
    assert reply.status == 401
    assert reply.header_lists["www-authenticate"] == [
        f'Bearer error="invalid_token", error_description="expired", '
        f'resource_metadata="{PUBLIC}{PRM}/v1/mcp/{TUNNEL}{tail}"',
        'Basic realm="legacy"',
    ]
    assert PRIVATE_PRM not in json.dumps(dict(reply.headers))


async def test_an_unparseable_challenge_is_replaced_not_leaked(harness: Harness) -> None:
    """A challenge the relay cannot parse may name a private address: it is replaced whole."""
    await harness.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        bad = f'Bearer resource_metadata="{PRIVATE_PRM}'
        challenge = {"WWW-Authenticate": [bad]}
        await harness.respond(command, resp_code=401, resp_json=result("rpc-1", {}), resp_headers=challenge)
    reply = caller.result()
    host = f"127.0.0.1:{harness.client.port}"
    expected = f'Bearer resource_metadata="http://{host}{PRM}/v1/mcp/{TUNNEL}"'
    assert reply.header_lists["www-authenticate"] == [expected]


# --------------------------------------------------------------------------- the relay's own token layer


def both_layers() -> RelayConfig:
    spec = TunnelSpec(gateway_key=KEY, client_tokens=["relay-token-1"], client_token_header="X-Relay-Token")
    return public(tunnels={TUNNEL: spec})


async def test_a_client_token_in_its_own_header_leaves_the_users_token_alone(make_harness: HarnessFactory) -> None:
    """Issue 18, scope 2: the relay's `client_tokens` are a separate layer; with `client_token_header`
    the relay checks its token there and strips only that header, so the user's `Authorization`
    reaches the server unchanged (MCP authorization, "Token Requirements")."""
    h = await make_harness(both_layers())
    await h.seen()
    for headers in ({}, {"X-Relay-Token": "wrong"}, {"Authorization": "Bearer relay-token-1"}):
        refused = await h.call(headers=headers)
        api_error(refused, 403, "tunnel_use_forbidden")
        assert "WWW-Authenticate" not in refused.headers  # not the user's OAuth challenge
    assert h.queue.enqueued.empty()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(h.call(headers={"X-Relay-Token": "relay-token-1", "Authorization": "Bearer user-1"}))
        (command,) = await h.commands()
        forwarded = {name.lower(): values for name, values in command["headers"].items()}
        assert forwarded["authorization"] == ["Bearer user-1"]
        assert "x-relay-token" not in forwarded
        await h.respond(command, resp_json=result("rpc-1", {}))
    assert caller.result().status == 200


async def test_discovery_asks_for_the_relays_token_too(make_harness: HarnessFactory) -> None:
    """A tunnel that requires the relay's token requires it for its metadata as well: unauthenticated
    requests never become commands to the private network."""
    h = await make_harness(both_layers())
    await h.seen()
    api_error(await fetch(h, f"{PRM}/v1/mcp/{TUNNEL}"), 403, "tunnel_use_forbidden")
    assert h.queue.enqueued.empty()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        client = tg.create_task(fetch(h, f"{PRM}/v1/mcp/{TUNNEL}", {"X-Relay-Token": "relay-token-1"}))
        (command,) = await discovery_commands(h)
        await answer(h, command)
    assert client.result().status == 200
