"""A real forward proxy for tests: `proxy.py` (from PyPI) as a subprocess on 127.0.0.1 port 0, with
plugins written into a folder of the test's and optional basic auth; ready once its port file exists."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
