"""A real forward proxy for tests: `proxy.py` (from PyPI) as a subprocess on 127.0.0.1 port 0, with
plugins written into a folder of the test's and optional basic auth; ready once its port file exists.
`witnessed_proxy` adds a plugin that writes down every connection and request it relays."""

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
async def witnessed_proxy(base: Path, *, basic_auth: str | None = None) -> AsyncIterator[Proxy]:
    """`forward_proxy` with the witness plugin, its file in `base`."""
    witness = base / "witness.log"
    plugins = {"proxy_witness.Witness": WITNESS}
    async with forward_proxy(base, plugins=plugins, basic_auth=basic_auth, env={"PROXY_WITNESS": str(witness)}) as port:
        yield Proxy(f"http://127.0.0.1:{port}", witness)
