"""`gateway relay` fetching a tunnel's `user_auth.jwks_uri` through a forward proxy (`user_auth.jwks_proxy`,
or HTTPS_PROXY / NO_PROXY from the relay's environment when the key is absent), as
tests/e2e/test_relay_jwks_proxy.py checks it for `identity` issuers, with the same proxy and helpers.

Everything is real and on loopback: `gateway relay` processes, a `proxy.py` forward proxy demanding basic
auth with a witness plugin that writes down every connection it relays, the issuer's JWKS over HTTPS
under a CA made in the test (trusted by the relay through SSL_CERT_FILE: `user_auth` has no CA setting),
and a plain v1 gateway answering the tunnel. A user's JWT signed by the issuer's key passes the relay's
check and is answered by the gateway (MCP authorization, "Token Handling": the resource server validates
the token; RFC 9068 §4); one signed by another key is refused with 401. Waits are for conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme

from tests.e2e.test_relay_jwks_proxy import PROXY_PASSWORD, PROXY_USER, Issuer, proxy_env, with_credentials
from tests.support.forward_proxy import Proxy, witnessed_proxy
from tests.support.identity import ISSUER, WAIT, IssuerKey, TokenPoller, claims, jwks_server, relay_process
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

GATEWAY_KEY = "gw-key-Uf41b"
USERS = "mcp-users"
"""The `aud` the tunnels' `user_auth` accepts."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxy]:
    async with witnessed_proxy(tmp_path_factory.mktemp("proxy"), basic_auth=f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        yield proxy


@pytest_asyncio.fixture(loop_scope="module")
async def issuer(tmp_path: Path) -> AsyncIterator[Issuer]:
    """A user-token issuer whose JWKS is served over HTTPS under a CA of the test's."""
    ca = trustme.CA()
    ca_file = tmp_path / "issuer-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key = IssuerKey.ec()
    async with jwks_server([key], tls=ca) as jwks:
        yield Issuer(key, jwks, ca_file)


@dataclass
class Relay:
    url: str
    log_file: Path
    stdout: list[str]
    http: aiohttp.ClientSession

    def log(self) -> str:
        return self.log_file.read_text() + "\n".join(self.stdout)

    async def call(self, tunnel: str, user_token: str) -> tuple[int, Any]:
        """A `tools/list` on the tunnel's default channel with the user's token; (status, JSON body)."""
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json", "Authorization": f"Bearer {user_token}"}
        async with self.http.post(f"{self.url}/v1/mcp/{tunnel}", json=message, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def tunnel_yaml(name: str, issuer: Issuer, jwks_proxy: str | None) -> str:
    setting = "" if jwks_proxy is None else f", jwks_proxy: '{jwks_proxy}'"
    user_auth = f"{{issuer: '{ISSUER}', jwks_uri: '{issuer.jwks.url}', audience: [{USERS}]{setting}}}"
    return f"  {name}: {{gateway_key: {GATEWAY_KEY}, user_auth: {user_auth}}}\n"


@contextlib.asynccontextmanager
async def relay(
    tmp_path: Path, issuer: Issuer, tunnels: dict[str, str | None], env: dict[str, str]
) -> AsyncIterator[Relay]:
    """`gateway relay` with these tunnels (name -> `jwks_proxy`, None: absent), each served by a gateway."""
    config = "listen: '127.0.0.1:0'\ntunnels:\n" + "".join(
        tunnel_yaml(name, issuer, setting) for name, setting in tunnels.items()
    )
    log_file = tmp_path / "relay.log"
    env = {**env, "SSL_CERT_FILE": str(issuer.ca_file)}
    with log_file.open("wb") as stderr:
        async with (
            relay_process(config, tmp_path / "relay", stderr=stderr, env=env) as process,
            aiohttp.ClientSession() as http,
            asyncio.TaskGroup() as gateways,
        ):
            pollers = [TokenPoller(http, name, "", process.url, process.url, token=GATEWAY_KEY) for name in tunnels]
            tasks = [gateways.create_task(poller.run()) for poller in pollers]
            try:
                for poller in pollers:
                    await poller.serving()
                yield Relay(process.url, log_file, process.process.lines, http)
            finally:
                for task in tasks:
                    task.cancel()


def user_token(key: IssuerKey, sub: str = "alice") -> str:
    return key.sign(claims(aud=USERS, sub=sub))


async def accepted(running: Relay, tunnel: str, issuer: Issuer) -> None:
    """The issuer's user token crosses the tunnel; one signed by another key does not."""
    status, body = await running.call(tunnel, user_token(issuer.key))
    assert status == 200, body
    assert body["result"]["by"] == "gw", body
    status, body = await running.call(tunnel, user_token(IssuerKey.ec()))
    assert status == 401, body


@pytest.mark.parametrize(
    ("case", "through_proxy"),
    [("jwks_proxy", True), ("jwks_proxy: none", False), ("HTTPS_PROXY", True), ("NO_PROXY", False)],
)
async def test_the_user_auth_jwks_fetch_goes_the_way_the_settings_say(
    case: str, through_proxy: bool, proxy: Proxy, issuer: Issuer, tmp_path: Path
) -> None:
    """`jwks_proxy` names the proxy; `none` goes direct though HTTPS_PROXY names one; absent, HTTPS_PROXY
    decides, unless NO_PROXY covers the issuer's host. Either way the user's token is checked and passes."""
    authenticated = with_credentials(proxy.url)
    env = proxy_env(https_proxy=authenticated)
    setting: str | None = None
    if case == "jwks_proxy":
        setting, env = authenticated, proxy_env()
    elif case == "jwks_proxy: none":
        setting = "none"
    elif case == "NO_PROXY":
        env = proxy_env(https_proxy=authenticated, no_proxy="localhost,127.0.0.1")
    async with relay(tmp_path, issuer, {"tunnel_a": setting}, env) as running:
        await issuer.jwks.fetched(1)
        await accepted(running, "tunnel_a", issuer)
        seen = proxy.lines(issuer.port)
        if through_proxy:
            assert f"conn CONNECT 127.0.0.1:{issuer.port}" in seen, seen
            assert all(line.startswith("conn CONNECT") for line in seen), "TLS is end to end: no request relayed"
        else:
            assert seen == []
        assert PROXY_PASSWORD not in running.log()


async def test_tunnels_sharing_a_jwks_uri_through_different_proxies_fetch_apart(
    proxy: Proxy, issuer: Issuer, tmp_path: Path
) -> None:
    """Key sets are shared by `jwks_uri` only when the proxy is the same: one tunnel's keys come through the
    proxy, the other's directly, so the issuer is fetched twice and the proxy relays one of them."""
    tunnels = {"tunnel_a": with_credentials(proxy.url), "tunnel_b": "none"}
    async with relay(tmp_path, issuer, tunnels, proxy_env()) as running:
        await issuer.jwks.fetched(2)
        for tunnel in tunnels:
            await accepted(running, tunnel, issuer)
        assert proxy.lines(issuer.port) == [f"conn CONNECT 127.0.0.1:{issuer.port}"]
        assert PROXY_PASSWORD not in running.log()


async def test_a_proxy_refusing_the_credentials_is_named_without_them(
    proxy: Proxy, issuer: Issuer, tmp_path: Path
) -> None:
    """407 from the proxy: the relay logs the JWKS URL and the proxy with its credentials masked, and a
    user's token can then be neither accepted nor refused (503), never waved through."""
    wrong = "wrong-pw-Lk55"
    async with relay(tmp_path, issuer, {"tunnel_a": with_credentials(proxy.url, wrong)}, proxy_env()) as running:
        line = re.compile(
            rf"WARNING gateway\.relay: identity: JWKS of issuer {re.escape(ISSUER)} from {re.escape(issuer.jwks.url)}"
            rf" via proxy http://(\*\*\*|\[REDACTED\])@127\.0\.0\.1:{proxy.url.rsplit(':', 1)[1]} unavailable:"
            r" the proxy refused the tunnel \(HTTP 407\)$",
            re.MULTILINE,
        )
        with contextlib.suppress(TimeoutError):
            await until(lambda: line.search(running.log()) is not None, WAIT)
        assert line.search(running.log()), running.log()
        status, body = await running.call("tunnel_a", user_token(issuer.key))
        assert status == 503, body
        assert issuer.jwks.fetches == 0
        assert wrong not in running.log()
