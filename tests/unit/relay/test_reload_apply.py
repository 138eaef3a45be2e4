"""`Relay.reload` in one process: the new settings are built whole and swapped in one assignment (the
object a request already holds is never changed), a refused reload leaves the running object in place,
and a per-tunnel setting such as `client_token_header` applies to the next request. The process-level
behaviour (SIGHUP, waiting polls and callers, printed outcomes) is tests/e2e/test_relay_reload.py's."""

from __future__ import annotations

import aiohttp
import msgspec

from gateway.relay import Relay, TunnelSpec
from gateway.relay.app import LIVE
from tests.support.relay_harness import KEY, LIST_TOOLS, TUNNEL, relay_config

HEADERS = {"Accept": "application/json, text/event-stream"}


def tunnel(**changes: object) -> dict[str, TunnelSpec]:
    return {TUNNEL: msgspec.structs.replace(TunnelSpec(gateway_key=KEY, client_tokens=["tok-1"]), **changes)}


async def call(http: aiohttp.ClientSession, relay: Relay, headers: dict[str, str]) -> int:
    async with http.post(relay.url_for(TUNNEL), json=LIST_TOOLS, headers={**HEADERS, **headers}) as resp:
        return resp.status


async def test_a_reload_swaps_a_new_settings_object_and_leaves_the_old_one_as_it_was() -> None:
    config = relay_config(tunnels=tunnel())
    async with Relay(config) as relay, aiohttp.ClientSession() as http:
        before = relay.app[LIVE].current
        assert relay.reload(relay_config(tunnels=tunnel(client_tokens=["tok-2"]), response_timeout_s=5)) is None
        after = relay.app[LIVE].current
        assert after is not before
        assert [t.reveal() for t in before.credentials[TUNNEL].client_tokens] == ["tok-1"]
        assert [t.reveal() for t in after.credentials[TUNNEL].client_tokens] == ["tok-2"]
        assert (before.config.response_timeout_s, after.config.response_timeout_s) == (120.0, 5.0)
        assert await call(http, relay, {"Authorization": "Bearer tok-1"}) == 401
        assert await call(http, relay, {"Authorization": "Bearer tok-2"}) == 503  # admitted: no gateway polled


async def test_client_token_header_applies_to_the_next_request() -> None:
    async with Relay(relay_config(tunnels=tunnel())) as relay, aiohttp.ClientSession() as http:
        assert await call(http, relay, {"X-Relay-Token": "tok-1"}) == 401
        assert relay.reload(relay_config(tunnels=tunnel(client_token_header="X-Relay-Token"))) is None
        assert await call(http, relay, {"Authorization": "Bearer tok-1"}) == 403  # ClientTokenRequired
        assert await call(http, relay, {"X-Relay-Token": "tok-1"}) == 503


async def test_a_refused_reload_keeps_the_running_object() -> None:
    async with Relay(relay_config(tunnels=tunnel()), source="relay.yaml") as relay:
        running = relay.app[LIVE].current
        moved = msgspec.structs.replace(relay_config(tunnels=tunnel(gateway_key="other")), listen="127.0.0.1:1")
        assert relay.reload(moved) == "listen takes effect on restart"
        unresolved = relay_config(tunnels=tunnel(client_tokens=["env:RELOAD_APPLY_TEST_UNSET"]))
        why = relay.reload(unresolved)
        assert why is not None
        assert why.startswith(f"relay.yaml: $.tunnels.{TUNNEL}.client_tokens[0]: "), why
        assert relay.app[LIVE].current is running
