"""The relay's console API (`/api/status`) over the relay app: the gateways that polled, named by the v1
identity headers they send; the queue's depth and age and the callers waiting; error answers by code; and
who may look (a loopback listener, or the `ops.token`; otherwise the console is not served)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gateway.relay.config import RelayOpsSpec
from tests.support.relay_harness import GATEWAY, TUNNEL, WAIT, Harness, HarnessFactory, relay_config


async def status(harness: Harness, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with harness.client.get("/api/status", headers=headers or {}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def poll_as(harness: Harness, instance: str, name: str, version: str) -> int:
    headers = {
        **GATEWAY,
        "X-Tunnel-Client-Instance-Id": instance,
        "X-Tunnel-Client-Name": name,
        "X-Tunnel-Client-Version": version,
    }
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll?timeout_ms=1", headers=headers) as resp:
        return resp.status


async def test_the_gateways_that_polled_are_listed_newest_first(harness: Harness) -> None:
    assert (await status(harness))["gateways"] == []
    assert await poll_as(harness, "instance-a", "mcp-tunnel-gateway", "0.1.0") == 204
    assert await poll_as(harness, "instance-b", "other-client", "9.9") == 204
    assert await poll_as(harness, "instance-a", "mcp-tunnel-gateway", "0.1.0") == 204
    body = await status(harness)
    assert body["kind"] == "relay"
    assert [(g["instance_id"], g["name"], g["version"], g["polls"]) for g in body["gateways"]] == [
        ("instance-a", "mcp-tunnel-gateway", "0.1.0", 2),
        ("instance-b", "other-client", "9.9", 1),
    ]
    assert all(g["tunnel"] == TUNNEL for g in body["gateways"])
    (tunnel,) = body["tunnels"]
    assert (tunnel["id"], tunnel["name"], tunnel["gateway_seen"]) == (TUNNEL, "Test tunnel", True)


async def test_queue_depth_age_and_callers_waiting(harness: Harness) -> None:
    await harness.seen()
    caller = asyncio.create_task(harness.call())
    try:
        async with asyncio.timeout(WAIT):
            while True:
                (tunnel,) = (await status(harness))["tunnels"]
                if tunnel["queued"] == 1 and tunnel["callers_waiting"] == 1:
                    break
                await asyncio.sleep(0.01)
        assert tunnel["oldest_queued_s"] is not None
        assert tunnel["oldest_queued_s"] >= 0
        (command,) = await harness.commands()
        (tunnel,) = (await status(harness))["tunnels"]
        assert (tunnel["queued"], tunnel["oldest_queued_s"], tunnel["in_flight"]) == (0, None, 1)
        await harness.respond(command, resp_json={"jsonrpc": "2.0", "id": "rpc-1", "result": {"tools": []}})
        assert (await caller).status == 200
    finally:
        caller.cancel()
    (tunnel,) = (await status(harness))["tunnels"]
    assert tunnel["callers_waiting"] == 0


async def test_error_answers_are_counted_by_code(harness: Harness) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll?limit=x", headers=GATEWAY) as resp:
        assert resp.status == 400
    rejections = (await status(harness))["rejections"]
    assert rejections["tunnel_use_forbidden"] == 1
    assert sum(rejections.values()) == 2


async def test_off_loopback_the_console_needs_a_token(make_harness: HarnessFactory) -> None:
    """The listen address decides (the test server itself is on loopback either way)."""
    open_relay = await make_harness(msgspec.structs.replace(relay_config(), listen="0.0.0.0:8780"))
    for path in ("/", "/ui", "/api/status"):
        async with open_relay.client.get(path) as resp:
            assert resp.status == 404, path
    guarded_config = relay_config(ops=RelayOpsSpec(token="relay-ops-token-1"))
    guarded = await make_harness(msgspec.structs.replace(guarded_config, listen="0.0.0.0:8780"))
    async with guarded.client.get("/api/status") as resp:
        assert resp.status == 401
        assert "relay-ops-token-1" not in await resp.text()
    assert (await status(guarded, {"Authorization": "Bearer relay-ops-token-1"}))["kind"] == "relay"
    async with guarded.client.get("/healthz") as resp:  # as before
        assert resp.status == 200
