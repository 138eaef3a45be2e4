"""The relay's configuration (relay.yaml, secrets, errors naming the key) and lifetime: the `Relay` class on
loopback, close waking polls and callers, `serve_relay` until stopped, per-client-token rates."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from gateway.config.secrets import Secret
from gateway.relay import Relay, RelayConfig, RelayConfigError, TunnelSpec, load_relay_config, serve_relay
from gateway.relay.guard import TunnelCredentials, resolve_credentials
from tests.support.openapi import validate
from tests.support.relay_harness import (
    GATEWAY,
    KEY,
    LIST_TOOLS,
    TUNNEL,
    WAIT,
    RecordingQueue,
    Reply,
    api_error,
    read_reply,
    relay_config,
)


def test_load_relay_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client.token").write_text("client-secret\n")
    monkeypatch.setenv("RELAY_TEST_KEY", "key-from-env")
    path = tmp_path / "relay.yaml"
    path.write_text(
        "listen: '127.0.0.1:0'\n"
        "queue_max: 5\n"
        "tunnels:\n"
        "  tunnel_a:\n"
        "    gateway_key: env:RELAY_TEST_KEY\n"
        "    client_tokens: ['file:client.token', literal-token]\n"
        "    name: A\n"
    )
    config = load_relay_config(path)
    assert config.queue_max == 5
    assert config.allowed_hosts == ["127.0.0.1", "localhost", "[::1]"]
    credentials = resolve_credentials(config)
    assert credentials["tunnel_a"].gateway_key.reveal() == "key-from-env"
    assert [t.reveal() for t in credentials["tunnel_a"].client_tokens] == ["client-secret", "literal-token"]
    assert "key-from-env" not in repr(credentials)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("tunnels: {}\nqueue_max: many\n", "$.queue_max", "Expected `int`"),
        ("tunnels: {}\nqueue_max: 0\n", "$.queue_max", ">= 1"),
        ("tunnels: {t1: {gateway_key: k}, t2: {gateway_key: k, extra: 1}}\n", "$.tunnels.t2", "unknown field"),
        ("tunnels: {t1: {gateway_key: ''}}\n", "$.tunnels.t1.gateway_key", "length >= 1"),
        ("tunnels: {'bad id': {gateway_key: k}}\n", "$.tunnels.bad id", "regex"),
        ("listen: nope\ntunnels: {}\n", "$.listen", "host:port"),
        ("listen: '127.0.0.1:99999'\ntunnels: {}\n", "$.listen", "65535"),
        ("queue_max: 3\n", "$", "missing required field `tunnels`"),
        ("tunnels: [\n", "$", "not valid YAML"),
        ("", "$", "Expected `object`"),
    ],
)
def test_relay_config_errors(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    with pytest.raises(RelayConfigError) as info:
        load_relay_config(path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert expected in info.value.problem
    assert str(path) in str(info.value)


def test_missing_config_file_and_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RelayConfigError, match="cannot read"):
        load_relay_config(tmp_path / "absent.yaml")
    monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
    config = relay_config(tunnels={"t1": TunnelSpec(gateway_key="env:RELAY_TEST_UNSET")})
    with pytest.raises(RelayConfigError) as info:
        resolve_credentials(config)
    assert info.value.key == "$.tunnels.t1.gateway_key"


async def test_relay_class_serves_on_loopback() -> None:
    credentials = {TUNNEL: TunnelCredentials(Secret(KEY, "test"))}
    async with Relay(relay_config(), credentials) as relay, aiohttp.ClientSession() as session:
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", relay.url)
        assert relay.url_for(TUNNEL) == f"{relay.url}/v1/mcp/{TUNNEL}"
        assert relay.url_for(TUNNEL, "files") == f"{relay.url}/v1/mcp/{TUNNEL}/files"
        async with session.get(f"{relay.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{relay.url}/v1/tunnels/{TUNNEL}", headers=GATEWAY) as resp:
            validate("TunnelClientMetadata", await resp.json())
        async with session.post(relay.url_for(TUNNEL), json=LIST_TOOLS) as resp:
            api_error(await read_reply(resp), 503, "tunnel_client_not_seen")
        async with session.get(f"{relay.url}/nowhere") as resp:
            api_error(await read_reply(resp), 404, None)


async def test_close_wakes_polls_and_callers() -> None:
    config = relay_config()
    queue = RecordingQueue(config)
    relay = Relay(config, backend=queue)
    await relay.start()
    try:
        async with asyncio.timeout(WAIT), aiohttp.ClientSession() as session:

            async def poll() -> int:
                url = f"{relay.url}/v1/tunnels/{TUNNEL}/poll?timeout_ms=60000&channel=none"
                async with session.get(url, headers=GATEWAY) as resp:
                    return resp.status

            async def call() -> Reply:
                async with session.post(relay.url_for(TUNNEL), json=LIST_TOOLS) as resp:
                    return await read_reply(resp)

            async with asyncio.TaskGroup() as tg:
                poller = tg.create_task(poll())
                await queue.polls.get()
                caller = tg.create_task(call())
                await queue.enqueued.get()
                await relay.close()
            assert poller.result() == 204
            api_error(caller.result(), 503, None)
    finally:
        await relay.close()


async def test_serve_relay_until_stopped() -> None:
    stop = asyncio.Event()
    ready: asyncio.Queue[str] = asyncio.Queue()
    config = relay_config(tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        server = tg.create_task(serve_relay(config, stop, on_ready=ready.put_nowait))
        url = await ready.get()
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        stop.set()
    assert server.done()


async def test_client_rate_is_per_client_token() -> None:
    """`client_rate`: a token over its budget gets 429 rate_limit_exceeded; another token is unaffected."""
    spec = TunnelSpec(gateway_key="gk", client_tokens=["tok-a", "tok-b"], client_rate="1/h", client_burst=1)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with (
        Relay(RelayConfig(listen="127.0.0.1:0", tunnels={"t1": spec})) as relay,
        aiohttp.ClientSession() as http,
    ):
        url = relay.url_for("t1")

        async def call(token: str) -> tuple[int, dict[str, object], str | None]:
            async with http.post(url, json=ping, headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After")

        first = await call("tok-a")
        assert first[0] == 503  # admitted by the rate limit; no gateway is polling
        status, body, retry_after = await call("tok-a")
        assert status == 429
        validate("APIErrorResponse", body)
        assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert retry_after == "3600"  # one request's refill at 1/h (RFC 9110 §10.2.3), not a guess
        assert (await call("tok-b"))[0] == 503  # another token has its own budget
