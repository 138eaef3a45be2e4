"""`gateway relay` fetching an issuer's JWKS through a forward proxy (`identity.issuers[].jwks_proxy`, or
HTTPS_PROXY / NO_PROXY from the relay's environment when the key is absent), and saying so, without
the proxy's credentials, when the proxy refuses or cannot be reached.

Everything is real and on loopback: `gateway relay` processes, a `proxy.py` forward proxy demanding
basic auth with a witness plugin that writes down every connection it relays, and the issuer's JWKS
over HTTPS under a CA made in the test (`jwks_ca_file`), so a fetch through the proxy is a CONNECT
tunnel with TLS to the issuer end to end. Waits are for conditions, never for time.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import trustme

from tests.support.forward_proxy import Proxy, witnessed_proxy
from tests.support.identity import (
    ISSUER,
    SUBJECT,
    WAIT,
    IssuerKey,
    JwksServer,
    claims,
    exchange,
    identity_yaml,
    jwks_server,
    relay_process,
    write_signing_key,
)
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

TUNNEL = "tunnel_a"
PROXY_USER = "relay"
PROXY_PASSWORD = "proxy-pw-Vx93q"
"""The proxy's password: it must appear in no log line, whichever way the relay was told it."""
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def with_credentials(proxy_url: str, password: str = PROXY_PASSWORD) -> str:
    return proxy_url.replace("http://", f"http://{PROXY_USER}:{password}@", 1)


def proxy_env(*, https_proxy: str = "", no_proxy: str = "") -> dict[str, str]:
    """The relay's proxy variables, every one given in both cases (an empty one unsets it), so the test
    process's own environment cannot leak in."""
    values = {"HTTPS_PROXY": https_proxy, "NO_PROXY": no_proxy}
    return {name: values.get(upper, "") for upper in PROXY_VARIABLES for name in (upper, upper.lower())}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxy]:
    """proxy.py on 127.0.0.1, demanding basic auth, with the witness plugin."""
    async with witnessed_proxy(tmp_path_factory.mktemp("proxy"), basic_auth=f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        yield proxy


@dataclass
class Issuer:
    key: IssuerKey
    jwks: JwksServer
    ca_file: Path

    @property
    def port(self) -> int:
        return int(self.jwks.url.split(":")[2].split("/")[0])


@pytest_asyncio.fixture(loop_scope="module")
async def issuer(tmp_path: Path) -> AsyncIterator[Issuer]:
    """An issuer whose JWKS is served over HTTPS under a CA only `jwks_ca_file` names."""
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


@pytest.mark.parametrize(
    ("case", "through_proxy"),
    [("jwks_proxy", True), ("jwks_proxy: none", False), ("HTTPS_PROXY", True), ("NO_PROXY", False)],
)
async def test_the_jwks_fetch_goes_the_way_the_settings_say(
    case: str, through_proxy: bool, proxy: Proxy, issuer: Issuer, tmp_path: Path
) -> None:
    """`jwks_proxy` names the proxy; `none` goes direct though HTTPS_PROXY names one; absent, HTTPS_PROXY
    decides, unless NO_PROXY covers the issuer's host. Either way the issuer's token is exchanged."""
    authenticated = with_credentials(proxy.url)
    settings = [f"jwks_ca_file: '{issuer.ca_file}'"]
    env = proxy_env(https_proxy=authenticated)
    if case == "jwks_proxy":
        settings.append(f"jwks_proxy: '{authenticated}'")
        env = proxy_env()
    elif case == "jwks_proxy: none":
        settings.append("jwks_proxy: none")
    elif case == "NO_PROXY":
        env = proxy_env(https_proxy=authenticated, no_proxy="localhost,127.0.0.1")
    async with relay(tmp_path, issuer.jwks.url, extra(*settings), env) as running, aiohttp.ClientSession() as http:
        await issuer.jwks.fetched(1)
        status, _, body = await exchange(http, running.url, issuer.key.sign(claims()))
        assert status == 200, body
        seen = proxy.lines(issuer.port)
        if through_proxy:
            assert f"conn CONNECT 127.0.0.1:{issuer.port}" in seen, seen
            assert all(line.startswith("conn CONNECT") for line in seen), "TLS is end to end: no request relayed"
        else:
            assert seen == []
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


async def test_a_proxy_that_cannot_be_reached_is_named_without_its_credentials(issuer: Issuer, tmp_path: Path) -> None:
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
