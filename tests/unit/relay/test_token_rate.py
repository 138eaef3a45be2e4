"""The token endpoint's rate limit (`identity.token_rate_per_s`, `token_burst`): a caller address past
its budget gets 429 before its body is read, others keep theirs, and the budget refills.

An in-process relay on 127.0.0.1 port 0 trusting an issuer whose JWKS is a file written here; subject
tokens are real JWTs signed with keys made here; `trusted_proxies` is exercised with the loopback peer as
the proxy. `gateway/relay/budgets.py` and `caller_key` are also checked by themselves (the
`X-Forwarded-For` walk in test_callers.py). Waits are for conditions, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.relay import Relay, RelayConfig
from gateway.relay.budgets import CallerBudgets
from gateway.relay.callers import caller_key
from gateway.relay.config import load_relay_config
from tests.support.identity import AUDIENCE, ISSUER, SUBJECT, WAIT, IssuerKey, claims, exchange, write_signing_key
from tests.support.raw_http import connection, read_response, request

TUNNEL = "tunnel_a"
SLOW = 0.001
"""A refill of one request per 1000 s: a spent budget stays spent for the whole test."""


@contextlib.asynccontextmanager
async def relay_with_limit(
    folder: Path, rate_per_s: float, burst: int, *, trusted_proxies: str = "[]"
) -> AsyncIterator[tuple[Relay, IssuerKey]]:
    """A relay with `identity:` and this token rate limit, and the issuer key it trusts."""
    key = IssuerKey.ec()
    (folder / "jwks.json").write_text(json.dumps({"keys": [key.jwk()]}))
    write_signing_key(folder / "signing.pem")
    async with Relay(limited_config(folder, rate_per_s, burst, trusted_proxies=trusted_proxies)) as relay:
        yield relay, key


def limited_config(folder: Path, rate_per_s: float, burst: int, *, trusted_proxies: str = "[]") -> RelayConfig:
    """`relay_with_limit`'s configuration, written to `folder` and loaded (as a start or a reload reads it)."""
    (folder / "relay.yaml").write_text(
        "listen: '127.0.0.1:0'\n"
        "read_timeout_s: 300\n"
        f"tunnels: {{{TUNNEL}: {{}}}}\n"
        "identity:\n"
        f"  issuers: [{{issuer: '{ISSUER}', audience: {AUDIENCE}, jwks_file: jwks.json,"
        f" subjects: {{{json.dumps(SUBJECT)}: [{TUNNEL}]}}}}]\n"
        "  signing_keys: ['file:signing.pem']\n"
        f"  token_rate_per_s: {rate_per_s}\n"
        f"  token_burst: {burst}\n"
        f"  trusted_proxies: {trusted_proxies}\n"
    )
    return load_relay_config(folder / "relay.yaml")


def assert_rate_limited(status: int, headers: dict[str, str], body: Any) -> None:
    """429 with an RFC 6749 section 5.2 body, a whole-second Retry-After, never cached."""
    assert status == 429, (status, body)
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == "temporarily_unavailable"
    assert body["error_description"]
    assert headers["Retry-After"].isdigit(), headers
    assert int(headers["Retry-After"]) >= 1, headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")


async def test_a_burst_past_the_budget_is_refused_before_the_body_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first `token_burst` requests get their usual answers (a token, or a refusal of a bad one);
    the rest get 429 at once, even one whose body never arrives, counted and logged once."""
    async with relay_with_limit(tmp_path, SLOW, 3) as (relay, key), aiohttp.ClientSession() as http:
        good = key.sign(claims())
        with caplog.at_level(logging.INFO, logger="gateway.relay"):
            assert (await exchange(http, relay.url, good))[0] == 200
            assert (await exchange(http, relay.url, IssuerKey.ec().sign(claims())))[0] == 400  # counts too
            status, _, body = await exchange(http, relay.url, good)
            assert status == 200
            assert body["token_type"] == "Bearer"
            for _ in range(3):
                status, headers, body = await exchange(http, relay.url, good)
                assert_rate_limited(status, headers, body)
                assert int(headers["Retry-After"]) == 1000  # one request's refill at 0.001/s
            port = int(relay.url.rsplit(":", 1)[1])
            async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
                # Content-Length promises a body that never comes: only a check made first can answer.
                head = request("POST", "/oauth/token", headers={"Content-Type": "application/json"})
                writer.write(head.replace(b"Content-Length: 0", b"Content-Length: 5000"))
                answer = await read_response(reader)
            assert answer.status == 429
            assert json.loads(answer.body)["error"] == "temporarily_unavailable"
        async with http.get(f"{relay.url}/metrics") as resp:
            metrics = await resp.text()
    assert 'relay_token_exchanges_total{outcome="rate_limited"} 4' in metrics
    assert 'relay_token_exchanges_total{outcome="issued"} 2' in metrics
    warned = [r.getMessage() for r in caplog.records if "exceed token_rate_per_s" in r.getMessage()]
    assert len(warned) == 1, warned  # four refusals, one line
    assert "127.0.0.1" in warned[0]
    assert not [r for r in caplog.records if good in r.getMessage()]


def _second_loopback_address() -> str | None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return None
    return "127.0.0.2"


async def test_another_caller_address_keeps_its_own_budget(tmp_path: Path) -> None:
    """127.0.0.1 spends its budget; 127.0.0.2 then still gets its whole burst, then its own 429."""
    second = _second_loopback_address()
    if second is None:
        pytest.skip("no second loopback source address here (the keyed table is checked by itself below)")
    async with (
        relay_with_limit(tmp_path, SLOW, 2) as (relay, key),
        aiohttp.ClientSession() as first_http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(second, 0))) as second_http,
    ):
        good = key.sign(claims())
        for _ in range(2):
            assert (await exchange(first_http, relay.url, good))[0] == 200
        assert_rate_limited(*await exchange(first_http, relay.url, good))
        for _ in range(2):
            assert (await exchange(second_http, relay.url, good))[0] == 200
        assert_rate_limited(*await exchange(second_http, relay.url, good))
        assert_rate_limited(*await exchange(first_http, relay.url, good))


async def test_a_spent_budget_refills(tmp_path: Path) -> None:
    """At 5/s with a burst of 1, back-to-back requests soon meet a 429; asking again and again then
    gets a token. Nothing here measures how soon."""
    async with relay_with_limit(tmp_path, 5, 1) as (relay, key), aiohttp.ClientSession() as http:
        good = key.sign(claims())
        async with asyncio.timeout(WAIT):
            while (answer := await exchange(http, relay.url, good))[0] == 200:
                pass
            assert_rate_limited(*answer)
            while (answer := await exchange(http, relay.url, good))[0] == 429:  # noqa: ASYNC110 - the budget lives in the relay, read over HTTP
                await asyncio.sleep(0.05)  # pacing between polls, not a wait for the refill
        assert answer[0] == 200
        assert answer[2]["access_token"]


async def exchange_via(relay: Relay, subject_token: str, forwarded_for: str) -> tuple[int, dict[str, str], Any]:
    """A token exchange from this (loopback) peer, as a proxy that says it forwards `forwarded_for`."""
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": forwarded_for}) as http:
        return await exchange(http, relay.url, subject_token)


async def test_behind_a_trusted_proxy_each_forwarded_caller_has_its_own_budget(tmp_path: Path) -> None:
    """`trusted_proxies` names the loopback peer: each caller it forwards (the right-most untrusted
    `X-Forwarded-For` address) spends its own burst; what a caller writes left of that is not believed,
    so a spent caller cannot escape its 429 by adding addresses of its own."""
    async with relay_with_limit(tmp_path, SLOW, 1, trusted_proxies="['127.0.0.0/8', '10.0.0.0/8']") as (relay, key):
        good = key.sign(claims())
        assert (await exchange_via(relay, good, "203.0.113.7, 10.0.0.4"))[0] == 200
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.7"))
        assert_rate_limited(*await exchange_via(relay, good, "198.51.100.99, 203.0.113.7"))  # spoofed left entry
        assert (await exchange_via(relay, good, "203.0.113.8"))[0] == 200  # another caller: its own budget
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.8"))
        assert (await exchange_via(relay, good, "not-an-address"))[0] == 200  # garbage: the peer's budget
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.9:4711"))  # still the peer's


async def test_without_trusted_proxies_the_forwarded_header_is_not_read(tmp_path: Path) -> None:
    """The default: every request from this peer spends one budget, whatever `X-Forwarded-For` says."""
    async with relay_with_limit(tmp_path, SLOW, 1) as (relay, key):
        good = key.sign(claims())
        assert (await exchange_via(relay, good, "203.0.113.7"))[0] == 200
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.8"))


async def test_a_reload_applies_trusted_proxies_to_the_next_request(tmp_path: Path) -> None:
    """`trusted_proxies` is part of `identity:`, which a reload applies: the forwarded caller counts
    from the next request on (a spent peer's forwarded callers get their own budgets)."""
    async with relay_with_limit(tmp_path, SLOW, 1) as (relay, key):
        good = key.sign(claims())
        assert (await exchange_via(relay, good, "203.0.113.7"))[0] == 200
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.8"))
        assert relay.reload(limited_config(tmp_path, SLOW, 1, trusted_proxies="['127.0.0.1']")) is None
        assert (await exchange_via(relay, good, "203.0.113.8"))[0] == 200
        assert_rate_limited(*await exchange_via(relay, good, "203.0.113.8"))


# =========================================================================== the pieces by themselves


async def test_budgets_are_kept_per_key_and_the_oldest_key_goes_first() -> None:
    budgets: CallerBudgets[str] = CallerBudgets(max_callers=2)
    assert await budgets.take("a", SLOW, 1) is None
    assert await budgets.take("a", SLOW, 1) == pytest.approx(1 / SLOW)  # one request's refill
    assert await budgets.take("b", SLOW, 1) is None  # another key: its own budget
    assert await budgets.take("b", SLOW, 1) is not None
    assert await budgets.take("c", SLOW, 1) is None  # a third key: "a" is forgotten
    assert len(budgets) == 2
    assert await budgets.take("b", SLOW, 1) is not None  # "b" is still remembered, still spent
    assert await budgets.take("a", SLOW, 1) is None  # "a" starts again with a full burst


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:0:7::1", "2001:db8:0:7::/64"),
        ("2001:db8:0:7:ffff::9", "2001:db8:0:7::/64"),  # the same /64: one budget
        ("2001:db8:0:8::1", "2001:db8:0:8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        (None, ""),
        ("not-an-address", "not-an-address"),
    ],
)
def test_caller_key_is_the_peer_address_and_an_ipv6_peer_its_64(remote: str | None, key: str) -> None:
    assert caller_key(remote) == key
