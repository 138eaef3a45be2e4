"""A real forward proxy for tests: `proxy.py` (from PyPI) as a subprocess on 127.0.0.1 port 0, with plugins
and optional basic auth; `witnessed_proxy` writes down every connection and request it relays. Also what
tests of the relay's JWKS fetches through it share: credentials, proxy variables, which way a fetch went."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.gateway_process import gateway_env
from tests.support.harness import PYTHON

NO_CONNECT = """
from proxy.http.exception import HttpRequestRejected
from proxy.http.proxy import HttpProxyBasePlugin


class NoConnect(HttpProxyBasePlugin):
    \"\"\"Refuses every CONNECT (403), as a proxy that only relays plain HTTP does.\"\"\"

    def before_upstream_connection(self, request):
        if request.method == b"CONNECT":
            raise HttpRequestRejected(status_code=403, reason=b"Forbidden")
        return request
"""
"""A plugin module (`no_connect.NoConnect`) for a proxy that refuses `CONNECT`."""
WITNESS = """
import os

from proxy.http.proxy import HttpProxyBasePlugin


class Witness(HttpProxyBasePlugin):
    \"\"\"Writes one line per upstream connection (`conn`) and per relayed request (`req`).\"\"\"

    def _write(self, line):
        with open(os.environ["PROXY_WITNESS"], "a") as out:
            out.write(line + "\\n")

    def before_upstream_connection(self, request):
        self._write(f"conn {request.method.decode()} {request.host.decode()}:{request.port}")
        return request

    def handle_client_request(self, request):
        if request.method != b"CONNECT":
            self._write(f"req {request.method.decode()} {request.host.decode()}:{request.port} {request.path.decode()}")
        return request
"""
"""A plugin module (`proxy_witness.Witness`) that appends what the proxy relays to the file $PROXY_WITNESS."""


PROXY_USER = "relay"
PROXY_PASSWORD = "proxy-pw-Vx93q"
"""The witnessed proxy's password (`proxy_for_relays`): it must appear in no log line, whichever way a
relay was told it."""
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
ROUTES = [("jwks_proxy", True), ("jwks_proxy: none", False), ("HTTPS_PROXY", True), ("NO_PROXY", False)]
"""(case, through the proxy) pairs for a JWKS fetch's `jwks_proxy` setting: `route_settings` makes each."""


def with_credentials(proxy_url: str, password: str = PROXY_PASSWORD) -> str:
    return proxy_url.replace("http://", f"http://{PROXY_USER}:{password}@", 1)


def proxy_env(*, https_proxy: str = "", no_proxy: str = "") -> dict[str, str]:
    """A child's proxy variables, every one given in both cases (an empty one unsets it), so the test
    process's own environment cannot leak in."""
    values = {"HTTPS_PROXY": https_proxy, "NO_PROXY": no_proxy}
    return {name: values.get(upper, "") for upper in PROXY_VARIABLES for name in (upper, upper.lower())}


def route_settings(case: str, proxy_url: str) -> tuple[str | None, dict[str, str]]:
    """A `ROUTES` case as (`jwks_proxy`, None for absent; the relay's proxy variables): `jwks_proxy` names
    the proxy; `none` goes direct though HTTPS_PROXY names one; absent, HTTPS_PROXY decides, unless
    NO_PROXY covers loopback."""
    authenticated = with_credentials(proxy_url)
    if case == "jwks_proxy":
        return authenticated, proxy_env()
    if case == "jwks_proxy: none":
        return "none", proxy_env(https_proxy=authenticated)
    if case == "NO_PROXY":
        return None, proxy_env(https_proxy=authenticated, no_proxy="localhost,127.0.0.1")
    return None, proxy_env(https_proxy=authenticated)


@dataclass
class Proxy:
    """A witnessed proxy: its URL (`http://127.0.0.1:PORT`, without credentials) and the witness's file."""

    url: str
    witness: Path

    def lines(self, port: int) -> list[str]:
        """What the proxy relayed to 127.0.0.1:`port`."""
        if not self.witness.exists():
            return []
        return [line for line in self.witness.read_text().splitlines() if f"127.0.0.1:{port}" in line]

    def assert_route(self, port: int, through_proxy: bool) -> None:
        """An HTTPS fetch from 127.0.0.1:`port` went through this proxy as a CONNECT tunnel (no request
        relayed: TLS end to end), or did not touch it."""
        seen = self.lines(port)
        if through_proxy:
            assert f"conn CONNECT 127.0.0.1:{port}" in seen, seen
            assert all(line.startswith("conn CONNECT") for line in seen), "TLS is end to end: no request relayed"
        else:
            assert seen == []


@contextlib.asynccontextmanager
async def forward_proxy(
    base: Path,
    *,
    plugins: dict[str, str] | None = None,
    basic_auth: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[int]:
    """proxy.py listening on 127.0.0.1; yields its port. `plugins` maps `module.Class` to the module's
    source (written into `base`, an existing folder put on its PYTHONPATH); `basic_auth` is `user:password`."""
    for dotted, source in (plugins or {}).items():
        (base / f"{dotted.split('.')[0]}.py").write_text(source)
    port_file = base / "port"
    args = ["--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--num-workers", "1"]
    args += ["--num-acceptors", "1", "--log-level", "WARNING"]
    if plugins:
        args += ["--plugins", ",".join(plugins)]
    if basic_auth is not None:
        args += ["--basic-auth", basic_auth]
    environment = gateway_env(PYTHONPATH=str(base), **(env or {}))
    proc = await asyncio.create_subprocess_exec(PYTHON, "-m", "proxy", *args, env=environment, cwd=base)
    try:
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                assert proc.returncode is None, "proxy.py exited"
                await asyncio.sleep(0.05)
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def proxy_for_relays(base: Path) -> AsyncIterator[Proxy]:
    """`witnessed_proxy` demanding basic auth with PROXY_USER and PROXY_PASSWORD."""
    async with witnessed_proxy(base, basic_auth=f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def witnessed_proxy(base: Path, *, basic_auth: str | None = None) -> AsyncIterator[Proxy]:
    """`forward_proxy` with the witness plugin, its file in `base`."""
    witness = base / "witness.log"
    plugins = {"proxy_witness.Witness": WITNESS}
    async with forward_proxy(base, plugins=plugins, basic_auth=basic_auth, env={"PROXY_WITNESS": str(witness)}) as port:
        yield Proxy(f"http://127.0.0.1:{port}", witness)
