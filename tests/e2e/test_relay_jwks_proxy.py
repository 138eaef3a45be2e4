"""`gateway relay` fetching an issuer's JWKS through a forward proxy (`identity.issuers[].jwks_proxy`, and a
tunnel's `user_auth.jwks_proxy`; or HTTPS_PROXY / NO_PROXY from the relay's environment when the key is
absent), and saying so, without the proxy's credentials, when the proxy refuses or cannot be reached.

Everything is real and on loopback: `gateway relay` processes, a `proxy.py` forward proxy demanding
basic auth with a witness plugin that writes down every connection it relays, and the issuer's JWKS
over HTTPS under a CA made in the test (`jwks_ca_file`), so a fetch through the proxy is a CONNECT
tunnel with TLS to the issuer end to end. Waits are for conditions, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme

from tests.support.forward_proxy import (
    PROXY_PASSWORD,
    PROXY_USER,
    ROUTES,
    Proxy,
    proxy_env,
    proxy_for_relays,
    route_settings,
    with_credentials,
)
from tests.support.identity import (
    ISSUER,
    SUBJECT,
    WAIT,
    IssuerKey,
    TlsIssuer,
    TokenPoller,
    claims,
    exchange,
    identity_yaml,
    jwks_server,
    relay_process,
    tls_issuer,
    write_signing_key,
)
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

TUNNEL = "tunnel_a"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxy]:
    """proxy.py on 127.0.0.1, demanding basic auth, with the witness plugin."""
    async with proxy_for_relays(tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy


@pytest_asyncio.fixture(loop_scope="module")
async def issuer(tmp_path: Path) -> AsyncIterator[TlsIssuer]:
    """An issuer whose JWKS is served over HTTPS under a CA only `jwks_ca_file` names."""
    async with tls_issuer(tmp_path) as issuer:
        yield issuer


@dataclass
class Relay:
    url: str
    log_file: Path
    stdout: list[str]

    def log(self) -> str:
        """Everything the relay wrote so far: its stderr log and its stdout."""
        return self.log_file.read_text() + "\n".join(self.stdout)

    async def unavailable(self, jwks_url: str, proxy_port: int | str, why: str) -> None:
        """Wait for the warning that the JWKS could not be had through the proxy on `proxy_port`, which
        it names with its credentials masked (`***`, or the log filter's `[REDACTED]`)."""
        line = re.compile(
            rf"WARNING gateway\.relay: identity: JWKS of issuer {re.escape(ISSUER)} from {re.escape(jwks_url)}"
            rf" via proxy http://(\*\*\*|\[REDACTED\])@127\.0\.0\.1:{proxy_port} unavailable: {re.escape(why)}$",
            re.MULTILINE,
        )
        with contextlib.suppress(TimeoutError):
            await until(lambda: line.search(self.log()) is not None, WAIT)
        assert line.search(self.log()), self.log()


@contextlib.asynccontextmanager
async def relay(
    tmp_path: Path, jwks_url: str, issuer_extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[Relay]:
    tunnels = f"listen: '127.0.0.1:0'\ntunnels:\n  {TUNNEL}: {{name: A}}\n"
    config = tunnels + identity_yaml(
        jwks_url, [write_signing_key(tmp_path / "signing.pem")], {SUBJECT: [TUNNEL]}, issuer_extra=issuer_extra
    )
    log_file = tmp_path / "relay.log"
    with log_file.open("wb") as stderr:
        async with relay_process(config, tmp_path / "relay", stderr=stderr, env=env or proxy_env()) as process:
            yield Relay(process.url, log_file, process.process.lines)


def extra(*lines: str) -> str:
    return "".join(f"      {line}\n" for line in lines)


@contextlib.contextmanager
def unreachable_port() -> Iterator[int]:
    """A loopback port bound and not listening, held for the block: every connection to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


# --------------------------------------------------------------------------- which way the fetch goes


@pytest.mark.parametrize(("case", "through_proxy"), ROUTES)
async def test_the_jwks_fetch_goes_the_way_the_settings_say(
    case: str, through_proxy: bool, proxy: Proxy, issuer: TlsIssuer, tmp_path: Path
) -> None:
    """`jwks_proxy` names the proxy; `none` goes direct though HTTPS_PROXY names one; absent, HTTPS_PROXY
    decides, unless NO_PROXY covers the issuer's host. Either way the issuer's token is exchanged."""
    setting, env = route_settings(case, proxy.url)
    settings = [f"jwks_ca_file: '{issuer.ca_file}'"] + ([] if setting is None else [f"jwks_proxy: '{setting}'"])
    async with relay(tmp_path, issuer.jwks.url, extra(*settings), env) as running, aiohttp.ClientSession() as http:
        await issuer.jwks.fetched(1)
        status, _, body = await exchange(http, running.url, issuer.key.sign(claims()))
        assert status == 200, body
        proxy.assert_route(issuer.port, through_proxy)
        assert PROXY_PASSWORD not in running.log()


async def test_a_plain_http_jwks_on_loopback_is_fetched_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    """An http:// JWKS (loopback only) goes to the proxy as a plain request, credentials and all."""
    key = IssuerKey.rsa()
    async with (
        jwks_server([key]) as jwks,
        relay(tmp_path, jwks.url, extra(f"jwks_proxy: '{with_credentials(proxy.url)}'")) as running,
        aiohttp.ClientSession() as http,
    ):
        status, _, body = await exchange(http, running.url, key.sign(claims()))
        assert status == 200, body
        port = int(jwks.url.split(":")[2].split("/")[0])
        assert f"req GET 127.0.0.1:{port} /openid/v1/jwks" in proxy.lines(port), proxy.lines(port)
        assert PROXY_PASSWORD not in running.log()


# --------------------------------------------------------------------------- a proxy that says no


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_proxy_refusing_the_credentials_is_named_without_them(
    scheme: str, proxy: Proxy, tmp_path: Path
) -> None:
    """407 from the proxy (to CONNECT for an https:// JWKS, to the GET for an http:// one): the relay logs
    the issuer, the JWKS URL and the proxy with its credentials masked, and answers the exchange 503."""
    key, wrong = IssuerKey.ec(), "wrong-pw-Tq27"
    ca = trustme.CA()
    ca_file = tmp_path / "issuer-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = [f"jwks_proxy: '{with_credentials(proxy.url, wrong)}'"]
    if scheme == "https":
        settings.append(f"jwks_ca_file: '{ca_file}'")
    async with (
        jwks_server([key], tls=ca if scheme == "https" else None) as jwks,
        relay(tmp_path, jwks.url, extra(*settings)) as running,
        aiohttp.ClientSession() as http,
    ):
        why = (
            "the proxy refused the tunnel (HTTP 407)"
            if scheme == "https"
            else "the proxy refused the request (HTTP 407)"
        )
        await running.unavailable(jwks.url, proxy.url.rsplit(":", 1)[1], why)
        status, _, body = await exchange(http, running.url, key.sign(claims()))
        assert status == 503, body
        assert body["error"] == "temporarily_unavailable"
        assert jwks.fetches == 0
        assert wrong not in running.log()
        assert wrong not in str(body)


async def test_a_proxy_that_cannot_be_reached_is_named_without_its_credentials(
    issuer: TlsIssuer, tmp_path: Path
) -> None:
    with unreachable_port() as port:
        settings = extra(
            f"jwks_ca_file: '{issuer.ca_file}'", f"jwks_proxy: 'http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}'"
        )
        async with relay(tmp_path, issuer.jwks.url, settings) as running, aiohttp.ClientSession() as http:
            why = "cannot connect to the proxy (ClientProxyConnectionError)"
            await running.unavailable(issuer.jwks.url, port, why)
            status, _, body = await exchange(http, running.url, issuer.key.sign(claims()))
            assert status == 503, body
            assert issuer.jwks.fetches == 0
            assert PROXY_PASSWORD not in running.log()


# --------------------------------------------------------------------------- user_auth's JWKS: users' tokens
# A tunnel's `user_auth.jwks_uri` takes `user_auth.jwks_proxy` the same way. `user_auth` has no CA setting:
# the relay trusts the issuer's test CA through SSL_CERT_FILE. A user's JWT signed by the issuer's key passes
# the relay's check and is answered by the gateway (MCP authorization, "Token Handling"; RFC 9068 section 4);
# one signed by another key is refused with 401.

GATEWAY_KEY = "gw-key-Uf41b"
USERS = "mcp-users"
"""The `aud` the tunnels' `user_auth` accepts."""


@dataclass
class EdgeRelay(Relay):
    """A relay whose tunnels check users' tokens (`user_auth`), each tunnel served by a gateway."""

    http: aiohttp.ClientSession

    async def call(self, tunnel: str, user_token: str) -> tuple[int, Any]:
        """A `tools/list` on the tunnel's default channel with the user's token; (status, JSON body)."""
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json", "Authorization": f"Bearer {user_token}"}
        async with self.http.post(f"{self.url}/v1/mcp/{tunnel}", json=message, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def tunnel_yaml(name: str, issuer: TlsIssuer, jwks_proxy: str | None) -> str:
    setting = "" if jwks_proxy is None else f", jwks_proxy: '{jwks_proxy}'"
    user_auth = f"{{issuer: '{ISSUER}', jwks_uri: '{issuer.jwks.url}', audience: [{USERS}]{setting}}}"
    return f"  {name}: {{gateway_key: {GATEWAY_KEY}, user_auth: {user_auth}}}\n"


@contextlib.asynccontextmanager
async def edge_relay(
    tmp_path: Path, issuer: TlsIssuer, tunnels: dict[str, str | None], env: dict[str, str]
) -> AsyncIterator[EdgeRelay]:
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
                yield EdgeRelay(process.url, log_file, process.process.lines, http)
            finally:
                for task in tasks:
                    task.cancel()


def user_token(key: IssuerKey, sub: str = "alice") -> str:
    return key.sign(claims(aud=USERS, sub=sub))


async def accepted(running: EdgeRelay, tunnel: str, issuer: TlsIssuer) -> None:
    """The issuer's user token crosses the tunnel; one signed by another key does not."""
    status, body = await running.call(tunnel, user_token(issuer.key))
    assert status == 200, body
    assert body["result"]["by"] == "gw", body
    status, body = await running.call(tunnel, user_token(IssuerKey.ec()))
    assert status == 401, body


@pytest.mark.parametrize(("case", "through_proxy"), ROUTES)
async def test_the_user_auth_jwks_fetch_goes_the_way_the_settings_say(
    case: str, through_proxy: bool, proxy: Proxy, issuer: TlsIssuer, tmp_path: Path
) -> None:
    """`jwks_proxy` names the proxy; `none` goes direct though HTTPS_PROXY names one; absent, HTTPS_PROXY
    decides, unless NO_PROXY covers the issuer's host. Either way the user's token is checked and passes."""
    setting, env = route_settings(case, proxy.url)
    async with edge_relay(tmp_path, issuer, {TUNNEL: setting}, env) as running:
        await issuer.jwks.fetched(1)
        await accepted(running, TUNNEL, issuer)
        proxy.assert_route(issuer.port, through_proxy)
        assert PROXY_PASSWORD not in running.log()


async def test_tunnels_sharing_a_jwks_uri_through_different_proxies_fetch_apart(
    proxy: Proxy, issuer: TlsIssuer, tmp_path: Path
) -> None:
    """Key sets are shared by `jwks_uri` only when the proxy is the same: one tunnel's keys come through the
    proxy, the other's directly, so the issuer is fetched twice before any token asks (one shared fetcher
    would fetch again only after `jwks_cache_s`, 300 s), and the proxy relays a fetch."""
    tunnels = {TUNNEL: with_credentials(proxy.url), "tunnel_b": "none"}
    async with edge_relay(tmp_path, issuer, tunnels, proxy_env()) as running:
        await issuer.jwks.fetched(2)
        proxy.assert_route(issuer.port, True)
        for tunnel in tunnels:
            await accepted(running, tunnel, issuer)
        assert PROXY_PASSWORD not in running.log()


async def test_a_proxy_refusing_user_auth_credentials_is_named_without_them(
    proxy: Proxy, issuer: TlsIssuer, tmp_path: Path
) -> None:
    """407 from the proxy: the relay logs the JWKS URL and the proxy with its credentials masked, and a
    user's token can then be neither accepted nor refused (503), never waved through."""
    wrong = "wrong-pw-Lk55"
    async with edge_relay(tmp_path, issuer, {TUNNEL: with_credentials(proxy.url, wrong)}, proxy_env()) as running:
        await running.unavailable(
            issuer.jwks.url, proxy.url.rsplit(":", 1)[1], "the proxy refused the tunnel (HTTP 407)"
        )
        status, body = await running.call(TUNNEL, user_token(issuer.key))
        assert status == 503, body
        assert issuer.jwks.fetches == 0
        assert wrong not in running.log()
